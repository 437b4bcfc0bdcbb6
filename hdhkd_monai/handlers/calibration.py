"""Calibration on the normal validation images: map-normalisation quantiles and the decision threshold.

May import ``engines``, ``handlers``, ``baselines``, ``networks``, ``data`` and the layers below; never the
launcher, ``zoo`` or ``demo``.
"""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from torch import nn

from hdhkd_monai.anomaly_map import MAP_QUANTILES, map_quantiles, normalize_map

__all__ = ["CalibrationHandler"]


class CalibrationHandler:
    """On the validation evaluator, calibrate the model from the normal (label 0) validation images.

    When each validation run starts, ``model.map_quantiles`` is cleared, so the evaluator sees raw maps and scores
    (``"pred"``, ``"score"``, with ``"label"``). After the run:

    - ``model.map_quantiles`` <- the ``low``/``high`` quantiles of all normal-image map pixels (EfficientAD's map
      normalisation, :data:`~hdhkd_monai.anomaly_map.MAP_QUANTILES`): normalised maps are
      ``0.1 * (m - q_low) / (q_high - q_low)``;
    - ``model.threshold`` <- the ``threshold_quantile`` quantile of the normal images' scores in normalised units,
      so about ``1 - threshold_quantile`` of normal images are called abnormal (the specificity it aims at);
    - ``model.normal_score_quantiles`` <- the percentiles of those scores, from which inference reports each new
      image's percentile among the normal validation images;
    - ``model.calibration`` <- the settings calibrated with (``low``/``high``, ``threshold_quantile``).

    The image score (the map's maximum or top-k mean) commutes with the increasing affine normalisation, so
    normalising the raw scores equals scoring the normalised maps. Both values also appear in the evaluator's
    metrics (``map_q_low``, ``map_q_high``, ``threshold``) for the logs.

    With ``low``/``high`` None the maps are left alone and only the threshold is set, in the units of the scores:
    the baselines normalise their own maps (EfficientAD) or score otherwise than by the map (PatchCore).

    Args:
        model: the :class:`~hdhkd_monai.networks.Detector` the evaluator runs.
        low, high: map-normalisation quantiles, or None.
        threshold_quantile: quantile of normal validation scores used as the decision threshold.
        min_normals: fewer normal validation images than this get a warning: the threshold quantile of a handful
            of scores is little more than their maximum, and the specificity reached on new normals may be far below
            ``threshold_quantile`` (with 6 normals, 65 % was measured on held-out brain MRI).
    """

    def __init__(
        self,
        model: nn.Module,
        low: float | None = MAP_QUANTILES[0],
        high: float | None = MAP_QUANTILES[1],
        threshold_quantile: float = 0.95,
        min_normals: int = 20,
    ):
        if not 0.0 < threshold_quantile < 1.0:
            raise ValueError(f"threshold_quantile must lie in (0, 1), got {threshold_quantile}")
        self.model = model
        self.low, self.high = low, high
        self.threshold_quantile = threshold_quantile
        self.min_normals = min_normals
        self._maps: list[torch.Tensor] = []
        self._scores: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._calibrate)

    def _start(self, engine: Engine) -> None:
        self._reset(engine)
        self.model.map_quantiles.fill_(float("nan"))  # the run's maps and scores are raw, the units calibrated here

    def _reset(self, engine: Engine) -> None:
        self._maps, self._scores = [], []

    def _collect(self, engine: Engine) -> None:
        for item in engine.state.output:
            if item.get("label") is None:
                raise ValueError("calibration needs a label (0 normal / 1 abnormal) for every validation image.")
            if int(item["label"]) == 0:
                if self.low is not None:
                    self._maps.append(item["pred"].detach().float().cpu().as_subclass(torch.Tensor))
                self._scores.append(float(item["score"]))

    def _calibrate(self, engine: Engine) -> None:
        if not self._scores:
            raise ValueError("the validation split has no normal images (label 0): cannot calibrate the anomaly maps.")
        n = len(self._scores)
        if n < self.min_normals:
            engine.logger.warning(
                "the decision threshold comes from only %d normal validation images (fewer than %d): its specificity "
                "on new normal images is uncertain; hold out more normal images for validation if you can",
                n, self.min_normals,
            )  # fmt: skip
        scores = torch.tensor(self._scores)
        if self.low is not None:
            quantiles = map_quantiles(torch.stack(self._maps), low=self.low, high=self.high)
            scores = normalize_map(scores.view(-1, 1, 1, 1), quantiles).flatten()
            self.model.map_quantiles.copy_(quantiles.to(self.model.map_quantiles))
            engine.state.metrics.update(map_q_low=float(quantiles[0]), map_q_high=float(quantiles[1]))
        threshold = torch.quantile(scores, self.threshold_quantile)
        self.model.threshold.copy_(threshold.to(self.model.threshold))
        grid = torch.linspace(0, 1, self.model.normal_score_quantiles.numel())
        self.model.normal_score_quantiles.copy_(torch.quantile(scores, grid).to(self.model.normal_score_quantiles))
        self.model.calibration = {"map_quantiles": [self.low, self.high], "threshold_quantile": self.threshold_quantile}
        engine.state.metrics.update(threshold=float(threshold), calibration_normals=n)
        self._reset(engine)
