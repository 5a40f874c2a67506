"""scikit-learn's linear classifiers, as skl2onnx writes them: one ai.onnx.ml LinearClassifier.

LogisticRegression (and SGDClassifier, LinearSVC, RidgeClassifier in some versions) becomes
scores s = x @ coefficients.T + intercepts, a post_transform of s, and a label. Imported as the
classifier of the tail (a dense head with the coefficients and intercepts as initial values),
only where the source's probabilities are what fedge's head computes, softmax(logits), and its
loss is fedge's, softmax cross-entropy:

    K >= 2 scores, post_transform SOFTMAX     (multinomial LogisticRegression)   logits s
    2 scores [-s, s], 2 classes, LOGISTIC     (binary LogisticRegression)        logits [0, s]:
                                              [sigmoid(-s), sigmoid(s)] = softmax([0, s]), the binary log-loss

Refused by name, and why:
- post_transform NONE: the scores are a decision function (LinearSVC's hinge loss, Ridge's
  squared error), not probabilities; trained as softmax logits it would be another model.
- LOGISTIC over K >= 3 scores (one-vs-rest): K independent sigmoids, normalized after, which is
  no softmax over the K scores: fedge's head would give other probabilities and another loss.
- LOGISTIC with one score row: ONNX Runtime (1.20) gives [1 - s, s] with no logistic (a probe's
  model differed from the imported one by 4.4 on random inputs).
- SOFTMAX_ZERO, PROBIT: not a softmax, nor the logistic function.
A Scaler or Normalizer before it stays in the frozen backbone (ONNX Runtime runs it there).

skl2onnx writes other linear classifiers as MatMul + Add, which the importer reads as a dense
layer (onnx_import.py), then the post-processing of their loss:
- SGDClassifier with loss hinge, squared_hinge or perceptron, Perceptron, PassiveAggressive:
  the raw scores, no softmax (binary: [-s, s]). A decision function, as LinearSVC's; it
  imported silently as a softmax head on its scores (the same argmax, but another loss and
  probabilities the source never gave). Refused by name, as post_transform NONE is
  (check_sklearn_scores).
- SGDClassifier(loss="log_loss") with 2 classes: a Sigmoid, imported as a two-class head [0, s]
  (a binary LogisticRegression). With 3+ classes, one-vs-rest sigmoids (Exp, Reciprocal,
  normalized), and modified_huber's Clip: no dense tail reaches the output, so find_cut's
  refusal names the node; sklearn_hint says which scikit-learn linear models import.
Other scikit-learn models (trees, SVMs with kernels, regressors) are no dense layers: the
import's refusal names their nodes (ml_models). An MLPRegressor of several targets is dense
layers with no label after them: refused as regression values (it was called a decision
function of the SGDClassifier kind); of one target, as a last layer of one value.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .onnx_source import OnnxImportError, node_label

ML_DOMAIN = "ai.onnx.ml"
# ai.onnx.ml ops that prepare features or name predictions, not models
ML_NOT_MODELS = ("Scaler", "Normalizer", "ZipMap", "ArrayFeatureExtractor", "Cast", "CastMap", "Imputer",
                 "OneHotEncoder", "LabelEncoder", "Binarizer", "FeatureVectorizer", "DictVectorizer")
AFTER_PROBABILITIES = ("Normalizer",)  # skl2onnx's L1 normalization of probabilities: keeps the prediction


def is_linear_classifier(node: onnx.NodeProto) -> bool:
    return node.op_type == "LinearClassifier" and node.domain == ML_DOMAIN


def is_ml_model(node: onnx.NodeProto) -> bool:
    """An ai.onnx.ml node that is a model (LinearClassifier, LinearRegressor, a tree ensemble, an
    SVM), not feature preparation or the naming of a prediction: never post-processing."""
    return node.domain == ML_DOMAIN and node.op_type not in ML_NOT_MODELS


def read_linear_classifier(node: onnx.NodeProto, x: str,
                           where: str) -> tuple[np.ndarray, np.ndarray, str, np.ndarray]:
    """(W (in, K), b (K,), the probabilities tensor, the class labels) of a LinearClassifier that
    reads x, as fedge's head; OnnxImportError naming the node for the forms it is not (module doc)."""
    label = f"{where}: {node_label(node)}"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    transform = attrs.get("post_transform", b"NONE")
    transform = transform.decode() if isinstance(transform, bytes) else str(transform)
    labels = np.asarray(attrs["classlabels_ints"]) if "classlabels_ints" in attrs else \
        np.asarray([s.decode() if isinstance(s, bytes) else s for s in attrs.get("classlabels_strings", [])])
    coef = np.asarray(attrs.get("coefficients", []), np.float64)
    intercepts = np.asarray(attrs.get("intercepts", []), np.float64)
    if node.input[0] != x:
        raise OnnxImportError(f"{label}: reads {node.input[0]!r}, not {x!r}")
    if len(node.output) < 2 or not node.output[1]:
        raise OnnxImportError(f"{label}: gives no scores output, only labels: nothing to train a head on")
    targets = intercepts.size
    if targets == 0 or coef.size == 0 or coef.size % targets:
        raise OnnxImportError(f"{label}: {coef.size} coefficients do not split into {targets} rows of intercepts")
    w = coef.reshape(targets, -1).T
    if targets >= 2 and targets == labels.size and transform == "SOFTMAX":
        return w.astype(np.float32), intercepts.astype(np.float32), node.output[1], labels
    mirrored = targets == 2 and np.array_equal(w[:, 0], -w[:, 1]) and intercepts[0] == -intercepts[1]
    if mirrored and labels.size == 2 and transform == "LOGISTIC":
        w2, b2 = np.hstack([np.zeros_like(w[:, -1:]), w[:, -1:]]), np.concatenate([[0.0], intercepts[-1:]])
        return w2.astype(np.float32), b2.astype(np.float32), node.output[1], labels
    if transform == "NONE":
        why = ("its scores are a decision function (LinearSVC's hinge loss, a RidgeClassifier's squared error), "
               "not probabilities: trained as softmax logits it would become another model")
    elif transform == "LOGISTIC" and targets == 1:
        why = ("ONNX Runtime gives one score s as [1 - s, s], with no logistic applied: not probabilities "
               "(skl2onnx writes a binary LogisticRegression as the two scores [-s, s], which import)")
    elif transform == "LOGISTIC":
        why = (f"one-vs-rest logistic over {targets} scores is {targets} separate sigmoids, not one softmax: "
               "fedge's head would give other probabilities and train another loss (multinomial "
               "LogisticRegression exports SOFTMAX)")
    else:
        why = "that is neither a softmax over the scores nor a binary logistic"
    raise OnnxImportError(f"{label}: post_transform {transform} with {targets} score(s) for {labels.size} classes; "
                          f"{why}; fedge trains softmax cross-entropy heads: for a new head on its input give "
                          f"--cut {x} --classes K")


def ml_models(graph: onnx.GraphProto) -> str:
    """'; it holds <op> node <name> (ai.onnx.ml), ...' for the ai.onnx.ml model nodes of a graph
    (a tree ensemble, a kernel SVM, a regressor), which no dense tail can stand for; '' if none."""
    found = [n for n in graph.node if is_ml_model(n)]
    if not found:
        return ""
    return (f"; it holds {', '.join(node_label(n) for n in found[:4])} ({ML_DOMAIN}): a scikit-learn model that "
            "is no dense layer, which fedge cannot train")


SKL2ONNX = "skl2onnx"
PROBABILITY_OPS = ("Softmax", "LogSoftmax", "Sigmoid")


def sklearn_hint(model: onnx.ModelProto) -> str:
    """For a skl2onnx source the import refused: which scikit-learn linear classifiers import."""
    if model.producer_name != SKL2ONNX:
        return ""
    return ("; of scikit-learn's linear classifiers, LogisticRegression (multinomial or binary) and a binary "
            "SGDClassifier(loss='log_loss') import with their weights")


def check_sklearn_scores(model: onnx.ModelProto, downstream, logits: str, classifier: str, where: str) -> None:
    """OnnxImportError where a skl2onnx classifier's kept head gives raw scores (no Softmax or
    Sigmoid after them): a decision function, not logits of probabilities (module doc).
    downstream: _Graph's (the nodes computed from a tensor)."""
    after = [n.op_type for n in downstream(logits)]
    if model.producer_name != SKL2ONNX or any(op in PROBABILITY_OPS for op in after):
        return
    if "ArgMax" not in after:  # skl2onnx's classifiers compute a label; a regressor's values are the output
        raise OnnxImportError(
            f"{where}: the last layer {classifier!r} gives scikit-learn's regression values (an MLPRegressor or "
            "linear regressor of several targets: no label is computed from them); fedge trains classifiers: for "
            f"a new classifier head give --classes K (on the hidden layers), or --cut {model.graph.input[0].name} "
            "--classes K")
    raise OnnxImportError(
        f"{where}: classifier {classifier!r} gives scikit-learn's raw scores, with no softmax after them: a decision "
        "function (SGDClassifier with loss hinge, squared_hinge or perceptron, Perceptron, PassiveAggressive), not "
        "probabilities; imported as softmax logits it would predict as the source does but train another loss, as "
        "a LinearSVC's (post_transform NONE) would; fit a LogisticRegression to import its weights, or for a new "
        f"head on the input give --cut {model.graph.input[0].name} --classes K")
