"""L-BFGS on the pixels' device with one host sync per step: torch.optim.LBFGS's rule, computed
as a few matrix products instead of a Python loop over the curvature pairs.

The rule is optimise's (and the torch-free engine's lbfgs.py): lr 1, one evaluation per step, no
line search; the first step is min(1, 1/|g|_1) times -g, later ones the two-loop recursion's
direction with step 1; a pair is kept only when y's > 1e-10, H0 = y's / y'y of the newest pair; a
direction that climbs (g'd > 1) is not taken. torch's loop costs two host syncs and about six
kernel launches per kept pair (about 200 syncs per step with 100 pairs), which on a GPU costs
more than the evaluation itself. Here the recursion is two triangular solves on the pairs'
m x m products s_i'y_j (kept up to date as pairs arrive), in float64, and four matrix-vector
products over the [m, n] history; the only sync is the curvature test.
"""

from __future__ import annotations

import torch

CURVATURE_MIN = 1e-10  # torch's threshold for keeping a pair
CLIMB_MAX = 1.0  # torch's `gtd > -tolerance_change` with the change threshold at -1 (optimise)


class LBFGS:
    """`step(x, g)` moves the pixels `x` in place, from their gradient `g` (any shape, flat n)."""

    def __init__(self, x: torch.Tensor, history: int, steps: int):
        pairs = max(1, min(history, steps - 1))  # never more rows than a level can fill
        n = x.numel()
        self.S = x.new_zeros((pairs, n), dtype=torch.float32)  # s_i = step taken, by slot
        self.Y = x.new_zeros((pairs, n), dtype=torch.float32)  # y_i = change of gradient
        self.SY = torch.zeros((pairs, pairs), dtype=torch.float64, device=x.device)  # s_i'y_j
        self.order: list[int] = []  # the slots in use, oldest pair first
        self.slots = torch.zeros(0, dtype=torch.long, device=x.device)  # `order` on the device
        self.h_diag = torch.ones((), dtype=torch.float32, device=x.device)
        self.prev_grad: torch.Tensor | None = None
        self.last_step: torch.Tensor | None = None

    def step(self, x: torch.Tensor, g: torch.Tensor) -> None:
        g = g.reshape(-1).float()
        if self.prev_grad is None:
            d = -g
            t = torch.clamp(1.0 / g.abs().sum(), max=1.0)  # torch: min(1, 1/|g|_1) * lr
        else:
            self._remember(g - self.prev_grad, self.last_step)
            d = self._direction(g) if self.order else -g * self.h_diag
            t = torch.ones((), device=g.device)
        climbs = torch.dot(g, d) > CLIMB_MAX
        self.last_step = d * torch.where(climbs, torch.zeros_like(t), t)
        self.prev_grad = g.clone()
        x.add_(self.last_step.view_as(x).to(x.dtype))

    def _remember(self, y: torch.Tensor, s: torch.Tensor) -> None:
        ys = torch.dot(y, s)
        if float(ys) <= CURVATURE_MIN:  # the step's one sync
            return
        if len(self.order) < self.S.shape[0]:
            slot = len(self.order)
        else:
            slot = self.order.pop(0)  # the oldest pair leaves
        self.order.append(slot)
        self.slots = torch.tensor(self.order, device=y.device)
        self.S[slot], self.Y[slot] = s, y
        self.SY[slot, :] = (self.Y @ s).double()
        self.SY[:, slot] = (self.S @ y).double()
        self.h_diag = ys / torch.dot(y, y)

    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        """-H g by the two-loop recursion, written as two triangular systems on the pairs:
        first loop (newest to oldest) triu(A) a = -S g, second loop (oldest to newest)
        tril(A') e = diag(A) a - Y r0 with r0 = H0 (-g - Y'a), then d = r0 + S'e,
        where A[i, j] = s_i'y_j in the pairs' age order and e_i = a_i - b_i."""
        slots = self.slots
        a_matrix = self.SY[slots][:, slots]
        sg = (self.S @ g).double()[slots]
        a = torch.linalg.solve_triangular(torch.triu(a_matrix), -sg[:, None], upper=True)[:, 0]
        q = -g - self.Y.T @ self._scatter(a, slots)
        r0 = q * self.h_diag
        yr0 = (self.Y @ r0).double()[slots]
        e = torch.linalg.solve_triangular(torch.tril(a_matrix.T), (a_matrix.diagonal() * a
                                                                   - yr0)[:, None],
                                          upper=False)[:, 0]
        return r0 + self.S.T @ self._scatter(e, slots)

    def _scatter(self, values: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Per-pair values (age order) as a float32 vector over all slots (0 where unused)."""
        out = torch.zeros(self.S.shape[0], dtype=torch.float32, device=values.device)
        return out.index_copy_(0, slots, values.float())
