"""Test problems for the book's experiments.

Every objective ``f`` is written with elementwise arithmetic only, so the same function accepts a
NumPy array (the from-scratch implementations) and a ``torch.Tensor`` with ``requires_grad``
(the production optimizers, whose gradients then come from autograd). Each problem also carries
its analytic gradient for the NumPy side; the chapters therefore compare two independently
computed gradients as a by-product of comparing trajectories.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = [
    "Problem",
    "quadratic",
    "rosenbrock",
    "beale",
    "noisy_least_squares",
    "digits",
]


@dataclass(frozen=True)
class Problem:
    """A differentiable objective on R^d with what the chapters need to study it.

    Attributes:
        name: a short label for plots.
        f: objective; accepts a NumPy array or a torch tensor of shape ``(d,)``.
        grad: analytic gradient, NumPy in and out.
        hessian: analytic Hessian (NumPy), or ``None``.
        minimizer: the known minimizer.
        x0: a conventional starting point.
        xlim, ylim: a plotting window (2-D problems).
    """

    name: str
    f: Callable
    grad: Callable[[np.ndarray], np.ndarray]
    minimizer: np.ndarray
    x0: np.ndarray
    hessian: Callable[[np.ndarray], np.ndarray] | None = None
    xlim: tuple[float, float] = (-1.0, 1.0)
    ylim: tuple[float, float] = (-1.0, 1.0)
    info: dict = field(default_factory=dict)


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def quadratic(condition: float = 10.0, L: float = 1.0, angle: float = 0.0,
              x0=(-0.9, 0.45)) -> Problem:
    """The 2-D quadratic ``f(x) = 1/2 x^T A x`` with ``A = R diag(L, L/condition) R^T``.

    ``L`` is the largest curvature (the gradient's Lipschitz constant), ``mu = L/condition`` the
    smallest, and ``R`` a rotation by ``angle`` radians. With ``angle=0`` the axes of the ellipses
    are the coordinate axes (what a diagonal preconditioner can exploit); a rotation hides them.
    The minimizer is the origin and ``info`` holds ``A``, ``L``, ``mu`` and ``condition``.
    """
    if condition < 1:
        raise ValueError(f"condition must be >= 1, got {condition}")
    if L <= 0:
        raise ValueError(f"L must be > 0, got {L}")
    mu = L / condition
    R = _rotation(angle)
    # The steep direction is the first rotated axis, the shallow one the second.
    A = R @ np.diag([mu, L]) @ R.T
    a, b, c = A[0, 0], A[0, 1], A[1, 1]

    def f(x):
        return 0.5 * (a * x[0] ** 2 + 2 * b * x[0] * x[1] + c * x[1] ** 2)

    def grad(x):
        return A @ np.asarray(x, dtype=float)

    return Problem(
        name=f"quadratic (kappa={condition:g})",
        f=f, grad=grad, hessian=lambda x: A.copy(),
        minimizer=np.zeros(2), x0=np.asarray(x0, dtype=float),
        xlim=(-1.1, 1.1), ylim=(-0.6, 0.6),
        info={"A": A, "L": L, "mu": mu, "condition": condition, "angle": angle},
    )


def rosenbrock(a: float = 1.0, b: float = 100.0, x0=(-1.2, 1.0)) -> Problem:
    """Rosenbrock's banana ``f(x, y) = (a - x)^2 + b (y - x^2)^2`` (Rosenbrock, 1960).

    The minimizer ``(a, a^2)`` sits at the end of a long curved valley whose floor is nearly flat
    while its walls are steep: at the minimum the Hessian's eigenvalues differ by a factor of about
    2500 for ``a=1, b=100``.
    """

    def f(x):
        return (a - x[0]) ** 2 + b * (x[1] - x[0] ** 2) ** 2

    def grad(x):
        x, y = float(x[0]), float(x[1])
        return np.array([-2 * (a - x) - 4 * b * x * (y - x * x), 2 * b * (y - x * x)])

    def hessian(x):
        x, y = float(x[0]), float(x[1])
        return np.array([[2 - 4 * b * (y - 3 * x * x), -4 * b * x], [-4 * b * x, 2 * b]])

    return Problem(
        name=f"Rosenbrock (b={b:g})", f=f, grad=grad, hessian=hessian,
        minimizer=np.array([a, a * a]), x0=np.asarray(x0, dtype=float),
        xlim=(-2.0, 2.0), ylim=(-1.0, 3.0), info={"a": a, "b": b},
    )


def beale(x0=(1.0, 1.4)) -> Problem:
    """Beale's function, minimum 0 at ``(3, 0.5)``; flat plateaus and sharp ridges."""
    cs = (1.5, 2.25, 2.625)

    def f(x):
        return sum((c - x[0] * (1 - x[1] ** (i + 1))) ** 2 for i, c in enumerate(cs))

    def grad(x):
        x, y = float(x[0]), float(x[1])
        gx = gy = 0.0
        for i, c in enumerate(cs):
            k = i + 1
            r = c - x * (1 - y ** k)
            gx += 2 * r * (-(1 - y ** k))
            gy += 2 * r * (x * k * y ** (k - 1))
        return np.array([gx, gy])

    return Problem(
        name="Beale", f=f, grad=grad, minimizer=np.array([3.0, 0.5]),
        x0=np.asarray(x0, dtype=float), xlim=(-0.5, 4.0), ylim=(-1.5, 2.0),
    )


def noisy_least_squares(n: int = 200, d: int = 2, noise: float = 0.5, condition: float = 10.0,
                        seed: int = 0):
    """A seeded linear-regression problem ``min_w 1/(2n) ||X w - y||^2``.

    The design is scaled so that the Hessian ``X^T X / n`` has condition number close to
    ``condition``. Returns ``(X, y, w_star)`` where ``w_star`` is the exact least-squares solution,
    so chapters can measure distance to the optimum without guessing it.
    """
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, d))
    Z -= Z.mean(axis=0)
    # Whiten, then impose the wanted spectrum so the condition number is exact.
    U, _, Vt = np.linalg.svd(Z, full_matrices=False)
    scales = np.sqrt(np.geomspace(1.0, 1.0 / condition, d) * n)
    X = U @ np.diag(scales) @ Vt
    w_true = rng.standard_normal(d)
    y = X @ w_true + noise * rng.standard_normal(n)
    w_star = np.linalg.lstsq(X, y, rcond=None)[0]
    return X, y, w_star


def digits(n_classes: int = 10, test_fraction: float = 0.25, seed: int = 0):
    """scikit-learn's bundled 8x8 digits (no download), standardized, split with a fixed seed.

    Returns ``(X_train, y_train, X_test, y_test)`` as float64/int64 NumPy arrays. Features are
    standardized with the training split's statistics (constant pixels are left at zero).
    """
    from sklearn.datasets import load_digits

    data = load_digits(n_class=n_classes)
    X = data.data.astype(np.float64)
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    mean = X[train].mean(axis=0)
    std = X[train].std(axis=0)
    std[std == 0] = 1.0
    X = (X - mean) / std
    return X[train], y[train], X[test], y[test]
