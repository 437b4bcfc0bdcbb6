"""Weights from files: reading a state dict and loading it into a module, with errors that name the file.

One reader and one loader serve the student's optional backbone weights, the distillation target's pretrained
weights and the workflows' checkpoints, so all of them accept the same files and report a misfit the same way.

May import ``hdhkd_monai.errors`` only.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from torch import nn

from hdhkd_monai.errors import CheckpointMismatchError, SettingsMismatchError

__all__ = [
    "check_settings",
    "flat_settings",
    "stored_flat_settings",
    "later_buffers",
    "load_weights",
    "read_state_dict",
    "torch_file",
]

_SHOWN_KEYS = 5  # how many offending keys an error lists



def flat_settings(settings: Mapping, prefix: str = "") -> dict:
    """``{"a": {"b": 1}} -> {"a.b": 1}``, tuples as lists (as a checkpoint stores them)."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def stored_flat_settings(stored: Mapping, later: Mapping = {}) -> dict:
    """:func:`flat_settings` of a stored model's settings, with the value each setting added ``later`` had for models
    made before it, so an older checkpoint keeps loading as what it is.

    Args:
        later: ``{key: (value, condition)}``: a stored model without ``key`` (nor ``key.*``) whose settings match
            ``condition`` (``{key: value}``, possibly empty) was made with ``value``.
    """
    flat = flat_settings(stored)
    for key, (value, condition) in later.items():
        made_before = not any(k == key or k.startswith(key + ".") for k in flat)
        if made_before and all(flat.get(k) == v for k, v in condition.items()):
            flat[key] = value
    return flat


def check_settings(stored: Mapping, configured: Mapping, what: str = "the checkpoint") -> None:
    """Raise :class:`SettingsMismatchError` listing every key whose value differs between the settings ``stored``
    with ``what`` and the ``configured`` ones, with both values; nested dicts are compared key by key."""
    stored, configured = flat_settings(stored), flat_settings(configured)
    differ = [
        f"{key}: made with {stored.get(key, '(absent)')!r}, now {configured.get(key, '(absent)')!r}"
        for key in sorted(set(stored) | set(configured))
        if stored.get(key, "(absent)") != configured.get(key, "(absent)")
    ]
    if differ:
        raise SettingsMismatchError(
            f"settings differ from those {what} was made with: {'; '.join(differ)}. Use the configuration it was "
            "trained with (same config files and overrides), or train a new model"
        )


def torch_file(path: str | Path, map_location: str | torch.device = "cpu"):
    """The object ``torch.save`` wrote to ``path`` (tensors and plain containers only: ``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, not a torch file, or pickled objects beyond tensors
        raise CheckpointMismatchError(f"{path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {e}); "
                                      "it is damaged or not a checkpoint: copy it again, or train again") from e


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, saved plainly or under ``"state_dict"``/``"model"``."""
    state = torch_file(path)
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(
            f"{path} does not hold a state dict of tensors (plain, or under 'state_dict' or 'model')"
        )
    return dict(state)


def _fits(stored: torch.Tensor, own: torch.Tensor) -> bool:
    """Same shape; or ``own`` is an empty bank (0 rows) that fitting fills, and ``stored`` has its row shape: a
    memory bank's size depends on the training data (its module resizes it when the state loads)."""
    return stored.shape == own.shape or (own.ndim > 0 and own.shape[0] == 0 and stored.shape[1:] == own.shape[1:])


def later_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state-dict keys of the buffers that ``module``'s submodules gained after models of them were saved, with
    the value those models had: each submodule's ``later_buffers`` (``{name: value}``, like ``later_settings``)."""
    return {
        f"{prefix}.{name}" if prefix else name: torch.as_tensor(value)
        for prefix, sub in module.named_modules()
        for name, value in getattr(sub, "later_buffers", {}).items()
    }


def load_weights(
    module: nn.Module, state: Mapping[str, torch.Tensor], source: str, known: Collection[str] | None = None
) -> nn.Module:
    """Load ``state`` into ``module`` after checking that it fits; returns ``module``.

    A ``module.`` prefix on every key (a DistributedDataParallel's state dict) is dropped. Every tensor of
    ``module`` must be in ``state`` with the same shape (an empty bank that fitting fills takes the stored rows).
    A buffer a submodule gained after files of it were written (its ``later_buffers``) takes the value those files'
    models had when the file lacks it. Keys of ``state`` that ``module`` lacks are an error unless they are in
    ``known`` (e.g. the head of a whole classifier whose trunk ``module`` is). The :class:`CheckpointMismatchError`
    names ``source`` and lists missing, unexpected and mis-shaped keys.
    """
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {**later_buffers(module), **state}
    own = module.state_dict()
    expected = set(own) | set(known or ())
    problems = {
        "missing": [k for k in own if k not in state],
        "unexpected": [k for k in state if k not in expected],
        "shape mismatch (file != model)": [
            f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and isinstance(v, torch.Tensor) and not _fits(state[k], v)  # not extra state
        ],
    }
    listed = [
        f"{label} ({len(keys)}): {', '.join(keys[:_SHOWN_KEYS])}{', ...' if len(keys) > _SHOWN_KEYS else ''}"
        for label, keys in problems.items()
        if keys
    ]
    if listed:
        raise CheckpointMismatchError(f"{source}: does not fit {type(module).__name__}: " + "; ".join(listed))
    try:
        module.load_state_dict({k: state[k] for k in own})
    except SettingsMismatchError as e:  # raised by a module's set_extra_state (HDHKD)
        raise SettingsMismatchError(f"{source}: {e}") from None
    return module
