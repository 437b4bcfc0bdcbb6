"""Image- and pixel-level anomaly detection metrics (paper Tables I, III, IV).

Convention: label 1 = abnormal (the positive class), 0 = normal; a higher score means more anomalous, and an image
is called abnormal when ``score >= threshold``. AUROC and AUPRC (average precision) come from scikit-learn; the
thresholded metrics are computed from the confusion counts.

May import ``hdhkd_monai.errors`` only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = ["auroc", "auprc", "threshold_metrics", "sensitivity_at_specificity", "flag_all_f1", "image_metrics",
           "per_class_metrics", "paired_auroc_bootstrap"]


def _as_arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.size} vs {scores.size}.")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (normal) or 1 (abnormal), got values {np.unique(labels).tolist()}.")
    return labels, scores


def _both_classes(labels: np.ndarray) -> bool:
    return 0 < labels.sum() < labels.size


def auroc(labels, scores) -> float:
    """Area under the ROC curve; NaN when only one class is present (it is undefined then)."""
    labels, scores = _as_arrays(labels, scores)
    return float(roc_auc_score(labels, scores)) if _both_classes(labels) else float("nan")


def auprc(labels, scores) -> float:
    """Area under the precision-recall curve as average precision; NaN when only one class is present."""
    labels, scores = _as_arrays(labels, scores)
    return float(average_precision_score(labels, scores)) if _both_classes(labels) else float("nan")


def abnormal(scores, threshold: float):
    """The decision rule, the one place it is stated: abnormal where the score reaches the threshold. Takes a score
    or an array of scores; gives a bool or a bool array."""
    return np.asarray(scores) >= threshold


def threshold_metrics(labels, scores, threshold: float) -> dict[str, float]:
    """F1, accuracy, sensitivity (recall of abnormal) and specificity (recall of normal) at the threshold (:func:`abnormal`).

    A ratio whose denominator is zero (e.g. SEN without abnormal images) is NaN.
    """
    labels, scores = _as_arrays(labels, scores)
    pred = abnormal(scores, threshold)
    tp = int(np.sum(pred & (labels == 1)))
    fp = int(np.sum(pred & (labels == 0)))
    tn = int(np.sum(~pred & (labels == 0)))
    fn = int(np.sum(~pred & (labels == 1)))

    def ratio(num: int, den: int) -> float:
        return num / den if den else float("nan")

    return {
        "threshold": float(threshold),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "acc": ratio(tp + tn, labels.size),
        "sen": ratio(tp, tp + fn),
        "spe": ratio(tn, tn + fp),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def sensitivity_at_specificity(labels, scores, specificity: float = 0.95) -> float:
    """The highest sensitivity of any threshold that keeps at least ``specificity`` of the normal images below it.

    An operating point read off the test labels, like AUROC; unlike the F1-optimal threshold it cannot be reached by
    calling every image abnormal. NaN when only one class is present.
    """
    labels, scores = _as_arrays(labels, scores)
    if not _both_classes(labels):
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= 1.0 - specificity + 1e-12].max())


def flag_all_f1(labels) -> float:
    """F1 of calling every image abnormal: the floor an F1 figure has to beat to carry information."""
    labels = np.asarray(labels).astype(int).ravel()
    return float(2 * labels.sum() / (labels.sum() + labels.size)) if labels.any() else float("nan")


def image_metrics(labels, scores, threshold: float) -> dict[str, float]:
    """AUROC, AUPRC, sensitivity at 95 % specificity, the F1 of flagging everything (a reference, not a result), the
    thresholded metrics of :func:`threshold_metrics` and the image counts."""
    labels, scores = _as_arrays(labels, scores)
    return {
        "auroc": auroc(labels, scores),
        "auprc": auprc(labels, scores),
        "sen_at_95spe": sensitivity_at_specificity(labels, scores, 0.95),
        "f1_flag_all": flag_all_f1(labels),
        **threshold_metrics(labels, scores, threshold),
        "n_normal": int(np.sum(labels == 0)),
        "n_abnormal": int(np.sum(labels == 1)),
    }


def per_class_metrics(
    labels, scores, classes: Sequence[str], threshold: float
) -> dict[str, dict[str, float]]:
    """:func:`image_metrics` of each abnormal class against all normal images.

    Args:
        labels: 0 normal / 1 abnormal per image.
        scores: anomaly score per image.
        classes: class name per image (e.g. "DRUSEN"); the classes of abnormal images define the breakdown.
        threshold: decision threshold applied to every class.
    """
    labels, scores = _as_arrays(labels, scores)
    classes = np.asarray(classes, dtype=str).ravel()
    if classes.shape != labels.shape:
        raise ValueError(f"classes and labels differ in length: {classes.size} vs {labels.size}.")
    result = {}
    for name in sorted(set(classes[labels == 1])):
        keep = (labels == 0) | ((classes == name) & (labels == 1))
        result[name] = image_metrics(labels[keep], scores[keep], threshold)
    return result


def _stratified_counts(n_normal: int, n_abnormal: int, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """How often each normal [resamples, n_normal] and each abnormal image [resamples, n_abnormal] is drawn in each
    stratified resample (with replacement, each class keeping its size)."""
    rng = np.random.default_rng(seed)
    normal = rng.integers(0, n_normal, (resamples, n_normal))
    abnormal = rng.integers(0, n_abnormal, (resamples, n_abnormal))
    rows = np.arange(resamples)[:, None]
    counts_normal, counts_abnormal = np.zeros((resamples, n_normal)), np.zeros((resamples, n_abnormal))
    np.add.at(counts_normal, (rows, normal), 1)
    np.add.at(counts_abnormal, (rows, abnormal), 1)
    return counts_normal, counts_abnormal


def _resampled_auroc(counts_normal, counts_abnormal, normal_scores, abnormal_scores) -> np.ndarray:
    """AUROC [resamples] of each resample given as draw counts: the Mann-Whitney form (ties count one half), which is
    what ``roc_auc_score`` computes, as one weighted sum over all normal-abnormal pairs."""
    above, tied = abnormal_scores[None, :] > normal_scores[:, None], abnormal_scores[None, :] == normal_scores[:, None]
    beats = above + 0.5 * tied  # [n_normal, n_abnormal]
    pairs = counts_normal.sum(1) * counts_abnormal.sum(1)
    return np.einsum("ri,ij,rj->r", counts_normal, beats, counts_abnormal, optimize=True) / pairs


def paired_auroc_bootstrap(
    labels, scores_a, scores_b, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """How sure is "A ranks the test images better than B"? A paired, stratified bootstrap of the AUROC difference.

    Both methods are scored on the same resampled images each time (paired), and normal and abnormal images are
    resampled separately (stratified), so every resample keeps the test set's class counts and AUROC stays defined
    even when one class has only a few images.

    Args:
        labels: 0 normal / 1 abnormal per image.
        scores_a, scores_b: the two methods' scores for the same images, in the same order.
        resamples: number of bootstrap resamples.
        confidence: coverage of the percentile interval of the difference.
        seed: seed of the resampling.

    Returns:
        ``auroc_a``, ``auroc_b``, ``diff`` (a - b on the test set), ``low`` / ``high`` (the percentile interval of
        the difference) and ``p_a_better`` (the fraction of resamples in which A's AUROC exceeds B's).
    """
    labels, scores_a = _as_arrays(labels, scores_a)
    _, scores_b = _as_arrays(labels, scores_b)
    if not _both_classes(labels):
        raise ValueError("the bootstrap needs normal and abnormal images.")
    normal, abnormal = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    counts_normal, counts_abnormal = _stratified_counts(normal.size, abnormal.size, resamples, seed)
    diffs = _resampled_auroc(counts_normal, counts_abnormal, scores_a[normal], scores_a[abnormal]) - _resampled_auroc(
        counts_normal, counts_abnormal, scores_b[normal], scores_b[abnormal])
    a, b = auroc(labels, scores_a), auroc(labels, scores_b)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return {"auroc_a": a, "auroc_b": b, "diff": a - b, "low": float(low), "high": float(high),
            "p_a_better": float((diffs > 0).mean())}  # fmt: skip
