"""How training, memory and inference cost grow with the number of training images: HDHKD-S against PatchCore.

    python experiments/cost_scaling.py --data ../shared/data/brainmri-large --normal notumor --preset br35h \
        [--counts 100 300 1222] [--image-size 128] [--timed-iterations 20] [--out runs/cost-scaling/<set>]

For each count N, the first N training normals (sorted by name) are decoded and preprocessed as the runner does
(the preset's transforms, cached), and each method is measured in a fresh process at one torch thread:

- HDHKD-S (the bundle's ``train.json`` model): fitting the teacher's feature statistics on the N images, then
  ``--timed-iterations`` training steps (after 2 untimed ones) at the bundle's batch size, extrapolated to the bundle's iterations (the time
  of a step does not depend on N); size = parameters and buffers (the student's weights do not grow with N);
- PatchCore (the runner's baseline: EfficientNet-Lite0 ImageNet weights, 384 channels, 10 % coreset): ``fit`` on the
  N images, timed in full (features and the greedy coreset, which grows as N squared); size = the memory bank;

then inference time per image (batch 8, 64 test images, the map and the image score) and the process's peak resident
memory (``ru_maxrss``, which includes Python, torch and the cached images). Writes ``OUT/cost.json`` and the plot
``docs/figures/cost-scaling.png`` (``--figure``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from itertools import cycle, islice
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
N_TEST = 64
WARMUP = 2


def _images(folder: Path, n: int) -> list[dict]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if len(files) < n:
        raise ValueError(f"{folder} has {len(files)} images, fewer than the {n} asked for")
    return [{"image": str(p), "label": 0} for p in files[:n]]


def _loader(items: list[dict], preset: Path, image_size: int, batch_size: int, shuffle: bool = False):
    from monai.data import CacheDataset, DataLoader

    from hdhkd_monai.launcher import read_config

    transform = read_config(["train", preset], image_size=image_size).get_parsed_content("preprocessing")
    return DataLoader(CacheDataset(items, transform, progress=False), batch_size=batch_size, shuffle=shuffle)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _hdhkd(train, args) -> tuple[dict, object]:
    import torch

    from hdhkd_monai.distill import fit_teacher_stats
    from hdhkd_monai.launcher import read_config

    parser = read_config(["train", REPO / "configs" / f"{args.preset}.json"], image_size=args.image_size)
    model = parser.get_parsed_content("network_def")
    loss_fn = parser.get_parsed_content("loss")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=parser["learning_rate"])
    start = time.time()
    fit_teacher_stats(model.teacher, train, max_images=parser.get_parsed_content("stats_images"))
    stats_s = time.time() - start
    model.train()

    def step(batch) -> None:
        optimizer.zero_grad()
        loss_fn(*model(batch["image"].as_tensor())).backward()
        optimizer.step()

    batches = islice(cycle(train), WARMUP + args.timed_iterations)
    for batch in islice(batches, WARMUP):  # the first steps allocate; not timed
        step(batch)
    start = time.time()
    for batch in batches:
        step(batch)
    step_s = (time.time() - start) / args.timed_iterations
    parser["train#dataset#data"] = train.dataset.data  # the bundle's training length for these images
    iterations = int(parser.get_parsed_content("max_iterations"))
    model.eval()
    size = _nbytes(list(model.parameters()) + list(model.buffers()))
    return {"fit_s": stats_s + step_s * iterations, "teacher_stats_s": stats_s, "step_s": step_s,
            "iterations": iterations, "size_mib": size / 2**20}, model.anomaly_map  # fmt: skip


def _patchcore(train, args) -> tuple[dict, object]:
    from experiments.baselines import BACKBONE
    from hdhkd_monai.baselines import PatchCore
    from hdhkd_monai.networks import PretrainedTeacher

    start = time.time()
    model = PatchCore(PretrainedTeacher(**BACKBONE)).fit(batch["image"] for batch in train)
    fit_s = time.time() - start
    return {"fit_s": fit_s, "bank_rows": len(model.memory_bank), "size_mib": _nbytes([model.memory_bank]) / 2**20,
            "weights_mib": _nbytes(list(model.parameters())) / 2**20}, lambda x: model(x).pred_score  # fmt: skip


def measure(method: str, n: int, args) -> dict:
    """One (method, N) in this process (a fresh one: peak memory is per measurement)."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    preset = REPO / "configs" / f"{args.preset}.json"
    start = time.time()
    train = _loader(_images(args.data / "train" / args.normal, n), preset, args.image_size, 4, shuffle=True)
    test = _loader(_images(args.data / "test" / args.normal, N_TEST), preset, args.image_size, 8)
    load_s = time.time() - start
    row, infer = (_hdhkd if method == "HDHKD-S" else _patchcore)(train, args)
    start = time.time()
    with torch.no_grad():
        for batch in test:
            infer(batch["image"].as_tensor())
    row["infer_ms_per_image"] = 1000 * (time.time() - start) / N_TEST
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "n_train": n, "load_s": load_s, "peak_rss_mib": peak, **row}


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("fit_s", "training / fit time (s)"), ("size_mib", "model / memory bank (MiB)"),
              ("peak_rss_mib", "peak resident memory (MiB)"), ("infer_ms_per_image", "inference (ms / image)")]  # fmt: skip
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, (key, label) in zip(axes, panels):
        for method in dict.fromkeys(r["method"] for r in rows):
            points = sorted((r["n_train"], r[key]) for r in rows if r["method"] == method)
            ax.plot(*zip(*points), marker="o", label=method)
        ax.set_xlabel("training normals")
        ax.set_ylabel(label)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--normal", default="NORMAL")
    parser.add_argument("--preset", default="oct2017")
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 300, 1222])
    parser.add_argument("--methods", nargs="+", default=["HDHKD-S", "PatchCore"], choices=["HDHKD-S", "PatchCore"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--timed-iterations", type=int, default=20)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--figure", type=Path, default=REPO / "docs" / "figures" / "cost-scaling.png")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from OUT/cost.json")
    parser.add_argument("--note", default="", help="appended to the figure's title, e.g. the load it ran under")
    args = parser.parse_args(argv)
    out = args.out or REPO / "runs" / "cost-scaling" / args.data.name
    record = out / "cost.json"
    if not args.plot_only:
        rows = json.loads(record.read_text())["rows"] if record.exists() else []
        for n in args.counts:
            for method in args.methods:
                with mp.get_context("spawn").Pool(1) as pool:
                    row = pool.apply(measure, (method, n, args))
                print(json.dumps(row), flush=True)
                rows = [r for r in rows if (r["method"], r["n_train"]) != (method, n)] + [row]
                out.mkdir(parents=True, exist_ok=True)
                record.write_text(json.dumps({"data": args.data.name, "image_size": args.image_size,
                                              "load_avg": os.getloadavg(), "rows": rows}, indent=2))  # fmt: skip
    rows = json.loads(record.read_text())["rows"]
    title = f"{args.data.name}, {args.image_size}x{args.image_size}, 1 torch thread, shared 2-core CPU{args.note}"
    plot(rows, args.figure, title)
    return rows


if __name__ == "__main__":
    main()
