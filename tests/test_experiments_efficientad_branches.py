"""experiments/efficientad_branches.py's report: per-map AUROCs over the test groups, per-group teacher medians."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.efficientad_branches import report  # noqa: E402


def _measures(student_teacher: float, energy: float) -> dict:
    return {"student-teacher": student_teacher, "autoencoder": 0.5, "both": student_teacher, "teacher energy": energy,
            "max (t - s)^2": energy / 2}


def test_a_map_that_scores_the_abnormal_images_lower_reads_below_50_and_the_groups_keep_their_medians():
    groups = {
        "training normal": [_measures(0.1, 0.9)] * 3,
        "test normal": [_measures(0.08, 0.9), _measures(0.09, 1.0)],
        "test abnormal": [_measures(0.01, 0.4), _measures(0.02, 0.5), _measures(0.03, 0.6)],
    }
    lines = report(groups)
    assert lines[0] == "test normal / abnormal: 2 / 3"
    assert "student-teacher  AUROC   0.00" in lines[1] and "autoencoder      AUROC  50.00" in lines[2]
    assert "median score normal 0.085, abnormal 0.020" in lines[1]
    assert "test abnormal    n=   3; median teacher energy 0.500, max (t - s)^2 0.250" in lines[-1]
