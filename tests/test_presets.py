"""HDHKD-S, the bundle's default configuration: it costs at most a tenth of the paper's full model per image, and
trains for a length that follows the number of training images."""

import json

import pytest

from bench.complexity import PRESETS, preset_flops
from experiments import run
from hdhkd_monai.launcher import read_config


def test_hdhkd_s_costs_at_most_a_tenth_of_the_paper_model_per_image():
    default, paper = (PRESETS[name] for name in ("HDHKD-S (bundle default)", "paper's full model (wide_resnet50_2 student, Tables VI-VII)"))
    ours, theirs = preset_flops(default[0], **default[1]), preset_flops(paper[0], **paper[1])
    assert (ours["size"], theirs["size"]) == (128, 256)
    assert theirs["total"] > 85e9  # 30.6 G PDN-S teacher + 60.8 G wide_resnet50_2 student (docs/complexity.md)
    assert ours["total"] <= theirs["total"] / 10
    assert 0 < ours["teacher"] < ours["student"]


@pytest.mark.parametrize("n_train, batch_size, expected", [(7, 4, 400), (400, 4, 400), (1039, 4, 1039), (1039, 8, 520)])
def test_the_training_length_is_four_passes_over_the_training_images_and_at_least_400(n_train, batch_size, expected,
                                                                                       tmp_path):
    """train.json's rule, read by the experiment runner as its default budget: small sets keep 400 iterations, a large
    one trains for 4 passes over its images at the batch size."""
    items = []
    for i in range(n_train):
        (tmp_path / f"{i}.png").touch()  # the datalist's images must exist
        items.append({"image": str(tmp_path / f"{i}.png"), "label": 0})
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": items, "validation": [], "test": []}))
    assert run.recipe_iterations(datalist, batch_size) == expected
    parser = read_config(["train"], datalist=str(datalist), batch_size=batch_size)
    assert parser.get_parsed_content("val_interval") == expected  # one validation, at the end
