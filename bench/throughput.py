"""CPU throughput of HDHKD against EfficientAD-S, measured in one run, printed as ratios.

For each model and batch size, two fresh worker processes (one training, one inference) build the model, warm up,
then time ``--steps`` iterations:

- training step: ``zero_grad``, loss, ``backward``, ``Adam.step`` on the trainable parameters
  (HDHKD: ``DistillationLoss()(*model(x))``; EfficientAD-S: ``model.loss(x)``, autoencoder branch jittered);
- inference: ``model.anomaly_map(x)`` under ``torch.no_grad`` in eval mode.

Both models share one teacher architecture (PDN small, 384 channels, no padding; random weights: the timing does not
depend on them). Peak memory is the worker's peak resident set size (``ru_maxrss``, which includes the process's
Python/torch baseline and the model's parameters) and its growth over the RSS once model and input are built
(activations, gradients, optimizer state).
Workers of the two models are interleaved and ``--repeats`` rounds taken; the median is reported, which keeps a
shared machine's load bursts from favouring either model.

    python bench/throughput.py                      # 256x256, batch 1 and 8, 1 thread
    python bench/throughput.py --short              # a quick look: batch 1, 2 steps, 1 round
    python bench/throughput.py --modes infer        # inference only
    python bench/throughput.py --write-docs         # also replace the results section of docs/baselines.md
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from hdhkd_monai.markdown import replace_section

DOCS = Path(__file__).resolve().parents[1] / "docs" / "baselines.md"
MODELS = ("HDHKD", "EfficientAD-S")
MODES = ("train", "infer")


def _rss_mib() -> float:
    """Current resident set size of this process, MiB (Linux /proc)."""
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib / 1024


def _build(name: str, size: int):
    """The model and its training loss function, on CPU."""
    import torch

    from hdhkd_monai.baselines.efficientad import EfficientAD
    from hdhkd_monai.losses import DistillationLoss
    from hdhkd_monai.networks.hdhkd import HDHKD
    from hdhkd_monai.networks.pdn import PDN

    torch.manual_seed(0)
    teacher = PDN(size="small", out_channels=384, padding=False)
    if name == "HDHKD":
        model = HDHKD(teacher)
        criterion = DistillationLoss()
        return model, lambda x: criterion(*model(x))
    model = EfficientAD(teacher, image_size=size)
    return model, model.loss


def _worker(name: str, mode: str, batch: int, size: int, steps: int, warmup: int, threads: int) -> dict:
    """Time one (model, mode, batch) in this fresh process: seconds per step, peak RSS and its growth (MiB)."""
    import torch

    torch.set_num_threads(threads)
    model, loss_fn = _build(name, size)
    x = torch.rand(batch, 3, size, size)
    if mode == "train":
        model.train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(x).backward()
            optimizer.step()

    else:
        model.eval()

        def step() -> None:
            with torch.no_grad():
                model.anomaly_map(x)

    rss_before = _rss_mib()  # model and input built; the growth is activations, gradients, optimizer state
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"seconds": seconds, "peak_mib": peak, "growth_mib": peak - rss_before}


def measure(name: str, mode: str, batch: int, args) -> dict:
    """Run :func:`_worker` in a fresh spawned process (so the peak RSS is its own); its errors propagate."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        job = pool.submit(_worker, name, mode, batch, args.size, args.steps, args.warmup, args.threads)
        return job.result()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def run(args) -> tuple[list[dict], dict]:
    """All measurements (median over rounds) and the run's context."""
    import torch

    context = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{_cpu_name()}, {os.cpu_count()} logical cores",
        "torch": torch.__version__,
        "threads": args.threads,
        "size": args.size,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "load_before": os.getloadavg(),
    }
    rows = []
    for batch in args.batch_sizes:
        for mode in args.modes:
            samples = {name: [] for name in MODELS}
            for round_ in range(args.repeats):
                for name in MODELS if round_ % 2 == 0 else MODELS[::-1]:  # alternate who goes first
                    result = measure(name, mode, batch, args)
                    samples[name].append(result)
                    ms = result["seconds"] * 1e3
                    print(f"  {name:14s} {mode:5s} batch {batch} round {round_ + 1}: {ms:9.1f} ms", flush=True)
            for name, results in samples.items():
                row = {"model": name, "mode": mode, "batch": batch}
                row["rounds"] = [r["seconds"] for r in results]
                row["seconds"] = statistics.median(row["rounds"])
                row["peak_mib"] = max(r["peak_mib"] for r in results)
                row["growth_mib"] = max(r["growth_mib"] for r in results)
                rows.append(row)
    context["load_after"] = os.getloadavg()
    return rows, context


def report(rows: list[dict], context: dict) -> str:
    """Markdown: the measurements, then HDHKD / EfficientAD-S time ratios against the 1.5x target."""
    lines = [
        f"Run {context['date']} on {context['cpu']}; torch {context['torch']}, {context['threads']} thread(s); "
        f"input {context['size']}x{context['size']}; median of {context['repeats']} round(s) of {context['steps']} "
        f"timed steps after {context['warmup']} warm-up steps. Load average (1/5/15 min) before: "
        + "/".join(f"{v:.1f}" for v in context["load_before"]) + ", after: "
        + "/".join(f"{v:.1f}" for v in context["load_after"]) + ".",
        "",
        _sharing_note(context),
        "",
        "| model | mode | batch | ms / step | each round | steps/s | images/s | peak RSS MiB | RSS growth MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        each = ", ".join(f"{t * 1e3:.0f}" for t in r["rounds"])
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['batch']} | {r['seconds'] * 1e3:.0f} | {each} | "
            f"{1 / r['seconds']:.2f} | {r['batch'] / r['seconds']:.2f} | {r['peak_mib']:.0f} | {r['growth_mib']:.0f} |"
        )
    lines += ["", "| mode | batch | HDHKD time / EfficientAD-S time | within 1.5x |", "|---|---|---|---|"]
    by_key = {(r["model"], r["mode"], r["batch"]): r for r in rows}
    for mode in sorted({r["mode"] for r in rows}, key=MODES.index):
        for batch in sorted({r["batch"] for r in rows}):
            ratio = by_key["HDHKD", mode, batch]["seconds"] / by_key["EfficientAD-S", mode, batch]["seconds"]
            lines.append(f"| {mode} | {batch} | {ratio:.2f} | {'yes' if ratio <= 1.5 else 'no'} |")
    return "\n".join(lines)


def _sharing_note(context: dict) -> str:
    """Say whether other work ran beside the benchmark: load above this run's own threads means it did."""
    busiest = max(*context["load_before"][:2], *context["load_after"][:2])
    if busiest > context["threads"] + 0.5:
        return (
            f"The machine was shared during the run (load up to {busiest:.1f} on {os.cpu_count()} cores against "
            f"{context['threads']} thread(s) of ours): absolute numbers are pessimistic and noisy; the interleaved "
            "ratios are the figure to read."
        )
    return "The machine was otherwise idle during the run."



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="input side (default 256, the paper's)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="what to time (default both)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per worker")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per (model, mode, batch); median reported")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per worker")
    parser.add_argument("--short", action="store_true", help="batch 1, 2 steps, 1 warm-up, 1 round")
    parser.add_argument("--write-docs", action="store_true", help=f"write the results into {DOCS}")
    args = parser.parse_args()
    if args.short:
        args.batch_sizes, args.steps, args.warmup, args.repeats = [1], 2, 1, 1
    rows, context = run(args)
    text = report(rows, context)
    print(text)
    if args.write_docs:
        replace_section(DOCS, "throughput", text)
        print(f"wrote the results into {DOCS}")


if __name__ == "__main__":
    main()
