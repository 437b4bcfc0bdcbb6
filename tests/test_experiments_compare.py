"""experiments/compare.py pairs two score CSVs by image and refuses CSVs of different test sets."""

import csv

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from experiments import compare


def _write(path, labels, scores, paths=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    paths = paths or [f"img{i}.png" for i in range(len(labels))]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "class", "score", "decision"])
        writer.writeheader()
        for p, y, s in zip(paths, labels, scores):
            writer.writerow({"path": p, "label": y, "class": "A" if y else "NORMAL", "score": s, "decision": 0})
    return path


def test_compare_pairs_rows_by_image_path(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(20, int), np.ones(40, int)]
    good, bad = labels + rng.normal(0, 0.5, 60), rng.normal(0, 0.5, 60)
    # B lists its images in reverse order: pairing must go by path, not by position.
    _write(tmp_path / "row" / "eval" / "scores.csv", labels, good)
    paths = [f"img{i}.png" for i in range(60)]
    _write(tmp_path / "b.csv", labels[::-1], bad[::-1], paths[::-1])
    result = compare.main([str(tmp_path / "row"), str(tmp_path / "b.csv"), "--resamples", "200"])
    assert result["diff"] > 0.3 and result["low"] > 0 and result["p_a_better"] == 1.0
    assert "A better in 100.0%" in capsys.readouterr().out
    assert result["rank_correlation"] < 0.9


def test_compare_reports_how_alike_the_two_rankings_are(tmp_path):
    scores = np.linspace(0, 1, 30)
    labels = (scores > 0.4).astype(int)
    a = _write(tmp_path / "a.csv", labels, scores)
    same_order = _write(tmp_path / "b.csv", labels, scores**3)  # another scale, the same ranking
    reversed_order = _write(tmp_path / "c.csv", labels, -scores)
    assert compare.main([str(a), str(same_order), "--resamples", "50"])["rank_correlation"] == pytest.approx(1.0)
    assert compare.main([str(a), str(reversed_order), "--resamples", "50"])["rank_correlation"] == pytest.approx(-1.0)


def test_compare_refuses_different_images_or_labels(tmp_path):
    a = _write(tmp_path / "a.csv", [0, 1, 1], [0.1, 0.5, 0.9])
    b = _write(tmp_path / "b.csv", [0, 1, 1], [0.1, 0.5, 0.9], ["img0.png", "img1.png", "other.png"])
    with pytest.raises(ValueError, match="scored different images"):
        compare.main([str(a), str(b)])
    c = _write(tmp_path / "c.csv", [0, 0, 1], [0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match="different labels"):
        compare.main([str(a), str(c)])
    with pytest.raises(FileNotFoundError, match="no such scores CSV"):
        compare.main([str(a), str(tmp_path / "missing")])


def test_normal_costs_average_to_one_minus_auroc_and_find_the_odd_normal(tmp_path, capsys):
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(12, int), np.ones(30, int)]
    scores = np.round(labels + rng.normal(0, 0.6, 42), 1)  # rounded: ties between normal and abnormal images
    odd = 3
    scores[odd] = 5.0  # a normal image scored above every abnormal one
    costs = compare.normal_costs(labels, scores)
    assert costs.mean() == pytest.approx(1 - roc_auc_score(labels, scores))
    assert costs[odd] == 1.0 and costs.argmax() == odd
    paths = [f"img{i:02d}.png" for i in range(42)]
    a = _write(tmp_path / "a.csv", labels, scores, paths)
    b = _write(tmp_path / "b.csv", labels, labels.astype(float), paths)  # B separates perfectly
    result = compare.main([str(a), str(b), "--resamples", "50", "--costly-normals", "2"])
    assert result["normal_costs"][f"img{odd:02d}.png"] == (1.0, 0.0)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3].endswith(f"img{odd:02d}.png") and "100.0 %" in lines[-3] and len(lines) == 8
    top_two = sorted(costs)[-2:]
    assert lines[-1] == f"these 2 cost A {100 * sum(top_two) / 12:.2f} AUROC points and B 0.00"
