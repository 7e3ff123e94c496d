"""Association primitives for the tracker: box IoU, cosine distance and gated linear assignment.

Assignment uses ``lap.lapjv`` (Jonker-Volgenant; lap 0.5.13: ``lapjv(cost, extend_cost=True, cost_limit=c)``
returns ``(total, x, y)`` with ``x[row] = col`` or -1) and falls back to ``scipy.optimize.linear_sum_assignment``
on the same extended problem when lap is not installed, so both give the same matching: every row and column
may stay unmatched at a price of ``cost_limit / 2``, hence a pair is only matched when its cost is below
``cost_limit`` and the total over matches plus unmatched penalties is minimal.
"""
from __future__ import annotations

import numpy as np

try:  # lap is the fast path; scipy is always installed
    import lap as _lap
except ImportError:  # pragma: no cover - exercised through ``backend="scipy"``
    _lap = None
from scipy.optimize import linear_sum_assignment


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair: a [N, 4] and b [M, 4] xyxy pixels -> [N, M] in [0, 1] (0 for empty boxes)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    iy = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of L2-normalised rows: a [N, D], b [M, D] -> [N, M] in [0, 2]."""
    return np.clip(1.0 - np.asarray(a, np.float64) @ np.asarray(b, np.float64).T, 0.0, 2.0)


def linear_assignment(cost: np.ndarray, cost_limit: float, backend: str = "auto"
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-cost matching of rows to columns where no matched pair costs more than ``cost_limit``.

    cost: [N, M]; +inf or NaN marks a forbidden pair. backend: "auto" (lap if importable), "lap" or "scipy".
    Returns (matches [K, 2] int (row, col), unmatched rows [N - K], unmatched columns [M - K]).
    """
    cost = np.asarray(cost, np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be [N, M], got shape {list(cost.shape)}")
    if not np.isfinite(cost_limit) or cost_limit <= 0:
        raise ValueError(f"cost_limit must be finite and > 0, got {cost_limit}")
    if backend not in ("auto", "lap", "scipy"):
        raise ValueError(f"backend must be 'auto', 'lap' or 'scipy', got {backend!r}")
    if backend == "lap" and _lap is None:
        raise ValueError("backend 'lap' requested but the lap package is not installed")
    n, m = cost.shape
    if n == 0 or m == 0:
        return np.zeros((0, 2), np.int64), np.arange(n), np.arange(m)
    # Forbidden pairs get a finite cost above the limit: never chosen, and the solvers stay finite.
    finite = np.where(np.isfinite(cost), cost, cost_limit + 1.0)
    finite = np.minimum(finite, cost_limit + 1.0)
    if _lap is not None and backend != "scipy":
        _, row_to_col, _ = _lap.lapjv(finite, extend_cost=True, cost_limit=cost_limit)
        rows = np.flatnonzero(row_to_col >= 0)
        cols = row_to_col[rows].astype(np.int64)
    else:
        rows, cols = _scipy_extended(finite, cost_limit)
    keep = finite[rows, cols] <= cost_limit
    rows, cols = rows[keep], cols[keep]
    matches = np.stack([rows, cols], axis=1).astype(np.int64)
    row_free, col_free = np.ones(n, bool), np.ones(m, bool)
    row_free[rows], col_free[cols] = False, False
    return matches, np.flatnonzero(row_free), np.flatnonzero(col_free)


def _scipy_extended(cost: np.ndarray, cost_limit: float) -> tuple[np.ndarray, np.ndarray]:
    """The problem lapjv(extend_cost=True, cost_limit) solves, on scipy: an [N+M, M+N] matrix where row i may
    take its private dummy column (price limit/2), column j its private dummy row (limit/2), dummies pair free."""
    n, m = cost.shape
    big = 2.0 * (cost_limit + 1.0) * (n + m)
    extended = np.full((n + m, m + n), big)
    extended[:n, :m] = cost
    extended[np.arange(n), m + np.arange(n)] = cost_limit / 2.0
    extended[n + np.arange(m), np.arange(m)] = cost_limit / 2.0
    extended[n:, m:] = 0.0
    rows, cols = linear_sum_assignment(extended)
    real = (rows < n) & (cols < m)
    return rows[real].astype(np.int64), cols[real].astype(np.int64)
