"""Charts of evaluation results, drawn with matplotlib (Agg, no display) into PNG bytes.

Values are percentages; a value of None is drawn as "n/a". matplotlib is imported when a chart
is drawn, not with this module.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()


def bar_chart_png(
    names: Sequence[str], values: Sequence[float | None], label: str, mean: float | None
) -> bytes:
    """Horizontal bars, one per name, of `values` in percent (None: "n/a"); `label` names the
    axis, and a dashed line marks `mean` when given."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2), dpi=110)
    vals = [0.0 if v is None else v for v in values]
    ax.barh(range(len(names)), vals, color="#3b7dd8")
    for i, v in enumerate(values):
        ax.text((v or 0) + 1, i, "n/a" if v is None else f"{v:.1f}", va="center", fontsize=8)
    if mean is not None:
        ax.axvline(mean, color="#d8453b", linestyle="--", label=f"mean {mean:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel(f"{label} (%)")
    fig.tight_layout()
    return png_bytes(fig)


def confusion_png(names: Sequence[str], matrix: np.ndarray) -> bytes:
    """A (C, C) confusion matrix of pixel counts (rows: ground truth, columns: predicted), each
    row normalised to fractions; the fractions are written in the cells for up to 25 classes."""
    plt = pyplot()
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, np.maximum(rows, 1), dtype=np.float64)
    n = len(names)
    size = min(12, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=110)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if norm[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of ground-truth row")
    ax.set_title("confusion matrix (row-normalised)")
    fig.tight_layout()
    return png_bytes(fig)


def pq_breakdown_png(metrics: dict) -> bytes:
    """PQ, SQ and RQ (percent) of the all / things / stuff groups of evaluate's panoptic metrics."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    groups = ["all", "things", "stuff"]
    for k, key in enumerate(("pq", "sq", "rq")):
        vals = [metrics[g][key] or 0 for g in groups]
        bars = ax.bar(np.arange(3) + (k - 1) * 0.27, vals, width=0.27, label=key.upper())
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(3), groups)
    ax.set_ylim(0, 110)
    ax.set_ylabel("%")
    ax.legend(fontsize=8, ncol=3)
    ax.set_title("panoptic quality")
    fig.tight_layout()
    return png_bytes(fig)
