"""matplotlib for the commands that draw a PNG: optional (the `sim` extra), so a command without it
writes its JSON and Markdown and skips the plot."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on a server or in CI), or None when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
