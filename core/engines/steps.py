"""The rules of the minimising loop that both engines share: the loss factor L-BFGS sees, the
smooth out-of-range factor, the loss of the delivered (clipped) pixels, which iterate a level
returns, when a level stops early, and cancel.
They work on torch tensors and numpy arrays alike (the torch-free engine imports no torch)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import Cancelled, UserError

if TYPE_CHECKING:
    import torch

    from ..method.config import Config

CancelToken = threading.Event | Callable[[], bool] | None


EARLY_STOP_WINDOW = 10  # evaluations over which `tolerance` measures the loss's fall


# A level ends early only while its last loss is within this fraction of its best: after an
# overstep L-BFGS can spend over 10 evaluations above its best and then fall far below it
# (docs/method.md, "Loop rules").
SETTLED_BAND = 0.01


# The optimiser minimises the loss times 1 + RANGE_PENALTY x mean(excess^2), excess being how far
# each pixel lies outside 0..1 (`range_penalty`): stiff enough that the clip costs little, soft
# enough for L-BFGS's steps (docs/method.md, "Loop rules").
RANGE_PENALTY = 30.0


def is_cancelled(cancel: CancelToken) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if hasattr(cancel, "is_set") else bool(cancel())


def check_hooks(callback=None, cancel: CancelToken = None, what: str = "callback") -> None:
    """The Python API's `callback`/`cancel` checked before any work (else a TypeError at the first
    evaluation, after the model loaded): a callable, and an Event or a callable."""
    if callback is not None and not callable(callback):
        raise UserError(f"{what} must be a function (or None), not {type(callback).__name__}.")
    if cancel is not None and not (hasattr(cancel, "is_set") or callable(cancel)):
        raise UserError("cancel must be a threading.Event or a function returning True to stop, "
                        f"not {type(cancel).__name__}.")


def check_workers(workers) -> None:
    """The API's and the commands' `workers` (runs at once): None (the default) or a whole number
    from 1 (-1 ended a batch as "every worker process ended ...", 0 as the default)."""
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool)
                                or workers < 1):
        raise UserError(f"--workers must be a whole number from 1, not {workers!r} (leave it "
                        "out, or None, for the default).")


def check_cancel(cancel: CancelToken) -> None:
    if is_cancelled(cancel):
        raise Cancelled("Cancelled.")


class BestIterate:
    """The best image evaluated so far, and which image a run returns.

    L-BFGS without a line search (the paper's usual set-up) sometimes oversteps and the loss
    jumps 10-1000x: the run returns the image after its last step when the last evaluation was
    the best so far (so even one evaluation moves it), else the best one evaluated.
    """

    def __init__(self):
        self.loss, self.image, self.last = float("inf"), None, float("inf")

    def update(self, loss: float, x) -> None:
        """`x`: the pixels, a torch tensor or (torch-free engine) a numpy array."""
        self.last = loss
        if loss < self.loss:
            self.loss, self.image = loss, x.copy() if isinstance(x, np.ndarray) else x.detach().clone()

    def result(self, x):
        if self.last <= self.loss:
            return x if isinstance(x, np.ndarray) else x.detach()
        return self.image


def range_penalty(x, loss: float):
    """(factor, extra gradient): the optimiser minimises loss x factor, where factor = 1 +
    RANGE_PENALTY x mean(excess^2) and excess is how far each pixel of `x` lies outside 0..1.

    Results are clipped to 0..1 when delivered; unconstrained, L-BFGS lets pixels drift out of
    range (the loss does not see the clip) and the clip then cost 12-32 % of the loss with trained
    features (`best`, 512 px). Projecting to 0..1 after every step stalled L-BFGS on coarse levels;
    this smooth factor keeps its curvature pairs valid, is 1 for every deliverable image, and
    scales with the loss, so it means the same at every loss scale. The extra gradient is
    d(factor)/dx x `loss`; the loss's own gradient is to be multiplied by the factor. Works on
    torch and numpy pixels.
    """
    excess = x - x.clip(0.0, 1.0)
    scale = RANGE_PENALTY / math.prod(excess.shape)
    squares = (excess ** 2).sum()
    # numpy: a float; torch: a tensor on x's device, read with the evaluation's other figures
    squares = float(squares) if isinstance(squares, np.generic) else squares
    return 1.0 + scale * squares, (2 * scale * loss) * excess


def delivered(x, grad):
    """The loss's gradient `grad`, taken at `x` clipped to 0..1, as a gradient for `x`: a pixel the
    clip holds keeps it only where it points back into 0..1.

    The optimiser evaluates the loss of the image as it is delivered (clipped), not of its
    unbounded pixels, so the final clip costs nothing (docs/speed.md, issue 30). The clip's own
    gradient (zero outside) would leave pixels stuck outside for good; passing the inward part
    lets the loss pull them back. Works on torch and numpy.
    """
    inward = ((x > 1.0) & (grad > 0)) | ((x < 0.0) & (grad < 0))
    return grad * (((x >= 0.0) & (x <= 1.0)) | inward)


def should_stop(losses: Sequence[float], tolerance: float, window: int = EARLY_STOP_WINDOW) -> bool:
    """True when the best loss fell by less than `tolerance` (relative) over the last `window`.

    The best-so-far loss is compared, not the last one: L-BFGS without a line search sometimes
    steps uphill for an evaluation, which must not end a level that is still improving. Nor does
    a level end while its last loss is far above its best (SETTLED_BAND): it is on its way back
    from an overstep, not converged.
    """
    if tolerance <= 0 or len(losses) <= window:
        return False
    before, now = min(losses[:-window]), min(losses)
    settled = losses[-1] - now <= SETTLED_BAND * abs(now)
    return settled and before - now < tolerance * abs(before)


def loss_factor(config: Config) -> Callable[[torch.Tensor], float]:
    """The factor the optimiser sees the loss times: for L-BFGS, 1 / the loss's first value when
    that is below 1 (a loss of 1e-3 starts at 1), else 1.

    torch's L-BFGS keeps a curvature pair only when y's > 1e-10, an absolute threshold made for
    losses near 1; with losses near 1e-3 and pixel gradients near 1e-7 every pair was dropped and
    L-BFGS degraded to tiny gradient steps. Larger losses are left as they are (divided down,
    their first pair fell below the threshold instead).
    """

    first: list[float] = []

    def factor(total: torch.Tensor) -> float:
        if config.optimizer != "lbfgs":
            return 1.0
        if not first:
            first.append(max(abs(float(total.detach() if hasattr(total, "detach") else total)), 1e-30))
        return max(1.0, 1.0 / first[0])
    return factor
