"""Image panels of Figs 4-6: slices, crops and colour ranges, saved atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..files import atomic_file

# --------------------------------------------------------------------------- images


def busiest_slice(mask: np.ndarray) -> int:
    """The axial slice holding most voxels of ``mask`` (z, y, x): the slice a figure shows."""
    counts = np.asarray(mask).reshape(mask.shape[0], -1).sum(axis=1)
    if not counts.any():
        raise ValueError("the region to show is empty")
    return int(np.argmax(counts))


def crop_box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The bounding box of a 2D ``mask`` grown by ``margin`` pixels, clipped to the image."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return slice(None), slice(None)
    h, w = mask.shape
    return (
        slice(max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin + 1, h)),
        slice(max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin + 1, w)),
    )


def centroid(mask: np.ndarray) -> tuple[float, float] | None:
    """(y, x) centre of a 2D mask, or None when it is empty."""
    ys, xs = np.nonzero(mask)
    return (float(ys.mean()), float(xs.mean())) if ys.size else None


@dataclass
class PanelRow:
    """One row of a figure: images shown on one shared grey (or colour) scale."""

    label: str
    panels: list[tuple[str, np.ndarray] | None]  # None leaves a column empty, to align rows
    vmin: float
    vmax: float
    cmap: str = "gray_r"
    marker: tuple[float, float] | None = None  # (y, x) a red arrow points at, e.g. the lesion


def display_range(reference: np.ndarray, percentile: float = 99.5) -> tuple[float, float]:
    """0 to a high percentile of the reference: every panel of a row uses it, so intensities compare."""
    vmax = float(np.percentile(reference, percentile))
    return 0.0, vmax if vmax > 0 else 1.0


def difference_range(differences: Sequence[np.ndarray]) -> tuple[float, float]:
    """A symmetric range that holds 99.5 % of all the difference images' values."""
    v = max(float(np.percentile(np.abs(d), 99.5)) for d in differences) or 1.0
    return -v, v


def save_panels(path: str | Path, rows: Sequence[PanelRow], title: str, caption: str = "") -> Path:
    """Draw rows of image panels (one shared scale and a colour bar per row) into a PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_cols = max(len(r.panels) for r in rows)
    height, width = next(p for p in rows[0].panels if p is not None)[1].shape
    aspect = height / width
    fig = Figure(figsize=(2.2 * n_cols + 1.0, 2.2 * aspect * len(rows) + 0.8 + 0.3 * bool(caption)), dpi=120,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, row in enumerate(rows):
        image = None
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row.panels) or row.panels[c] is None:
                ax.set_axis_off()
                continue
            name, img = row.panels[c]
            image = ax.imshow(img, cmap=row.cmap, vmin=row.vmin, vmax=row.vmax, interpolation="nearest")
            ax.set_title(name, fontsize=8)
            if row.marker is not None:
                y, x = row.marker
                off = 0.18 * max(img.shape)
                ax.annotate("", xy=(x, y), xytext=(x + off, y - off),
                            arrowprops={"arrowstyle": "->", "color": "red", "lw": 1.2})  # fmt: skip
        first = next(c for c, panel in enumerate(row.panels) if panel is not None)
        axes[r, first].set_ylabel(row.label, fontsize=8)
        fig.colorbar(image, ax=list(axes[r]), fraction=0.02, pad=0.01)
    fig.suptitle(title, fontsize=10)
    if caption:
        fig.supxlabel(caption, fontsize=7)
    dest = Path(path)
    with atomic_file(dest, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return dest
