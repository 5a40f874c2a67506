"""The names the README gives a user to look for, against the code: every Prometheus metric, every
class or error name, and every reason, key or file name written in snake_case.

A renamed metric or reason leaves an operator's dashboard or grep empty with no error anywhere;
a metric the code exports and the README never names is one nobody knows to watch.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import dp_accounting
import onnx.defs
import sklearn.linear_model
import sklearn.svm

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
PACKAGES = ("coordinator", "edge_runtime", "models", "tools", "hardware")
SOURCE = "\n".join(path.read_text(encoding="utf-8") for top in PACKAGES for path in sorted((REPO / top).rglob("*.py")))
# What else a README name may be: a shipped config, script, unit or example.
FILES = SOURCE + "\n".join(path.read_text(encoding="utf-8", errors="replace") for top in (*PACKAGES, "examples")
                           for path in sorted((REPO / top).rglob("*"))
                           if path.suffix in (".toml", ".sh", ".service", ".conf", ".yml", ".acl"))
METRIC_CLASSES = r"Counter|Gauge|Histogram|Summary|CounterMetricFamily|GaugeMetricFamily"


def exported_metrics(source: str = SOURCE) -> set[str]:
    """The series names the code registers, as /metrics shows them (a Counter gains `_total`)."""
    out = set()
    for kind, name in re.findall(rf"\b({METRIC_CLASSES})\(\s*[\"'](fedge_\w+)[\"']", source):
        out.add(f"{name}_total" if kind.startswith("Counter") and not name.endswith("_total") else name)
    return out


def readme_metrics(text: str = README) -> tuple[set[str], set[str]]:
    """The series the README names, and the prefixes it names series by (`fedge_eval_*`, a `grep
    fedge_rounds`)."""
    names, prefixes = set(), set()
    for grep, name, star in re.findall(r"(grep )?\b(fedge_[a-z0-9_]*[a-z0-9])(_\*)?", text):
        (prefixes if grep or star else names).add(name)
    return names, prefixes


def test_every_metric_the_readme_names_is_exported_and_every_exported_one_is_named():
    exported = exported_metrics()
    assert len(exported) > 40 and {"fedge_rounds_total", "fedge_eval_accuracy"} <= exported
    named, prefixes = readme_metrics()
    assert all(any(e.startswith(f"{p}_") for e in exported) for p in prefixes), prefixes
    assert not named - exported, f"the README names metrics the code does not export: {sorted(named - exported)}"
    assert not exported - named, f"metrics the README never names: {sorted(exported - named)}"
    assert "fedge_devices_registered" in named  # named only in the list of metrics


def test_the_metric_check_reads_counters_as_prometheus_shows_them():
    source = 'Counter("fedge_x", "..."); Gauge(\n  "fedge_y", "..."); CounterMetricFamily("fedge_z_total", "")'
    assert exported_metrics(source) == {"fedge_x_total", "fedge_y", "fedge_z_total"}
    assert readme_metrics("`fedge_x_total{reason}`, `fedge_eval_*` and `grep fedge_rounds`, not fedge_") == (
        {"fedge_x_total"}, {"fedge_eval", "fedge_rounds"})


def external_word(word: str) -> bool:
    """A snake_case name the README quotes from a library: a scikit-learn model's method, an
    argument of onnx.save_model."""
    return (hasattr(sklearn.linear_model.LogisticRegression, word)
            or word in inspect.signature(onnx.save_model).parameters)


def external(name: str) -> bool:
    """A name the README quotes from a library fedge uses: an sklearn model, a dp-accounting event,
    an ONNX-ML operator."""
    return (hasattr(sklearn.linear_model, name) or hasattr(sklearn.svm, name) or hasattr(dp_accounting, name)
            or onnx.defs.has(name, "ai.onnx.ml"))


def test_every_class_or_error_the_readme_names_is_defined():
    """`ForeignOutput`, `SchemaTooNew`, `SecureAggregationConflict`, ...: what a user reads in a
    refusal and looks up, or catches from Python."""
    names = set(re.findall(r"`([A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+)`", README))
    assert len(names) > 30
    missing = [n for n in sorted(names) if not re.search(rf"^\s*(?:class {n}\b|{n}\s*[:=]|def {n}\b)", SOURCE, re.M)
               and not external(n)]
    assert not missing, f"the README names classes or errors nothing defines: {missing}"


def test_every_snake_case_name_the_readme_quotes_is_in_the_code():
    """Reasons (`checkin_too_often`, `secagg_bad_key`), keys and file names the README writes as
    code: each is in the code or a shipped file (a metric is checked above, by its series name)."""
    words = {w for w in re.findall(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+)+)`", README) if not w.startswith("fedge_")}
    assert len(words) > 200
    missing = sorted(w for w in words if not re.search(rf"(?<!\w){w}(?!\w)", FILES) and not external_word(w))
    assert not missing, f"the README quotes names the code does not have: {missing}"
