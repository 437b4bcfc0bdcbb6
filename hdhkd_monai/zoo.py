"""Pack a trained bundle for the MONAI Model Zoo, and stamp an exported ONNX model with the calibration.

``python -m hdhkd_monai.zoo pack TRAINED_ROOT OUT.zip --version 0.4.1 --changelog "..." [--config PRESET.json]
[--set key=value] [--url-base URL]`` writes the Zoo layout::

    hdhkd_oct_anomaly/
        configs/        the bundle's configs, with the data-set preset (--config) and the settings (--set) the model
                        was trained with written in; components named ``scripts.*``
        scripts/        the library modules those configs use, copied from this hdhkd_monai (bundle_scripts.py)
        models/         model.pt (the trained, calibrated network's state dict, loadable with no key_in_ckpt),
                        model.ts (ckpt_export), model.onnx (onnx_export)
        docs/           README.md (data, training recipe, measured metrics; plus this model's own numbers), the
                        data licence and the Zoo schema copy (the README's verify_metadata command reads it)
        LICENSE
        large_files.yml the models with their sha256, and their URLs under --url-base (where they are uploaded)

The package runs where hdhkd-monai is not installed and passes the Zoo's CI (docs/publishing.md). ``pack`` refuses a
version that is not above the bundle's, and a package whose preprocessing differs from the model's (a missing
preset).

``python -m hdhkd_monai.zoo stamp-onnx models/model.onnx models/model.pt`` does the last step of the packing alone:
it writes the checkpoint's threshold and quantiles into an ONNX model ``python -m monai.bundle onnx_export`` made.

``TRAINED_ROOT`` is the ``bundle_root`` training wrote into: ``models/model.pt`` and, when the evaluate workflow
ran, ``eval/metrics.json``. The exports run MONAI's own ``ckpt_export`` and ``onnx_export`` with the arguments of the
command lines in the bundle's docs (``configs/onnx_export.json`` gives ONNX its dynamic batch axis).

May import every layer of the library (it is the top one); never ``tools``, ``experiments`` or ``bench``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ckpt_export, onnx_export

from hdhkd_monai.bundle_scripts import write_scripts
from hdhkd_monai.data.transforms import preprocessing_fingerprint
from hdhkd_monai.errors import BadInputError, run_cli
from hdhkd_monai.handlers.checkpoint import MODEL_CKPT, checkpoint_entries, flat_model_checkpoint, no_trained_model
from hdhkd_monai.launcher import BUNDLE, CONFIGS, read_config

__all__ = ["LARGE_FILES", "pack", "stamp_onnx_calibration"]

#: The files large_files.yml lists (the Model Zoo keeps them outside its git repository).
LARGE_FILES = ("models/model.pt", "models/model.ts", "models/model.onnx")


def stamp_onnx_calibration(onnx_path: str | Path, ckpt_file: str | Path) -> dict[str, str]:
    """Write the checkpoint's calibration into the ONNX model's metadata: ``map_quantiles`` (already applied inside
    the graph, kept for reference) and ``threshold`` (the image decision: abnormal when the score reaches it), which
    the graph cannot carry since the network returns only the map. Returns the entries written."""
    import onnx

    state = checkpoint_entries(ckpt_file)["model"]
    entries = {
        "threshold": repr(float(state["model.threshold"])),
        "map_quantiles": json.dumps([float(q) for q in state["model.map_quantiles"]]),
    }
    model = onnx.load(str(onnx_path))
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(onnx_path))
    return entries


def _apply_settings(configs: Path, settings: Mapping[str, Any]) -> None:
    """Write training-time settings into the package's configs: ``image_size`` into the metadata's input and output
    shapes (where inference.json reads it), any other key into every config that defines it at the top level."""
    meta_file = configs / "metadata.json"
    meta = json.loads(meta_file.read_text())
    files = {p: json.loads(p.read_text()) for p in sorted(configs.glob("*.json")) if p.name != "metadata.json"}
    for key, value in settings.items():
        if key == "image_size":
            for part in ("inputs", "outputs"):
                for tensor in meta["network_data_format"][part].values():
                    tensor["spatial_shape"] = [int(value)] * len(tensor["spatial_shape"])
            continue
        holders = [config for config in files.values() if key in config]
        if not holders:
            raise ValueError(f"setting {key!r}: no config in {configs} has this key")
        for config in holders:
            config[key] = value
    meta_file.write_text(json.dumps(meta, indent=4) + "\n")
    for path, config in files.items():
        path.write_text(json.dumps(config, indent=4) + "\n")


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise ValueError(f"version {version!r}: expected numbers separated by dots, e.g. 0.4.1") from None


def _set_version(meta_file: Path, version: str, changelog: str) -> None:
    meta = json.loads(meta_file.read_text())
    if _version_key(version) <= _version_key(meta["version"]):
        raise ValueError(f"version {version} is not above the bundle's {meta['version']} ({CONFIGS / 'metadata.json'});"
                         " give a higher --version")
    meta["version"] = version
    meta["changelog"] = {version: changelog, **meta["changelog"]}
    meta_file.write_text(json.dumps(meta, indent=4) + "\n")


def _set_requirements(meta_file: Path, requirements: Mapping[str, str]) -> None:
    """The packages the package's ``scripts/`` import (``requirements``) instead of hdhkd-monai, which the package
    does not need, beside those the metadata declares (the pip-shipped teacher weights, TensorBoard)."""
    meta = json.loads(meta_file.read_text())
    declared = {k: v for k, v in meta["required_packages_version"].items() if k != "hdhkd-monai"}
    meta["required_packages_version"] = dict(sorted({**declared, **requirements}.items()))
    meta_file.write_text(json.dumps(meta, indent=4) + "\n")


def _check_preprocessing(root: Path, ckpt_entries: Mapping[str, Any], ckpt: Path) -> None:
    """The package's inference preprocessing must be the one the model was trained with (its fingerprint)."""
    configs = root / "configs"
    parser = read_config([configs / "inference.json"], bundle_root=str(root))
    parser.read_meta(str(configs / "metadata.json"))
    packed = preprocessing_fingerprint(parser.get_parsed_content("preprocessing"))
    if "preprocessing" in ckpt_entries and packed != ckpt_entries["preprocessing"]:
        raise BadInputError(ckpt, f"trained with other preprocessing ({ckpt_entries['preprocessing']}) than the "
                                  f"package's configs ({packed}); give the data-set preset it was trained with, "
                                  "--config configs/<preset>.json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: Said by :func:`pack` without ``url_base``.
NO_URLS = ("note: {zip} cannot be submitted to the Model Zoo as is: its large_files.yml has no URLs, and the Zoo "
           "keeps models/ outside git and downloads them from there; upload {files} and pack again with --url-base")


def _large_files(root: Path, url_base: str) -> str:
    lines = ["large_files:"]
    for name in LARGE_FILES:
        lines += [
            f'  - path: "{name}"',
            f'    url: "{url_base.rstrip("/") + "/" + name if url_base else ""}"',
            f'    hash_val: "{_sha256(root / name)}"',
            '    hash_type: "sha256"',
        ]
    return "\n".join(lines) + "\n"


def _model_section(root: Path, trained_root: Path, settings: Mapping[str, Any], calibration: Mapping[str, str]) -> str:
    """The README section on this package's model: settings, calibration, and its evaluation report if one exists."""
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    lines = [
        "",
        f"## This package: version {meta['version']}",
        "",
        meta["changelog"][meta["version"]],
        "",
        f"- Settings written into the configs: {json.dumps(dict(settings)) if settings else 'none (the defaults)'}.",
        f"- Calibration: map quantiles {calibration['map_quantiles']}, image threshold {calibration['threshold']} "
        "(also in the metadata of `models/model.onnx`).",
        f"- `models/model.pt` sha256 `{_sha256(root / 'models' / MODEL_CKPT)}`.",
    ]
    report = trained_root / "eval" / "metrics.json"
    if not report.is_file():
        lines += ["", f"No evaluation report: `{report}` did not exist when this package was made."]
        return "\n".join(lines) + "\n"
    image = json.loads(report.read_text())["image"]
    shown = [k for k in ("n_normal", "n_abnormal", "auroc", "auprc", "f1", "acc", "sen", "spe") if k in image]
    lines += [
        "",
        "Measured by the evaluate workflow on the trained bundle's test split (`eval/metrics.json`):",
        "",
        "| " + " | ".join(shown) + " |",
        "|" + "---|" * len(shown),
        "| " + " | ".join(f"{image[k]:.4f}" if isinstance(image[k], float) else str(image[k]) for k in shown) + " |",
    ]
    return "\n".join(lines) + "\n"


def pack(
    trained_root: str | Path,
    out_zip: str | Path,
    version: str,
    changelog: str,
    settings: Mapping[str, Any] | None = None,
    url_base: str = "",
    presets: Sequence[str | Path] = (),
) -> Path:
    """Pack the model trained under ``trained_root`` into the Zoo zip ``out_zip`` (one top folder, the bundle's name).

    Args:
        trained_root: the training run's ``bundle_root``, holding ``models/model.pt`` (and ``eval/metrics.json``).
        out_zip: the zip to write.
        version: the package's version, above the bundle's, new in the metadata's changelog.
        changelog: its changelog entry.
        settings: the ``--key value`` overrides the model was trained with that shape the data or the network
            (e.g. ``image_size``, ``num_modules``), written into the package's configs.
        url_base: where the large files will be uploaded; their URLs in large_files.yml (empty without it, and a
            note on stderr says first that the package cannot be submitted as is).
        presets: the config files given after the workflow's when training (a data-set preset such as
            ``configs/br35h.json``), written into the package's configs before ``settings``.
    """
    trained_root, out_zip, settings = Path(trained_root), Path(out_zip), dict(settings or {})
    ckpt = trained_root / "models" / MODEL_CKPT
    if not ckpt.is_file():
        raise no_trained_model(ckpt)
    if not url_base:
        print(NO_URLS.format(zip=out_zip, files=", ".join(LARGE_FILES)), file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / BUNDLE.name
        configs = root / "configs"
        shutil.copytree(CONFIGS, configs)
        shutil.copytree(BUNDLE / "docs", root / "docs")
        shutil.copy2(BUNDLE / "LICENSE", root)
        for preset in presets:
            _apply_settings(configs, json.loads(Path(preset).read_text()))
        _apply_settings(configs, settings)
        _set_version(configs / "metadata.json", version, changelog)
        entries = checkpoint_entries(ckpt)
        (root / "models").mkdir()
        torch.save(flat_model_checkpoint(entries), root / "models" / MODEL_CKPT)
        _check_preprocessing(root, entries, ckpt)
        calibration = _export(root, ckpt)
        _set_requirements(configs / "metadata.json", write_scripts(root))
        readme = root / "docs" / "README.md"
        readme.write_text(readme.read_text() + _model_section(root, trained_root, settings, calibration))
        (root / "large_files.yml").write_text(_large_files(root, url_base))
        _zip(root, out_zip)
    return out_zip


def _export(root: Path, ckpt: Path) -> dict[str, str]:
    """``models/model.ts`` and ``models/model.onnx`` from the package's flat ``model.pt``, as the Zoo's CI exports
    it (no ``key_in_ckpt``); returns the calibration stamped into the ONNX model."""
    configs = root / "configs"
    common = dict(
        net_id="network_def", ckpt_file=str(root / "models" / MODEL_CKPT), meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"), bundle_root=str(root),
    )  # fmt: skip
    ckpt_export(filepath=str(root / "models" / "model.ts"), **common)
    onnx_export(filepath=str(root / "models" / "model.onnx"), args_file=str(configs / "onnx_export.json"), **common)
    return stamp_onnx_calibration(root / "models" / "model.onnx", ckpt)


def _zip(root: Path, out_zip: Path) -> None:
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out_zip, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(root.parent))


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hdhkd_monai.zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="pack a trained bundle into a Model Zoo zip")
    p.add_argument("trained_root", help="bundle_root of the training run (holds models/model.pt)")
    p.add_argument("out_zip")
    p.add_argument("--version", required=True, help="new version for metadata.json")
    p.add_argument("--changelog", required=True, help="its changelog entry")
    p.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="a training-time override to write into the configs (JSON value), e.g. image_size=256")
    p.add_argument("--config", action="append", default=[], metavar="PRESET.json", dest="presets",
                   help="a config file given after the workflow's in training (the data-set preset), in order")
    p.add_argument("--url-base", default="", help="URL folder the large files will be uploaded to")
    s = commands.add_parser("stamp-onnx", help="write a checkpoint's threshold and quantiles into an ONNX model")
    s.add_argument("onnx_file")
    s.add_argument("ckpt_file", help="the checkpoint the ONNX model was exported from (models/model.pt)")
    args = parser.parse_args(argv)
    if args.command == "stamp-onnx":
        print(f"wrote {stamp_onnx_calibration(args.onnx_file, args.ckpt_file)} into {args.onnx_file}")
        return
    out = pack(args.trained_root, args.out_zip, args.version, args.changelog, dict(args.set), args.url_base,
               args.presets)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
