"""scikit-learn's linear classifiers as skl2onnx writes them (one ai.onnx.ml LinearClassifier):
the multinomial (SOFTMAX) and binary (LOGISTIC) LogisticRegression import as a dense head with
the coefficients and intercepts as initial values, as is give scikit-learn's own predict_proba,
train on the portable backend as the float64 numpy reference does, and export to a model stock
onnxruntime runs. The forms whose probabilities are no softmax of the scores, and other
scikit-learn models, are refused naming the node (models/onnx_linear.py)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
skl2onnx = pytest.importorskip("skl2onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")  # test_import_torch_variants imports it

from onnx import helper  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.linear_model import LogisticRegression, Perceptron, SGDClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402
from sklearn.tree import DecisionTreeClassifier  # noqa: E402

from fedge.models.onnx_import import ImportOptions, import_spec  # noqa: E402
from fedge.models.onnx_source import OnnxImportError  # noqa: E402
from tests.models.import_check import _digits_images  # noqa: E402
from tests.models.test_import_torch_variants import _build_check_and_export  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                                        "ignore::FutureWarning")


def _save(model, x, path, **options):
    opts = {id(model.steps[-1][1] if hasattr(model, "steps") else model): options} if options else None
    onnx.save(skl2onnx.to_onnx(model, x[:1], options=opts, target_opset={"": 17, "ai.onnx.ml": 3}), path)
    return path


def _digits():
    x, y = _digits_images(240)
    return x.reshape(len(x), -1), y


def _proba(clf):
    return lambda path, x, fixed: clf.predict_proba(x)


@pytest.mark.parametrize("zipmap", [False, True])
def test_a_multinomial_logistic_regression_after_a_scaler_imports_as_a_softmax_head(tmp_path, zipmap):
    """LinearClassifier(post_transform SOFTMAX) after a StandardScaler (an ai.onnx.ml Scaler),
    and an L1 Normalizer (and ZipMap) after it: refused as 'the graph holds LinearClassifier'
    before. The Scaler stays in the frozen backbone; the head's weights are coef_.T."""
    x, y = _digits()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(x[:160], y[:160])
    path = _save(clf, x, tmp_path / "lr.onnx", zipmap=zipmap)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops[:2] == ["Scaler", "LinearClassifier"] and "Normalizer" in ops
    spec = import_spec(ImportOptions(str(path)))
    assert (spec.layers, spec.num_classes, spec.onnx_features) == ((), 10, 64)
    assert spec.onnx_cut != "X"  # the Scaler is in the prefix
    _build_check_and_export(path, x[160:], y[160:], False, "probs", _proba(clf))


def test_a_binary_logistic_regression_imports_as_a_two_class_head_on_the_input(tmp_path):
    """LinearClassifier(post_transform LOGISTIC) with one score s and two classes: logits [0, s],
    whose softmax is scikit-learn's [1 - sigmoid(s), sigmoid(s)]. No prefix: the cut is the input."""
    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    clf = LogisticRegression(max_iter=300).fit(x[:100], y[:100])
    path = _save(clf, x, tmp_path / "bin.onnx", zipmap=False)
    spec = import_spec(ImportOptions(str(path)))
    assert (spec.layers, spec.num_classes, spec.onnx_cut) == ((), 2, "X")
    _build_check_and_export(path, x[100:180], y[100:180], False, "probs", _proba(clf))


def _with_transform(path, transform: str):
    model = onnx.load(path)
    node = next(n for n in model.graph.node if n.op_type == "LinearClassifier")
    for a in node.attribute:
        if a.name == "post_transform":
            a.CopyFrom(helper.make_attribute("post_transform", transform))
    onnx.save(model, path)
    return path


def test_linear_classifiers_that_are_no_softmax_head_are_refused_naming_the_node(tmp_path):
    """A decision function (LinearSVC: post_transform NONE), one-vs-rest sigmoids over 10 scores
    and SOFTMAX_ZERO are no softmax cross-entropy head: each is refused naming the node and why;
    a tree (TreeEnsembleClassifier) is named too, where only the ops it held were listed."""
    x, y = _digits()
    svc = _save(LinearSVC().fit(x[:160], y[:160] % 2), x, tmp_path / "svc.onnx")
    with pytest.raises(OnnxImportError, match=r"LinearClassifier node '\w+': post_transform NONE .*decision "
                                              r"function.*--cut X --classes K"):
        import_spec(ImportOptions(str(svc)))
    lr = _save(LogisticRegression(max_iter=300).fit(x[:160], y[:160]), x, tmp_path / "lr.onnx", zipmap=False)
    with pytest.raises(OnnxImportError, match="post_transform LOGISTIC with 10 score.*one-vs-rest"):
        import_spec(ImportOptions(str(_with_transform(lr, "LOGISTIC"))))
    with pytest.raises(OnnxImportError, match="post_transform SOFTMAX_ZERO .*neither a softmax"):
        import_spec(ImportOptions(str(_with_transform(lr, "SOFTMAX_ZERO"))))
    tree = _save(DecisionTreeClassifier(max_depth=3).fit(x[:160], y[:160]), x, tmp_path / "tree.onnx", zipmap=False)
    with pytest.raises(OnnxImportError, match=r"TreeEnsembleClassifier node '\w+' \(ai.onnx.ml\)"):
        import_spec(ImportOptions(str(tree)))
    spec = import_spec(ImportOptions(str(svc), cut="X", num_classes=2))  # the way out the message names
    assert (spec.layers, spec.num_classes, spec.onnx_keep_head) == ((), 2, False)


def test_a_one_score_logistic_classifier_is_refused_as_onnx_runtime_runs_it_without_the_logistic(tmp_path):
    """The LOGISTIC form with one score row: ONNX Runtime gives [1 - s, s] for it, no sigmoid, so
    it is no softmax head (imported as [0, s] it failed the whole-model check by 4.4); refused
    by name. Oracle: ONNX Runtime's own run of it."""
    import onnxruntime as ort

    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    clf = LogisticRegression(max_iter=300).fit(x[:100], y[:100])
    path = _save(clf, x, tmp_path / "one.onnx", zipmap=False)
    model = onnx.load(path)
    node = next(n for n in model.graph.node if n.op_type == "LinearClassifier")
    for a in node.attribute:
        if a.name == "coefficients":
            a.CopyFrom(helper.make_attribute("coefficients", clf.coef_.ravel().tolist()))
        elif a.name == "intercepts":
            a.CopyFrom(helper.make_attribute("intercepts", clf.intercept_.tolist()))
    onnx.save(model, path)
    scores = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"X": x[:5]})[1]
    s = x[:5] @ clf.coef_.ravel() + clf.intercept_[0]
    np.testing.assert_allclose(scores, np.stack([1 - s, s], axis=1), rtol=1e-4, atol=1e-4)
    with pytest.raises(OnnxImportError, match=r"post_transform LOGISTIC with 1 score.*\[1 - s, s\], with no logistic"):
        import_spec(ImportOptions(str(path)))


def test_coefficients_that_do_not_fit_the_input_are_a_named_error(tmp_path):
    """A hostile LinearClassifier whose 10 coefficients make 2 rows of 5 for a 6-feature input:
    ONNX Runtime cannot run the source (the whole-model check skips it), and the build crashed
    in numpy's matmul with a ValueError. Now a named OnnxImportError."""
    from onnx import TensorProto

    from fedge.models.build import build_artifacts

    node = helper.make_node("LinearClassifier", ["X"], ["label", "prob"], domain="ai.onnx.ml", name="lin",
                            coefficients=[float(i) for i in range(10)], intercepts=[0.1, -0.1],
                            classlabels_ints=[0, 1], post_transform="SOFTMAX")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, None),
                               helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "bad.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "bad.onnx")))
    with pytest.raises(OnnxImportError, match=r"the input 'X' gives 6 features per example \(6,\), but the first layer "
                                              "takes 5"):  # before the whole-model check's "6 reach it"
        build_artifacts(spec, tmp_path / "art", ort_training=False)


@pytest.mark.parametrize("clf", [SGDClassifier(loss="hinge", random_state=0),
                                 SGDClassifier(loss="squared_hinge", random_state=0), Perceptron(random_state=0)],
                         ids=["hinge", "squared_hinge", "perceptron"])
def test_a_multiclass_decision_function_in_matmul_form_is_refused_as_linear_svc_s_is(tmp_path, clf):
    """skl2onnx writes these as MatMul + Add with the raw scores as its 'probabilities': they
    imported silently as a softmax head on the scores (the same argmax, another loss). Refused
    by name, as LinearSVC's post_transform NONE is. Oracles: ONNX Runtime's run of the source
    gives scikit-learn's decision_function, no probabilities; the way out the message names builds."""
    import onnxruntime as ort

    x, y = _digits()
    clf.fit(x[:160], y[:160])
    path = _save(clf, x, tmp_path / "sgd.onnx", zipmap=False)
    assert [n.op_type for n in onnx.load(path).graph.node][:2] == ["MatMul", "Add"]
    scores = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["probabilities"], {"X": x})[0]
    np.testing.assert_allclose(scores, clf.decision_function(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(OnnxImportError, match=r"classifier 'MatMul' gives scikit-learn's raw scores.*decision "
                                              r"function.*fit a LogisticRegression.*--cut X --classes K"):
        import_spec(ImportOptions(str(path)))
    spec = import_spec(ImportOptions(str(path), cut="X", num_classes=10))
    assert (spec.layers, spec.num_classes, spec.onnx_keep_head) == ((), 10, False)


def test_other_sgd_losses_refused_or_imported_and_predicting_as_scikit_learn(tmp_path):
    """modified_huber and one-vs-rest log_loss over 10 classes were, and are, refused (no dense tail
    reaches their output), now saying which scikit-learn linear models import; the binary
    log_loss imports as a two-class head and predicts as its own predict (and predict_proba)."""
    from fedge.edge_runtime.model_runtime import ModelRuntime
    from fedge.edge_runtime.trainer import make_backend
    from fedge.models.build import build_artifacts

    x, y = _digits()
    for loss, node in (("modified_huber", "Clip"), ("log_loss", "Exp")):
        path = _save(SGDClassifier(loss=loss, random_state=0).fit(x[:160], y[:160]), x, tmp_path / f"{loss}.onnx",
                     zipmap=False)
        with pytest.raises(OnnxImportError, match=rf"{node} node .*LogisticRegression \(multinomial or binary\) "
                                                  r"and a binary SGDClassifier\(loss='log_loss'\) import"):
            import_spec(ImportOptions(str(path)))
    clf = SGDClassifier(loss="log_loss", random_state=0).fit(x[:160], y[:160] % 2)
    path = _save(clf, x, tmp_path / "binary.onnx", zipmap=False)
    spec = import_spec(ImportOptions(str(path), head="global"))
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=False)
    runtime = ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id)
    logits = make_backend("portable", tmp_path / "art", manifest, "sgd").predict(
        runtime.initial("shared"), runtime.embed(x[160:]))["global"]
    np.testing.assert_array_equal(np.argmax(logits, axis=1), clf.predict(x[160:]))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs / probs.sum(axis=1, keepdims=True), clf.predict_proba(x[160:]), atol=1e-4)


def _gemm_reshape_then(model_node: onnx.NodeProto, out: onnx.ValueInfoProto, path):
    """x (N, 64) -> Gemm 6 ('fc') -> Relu -> Reshape (-1, 6) -> `model_node` (ai.onnx.ml) reading 'h'."""
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Gemm", ["input", "W", "b"], ["g"], name="fc"), helper.make_node("Relu", ["g"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["h"], name="reshape"), model_node]
    inits = {"W": rng.normal(size=(64, 6)).astype(np.float32) / 8, "b": rng.normal(size=6).astype(np.float32),
             "shape": np.array([-1, 6], np.int64)}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
                              [out], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_scikit_learn_model_after_a_reshape_is_no_post_processing_to_drop(tmp_path, caplog):
    """Gemm -> Reshape -> LinearClassifier: the Reshape was taken for the end of the tail and the
    LinearClassifier for post-processing, so with --classes the Gemm, a hidden layer, was dropped
    as the old classifier and the new head put on the raw input, silently; without, the Gemm was
    refused as a classifier ending in relu. Now the tail is the LinearClassifier, on the Reshape's
    output, and the notice names the Gemm it leaves frozen; a LinearRegressor there is refused by name."""
    from onnx import TensorProto

    coef = np.random.default_rng(4).normal(size=(3, 6))
    classifier = helper.make_node("LinearClassifier", ["h"], ["label", "prob"], domain="ai.onnx.ml", name="linclf",
                                  coefficients=coef.ravel().tolist(), intercepts=[0.1, -0.2, 0.3],
                                  classlabels_ints=[0, 1, 2], post_transform="SOFTMAX")
    path = _gemm_reshape_then(classifier, helper.make_tensor_value_info("prob", TensorProto.FLOAT, [None, 3]),
                              tmp_path / "clf.onnx")
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = import_spec(ImportOptions(str(path), num_classes=4))
    assert (spec.onnx_cut, spec.layers, spec.num_classes, spec.onnx_features) == ("h", (), 4, 6)
    assert "1 dense layer(s) stay frozen in the backbone (Gemm 'fc')" in caplog.text
    x, y = _digits()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _build_check_and_export(path, x[:64], y[:64] % 3, False, "probs",
                            lambda p, xs, fixed: sess.run(["prob"], {"input": xs})[0])
    regressor = helper.make_node("LinearRegressor", ["h"], ["y"], domain="ai.onnx.ml", name="linreg",
                                 coefficients=coef[0].tolist(), intercepts=[0.5], targets=1)
    path = _gemm_reshape_then(regressor, helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1]),
                              tmp_path / "reg.onnx")
    for classes in (0, 4):
        with pytest.raises(OnnxImportError, match="Reshape node 'reshape' after 'r' comes before LinearRegressor "
                                                  "node 'linreg'"):
            import_spec(ImportOptions(str(path), num_classes=classes))


def test_a_multi_target_mlp_regressor_is_refused_as_regression_not_as_a_decision_function(tmp_path):
    """Two targets give two raw outputs, with no label computed from them: the refusal called them
    a decision function of SGDClassifier's kind; the MLPRegressor was never a classifier."""
    from sklearn.neural_network import MLPRegressor

    x, y = _digits()
    reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=20, random_state=0).fit(x, np.stack([y, -y], 1))
    path = _save(reg, x, tmp_path / "reg.onnx")
    with pytest.raises(OnnxImportError, match="gives scikit-learn's regression values .*fedge trains classifiers"):
        import_spec(ImportOptions(str(path)))
    assert import_spec(ImportOptions(str(path), num_classes=3)).num_classes == 3  # a new head on its hidden layer


def test_a_pca_before_an_mlp_trains_as_it_does_before_a_logistic_regression(tmp_path, caplog):
    """StandardScaler -> PCA -> MLPClassifier: skl2onnx puts a Cast to float between the PCA's
    MatMul and the MLP, and shape inference gives no type after the Scaler (ai.onnx.ml), so the
    Cast was not known exact: it ended the tail and the PCA stayed frozen with a notice blaming
    it, where before a LogisticRegression (no Cast) the PCA trains. Both train it now."""
    from sklearn.decomposition import PCA
    from sklearn.neural_network import MLPClassifier

    x, y = _digits()
    clf = make_pipeline(StandardScaler(), PCA(16), MLPClassifier((12,), max_iter=60, random_state=0))
    clf.fit(x[:160], y[:160])
    path = _save(clf, x, tmp_path / "pca.onnx", zipmap=False)
    assert [n.op_type for n in onnx.load(path).graph.node][:4] == ["Scaler", "Sub", "MatMul", "Cast"]
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = import_spec(ImportOptions(str(path)))
    assert [(layer.units, layer.activation) for layer in spec.layers] == [(16, "none"), (12, "relu")]
    assert spec.onnx_features == 64 and "stay frozen" not in caplog.text
    _build_check_and_export(path, x[160:], y[160:], False, "probs", _proba(clf))
