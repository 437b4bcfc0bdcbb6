"""Diagnosis and recipe study on one data folder, in one process (docs/results.md, "Why HDHKD lost").

    python experiments/study.py --data ../shared/data/neh-oct --name lite0-teacher --teacher pretrained \
        --eval-at 100 200 400 [student and budget options]

The images are loaded once through the data set's preprocessing and kept in memory. The run then

1. builds the teacher: ``pretrained`` (the frozen EfficientNet-Lite target, :class:`PretrainedTeacher`) or ``pdn``
   (a PDN distilled from that target for ``--teacher-iterations``, as the bundle's teacher workflow does);
2. probes it: kNN AUROC of the teacher's own features (:mod:`tools.probe`), and of the target's when the
   teacher is a PDN;
3. trains the student and, at each ``--eval-at`` iteration, records the training loss, the discrepancy on the
   normal validation images and the test AUROC (overall and per class) for several image scores.

Results go to ``runs/study/<data>/<name>.json``. This is a measuring tool; the recipe it selects is the bundle's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hdhkd_monai.anomaly_map import image_score  # noqa: E402
from hdhkd_monai.data.datalist import kermany_datalist  # noqa: E402
from hdhkd_monai.launcher import preprocessing, read_config  # noqa: E402
from hdhkd_monai.distill import PatchCoreTarget, TeacherDistillation, fit_teacher_stats  # noqa: E402
from hdhkd_monai.losses import DistillationLoss  # noqa: E402
from hdhkd_monai.metrics import auroc, per_class_metrics  # noqa: E402
from hdhkd_monai.networks import HDHKD, PDN, PretrainedTeacher  # noqa: E402

from tools.probe import nearest_neighbour_scores, patch_features  # noqa: E402

PREPROCESSING = {"oct": (), "mri": ("br35h",), "ct_png": ("chest_ct_png",)}  # the presets of each modality
#: Image scores compared at every evaluation: the map maximum and the mean of the top 1 % / 5 % of its pixels.
SCORES = {"max": None, "top1%": 0.01, "top5%": 0.05}


augment = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=5, translate=(0.05, 0.05), scale=(0.95, 1.05))])


def load_split(items: list[dict], preprocessing) -> tuple[torch.Tensor, list[int], list[str]]:
    images = torch.stack([preprocessing(dict(item))["image"].as_tensor() for item in items])
    return images, [int(i["label"]) for i in items], [str(i["class"]) for i in items]


def build_teacher(args, train: torch.Tensor, log: dict) -> torch.nn.Module:
    if args.teacher == "pretrained":
        teacher = PretrainedTeacher(args.target_backbone, "efficientnet-lite")
    else:
        teacher = PDN("small", padding=True)
        distil = TeacherDistillation(teacher, PatchCoreTarget(args.target_backbone, "efficientnet-lite"))
        distil.fit_target_stats(train.split(16))
        optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-4, weight_decay=1e-5)
        generator = torch.Generator().manual_seed(args.seed)
        for _ in range(args.teacher_iterations):
            x = train[torch.randint(len(train), (args.batch_size,), generator=generator)]
            loss = torch.nn.functional.mse_loss(*distil(x))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        log["teacher_final_loss"] = loss.item()
    return fit_teacher_stats(teacher, train.split(16)).eval()


def probe(features, train, test, labels) -> float:
    scores = nearest_neighbour_scores(patch_features(features, train.split(16)), patch_features(features, test.split(16)))
    return auroc(labels, scores.numpy())


@torch.no_grad()
def evaluate(model: HDHKD, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    maps = torch.cat([model.anomaly_map(x) for x in images.split(16)])
    model.train()
    return maps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--normal", default="NORMAL")
    parser.add_argument("--modality", choices=sorted(PREPROCESSING), default="oct")
    parser.add_argument("--name", required=True)
    parser.add_argument("--image-size", type=int, default=read_config(["train"]).get_parsed_content("image_size"))
    parser.add_argument("--teacher", choices=("pretrained", "pdn"), default="pretrained")
    parser.add_argument("--target-backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--teacher-iterations", type=int, default=150)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--backbone-weights", default=None, help="efficientnet-lite for the ImageNet student")
    parser.add_argument("--fusion-channels", type=int, default=256)
    parser.add_argument("--encoder-channels", type=int, default=512)
    parser.add_argument("--decoder-channels", type=int, default=192)
    parser.add_argument("--num-modules", type=int, default=4)
    parser.add_argument("--global-decoder", default="mamba", help="'none' for the Conv-Upsample-only row")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--hard-quantile", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--augment", action="store_true", help="random flips and small affine moves of the normals")
    parser.add_argument("--eval-at", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-probe", action="store_true")
    parser.add_argument("--probe-only", action="store_true", help="stop after the teacher probe")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    out = REPO / "runs" / "study" / args.data.name / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    datalist = kermany_datalist(args.data, normal=args.normal, val_fraction=0.15, holdout="last")
    pre = preprocessing(PREPROCESSING[args.modality], args.image_size)
    train, _, _ = load_split(datalist["training"], pre)
    val, _, _ = load_split(datalist["validation"], pre)
    test, labels, classes = load_split(datalist["test"], pre)
    log: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "counts": [len(train), len(val), len(test)]}
    start = time.time()
    teacher = build_teacher(args, train, log)
    log["teacher_s"] = time.time() - start
    if not args.no_probe:
        log["probe_teacher"] = probe(teacher, train, test, labels)
        if args.teacher == "pdn":
            target = PatchCoreTarget(args.target_backbone, "efficientnet-lite")
            log["probe_target"] = probe(target, train, test, labels)
        print(json.dumps({k: v for k, v in log.items() if k.startswith("probe")}), flush=True)
    if args.probe_only:
        out.write_text(json.dumps(log, indent=1))
        return

    model = HDHKD(
        teacher, backbone=args.backbone, backbone_weights=args.backbone_weights,
        global_decoder=None if args.global_decoder == "none" else args.global_decoder, num_modules=args.num_modules,
        fusion_channels=args.fusion_channels, encoder_channels=args.encoder_channels,
        decoder_channels=args.decoder_channels, image_size=args.image_size,
    )  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr, weight_decay=1e-5)
    loss_fn = DistillationLoss(args.hard_quantile)
    generator = torch.Generator().manual_seed(args.seed)
    log["evals"], recent = [], []
    start = time.time()
    for it in range(1, max(args.eval_at) + 1):
        x = train[torch.randint(len(train), (args.batch_size,), generator=generator)]
        if args.augment:
            x = torch.stack([augment(image) for image in x])
        loss = loss_fn(*model(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recent = (recent + [loss.item()])[-20:]
        if it in args.eval_at:
            train_s = time.time() - start
            val_maps, test_maps = evaluate(model, val), evaluate(model, test)
            entry = {"iteration": it, "train_s": train_s, "train_loss": sum(recent) / len(recent),
                     "val_discrepancy": float(val_maps.mean()), "test_normal_discrepancy": float(
                         test_maps[torch.tensor(labels) == 0].mean())}  # fmt: skip
            pixels = test_maps[0].numel()
            for name, fraction in SCORES.items():
                scores = image_score(test_maps, None if fraction is None else max(1, int(fraction * pixels))).numpy()
                entry[f"auroc_{name}"] = auroc(labels, scores)
                entry[f"per_class_{name}"] = {c: m["auroc"] for c, m in per_class_metrics(labels, scores, classes, 0.0).items()}
                if name == "max":
                    entry["scores_max"] = scores.tolist()
            log["evals"].append(entry)
            print(f"it {it}: loss {entry['train_loss']:.4f} val {entry['val_discrepancy']:.4f} "
                  + " ".join(f"{n} {entry[f'auroc_{n}']:.4f}" for n in SCORES) + f" ({train_s:.0f} s)", flush=True)
            start = time.time() - train_s
    log["labels"], log["classes"] = labels, classes
    out.write_text(json.dumps(log, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
