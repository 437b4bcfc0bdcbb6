"""Benchmark of the selective scan at the Mamba UpNet's real shape; rewrites its section of docs/complexity.md.

Times forward + backward (gradients of u, delta, A, B, C, D) of three implementations of the same scan:

- ``torch``: the package's exact chunked scan (``selective_scan(..., backend="torch")``);
- ``reference``: the package's sequential loop (``backend="reference"``);
- ``pscan``: mambapy's Blelloch parallel scan (``mambapy.pscan.pscan``) on the [B, L, D, N] tensors exp(delta*A)
  and delta*B*u that mambapy builds, followed by the same C contraction and D skip.

Inputs follow SS2D: batch 2, 4 directions (B and C in 4 groups) x d_inner channels, N = 16, delta from the
VMamba dt initialisation, A = -[1..16] (S4D-real). Every method and size runs in a fresh subprocess, so peak
memory is the growth of that process's peak RSS (``resource.getrusage(...).ru_maxrss``) from just before the
first forward + backward; torch's CPU allocations go through malloc and show up there. Errors are max |difference|
to the reference run's output and gradients (a gradient's error is relative to its largest |value|).

    python bench/scan.py                                   # the full run recorded in docs/complexity.md
    python bench/scan.py --sizes 16x16 --channels 96 --repeats 1 --no-doc   # a smoke test
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hdhkd_monai.markdown import replace_section

DOC = Path(__file__).resolve().parents[1] / "docs" / "complexity.md"
METHODS = ("reference", "torch", "pscan")
GROUPS, STATE = 4, 16  # SS2D: four scan directions, d_state 16
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D")
# "Exact to float32 rounding": both scans round differently over L steps; 1e-5 of the largest value is ~100 ulp.
EXACT = 1e-5

ALGORITHM = """\
`selective_scan` (in `hdhkd_monai/networks/selective_scan.py`) has mamba-ssm's `selective_scan_fn` signature;
on CPU it runs the `"torch"` backend, an exact chunked recurrence. The sequence is cut into chunks of T steps
(T about 400k / (batch x channels x N), a power of two: 16 at 768 channels, 8 at 1536). For each chunk,
exp(delta*A) (as exp2 of delta*A*log2(e), about 3x faster than exp on this CPU) and delta*B*u are computed in
batched ops into preallocated [T, batch, groups, N, channels/group] buffers, then T in-place multiply-adds
h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t walk the chunk, and the output contraction with C is one batched row-vector x matrix product. A custom autograd Function saves only the
state at each chunk boundary; its backward walks the chunks in reverse, recomputes each chunk's decays and
states from the saved boundary state, and runs the reverse recurrence g_t = C_t dy_t + exp(delta_{t+1} A)
g_{t+1}, from which the gradients of u, delta, A, B and C are batched contractions. When no input needs a
gradient (inference), a forward-only path runs the same recurrence without keeping boundary states and applies
delta_bias, softplus and D one chunk at a time; inputs whose channel dimension is contiguous are read as views.

Why: it is exact (the same multiply-adds as the sequential loop, so it agrees to float32 rounding and stays
finite for any delta; methods dividing cumulative products exp(cumsum(delta*A)) overflow once
|sum delta*A| > ~88, and complex log-space scans lose gradient accuracy), and it needs little memory: besides
inputs and outputs it keeps (L/T + 1) states and three chunk buffers instead of the L x batch x channels x N
tensors that autograd (reference loop) or pscan keep. Under TorchScript (`torch.jit.script`) the same chunked
forward runs when no gradient is needed; `torch.jit.trace` records it as an inference-only graph."""


def make_inputs(channels: int, length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dt0 = torch.exp(torch.empty(channels).uniform_(-6.9078, -2.3026, generator=g))  # dt in [1e-3, 0.1]
    dt_bias = dt0 + torch.log(-torch.expm1(-dt0))  # inverse softplus
    return dict(
        u=torch.randn(2, channels, length, generator=g),
        delta=F.softplus(dt_bias[:, None] + 0.5 * torch.randn(2, channels, length, generator=g)),
        A=-torch.arange(1, STATE + 1, dtype=torch.float32).repeat(channels, 1),
        B=torch.randn(2, GROUPS, STATE, length, generator=g),
        C=torch.randn(2, GROUPS, STATE, length, generator=g),
        D=torch.ones(channels),
    )


def pscan_scan(u, delta, A, B, C, D):
    """The scan as mambapy's selective_scan computes it (with B, C per group), on [b, d, L] / [b, G, N, L] inputs."""
    from mambapy.pscan import pscan

    b, d, L = u.shape
    N = A.size(1)
    x, dt = u.transpose(1, 2), delta.transpose(1, 2)  # [b, L, d]
    B = B.permute(0, 3, 1, 2).unsqueeze(3)  # [b, L, G, 1, N]
    C = C.permute(0, 3, 1, 2).unsqueeze(-1)  # [b, L, G, N, 1]
    deltaA = torch.exp(dt.unsqueeze(-1) * A)  # [b, L, d, N]
    deltaB = (dt.reshape(b, L, GROUPS, d // GROUPS, 1) * B).reshape(b, L, d, N)
    BX = deltaB * x.unsqueeze(-1)
    hs = pscan(deltaA, BX)  # [b, L, d, N]
    y = (hs.view(b, L, GROUPS, d // GROUPS, N) @ C).reshape(b, L, d)
    return (y + D * x).transpose(1, 2)


def worker(args) -> None:
    from hdhkd_monai.networks.selective_scan import selective_scan

    torch.set_num_threads(args.threads)
    inputs = {k: v.requires_grad_() for k, v in make_inputs(args.channels, args.length).items()}
    leaves = [inputs[k] for k in GRAD_NAMES]
    if args.method == "pscan":
        fn = lambda: pscan_scan(*leaves)  # noqa: E731
    else:
        fn = lambda: selective_scan(*leaves[:5], D=leaves[5], backend=args.method)  # noqa: E731

    def step():
        out = fn()
        return out, torch.autograd.grad(out, leaves, torch.ones_like(out))

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out, grads = step()
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result = dict(seconds=min(times), peak_mib=peak_mib, finite=bool(torch.isfinite(out).all()))
    if args.method == "reference":
        torch.save(dict(out=out.detach(), grads=[g.detach() for g in grads]), args.ref_file)
    elif os.path.exists(args.ref_file):
        ref = torch.load(args.ref_file)
        result["out_err"] = (out.detach() - ref["out"]).abs().max().item()
        result["out_rel_err"] = result["out_err"] / ref["out"].abs().max().item()
        result["grad_rel_err"] = max(
            ((g - r).abs().max() / r.abs().max()).item() for g, r in zip(grads, ref["grads"])
        )
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(method: str, channels: int, length: int, threads: int, args, ref_file: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--method", method, "--channels", str(channels),
           "--length", str(length), "--repeats", str(args.repeats), "--threads", str(threads),
           "--ref-file", ref_file]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:  # e.g. killed for memory on a shared machine: report, carry on
        print(f"{method} at {channels} channels, L={length} failed (exit code {proc.returncode}):\n"
              f"{proc.stderr[-2000:]}", file=sys.stderr)
        return dict(failed=f"exit code {proc.returncode}")
    return json.loads(lines[-1][len("RESULT "):])


def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="32x32,64x64", help="scan grids HxW; L = H*W (default: %(default)s)")
    parser.add_argument("--channels", default="768,1536", help="4 directions x d_inner (default: %(default)s)")
    parser.add_argument("--methods", default=",".join(METHODS), help="subset of %(default)s")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the first; the minimum is kept")
    parser.add_argument("--threads", default=str(os.cpu_count()), help="torch thread counts (default: all cores)")
    parser.add_argument("--no-doc", action="store_true", help=f"do not rewrite the scan section of {DOC.name}")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ref-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.channels, args.threads = int(args.channels), int(args.threads)
        return worker(args)

    methods = [m for m in METHODS if m in args.methods.split(",")]
    if any(int(c) % GROUPS for c in args.channels.split(",")):
        parser.error(f"--channels must be multiples of the {GROUPS} scan directions, got {args.channels}")
    started = datetime.datetime.now().astimezone()
    rows = []  # (threads, channels, L, load average when the size started, {method: result})
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (int(t) for t in args.threads.split(",")):
            for channels in (int(c) for c in args.channels.split(",")):
                for length in (grid_length(s) for s in args.sizes.split(",")):
                    ref_file = os.path.join(tmp, f"ref_{channels}_{length}.pt")
                    load, results = os.getloadavg()[0], {}
                    for method in methods:
                        r = results[method] = run_worker(method, channels, length, threads, args, ref_file)
                        print(f"threads {threads}  channels {channels:5d}  L {length:5d}  {method:9s}  {describe(r)}",
                              flush=True)
                    rows.append((threads, channels, length, load, results))

    lines = summary_lines(rows)
    print("\n".join(lines))
    if not args.no_doc:
        command = ("python bench/scan.py " + " ".join(sys.argv[1:])).strip()
        write_doc(rows, lines, command, started)
        print(f"wrote the scan section of {DOC}")


def describe(r: dict) -> str:
    if "failed" in r:
        return f"failed ({r['failed']})"
    return (f"{r['seconds']:8.3f} s  peak {r['peak_mib']:8.0f} MiB  y err {fmt(r.get('out_err'), '.1e')}  "
            f"grad rel err {fmt(r.get('grad_rel_err'), '.1e')}")


def succeeded(results: dict) -> dict:
    return {m: r for m, r in results.items() if "failed" not in r}


def grid_length(size: str) -> int:
    h, w = (int(v) for v in size.lower().split("x"))
    return h * w


def summary_lines(rows) -> list:
    """Ratios of the torch scan and, at L = 4096, the verdict on each target; one line per configuration."""
    lines = []
    for threads, channels, length, _, results in rows:
        results = succeeded(results)
        fast = results.get("torch")
        if fast is None:
            continue
        parts, verdicts = [], []
        for other, target in (("reference", 5.0), ("pscan", 3.0)):
            if other in results:
                ratio = results[other]["seconds"] / fast["seconds"]
                parts.append(f"{ratio:.1f}x as fast as {other}")
                verdicts.append(f">= {target:g}x {other}: {'met' if ratio >= target else 'MISSED'}")
        if "pscan" in results:
            memory = fast["peak_mib"] / results["pscan"]["peak_mib"]
            parts.append(f"uses {memory:.2f} of pscan's peak memory")
            verdicts.append(f"<= 0.5 of pscan's memory: {'met' if memory <= 0.5 else 'MISSED'}")
        if "out_rel_err" in fast:
            worst = max(fast["out_rel_err"], fast["grad_rel_err"])
            parts.append(f"relative error {fast['out_rel_err']:.1e} (output), {fast['grad_rel_err']:.1e} (gradients)")
            verdicts.append(f"relative error <= {EXACT:g}: {'met' if worst <= EXACT else 'MISSED'}")
        line = f"{threads} thread(s), {channels} channels, L {length}: the torch scan is " + ", ".join(parts)
        if length == 4096:
            line += ". Targets: " + "; ".join(verdicts)
        lines.append(line)
    return lines


def write_doc(rows, lines, command, started) -> None:
    table = [
        "| threads | channels | L | load avg | method | fwd+bwd (s) | time / torch scan's | peak memory (MiB) "
        "| max abs err y | max rel err grads |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for threads, channels, length, load, results in rows:
        fast = succeeded(results).get("torch")
        for method, r in results.items():
            if "failed" in r:
                table.append(f"| {threads} | {channels} | {length} | {load:.1f} | {method} | failed ({r['failed']}) "
                             "| | | | |")
                continue
            ratio = "" if fast is None else f"{r['seconds'] / fast['seconds']:.1f}"
            table.append(
                f"| {threads} | {channels} | {length} | {load:.1f} | {method} | {r['seconds']:.3f} | {ratio} "
                f"| {r['peak_mib']:.0f} | {fmt(r.get('out_err'), '.1e')} | {fmt(r.get('grad_rel_err'), '.1e')} |"
            )
    section = "\n".join([
        "## Selective scan",
        "",
        ALGORITHM,
        "",
        "### Measured speed and memory (written by `bench/scan.py`)",
        "",
        f"Command: `{command}`, started {started:%Y-%m-%d %H:%M %Z}. Machine: {cpu_name()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}. The machine was shared with other people's jobs during the run (the load "
        "average column is the 1-minute load when each size started; above the thread count means contention), "
        "so absolute times are inflated and noisy; each row's ratios come from one run.",
        "",
        "Forward + backward of batch 2, B and C in 4 groups (scan directions), N 16; time is the minimum over the "
        "timed repeats. Peak memory is the growth of the process's peak RSS during the first forward + backward "
        "(`resource.getrusage`, one fresh subprocess per method and size). Errors are against the sequential "
        "reference (gradients: max |difference| / max |reference gradient|, worst of u, delta, A, B, C, D).",
        "",
        *table,
        "",
        *[f"- {line}" for line in lines],
        "",
        "Targets at L = 4096: at least 5x the sequential loop, at least 3x pscan, at most half of pscan's peak "
        f"memory, exact to float32 rounding (here: relative error at most {EXACT:g} in output and gradients).",
        "",
        "Threads. With 2 torch threads on an oversubscribed machine (load average above the core count), every "
        "parallel op ends at a barrier that waits for a descheduled partner thread. The chunked scan issues about "
        "20 parallel ops per chunk, plus one per time step when batch x channels x N exceeds torch's "
        "32768-element grain (the 1536-channel rows); pscan and the reference issue far fewer, larger ones. So "
        "on a shared machine the 2-thread rows mostly measure contention, and the 1-thread rows are the fair "
        "comparison; set `OMP_NUM_THREADS=1` (or `torch.set_num_threads(1)`) when training on a shared machine. "
        "This run did not measure a dedicated multi-core machine.",
    ])
    replace_section(DOC, "scan", section)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
