"""HDHKD-S, the bundle's default configuration, costs at most a tenth of the paper's full model per image."""

from bench.complexity import PRESETS, preset_flops


def test_hdhkd_s_costs_at_most_a_tenth_of_the_paper_model_per_image():
    default, paper = (PRESETS[name] for name in ("HDHKD-S (bundle default)", "paper's full model (wide_resnet50_2 student, Tables VI-VII)"))
    ours, theirs = preset_flops(default[0], **default[1]), preset_flops(paper[0], **paper[1])
    assert (ours["size"], theirs["size"]) == (128, 256)
    assert theirs["total"] > 85e9  # 30.6 G PDN-S teacher + 60.8 G wide_resnet50_2 student (docs/complexity.md)
    assert ours["total"] <= theirs["total"] / 10
    assert 0 < ours["teacher"] < ours["student"]
