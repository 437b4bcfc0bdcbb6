"""Inputs screened before a run: every input that cannot be scored is known, and skipped with its reason, before the
first image is scored; the rest run.

An input is skipped when it is a symlink out of the input folder, not a regular file, outside the size bounds
(:mod:`~hdhkd_monai.data.bounds`; a too-large image is replaced by a downscaled copy when asked), or not decodable
by the reader the preprocessing uses; a volume when it cannot be read or cut into slices. Images are checked in
parallel threads (the decoders release the GIL).

May import ``data``, ``distill``, ``pretrained`` and the shared leaves (``errors``, ``state_dict``, ``anomaly_map``,
``metrics``, ``quiet``, ``losses``); nothing of the networks or above.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hdhkd_monai.data.bounds import ImageBounds, ImageTooLargeError, downscaled_copy, header_shape
from hdhkd_monai.data.containment import output_name, regular_file
from hdhkd_monai.errors import BadInputError

__all__ = ["declared_folder", "inference_items", "screen_image", "screen_inputs", "sliced_inputs"]

Skip = Callable[[str, str], None]
logger = logging.getLogger("hdhkd_monai.data")


def declared_folder(source: str | Path) -> Path | None:
    """The folder an input option names: the folder itself, or a glob pattern's folder part; None for a file or a
    list (whose entries are the declared inputs themselves)."""
    source = str(source)
    if os.path.isdir(source):
        return Path(source).resolve()
    if not os.path.exists(source) and glob.has_magic(source):
        fixed = []
        for part in Path(source).parts:
            if glob.has_magic(part):
                break
            fixed.append(part)
        return Path(*fixed).resolve() if fixed else None
    return None


def screen_image(path: str | Path, bounds: ImageBounds, folder: Path | None = None) -> tuple[int, int]:
    """``(rows, cols)`` of image ``path`` once it passed every check; else the named error (:class:`BadInputError`
    or a subclass). The size is read from the header first, so a huge image is refused before it is decoded."""
    from hdhkd_monai.data.transforms import SliceReader  # imported on use: it loads MONAI's transforms

    if folder is not None and not Path(path).resolve().is_relative_to(folder):
        raise BadInputError(path, f"leads outside the input folder {folder} (a symlink?); only files inside it are read")
    regular_file(path)
    shape = header_shape(path)
    if shape is not None:
        bounds.check(path, shape)
    array, _ = SliceReader().get_data(Path(path))
    bounds.check(path, array.shape)
    return array.shape


def screen_inputs(items: list[dict], skip: Skip, bounds: ImageBounds, root: str | Path, downscaled_dir: str | Path,
                  downscale_large: bool = False, folder: Path | None = None) -> list[dict]:
    """The items (of :func:`sliced_inputs`) that can be scored, in order; each other one goes to ``skip(path,
    reason)``. With ``downscale_large`` a too-large 2-D image is replaced by a copy within ``bounds`` written under
    ``downscaled_dir`` (named like its outputs, below ``root``), the item's ``"source"`` staying the original."""
    flat = [it for it in items if int(it.get("slice", -1)) < 0]
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        errors = list(pool.map(lambda it: _screen_error(it["image"], bounds, folder), flat))
    verdicts = {id(it): error for it, error in zip(flat, errors)}
    kept = []
    for item in items:
        error = verdicts.get(id(item))
        if isinstance(error, ImageTooLargeError) and downscale_large:
            target = Path(downscaled_dir) / output_name(item["source"], root)
            item = {**item, "image": str(downscaled_copy(item["image"], target, bounds))}
        elif error is not None:
            skip(item["source"], error.problem)
            continue
        kept.append(item)
    return kept


def _screen_error(path: str, bounds: ImageBounds, folder: Path | None) -> BadInputError | None:
    try:
        screen_image(path, bounds, folder)
    except BadInputError as error:
        return error
    return None


def sliced_inputs(items: list[dict], out_dir: str | Path, modality: str, skip: Skip) -> list[dict]:
    """:func:`~hdhkd_monai.data.slices.slice_inputs` one input at a time (volume ``n`` into ``out_dir/<n>/``), a
    volume that cannot be read going to ``skip`` rather than stopping the run."""
    from hdhkd_monai.data.slices import slice_inputs  # imported on use: it loads the volume readers

    result = []
    for n, item in enumerate(items):
        try:
            result += slice_inputs([item], Path(out_dir) / str(n), modality)
        except (BadInputError, OSError) as error:
            skip(item["image"], getattr(error, "problem", None) or str(error))
    return result


def inference_items(inputs: list[dict], output, modality: str, bounds: ImageBounds, root: str | Path,
                    downscale_large: bool = False, source: str | Path | None = None) -> list[dict]:
    """What an inference run scores: ``inputs`` sliced (:func:`sliced_inputs`) and screened (:func:`screen_inputs`,
    inside the folder the ``source`` option names), without those a resumed run has scored; ``output`` is the run's
    :class:`~hdhkd_monai.handlers.outputs.OutputSet`, which records the skipped ones."""
    items = sliced_inputs(inputs, output.folder("slices"), modality, output.skip)
    folder = declared_folder(source) if source is not None else None
    items = screen_inputs(items, output.skip, bounds, root, output.folder("downscaled"), downscale_large, folder)
    if not items:
        output.close()
        raise BadInputError(source or root, f"none of the {len(inputs)} inputs can be scored; the reasons are in "
                                            f"{output.skipped.path}")
    pending = output.pending(items)
    if not pending:
        output.close()  # the run has nothing to do, and no engine event will close the output set
        logger.info("%s: every input was scored already", output.path)
    return pending
