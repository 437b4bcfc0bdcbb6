"""Regenerate one table of docs/results.md on one data folder, through the bundle workflows.

    python experiments/run.py TABLE --data ../shared/data/neh-oct --preset oct2017 [--normal NORMAL] [budget options]

TABLE is one of:

- ``main``: the full HDHKD beside the baselines EfficientAD-S, PatchCore and RD4AD (paper Tables I, III, IV);
  optionally anomalib 2.7.0's own PatchCore and PaDiM as peer rows
  (``--baselines ... anomalib-PatchCore anomalib-Padim``, experiments/anomalib_rows.py);
- ``table5``: the 7 module ablations of Table V (``configs/table5/*.json``);
- ``table6``: the student backbones of Table VI (``configs/table6/*.json``);
- ``table7``: the global-decoder swaps of Table VII with their parameters (``configs/table7/*.json``).

The steps, each a ``monai.bundle run`` of the bundle in ``bundle/hdhkd_oct_anomaly`` (a row's training and its
evaluation in one interpreter, ``hdhkd_monai.launcher.run_bundles``; each command is in the row's ``log.txt``):

1. the datalist of the folder (``train/<normal>``, ``test/<class>``; a held-out part of the normal training images
   is the validation split that calibrates the threshold);
2. for each row: training of the bundle's default model (HDHKD-S, whose teacher needs no distillation) with the
   row's overrides, then evaluation on the test split;
3. ``main`` only: the baselines (``experiments/baselines.py``); for EfficientAD-S a PDN teacher is distilled once
   per data folder from the pip-shipped EfficientNet-Lite0 on the folder's own normal training images (reused by
   every seed: delete ``OUT/teacher`` to redo it).

Everything lands in ``OUT`` (default ``runs/<data folder name>``): one folder per row with its checkpoints, logs,
TensorBoard events, ``eval/metrics.json``, scores and heat-maps, and ``<table>.json`` with the table. The markdown
table replaces its own marked section of docs/results.md. A row already evaluated under the same settings is read
back from its ``row.json``, as a baseline is from ``baselines/<name>.json`` (delete the file to evaluate it again); a
row whose checkpoint reached a smaller budget trains on from its last checkpoint; ``--fresh`` starts the rows over.

``--set KEY=VALUE ...`` overrides keys of the training config for every HDHKD row (not the baselines), e.g.
``--set learning_rate=0.001 hdhkd#norm=instance``, for experiments beyond the paper's rows. The overrides are kept in
each row's ``run.json`` and shown with the budget; a row folder trained under other settings is refused instead of
resumed (``--fresh`` or another ``--out``). Per-image scores of two rows or baselines are compared, with a bootstrap
interval, by ``experiments/compare.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `experiments` as a package when run as a script

from experiments import report  # noqa: E402
from experiments.anomalib_rows import ANOMALIB_ROWS, run_anomalib_rows  # noqa: E402
from experiments.baselines import BASELINES, run_baselines  # noqa: E402
from experiments.compare import compare_runs  # noqa: E402
from experiments.records import read_back  # noqa: E402
from hdhkd_monai.data.datalist import kermany_datalist, summary, write_datalist  # noqa: E402
from hdhkd_monai.launcher import CONFIGS, OFFLINE_TEACHER, read_config, run_bundle, run_bundles  # noqa: E402
from tools.markdown import replace_section  # noqa: E402

TABLES = ("main", "table5", "table6", "table7")
# run.json keys that may change while a row folder is resumed: paths (a copied run folder) and the training length.
PATH_KEYS = {"bundle_root", "datalist", "teacher_ckpt"}
RESUMABLE_KEYS = PATH_KEYS | {"max_iterations", "val_interval"}


def write_json(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2))
    return path


def rows_of(table: str, only: list[str] | None) -> list[Path]:
    rows = [REPO / "configs" / "table5" / "7_full.json"] if table == "main" else sorted((REPO / "configs" / table).glob("*.json"))
    if only:
        unknown = sorted(set(only) - {r.stem for r in rows})
        if unknown:
            raise ValueError(f"--rows {unknown}: not rows of {table}, whose rows are {[r.stem for r in rows]}")
        rows = [r for r in rows if r.stem in only]
    return rows


def prepare_data(args, out: Path) -> Path:
    path = out / "datalist.json"
    if not path.exists():
        datalist = kermany_datalist(args.data, normal=args.normal, val_fraction=args.val_fraction, holdout="last")
        write_datalist(datalist, path)
    print(summary(json.loads(path.read_text())), flush=True)
    return path


def distil_teacher(args, out: Path, datalist: Path, preset: Path) -> Path:
    root = out / "teacher"
    ckpt = root / "models" / "teacher.pt"
    if ckpt.exists():
        return ckpt
    budget = write_json(root / "run.json", {
        "bundle_root": str(root),
        "datalist": str(datalist),
        "image_size": args.image_size,
        **OFFLINE_TEACHER,
        "max_iterations": args.teacher_iterations,
        "batch_size": args.batch_size,
        "stats_images": 1000,
    })  # fmt: skip
    start = time.time()
    print(f"distilling the teacher ({args.teacher_iterations} iterations) into {ckpt}", flush=True)
    run_bundle([CONFIGS / "train.json", CONFIGS / "paper.json", CONFIGS / "train_teacher.json", preset, budget],
               log=root / "log.txt")
    print(f"  teacher done in {time.time() - start:.0f} s", flush=True)
    return ckpt


def kept_training_time(root: Path, iterations: int, seconds: float) -> float:
    """The training time of a row that just trained or resumed for ``seconds`` to ``iterations``. The time is kept in
    ``root/train_time.json`` with the iterations it bought: a row that is only re-evaluated reports how long it took
    to train, not the seconds its no-op resume took, and a row resumed to more iterations adds the new seconds."""
    record = root / "train_time.json"
    # Records written before the iterations were kept are for the row's current budget.
    previous = json.loads(record.read_text()) if record.exists() else {"train_s": 0.0, "iterations": 0}
    if previous.get("iterations", iterations) == iterations:
        return previous["train_s"]
    train_s = previous["train_s"] + seconds
    write_json(record, {"train_s": train_s, "iterations": iterations})
    return train_s


def parse_overrides(pairs: list[str] | None) -> dict:
    """``KEY=VALUE`` strings as config overrides; a VALUE that is not JSON (``instance``) stays a string."""
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE, e.g. learning_rate=0.001")
        if key in RESUMABLE_KEYS | {"image_size", "batch_size", "seed"}:
            raise ValueError(f"--set {key}: set by the runner itself; use its own option or --out")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def check_resumable(root: Path, settings: dict) -> None:
    """Refuse to resume a row folder whose checkpoints were trained under other settings: its old model would be
    reported under the new ones."""
    previous = root / "run.json"
    if not (previous.exists() and (root / "models").exists()):
        return
    old = json.loads(previous.read_text())
    changed = sorted(k for k in (old.keys() | settings.keys()) - RESUMABLE_KEYS if old.get(k) != settings.get(k))
    if changed:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise ValueError(f"{root} was trained under other settings ({diff}); retrain it with --fresh or use another --out")


def run_row(args, out: Path, row: Path, datalist: Path, preset: Path) -> dict:
    root = out / row.parent.name / row.stem
    if args.fresh and root.exists():
        shutil.rmtree(root)
    settings = {
        "bundle_root": str(root),
        "datalist": str(datalist),
        "image_size": args.image_size,
        "max_iterations": args.iterations,
        "batch_size": args.batch_size,
        "val_interval": args.iterations,
        "cache_rate": 1.0,  # the data sets here are small; decoding and resizing every batch again is most of a step
        "seed": args.seed,
        **args.overrides,
    }  # fmt: skip
    check_resumable(root, settings)
    record = root / "row.json"
    kept = read_back(record, f"{row.parent.name}/{row.stem}", lambda kept: same_row(kept["settings"], settings))
    if kept:
        return kept["row"]
    budget = write_json(root / "run.json", settings)
    configs = [preset, row, budget]
    print(f"{row.parent.name}/{row.stem}: training {args.iterations} iterations", flush=True)
    train, evaluate = [CONFIGS / "train.json", *configs], [CONFIGS / "train.json", CONFIGS / "evaluate.json", *configs]
    seconds = run_bundles([train, evaluate], log=root / "log.txt")
    train_s = kept_training_time(root, args.iterations, seconds[0])
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    result = {
        "name": report.row_name(row), "config": json.loads(row.read_text()), "train_s": train_s,
        "trainable_params": report.trainable_params(train), **metrics,
    }  # fmt: skip
    print(f"  AUROC {metrics['image']['auroc']:.4f}, training {train_s:.0f} s", flush=True)
    write_json(record, {"settings": settings, "row": result})
    return result


def same_row(old: dict, new: dict) -> bool:
    """Whether a row evaluated under the settings ``old`` is the row ``new`` asks for: the same settings, paths aside
    (a copied run folder is the same row, as :func:`check_resumable` resumes it)."""

    def kept(settings: dict) -> dict:
        return {k: v for k, v in settings.items() if k not in PATH_KEYS}

    return bool(old) and kept(old) == kept(new)


def bundle_defaults() -> dict:
    """The image size and batch size the bundle's ``train.json`` trains with, the runner's defaults."""
    parser = read_config(["train"])
    return {"image_size": int(parser.get_parsed_content("image_size")), "batch_size": parser["batch_size"]}


def recipe_iterations(datalist: Path, batch_size: int) -> int:
    """The bundle's training length on ``datalist`` (``train.json``: at least ``min_iterations``, and at least
    ``min_passes`` passes over the training images at ``batch_size``), the runner's default."""
    parser = read_config(["train"], datalist=str(datalist), batch_size=batch_size)
    return int(parser.get_parsed_content("max_iterations"))


def scores_csv(seed_out: Path, row_name: str) -> Path:
    """The folder of a row's evaluation: an HDHKD row (``table5/7_full``) or a baseline (``OUT/baselines/<name>``)."""
    return seed_out / row_name if "/" in row_name else seed_out / "baselines" / row_name


def seed_comparisons(table: str, seed_outs: list[Path], tables: list[dict]) -> list[str]:
    """Paired bootstrap intervals, per seed, of the comparisons a table is for: HDHKD against the best baseline run on
    every seed (``main``), the full model against the Conv-Upsample-only row (``table5``)."""
    rows = report.rows_by_name(tables)
    names = list(rows)
    baselines = [n for n in names if "/" not in n and None not in rows[n]]  # paired on every seed
    if table == "main" and baselines:
        pairs = [(names[0], max(baselines, key=lambda n: report.mean_auroc(rows[n])))]
    elif table == "table5" and {"table5/7_full", "table5/1_conv"} <= set(names):
        pairs = [("table5/7_full", "table5/1_conv")]
    else:
        return []
    lines = []
    for a, b in pairs:
        results = [compare_runs(scores_csv(o, a), scores_csv(o, b)) for o in seed_outs]
        per_seed = "; ".join(f"seed {t['budget']['seed']}: {100 * r['diff']:+.2f} [{100 * r['low']:+.2f}, "
                             f"{100 * r['high']:+.2f}]" for t, r in zip(tables, results))  # fmt: skip
        mean = 100 * sum(r["diff"] for r in results) / len(results)
        lines.append(f"`{a}` - `{b}` (AUROC points, paired stratified bootstrap 95 % interval of 2000 resamples of the "
                     f"test images, per seed): {per_seed}; mean {mean:+.2f}.")  # fmt: skip
    return lines


def run_seed(args, out: Path, seed: int, row_files: list[Path], datalist: Path, preset: Path) -> dict:
    """One seed of the table into ``out``: its HDHKD rows, then (``main``) the baselines."""
    args.seed = seed
    wall = time.time()
    baselines = args.baselines if args.table == "main" else []
    teacher = None
    if "EfficientAD-S" in baselines:  # its PDN teacher, distilled once for all seeds
        teacher = distil_teacher(args, out.parent if len(args.seeds) > 1 else out, datalist, preset)
    rows = [run_row(args, out, row, datalist, preset) for row in row_files]
    if baselines:
        rows += run_baselines(args, out, datalist, preset, teacher)
        rows += run_anomalib_rows(args, out, datalist, preset)
    table = {
        "table": args.table, "data": args.data.name, "wall_s": time.time() - wall, "cpu_count": os.cpu_count(),
        "budget": {"image_size": args.image_size, "iterations": args.iterations, "batch_size": args.batch_size,
                   "teacher_iterations": args.teacher_iterations, "seed": seed,
                   **({"overrides": args.overrides} if args.overrides else {})},
        "rows": rows,
    }  # fmt: skip
    write_json(out / f"{args.table}.json", table)
    return table


def main(argv: list[str] | None = None) -> None:
    defaults = bundle_defaults()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=TABLES)
    parser.add_argument("--data", type=Path, required=True, help="folder with train/<normal>/ and test/<class>/")
    parser.add_argument("--normal", default="NORMAL", help="name of the normal class folder")
    parser.add_argument("--preset", default="oct2017", help="data set override in configs/ (preprocessing)")
    parser.add_argument("--out", type=Path, help="run folder (default runs/<data folder name>)")
    parser.add_argument("--image-size", type=int, default=defaults["image_size"], help="default: the bundle's")
    parser.add_argument("--iterations", type=int,
                        help="student training iterations of every trained row (default: the bundle's rule for the "
                             "folder's training images, train.json's max_iterations)")
    parser.add_argument("--teacher-iterations", type=int, default=300, help="EfficientAD-S's PDN teacher distillation")
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="default: the bundle's")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="training seeds; with several, each seed's rows go to OUT/seed<N> and the table "
                             "reports mean ± standard deviation")
    parser.add_argument("--rows", nargs="+", help="run only these rows (config file stems, e.g. 1_conv 7_full)")
    parser.add_argument("--baselines", nargs="*", choices=BASELINES + ANOMALIB_ROWS, default=list(BASELINES),
                        help="main table: the baselines beside HDHKD (none: HDHKD only); the anomalib rows are "
                             "optional (experiments/anomalib_rows.py)")
    parser.add_argument("--fresh", action="store_true", help="retrain the rows even if checkpoints exist")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the section of docs/results.md")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rewrite the section of docs/results.md from the tables in OUT")
    parser.add_argument("--set", nargs="+", metavar="KEY=VALUE", dest="overrides",
                        help="training config overrides for the HDHKD rows, e.g. learning_rate=0.001")
    args = parser.parse_args(argv)
    args.overrides = parse_overrides(args.overrides)

    out = (args.out or REPO / "runs" / args.data.name).resolve()
    seed_outs = [out] if len(args.seeds) == 1 else [out / f"seed{s}" for s in args.seeds]
    if not args.report_only:
        out.mkdir(parents=True, exist_ok=True)
        preset = REPO / "configs" / f"{args.preset}.json"
        if not preset.is_file():
            raise FileNotFoundError(f"no data set override {preset}; choose one of {[p.stem for p in preset.parent.glob('*.json')]}")
        row_files = rows_of(args.table, args.rows)
        datalist = prepare_data(args, out)
        args.iterations = args.iterations or recipe_iterations(datalist, args.batch_size)
        for seed, seed_out in zip(args.seeds, seed_outs):
            run_seed(args, seed_out, seed, row_files, datalist, preset)
    tables = [json.loads((o / f"{args.table}.json").read_text()) for o in seed_outs]
    if len(tables) == 1:
        markdown = report.markdown(tables[0])
    else:
        markdown = report.markdown_seeds(tables, seed_comparisons(args.table, seed_outs, tables))
    write_doc(args, markdown)


def write_doc(args, markdown: str) -> None:
    print(markdown)
    if not args.no_doc:
        replace_section(REPO / "docs" / "results.md", f"{args.table}:{args.data.name}", markdown)


if __name__ == "__main__":
    main()
