"""The bundle card (``configs/metadata.json``) says what the model computes: its image score is the configs'
``score_top_k`` (the mean of the top k map values), stated as a percentage of the map."""

import json
from pathlib import Path

from hdhkd_monai.launcher import CONFIGS, read_config


def stated_score(meta: dict, top_k: int, image_size: int) -> list[str]:
    """The fields of ``meta`` that do not describe the score as the mean of the top ``top_k`` of an
    ``image_size``-square map (empty when all do)."""
    percent = round(100 * top_k / image_size**2)
    wanted = f"the mean of the top {percent} % of the map's values"
    return [field for field in ("description", "pred_classes") if wanted not in meta[field] or "maximum" in meta[field]]


def check_card(configs: Path) -> list[str]:
    parser = read_config([configs / "train.json"], bundle_root=str(configs.parent))  # the settings' home
    parser.read_meta(str(configs / "metadata.json"))
    top_k, size = parser.get_parsed_content("score_top_k"), parser.get_parsed_content("image_size")
    return stated_score(json.loads((configs / "metadata.json").read_text()), top_k, size)


def test_the_bundle_card_describes_the_score_the_configs_compute():
    assert check_card(CONFIGS) == []


def test_the_check_sees_a_card_that_says_maximum():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    meta["pred_classes"] = "an image is abnormal when the map maximum reaches the stored threshold"
    assert stated_score(meta, 819, 128) == ["pred_classes"]
    assert stated_score(json.loads((CONFIGS / "metadata.json").read_text()), 1, 128) == ["description", "pred_classes"]
