"""Heat-map overlays: an image beside the image with its anomaly map on top, and a colour bar in map units.

May import ``engines``, ``handlers``, ``baselines``, ``networks``, ``data`` and the layers below; never the
launcher, ``zoo`` or ``demo``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # drawn off-screen (Agg), no pyplot state and no display needed

__all__ = ["save_overlay"]

_DPI = 100
_MIN_PANEL_INCHES = 3.0


def save_overlay(
    path: str | Path,
    image: np.ndarray,
    anomaly_map: np.ndarray,
    title: str,
    vmin: float | None = None,
    vmax: float | None = None,
    threshold: float | None = None,
) -> Path:
    """Write a PNG: ``image`` [H, W] in grey on the left, the same with ``anomaly_map`` [H, W] (jet, half
    transparent) on the right, and a colour bar of the map's values with ``threshold`` marked on it.

    Each panel shows the image at its native pixel size (at least ``_MIN_PANEL_INCHES`` wide, so that small images
    stay readable); ``vmin``/``vmax`` fix the colour scale (None: the map's range), so that overlays drawn with the
    same values compare by colour.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = image.shape
    panel = max(width / _DPI, _MIN_PANEL_INCHES)
    fig = Figure(figsize=(2 * panel + 1.5, panel * height / width + 0.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.imshow(image, cmap="gray")
    right.imshow(image, cmap="gray")
    shown = right.imshow(anomaly_map, cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
    for ax in (left, right):
        ax.axis("off")
    label = "anomaly map"
    bar = fig.colorbar(shown, ax=[left, right], fraction=0.03, pad=0.02)
    if threshold is not None and np.isfinite(threshold):
        bar.ax.axhline(threshold, color="black", lw=2)
        label += f" (line: decision threshold {threshold:.3g})"
    bar.set_label(label)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path
