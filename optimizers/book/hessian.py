r"""Diagonal curvature: exact diagonals and the two stochastic estimators Sophia uses.

For a loss :math:`f(\theta)` with Hessian :math:`H`, the chapter on Sophia needs
:math:`\operatorname{diag}(H)` without ever forming :math:`H`:

* **Hutchinson**: with :math:`u` a vector of independent random signs
  (Rademacher), :math:`\mathbb{E}[u \odot (Hu)] = \operatorname{diag}(H)`, since
  :math:`u_a (Hu)_a = H_{aa} + \sum_{b \ne a} H_{ab} u_a u_b` and the cross terms
  have mean 0; their variance is :math:`\sum_{b\ne a} H_{ab}^2`. One
  Hessian-vector product per sample.
* **Gauss-Newton-Bartlett (GNB)**: for a mean cross-entropy over :math:`B`
  examples with logits :math:`z_i(\theta)`, draw labels :math:`\hat y_i` from the
  model's own softmax :math:`p_i`, take the gradient :math:`\hat g` of the mean
  loss on those labels, and return :math:`B\, \hat g \odot \hat g`. Its
  expectation is the diagonal of the Gauss-Newton matrix
  :math:`G = \frac1B \sum_i J_i^\top (\operatorname{diag} p_i - p_i p_i^\top) J_i`
  (:math:`J_i = \partial z_i / \partial \theta`): by Bartlett's identity the
  per-example gradients have mean 0 under the model's labels, so the cross
  terms vanish, and their second moment is that matrix. One ordinary backward
  pass per sample; always non-negative. For a model linear in :math:`\theta`
  (softmax regression) :math:`G = H`.

The NumPy functions treat softmax regression (weights ``W`` of shape ``(d, K)``,
logits ``X @ W``, mean cross-entropy, no penalty) with every formula written
out; the torch functions treat any model given as logits of a flat parameter
vector (:func:`mlp_logits` is a small one), with exact diagonals from the full
Hessian and Jacobians (small problems only). Nothing here takes an optimizer step.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "softmax",
    "rademacher",
    "softmax_regression_grad",
    "softmax_regression_hvp",
    "softmax_regression_hessian_diagonal",
    "hutchinson_samples",
    "gnb_samples_softmax_regression",
    "mlp_init",
    "mlp_logits",
    "mean_cross_entropy",
    "hessian_diagonal_exact",
    "gauss_newton_diagonal_exact",
    "hutchinson_samples_torch",
    "gnb_samples_torch",
    "sample_labels",
]


# --------------------------------------------------------------------------- #
# NumPy: softmax regression                                                    #
# --------------------------------------------------------------------------- #


def softmax(Z: np.ndarray) -> np.ndarray:
    """Row-wise softmax along the last axis, shifted by the maximum for stability."""
    Z = Z - Z.max(axis=-1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(axis=-1, keepdims=True)


def rademacher(rng: np.random.Generator, shape) -> np.ndarray:
    """Independent random signs, +1 or -1 with probability 1/2 each (float64)."""
    return rng.integers(0, 2, size=shape).astype(np.float64) * 2.0 - 1.0


def softmax_regression_grad(X: np.ndarray, W: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gradient ``X^T (P - Y) / n`` of the mean cross-entropy of ``softmax(X W)`` at labels ``y``."""
    P = softmax(X @ W)
    P[np.arange(len(y)), y] -= 1.0
    return X.T @ P / len(y)


def softmax_regression_hvp(X: np.ndarray, W: np.ndarray, U: np.ndarray) -> np.ndarray:
    r"""Hessian-vector products of the mean cross-entropy: ``H u`` for ``u = U`` (shape ``(d, K)``).

    With :math:`P = \operatorname{softmax}(XW)` and :math:`Z_u = XU`, the
    directional derivative of the gradient :math:`X^\top(P - Y)/n` along
    :math:`U` is :math:`X^\top\big(P \odot (Z_u - \langle P, Z_u\rangle_{\text{row}})\big)/n`.
    ``U`` may carry leading batch axes, ``(S, d, K)``: one product per slice.
    """
    P = softmax(X @ W)
    Zu = X @ U  # (..., n, K)
    inner = (P * Zu).sum(axis=-1, keepdims=True)
    return np.swapaxes(X, 0, 1) @ (P * (Zu - inner)) / X.shape[0]


def softmax_regression_hessian_diagonal(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    r"""Exact :math:`\operatorname{diag}(H)`: :math:`H_{(a,k),(a,k)} = \frac1n\sum_i x_{ia}^2\, p_{ik}(1-p_{ik})`."""
    P = softmax(X @ W)
    return (X**2).T @ (P * (1.0 - P)) / X.shape[0]


def hutchinson_samples(hvp: Callable[[np.ndarray], np.ndarray], shape, n_samples: int,
                       rng: np.random.Generator) -> np.ndarray:
    """``n_samples`` Hutchinson estimates ``u * hvp(u)``, ``u`` Rademacher of ``shape``.

    ``hvp`` receives all probe vectors at once, shape ``(n_samples, *shape)``,
    and must return the products in the same shape.
    """
    U = rademacher(rng, (n_samples, *shape))
    return U * hvp(U)


def gnb_samples_softmax_regression(X: np.ndarray, W: np.ndarray, n_samples: int,
                                   rng: np.random.Generator) -> np.ndarray:
    r"""``n_samples`` GNB estimates :math:`B\,\hat g\odot\hat g` for softmax regression on the batch ``X``.

    Each sample draws one label per row of ``X`` (:math:`B` rows) from the
    model's softmax, by inverse-CDF sampling of a uniform, and uses the gradient
    :math:`\hat g = X^\top(P - \hat Y)/B` of the mean loss on those labels.
    """
    B = X.shape[0]
    P = softmax(X @ W)
    cdf = np.cumsum(P, axis=1)
    cdf[:, -1] = 1.0
    out = np.empty((n_samples, *W.shape))
    for s in range(n_samples):
        u = rng.random((B, 1))
        y_hat = (u > cdf).sum(axis=1)  # the first class whose cumulative probability reaches u
        R = P.copy()
        R[np.arange(B), y_hat] -= 1.0
        g_hat = X.T @ R / B
        out[s] = B * g_hat * g_hat
    return out


# --------------------------------------------------------------------------- #
# torch: any model given as logits(theta) on a flat parameter vector           #
# --------------------------------------------------------------------------- #


def mlp_init(sizes: Sequence[int], seed: int = 0):
    """A flat float64 parameter vector for :func:`mlp_logits` (weights scaled by 1/sqrt(fan-in), seeded)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    parts = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        parts.append(torch.randn(fan_in * fan_out, generator=gen, dtype=torch.float64) / fan_in**0.5)
        parts.append(torch.zeros(fan_out, dtype=torch.float64))
    return torch.cat(parts)


def mlp_logits(theta, X, sizes: Sequence[int]):
    """Logits of a tanh MLP with layer sizes ``sizes`` whose weights and biases are read from ``theta``."""
    import torch

    h, offset = X, 0
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        W = theta[offset:offset + fan_in * fan_out].reshape(fan_in, fan_out)
        offset += fan_in * fan_out
        b = theta[offset:offset + fan_out]
        offset += fan_out
        h = h @ W + b
        if i < len(sizes) - 2:
            h = torch.tanh(h)
    return h


def mean_cross_entropy(logits, y):
    """The mean cross-entropy of ``logits`` at integer labels ``y``."""
    import torch

    return torch.nn.functional.cross_entropy(logits, y)


def hessian_diagonal_exact(loss_fn: Callable, theta):
    """``diag(H)`` of ``loss_fn(theta)`` from the full Hessian (small problems only)."""
    import torch

    return torch.autograd.functional.hessian(loss_fn, theta).diagonal().clone()


def gauss_newton_diagonal_exact(logits_fn: Callable, theta):
    r"""Exact :math:`\operatorname{diag}(G)`, :math:`G = \frac1n\sum_i J_i^\top(\operatorname{diag}p_i - p_ip_i^\top)J_i`,
    for the mean cross-entropy of ``logits_fn(theta)`` (shape ``(n, K)``), from the full Jacobian."""
    import torch

    with torch.no_grad():
        P = torch.softmax(logits_fn(theta), dim=-1)
    J = torch.autograd.functional.jacobian(logits_fn, theta)  # (n, K, P)
    A = torch.diag_embed(P) - P[:, :, None] * P[:, None, :]  # the Hessian of the loss in the logits
    return torch.einsum("nka,nkl,nla->a", J, A, J) / P.shape[0]


def hutchinson_samples_torch(loss_fn: Callable, theta, n_samples: int, generator):
    """``n_samples`` Hutchinson estimates ``u * (H u)`` by double backward (Rademacher ``u``, seeded)."""
    import torch

    x = theta.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(loss_fn(x), x, create_graph=True)
    out = torch.empty(n_samples, x.numel(), dtype=x.dtype)
    for s in range(n_samples):
        u = torch.randint(0, 2, x.shape, generator=generator).to(x.dtype) * 2 - 1
        (hu,) = torch.autograd.grad(g, x, grad_outputs=u, retain_graph=True)
        out[s] = u * hu
    return out


def sample_labels(logits, generator):
    """One label per row drawn from ``softmax(logits)`` (probabilities in float64, seeded).

    ``generator`` is a CPU generator: the probabilities are sampled on the CPU and the labels
    returned on the device of ``logits``.
    """
    import torch

    probs = torch.softmax(logits.detach().to(torch.float64), dim=-1).cpu()
    labels = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return labels.reshape(probs.shape[:-1]).to(logits.device)


def gnb_samples_torch(logits_fn: Callable, theta, n_samples: int, generator):
    r"""``n_samples`` GNB estimates :math:`B\,\hat g\odot\hat g`, labels sampled from the model (seeded)."""
    import torch

    x = theta.detach().clone().requires_grad_()
    logits = logits_fn(x)
    B = logits.shape[0]
    out = torch.empty(n_samples, x.numel(), dtype=x.dtype)
    for s in range(n_samples):
        y_hat = sample_labels(logits, generator)
        (g_hat,) = torch.autograd.grad(mean_cross_entropy(logits, y_hat), x, retain_graph=True)
        out[s] = B * g_hat * g_hat
    return out
