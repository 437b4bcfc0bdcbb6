"""Benchmark of the selective scan at the Mamba UpNet's real shape; rewrites its section of docs/complexity.md.

Times the forward pass (under ``torch.no_grad``, the inference path) and forward + backward (gradients of u, delta,
A, B, C, D) of up to three implementations of the same scan:

- ``torch``: the package's exact chunked scan (``selective_scan(..., backend="torch")``);
- ``reference``: the package's sequential loop (``backend="reference"``);
- ``pscan`` (optional, needs mambapy): mambapy's Blelloch parallel scan (``mambapy.pscan.pscan``) on the
  [B, L, D, N] tensors exp(delta*A) and delta*B*u that mambapy builds, followed by the same C contraction and D skip.

Each runs at 1 torch thread and at torch's default count, first on its own and then beside competing single-thread
busy processes that this script starts (``--loads``: by default one per core, then one more than the cores), so
every ratio below comes from one run. Inputs follow SS2D: batch 2, 4 directions (B and C in 4 groups) x d_inner
channels, N = 16, delta from the VMamba dt initialisation, A = -[1..16] (S4D-real). Every method runs in a fresh
subprocess per load and shape, which alternates the thread settings between its repeats (so a change in the
machine's load hits them alike). Peak memory is the growth of that process's peak RSS
(``resource.getrusage(...).ru_maxrss``) over its first forward + backward, at the first thread setting; torch's CPU
allocations go through malloc and show up there. Errors are max |difference| of each setting's first output and
gradients to the reference's (a gradient's error is relative to its largest |value|).

    python bench/scan.py                # the run in docs/complexity.md (10-15 min on 2 busy cores)
    python bench/scan.py --sizes 16x16 --channels 96 --loads 0 --repeats 1 --no-doc   # a smoke test
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

from competing import competing_processes
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's `tools` when run as a script
from tools.markdown import replace_section  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "complexity.md"
METHODS = ("reference", "torch", "pscan")
GROUPS, STATE = 4, 16  # SS2D: four scan directions, d_state 16
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D")
# "Exact to float32 rounding": both scans round differently over L steps; 1e-5 of the largest value is ~100 ulp.
EXACT = 1e-5
DEFAULT_THREADS = 0  # --threads value meaning "leave torch's default"
MODES = (("forward", "forward"), ("train", "fwd+bwd"))  # result key, label

ALGORITHM = """\
`selective_scan` (in `hdhkd_monai/networks/layers/selective_scan.py`) has mamba-ssm's `selective_scan_fn` signature;
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

THREADS = """\
Threads. The torch scan runs on one intra-op thread whatever `torch.get_num_threads()` says, and gives the caller
its thread count back on return (forward and backward). It issues about 20 ops per chunk plus one per time step,
thousands per call; with several threads each parallel op ends at an OpenMP barrier, and when a competing process
has descheduled a partner thread that barrier waits for a scheduler time slice. Before this change, forward +
backward at 2 threads beside 3 busy processes on 2 cores (load 3.6-5.4) took 1.0-72.7 s; with the scan on one
thread inside the same 2-thread process, 0.36-0.42 s (the table above `## Selective scan` has the details). The reference loop and pscan run at the thread count given."""


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
    """Times one method at every thread setting in this process, the settings alternating between repeats so that
    a change in the machine's load hits all of them alike; prints one result per setting."""
    from hdhkd_monai.networks.layers.selective_scan import selective_scan

    default = torch.get_num_threads()
    settings = [int(t) for t in args.threads.split(",")]
    inputs = {k: v.requires_grad_() for k, v in make_inputs(args.channels, args.length).items()}
    leaves = [inputs[k] for k in GRAD_NAMES]
    if args.method == "pscan":
        fn = lambda: pscan_scan(*leaves)  # noqa: E731
    else:
        fn = lambda: selective_scan(*leaves[:5], D=leaves[5], backend=args.method)  # noqa: E731

    def train():
        out = fn()
        return out, torch.autograd.grad(out, leaves, torch.ones_like(out))

    def forward():
        with torch.no_grad():
            return fn()

    def timed(step):
        start = time.perf_counter()
        value = step()
        return time.perf_counter() - start, value

    times = {t: dict(forward=[], train=[]) for t in settings}
    outputs = {}  # setting: output and gradients of its first forward + backward, output of its first forward
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for repeat in range(args.repeats):
        for t in settings if repeat % 2 == 0 else settings[::-1]:
            torch.set_num_threads(default if t == DEFAULT_THREADS else t)
            seconds, (out, grads) = timed(train)
            times[t]["train"].append(seconds)
            if not outputs:  # the process's first forward + backward
                peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
            seconds, forward_out = timed(forward)
            times[t]["forward"].append(seconds)
            outputs.setdefault(t, (out.detach(), [g.detach() for g in grads], forward_out))
    if args.method == "reference":
        out, grads, _ = outputs[settings[0]]
        torch.save(dict(out=out, grads=grads), args.ref_file)
    ref = torch.load(args.ref_file) if args.method != "reference" and os.path.exists(args.ref_file) else None
    results = {}
    for t in settings:
        out, grads, forward_out = outputs[t]
        r = results[t] = dict(forward=min(times[t]["forward"]), train=min(times[t]["train"]), peak_mib=peak_mib,
                              threads=default if t == DEFAULT_THREADS else t, finite=bool(torch.isfinite(out).all()))
        if ref is not None:
            r["out_err"] = max((o - ref["out"]).abs().max().item() for o in (out, forward_out))
            r["out_rel_err"] = r["out_err"] / ref["out"].abs().max().item()
            r["grad_rel_err"] = max(((g - e).abs().max() / e.abs().max()).item() for g, e in zip(grads, ref["grads"]))
    print("RESULT " + json.dumps(results), flush=True)


def run_worker(method: str, channels: int, length: int, args, ref_file: str) -> dict:
    """{thread setting: result} of one worker process; every setting marked failed when it fails."""
    cmd = [sys.executable, __file__, "--worker", "--method", method, "--channels", str(channels),
           "--length", str(length), "--repeats", str(args.repeats), "--threads", args.threads,
           "--ref-file", ref_file]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:  # e.g. killed for memory on a shared machine: report, carry on
        print(f"{method} at {channels} channels, L={length} failed (exit code {proc.returncode}):\n"
              f"{proc.stderr[-2000:]}", file=sys.stderr)
        return {int(t): dict(failed=f"exit code {proc.returncode}") for t in args.threads.split(",")}
    return {int(t): r for t, r in json.loads(lines[-1][len("RESULT "):]).items()}


def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def main() -> None:
    cores = os.cpu_count()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64x64", help="scan grids HxW; L = H*W (default: %(default)s)")
    parser.add_argument("--channels", default="768", help="4 directions x d_inner (default: %(default)s)")
    parser.add_argument("--methods", default="reference,torch", help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per mode and setting; the minimum is kept")
    parser.add_argument("--threads", default=f"1,{DEFAULT_THREADS}", help="torch thread counts, 0 = torch's default")
    parser.add_argument("--loads", default=f"0,{cores},{cores + 1}",
                        help="numbers of competing single-thread busy processes (default: %(default)s)")
    parser.add_argument("--no-doc", action="store_true", help=f"do not rewrite the scan section of {DOC.name}")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ref-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.channels = int(args.channels)
        return worker(args)

    methods = [m for m in METHODS if m in args.methods.split(",")]
    if any(int(c) % GROUPS for c in args.channels.split(",")):
        parser.error(f"--channels must be multiples of the {GROUPS} scan directions, got {args.channels}")
    started = datetime.datetime.now().astimezone()
    wall = time.perf_counter()
    rows = []  # one dict per (load, threads, channels, L), with {method: result}
    with tempfile.TemporaryDirectory() as tmp:
        for load in (int(n) for n in args.loads.split(",")):
            with competing_processes(load):
                for channels in (int(c) for c in args.channels.split(",")):
                    for length in (grid_length(s) for s in args.sizes.split(",")):
                        load_avg = os.getloadavg()[0]
                        rows_here = [dict(load=load, threads=int(t), channels=channels, length=length,
                                          load_avg=load_avg, results={}) for t in args.threads.split(",")]
                        ref_file = os.path.join(tmp, f"ref_{channels}_{length}.pt")
                        for method in methods:
                            by_threads = run_worker(method, channels, length, args, ref_file)
                            for row in rows_here:
                                row["results"][method] = by_threads[row["threads"]]
                                print(f"{label(row)}  {method:9s}  {describe(row['results'][method])}", flush=True)
                        rows += rows_here

    lines = summary_lines(rows)
    print("\n".join(lines))
    if not args.no_doc:
        command = ("python bench/scan.py " + " ".join(sys.argv[1:])).strip()
        write_doc(rows, lines, command, started, time.perf_counter() - wall)
        print(f"wrote the scan section of {DOC}")


def thread_label(row: dict) -> str:
    threads = {r.get("threads") for r in row["results"].values()} - {None}
    used = f" ({threads.pop()})" if len(threads) == 1 and row["threads"] == DEFAULT_THREADS else ""
    return ("default" + used) if row["threads"] == DEFAULT_THREADS else str(row["threads"])


def label(row: dict) -> str:
    return (f"competing {row['load']}  threads {thread_label(row)}  channels {row['channels']}  L {row['length']}  "
            f"load avg {row['load_avg']:.1f}")


def describe(r: dict) -> str:
    if "failed" in r:
        return f"failed ({r['failed']})"
    return (f"forward {r['forward']:7.3f} s  fwd+bwd {r['train']:7.3f} s  peak {r['peak_mib']:6.0f} MiB  "
            f"y err {fmt(r.get('out_err'), '.1e')}  grad rel err {fmt(r.get('grad_rel_err'), '.1e')}")


def succeeded(results: dict) -> dict:
    return {m: r for m, r in results.items() if "failed" not in r}


def grid_length(size: str) -> int:
    h, w = (int(v) for v in size.lower().split("x"))
    return h * w


def summary_lines(rows) -> list:
    """Per setting: the torch scan against the other methods and against its own 1-thread time under the same load,
    and, at L = 4096 and torch's default thread count, the verdict on each target; then the thread scaling."""
    one_thread = {(r["load"], r["channels"], r["length"]): succeeded(r["results"]) for r in rows if r["threads"] == 1}
    lines = []
    for row in rows:
        results = succeeded(row["results"])
        fast = results.get("torch")
        if fast is None:
            continue
        parts, verdicts = [], []
        for key, mode in MODES:
            for other in ("reference", "pscan"):
                if other in results:
                    ratio = results[other][key] / fast[key]
                    parts.append(f"{mode} {ratio:.1f}x as fast as {other}")
                    if other == "reference":
                        verdicts.append(f"{mode} >= 4x the loop: {'met' if ratio >= 4 else 'MISSED'}")
            single = one_thread.get((row["load"], row["channels"], row["length"]), {}).get("torch")
            if single is not None and row["threads"] != 1:
                ratio = fast[key] / single[key]
                parts.append(f"{mode} {ratio:.2f}x its 1-thread time")
                verdicts.append(f"{mode} <= 2x its 1-thread time: {'met' if ratio <= 2 else 'MISSED'}")
        if "pscan" in results:
            parts.append(f"{fast['peak_mib'] / results['pscan']['peak_mib']:.2f} of pscan's peak memory")
        if "out_rel_err" in fast:
            worst = max(fast["out_rel_err"], fast["grad_rel_err"])
            parts.append(f"relative error {fast['out_rel_err']:.1e} (output), {fast['grad_rel_err']:.1e} (gradients)")
            verdicts.append(f"relative error <= {EXACT:g}: {'met' if worst <= EXACT else 'MISSED'}")
        line = f"{row['load']} competing, {thread_label(row)} thread(s): the torch scan is " + ", ".join(parts)
        if row["length"] == 4096 and row["threads"] == DEFAULT_THREADS:
            line += ". Targets: " + "; ".join(verdicts)
        lines.append(line)
    return lines + scaling_lines(rows)


def scaling_lines(rows) -> list:
    """Runs without competing processes: each method's 1-thread time / default-thread time (per-thread scaling)."""
    quiet = {(r["threads"], r["channels"], r["length"]): r for r in rows if r["load"] == 0}
    lines = []
    for (threads, channels, length), row in quiet.items():
        single = quiet.get((1, channels, length))
        if threads == 1 or single is None:
            continue
        for method, r in succeeded(row["results"]).items():
            s = single["results"].get(method, {})
            if "failed" not in s and s:
                speedups = ", ".join(f"{mode} {s[key] / r[key]:.2f}x" for key, mode in MODES)
                lines.append(f"Scaling without competing processes of ours (load avg {row['load_avg']:.1f}), "
                             f"{channels} channels, L {length}: {method} at "
                             f"{thread_label(row)} threads runs {speedups} as fast as at 1 thread")
    return lines


def write_doc(rows, lines, command, started, seconds) -> None:
    table = [
        "| competing processes | load avg | threads | method | forward (s) | fwd+bwd (s) | forward / torch's "
        "| fwd+bwd / torch's | peak memory (MiB) | max abs err y | max rel err grads |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        fast = succeeded(row["results"]).get("torch")
        head = f"| {row['load']} | {row['load_avg']:.1f} | {thread_label(row)} |"
        for method, r in row["results"].items():
            if "failed" in r:
                table.append(f"{head} {method} | failed ({r['failed']}) | | | | | | |")
                continue
            ratios = ["" if fast is None else f"{r[key] / fast[key]:.1f}" for key, _ in MODES]
            table.append(
                f"{head} {method} | {r['forward']:.3f} | {r['train']:.3f} | {ratios[0]} | {ratios[1]} "
                f"| {r['peak_mib']:.0f} | {fmt(r.get('out_err'), '.1e')} | {fmt(r.get('grad_rel_err'), '.1e')} |"
            )
    shapes = sorted({(r["channels"], r["length"]) for r in rows})
    section = "\n".join([
        "## Selective scan",
        "",
        ALGORITHM,
        "",
        "### Measured speed and memory (written by `bench/scan.py`)",
        "",
        f"Command: `{command}`, started {started:%Y-%m-%d %H:%M %Z}, {seconds / 60:.1f} min. Machine: {cpu_name()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}. Batch 2, B and C in 4 groups (scan directions), N 16, "
        f"(channels, L) = {', '.join(f'({c}, {n})' for c, n in shapes)}. Competing processes are single-thread busy "
        "loops this script starts beside the timed one; the load average column is the 1-minute load when each "
        "setting started, and anything above the competing processes plus our threads is other people's jobs on "
        "the shared machine. Every ratio comes from this one run.",
        "",
        "Times are the minimum over the timed repeats, the thread settings alternating within one process per "
        "method and load; forward runs under `torch.no_grad` (the inference path). Peak memory is the growth of "
        "the process's peak RSS during its first forward + backward (`resource.getrusage`). Errors are against the sequential "
        "reference (gradients: max |difference| / max |reference gradient|, worst of u, delta, A, B, C, D).",
        "",
        *table,
        "",
        *[f"- {line}" for line in lines],
        "",
        "Targets at L = 4096 and torch's default thread count, with and without competing processes: forward and "
        "forward + backward at least 4x as fast as the sequential loop and at most 2x the scan's own 1-thread "
        f"time; exact to float32 rounding (here: relative error at most {EXACT:g} in output and gradients).",
        "",
        THREADS,
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
