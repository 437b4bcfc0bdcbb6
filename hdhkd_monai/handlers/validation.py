"""Validation every N iterations of an iteration-based trainer, and once more at the end of training.

May import ``engines``, ``handlers``, ``baselines``, ``networks``, ``data`` and the layers below; never the
launcher, ``zoo`` or ``demo``.
"""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.engines import Evaluator
from monai.handlers import ValidationHandler

__all__ = ["IterationValidationHandler"]


class IterationValidationHandler(ValidationHandler):
    """:class:`monai.handlers.ValidationHandler` for training counted in iterations.

    Runs ``validator`` every ``interval`` iterations and when training completes (unless that iteration was just
    validated), so the final model is always validated and calibrated. The evaluator's epoch is set to the
    trainer's iteration, so its epoch-level logs (StatsHandler, TensorBoard) line up with the training curves.

    Args:
        interval: validate every N training iterations.
        validator: the evaluator to run.
    """

    def __init__(self, interval: int, validator: Evaluator | None = None) -> None:
        super().__init__(interval=interval, validator=validator, epoch_level=False)
        self._validated_at: int | None = None

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.COMPLETED, self._at_completion)

    def __call__(self, engine: Engine) -> None:
        if self.validator is None:
            raise RuntimeError("set the validator before training (constructor or set_validator()).")
        self.validator.run(global_epoch=engine.state.iteration)
        self._validated_at = engine.state.iteration

    def _at_completion(self, engine: Engine) -> None:
        if self._validated_at != engine.state.iteration:
            self(engine)
