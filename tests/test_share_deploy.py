"""Sharing and serving a trained bundle: the Model Zoo package (``python -m hdhkd_monai.zoo pack``) checked the way the
Zoo's CI checks a bundle, in a fresh process with only the package importable, then run on real OCT B-scans; and a
real MONAI Label server (``monailabel_app/``) answering with the bundle's heat-map and score.

One module fixture trains the default configuration briefly on 64x64 phantom B-scans, evaluates it, packs it and
unzips the package into an empty folder; the tests use that folder.
"""

import csv
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from hdhkd_monai import zoo
from hdhkd_monai.anomaly_map import image_score
from hdhkd_monai.launcher import BUNDLE, CONFIGS, REPO
from test_bundle_workflows import TINY, run, write_phantom_data

pytest.importorskip("onnxruntime", reason="packing exports ONNX: pip install -e '.[onnx]'")

#: The settings the phantom model is trained with that the package's configs must carry (TINY's model keys).
SETTINGS = {k: TINY[k] for k in ("image_size", "num_modules", "decoder_channels")}
SCHEMA = SHARED_DATA.parent / "monai" / "meta_schema_20240725.json"
#: Real B-scans for inference: two normal, two abnormal, from the NEH set (PROVENANCE.md in ../shared/data).
REAL_IMAGES = ("neh-oct/test/NORMAL", "neh-oct/test/AMD")


def _next_version() -> str:
    major, minor, patch = json.loads((CONFIGS / "metadata.json").read_text())["version"].split(".")
    return f"{major}.{minor}.{int(patch) + 1}"


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """(the unzipped package folder, the zip, the trained bundle_root)."""
    trained = tmp_path_factory.mktemp("trained")
    write_phantom_data(trained, n_train=8, n_test_per_class=4)
    run(("train",), trained, max_iterations=2, batch_size=4, val_interval=2)
    run(("train", "evaluate"), trained, n_heatmaps=1)
    out = tmp_path_factory.mktemp("zoo")
    archive = zoo.pack(trained, out / "package.zip", _next_version(), "phantom test model", SETTINGS)
    unpacked = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(archive) as z:
        z.extractall(unpacked)
    return unpacked / BUNDLE.name, archive, trained


def test_package_has_the_model_zoo_layout(package):
    root, archive, trained = package
    names = set(zipfile.ZipFile(archive).namelist())
    top = {n.split("/")[0] for n in names}
    assert top == {BUNDLE.name}
    for required in ("configs/inference.json", "configs/metadata.json", "models/model.pt", "models/model.ts",
                     "models/model.onnx", "docs/README.md", "LICENSE", "large_files.yml"):
        assert f"{BUNDLE.name}/{required}" in names, required
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["version"] == _next_version() and meta["changelog"][meta["version"]] == "phantom test model"
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [64, 64]
    inference = json.loads((root / "configs" / "inference.json").read_text())
    assert {k: inference[k] for k in ("num_modules", "decoder_channels")} == {"num_modules": 1, "decoder_channels": 64}
    # large_files.yml lists every model with the hash of the packed file
    listed = (root / "large_files.yml").read_text()
    for name in zoo.LARGE_FILES:
        assert f'path: "{name}"' in listed and zoo._sha256(root / name) in listed
    # the README carries this model's evaluation numbers
    auroc = json.loads((trained / "eval" / "metrics.json").read_text())["image"]["auroc"]
    assert f"{auroc:.4f}" in (root / "docs" / "README.md").read_text()


def test_onnx_in_the_package_carries_the_calibration(package):
    import onnx

    root, _, trained = package
    props = {p.key: p.value for p in onnx.load(str(root / "models" / "model.onnx")).metadata_props}
    state = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert float(props["threshold"]) == pytest.approx(float(state["model.threshold"]))
    assert json.loads(props["map_quantiles"]) == pytest.approx(state["model.map_quantiles"].tolist())


def _only_the_package(tmp_path) -> dict:
    """An environment whose Python path holds this clone's package and nothing else of the repository."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "hdhkd_monai").symlink_to(REPO / "hdhkd_monai")
    return {**os.environ, "PYTHONPATH": str(site)}


@pytest.mark.slow
def test_zoo_checks_and_inference_on_real_images_in_a_fresh_process(package, shared_data, tmp_path):
    """The Zoo CI's offline checks on inference.json alone, then the inference workflow on real B-scans, in one fresh
    process started in the unzipped package; its scores equal the TorchScript model that process exported."""
    root, _, _ = package
    if not SCHEMA.is_file():
        pytest.skip(f"Model Zoo schema not found at {SCHEMA}")
    images = [sorted((shared_data / folder).iterdir())[i] for folder in REAL_IMAGES for i in (0, 1)]
    (tmp_path / "images.txt").write_text("\n".join(str(p) for p in images) + "\n")
    script = textwrap.dedent(f"""
        from monai.bundle import ckpt_export, run, verify_metadata, verify_net_in_out
        meta, config = "configs/metadata.json", "configs/inference.json"
        verify_metadata(meta_file=meta, filepath={str(SCHEMA)!r})
        verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, device="cpu")
        ckpt_export(net_id="network_def", filepath="models/verify.ts", ckpt_file="models/model.pt",
                    key_in_ckpt="model", meta_file=meta, config_file=config)
        run(config_file=config, meta_file=meta, input={str(tmp_path / 'images.txt')!r},
            output_dir={str(tmp_path / 'out')!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=_only_the_package(tmp_path),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    with open(tmp_path / "out" / "scores.csv") as f:
        rows = {r["path"]: float(r["score"]) for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(str(p) for p in images)
    from hdhkd_monai.launcher import read_config

    parser = read_config([root / "configs" / "inference.json"], **SETTINGS)
    preprocessing = parser.get_parsed_content("preprocessing")
    exported = torch.jit.load(str(root / "models" / "verify.ts"))
    with torch.no_grad():
        for path, score in rows.items():
            image = preprocessing({"image": path})["image"].as_tensor()[None]
            expected = image_score(exported(image), top_k=parser.get_parsed_content("score_top_k"))
            assert score == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
