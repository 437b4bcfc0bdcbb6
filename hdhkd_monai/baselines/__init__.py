"""The methods the paper compares HDHKD with, on the same [0, 1] 3-channel input (see docs/baselines.md).

Each model is a :class:`~hdhkd_monai.networks.Detector`, as HDHKD is: in eval mode ``model(x)`` gives an
``AnomalyPrediction`` (image scores [B], anomaly maps [B, 1, H, W]), so the workflows' evaluator, calibration,
report and exports run them as they run HDHKD. The bundle trains each through its own workflows with a detector
config (``configs/rd4ad.json``, ``efficientad.json``, ``patchcore.json`` + ``fit.json``): RD4AD and EfficientAD by
gradient (their training-mode outputs into ``ReverseDistillationLoss`` / ``EfficientADLoss``), PatchCore by one
fitting pass (``partial_fit`` per batch).

May import ``anomaly_map``, ``losses``, ``distill``, ``pretrained`` and ``networks``; nothing above.
"""

from .efficientad import AutoEncoder, EfficientAD, EfficientADLoss
from .patchcore import PatchCore, k_center_greedy, random_projection
from .rd4ad import RD4AD, OneClassBottleneck, ResidualBottleneck, ReverseDecoder, ReverseDistillationLoss

__all__ = [
    "AutoEncoder",
    "EfficientAD",
    "EfficientADLoss",
    "PatchCore",
    "k_center_greedy",
    "random_projection",
    "RD4AD",
    "OneClassBottleneck",
    "ResidualBottleneck",
    "ReverseDecoder",
    "ReverseDistillationLoss",
]
