"""Inference at scale on real B-scans, measured in one run: images/s end to end and for the network alone, memory
over the run, and the overlays' own cost.

The inputs are the neh-oct and oct2017 B-scans of ``../shared/data`` (train and test, 439 JPEGs), copied round-robin
into ``--n`` files. The model is ``inference.json``'s default network (HDHKD-S, 128 px) with untrained weights in
``model.pt``: the time does not depend on the weights. In one process:

1. **network alone**: the inference network on one batch of real preprocessed B-scans, ``--net-n / --batch``
   times, under ``torch.no_grad``, before and after the end-to-end run (the two bracket the machine's load drift);
2. **end to end, overlays off**: the inference workflow on the ``--n`` files (screening every input, decoding and
   preprocessing in ``--workers`` DataLoader workers, network, maps back at each image's size, NIfTI maps written by
   the writer thread, ``scores.csv``); the resident memory of this process and of its workers is sampled every 25
   batches;
3. **overlays**: the workflow on the first ``--overlay-n`` files with overlays on and off; the difference per image
   is an overlay's own cost.

The load average and torch's thread count are printed with the figures: the machine is shared.

    python bench/inference_scale.py --n 2000 --workers 2
    python bench/inference_scale.py --n 200 --net-n 80 --overlay-n 20      # a shorter look
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from ignite.engine import Events  # noqa: E402

from hdhkd_monai.data.transforms import preprocessing_fingerprint  # noqa: E402
from hdhkd_monai.handlers import save_checkpoint  # noqa: E402
from hdhkd_monai.launcher import read_config  # noqa: E402
from hdhkd_monai.quiet import quiet_warnings  # noqa: E402

SETS = ("neh-oct", "oct2017")


def copy_inputs(data: Path, folder: Path, n: int) -> list[Path]:
    """``n`` copies of the real B-scans, round-robin, 100 to a subfolder."""
    sources = sorted(p for name in SETS for p in (data / name).rglob("*.jpeg"))
    if not sources:
        raise SystemExit(f"no B-scans under {data}/{{{','.join(SETS)}}} (see ../shared/data/PROVENANCE.md)")
    copies = []
    for k in range(n):
        target = folder / f"{k // 100:03d}" / f"{k:05d}_{sources[k % len(sources)].name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources[k % len(sources)], target)
        copies.append(target)
    return copies


def make_model(root: Path) -> None:
    parser = read_config(["inference"], bundle_root=str(root))
    fingerprint = preprocessing_fingerprint(parser.get_parsed_content("preprocessing"))
    save_checkpoint({"model": parser.get_parsed_content("network_def")}, root / "models" / "model.pt",
                    extra={"preprocessing": fingerprint})


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def tree_rss_mb() -> float:
    """Resident memory of this process and its children (the DataLoader workers)."""
    pids = [os.getpid()]
    try:
        pids += [int(p) for p in Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()]
    except OSError:
        pass
    return sum(rss_mb(pid) for pid in pids if Path(f"/proc/{pid}").exists())


def workflow(root: Path, source: Path, out: Path, args, overlays: bool):
    return read_config(["inference"], bundle_root=str(root), input=str(source), output_dir=str(out),
                       overwrite=True, overlays=overlays, num_workers=args.workers, batch_size=args.batch)


def network_alone(parser, n: int, batch: int) -> float:
    """Seconds for the network on ``n`` images: one real batch, ``n // batch`` times."""
    net = parser.get_parsed_content("network").eval()
    loader = parser.get_parsed_content("dataloader")
    x = next(iter(loader))["image"].as_tensor()
    with torch.no_grad():
        net(x)  # warm-up
        start = time.perf_counter()
        for _ in range(n // batch):
            net(x)
    return time.perf_counter() - start


def end_to_end(parser, samples: list | None = None) -> float:
    """Seconds of the engine run (after the inputs were screened)."""
    evaluator = parser.get_parsed_content("evaluator")
    if samples is not None:
        evaluator.add_event_handler(Events.ITERATION_COMPLETED(every=25),
                                    lambda e: samples.append((e.state.iteration, tree_rss_mb())))
    begin = time.perf_counter()
    evaluator.run()
    return time.perf_counter() - begin


def timed_run(parser) -> float:
    """Seconds from screening the inputs to the end of the run."""
    start = time.perf_counter()
    parser.get_parsed_content("items")
    return time.perf_counter() - start + end_to_end(parser)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--net-n", type=int, default=200, help="images for the network alone, before and after")
    parser.add_argument("--overlay-n", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    quiet_warnings()
    work = args.work or Path(tempfile.mkdtemp(prefix="inference_scale."))
    copies = copy_inputs(args.data, work / "inputs", args.n)
    make_model(work)
    load = os.getloadavg()
    print(f"{args.n} B-scans, batch {args.batch}, {args.workers} loader workers, torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} cores, load average {load[0]:.1f} at start", flush=True)

    run = workflow(work, work / "inputs", work / "out", args, overlays=False)
    start = time.perf_counter()
    run.get_parsed_content("items")  # every input screened: the first part of end to end
    screen_s = time.perf_counter() - start
    net_s = [network_alone(run, args.net_n, args.batch)]
    samples = [(0, tree_rss_mb())]
    run_s = end_to_end(run, samples)
    net_s.append(network_alone(run, args.net_n, args.batch))
    net_rate = [args.net_n / s for s in net_s]
    print(f"network alone on {args.net_n} images, before and after: {net_rate[0]:.2f} and {net_rate[1]:.2f} "
          "images/s", flush=True)
    total = screen_s + run_s
    ratio = args.n / total
    print(f"end to end, overlays off: {ratio:.2f} images/s ({total:.0f} s: screening {screen_s:.1f} s, engine "
          f"{run_s:.0f} s); end to end costs {min(net_rate) / ratio:.2f}x to {max(net_rate) / ratio:.2f}x the "
          "network alone", flush=True)
    print("memory (this process and its workers, MB) by iteration: "
          + ", ".join(f"{it}: {mb:.0f}" for it, mb in samples), flush=True)

    subset = work / "subset.txt"
    subset.write_text("".join(f"{p}\n" for p in copies[: args.overlay_n]))
    times = {}
    for overlays in (False, True):
        times[overlays] = timed_run(workflow(work, subset, work / f"overlays_{overlays}", args, overlays))
    per = (times[True] - times[False]) / args.overlay_n
    print(f"overlays on {args.overlay_n} B-scans: {times[True]:.1f} s with, {times[False]:.1f} s without: "
          f"{per * 1000:.0f} ms per overlay", flush=True)
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} at the end; outputs in {work}")


if __name__ == "__main__":
    main()
