"""A detector's fit on a data set, other than gradient training, as a handler of the workflow that needs it.

May import nothing of the package (it calls what the config hands it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ignite.engine import Engine, Events

__all__ = ["FitOnData"]


class FitOnData:
    """Call ``fit(data)`` whenever the engine starts: for example EfficientAD's map normalisation
    (``network_def.fit_on_validation``) on the validation images before each validation, so the calibration
    that follows sees normalised maps of the current weights.

    Args:
        fit: the callable, e.g. a bound method of the detector.
        data: what it fits on (a data loader of ``{"image": ...}`` batches).
    """

    def __init__(self, fit: Callable[[Iterable], object], data: Iterable) -> None:
        self.fit = fit
        self.data = data

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.fit(self.data)
