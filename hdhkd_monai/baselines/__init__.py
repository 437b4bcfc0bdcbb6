"""The methods the paper compares HDHKD with, on the same [0, 1] 3-channel input (see docs/baselines.md).

Each model is a :class:`~hdhkd_monai.networks.Detector`, as HDHKD is: in eval mode ``model(x)`` gives an
``AnomalyPrediction`` (image scores [B], anomaly maps [B, 1, H, W]), so the workflows' evaluator, calibration,
report and exports run them as they run HDHKD. EfficientAD and RD4AD are trained with ``loss(x)``, PatchCore is built with
``fit(images)``.
"""

from .efficientad import AutoEncoder, EfficientAD
from .patchcore import PatchCore, k_center_greedy, random_projection
from .rd4ad import RD4AD, OneClassBottleneck, ResidualBottleneck, ReverseDecoder

__all__ = [
    "AutoEncoder",
    "EfficientAD",
    "PatchCore",
    "k_center_greedy",
    "random_projection",
    "RD4AD",
    "OneClassBottleneck",
    "ResidualBottleneck",
    "ReverseDecoder",
]
