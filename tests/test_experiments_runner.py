"""Smoke run of the experiment runner (experiments/run.py) on a tiny synthetic OCT set.

One module fixture writes 64x64 phantom B-scans and runs the ``main`` table (teacher distillation, the full HDHKD,
EfficientAD-S, PatchCore, RD4AD) and ``table5`` restricted to ``1_conv`` into the same run folder, at 2 student and
2 teacher iterations. The tests check the tables it wrote, the markdown, the refusal of unknown rows, and that running
a table again reads its evaluated rows back instead of running them again. Most of the file's time is the start-up
of the fixture's 6 subprocesses (a row's training and evaluation share one; torch and MONAI are imported in each).
It writes about 330 MB of checkpoints under pytest's tmp_path.
"""

import csv
import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from experiments import compare, report, run
from hdhkd_monai.data.phantom import ANOMALY_CLASSES, write_phantom
from hdhkd_monai.launcher import read_config

pytestmark = pytest.mark.slow

N_TRAIN, N_TEST_PER_CLASS = 9, 3  # 3 patients of 3 B-scans: the last one is the validation split
BUDGET = {"image_size": 64, "iterations": 2, "batch_size": 4, "teacher_iterations": 2, "seed": 0}
BASELINES = ("EfficientAD-S", "PatchCore", "RD4AD")
IMAGE_METRICS = ("auroc", "auprc", "f1", "acc", "sen", "spe")


def runner_args(table, data, out, *extra):
    return [
        table, "--data", str(data), "--out", str(out), "--no-doc",
        "--image-size", str(BUDGET["image_size"]), "--iterations", str(BUDGET["iterations"]),
        "--teacher-iterations", str(BUDGET["teacher_iterations"]), "--batch-size", str(BUDGET["batch_size"]),
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The data folder, the run folder, and the ``main`` and ``table5`` tables the runner wrote into it."""
    root = tmp_path_factory.mktemp("runner")
    data = write_phantom(root / "phantom", n_train=N_TRAIN, n_test_per_class=N_TEST_PER_CLASS, size=64, seed=0)
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:  # --no-doc: docs/results.md must stay untouched
        patch.setattr(run, "replace_section", lambda *a: pytest.fail(f"--no-doc still rewrote {a[0]}"))
        run.main(runner_args("main", data, out))
        run.main(runner_args("table5", data, out, "--rows", "1_conv"))
    tables = {name: json.loads((out / f"{name}.json").read_text()) for name in ("main", "table5")}
    return data, out, tables


def test_tables_have_one_row_per_expected_name_with_metrics_counts_and_budget(runs):
    _, out, tables = runs
    expected = {"main": ["table5/7_full", *BASELINES], "table5": ["table5/1_conv"]}
    for name, table in tables.items():
        assert table["table"] == name and table["budget"] == BUDGET
        assert [row["name"] for row in table["rows"]] == expected[name]
        for row in table["rows"]:
            image = row["image"]
            for key in IMAGE_METRICS:
                assert 0.0 <= image[key] <= 1.0, (row["name"], key, image[key])
            assert image["n_normal"] == N_TEST_PER_CLASS
            assert image["n_abnormal"] == N_TEST_PER_CLASS * len(ANOMALY_CLASSES)
            assert set(row["per_class"]) == set(ANOMALY_CLASSES)
            assert row["train_s"] > 0
    hdhkd_scores = compare.read_scores(out / "table5" / "7_full")
    for name in BASELINES:
        assert json.loads((out / "baselines" / f"{name}.json").read_text())["name"] == name
        # the baselines' per-image scores pair with HDHKD's, image by image, for experiments/compare.py
        labels, _, _ = compare.paired(hdhkd_scores, compare.read_scores(out / "baselines" / name), "a", "b")
        assert labels.size == N_TEST_PER_CLASS * (1 + len(ANOMALY_CLASSES))


#: The detector config each baseline's inference takes after inference.json.
DETECTOR_CONFIGS = {"EfficientAD-S": "efficientad", "PatchCore": "patchcore", "RD4AD": "rd4ad"}


@pytest.mark.parametrize("name", BASELINES)
def test_a_baseline_trained_by_the_runner_is_a_bundle_model_that_inference_json_scores(runs, name, tmp_path):
    """The runner trains each baseline with the bundle's train.json + its detector config, so its folder is a bundle
    like HDHKD's: inference.json + the detector config rebuilds the detector from model.pt alone (EfficientAD-S
    its PDN teacher too, with no teacher.pt) and scores the test images as the evaluation did. (Their TorchScript
    and ONNX exports: tests/test_bundle_checks.py; a packed one through the Zoo's CI: tests/test_share_deploy.py.)"""
    _, out, _ = runs
    root = out / "baselines" / name
    parser = read_config(["inference", DETECTOR_CONFIGS[name]], bundle_root=str(root),
                         input=str(out / "datalist.json"), output_dir=str(tmp_path / "inference"))  # fmt: skip
    parser.get_parsed_content("evaluator").run()
    with open(tmp_path / "inference" / "scores.csv", newline="") as f:
        inferred = {row["path"]: float(row["score"]) for row in csv.DictReader(f)}
    evaluated = {path: score for path, (_, score) in compare.read_scores(root).items()}
    assert inferred.keys() == evaluated.keys()
    assert all(abs(inferred[p] - evaluated[p]) < 1e-5 for p in inferred), (inferred, evaluated)


def test_hdhkd_rows_train_their_own_ablation_and_evaluate_from_their_checkpoint(runs):
    _, out, tables = runs
    full, conv = tables["main"]["rows"][0], tables["table5"]["rows"][0]
    for row in (full, conv):
        folder = out / row["name"]
        assert row["config"] == json.loads((run.REPO / "configs" / f"{row['name']}.json").read_text())
        assert json.loads((folder / "run.json").read_text())["max_iterations"] == BUDGET["iterations"]
        last = torch.load(folder / "models" / "last.pt", map_location="cpu", weights_only=True)
        assert last["trainer"]["iteration"] == BUDGET["iterations"]
        assert json.loads((folder / "eval" / "metrics.json").read_text())["image"] == row["image"]
        assert row["trainable_params"] > 0
    # 1_conv has no global decoder and no MFM: the row's config really reached the network
    assert conv["trainable_params"] < full["trainable_params"]


def test_markdown_lists_every_row_with_its_counts(runs):
    _, _, tables = runs
    for table in tables.values():
        text = report.markdown(table)
        for row in table["rows"]:
            line = next((ln for ln in text.splitlines() if ln.startswith(f"| {row['name']} |")), None)
            assert line is not None, f"{row['name']} missing from\n{text}"
            assert f"| {N_TEST_PER_CLASS} / {N_TEST_PER_CLASS * len(ANOMALY_CLASSES)} |" in line
            # one seed: each abnormal class's AUROC, as it is in the row
            classes = sorted(row["per_class"])
            assert "| row | " + " | ".join(classes) + " |" in text
            cells = " | ".join(f"{100 * row['per_class'][c]['auroc']:.2f}" for c in classes)
            assert f"| {row['name']} | {cells} |" in text


@pytest.mark.parametrize("rows", [["no_such_row"], ["1_conv", "no_such_row"]])
def test_unknown_row_is_refused_by_name_before_anything_runs(runs, rows):
    data, out, _ = runs
    with pytest.raises(ValueError, match=r"\['no_such_row'\]: not rows of table5"):
        run.main(runner_args("table5", data, out / "refused", "--rows", *rows))
    assert not (out / "refused" / "datalist.json").exists()


def test_running_a_table_again_reads_its_evaluated_rows_back_without_running_a_workflow(runs, monkeypatch):
    data, out, tables = runs
    for name in ("run_bundle", "run_bundles"):
        monkeypatch.setattr(run, name, lambda *a, **k: pytest.fail("a row evaluated under these settings ran again"))
    run.main(runner_args("table5", data, out, "--rows", "1_conv"))
    assert json.loads((out / "table5.json").read_text())["rows"] == tables["table5"]["rows"]


def test_set_overrides_reach_the_rows_and_a_row_trained_otherwise_is_not_resumed(runs):
    data, out, tables = runs
    with pytest.raises(ValueError, match=r"1_conv was trained under other settings \(decoder_channels: None -> 32\)"):
        run.main(runner_args("table5", data, out, "--rows", "1_conv", "--set", "decoder_channels=32"))

    variant = out.parent / "variant"
    variant.mkdir()
    shutil.copy(out / "datalist.json", variant)
    shutil.copytree(out / "teacher", variant / "teacher")
    run.main(runner_args("table5", data, variant, "--rows", "1_conv", "--set", "decoder_channels=32"))
    table = json.loads((variant / "table5.json").read_text())
    assert table["budget"] == {**BUDGET, "overrides": {"decoder_channels": 32}}
    assert json.loads((variant / "table5" / "1_conv" / "run.json").read_text())["decoder_channels"] == 32
    assert table["rows"][0]["trainable_params"] < tables["table5"]["rows"][0]["trainable_params"]
    assert "`decoder_channels=32`" in report.markdown(table)


def test_set_values_are_json_or_strings_and_runner_keys_are_refused():
    assert run.parse_overrides(["learning_rate=0.001", "hdhkd#norm=instance", "score_top_k=null"]) == {
        "learning_rate": 0.001, "hdhkd#norm": "instance", "score_top_k": None,
    }  # fmt: skip
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        run.parse_overrides(["learning_rate"])
    with pytest.raises(ValueError, match="--set seed: set by the runner itself"):
        run.parse_overrides(["seed=3"])


class Retrained(Exception):
    pass


def test_baselines_evaluated_under_the_same_budget_are_read_back_and_a_new_budget_retrains(runs, monkeypatch, tmp_path):
    from experiments import baselines

    _, shared_out, tables = runs
    # a copy: retraining clears the first baseline's folder, which the module's other tests still read
    out = Path(shutil.copytree(shared_out, tmp_path / "out", symlinks=True))

    def train(*args, **kwargs):
        raise Retrained

    monkeypatch.setattr(baselines, "run_bundles", train)
    args = run.argparse.Namespace(**{k: v for k, v in BUDGET.items() if k != "teacher_iterations"}, fresh=False,
                                  baselines=list(BASELINES))
    teacher = shared_out / "teacher" / "models" / "teacher.pt"  # part of the budget record: the one trained with
    inputs = (out, out / "datalist.json", run.REPO / "configs" / "oct2017.json", teacher)
    assert baselines.run_baselines(args, *inputs) == tables["main"]["rows"][1:]
    args.iterations += 1
    with pytest.raises(Retrained):
        baselines.run_baselines(args, *inputs)


def test_report_only_rewrites_the_doc_section_from_the_table_json_without_running(runs, monkeypatch):
    data, out, tables = runs
    written = []
    monkeypatch.setattr(run, "replace_section", lambda doc, key, body: written.append((doc.name, key, body)))
    for name in ("run_bundle", "run_bundles"):
        monkeypatch.setattr(run, name, lambda *a, **k: pytest.fail("--report-only ran a workflow"))
    run.main(["main", "--data", str(data), "--out", str(out), "--report-only"])
    assert written == [("results.md", f"main:{data.name}", report.markdown(tables["main"]))]


def test_training_time_is_kept_for_re_evaluation_and_grows_with_further_iterations(tmp_path):
    first = run.kept_training_time(tmp_path, iterations=2, seconds=5.0)
    assert first == 5.0
    assert run.kept_training_time(tmp_path, iterations=2, seconds=0.5) == first  # a no-op resume: the time stands
    assert run.kept_training_time(tmp_path, iterations=4, seconds=3.0) == first + 3.0


def test_several_seeds_run_into_their_own_folders_and_report_mean_and_spread(runs):
    data, out, _ = runs
    seeds_out = out.parent / "seeds"
    seeds_out.mkdir()
    shutil.copy(out / "datalist.json", seeds_out)
    # seed 0 is the fixture's budget: its evaluated row is read back, so only seed 1 trains here
    shutil.copytree(out / "table5" / "1_conv", seeds_out / "seed0" / "table5" / "1_conv")
    run.main(runner_args("table5", data, seeds_out, "--rows", "1_conv", "--seeds", "0", "1"))
    tables = [json.loads((seeds_out / f"seed{s}" / "table5.json").read_text()) for s in (0, 1)]
    assert [t["budget"]["seed"] for t in tables] == [0, 1]
    assert [json.loads((seeds_out / f"seed{s}" / "table5" / "1_conv" / "run.json").read_text())["seed"]
            for s in (0, 1)] == [0, 1]  # fmt: skip
    aurocs = [100 * t["rows"][0]["image"]["auroc"] for t in tables]
    line = next(line for line in report.markdown_seeds(tables, []).splitlines() if line.startswith("| table5/1_conv"))
    mean, sd = sum(aurocs) / 2, abs(aurocs[0] - aurocs[1]) / 2**0.5
    assert f"| {mean:.2f} ± {sd:.2f} | {aurocs[0]:.2f} / {aurocs[1]:.2f} |" in line


def test_seed_comparisons_pair_hdhkd_with_the_best_baseline(runs):
    _, out, tables = runs
    main = tables["main"]
    best = max(main["rows"][1:], key=lambda r: r["image"]["auroc"])["name"]
    (line,) = run.seed_comparisons("main", [out, out], [main, main])
    expected = compare.compare_runs(out / "table5" / "7_full", out / "baselines" / best)
    assert line.startswith(f"`table5/7_full` - `{best}`")
    assert f"seed 0: {100 * expected['diff']:+.2f} [{100 * expected['low']:+.2f}, {100 * expected['high']:+.2f}]" in line


def _seed_table(seed: int, aurocs: dict[str, float]) -> dict:
    """A main table of one seed whose rows score ``aurocs`` overall and per class (AMD: the AUROC, DME: its half)."""
    def row(name, auroc):
        image = {"auroc": auroc, "auprc": 0.9, "sen_at_95spe": 0.3, "f1_flag_all": 0.88, "f1": 0.5, "spe": 0.9,
                 "n_normal": 4, "n_abnormal": 22}  # fmt: skip
        per_class = {"AMD": {"auroc": auroc}, "DME": {"auroc": auroc / 2}}
        return {"name": name, "image": image, "per_class": per_class, "train_s": 1.0, "trainable_params": 1e6}

    return {"data": "neh-oct", "wall_s": 60, "budget": {**BUDGET, "seed": seed},
            "rows": [row(name, auroc) for name, auroc in aurocs.items()]}  # fmt: skip


def test_a_row_run_on_some_seeds_only_is_shown_with_its_seeds_and_each_class_gets_its_auroc():
    tables = [_seed_table(0, {"table5/7_full": 0.8, "EfficientAD-S": 0.6, "PatchCore": 0.7}),
              _seed_table(1, {"table5/7_full": 0.9, "PatchCore": 0.5})]  # fmt: skip
    lines = report.markdown_seeds(tables, []).splitlines()
    efficientad = next(line for line in lines if line.startswith("| EfficientAD-S | 60.00 ± 0.00 | 60.00 / - |"))
    assert efficientad.endswith("| 4 / 22 | 1 |")
    assert "| PatchCore | 60.00 ± 14.14 | 70.00 / 50.00 |" in lines[lines.index(efficientad) + 1]
    assert "| row | AMD | DME |" in lines
    assert "| table5/7_full | 85.00 ± 7.07 | 42.50 ± 3.54 |" in lines
    assert "| EfficientAD-S | 60.00 ± 0.00 | 30.00 ± 0.00 |" in lines


def test_the_best_baseline_of_the_seed_comparison_is_one_run_on_every_seed(monkeypatch):
    """EfficientAD-S, run on seed 0 only, has the best mean but cannot be paired on seed 1: PatchCore is compared."""
    tables = [_seed_table(0, {"table5/7_full": 0.8, "EfficientAD-S": 0.95, "PatchCore": 0.7, "RD4AD": 0.6}),
              _seed_table(1, {"table5/7_full": 0.9, "PatchCore": 0.7, "RD4AD": 0.6})]  # fmt: skip
    monkeypatch.setattr(run, "compare_runs", lambda a, b: {"diff": 0.01, "low": -0.02, "high": 0.03})
    (line,) = run.seed_comparisons("main", [Path("s0"), Path("s1")], tables)
    assert line.startswith("`table5/7_full` - `PatchCore`") and "seed 1: +1.00 [-2.00, +3.00]" in line


@pytest.mark.parametrize("data, paper", [("oct2017", "99.72"), ("brainmri", "96.38"), ("neh-oct", ""), ("mydata", "")])
def test_the_paper_auroc_shown_is_that_of_the_same_data_set_or_none(data, paper):
    image = {"auroc": 0.7, "auprc": 0.8, "sen_at_95spe": 0.3, "f1_flag_all": 0.88, "f1": 0.5, "acc": 0.5, "sen": 0.5,
             "spe": 0.9, "n_normal": 4, "n_abnormal": 22}  # fmt: skip
    table = {"data": data, "wall_s": 60, "budget": {**BUDGET}, "rows": [{"name": "table5/7_full", "image": image,
             "train_s": 1.0, "trainable_params": 1e6}]}  # fmt: skip
    line = next(ln for ln in report.markdown(table).splitlines() if ln.startswith("| table5/7_full"))
    assert line.split(" | ")[9] == paper
    assert "F1 of flagging every test image abnormal (the floor for the F1 column): 88.00" in report.markdown(table)
