"""Checkpoints: atomic writes, loading with errors that name the file, and resuming an iteration-based trainer.

A checkpoint file is a dict ``{name: obj.state_dict()}`` (``torch.save``), plus ``{"iteration": n}`` under the
trainer's name when it is saved for resuming. The bundle writes three (in ``ckpt_dir``):

- ``teacher.pt``: ``{"teacher": PDN}``, the distilled teacher with its output statistics;
- :data:`MODEL_CKPT`: ``{"model": AnomalyMapNet, "preprocessing": fingerprint}``, the best student by validation
  AUROC (the latest one without abnormal validation images), calibrated (``map_quantiles``/``threshold``/
  ``normal_score_quantiles`` buffers) and carrying the settings it was made with (``HDHKD``'s extra state; read back
  by :func:`stored_settings`); ``network_def`` of ``inference.json`` loads it as is;
  a Model Zoo package holds it flat (:func:`flat_model_checkpoint`), as the Zoo's ``ckpt_export`` loads it;
- ``last.pt``: ``{"model", "optimizer", "lr_scheduler", "best_checkpoint", "trainer"}``, for resuming; ``"trainer"``
  holds the iteration and the random state (:func:`engine_position`).

Evaluation and inference load :data:`MODEL_CKPT` with MONAI's ``CheckpointLoader`` (:class:`NamedCheckpointLoader` only
adds the file to its errors); training saves and resumes with the two handlers here, whose docstrings say what
MONAI's own could not do.

May import ``engines``, ``handlers``, ``baselines``, ``networks``, ``data`` and the layers below; never the
launcher, ``zoo`` or ``demo``.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader
from torch import nn

from hdhkd_monai.errors import BadInputError, CheckpointMismatchError, SettingsMismatchError
from hdhkd_monai.networks import HDHKD, teacher_from_settings
from hdhkd_monai.pretrained import FromCheckpoint, checkpoint_architecture
from hdhkd_monai.state_dict import check_settings, load_weights, stored_flat_settings, torch_file

__all__ = [
    "AtomicCheckpointSaver",
    "CheckpointMismatchError",
    "MODEL_CKPT",
    "NamedCheckpointLoader",
    "ResumeFromCheckpoint",
    "checkpoint_entries",
    "flat_model_checkpoint",
    "load_checkpoint",
    "load_network",
    "save_checkpoint",
    "stored_settings",
]

logger = logging.getLogger(__name__)
#: File name of the trained, calibrated model in ``ckpt_dir``: what training writes and evaluation/inference load.
MODEL_CKPT = "model.pt"


def save_checkpoint(objects: Mapping[str, Any], path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``{name: obj.state_dict()}`` (and ``extra`` entries as they are) to ``path`` atomically.

    The data goes to a temporary file in the same folder first and then replaces ``path`` with ``os.replace``, so an
    interrupted write never leaves a truncated checkpoint behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {name: obj.state_dict() for name, obj in objects.items()}
    checkpoint.update(extra or {})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it the permissions of a normal file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: str | Path, objects: Mapping[str, Any], map_location: str | torch.device = "cpu") -> dict:
    """Load the entries of the checkpoint at ``path`` into ``objects`` (``{name: obj with load_state_dict}``).

    Returns the whole checkpoint dict. Raises ``FileNotFoundError`` for a missing file and
    :class:`CheckpointMismatchError` (naming the file) for an unreadable file, a missing entry, or a network entry
    whose parameter names or shapes differ from the configured network (a checkpoint of another architecture).
    """
    checkpoint = torch_file(path, map_location)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"{path}: expected a dict of state dicts, found a {type(checkpoint).__name__}")
    absent = [name for name in objects if name not in checkpoint]
    if absent:
        raise CheckpointMismatchError(
            f"{path}: has no entry {absent} (it holds {sorted(checkpoint)}); is it a checkpoint of another workflow?"
        )
    for name, obj in objects.items():
        if isinstance(obj, nn.Module):
            load_weights(obj, checkpoint[name], f"{path}: entry {name!r} (another architecture or configuration?)")
            continue
        try:
            obj.load_state_dict(checkpoint[name])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointMismatchError(f"{path}: entry {name!r} cannot be loaded: {e}") from e
    return checkpoint


def load_network(network: nn.Module, path: str | Path, key: str) -> nn.Module:
    """``network`` with the weights and buffers of entry ``key`` of the checkpoint at ``path`` (for configs)."""
    load_checkpoint(path, {key: network})
    return network


#: Where a flat :data:`MODEL_CKPT` keeps its entries beside the network's (inside the network's extra state, which
#: ``load_state_dict`` hands to ``HDHKD.set_extra_state`` and which keeps only its own keys).
_EXTRA_STATE, _OTHER_ENTRIES = "model._extra_state", "checkpoint_entries"


def flat_model_checkpoint(checkpoint: Mapping[str, Any]) -> dict:
    """A :data:`MODEL_CKPT` (``{"model": state, "preprocessing": ...}``) as the network's state dict alone, which
    loads with no ``key_in_ckpt`` (the Model Zoo's ``ckpt_export`` passes none); the weights, calibration buffers and
    settings are the network's own, the other entries ride in its extra state (:func:`checkpoint_entries` reads both
    forms)."""
    state = dict(checkpoint["model"])
    others = {name: value for name, value in checkpoint.items() if name != "model"}
    state[_EXTRA_STATE] = {**state[_EXTRA_STATE], _OTHER_ENTRIES: others}
    return state


def checkpoint_entries(path: str | Path) -> dict:
    """The :data:`MODEL_CKPT` at ``path`` as ``{"model": state, "preprocessing": ...}``, whether it is saved so or
    flat (:func:`flat_model_checkpoint`)."""
    checkpoint = torch_file(path)
    if not isinstance(checkpoint, Mapping) or "model" in checkpoint:
        return checkpoint
    extra = checkpoint.get(_EXTRA_STATE)
    return {"model": checkpoint, **(extra.get(_OTHER_ENTRIES, {}) if isinstance(extra, Mapping) else {})}


def no_trained_model(path: str | Path) -> BadInputError:
    """The one error for a trained model that is not where a workflow looks for it."""
    return BadInputError(path, "no trained model here: give --bundle_root the folder a training run wrote models/ "
                               "into, point --model_ckpt at a model.pt, or train one (configs/train.json)")


def stored_settings(path: str | Path) -> dict:
    """The settings the trained model at ``path`` (a :data:`MODEL_CKPT`) was made with, flat: ``image_size``,
    ``backbone``, ``score_top_k``, ..., ``teacher.type``, ... (the detector's ``settings``); for configs
    that take them from the checkpoint rather than from the user (``inference.json``), so that the trained model is
    the one home of its settings."""
    if not Path(path).is_file():
        raise no_trained_model(path)
    state = checkpoint_entries(path).get("model", {})
    extra = state.get(_EXTRA_STATE) if isinstance(state, Mapping) else None
    if extra is None:
        raise CheckpointMismatchError(f"{path}: carries no settings (written by an older version?); train it again")
    # HDHKD's later settings: inference.json reads them for an HDHKD model; another detector's configs never do
    settings = stored_flat_settings(extra["settings"], HDHKD.later_settings)
    for key, value in settings.items():  # a checkpoint is data: it names no download, file or hub model to load
        if key.split(".")[-1] == "backbone":
            checkpoint_architecture(value, path)
        elif key.split(".")[-1] == "weights" and value is not None:
            settings[key] = FromCheckpoint(value)
    return settings


class NamedCheckpointLoader(CheckpointLoader):
    """:class:`monai.handlers.CheckpointLoader` whose errors name the checkpoint file: a missing file, one whose
    entries do not fit the configured objects (a checkpoint of another architecture or workflow), or one whose
    plain entries differ from ``expected`` (e.g. ``{"preprocessing": preprocessing_fingerprint(...)}``).

    Args:
        expected: ``{entry: value}`` the checkpoint must hold (a :class:`SettingsMismatchError` lists those that
            differ); the other arguments are ``CheckpointLoader``'s.
    """

    def __init__(self, *args, expected: Mapping[str, Any] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.expected = dict(expected or {})

    def __call__(self, engine: Engine) -> None:
        if not Path(self.load_path).is_file():
            raise no_trained_model(self.load_path)
        engine.state.checkpoint = self.load_path  # for later checks' errors (AnomalyEvaluator's score top-k)
        stored = checkpoint_entries(self.load_path)  # a file torch cannot read: an error that names it, not pickle's
        try:
            super().__call__(engine)
        except SettingsMismatchError as e:  # the model's own check: it lists the settings that differ
            raise SettingsMismatchError(f"{self.load_path}: {e}") from None
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointMismatchError(f"{self.load_path}: does not fit the configured objects: {e}") from e
        if self.expected:
            check_settings({k: stored.get(k, "(absent)") for k in self.expected}, self.expected, str(self.load_path))


def engine_position(engine: Engine) -> dict:
    """What resuming needs besides the state dicts: the iteration, and the random state (dropout draws from it)."""
    position = {"iteration": engine.state.iteration, "rng_state": torch.get_rng_state()}
    if torch.cuda.is_available():
        position["cuda_rng_state"] = torch.cuda.get_rng_state_all()
    return position


def restore_position(engine: Engine, position: Mapping) -> int:
    """Set ``engine`` back to :func:`engine_position`'s ``position``: iteration, random state, and the data order
    when the loader's sampler can start mid-pass (:class:`~hdhkd_monai.handlers.SeededShuffle`). Returns the
    iteration."""
    iteration = int(position["iteration"])
    engine.state.iteration = iteration
    engine.state.epoch = iteration // engine.state.epoch_length
    if "rng_state" in position:
        torch.set_rng_state(position["rng_state"])
    if "cuda_rng_state" in position and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(position["cuda_rng_state"])
    loader = engine.state.dataloader
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_position"):
        batches = len(loader)  # per pass; the loader restarts when it runs out
        sampler.set_position(iteration // batches, (iteration % batches) * loader.batch_size)
    return iteration


class AtomicCheckpointSaver:
    """Ignite handler saving ``save_dict`` into one file, atomically (:func:`save_checkpoint`).

    Not MONAI's ``CheckpointSaver``: that one writes in place (``atomic=False``), so an interrupted run can leave a
    truncated ``last.pt``/``model.pt``, and its interval checkpoints get numbered names rather than one ``last.pt``
    to resume from.

    Stale temporary files of the same checkpoint (a run killed while saving) are removed when the engine starts.
    It saves every ``save_interval`` iterations and/or when the engine completes (``save_final``), and/or, on an
    evaluator, whenever the key metric improves (``key_metric_name``). A key metric that is absent or NaN (a
    validation split without abnormal images, where the evaluator has no key metric) cannot rank models; then every
    validation is saved, so the file always holds the latest one.

    Args:
        save_dir: folder of the checkpoint.
        save_dict: ``{name: object with state_dict()}``.
        filename: file name inside ``save_dir``.
        save_interval: save every N iterations; 0 disables.
        save_final: save when the engine completes.
        key_metric_name: save at the end of an evaluator epoch when ``engine.state.metrics[key_metric_name]`` is
            the highest so far.
        engine_key: also save the position of the engine this handler is attached to (:func:`engine_position`:
            iteration and random state) under this name, so that :class:`ResumeFromCheckpoint` can continue from
            there.
        extra: entries saved as they are beside the state dicts (``model.pt``'s ``preprocessing`` fingerprint).

    ``state_dict()``/``load_state_dict()`` carry the best metric so far, so a resumed run keeps ranking correctly.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: Mapping[str, Any],
        filename: str,
        save_interval: int = 0,
        save_final: bool = False,
        key_metric_name: str | None = None,
        engine_key: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(save_dir) / filename
        self.extra = dict(extra or {})
        self.save_dict = dict(save_dict)
        self.save_interval = save_interval
        self.save_final = save_final
        self.key_metric_name = key_metric_name
        self.engine_key = engine_key
        self.best = -math.inf

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._remove_stale_temporaries)
        if self.save_interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_interval), self.save)
        if self.save_final:
            engine.add_event_handler(Events.COMPLETED, self.save)
        if self.key_metric_name is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._save_if_best)

    def _remove_stale_temporaries(self, engine: Engine) -> None:
        """Temporary files of this checkpoint left by a run killed while saving (see :func:`save_checkpoint`)."""
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
            engine.logger.info(f"removed {stale}, left by an interrupted save")

    def save(self, engine: Engine) -> None:
        extra = {**self.extra, **({self.engine_key: engine_position(engine)} if self.engine_key else {})}
        save_checkpoint(self.save_dict, self.path, extra)
        engine.logger.info(f"saved checkpoint {self.path}")

    def _save_if_best(self, engine: Engine) -> None:
        value = float(engine.state.metrics.get(self.key_metric_name, math.nan))
        if not math.isnan(value):
            if value <= self.best:
                return
            self.best = value
        self.save(engine)

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.best = float(state["best"])


_OPTIMIZER_SETTINGS = {"initial_lr": "learning_rate", "weight_decay": "weight_decay"}  # param group key: config key


def optimizer_settings(objects: Mapping[str, Any]) -> list[dict]:
    """The configured learning rate (a scheduler's ``initial_lr``, else ``lr``) and weight decay of each parameter
    group of the optimizers among ``objects``, before a checkpoint replaces them."""
    return [{"initial_lr": group.get("initial_lr", group["lr"]), "weight_decay": group.get("weight_decay")}
            for obj in objects.values() if isinstance(obj, torch.optim.Optimizer) for group in obj.param_groups]


def apply_optimizer_settings(objects: Mapping[str, Any], configured: list[dict]) -> list[str]:
    """Put the ``configured`` settings back into the optimizers and schedulers among ``objects`` after a checkpoint
    was loaded into them, keeping the schedule's position (the learning rate is scaled by the factor the schedule
    had reached); return a message for each one that differed from the checkpoint's."""
    groups = [group for obj in objects.values() if isinstance(obj, torch.optim.Optimizer) for group in obj.param_groups]
    schedulers = [obj for obj in objects.values() if isinstance(obj, torch.optim.lr_scheduler.LRScheduler)]
    changes = []
    for index, (group, wanted) in enumerate(zip(groups, configured)):
        for key, name in _OPTIMIZER_SETTINGS.items():
            stored = group.get(key, group["lr"] if key == "initial_lr" else None)
            if wanted[key] is None or stored == wanted[key]:
                continue
            if key == "initial_lr":
                group["lr"] = group["lr"] * wanted[key] / stored
                for scheduler in schedulers:
                    scheduler.base_lrs[index] = wanted[key]
            group[key] = wanted[key]
            changes.append(f"{name} {wanted[key]} (the checkpoint's was {stored}; the schedule's position is kept)")
    return changes


class ResumeFromCheckpoint:
    """Ignite handler that, when training starts, continues from a checkpoint written by
    :class:`AtomicCheckpointSaver` with ``engine_key``: it loads ``load_dict`` (network, optimizer, scheduler, ...)
    and sets the trainer's iteration, random state and data order (:func:`restore_position`), so an iteration-based
    run (``max_epochs=1``, ``epoch_length`` iterations) goes on where it stopped, with the batches and dropout draws
    the uninterrupted run would have had. Without a file at ``load_path`` (or with ``enabled=False``) training starts afresh.
    Not MONAI's ``CheckpointLoader``, which restores the saved ``epoch_length`` and so cannot extend a finished run
    to more iterations, and fails on a missing file instead of starting afresh.

    Args:
        load_path: checkpoint file (e.g. ``last.pt``).
        load_dict: ``{name: object with load_state_dict()}``, the same names as the saver's ``save_dict``.
        engine_key: name under which the trainer's iteration was saved.
        enabled: ``False`` ignores an existing file (start over).
    """

    def __init__(
        self, load_path: str | Path, load_dict: Mapping[str, Any], engine_key: str = "trainer", enabled: bool = True
    ) -> None:
        self.load_path = Path(load_path)
        self.load_dict = dict(load_dict)
        self.engine_key = engine_key
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled or not self.load_path.is_file():
            engine.logger.info(f"no checkpoint to resume from at {self.load_path}: training from the start")
            return
        device = getattr(engine.state, "device", None) or "cpu"  # MONAI engines carry one, plain Ignite ones not
        configured = optimizer_settings(self.load_dict)
        checkpoint = load_checkpoint(self.load_path, self.load_dict, map_location=device)
        for change in apply_optimizer_settings(self.load_dict, configured):
            engine.logger.warning(f"resuming {self.load_path} with {change}")
        if self.engine_key not in checkpoint:
            raise CheckpointMismatchError(f"{self.load_path}: has no {self.engine_key!r} entry to resume from")
        iteration = restore_position(engine, checkpoint[self.engine_key])
        engine.logger.warning(
            f"resumed from {self.load_path} at iteration {iteration} of {engine.state.epoch_length * engine.state.max_epochs}"
            " (set resume=false to start over)"
        )


def stored_teacher(stored: Mapping[str, Any], path: str | Path) -> nn.Module:
    """The teacher of the trained model at ``path``, rebuilt untrained from its :func:`stored_settings` ``stored``
    (:func:`~hdhkd_monai.networks.teacher_from_settings`; its weights load with the model's checkpoint)."""
    settings = settings_group(stored, "teacher")
    if settings is None:
        raise CheckpointMismatchError(f"{path}: records no teacher (a PatchCore fitted before bundle 0.8.0 kept its "
                                      "backbone itself): fit it again with configs/patchcore.json + fit.json")
    return teacher_from_settings(settings)


def settings_group(stored: Mapping[str, Any], name: str) -> dict | None:
    """The settings of group ``name`` from :func:`stored_settings`'s flat ones (``{"memory.max_patches": 4096}``
    -> ``{"max_patches": 4096}``), or ``None`` when the model was made without it (``{"memory": None}``)."""
    prefix = f"{name}."
    group = {key[len(prefix):]: value for key, value in stored.items() if key.startswith(prefix)}
    return group or None
