"""The bundle's Ignite handlers on small stand-in engines: checkpoints, calibration, validation schedule, shuffling,
the evaluation report."""

import json
import math

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DistributedSampler, MetaTensor
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from hdhkd_monai import metrics
from hdhkd_monai.anomaly_map import image_score, normalize_map
from hdhkd_monai.handlers import (
    AtomicCheckpointSaver,
    CalibrationHandler,
    CheckpointMismatchError,
    EvaluationReport,
    ImageAUROC,
    ReshuffleOnRestart,
    ResumeFromCheckpoint,
    load_checkpoint,
    load_network,
    save_checkpoint,
)
from hdhkd_monai.networks import Detector


def test_save_checkpoint_replaces_atomically_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"net": nn.Linear(2, 2)}, path)
    before = path.read_bytes()

    class Unsaveable:
        def state_dict(self):
            return {"bad": lambda: None}  # torch.save cannot pickle a lambda

    with pytest.raises(Exception):
        save_checkpoint({"net": Unsaveable()}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "a temporary file was left behind"


def test_load_checkpoint_names_the_file_and_the_mismatch(tmp_path):
    path = tmp_path / "other.pt"
    save_checkpoint({"net": nn.Linear(3, 2)}, path)
    with pytest.raises(CheckpointMismatchError, match=rf"{path}: entry 'net' .*does not fit Linear: shape mismatch .*weight \(2, 3\) != \(2, 4\)"):
        load_checkpoint(path, {"net": nn.Linear(4, 2)})
    with pytest.raises(CheckpointMismatchError, match=rf"{path}: has no entry \['teacher'\]"):
        load_checkpoint(path, {"teacher": nn.Linear(3, 2)})
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="junk.pt: cannot be read"):
        load_checkpoint(tmp_path / "junk.pt", {"net": nn.Linear(3, 2)})


def test_load_checkpoint_takes_a_network_saved_inside_distributed_data_parallel(tmp_path):
    saved = nn.Linear(3, 2)
    torch.save({"net": {f"module.{k}": v for k, v in saved.state_dict().items()}}, tmp_path / "ddp.pt")
    torch.testing.assert_close(load_network(nn.Linear(3, 2), tmp_path / "ddp.pt", key="net").weight, saved.weight)


def test_resume_restores_the_iteration_and_the_saved_objects(tmp_path):
    net = nn.Linear(2, 1)
    engine = Engine(lambda e, batch: None)
    AtomicCheckpointSaver(tmp_path, {"net": net}, "last.pt", save_interval=3, engine_key="trainer").attach(engine)
    engine.run(list(range(5)), max_epochs=1, epoch_length=4)
    position = torch.load(tmp_path / "last.pt", weights_only=True)["trainer"]
    assert position["iteration"] == 3 and torch.equal(position["rng_state"], torch.get_rng_state())

    restored, seen = nn.Linear(2, 1), []
    resumed = Engine(lambda e, batch: seen.append(e.state.iteration))
    ResumeFromCheckpoint(tmp_path / "last.pt", {"net": restored}).attach(resumed)
    resumed.run(list(range(5)), max_epochs=1, epoch_length=6)
    assert seen == [4, 5, 6]
    torch.testing.assert_close(restored.weight, net.weight)


def test_best_checkpoint_is_saved_only_when_the_metric_improves(tmp_path):
    net = nn.Linear(2, 1)
    saver = AtomicCheckpointSaver(tmp_path, {"net": net}, "model.pt", key_metric_name="auroc")
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    values = iter([0.6, 0.5, 0.8])

    @engine.on(Events.EPOCH_STARTED)
    def set_metric(e):
        e.state.metrics["auroc"] = next(values)
        net.weight.data.fill_(e.state.metrics["auroc"])

    written = []
    def read_back(e):
        written.append(float(torch.load(tmp_path / "model.pt", weights_only=True)["net"]["weight"][0, 0]))

    engine.add_event_handler(Events.EPOCH_COMPLETED, read_back)
    engine.run([0], max_epochs=3)
    assert written == pytest.approx([0.6, 0.6, 0.8]) and saver.best == pytest.approx(0.8)
    assert saver.state_dict() == {"best": pytest.approx(0.8)}


def test_calibration_sets_quantiles_and_threshold_from_normal_images_only(caplog):
    model = Detector()  # the contract's calibration state; no network needed
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(12, 1, 8, 8, generator=gen)
    labels = torch.tensor([0] * 8 + [1] * 4)
    maps[labels == 1] += 5.0  # abnormal maps must not move the calibration
    batches = [
        [{"pred": m, "score": float(image_score(m[None])), "label": int(y)} for m, y in zip(maps[i : i + 4], labels[i : i + 4])]
        for i in range(0, 12, 4)
    ]
    engine = Engine(lambda e, batch: batch)
    CalibrationHandler(model, low=0.9, high=0.995, threshold_quantile=0.75).attach(engine)
    engine.run(batches, max_epochs=1)

    normal = maps[labels == 0]
    expected_q = torch.quantile(normal.flatten(), torch.tensor([0.9, 0.995]))
    torch.testing.assert_close(model.map_quantiles, expected_q)
    expected_t = torch.quantile(image_score(normalize_map(normal, expected_q)), 0.75)
    torch.testing.assert_close(model.threshold, expected_t)
    assert engine.state.metrics["threshold"] == pytest.approx(float(expected_t))
    normal_scores = image_score(normalize_map(normal, expected_q))
    extremes = torch.stack([normal_scores.min(), normal_scores.max()])
    torch.testing.assert_close(model.normal_score_quantiles[[0, -1]], extremes)
    assert model.calibration == {"map_quantiles": [0.9, 0.995], "threshold_quantile": 0.75}
    # 8 normal images are below the default minimum of 20: the user is told the threshold is uncertain
    assert engine.state.metrics["calibration_normals"] == 8
    assert "only 8 normal validation images" in caplog.text


def test_image_auroc_metric_matches_sklearn_on_an_evaluator_run():
    from sklearn.metrics import roc_auc_score

    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    engine = Engine(lambda e, batch: batch)
    ImageAUROC(output_transform=lambda out: ([o["score"] for o in out], [o["label"] for o in out])).attach(engine, "auc")
    batches = [[{"score": float(s), "label": int(y)} for s, y in zip(scores[i : i + 2], labels[i : i + 2])] for i in (0, 2, 4)]
    engine.run(batches, max_epochs=1)
    assert engine.state.metrics["auc"] == pytest.approx(roc_auc_score(labels, scores))


def test_distributed_sampler_reshuffles_each_time_the_loader_restarts():
    dataset = list(range(16))
    sampler = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True)
    loader = DataLoader(dataset, batch_size=8, sampler=sampler)  # one batch per pass over this rank's half
    engine = Engine(lambda e, batch: batch.tolist())
    passes = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: passes.append(e.state.output))
    ReshuffleOnRestart(loader).attach(engine)
    engine.run(loader, max_epochs=1, epoch_length=3)
    assert len({tuple(p) for p in passes}) == 3, passes


def test_evaluation_report_writes_metrics_and_leaves_undelineated_masks_out_of_pixel_auroc(tmp_path):
    gen = torch.Generator().manual_seed(0)
    labels = [0, 0, 0, 0, 1, 1, 1]
    masks = [torch.zeros(1, 8, 8) for _ in range(4)] + [torch.zeros(1, 8, 8) for _ in range(2)]
    for m in masks[4:]:
        m[0, 2:5, 2:5] = 1
    masks.append(torch.full((1, 8, 8), math.nan))  # an abnormal image without a mask file
    maps = [torch.rand(1, 8, 8, generator=gen) + 0.5 * m.nan_to_num(0) for m in masks]
    maps[6] = maps[6] + 3.0  # would ruin the pixel AUROC if its NaN mask counted as "all normal"
    data = [
        {"i": i, "label": y, "class": "LESION" if y else "NORMAL", "mask": m}
        for i, (y, m) in enumerate(zip(labels, masks))
    ]
    outputs = [
        {
            "image": MetaTensor(torch.rand(3, 8, 8, generator=gen), meta={"filename_or_obj": f"/x/img{i}.png"}),
            "pred": p,
            "score": float(p.max()),
        }
        for i, p in enumerate(maps)
    ]
    engine = Engine(lambda e, batch: [outputs[item["i"]] for item in batch])  # an evaluator's decollated output
    EvaluationReport(tmp_path, threshold=1.0, n_heatmaps=2).attach(engine)
    engine.run([data[i : i + 3] for i in range(0, 7, 3)], max_epochs=1)

    report = json.loads((tmp_path / "metrics.json").read_text())
    scores = [o["score"] for o in outputs]
    expected = metrics.image_metrics(labels, scores, 1.0)
    assert report["image"] == pytest.approx(expected)
    delineated = list(range(6))
    pixel_labels = torch.cat([masks[i].flatten() for i in delineated]).numpy() > 0
    pixel_scores = torch.cat([maps[i].flatten() for i in delineated]).numpy()
    assert report["pixel_auroc"] == pytest.approx(roc_auc_score(pixel_labels, pixel_scores), abs=1e-3)
    assert set(report["per_class"]) == {"LESION"}
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == 1 + 7
    assert len(list((tmp_path / "heatmaps").glob("*.png"))) == 4
    assert (tmp_path / "roc.png").is_file() and (tmp_path / "pr.png").is_file()
