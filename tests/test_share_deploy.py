"""Sharing and serving a trained bundle: the Model Zoo package (``python -m hdhkd_monai.zoo pack``) checked the way the
Zoo's CI checks a bundle, in a fresh process with only the package importable, then run on real OCT B-scans; and a
real MONAI Label server (``monailabel_app/``) answering with the bundle's heat-map and score.

One module fixture trains the default configuration briefly on 64x64 phantom B-scans, evaluates it, packs it and
unzips the package into an empty folder; the tests use that folder.
"""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from hdhkd_monai import zoo
from hdhkd_monai.errors import BadInputError
from hdhkd_monai.anomaly_map import image_score
from conftest import REPO_ROOT as REPO
from hdhkd_monai.launcher import BUNDLE, CONFIGS
from test_bundle_workflows import TINY, run, write_phantom_data

pytest.importorskip("onnxruntime", reason="packing exports ONNX: pip install -e '.[onnx]'")

#: The settings the phantom model is trained with that the package's configs must carry (TINY's model keys).
SETTINGS = {k: TINY[k] for k in ("image_size", "num_modules", "decoder_channels")}
SCHEMA = SHARED_DATA.parent / "monai" / "meta_schema_20240725.json"
#: Real B-scans for inference: two normal, two abnormal, from the NEH set (PROVENANCE.md in ../shared/data).
REAL_IMAGES = ("neh-oct/test/NORMAL", "neh-oct/test/AMD")
#: The python of the MONAI Label environment, which monailabel_app/make_env.sh makes and prints (.ci/run sets it).
MONAILABEL_PYTHON = os.environ.get("HDHKD_MONAILABEL_PYTHON")
SERVER_START_S = 300


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


def test_stamp_onnx_writes_the_calibration_into_an_exported_model(package, tmp_path):
    """``python -m hdhkd_monai.zoo stamp-onnx`` on a model as ``monai.bundle onnx_export`` leaves it (no metadata)."""
    import onnx

    root, _, _ = package
    model = onnx.load(str(root / "models" / "model.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "model.onnx"))
    zoo.main(["stamp-onnx", str(tmp_path / "model.onnx"), str(root / "models" / "model.pt")])
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    packed = {p.key: p.value for p in onnx.load(str(root / "models" / "model.onnx")).metadata_props}
    assert set(props) == {"threshold", "map_quantiles"} and props == packed


def test_pack_names_a_missing_model_and_an_unknown_setting(tmp_path):
    with pytest.raises(BadInputError, match=r"model\.pt: no trained model here"):
        zoo.pack(tmp_path, tmp_path / "package.zip", _next_version(), "x")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").touch()  # never read: the settings are checked before the exports
    with pytest.raises(ValueError, match="setting 'no_such_key': no config in .* has this key"):
        zoo.pack(tmp_path, tmp_path / "package.zip", _next_version(), "x", {"no_such_key": 1})
    assert not (tmp_path / "package.zip").exists()


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
    images = [sorted((shared_data / folder).iterdir())[i].resolve() for folder in REAL_IMAGES for i in (0, 1)]
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(server: subprocess.Popen, url: str, log: Path) -> None:
    import requests

    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"monailabel start_server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/info/", timeout=5).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1)
    pytest.fail(f"monailabel start_server did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_monailabel_server_answers_with_the_bundles_map_and_score(package, shared_data, tmp_path):
    """A real ``monailabel start_server`` with monailabel_app/ and the packed phantom bundle, on 127.0.0.1: a real
    OCT B-scan posted to /infer/<model> comes back as a float heat-map NIfTI at the image's size and a JSON score and
    decision, equal to the bundle's own inference (its map brought to the image's size, its scores.csv row)."""
    import nibabel as nib
    import requests
    from monai.bundle import run as run_workflow
    from monai.transforms import Resize
    from PIL import Image

    if not MONAILABEL_PYTHON:
        pytest.skip("set HDHKD_MONAILABEL_PYTHON to the python monailabel_app/make_env.sh prints (.ci/run does)")
    root, _, _ = package
    image = sorted((shared_data / REAL_IMAGES[1]).iterdir())[0]
    port, bin_dir = _free_port(), Path(MONAILABEL_PYTHON).parent
    url, log = f"http://127.0.0.1:{port}", tmp_path / "server.log"
    (tmp_path / "studies").mkdir()
    env = {
        **_only_the_package(tmp_path),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",  # monailabel's launcher runs the `python` on PATH
        **{f"MONAI_LABEL_TASKS_{task}": "false" for task in ("TRAIN", "STRATEGY", "SCORING", "BATCH_INFER")},
    }
    app = shutil.copytree(REPO / "monailabel_app", tmp_path / "app")  # the server writes its logs into the app
    command = [str(bin_dir / "monailabel"), "start_server", "--app", str(app),
               "--studies", str(tmp_path / "studies"), "--conf", "bundle", str(root),
               "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_server(server, url, log)
        answers = {}
        for output in ("json", "image"):
            with open(image, "rb") as f:
                response = requests.post(f"{url}/infer/{BUNDLE.name}", params={"output": output},
                                         files={"file": (image.name, f)}, data={"params": "{}"}, timeout=300)
            assert response.ok, f"{response.status_code} {response.text[:500]}\n{log.read_text()[-3000:]}"
            answers[output] = response
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the launcher script and the server it started
        server.wait(timeout=60)
    result = answers["json"].json()
    (tmp_path / "map.nii.gz").write_bytes(answers["image"].content)
    served = nib.load(tmp_path / "map.nii.gz")
    assert served.get_data_dtype() == np.float32

    (tmp_path / "images.txt").write_text(f"{image}\n")
    configs = root / "configs"
    run_workflow(config_file=str(configs / "inference.json"), meta_file=str(configs / "metadata.json"),
                 bundle_root=str(root), input=str(tmp_path / "images.txt"), output_dir=str(tmp_path / "out"))
    with open(tmp_path / "out" / "scores.csv") as f:
        (row,) = list(csv.DictReader(f))
    threshold = float(torch.load(root / "models" / "model.pt", weights_only=True)["model"]["model.threshold"])
    assert result["score"] == pytest.approx(float(row["score"]), rel=1e-4, abs=1e-6)
    assert result["threshold"] == pytest.approx(threshold) and result["decision"] == int(row["decision"])

    width, height = Image.open(image).size
    (bundle_map,) = (tmp_path / "out" / "maps").glob("*")  # both maps as nibabel reads them: [H, W]
    expected = nib.load(bundle_map).get_fdata(dtype=np.float32).squeeze()
    got = served.get_fdata(dtype=np.float32)
    assert got.shape == expected.shape == (height, width)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(got).max()))
