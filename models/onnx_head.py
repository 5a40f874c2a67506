"""What follows a kept classifier: its Softmax must be the one fedge's head computes.

fedge keeps the source's classifier as a head whose probabilities are one softmax over all of
its C outputs, and drops the source's post-processing (onnx_import.POST_PROCESSING). That is
only the same model when each Softmax or LogSoftmax there normalizes a (N, C) tensor over its
last axis. A probe's model reshaped 10 logits to (N, 2, 5) and took two 5-way softmaxes; another
normalized over the batch axis: both imported as 10-class heads whose probabilities the source
never gave. Such a head is refused by name; a new head (--classes K) drops the source's anyway.

The same goes for what else follows the classifier. The tail ends at the first post-processing
op, and everything after it is dropped: a probe's logits -> Flatten -> Add(a per-class prior)
imported as a head without the prior, and predicted another class than the source for 6 of 8
examples. A kept head is refused by name unless every node computed from its logits is one
that leaves the predicted class as it was (check_post_processing).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .onnx_probe import run_to
from .onnx_source import OnnxImportError, node_label

NORMALIZERS = ("Softmax", "LogSoftmax")
# Ops that may follow a kept classifier: they read, reshape, normalize (checked below) or name
# its prediction, never change which class it is; Exp/Log turn log-probabilities into
# probabilities and back. Anything else there (Add, Mul, Sub, ...) would be dropped silently.
KEEPS_PREDICTION = ("Softmax", "LogSoftmax", "ArgMax", "ZipMap", "Cast", "Identity", "Dropout",
                    "ArrayFeatureExtractor", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "TopK", "ReduceMax",
                    "Exp", "Log", "Shape")
# A binary classifier's one logit z: p = Sigmoid(z), and scikit-learn's [1 - p, p] (Sub, Concat)
BINARY_PROBABILITIES = ("Sigmoid", "Sub", "Concat")
# Ops that only lay out a tensor's values again: torch's sigmoid(fc(x).squeeze(1)) puts one
# between the logit and its Sigmoid, which then applies to the same numbers.
LAYOUT_ONLY = ("Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity", "Dropout")
COMPARISONS = {"Greater": ">", "GreaterOrEqual": ">=", "Less": "<", "LessOrEqual": "<="}  # a binary decision
KEPT_DECISIONS = ("p > 0.5", "p >= 0.5")  # the head's argmax (>= but at the exact tie): _decisions
_MIRRORED = {">": "<", ">=": "<=", "<": ">", "<=": ">="}  # the rule with the operands swapped


def sigmoid_follows(consumers: dict[str, list[onnx.NodeProto]], tensor: str) -> bool:
    """Whether `tensor` (a one-logit classifier's output) is read by one Sigmoid alone, directly or
    through a chain of LAYOUT_ONLY ops, each the only reader of the one before (their data input).
    A probe's torch model, sigmoid(fc(x).squeeze(-1)), was refused as having no Sigmoid."""
    users = consumers.get(tensor, [])
    while len(users) == 1 and users[0].op_type in LAYOUT_ONLY and users[0].input[0] == tensor:
        tensor = users[0].output[0]
        users = consumers.get(tensor, [])
    return [u.op_type for u in users] == ["Sigmoid"]


def _axis(node: onnx.NodeProto, opset: int) -> int:
    default = -1 if opset >= 13 else 1  # before opset 13 Softmax flattened from `axis` on (1: the classes)
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), default)


def check_normalizers(model: onnx.ModelProto, downstream, logits: str, classifier: str, classes: int,
                      where: str, source_input: tuple[str, tuple[int, ...], int] = ("", (), 0)) -> None:
    """OnnxImportError unless every Softmax/LogSoftmax computed from `logits` (the classifier's
    (N, classes) output) normalizes a (N, classes) tensor over its last axis.
    downstream: _Graph.downstream, the nodes computed from a tensor. source_input: the source's
    input name, per-example shape and fixed batch (0: free), to run it where shapes are unknown."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.value_info, *inferred.input, *inferred.output)
              if v.type.tensor_type.HasField("shape")}
    shapes[logits] = [None, classes]  # the classifier's own output is (N, classes) by construction
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    for node in downstream(logits):
        if node.op_type not in NORMALIZERS:
            continue
        shape = shapes.get(node.input[0])
        axis = _axis(node, opset)
        unknown = shape is None or len(shape) == 2 and axis in (-1, 1) and shape[1] is None
        if unknown:
            # Shape inference cannot follow a Reshape to a computed shape: torch's l.view(N * 2, 5)
            # (two 5-way softmaxes over 10 logits) read as (N, ?) and was kept as a 10-class head.
            if _one_softmax_when_run(model, source_input, logits, node, classes):
                continue
        elif len(shape) == 2 and axis in (-1, 1) and shape[1] == classes:
            continue
        shown = "unknown" if shape is None else ['N' if d is None else d for d in shape]
        raise OnnxImportError(
            f"{where}: {node.op_type} node {node.name or node.output[0]!r} normalizes axis {axis} of a tensor of "
            f"shape {shown} computed from classifier {classifier!r} ({classes} outputs)"
            f"{'; run on random inputs, it is not one softmax over those' if unknown else ''}; fedge's head is one "
            f"softmax over all {classes}, so kept as is it would not give the source's probabilities: give "
            "--classes K for a new head")


def _one_softmax_when_run(model: onnx.ModelProto, source_input: tuple[str, tuple[int, ...], int], logits: str,
                          node: onnx.NodeProto, classes: int) -> bool:
    """Whether ONNX Runtime's run of the source gives, at `node`'s output, row for row, the
    softmax (LogSoftmax: its log) over the classes of the logits, on random inputs. False when
    the source cannot be run so (no input given, or ONNX Runtime refuses it)."""
    name, per_example, fixed_batch = source_input
    if not name:
        return False
    batch = fixed_batch if fixed_batch > 0 else 3
    x = np.random.default_rng(0).standard_normal((batch, *per_example)).astype(np.float32)
    try:
        z, got = run_to(model, {name: x}, [logits, node.output[0]])
    except Exception:  # noqa: BLE001 - ORT's own types: not shown to be one softmax
        return False
    if np.size(z) != batch * classes:  # not the (N, classes) logits the spec says: nothing shown
        return False
    z = np.asarray(z, np.float64).reshape(batch, classes)
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    want = logp if node.op_type == "LogSoftmax" else np.exp(logp)
    got = np.asarray(got, np.float64)
    return got.size == want.size and np.allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-6)


def _decisions(downstream, logits: str, consts: dict, sigmoid_inside: bool) -> dict[int, str]:
    """The comparisons (ids) of a binary classifier's probability p with 0.5, read through LAYOUT_ONLY
    ops, each with the rule it decides ("p > 0.5", "p <= 0.5", ...). torch's `(torch.sigmoid(z) > 0.5).long()`
    is the class the source predicts, the argmax of fedge's two-class head [0, z]; it was refused as
    no post-processing. p > 0.5 is that argmax, and so is p >= 0.5 but at the tie (p exactly 0.5 in
    float32, |z| under ~3e-8, where the head's argmax of [0, 0] says 0): torch code writes both, and
    fedge drops the decision anyway (its export gives the logits), so both import. Less(p, 0.5)
    decides 1 where the head predicts 0 (the labels flipped): check_post_processing refuses it by name.
    Another threshold is another decision rule: refused still, as any other op. (A comparison of the
    logit z itself gives z a second reader beside its Sigmoid, which the tail does not read as binary.)
    sigmoid_inside: `logits` is p itself (ONNX Runtime's FusedGemm with its Sigmoid inside)."""
    nodes = list(downstream(logits))
    producer = {o: n for n in nodes for o in n.output}

    def unlaid(tensor: str) -> str:  # the tensor before the layout-only ops that wrote `tensor`
        while tensor in producer and producer[tensor].op_type in LAYOUT_ONLY:
            tensor = producer[tensor].input[0]
        return tensor

    found = {}
    for node in (n for n in nodes if n.op_type in COMPARISONS and len(n.input) == 2):
        stored = [i for i in node.input if i in consts and np.size(consts[i]) == 1]
        if len(stored) != 1:
            continue
        x, t = unlaid(next(i for i in node.input if i != stored[0])), float(np.asarray(consts[stored[0]]).flat[0])
        sigmoid = producer.get(x)
        is_p = x == logits if sigmoid_inside else (
            sigmoid is not None and sigmoid.op_type == "Sigmoid" and unlaid(sigmoid.input[0]) == logits)
        if t == 0.5 and is_p:
            rule = COMPARISONS[node.op_type]  # with p first; Less(0.5, p) is p > 0.5
            found[id(node)] = f"p {rule if node.input[0] != stored[0] else _MIRRORED[rule]} 0.5"
    return found


def check_post_processing(downstream, consumers, logits: str, classifier: str, where: str,
                          also: tuple[str, ...] = (), consts: dict | None = None, sigmoid_inside: bool = False) -> None:
    """OnnxImportError naming the first node computed from `logits` (a kept classifier's output)
    that is not prediction post-processing fedge can drop (module docstring).
    downstream, consumers: _Graph's (the nodes computed from a tensor; each tensor's readers).
    also: further ops allowed there (after a LinearClassifier's probabilities, a Normalizer).
    consts: the stored values by name, to read a binary classifier's threshold (_decisions).
    sigmoid_inside: the classifier gives p = sigmoid(z) itself (a FusedGemm's, onnx_gemm.py): a binary one."""
    binary = sigmoid_inside or sigmoid_follows(consumers, logits)  # one logit and a Sigmoid (parse_tail)
    allowed = KEEPS_PREDICTION + (BINARY_PROBABILITIES if binary else ()) + also
    decisions = _decisions(downstream, logits, consts, sigmoid_inside) if binary and consts else {}
    for node in downstream(logits):
        rule = decisions.get(id(node), "")
        if rule and rule not in KEPT_DECISIONS:
            raise OnnxImportError(
                f"{where}: {node_label(node)} decides {rule} on the probability p "
                f"of binary classifier {classifier!r}; fedge's two-class head predicts class 1 where p > 0.5, so its "
                "labels would be flipped: re-export the decision as p > 0.5 (Greater(p, 0.5) or Less(0.5, p)), "
                "or give --classes K for a new head")
        if node.op_type not in allowed and not rule:
            raise OnnxImportError(
                f"{where}: {node_label(node)} is computed from the output of "
                f"classifier {classifier!r} and is not prediction post-processing ({', '.join(KEEPS_PREDICTION[:5])}, "
                "...); fedge's head would give the classifier's logits without it, so kept as is it would not "
                "predict as the source does: give --classes K for a new head")
