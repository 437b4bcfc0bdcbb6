"""The score variants of experiments/fusion_probe.py beside a seeded table's other rows, per seed.

    python experiments/probe_table.py runs/<set> [--variants sum_sq cos cos+knn_sq_normed] [--against cos+knn_sq_normed]

``runs/<set>`` is an ``experiments/run.py main --seeds ...`` folder (``seed<N>/main.json``) whose HDHKD row
(``seed<N>/table5/7_full``) the probe scored (``fusion-4096-scores/<variant>.csv``). Prints a markdown table of test
AUROC per seed and mean ± sd for each variant and each row of ``main.json``, then, per seed, the paired bootstrap
interval of ``--against`` minus each other row and minus the bundle's own evaluation of the HDHKD row, and the
per-class AUROC of the variants.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.compare import compare_runs, read_scores  # noqa: E402
from experiments.run import scores_csv  # noqa: E402
from hdhkd_monai.metrics import auroc, per_class_metrics  # noqa: E402

HDHKD_ROW = "table5/7_full"


def seed_folders(out: Path) -> list[Path]:
    folders = sorted(out.glob("seed*/main.json"), key=lambda p: int(p.parent.name[4:]))
    if not folders:
        raise FileNotFoundError(f"{out}: no seed<N>/main.json (run experiments/run.py main --seeds ... first)")
    return [f.parent for f in folders]


def score_files(seed_out: Path, variants: list[str], suffix: str) -> dict[str, Path]:
    """Each variant's probe scores CSV and each row's evaluation folder of one seed, by name."""
    table = json.loads((seed_out / "main.json").read_text())
    probe = seed_out / HDHKD_ROW / f"fusion{suffix}-scores"
    files = {f"probe {v}": probe / f"{v}.csv" for v in variants}
    return {**files, **{row["name"]: scores_csv(seed_out, row["name"]) for row in table["rows"]}}


def test_auroc(path: Path) -> float:
    labels, scores = zip(*read_scores(path).values())
    return 100 * auroc(np.array(labels), np.array(scores))


def class_aurocs(path: Path) -> dict[str, float]:
    items = read_scores(path)
    classes = [Path(p).parent.name for p in items]  # test/<class>/<image>
    labels, scores = (np.array(c) for c in zip(*items.values()))
    return {c: 100 * m["auroc"] for c, m in per_class_metrics(labels, scores, classes, 0.0).items()}


def mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--variants", nargs="+", default=["sum_sq", "cos", "cos+knn_sq_normed", "cos+knn_cos"])
    parser.add_argument("--against", default="cos+knn_sq_normed", help="the variant compared with every row")
    parser.add_argument("--suffix", default="-4096", help="the probe's --max-patches suffix")
    args = parser.parse_args(argv)
    seeds = seed_folders(args.out)
    files = [score_files(s, args.variants, args.suffix) for s in seeds]
    print(f"{args.out.name}, seeds {', '.join(s.name[4:] for s in seeds)}\n\n| row | AUROC | per seed |\n|---|---|---|")
    for name in files[0]:
        values = [test_auroc(f[name]) for f in files]
        print(f"| {name} | {mean_sd(values)} | {' / '.join(f'{v:.2f}' for v in values)} |")
    chosen = f"probe {args.against}"
    for name in [n for n in files[0] if n != chosen]:
        results = [compare_runs(f[chosen], f[name]) for f in files]
        per_seed = "; ".join(f"{100 * r['diff']:+.2f} [{100 * r['low']:+.2f}, {100 * r['high']:+.2f}]" for r in results)
        print(f"\n`{chosen}` - `{name}`: {per_seed}")
    for name in (n for n in files[0] if n.startswith("probe ")):
        per_class = [class_aurocs(f[name]) for f in files]
        print(f"\n{name} per class: " + ", ".join(f"{c} {mean_sd([p[c] for p in per_class])}" for c in per_class[0]))


if __name__ == "__main__":
    main()
