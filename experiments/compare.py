"""Is one run's image AUROC better than another's, beyond the noise of a small test set?

    python experiments/compare.py A B [--resamples 2000] [--confidence 0.95] [--seed 0]

A and B are per-image score CSVs of the same test images: a row folder of the runner (its ``eval/scores.csv``), a
baseline's folder ``OUT/baselines/<name>`` (the same layout), or any ``scores.csv`` of the evaluation workflow.
Prints both AUROCs, their difference and its paired, stratified bootstrap interval
(:func:`hdhkd_monai.metrics.paired_auroc_bootstrap`), the fraction of resamples in which A beats B, and how alike the
two methods rank the images (Spearman's rank correlation of their scores: near 1, they find the same images odd).

``--costly-normals K`` also lists the K normal test images that cost A the most AUROC, beside what they cost B: each
normal image's cost is the fraction of abnormal images it scores at or above (ties count half); the costs of all
normal images average to 1 - AUROC. On a test set with a dozen normal images, one odd normal image can decide a
comparison, and this shows which.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from hdhkd_monai.metrics import paired_auroc_bootstrap


def read_scores(path: Path) -> dict[str, tuple[int, float]]:
    """``{image path: (label, score)}`` of a scores CSV, or of ``path/eval/scores.csv`` for a row folder."""
    if path.is_dir():
        path = path / "eval" / "scores.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scores CSV (give a row folder or a scores CSV)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"path", "label", "score"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: not a scores CSV, no column(s) {sorted(missing)}")
    unlabelled = [r["path"] for r in rows if r["label"] == ""]
    if unlabelled:
        raise ValueError(f"{path}: {len(unlabelled)} image(s) without a label, e.g. {unlabelled[0]}")
    return {r["path"]: (int(r["label"]), float(r["score"])) for r in rows}


def paired(a: dict, b: dict, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and both score columns over the images the two CSVs share; they must be the same images."""
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise ValueError(
            f"{name_a} and {name_b} scored different images: {len(only_a)} only in the first (e.g. {only_a[:1]}), "
            f"{len(only_b)} only in the second (e.g. {only_b[:1]})"
        )
    keys = sorted(a)
    if any(a[k][0] != b[k][0] for k in keys):
        raise ValueError(f"{name_a} and {name_b} give different labels to the same images")
    return np.array([a[k][0] for k in keys]), np.array([a[k][1] for k in keys]), np.array([b[k][1] for k in keys])


def normal_costs(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per normal image (in ``labels`` order), the fraction of abnormal images scored at or above it, ties counting
    half: its share of ``1 - AUROC``, whose mean over the normal images it is."""
    normal, abnormal = scores[labels == 0], scores[labels == 1]
    above = (abnormal[None, :] > normal[:, None]).mean(axis=1)
    tied = (abnormal[None, :] == normal[:, None]).mean(axis=1)
    return 1.0 - above - 0.5 * tied


def compare_runs(a: Path, b: Path, resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """:func:`~hdhkd_monai.metrics.paired_auroc_bootstrap` of two scores CSVs (or row folders) of the same images,
    with their image counts ``n_normal`` and ``n_abnormal``, the ``rank_correlation`` of the two scores, and
    ``normal_costs``: ``{normal image path: (cost to A, cost to B)}`` (:func:`normal_costs`)."""
    scored_a = read_scores(a)
    labels, scores_a, scores_b = paired(scored_a, read_scores(b), str(a), str(b))
    n_abnormal = int(labels.sum())
    normals = [path for path in sorted(scored_a) if scored_a[path][0] == 0]  # paired() orders the images by path
    costs = zip(normals, normal_costs(labels, scores_a), normal_costs(labels, scores_b))
    return {**paired_auroc_bootstrap(labels, scores_a, scores_b, resamples, confidence, seed),
            "n_normal": labels.size - n_abnormal, "n_abnormal": n_abnormal,
            "rank_correlation": float(spearmanr(scores_a, scores_b).statistic),
            "normal_costs": {path: (float(ca), float(cb)) for path, ca, cb in costs}}  # fmt: skip


def costly_normals_lines(costs: dict, count: int) -> list[str]:
    """The ``count`` normal images that cost A most, a line each, with what they cost B."""
    worst = sorted(costs.items(), key=lambda item: -item[1][0])[:count]
    lines = ["normal images that cost A most (fraction of abnormal images scored at or above each; A, B):"]
    lines += [f"  {100 * ca:5.1f} %  {100 * cb:5.1f} %  {path}" for path, (ca, cb) in worst]
    lost_a, lost_b = (100 * sum(c[i] for _, c in worst) / len(costs) for i in (0, 1))
    return lines + [f"these {len(worst)} cost A {lost_a:.2f} AUROC points and B {lost_b:.2f}"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--costly-normals", type=int, default=0, metavar="K",
                        help="also list the K normal test images that cost A the most AUROC")
    args = parser.parse_args(argv)

    r = compare_runs(args.a, args.b, args.resamples, args.confidence, args.seed)
    print(
        f"A {args.a}: AUROC {100 * r['auroc_a']:.2f}\n"
        f"B {args.b}: AUROC {100 * r['auroc_b']:.2f}\n"
        f"A - B = {100 * r['diff']:+.2f} points, {100 * args.confidence:.0f}% interval "
        f"[{100 * r['low']:+.2f}, {100 * r['high']:+.2f}] ({args.resamples} paired resamples of "
        f"{r['n_normal']} normal / {r['n_abnormal']} abnormal images); A better in {100 * r['p_a_better']:.1f}%\n"
        f"rank correlation of the two scores (Spearman): {r['rank_correlation']:.2f}"
    )
    if args.costly_normals:
        print("\n".join(costly_normals_lines(r["normal_costs"], args.costly_normals)))
    return r


if __name__ == "__main__":
    main()
