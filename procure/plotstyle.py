"""Line styles shared by the reports' plots: arms or strategies often coincide (the same purchases, the same
prices), and a line drawn over another must stay visible."""

from __future__ import annotations

#: (marker, linestyle) per line, cycled
STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", (0, (5, 1))), ("x", (0, (1, 3)))]


def line_style(k: int) -> dict:
    """``ax.plot`` keyword arguments of the k-th line: its marker and line style, hollow markers."""
    marker, linestyle = STYLES[k % len(STYLES)]
    return {"marker": marker, "linestyle": linestyle, "markerfacecolor": "none"}
