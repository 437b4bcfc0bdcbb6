"""The library as a user installs it: a wheel built from this tree (``pip install .``, not editable), installed into
a fresh virtual environment outside the source tree, used from an empty folder with nothing of the repository on
the Python path. The suite's environment lies underneath (through a ``.pth`` file, as monailabel_app/make_env.sh
layers it), so torch and MONAI are not installed twice; the wheel's ``hdhkd_monai`` comes first.
"""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

#: The tiny demo: the sizes of hdhkd_monai.demo.SETTINGS cut to seconds (64 px, 2 iterations).
TINY_DEMO = {
    "data": {"n_train": 8, "n_test_per_class": 4, "val_fraction": 0.25, "val_abnormal_fraction": 0.34},
    "common": {"image_size": 64, "num_modules": 1, "decoder_channels": 64, "cache_rate": 1.0, "num_workers": 0,
               "log_interval": 1},
    "student": {"max_iterations": 2, "batch_size": 4, "val_interval": 2},
    "evaluate": {"n_heatmaps": 1},
}


def _run(python: Path, args: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the source tree
    done = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the virtual environment's python, an empty working folder); the wheel is installed with ``--no-deps``."""
    root = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(root / "dist"), str(REPO_ROOT)], check=True, capture_output=True)
    (wheel,) = (root / "dist").glob("hdhkd_monai-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    venv_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip()
    import site

    lines = [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]
    Path(venv_site, "suite-env.pth").write_text("\n".join(lines) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)], check=True,
                   capture_output=True)
    work = root / "empty"
    work.mkdir()
    where = _run(python, ["-c", "import hdhkd_monai; print(hdhkd_monai.__file__)"], work).strip()
    assert Path(where).is_relative_to(root / "venv"), f"imported {where}, not the installed wheel"
    return python, work


@pytest.fixture(scope="module")
def demo(installed) -> Path:
    """The tiny demo, run by the installed package from the empty folder; its output folder."""
    python, work = installed
    script = f"from hdhkd_monai.demo import run_demo; print(run_demo('demo', settings={TINY_DEMO!r}))"
    _run(python, ["-c", script], work)
    return work / "demo"


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo_and_its_command_lines_from_an_empty_folder(installed, demo):
    python, work = installed
    report = json.loads((demo / "eval" / "metrics.json").read_text())
    assert 0.0 <= report["image"]["auroc"] <= 1.0 and (demo / "models" / "model.pt").is_file()
    for module in ("hdhkd_monai.demo", "hdhkd_monai.zoo", "hdhkd_monai.data.datalist"):
        assert "usage:" in _run(python, ["-m", module, "--help"], work)
    _run(python, ["-m", "hdhkd_monai.data.datalist", "kermany", "demo/data", "--out", "datalist.json"], work)
    assert (work / "datalist.json").is_file()


@pytest.mark.slow
def test_the_installed_wheel_scores_a_real_bscan(installed, demo, shared_data):
    """``python -m hdhkd_monai infer`` (the bundle's inference.json, installed with the package) on a real NEH B-scan."""
    python, work = installed
    image = sorted((shared_data / "neh-oct" / "test" / "AMD").iterdir())[0]
    _run(python, ["-m", "hdhkd_monai", "infer", "--bundle_root", "demo", "--input", str(image),
                  "--output_dir", "scored"], work)
    with open(work / "scored" / "scores.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["path"] == str(image) and math.isfinite(float(row["score"]))
    assert len(list((work / "scored" / "maps").rglob("*.nii.gz"))) == 1
