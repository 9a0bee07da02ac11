"""The smooth QWK surrogate: a differentiable stand-in for QWK that the scipy blend minimises (loss="qwk") and the
LightGBM stacker trains on (objective="qwk", through `qwk_objective` and `qwk_surrogate_eval`).

For continuous predictions p, weights w (W = sum w), the kappa of continuous scores is 1 - f / g with

    f = sum_i w_i (p_i - y_i)^2                        (observed quadratic disagreement)
    g = sum_i w_i ((p_i - ybar)^2 + s2)                (expected disagreement if p and y were independent:
                                                        (1/W) sum_ij w_i w_j (p_i - y_j)^2)

with ybar, s2 the weighted mean and variance of y. The loss minimised is W * f / g (scaled by W so
per-row gradients are O(1), like L2). Per row, with L = f / g:

    grad_i = W * 2 w_i ((p_i - y_i) - L (p_i - ybar)) / g
    hess_i = W * (2 w_i (1 - L) / g - 4 w_i (p_i - ybar) grad_i / (W g))      (exact diagonal)

The exact diagonal is ~0 at the constant start (L = 1), so LightGBM gets it floored at half the
Gauss-Newton curvature 2 w_i W / g.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    import lightgbm as lgb


def _surrogate_terms(
    y: np.ndarray, p: np.ndarray, w: np.ndarray | None
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Loss f / g, gradient and exact diagonal Hessian of W f / g, and the Gauss-Newton curvature."""
    weights = np.ones_like(p) if w is None else w
    total = weights.sum()
    ybar = (weights * y).sum() / total
    s2 = (weights * (y - ybar) ** 2).sum() / total
    f = (weights * (p - y) ** 2).sum()
    g = (weights * ((p - ybar) ** 2 + s2)).sum()
    if g <= 0:
        raise ValueError("QWK surrogate is undefined: labels are constant and predictions equal them")
    loss = f / g
    grad = total * 2.0 * weights * ((p - y) - loss * (p - ybar)) / g
    hess = total * (2.0 * weights * (1.0 - loss) / g - 4.0 * weights * (p - ybar) * grad / (total * g))
    return float(loss), grad, hess, 2.0 * weights * total / g


def qwk_surrogate(
    y: ArrayLike, p: ArrayLike, sample_weight: ArrayLike | None = None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Differentiable QWK loss 1 - kappa_continuous, its gradient and exact diagonal Hessian w.r.t. p.

    Args:
        y: true scores, shape (n,) (any real values).
        p: continuous predictions, shape (n,).
        sample_weight: optional row weights, shape (n,).

    Returns:
        (loss, grad, hess): loss = f / g (see the module docstring); grad and hess, shape (n,), are the
        derivatives of W * f / g (W = sum of weights), scaled so that each row's gradient is O(1).
    """
    yv = np.asarray(y, dtype=np.float64)
    pv = np.asarray(p, dtype=np.float64)
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    loss, grad, hess, _ = _surrogate_terms(yv, pv, w)
    return loss, grad, hess


def _lgb_weights(data: lgb.Dataset) -> np.ndarray | None:
    weights = data.get_weight()
    return None if weights is None else np.asarray(weights, dtype=np.float64)


def qwk_objective(preds: np.ndarray, train_data: lgb.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """LightGBM custom objective: QWK-surrogate gradient; exact Hessian floored at half Gauss-Newton."""
    y = np.asarray(train_data.get_label(), dtype=np.float64)
    _, grad, hess, gauss_newton = _surrogate_terms(y, np.asarray(preds, dtype=np.float64), _lgb_weights(train_data))
    return grad, np.maximum(hess, 0.5 * gauss_newton)


def qwk_surrogate_eval(preds: np.ndarray, data: lgb.Dataset) -> tuple[str, float, bool]:
    """LightGBM custom metric: the surrogate loss f / g of `data` (lower is better), for early stopping."""
    loss, _, _ = qwk_surrogate(data.get_label(), preds, _lgb_weights(data))
    return "qwk_surrogate", loss, False
