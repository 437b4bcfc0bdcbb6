"""CPU throughput of HDHKD against EfficientAD-S, measured in one run, printed as ratios.

For each model, batch size and mode, a fresh worker process builds the model, warms up, then times ``--steps``
iterations:

- training step: ``zero_grad``, loss, ``backward``, ``Adam.step`` on the trainable parameters
  (HDHKD: ``DistillationLoss()(*model(x))``; EfficientAD-S: ``model.loss(x)``, autoencoder branch jittered);
- inference: ``model(x)`` (the detector contract) under ``torch.no_grad`` in eval mode; and, beside it, HDHKD's ONNX export
  (the map network, exported once per run with a dynamic batch axis, the export's time reported) run by onnxruntime
  at the same thread count (``intra_op_num_threads``; torch's default count gives onnxruntime its own default).

Both models share one teacher architecture (PDN small, 384 channels, no padding; random weights: the timing does not
depend on them). Peak memory is the worker's peak resident set size (``ru_maxrss``, which includes the process's
Python/torch baseline and the model's parameters) and its growth over the RSS once model and input are built
(activations, gradients, optimizer state).
Workers of the two models are interleaved and ``--repeats`` rounds taken; the median is reported, which keeps a
shared machine's load bursts from favouring either model. Every setting runs at 1 torch thread and at torch's
default count, first on its own and then beside competing single-thread busy processes that this script starts
(``--loads``), so each ratio comes from one run under one load.

    python bench/throughput.py                      # inference, 256x256, batch 1 and 8, 1 and default threads
    python bench/throughput.py --short              # a quick look: batch 1, 2 steps, 1 round
    python bench/throughput.py --modes train infer  # training steps too (slow: HDHKD batch 8 takes ~1 min a step)
    python bench/throughput.py --write-docs         # also replace the results section of docs/baselines.md
    python bench/throughput.py --no-onnx            # without the onnxruntime rows
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
import sys
from pathlib import Path

from competing import competing_processes
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's `tools` when run as a script
from tools.markdown import replace_section  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "baselines.md"
MODELS = ("HDHKD", "EfficientAD-S")
ONNX_MODEL = "HDHKD onnxruntime"  # HDHKD's inference rows under onnxruntime
MODES = ("train", "infer")
DEFAULT_THREADS = 0  # --threads value meaning "leave torch's default"
OPENMP_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # settings the workers inherit


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
    from hdhkd_monai.networks.nets.hdhkd import HDHKD
    from hdhkd_monai.networks.nets.pdn import PDN

    torch.manual_seed(0)
    teacher = PDN(size="small", out_channels=384, padding=False)
    if name == "HDHKD":
        model = HDHKD(teacher)
        criterion = DistillationLoss()
        return model, lambda x: criterion(*model(x))
    model = EfficientAD(teacher, image_size=size)
    return model, model.loss


def export_onnx(size: int, path: Path) -> float:
    """HDHKD's anomaly map (``AnomalyMapNet``; uncalibrated, so raw) exported to ``path`` with a dynamic batch
    axis, as ``configs/onnx_export.json`` exports the bundle; returns the export's seconds."""
    import torch

    from hdhkd_monai.networks import AnomalyMapNet

    model, _ = _build("HDHKD", size)
    net = AnomalyMapNet(model.eval()).eval()
    start = time.perf_counter()
    torch.onnx.export(net, (torch.rand(1, 3, size, size),), str(path), dynamo=False, input_names=["image"],
                      output_names=["pred"], dynamic_axes={"image": [0], "pred": [0]})
    return time.perf_counter() - start


def _onnx_step(path: str, batch: int, size: int, threads: int):
    """An onnxruntime session on ``path`` and one inference step on a random batch; the session's thread count."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 0 if threads == DEFAULT_THREADS else threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    return (lambda: session.run(None, {"image": x})), session.get_session_options().intra_op_num_threads


def _worker(name: str, mode: str, batch: int, size: int, steps: int, warmup: int, threads: int,
            onnx_path: str | None = None) -> dict:
    """Time one (model, mode, batch) in this fresh process: seconds per step, peak RSS and its growth (MiB)."""
    import torch

    if threads != DEFAULT_THREADS:
        torch.set_num_threads(threads)
    if name == ONNX_MODEL:
        step, threads = _onnx_step(onnx_path, batch, size, threads)
        return _time(step, steps, warmup, threads)
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
                model(x)

    return _time(step, steps, warmup, torch.get_num_threads())


def _time(step, steps: int, warmup: int, threads: int) -> dict:
    """Seconds per ``step`` after ``warmup`` untimed ones, peak RSS and its growth over the RSS before (MiB)."""
    rss_before = _rss_mib()  # model and input built; the growth is activations, gradients, optimizer state
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"seconds": seconds, "peak_mib": peak, "growth_mib": peak - rss_before, "threads": threads}


def measure(name: str, mode: str, batch: int, threads: int, args) -> dict:
    """Run :func:`_worker` in a fresh spawned process (so the peak RSS is its own); its errors propagate."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        job = pool.submit(_worker, name, mode, batch, args.size, args.steps, args.warmup, threads, args.onnx_path)
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
        "size": args.size,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "env": ", ".join(f"{k}={os.environ[k]}" for k in OPENMP_ENV if k in os.environ) or "none",
    }
    start = time.perf_counter()
    rows = []
    if args.onnx and "infer" in args.modes:
        args.onnx_path = str(Path(args.tmp) / "hdhkd.onnx")
        with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:  # the workers are
            # spawned from this process and start with its peak RSS, so the export's memory stays out of it
            context["onnx_export_s"] = pool.submit(export_onnx, args.size, Path(args.onnx_path)).result()
        context["onnx_export_load"] = os.getloadavg()[0]
    for load in args.loads:
        with competing_processes(load):
            for threads in args.threads:
                for batch in args.batch_sizes:
                    for mode in args.modes:
                        rows += _setting(load, threads, batch, mode, args)
    context["minutes"] = (time.perf_counter() - start) / 60
    return rows, context


def _setting(load: int, threads: int, batch: int, mode: str, args) -> list[dict]:
    """Both models' rows for one setting, their rounds interleaved."""
    load_avg = os.getloadavg()[0]
    models = MODELS + ((ONNX_MODEL,) if mode == "infer" and args.onnx_path else ())
    samples = {name: [] for name in models}
    for round_ in range(args.repeats):
        for name in models if round_ % 2 == 0 else models[::-1]:  # alternate who goes first
            result = measure(name, mode, batch, threads, args)
            samples[name].append(result)
            print(f"  competing {load} threads {result['threads']} {name:14s} {mode:5s} batch {batch} "
                  f"round {round_ + 1}: {result['seconds'] * 1e3:9.1f} ms", flush=True)
    rows = []
    for name, results in samples.items():
        rounds = [r["seconds"] for r in results]
        rows.append({
            "load": load, "load_avg": load_avg, "threads": results[0]["threads"], "default": threads == DEFAULT_THREADS,
            "model": name, "mode": mode, "batch": batch, "rounds": rounds, "seconds": statistics.median(rounds),
            "peak_mib": max(r["peak_mib"] for r in results), "growth_mib": max(r["growth_mib"] for r in results),
        })
    return rows


def _threads_label(row: dict) -> str:
    return f"default ({row['threads']})" if row["default"] else str(row["threads"])


def report(rows: list[dict], context: dict) -> str:
    """Markdown: the measurements, then HDHKD / EfficientAD-S time ratios against the 1.5x target."""
    lines = [
        f"Run {context['date']} on {context['cpu']}; torch {context['torch']}; input {context['size']}x"
        f"{context['size']}; median of {context['repeats']} round(s) of {context['steps']} timed steps after "
        f"{context['warmup']} warm-up step(s); {context['minutes']:.1f} min in all; OpenMP environment: "
        f"{context['env']}. Competing processes are "
        "single-thread busy loops this script starts; the load average is the 1-minute load when each setting "
        "started, and anything above the competing processes plus our threads is other people's jobs on the "
        "shared machine.",
        "",
        "| competing processes | load avg | threads | model | mode | batch | ms / step | each round | images/s "
        "| peak RSS MiB | RSS growth MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        each = ", ".join(f"{t * 1e3:.0f}" for t in r["rounds"])
        lines.append(
            f"| {r['load']} | {r['load_avg']:.1f} | {_threads_label(r)} | {r['model']} | {r['mode']} | {r['batch']} "
            f"| {r['seconds'] * 1e3:.0f} | {each} | {r['batch'] / r['seconds']:.2f} | {r['peak_mib']:.0f} "
            f"| {r['growth_mib']:.0f} |"
        )
    lines += [
        "",
        "| competing processes | threads | mode | batch | HDHKD time / EfficientAD-S time | within 1.5x |",
        "|---|---|---|---|---|---|",
    ]
    hdhkd = [r for r in rows if r["model"] == "HDHKD"]
    for r in hdhkd:
        other = next(o for o in rows if o["model"] == "EfficientAD-S" and
                     all(o[k] == r[k] for k in ("load", "default", "mode", "batch")))
        ratio = r["seconds"] / other["seconds"]
        verdict = "yes" if ratio <= 1.5 else f"no, {100 * (ratio / 1.5 - 1):.0f} % over"
        lines.append(f"| {r['load']} | {_threads_label(r)} | {r['mode']} | {r['batch']} | {ratio:.2f} | {verdict} |")
    onnx = [r for r in rows if r["model"] == ONNX_MODEL]
    if onnx:
        lines += [
            "",
            f"HDHKD's ONNX export (legacy TorchScript exporter, dynamic batch) took {context['onnx_export_s']:.0f} s "
            f"at load average {context['onnx_export_load']:.1f}.",
            "",
            "| competing processes | threads | batch | onnxruntime time / eager time |",
            "|---|---|---|---|",
        ]
    for r in onnx:
        eager = next(o for o in hdhkd if all(o[k] == r[k] for k in ("load", "default", "mode", "batch")))
        lines.append(f"| {r['load']} | {_threads_label(r)} | {r['batch']} | {r['seconds'] / eager['seconds']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="input side (default 256, the paper's)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["infer"], help="what to time (default infer)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per worker")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per setting; median reported")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, DEFAULT_THREADS],
                        help="torch intra-op threads per worker, 0 = torch's default (default: 1 0)")
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1],
                        help="numbers of competing single-thread busy processes (default: 0 1)")
    parser.add_argument("--short", action="store_true", help="batch 1, 2 steps, 1 warm-up, 1 round")
    parser.add_argument("--write-docs", action="store_true", help=f"write the results into {DOCS}")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="leave out the onnxruntime rows")
    args = parser.parse_args()
    if args.short:
        args.batch_sizes, args.steps, args.warmup, args.repeats = [1], 2, 1, 1
    args.onnx_path = None
    with tempfile.TemporaryDirectory() as args.tmp:
        rows, context = run(args)
    text = report(rows, context)
    print(text)
    if args.write_docs:
        replace_section(DOCS, "throughput", text)
        print(f"wrote the results into {DOCS}")


if __name__ == "__main__":
    main()
