r"""Validation messages that also carry ``torch.optim``'s own wording.

The package's validators (:mod:`optimizers._base`) name the hyperparameter,
the value and the allowed range: ``Invalid betas[0]: 1.0 (must be in [0, 1))``.
``torch.optim`` words the same refusal differently (``Invalid beta parameter at
index 0: 1.0``), and code or tests written against torch may match on its
phrase. :func:`torch_phrase` appends torch's sentence to the package's message,
so that one ``ValueError`` satisfies both: the optimizers added after the first
eight (RAdam, Rprop, ASGD, Adafactor, SparseAdam, LBFGS) validate through here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from ._base import _check_betas, _check_lr, _check_nonnegative, _check_range

__all__: list[str] = []


@contextmanager
def torch_phrase(phrase: str) -> Iterator[None]:
    """Re-raise a ``ValueError`` from the block with ``[torch.optim: phrase]`` appended."""
    try:
        yield
    except ValueError as err:
        raise ValueError(f"{err} [torch.optim: {phrase}]") from None


def check_lr(lr: Any) -> None:
    """:func:`~optimizers._base._check_lr` with torch's ``Invalid learning rate`` phrase."""
    phrase = "Tensor lr must be 1-element" if isinstance(lr, Tensor) and lr.numel() != 1 else (
        f"Invalid learning rate: {lr}"
    )
    with torch_phrase(phrase):
        _check_lr(lr)


def check_nonnegative(name: str, value: Any, torch_name: str | None = None) -> None:
    """``value >= 0``; torch's phrase is ``Invalid <torch_name> value: <value>``."""
    with torch_phrase(f"Invalid {torch_name or name} value: {value}"):
        _check_nonnegative(name, value)


def check_betas(betas: Any) -> tuple[Any, Any]:
    """:func:`~optimizers._base._check_betas` with torch's ``Invalid beta parameter at index i``."""
    if isinstance(betas, Sequence) and not isinstance(betas, (str, Tensor)) and len(betas) == 2:
        for i, b in enumerate(betas):
            with torch_phrase(f"Invalid beta parameter at index {i}: {b}"):
                _check_range(f"betas[{i}]", b, 0.0, 1.0, hi_closed=False)
    return _check_betas(betas)
