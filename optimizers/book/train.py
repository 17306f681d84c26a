"""Small, seeded training runs for the chapters' experiments on real data.

The data is scikit-learn's bundled digits (:func:`optimizers.book.problems.digits`: no
download). Everything random (initialisation, minibatch order) is drawn from generators seeded by
the caller, so two runs with the same arguments give identical curves, and so does re-running a
chapter.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .problems import digits

__all__ = ["mlp", "TrainResult", "train_classifier"]


def mlp(sizes: Sequence[int], seed: int = 0, activation=torch.nn.Tanh,
        dtype=torch.float64) -> torch.nn.Sequential:
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]`` with seeded initialisation."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b, dtype=dtype))
        if i < len(sizes) - 2:
            layers.append(activation())
    model = torch.nn.Sequential(*layers)
    torch.random.set_rng_state(gen_state)
    return model


@dataclass
class TrainResult:
    """Per-step training loss (on the minibatch), per-epoch full-train loss and test accuracy."""

    step_loss: np.ndarray
    epoch_train_loss: np.ndarray
    epoch_test_accuracy: np.ndarray
    lrs: np.ndarray
    model: torch.nn.Module


@contextmanager
def _one_thread():
    """Run with one intra-op thread (tiny matrices: threads only add overhead and reduction-order
    noise), restoring the caller's setting afterwards. Usable as a decorator."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@_one_thread()
def train_classifier(make_optimizer: Callable, hidden: Sequence[int] = (32,), epochs: int = 10,
                     batch_size: int = 64, seed: int = 0, n_classes: int = 10,
                     make_scheduler: Callable | None = None, scheduler_per: str = "step",
                     dtype=torch.float64, data=None) -> TrainResult:
    """Train an MLP on the digits with cross-entropy and record what the chapters plot.

    Args:
        make_optimizer: ``params -> optimizer`` (e.g. ``lambda p: optimizers.Adam(p, lr=1e-3)``).
            It receives ``model.parameters()``; the model is built inside, so optimizers that need
            named parameter groups need a loop of their own (as in the training-practice chapter).
        hidden: hidden-layer widths.
        epochs, batch_size: the minibatch schedule (shuffled each epoch with a seeded generator).
        seed: seeds both the initialisation and the shuffling.
        make_scheduler: optional ``optimizer -> lr_scheduler``; stepped once per optimizer step
            (``scheduler_per="step"``) or once per epoch (``"epoch"``).
        data: optional ``(X_train, y_train, X_test, y_test)``; default :func:`digits`.
    """
    X_tr, y_tr, X_te, y_te = data if data is not None else digits(n_classes=n_classes, seed=seed)
    X_tr, X_te = (torch.as_tensor(a, dtype=dtype) for a in (X_tr, X_te))
    y_tr, y_te = (torch.as_tensor(a, dtype=torch.long) for a in (y_tr, y_te))
    model = mlp([X_tr.shape[1], *hidden, int(y_tr.max()) + 1], seed=seed, dtype=dtype)
    opt = make_optimizer(model.parameters())
    sched = make_scheduler(opt) if make_scheduler is not None else None
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    step_loss, epoch_loss, epoch_acc, lrs = [], [], [], []
    for _ in range(epochs):
        order = torch.as_tensor(rng.permutation(len(y_tr)))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(X_tr[idx]), y_tr[idx])
            loss.backward()
            lrs.append(float(opt.param_groups[0]["lr"]))
            opt.step()
            step_loss.append(loss.item())
            if sched is not None and scheduler_per == "step":
                sched.step()
        if sched is not None and scheduler_per == "epoch":
            sched.step()
        with torch.no_grad():
            epoch_loss.append(loss_fn(model(X_tr), y_tr).item())
            epoch_acc.append((model(X_te).argmax(1) == y_te).double().mean().item())
    return TrainResult(np.array(step_loss), np.array(epoch_loss), np.array(epoch_acc),
                       np.array(lrs), model)
