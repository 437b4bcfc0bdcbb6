"""Volume-level scores from slice scores: a volume scores as its highest slice, or the mean of its top-k slices.

Items are datalist items carrying "volume" (and "label", "class", "patient"), as written by
``python -m hdhkd_monai.data.slices``; a volume is abnormal when any of its slices is.

May import ``data``, ``distill``, ``pretrained`` and the shared leaves (``errors``, ``state_dict``, ``anomaly_map``,
``metrics``, ``quiet``, ``losses``); nothing of the networks or above.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np


def volume_scores(items: Sequence[dict], scores: Sequence[float], reduce: str = "max", top_k: int = 3) -> list[dict]:
    """Aggregate per-slice anomaly scores into one score per volume.

    Args:
        items: datalist items, one per score, each with a "volume" key.
        scores: image-level anomaly score of each item.
        reduce: "max" (the highest slice score) or "topk" (mean of the ``top_k`` highest; all slices when fewer).
        top_k: slices averaged by "topk".

    Returns:
        One dict per volume, in order of first appearance: {"volume", "patient", "label" (max of slice labels),
        "class" (the first abnormal slice's class, else the first slice's), "score", "n_slices"}.
    """
    if len(items) != len(scores):
        raise ValueError(f"{len(items)} items but {len(scores)} scores")
    if reduce not in ("max", "topk"):
        raise ValueError(f"reduce must be 'max' or 'topk', got {reduce!r}")
    groups: dict[str, list[int]] = defaultdict(list)
    for n, item in enumerate(items):
        if "volume" not in item:
            raise ValueError(f"item {item.get('image', n)} has no 'volume' key (not a slice datalist)")
        groups[item["volume"]].append(n)
    result = []
    for volume, members in groups.items():
        values = np.sort(np.asarray([scores[n] for n in members], dtype=float))[::-1]
        score = values[0] if reduce == "max" else values[: max(1, top_k)].mean()
        abnormal = [items[n] for n in members if items[n].get("label", 0) == 1]
        first = abnormal[0] if abnormal else items[members[0]]
        result.append({"volume": volume, "patient": first.get("patient", volume), "label": int(bool(abnormal)),
                       "class": first.get("class"), "score": float(score), "n_slices": len(members)})
    return result
