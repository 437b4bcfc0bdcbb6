"""The metric functions agree with scikit-learn (and a brute-force F1 search) on random inputs."""

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, recall_score, roc_auc_score

from hdhkd_monai import metrics


@pytest.fixture(params=[0, 1, 2])
def random_case(request):
    rng = np.random.default_rng(request.param)
    n = 200
    labels = rng.integers(0, 2, n)
    # informative but overlapping scores, with ties from rounding
    scores = np.round(rng.normal(size=n) + 1.2 * labels, 1)
    classes = np.where(labels == 1, rng.choice(["DRUSEN", "FLUID", "LESION"], n), "NORMAL")
    threshold = float(np.quantile(scores, rng.uniform(0.3, 0.8)))
    return labels, scores, classes, threshold


def test_image_metrics_match_sklearn(random_case):
    labels, scores, _, threshold = random_case
    got = metrics.image_metrics(labels, scores, threshold)
    pred = (scores >= threshold).astype(int)
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert got["auprc"] == pytest.approx(average_precision_score(labels, scores))
    assert got["f1"] == pytest.approx(f1_score(labels, pred))
    assert got["acc"] == pytest.approx(accuracy_score(labels, pred))
    assert got["sen"] == pytest.approx(recall_score(labels, pred, pos_label=1))
    assert got["spe"] == pytest.approx(recall_score(labels, pred, pos_label=0))
    assert got["tp"] + got["fp"] + got["tn"] + got["fn"] == labels.size
    assert (got["n_normal"], got["n_abnormal"]) == (int((labels == 0).sum()), int(labels.sum()))


def test_sensitivity_at_95_specificity_is_the_best_cut_that_keeps_95_percent_of_normals(random_case):
    labels, scores, _, _ = random_case
    normal = scores[labels == 0]
    feasible = [t for t in np.unique(np.append(scores, np.inf)) if (normal < t).mean() >= 0.95]
    best = max(((scores >= t) & (labels == 1)).sum() / labels.sum() for t in feasible)
    assert metrics.sensitivity_at_specificity(labels, scores, 0.95) == pytest.approx(best)
    assert math.isnan(metrics.sensitivity_at_specificity([1, 1], [0.2, 0.3]))


def test_flag_all_f1_is_the_f1_of_calling_everything_abnormal(random_case):
    labels, _, _, _ = random_case
    assert metrics.flag_all_f1(labels) == pytest.approx(f1_score(labels, np.ones_like(labels)))
    assert metrics.image_metrics(labels, labels, 0.0)["f1"] == pytest.approx(metrics.flag_all_f1(labels))


def test_per_class_compares_each_abnormal_class_with_all_normals(random_case):
    labels, scores, classes, threshold = random_case
    got = metrics.per_class_metrics(labels, scores, classes, threshold)
    assert sorted(got) == ["DRUSEN", "FLUID", "LESION"]
    for name, result in got.items():
        keep = (labels == 0) | (classes == name)
        assert result["auroc"] == pytest.approx(roc_auc_score(labels[keep], scores[keep]))
        assert result["n_abnormal"] == int((classes == name).sum())
        assert result["n_normal"] == int((labels == 0).sum())


def test_undefined_metrics_are_nan_and_bad_labels_raise():
    assert math.isnan(metrics.auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(metrics.threshold_metrics([0, 0], [0.1, 0.9], 0.5)["sen"])
    with pytest.raises(ValueError, match="labels must be 0"):
        metrics.auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in length"):
        metrics.auroc([0, 1], [0.1])


def test_paired_bootstrap_separates_a_better_method_from_a_copy():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(40, int), np.ones(120, int)]
    weak = rng.normal(size=labels.size) + 0.3 * labels
    strong = weak + 1.5 * labels  # the same noise, more signal: better on every resample
    result = metrics.paired_auroc_bootstrap(labels, strong, weak, resamples=300)
    assert result["auroc_a"] == pytest.approx(roc_auc_score(labels, strong))
    assert result["diff"] == pytest.approx(result["auroc_a"] - result["auroc_b"])
    assert 0 < result["low"] <= result["diff"] <= result["high"]
    assert result["p_a_better"] == 1.0
    same = metrics.paired_auroc_bootstrap(labels, weak, weak, resamples=50)
    assert same["low"] == same["high"] == same["diff"] == 0.0 and same["p_a_better"] == 0.0


def test_paired_bootstrap_keeps_both_classes_in_every_resample():
    # 2 normals among 30: an unstratified resample would often draw none and AUROC would be undefined.
    labels = np.r_[0, 0, np.ones(28, int)]
    scores_a = np.linspace(0, 1, labels.size)
    result = metrics.paired_auroc_bootstrap(labels, scores_a, scores_a[::-1], resamples=200)
    assert all(math.isfinite(v) for v in result.values())
    with pytest.raises(ValueError, match="normal and abnormal"):
        metrics.paired_auroc_bootstrap(np.ones(5), np.arange(5), np.arange(5))


def test_bootstrap_aurocs_equal_roc_auc_score_on_the_drawn_images():
    """The weighted pair sum is the AUROC of each resample, ties included (scores rounded to force them)."""
    rng = np.random.default_rng(1)
    normal, abnormal = np.round(rng.normal(size=7), 1), np.round(rng.normal(size=11) + 0.5, 1)
    counts_normal, counts_abnormal = metrics._stratified_counts(7, 11, 25, seed=3)
    fast = metrics._resampled_auroc(counts_normal, counts_abnormal, normal, abnormal)
    for r in range(25):
        drawn_normal = np.repeat(normal, counts_normal[r].astype(int))
        drawn_abnormal = np.repeat(abnormal, counts_abnormal[r].astype(int))
        labels = np.r_[np.zeros(7), np.ones(11)]
        assert fast[r] == pytest.approx(roc_auc_score(labels, np.r_[drawn_normal, drawn_abnormal]), abs=1e-12)
