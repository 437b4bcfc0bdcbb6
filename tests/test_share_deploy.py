"""Sharing and serving a trained bundle: the Model Zoo package (``python -m hdhkd_monai.zoo pack``) checked the way the
Zoo's CI checks a bundle, in a fresh process with only the package importable, then run on real OCT B-scans; and a
real MONAI Label server (``monailabel_app/``) answering with the bundle's heat-map and score.

One module fixture trains the default configuration and the RD4AD baseline briefly on 64x64 phantom B-scans in one
interpreter; the default one is evaluated and packed (with the OCT data-set preset, and the large files' URLs on a
local HTTP server) and the package unzipped into an empty folder; the tests use that folder. The Model Zoo's own CI scripts (``../shared/zoo-ci``, unchanged) run on it where
``hdhkd_monai`` cannot be imported.
"""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from monai.apps.utils import HashCheckError
import torch

from conftest import SHARED_DATA
from hdhkd_monai import zoo
from hdhkd_monai.errors import BadInputError
from conftest import REPO_ROOT as REPO
from hdhkd_monai.handlers import load_network
from hdhkd_monai.handlers.checkpoint import stored_settings
from hdhkd_monai.launcher import BUNDLE, CONFIGS, read_config, run_bundle
from test_bundle_card import stated_score as stored_score_fields
from test_bundle_workflows import TINY, run_in_turn, write_phantom_data

pytest.importorskip("onnxruntime", reason="packing exports ONNX: pip install -e '.[onnx]'")

#: The settings the phantom model is trained with that the package's configs must carry (TINY's model keys).
SETTINGS = {k: TINY[k] for k in ("image_size", "num_modules", "decoder_channels")}
SCHEMA = SHARED_DATA.parent / "monai" / "meta_schema_20240725.json"
#: Real B-scans for inference: two normal, two abnormal, from the NEH set (PROVENANCE.md in ../shared/data).
REAL_IMAGES = ("neh-oct/test/NORMAL", "neh-oct/test/AMD")
#: The python of the MONAI Label environment, which monailabel_app/make_env.sh makes and prints (.ci/run sets it).
MONAILABEL_PYTHON = os.environ.get("HDHKD_MONAILABEL_PYTHON")
SERVER_START_S = 300
#: The Model Zoo's CI scripts, copied unchanged (README there).
ZOO_CI = SHARED_DATA.parent / "zoo-ci"
PRESET = REPO / "configs" / "oct2017.json"


def _next_version() -> str:
    major, minor, patch = json.loads((CONFIGS / "metadata.json").read_text())["version"].split(".")
    return f"{major}.{minor}.{int(patch) + 1}"


@pytest.fixture(scope="module")
def hosting(tmp_path_factory):
    """(a folder, its URL): ``python -m http.server`` on 127.0.0.1, standing in for where large files are uploaded."""
    folder, port = tmp_path_factory.mktemp("hosting"), _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                               str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    yield folder, url
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def training_runs(tmp_path_factory) -> dict[str, Path]:
    """The bundle_roots the packages are made from, trained in one interpreter (each python start imports torch and
    MONAI) on the same phantom B-scans: ``hdhkd``, the default configuration briefly trained and evaluated;
    ``rd4ad``, the RD4AD baseline briefly trained by the bundle (train.json + rd4ad.json)."""
    roots = {name: tmp_path_factory.mktemp(f"trained_{name}") for name in ("hdhkd", "rd4ad")}
    write_phantom_data(roots["hdhkd"], n_train=8, n_test_per_class=4)
    run_in_turn([("train",), ("train", "evaluate"), ("train", "rd4ad")], roots["hdhkd"],
                each=[{}, {}, {"bundle_root": roots["rd4ad"]}], max_iterations=2, batch_size=4, val_interval=2,
                n_heatmaps=1)  # fmt: skip
    return roots


@pytest.fixture(scope="module")
def trained(training_runs):
    """A training run's bundle_root: the default configuration, briefly trained and evaluated on phantom B-scans."""
    return training_runs["hdhkd"]


@pytest.fixture(scope="module")
def package(tmp_path_factory, trained, hosting):
    """(the unzipped package folder, the zip, the trained bundle_root); the large files uploaded to ``hosting``."""
    out = tmp_path_factory.mktemp("zoo")
    archive = zoo.pack(trained, out / "package.zip", _next_version(), "phantom test model", SETTINGS,
                       url_base=f"{hosting[1]}/v1", presets=[PRESET])
    unpacked = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(archive) as z:
        z.extractall(unpacked)
    for name in zoo.LARGE_FILES:  # the maintainer's upload
        (hosting[0] / "v1" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(unpacked / BUNDLE.name / name, hosting[0] / "v1" / name)
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
    assert f'url: "http://127.0.0.1:' in listed
    # the code the configs run travels in scripts/, the configs name it so, and the data-set preset is written in
    assert f"{BUNDLE.name}/scripts/networks/__init__.py" in names
    configs = [p for p in (root / "configs").glob("*.json") if p.name != "metadata.json"]
    assert all("hdhkd_monai" not in p.read_text() for p in configs)
    assert inference["dataset_dir"] == json.loads(PRESET.read_text())["dataset_dir"]
    assert "hdhkd-monai" not in meta["required_packages_version"] and "timm" in meta["required_packages_version"]
    stored = stored_settings(root / "models" / "model.pt")  # the score this model computes, as the card states it
    assert stored_score_fields(meta, stored["score_top_k"], stored["image_size"]) == []
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


def _without_the_library(tmp_path) -> dict:
    """An environment where ``import hdhkd_monai`` fails, as where hdhkd-monai is not installed: a stand-in package
    first on the Python path raises (the suite's own install would otherwise be found)."""
    stand_in = tmp_path / "not_installed" / "hdhkd_monai"
    stand_in.mkdir(parents=True, exist_ok=True)
    (stand_in / "__init__.py").write_text('raise ImportError("hdhkd_monai is not installed here")\n')
    return {**os.environ, "PYTHONPATH": str(stand_in.parent)}


def _zoo_checkout(root: Path, tmp_path: Path) -> Path:
    """The Model Zoo repository's layout around a copy of the package (ci/README.md in ../shared/zoo-ci)."""
    if not (ZOO_CI / "verify_bundle.py").is_file() or not SCHEMA.is_file():
        pytest.skip(f"the Model Zoo's CI scripts or schema not found at {ZOO_CI}, {SCHEMA}")
    checkout = tmp_path / "model-zoo"
    shutil.copytree(ZOO_CI, checkout / "ci")
    shutil.copytree(root, checkout / "models" / BUNDLE.name)
    (checkout / "models" / "model_info.json").write_text("{}\n")
    (checkout / "models" / BUNDLE.name / "eval").mkdir()
    shutil.copy2(SCHEMA, checkout / "models" / BUNDLE.name / "eval" / "schema.json")
    return checkout


def _run_alone(args: list[str], cwd: Path, tmp_path: Path) -> str:
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=_without_the_library(tmp_path), capture_output=True,
                          text=True)
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _real_images(shared_data: Path) -> list[Path]:
    """Two normal and two AMD B-scans of the NEH set (the first AMD one is what the MONAI Label test asks about)."""
    return [sorted((shared_data / folder).iterdir())[i].resolve() for folder in REAL_IMAGES for i in (0, 1)]


def _score_alone(root: Path, images: list[Path], out: Path) -> Path:
    """The package's own inference.json, where hdhkd_monai is not installed, on ``images``; its output folder
    (``scores.csv``, ``maps/``)."""
    (out / "images.txt").write_text("".join(f"{p}\n" for p in images))
    _run_alone(["-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--meta_file",
                "configs/metadata.json", "--input", str(out / "images.txt"), "--output_dir", str(out / "scored")],
               shutil.copytree(root, out / "bundle"), out)  # fmt: skip
    return out / "scored"


def _scores(folder: Path) -> dict[str, float]:
    with open(folder / "scores.csv") as f:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def package_scored(package, shared_data, tmp_path_factory) -> Path:
    """The HDHKD package's own inference on the real B-scans, once for the tests that compare with it."""
    return _score_alone(package[0], _real_images(shared_data), tmp_path_factory.mktemp("package_scored"))


@pytest.fixture(scope="module")
def baseline_package_scored(baseline_package, shared_data, tmp_path_factory) -> Path:
    """The same for the RD4AD package."""
    return _score_alone(baseline_package[0], _real_images(shared_data), tmp_path_factory.mktemp("baseline_scored"))


@pytest.mark.slow
def test_the_model_zoo_ci_passes_on_the_package_where_hdhkd_monai_is_not_installed(package, tmp_path):
    """The Zoo's scripts, unchanged: verify_bundle.py -m full (what -m min checks, download of the large files and
    metadata schema, then the network's input/output and the TorchScript export of model.pt with no key_in_ckpt), and
    get_bundle_requirements.py, whose every line pip downloads from the package index."""
    root, _, _ = package
    checkout = _zoo_checkout(root, tmp_path)
    full = _run_alone(["ci/verify_bundle.py", "-b", BUNDLE.name, "-m", "full"], checkout, tmp_path)
    assert "metadata format is verified correctly." in full and "data shape is verified correctly." in full
    assert "Provided TorchScript module is verified correctly." in full
    listed = _run_alone(["ci/get_bundle_requirements.py", "-b", BUNDLE.name], checkout, tmp_path).split()[-1]
    requirements = (checkout / listed).read_text().split()
    assert "timm==" + json.loads((root / "configs" / "metadata.json").read_text())["required_packages_version"]["timm"] \
        in requirements and not any(r.startswith("hdhkd") for r in requirements)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp_path / "dl"),
                           "-r", str(checkout / listed)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "dl").iterdir())) == len(requirements)


@pytest.mark.slow
def test_the_package_alone_scores_real_bscans_as_the_library_does(package, package_scored, shared_data, tmp_path):
    """``python -m monai.bundle run`` with the package's inference.json, where hdhkd-monai is not installed, on real
    NEH B-scans: the same scores (1e-5) as the library's inference on the training run it was packed from."""
    _, _, trained = package
    images = _real_images(shared_data)
    (tmp_path / "images.txt").write_text("\n".join(str(p) for p in images) + "\n")
    read_config(["inference"], bundle_root=str(trained), input=str(tmp_path / "images.txt"),
                output_dir=str(tmp_path / "library")).get_parsed_content("evaluator").run()  # fmt: skip
    scores = {"package": _scores(package_scored), "library": _scores(tmp_path / "library")}
    assert sorted(scores["package"]) == sorted(str(p) for p in images)
    assert scores["package"] == pytest.approx(scores["library"], abs=1e-5)


@pytest.fixture(scope="module")
def baseline_package(tmp_path_factory, training_runs):
    """(the unzipped package, the trained bundle_root) of a baseline, RD4AD, trained briefly by the bundle
    (train.json + rd4ad.json) on phantom B-scans and packed with its detector config as ``--config``."""
    trained = training_runs["rd4ad"]
    out = tmp_path_factory.mktemp("zoo_rd4ad")
    archive = zoo.pack(trained, out / "package.zip", _next_version(), "RD4AD phantom test model",
                       {"image_size": TINY["image_size"]}, presets=[PRESET, CONFIGS / "rd4ad.json"])  # fmt: skip
    with zipfile.ZipFile(archive) as z:
        z.extractall(out)
    return out / BUNDLE.name, trained


@pytest.mark.slow
def test_a_baseline_package_passes_the_model_zoo_ci_and_scores_as_the_library(baseline_package, baseline_package_scored,
                                                                              shared_data, tmp_path):
    """A baseline gets what HDHKD gets: its package passes the Zoo's ``verify_bundle.py -m full`` (network in/out
    and TorchScript export of model.pt, scripted) where hdhkd_monai is not installed; the package's model.onnx
    (dynamic batch) gives the maps (1e-4) and its inference.json alone the scores (1e-5) of the library's
    inference.json + rd4ad.json on the trained run."""
    import onnxruntime as ort

    root, trained = baseline_package
    library = read_config(["inference", "rd4ad"], bundle_root=str(trained)).get_parsed_content("network_def")
    load_network(library, trained / "models" / "model.pt", key="model").eval()
    session = ort.InferenceSession(str(root / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.rand(batch, 3, TINY["image_size"], TINY["image_size"])
        with torch.no_grad():
            expected = library(x)
        torch.testing.assert_close(torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), expected,
                                   rtol=1e-4, atol=1e-4)  # fmt: skip
    checkout = _zoo_checkout(root, tmp_path)
    full = _run_alone(["ci/verify_bundle.py", "-b", BUNDLE.name, "-m", "full"], checkout, tmp_path)
    assert "data shape is verified correctly." in full and "Provided TorchScript module is verified correctly." in full
    images = tmp_path / "images.txt"
    images.write_text("".join(f"{p}\n" for p in _real_images(shared_data)))
    read_config(["inference", "rd4ad"], bundle_root=str(trained), input=str(images),
                output_dir=str(tmp_path / "library")).get_parsed_content("evaluator").run()  # fmt: skip
    scores = {"package": _scores(baseline_package_scored), "library": _scores(tmp_path / "library")}
    assert len(scores["package"]) == len(images.read_text().split())
    assert scores["package"] == pytest.approx(scores["library"], abs=1e-5)


def test_large_files_download_from_the_url_base_and_are_hash_checked(package, tmp_path):
    """The Zoo's ``utils.download_large_files`` on the package's large_files.yml fetches every model from the local
    server and checks its sha256; a listed hash that does not match stops it."""
    import importlib.util

    root, _, _ = package
    if not (ZOO_CI / "utils.py").is_file():
        pytest.skip(f"the Model Zoo's CI scripts not found at {ZOO_CI}")
    spec = importlib.util.spec_from_file_location("zoo_ci_utils", ZOO_CI / "utils.py")
    zoo_ci = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo_ci)
    bundle = shutil.copytree(root, tmp_path / "bundle", ignore=shutil.ignore_patterns("*.pt", "*.ts", "*.onnx"))
    zoo_ci.download_large_files(bundle_path=str(bundle), large_file_name="large_files.yml")
    for name in zoo.LARGE_FILES:
        assert (bundle / name).read_bytes() == (root / name).read_bytes(), name
    listed = (bundle / "large_files.yml").read_text()
    (bundle / "large_files.yml").write_text(listed.replace(zoo._sha256(root / "models" / "model.ts"), "0" * 64))
    (bundle / "models" / "model.ts").unlink()
    with pytest.raises(HashCheckError, match="sha256 hash check of downloaded file failed"):
        zoo_ci.download_large_files(bundle_path=str(bundle), large_file_name="large_files.yml")


def test_pack_refuses_a_version_that_does_not_go_up_and_says_why_it_cannot_be_submitted(trained, tmp_path, capsys):
    current = json.loads((CONFIGS / "metadata.json").read_text())["version"]
    for version in (current, "0.0.1"):
        with pytest.raises(ValueError, match=rf"version {version} is not above the bundle's {current}"):
            zoo.pack(trained, tmp_path / "package.zip", version, "x")
    (note, *_) = capsys.readouterr().err.strip().splitlines()
    assert "cannot be submitted to the Model Zoo as is: its large_files.yml has no URLs" in note
    assert "--url-base" in note and not (tmp_path / "package.zip").exists()


def test_pack_refuses_configs_whose_preprocessing_is_not_the_models(trained, tmp_path):
    """A model trained on OCT B-scans packed with the brain MRI preset: stopped before any export."""
    with pytest.raises(BadInputError, match=r"model\.pt: trained with other preprocessing .* --config configs/"):
        zoo.pack(trained, tmp_path / "package.zip", _next_version(), "x", SETTINGS, url_base="http://127.0.0.1/x",
                 presets=[REPO / "configs" / "br35h.json"])
    assert not (tmp_path / "package.zip").exists()


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


#: Asked through MONAI Label's own client, in the MONAI Label environment: the datastore, an inference by image id,
#: an unknown image id, an unknown model and an unreadable upload. Prints the answers as JSON.
CLIENT_SCRIPT = """
import json, sys
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException
url, model, image_id, unreadable, out = sys.argv[1:]
client = MONAILabelClient(url, tmpdir=out)
answers = {"datastore": sorted(client.datastore()["objects"])}
answers["map"], answers["result"] = client.infer(model, image_id, {})
for name, args in (("unknown_image", (model, "no_such_image", {})), ("unknown_model", ("no_such_model", image_id, {})),
                   ("unreadable", (model, "", {}, None, unreadable))):
    try:
        client.infer(*args)
        answers[name] = "answered 200"
    except MONAILabelClientException as error:
        answers[name] = error.msg
print(json.dumps(answers))
"""


def _studies(folder: Path, image: Path) -> dict[str, Path]:
    """The studies folder: the B-scan in each format the app lists (the .dcm only to be listed); {image id: file}."""
    import nibabel as nib
    from PIL import Image

    folder.mkdir()
    grey = Image.open(image).convert("L")
    files = {f"scan_{ext}": folder / f"scan_{ext}.{ext}" for ext in ("jpg", "png", "tif")}
    for path in files.values():
        grey.save(path)
    files["scan_jpeg"] = shutil.copy2(image, folder / "scan_jpeg.jpeg")
    files["scan_nii"] = folder / "scan_nii.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(grey, dtype=np.float32).T, np.eye(4)), files["scan_nii"])
    files["scan_dcm"] = shutil.copy2(image, folder / "scan_dcm.dcm")
    return files


@pytest.mark.slow
@pytest.mark.parametrize("packed", ["package", "baseline_package"])
def test_monailabel_client_gets_the_bundles_map_and_score_and_the_reason_of_a_bad_request(packed, request,
                                                                                          shared_data, tmp_path):
    """A real ``monailabel start_server`` with monailabel_app/ serving a packed phantom model (HDHKD, and the
    RD4AD baseline) where hdhkd-monai is not installed, asked through ``MONAILabelClient``: the studies folder lists
    every image format; a real OCT B-scan comes back as a float heat-map on the image's grid as ITK reads it (size,
    spacing, direction), with the score and decision of the package's own inference; an unknown image id, an
    unknown model and an unreadable upload are answered 404, 404 and 422 with the reason."""
    import itk
    import nibabel as nib

    if not MONAILABEL_PYTHON:
        pytest.skip("set HDHKD_MONAILABEL_PYTHON to the python monailabel_app/make_env.sh prints (.ci/run does)")
    root = request.getfixturevalue(packed)[0]
    image = sorted((shared_data / REAL_IMAGES[1]).iterdir())[0]
    studies = _studies(tmp_path / "studies", image)
    (tmp_path / "unreadable.jpeg").write_bytes(image.read_bytes()[:200])  # a truncated upload
    port, bin_dir = _free_port(), Path(MONAILABEL_PYTHON).parent
    url, log = f"http://127.0.0.1:{port}", tmp_path / "server.log"
    env = {
        **_without_the_library(tmp_path),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",  # monailabel's launcher runs the `python` on PATH
        **{f"MONAI_LABEL_TASKS_{task}": "false" for task in ("TRAIN", "STRATEGY", "SCORING", "BATCH_INFER")},
    }
    app = shutil.copytree(REPO / "monailabel_app", tmp_path / "app")  # the server writes its logs into the app
    command = [str(bin_dir / "monailabel"), "start_server", "--app", str(app), "--studies", str(tmp_path / "studies"),
               "--conf", "bundle", str(root), "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_server(server, url, log)
        (tmp_path / "client").mkdir()
        asked = subprocess.run([MONAILABEL_PYTHON, "-c", CLIENT_SCRIPT, url, BUNDLE.name, "scan_jpeg",
                                str(tmp_path / "unreadable.jpeg"), str(tmp_path / "client")],
                               env=env, capture_output=True, text=True, timeout=600)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the launcher script and the server it started
        server.wait(timeout=60)
    assert asked.returncode == 0, f"{asked.stderr[-3000:]}\n{log.read_text()[-3000:]}"
    answers = json.loads(asked.stdout.strip().splitlines()[-1])
    print(json.dumps(answers, indent=1))  # the report quotes them (pytest -s)
    assert answers["datastore"] == sorted(studies)
    assert answers["unknown_image"].startswith("Status: 404;") and "no image 'no_such_image'" in answers["unknown_image"]
    assert answers["unknown_model"].startswith("Status: 404;") and "no model 'no_such_model'" in answers["unknown_model"]
    assert answers["unreadable"].startswith("Status: 422;") and "cannot read the image" in answers["unreadable"]

    served, source = itk.imread(answers["map"]), itk.imread(str(image))
    assert itk.size(served) == itk.size(source) and itk.spacing(served) == itk.spacing(source)
    assert np.array_equal(itk.array_from_matrix(served.GetDirection()), itk.array_from_matrix(source.GetDirection()))
    assert itk.array_view_from_image(served).dtype == np.float32

    scored = request.getfixturevalue(f"{packed}_scored")  # the package's own inference on the same B-scan
    with open(scored / "scores.csv") as f:
        (row,) = [r for r in csv.DictReader(f) if r["path"] == str(image.resolve())]
    threshold = float(torch.load(root / "models" / "model.pt", weights_only=True)["model.threshold"])
    result = answers["result"]
    assert result["score"] == pytest.approx(float(row["score"]), rel=1e-4, abs=1e-6)
    assert result["threshold"] == pytest.approx(threshold) and result["decision"] == int(row["decision"])
    (bundle_map,) = (scored / "maps").rglob(f"{image.stem}_anomaly_map.*")  # [rows, columns], as nibabel reads it
    expected = nib.load(bundle_map).get_fdata(dtype=np.float32).squeeze()
    got = itk.array_from_image(served)  # [rows, columns] too: ITK's arrays are indexed (y, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(got).max()))
