"""L-BFGS in numpy for the torch-free engine: torch.optim.LBFGS's algorithm, step by step.

The same rule as the torch path (optimise.make_optimiser: lr 1, one evaluation per step, no line
search, `history` curvature pairs, absolute stopping thresholds off): the first step is
min(1, 1/|g|_1) times -g, later ones the two-loop recursion's direction with step 1; a pair is kept
only when y's > 1e-10, and H0 = y's / y'y of the newest pair. Vectors are float32 as torch's;
dot products too.
"""

from __future__ import annotations

from collections import deque

import numpy as np

CURVATURE_MIN = 1e-10  # torch's threshold for keeping a pair


class LBFGS:
    """`step(x, g)` -> the next x, from the current point `x` and its gradient `g` (flat float32)."""

    def __init__(self, history: int = 100):
        self.pairs: deque = deque(maxlen=history)  # (s, y, 1 / y's)
        self.h_diag = 1.0
        self.direction = self.step_size = self.prev_grad = None

    def step(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        if self.prev_grad is None:
            d = -g
        else:
            y = g - self.prev_grad
            s = self.direction * np.float32(self.step_size)
            ys = _dot(y, s)
            if ys > CURVATURE_MIN:
                self.pairs.append((s, y, 1.0 / ys))
                self.h_diag = ys / _dot(y, y)
            d = self._two_loop(g)
        self.prev_grad = g.copy()
        first = self.step_size is None
        size = float(np.abs(g).sum(dtype=np.float64))
        self.step_size = (min(1.0, 1.0 / size) if size else 1.0) if first else 1.0  # torch: 1/0 = inf
        self.direction = d
        if _dot(g, d) > 1.0:  # torch's `gtd > -tolerance_change` with the change threshold at -1
            return x
        return x + np.float32(self.step_size) * d

    def _two_loop(self, g: np.ndarray) -> np.ndarray:
        q = -g
        alphas = []
        for s, y, rho in reversed(self.pairs):
            a = _dot(s, q) * rho
            alphas.append(a)
            q = q - np.float32(a) * y
        r = q * np.float32(self.h_diag)
        for (s, y, rho), a in zip(self.pairs, reversed(alphas)):
            b = _dot(y, r) * rho
            r = r + np.float32(a - b) * s
        return r


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)))
