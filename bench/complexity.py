"""Parameters and FLOPs of HDHKD variants at 256x256; rewrites the models section of docs/complexity.md.

One row per Table VII decoder swap (with the paper's figures beside ours), per Table VI student backbone and per
Table V ablation. FLOPs are one forward pass of batch 1, counted by ``torch.utils.flop_counter.FlopCounterMode``
(2 FLOPs per multiply-add of matmuls and convolutions; elementwise ops are not counted). The selective scan is
almost all elementwise work, so its count is replaced by an analytic one (see ``SCAN_FLOPS_PER_STATE``).

    python bench/complexity.py            # the full run recorded in docs/complexity.md (a few minutes on CPU)
    python bench/complexity.py --no-doc   # print only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable
from unittest import mock

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import hdhkd_monai.networks.blocks.ss2d as ss2d_module
from hdhkd_monai.launcher import read_config
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's `tools` when run as a script
from tools.markdown import replace_section  # noqa: E402
from hdhkd_monai.networks import HDHKD, PDN, STUDENT_BACKBONES

DOC = Path(__file__).resolve().parents[1] / "docs" / "complexity.md"

#: FLOPs per (batch, channel, state, time step) of the scan: exp(delta*A) (mul, exp), delta*u*B (mul), state update
#: h = a*h + b*u (mul, add), readout C.h (mul, add), rounded up to mamba-ssm's own estimate of 9 for the small
#: per-(channel, step) work (bias, softplus, D skip).
SCAN_FLOPS_PER_STATE = 9

#: Table VII of the paper: (parameters in millions, GFLOPs) at 256x256.
PAPER_TABLE_VII = {"fcn": (46.6, 594), "transformer": (69.7, 775), "conv": (26.2, 265), "mamba": (30.9, 285)}
TABLE_VII_NAMES = {"fcn": "Baseline+FCN", "transformer": "Baseline+Transformer", "conv": "Baseline+Conv",
                   "mamba": "Baseline+Mamba (ours)"}  # fmt: skip
#: Table V's rows, read from configs/table5/ (the one home of the ablation settings): (name, constructor arguments).
TABLE_V = [
    (path.stem, {key.split("#")[-1]: value for key, value in json.loads(path.read_text()).items()})
    for path in sorted((Path(__file__).resolve().parents[1] / "configs" / "table5").glob("*.json"))
]


def measure(forward: Callable[[torch.Tensor], object], x: torch.Tensor) -> tuple[float, float]:
    """(counted FLOPs with the scan's count replaced by the analytic one, analytic scan FLOPs) of one forward."""
    scan_counted = scan_analytic = 0
    original = ss2d_module.selective_scan

    def counting_scan(u, delta, A, B, C, *args, **kwargs):
        nonlocal scan_counted, scan_analytic
        with FlopCounterMode(display=False) as inner:  # nested: the outer mode counts these ops too
            out = original(u, delta, A, B, C, *args, **kwargs)
        scan_counted += inner.get_total_flops()
        scan_analytic += SCAN_FLOPS_PER_STATE * u.numel() * A.shape[1]
        return out

    # The fused Transformer fast path and CPU flash attention are single ops the counter does not know; turned off,
    # attention runs as counted matmuls.
    torch.backends.mha.set_fastpath_enabled(False)
    with mock.patch.object(ss2d_module, "selective_scan", counting_scan), torch.no_grad():
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            forward(x)
    return counter.get_total_flops() - scan_counted + scan_analytic, scan_analytic


def row(name: str, teacher: PDN, size: int, **config) -> dict:
    torch.manual_seed(0)
    model = HDHKD(teacher, image_size=size, **config).eval()
    x = torch.rand(1, 3, size, size)
    start = time.perf_counter()
    student_flops, scan_flops = measure(lambda image: model.student(image, list(teacher.output_size((size, size)))), x)
    result = {
        "name": name,
        "backbone": config.get("backbone", "resnet18"),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad),
        "student_flops": student_flops,
        "scan_flops": scan_flops,
        "config": config,
    }
    print(f"{name:32s} {result['backbone']:16s} trainable {result['trainable'] / 1e6:6.2f} M  "
          f"student {student_flops / 1e9:7.1f} GFLOPs (scan {scan_flops / 1e9:5.2f})  "
          f"[{time.perf_counter() - start:.1f} s]", flush=True)  # fmt: skip
    return result


def preset_flops(workflows: tuple[str, ...] = (), size: int | None = None, **overrides) -> dict:
    """FLOPs of one image through the model a bundle configuration builds (``train.json`` + ``workflows``):
    ``teacher``, ``student`` and their ``total``, at ``size`` (default: the configuration's own ``image_size``)."""
    # the teacher's architecture without its trained weights (FLOPs do not depend on them; none may exist yet)
    parser = read_config(("train", *workflows), **{"teacher": "@teacher_def", **overrides})
    size = size or int(parser.get_parsed_content("image_size"))
    model = parser.get_parsed_content("hdhkd").eval()
    x = torch.rand(1, 3, size, size)
    teacher, _ = measure(model.teacher, x)
    grid = list(model.teacher.output_size((size, size)))
    student, _ = measure(lambda image: model.student(image, grid), x)
    return {"size": size, "teacher": teacher, "student": student, "total": teacher + student}


#: The configurations compared by the HDHKD-S FLOPs budget: the bundle's default, and the paper's full model
#: (its WideResNet50 student of Tables VI-VII, with the PDN-S teacher) at the paper's 256x256.
PRESETS = {
    "HDHKD-S (bundle default)": ((), {}),
    "paper configuration, configs/paper.json (resnet18 student)": (("paper",), {}),
    "paper's full model (wide_resnet50_2 student, Tables VI-VII)": (("paper",), {"backbone": "wide_resnet50_2"}),
}


def presets_section() -> str:
    rows = {name: preset_flops(workflows, **overrides) for name, (workflows, overrides) in PRESETS.items()}
    reference = rows["paper's full model (wide_resnet50_2 student, Tables VI-VII)"]["total"]
    lines = [
        "## FLOPs per image of the configurations (written by `bench/complexity.py`)",
        "",
        "One image at the configuration's own input size, teacher and student counted as in the models section "
        "below. HDHKD-S is the bundle's default; its budget is a tenth of the paper's full model.",
        "",
        "| configuration | input | teacher GFLOPs | student GFLOPs | total GFLOPs | share of the paper's full model |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['size']}x{r['size']} | {_g(r['teacher'])} | {_g(r['student'])} "
                     f"| {_g(r['total'])} | {r['total'] / reference:.3f} |")  # fmt: skip
    default_256 = preset_flops(size=256)
    lines += ["", f"HDHKD-S run at 256x256 instead: {_g(default_256['total'])} GFLOPs "
              f"({default_256['total'] / reference:.3f} of the paper's full model)."]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="input height and width")
    parser.add_argument("--no-doc", action="store_true", help=f"do not rewrite the models section of {DOC.name}")
    args = parser.parse_args()
    size = args.size

    teachers = {}
    for pdn_size in ("small", "medium"):
        pdn = PDN(pdn_size)
        flops, _ = measure(pdn, torch.rand(1, 3, size, size))
        teachers[pdn_size] = (sum(p.numel() for p in pdn.parameters()), flops)
        print(f"PDN {pdn_size}: {teachers[pdn_size][0] / 1e6:.2f} M parameters, {flops / 1e9:.1f} GFLOPs")
    teacher = PDN("small")  # the same frozen teacher for every row; its cost is reported apart

    table_vii = [row(TABLE_VII_NAMES[d], teacher, size, backbone="wide_resnet50_2", global_decoder=d)
                 for d in PAPER_TABLE_VII]  # fmt: skip
    table_vii += [row(TABLE_VII_NAMES[d], teacher, size, global_decoder=d) for d in PAPER_TABLE_VII]
    table_vi = [row("full model", teacher, size, backbone=b) for b in STUDENT_BACKBONES]
    table_v = [row(name, teacher, size, **config) for name, config in TABLE_V]
    presets = presets_section()
    print(presets)
    if not args.no_doc:
        write_doc(size, teachers, table_vii, table_vi, table_v)
        replace_section(DOC, "presets", presets)
        print(f"wrote the presets and models sections of {DOC}")


def _m(n: float) -> str:
    return f"{n / 1e6:.1f}"


def _g(n: float) -> str:
    return f"{n / 1e9:.1f}"


def write_doc(size, teachers, table_vii, table_vi, table_v) -> None:
    small_params, small_flops = teachers["small"]
    lines = [
        "## Parameters and FLOPs of the models (written by `bench/complexity.py`)",
        "",
        f"Input {size}x{size}, batch 1, one forward pass in eval mode. FLOPs are counted by "
        "`torch.utils.flop_counter.FlopCounterMode`, which counts matmuls, convolutions and attention at 2 FLOPs per "
        "multiply-add and ignores elementwise ops, norms and pooling. That would miss nearly all of the selective "
        "scan (it only sees the scan's readout matmul), so the scan's count is replaced by the analytic "
        f"`{SCAN_FLOPS_PER_STATE} * batch * channels * N * L` per call (channels = 4 directions x d_inner), shown "
        "in its own column. GMACs = GFLOPs / 2: the paper does not say which convention its FLOPs use (many papers "
        "report multiply-adds as FLOPs).",
        "",
        f"Trainable parameters are the student's; frozen ones the teacher's. The teacher is the same for every row: "
        f"PDN small, {_m(small_params)} M parameters, {_g(small_flops)} GFLOPs "
        f"(PDN medium: {_m(teachers['medium'][0])} M, {_g(teachers['medium'][1])} GFLOPs); the GFLOPs columns below "
        "are the student's alone, add the teacher's for a training step's forward. The teacher is unpadded (56x56 "
        "grid); the student's decoders run on the 64x64 stride-4 grid, so each SS2D scans L = 4096 tokens in 4 "
        "directions x 192 channels with N = 16.",
        "",
        "### Table VII: the global decoder swapped (full model otherwise)",
        "",
        "| variant | student backbone | trainable params (M) | frozen params (M) | GFLOPs | GMACs | of which scan "
        "(GFLOPs) | paper params (M) | paper GFLOPs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table_vii:
        paper = PAPER_TABLE_VII[r["config"]["global_decoder"]] if r["backbone"] == "wide_resnet50_2" else ("", "")
        lines.append(
            f"| {r['name']} | {r['backbone']} | {_m(r['trainable'])} | {_m(r['frozen'])} | {_g(r['student_flops'])} "
            f"| {_g(r['student_flops'] / 2)} | {_g(r['scan_flops'])} | {paper[0]} | {paper[1]} |"
        )
    lines += [
        "",
        "The paper does not name the student backbone of Table VII; its Baseline+Mamba AUROC (99.72) is that of the "
        "WideResNet50 row of Table VI, so its figures sit beside our `wide_resnet50_2` rows. It does not say whether "
        "its counts include the teacher either. Our Transformer and FCN swaps keep the UpNet skeleton and change its "
        "token mixer (see docs/architecture.md), which is why their parameter and FLOP counts differ from the "
        "paper's far more than the Conv and Mamba rows do.",
        "",
        "### Table VI: student backbones (full model)",
        "",
        "| backbone | trainable params (M) | frozen params (M) | GFLOPs | GMACs | of which scan (GFLOPs) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in table_vi:
        lines.append(f"| {r['backbone']} | {_m(r['trainable'])} | {_m(r['frozen'])} | {_g(r['student_flops'])} "
                     f"| {_g(r['student_flops'] / 2)} | {_g(r['scan_flops'])} |")  # fmt: skip
    lines += [
        "",
        "### Table V: ablations (resnet18 student)",
        "",
        "C = Conv Upsample branch, M = Mamba UpNet (without SS2D: a depthwise 3x3 mixer), MFM = Multi-Feature Model.",
        "",
        "| configuration | trainable params (M) | GFLOPs | GMACs | of which scan (GFLOPs) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in table_v:
        lines.append(f"| {r['name']} | {_m(r['trainable'])} | {_g(r['student_flops'])} | {_g(r['student_flops'] / 2)} "
                     f"| {_g(r['scan_flops'])} |")  # fmt: skip
    replace_section(DOC, "models", "\n".join(lines))


if __name__ == "__main__":
    main()
