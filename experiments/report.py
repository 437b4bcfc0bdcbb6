"""Tables of the experiment runner: row names, parameter counts and markdown."""

from __future__ import annotations

import json
from pathlib import Path

# The paper's figures for the rows the runner reproduces, shown beside ours, by the data folder they belong to:
# OCT2017 (Tables I, V-VII), brain MRI and chest CT (Table IV). Other folders (neh-oct is not in the paper) get none.
PAPER_AUROC_OCT2017 = {
    "table5/1_conv": 96.93, "table5/2_conv_mamba": 98.05, "table5/3_conv_mamba_ss2d": 99.02,
    "table5/4_mamba_mfm": 97.84, "table5/5_mamba_mfm_ss2d": 98.36, "table5/6_conv_mamba_mfm": 99.27,
    "table5/7_full": 99.72, "table6/resnet18": 98.17, "table6/resnet34": 98.64, "table6/resnet50": 99.02,
    "table6/resnext50_32x4d": 99.65, "table6/wide_resnet50_2": 99.72, "table7/fcn": 97.45,
    "table7/transformer": 99.23, "table7/conv": 98.36, "table7/mamba": 99.72,
    "EfficientAD-S": 98.95, "PatchCore": 97.52, "RD4AD": 97.64,
}  # fmt: skip
PAPER_AUROC_BY_DATA = {
    "oct2017": PAPER_AUROC_OCT2017,
    "brainmri": {"table5/7_full": 96.38, "EfficientAD-S": 96.13, "PatchCore": 93.62, "RD4AD": 94.90},
    "chestct": {"table5/7_full": 87.94, "EfficientAD-S": 84.46, "PatchCore": 87.74, "RD4AD": 86.81},
}
PAPER_PARAMS_M = {"table7/fcn": 46.6, "table7/transformer": 69.7, "table7/conv": 26.2, "table7/mamba": 30.9}


def row_name(config_file: Path) -> str:
    return f"{config_file.parent.name}/{config_file.stem}"


def trainable_params(config_files: list[Path]) -> int:
    """Trainable parameters of the ``detector`` the merged configs build (HDHKD or a baseline; a teacher from its
    checkpoint)."""
    from hdhkd_monai.launcher import read_config

    model = read_config(config_files).get_parsed_content("detector")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _overrides(budget: dict) -> str:
    overrides = budget.get("overrides") or {}
    return "".join(f"`{k}={json.dumps(v)}`; " for k, v in overrides.items())


def _flag_all_f1(table: dict) -> float | None:
    m = table["rows"][0]["image"] if table["rows"] else {}
    return m.get("f1_flag_all")


def markdown(table: dict) -> str:
    """The table in the paper's columns, with counts, budget and wall time."""
    budget = table["budget"]
    lines = [
        f"Data `{table['data']}`; image {budget['image_size']}x{budget['image_size']}, {budget['iterations']} student "
        f"iterations at batch {budget['batch_size']}, teacher {budget['teacher_iterations']} iterations; "
        f"seed {budget['seed']}; {_overrides(budget)}wall time of the run that wrote this table "
        f"{table['wall_s'] / 60:.0f} min on {table.get('cpu_count', 2)} CPU cores (rows trained by an earlier run are "
        "only evaluated; the train s column keeps their training time).",
        "",
        f"F1 of flagging every test image abnormal (the floor for the F1 column): {_pct(_flag_all_f1(table))}. "
        "SEN at 95 % SPE reads the operating point off the test labels, as AUROC does.",
        "",
        "| row | AUROC | AUPRC | SEN at 95 % SPE | F1 | ACC | SEN | SPE | trainable params (M) "
        "| paper AUROC (same data set) | test normal / abnormal | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table["rows"]:
        m = row["image"]
        paper = PAPER_AUROC_BY_DATA.get(table["data"], {}).get(row["name"])
        params = row.get("trainable_params")
        paper_params = PAPER_PARAMS_M.get(row["name"])
        params_txt = "n/a" if params is None else f"{params / 1e6:.1f}"
        if paper_params is not None:
            params_txt += f" (paper {paper_params})"
        lines.append(
            f"| {row['name']} | {_pct(m['auroc'])} | {_pct(m['auprc'])} | {_pct(m.get('sen_at_95spe'))} "
            f"| {_pct(m['f1'])} | {_pct(m['acc'])} | {_pct(m['sen'])} | {_pct(m['spe'])} | {params_txt} "
            f"| {'' if paper is None else paper} | {m['n_normal']} / {m['n_abnormal']} | {row['train_s']:.0f} |"
        )
    return "\n".join(lines + _per_class_lines(rows_by_name([table]), spread=False))


def _mean_sd(values: list[float]) -> str:
    values = [100 * v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {sd:.2f}"


def rows_by_name(tables: list[dict]) -> dict[str, list[dict | None]]:
    """Each row name, in the order rows first appear, with its row in every seed's table (``None`` where that seed
    did not run it, e.g. a costly baseline run on one seed only)."""
    found = [{row["name"]: row for row in t["rows"]} for t in tables]
    names = dict.fromkeys(row["name"] for t in tables for row in t["rows"])
    return {name: [f.get(name) for f in found] for name in names}


def mean_auroc(runs: list[dict | None]) -> float:
    """Mean test AUROC of the seeds that ran a row."""
    values = [r["image"]["auroc"] for r in runs if r is not None]
    return sum(values) / len(values)


def markdown_seeds(tables: list[dict], comparisons: list[str]) -> str:
    """One table over several seeds of the same table: each metric as mean ± standard deviation over the seeds that
    ran the row, the AUROC of every seed (``-`` where a seed did not run it), the per-class AUROC where the test set
    has several abnormal classes, and the paired bootstrap ``comparisons`` (lines of text) below."""
    first, budget = tables[0], tables[0]["budget"]
    seeds = [t["budget"]["seed"] for t in tables]
    rows = rows_by_name(tables)
    pdn = "EfficientAD-S" in rows
    lines = [
        f"Data `{first['data']}`; image {budget['image_size']}x{budget['image_size']}, {budget['iterations']} student "
        f"iterations at batch {budget['batch_size']}"
        + (f" (EfficientAD-S's PDN teacher {budget['teacher_iterations']} iterations)" if pdn else "")
        + f"; seeds {', '.join(map(str, seeds))}; {_overrides(budget)}mean ± standard deviation over the "
        f"seeds; wall time of the runs that wrote this table {sum(t['wall_s'] for t in tables) / 60:.0f} min on "
        f"{first.get('cpu_count', 2)} CPU cores (rows trained by an earlier run are only evaluated).",
        "",
        f"F1 of flagging every test image abnormal (the floor for the F1 column): {_pct(_flag_all_f1(first))}. "
        "SEN at 95 % SPE reads the operating point off the test labels, as AUROC does; F1 and SPE are at the "
        "threshold from the normal validation images.",
        "",
        "| row | AUROC | AUROC per seed | AUPRC | SEN at 95 % SPE | F1 | SPE | trainable params (M) "
        "| paper AUROC (same data set) | test normal / abnormal | train s (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_seeds_row(first["data"], name, runs) for name, runs in rows.items()]
    return "\n".join(lines + _per_class_lines(rows, spread=True) + ([""] + comparisons if comparisons else []))


def _seeds_row(data: str, name: str, runs: list[dict | None]) -> str:
    ran = [r for r in runs if r is not None]
    metric = lambda key: _mean_sd([r["image"].get(key) for r in ran])  # noqa: E731
    paper = PAPER_AUROC_BY_DATA.get(data, {}).get(name)
    params = ran[0].get("trainable_params")
    m = ran[0]["image"]
    per_seed = " / ".join("-" if r is None else _pct(r["image"]["auroc"]) for r in runs)
    return (
        f"| {name} | {metric('auroc')} | {per_seed} | {metric('auprc')} | {metric('sen_at_95spe')} | {metric('f1')} "
        f"| {metric('spe')} | {'n/a' if params is None else f'{params / 1e6:.1f}'} | {'' if paper is None else paper} "
        f"| {m['n_normal']} / {m['n_abnormal']} | {sum(r['train_s'] for r in ran) / len(ran):.0f} |"
    )


def _per_class_lines(rows: dict[str, list[dict | None]], spread: bool) -> list[str]:
    """AUROC of each abnormal class against the normal test images (``spread``: mean ± sd over the seeds that ran
    the row, as a table of several seeds shows every metric); none for one class."""
    classes = sorted({c for runs in rows.values() for r in runs if r is not None for c in r.get("per_class", {})})
    if len(classes) < 2:
        return []
    over = "; mean ± sd over the seeds" if spread else ""
    lines = ["", f"Per abnormal class (AUROC against the normal test images{over}):", "",
             "| row | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for name, runs in rows.items():
        ran = [r for r in runs if r is not None]
        values = [[r.get("per_class", {}).get(c, {}).get("auroc") for r in ran] for c in classes]
        cells = [_mean_sd(v) if spread else _pct(v[0]) for v in values]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines
