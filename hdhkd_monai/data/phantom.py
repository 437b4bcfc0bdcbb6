"""Synthetic OCT-like B-scans for the demo and the tests, written in the Kermany folder layout.

Each B-scan is a curved, layered retina (nerve fibre, ganglion, plexiform and nuclear layers, ellipsoid zone, RPE,
choroid) with a foveal pit, multiplicative speckle and vignetting. Abnormal test images carry one anomaly class:

- ``FLUID``: dark intraretinal ellipses (cyst-like fluid pockets);
- ``DRUSEN``: bumps that lift the RPE off Bruch's membrane, filled with medium-reflective material;
- ``LESION``: hyper-reflective blobs in the inner retina, each casting a shadow below it.

Every image has its own generator seeded from ``(seed, split, class, index)``, so an image does not change when
the number of images asked for does. Layout written by :func:`write_phantom`::

    root/train/NORMAL/NORMAL-<patient>-<n>.png
    root/test/{NORMAL,FLUID,DRUSEN,LESION}/<CLASS>-<patient>-<n>.png
    root/masks/{FLUID,DRUSEN,LESION}/<same name>.png     binary 0/255 masks of the abnormal test images

File names follow Kermany's ``CLASS-PATIENT-IMAGE`` pattern (three images per synthetic patient, train and test
patients disjoint), so the datalist builders split them by patient exactly as the real data.

CLI: ``python -m hdhkd_monai.data.phantom --out DIR --n-train 60 --n-test-per-class 10 --size 256 --seed 0``.

May import ``data``, ``distill``, ``pretrained`` and the shared leaves (``errors``, ``state_dict``, ``anomaly_map``,
``metrics``, ``quiet``, ``losses``); nothing of the networks or above.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

NORMAL = "NORMAL"
ANOMALY_CLASSES = ("FLUID", "DRUSEN", "LESION")
IMAGES_PER_PATIENT = 3
_SPLIT_IDS = {"train": 0, "test": 1}
_CLASS_IDS = {name: i for i, name in enumerate((NORMAL, *ANOMALY_CLASSES))}

# Reflectivity of the bands between consecutive boundaries (see _boundaries), top to bottom.
_BAND_INTENSITY = (0.80, 0.50, 0.60, 0.28, 0.60, 0.22, 0.38, 0.85, 0.40, 1.00)
_VITREOUS, _DRUSEN_FILL, _BRUCH, _FLUID = 0.04, 0.45, 0.70, 0.03


def _boundaries(x: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Depths (rows) of the 11 layer boundaries [11, W], from the inner limiting membrane to Bruch's membrane; the
    retina thins and its inner layers vanish at the foveal pit."""
    fovea = 0.5 + rng.uniform(-0.08, 0.08)
    bruch = (
        size * rng.uniform(0.55, 0.68)
        - size * rng.uniform(0.1, 0.4) * (x - fovea) ** 2
        + size * rng.uniform(-0.08, 0.08) * (x - 0.5)
        + size * 0.006 * np.sin(2 * np.pi * (x * rng.uniform(1.0, 2.5) + rng.uniform(0, 1)))
    )
    pit = np.exp(-(((x - fovea) / rng.uniform(0.06, 0.09)) ** 2))
    thickness = size * rng.uniform(0.18, 0.22) * (1 - 0.45 * pit)
    outer = size * np.array([0.012, 0.01, 0.012, 0.022])  # ELM..ellipsoid, ellipsoid, gap, RPE
    inner = (size * 0.2 - outer.sum()) * 0.62 * (1 - 0.92 * pit)
    ilm = bruch - thickness
    inner_fracs = np.array([0.12, 0.25, 0.20, 0.20, 0.23])  # RNFL, GCL, IPL, INL, OPL
    rows = [ilm]
    for frac in inner_fracs:
        rows.append(rows[-1] + frac * inner)
    rows.append(bruch - outer.sum())  # external limiting membrane: the ONL takes the rest
    for width in outer:
        rows.append(rows[-1] + width)
    return np.stack(rows)


def _bump(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-(((x - centre) / width) ** 2))


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _layers(bounds: np.ndarray, yy: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Noise-free reflectivity [H, W] of the layered retina and the choroid below it."""
    image = np.full(yy.shape, _VITREOUS)
    for top, bottom, value in zip(bounds[:-1], bounds[1:], _BAND_INTENSITY):
        image = np.where((yy >= top) & (yy < bottom), value * rng.uniform(0.9, 1.1), image)
    below = yy - bounds[-1]
    vessels = gaussian_filter(rng.standard_normal(yy.shape), sigma=(size / 100, size / 40))
    choroid = (0.55 + 1.0 * vessels) * np.exp(-below / (0.12 * size))
    return np.where(below >= 0, np.clip(choroid, 0.03, 1.0), image)


def _drusen(x, yy, bounds, size, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lift the ELM..RPE bands by a sum of bumps; returns the new boundaries, Bruch's membrane row [W] (where the
    RPE sat before) and the drusen mask [H, W]."""
    lift = np.zeros_like(x)
    for _ in range(rng.integers(1, 4)):
        lift += size * rng.uniform(0.035, 0.06) * _bump(x, 0.5 + rng.uniform(-0.3, 0.3), rng.uniform(0.03, 0.06))
    lift = np.minimum(lift, 0.8 * (bounds[6] - bounds[5]))  # never push through the ONL
    bounds = bounds.copy()
    bounds[6:] -= lift
    bruch = bounds[-1] + lift
    mask = (yy >= bounds[-3]) & (yy < bruch) & (lift > 0.15 * lift.max())
    return bounds, bruch, mask


def _blobs(yy, xx, bounds, size, rng, count, ry_range, rx_range, top_row, bottom_row) -> np.ndarray:
    """Union of random ellipses kept between two boundary rows, centred where that band is thick; mask [H, W]."""
    band = bounds[bottom_row] - bounds[top_row]
    columns = np.flatnonzero(band >= 0.6 * band.max())
    columns = columns[(columns > 0.15 * size) & (columns < 0.85 * size)]
    mask = np.zeros(yy.shape, bool)
    for _ in range(count):
        col = rng.choice(columns)
        top, bottom = bounds[top_row, col], bounds[bottom_row, col]
        ry = max(min(size * rng.uniform(*ry_range), 0.45 * (bottom - top)), 1.5)
        cy = rng.uniform(top + ry, bottom - ry)
        mask |= _ellipse(yy, xx, cy, col, ry, size * rng.uniform(*rx_range))
    return mask & (yy >= bounds[top_row]) & (yy < bounds[bottom_row])


def make_bscan(size: int = 256, anomaly: str | None = None, rng: np.random.Generator | None = None):
    """One synthetic B-scan.

    Args:
        size: output height and width in pixels.
        anomaly: None for a normal scan, or one of ``ANOMALY_CLASSES``.
        rng: the random generator (its state decides everything about the image).

    Returns:
        ``(image, mask)``: uint8 [size, size] grey image and bool [size, size] anomaly mask (all False if normal).
    """
    if anomaly is not None and anomaly not in ANOMALY_CLASSES:
        raise ValueError(f"anomaly must be None or one of {ANOMALY_CLASSES}, got {anomaly!r}")
    rng = np.random.default_rng() if rng is None else rng
    x = (np.arange(size) + 0.5) / size
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    bounds = _boundaries(x, size, rng)
    mask = np.zeros((size, size), bool)
    if anomaly == "DRUSEN":
        bounds, bruch, mask = _drusen(x, yy, bounds, size, rng)
    image = _layers(bounds, yy, size, rng)
    if anomaly == "DRUSEN":
        image = np.where((yy >= bounds[-1]) & (yy < bruch), _DRUSEN_FILL, image)
        image = np.where(np.abs(yy - bruch) < 1, _BRUCH, image)
    elif anomaly == "FLUID":
        mask = _blobs(yy, xx, bounds, size, rng, rng.integers(1, 3), (0.03, 0.06), (0.05, 0.1), 2, 6)
        image = np.where(mask, _FLUID, image)
    elif anomaly == "LESION":
        mask = _blobs(yy, xx, bounds, size, rng, rng.integers(1, 4), (0.015, 0.03), (0.02, 0.045), 1, 6)
        below = np.cumsum(mask, axis=0) > 0  # hyper-reflective foci shadow the tissue beneath them
        image = np.where(below & ~mask, image * 0.45, image)
        image = np.where(mask, rng.uniform(0.95, 1.1), image)
    image = gaussian_filter(image, sigma=0.6 * size / 256)
    speckle = gaussian_filter(rng.gamma(3.0, 1 / 3.0, image.shape), sigma=(0.4, 1.0))
    image = image * speckle / speckle.mean() + np.abs(rng.normal(0, 0.03, image.shape))
    vignette = 1 - rng.uniform(0.25, 0.5) * (2 * x - 1) ** 2
    image = image * vignette[None, :] * rng.uniform(0.85, 1.05)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), mask


def write_phantom(out: str | Path, n_train: int = 60, n_test_per_class: int = 10, size: int = 256, seed: int = 0):
    """Write the phantom data set under ``out`` in the Kermany layout (see module docstring).

    Args:
        out: root folder (created).
        n_train: number of normal training images.
        n_test_per_class: images per test class (NORMAL and each of ``ANOMALY_CLASSES``).
        size: image height and width.
        seed: base seed; the same arguments always give byte-identical files.

    Returns:
        Path of the root folder.
    """
    out = Path(out)
    plan = [("train", NORMAL, n_train)] + [("test", c, n_test_per_class) for c in (NORMAL, *ANOMALY_CLASSES)]
    for split, cls, count in plan:
        folder = out / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        # Disjoint patient numbers per split and class, three B-scans each.
        first_patient = 1000 * (1 + 4 * _SPLIT_IDS[split] + _CLASS_IDS[cls])
        for i in range(count):
            rng = np.random.default_rng([seed, _SPLIT_IDS[split], _CLASS_IDS[cls], i])
            image, mask = make_bscan(size, None if cls == NORMAL else cls, rng)
            name = f"{cls}-{first_patient + i // IMAGES_PER_PATIENT}-{i % IMAGES_PER_PATIENT + 1}.png"
            Image.fromarray(image).save(folder / name)
            if cls != NORMAL:
                (out / "masks" / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / cls / name)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="root folder to write")
    parser.add_argument("--n-train", type=int, default=60, help="normal training images")
    parser.add_argument("--n-test-per-class", type=int, default=10, help="test images per class")
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = write_phantom(args.out, args.n_train, args.n_test_per_class, args.size, args.seed)
    total = args.n_train + args.n_test_per_class * (1 + len(ANOMALY_CLASSES))
    print(f"wrote {total} synthetic B-scans to {root}")


if __name__ == "__main__":
    main()
