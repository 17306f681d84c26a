"""torch's own error inputs for the optimizers that carry them.

``optim_error_inputs_func_*`` in ``torch/testing/_internal/common_optimizers.py``
(transcribed in the catalogue as ``torch_error_inputs``, because that module
needs torch's test dependencies): our message matches torch's ``error_regex``,
and torch's class raises it too (so the transcription is right).

Everything else about these optimizers runs from the shared, catalogue-driven
tests: tests/test_optimizers.py (RAdam, Rprop, ASGD, Adafactor in
``CATALOGUE``; the construction-level tests also on SparseAdam and LBFGS),
tests/test_functional.py (the functional cores against torch's),
tests/test_properties.py (random problems against torch.optim), and the own
test files of SparseAdam and LBFGS.
"""

from __future__ import annotations

import pytest
import torch

from optim_catalogue import CATALOGUE, OWN_TESTS

NEW = [i for i in CATALOGUE + OWN_TESTS if i.torch_error_inputs]


def _params():
    return [torch.nn.Parameter(torch.randn(2, 3, dtype=torch.float64))]


def _torch_error_cases():
    return [
        pytest.param(info, kwargs, regex, id=f"{info.name}-{regex[:40]}")
        for info in NEW
        for kwargs, regex in info.torch_error_inputs
    ]


@pytest.mark.parametrize("info,kwargs,regex", _torch_error_cases())
def test_torch_error_inputs_raise_torch_phrase(info, kwargs, regex):
    with pytest.raises(ValueError, match=regex):
        info.ref_cls(_params(), **kwargs)
    with pytest.raises(ValueError, match=regex) as err:
        info.cls(_params(), **kwargs)
    assert "Invalid" in str(err.value) and "must" in str(err.value)  # the package's own form too


# torch's error inputs for the eight classic classes (``optim_error_inputs_func_sgd``,
# ``..._adagrad``, ``..._rmsprop``, ``..._adadelta``, ``..._adam``, ``..._adamw``,
# ``..._nadam``, ``..._adamax`` and ``get_error_inputs_for_all_optims``), transcribed:
# (class, kwargs, regex). Each must raise a ValueError matching torch's regex, from
# torch's class as from the package's, and the package's message keeps its own form.
_T = torch.tensor
CLASSIC_ERROR_INPUTS = [
    ("SGD", dict(lr=1e-2, momentum=-0.5), "Invalid momentum value: -0.5"),
    ("Adagrad", dict(lr=1e-2, lr_decay=-0.5), "Invalid lr_decay value: -0.5"),
    ("RMSprop", dict(lr=1e-2, momentum=-1.0), "Invalid momentum value: -1.0"),
    ("Adadelta", dict(lr=1e-2, rho=1.1), "Invalid rho value: 1.1"),
    ("Adamax", dict(lr=1e-2, betas=(0.0, 1.0)), "Invalid beta parameter at index 1: 1.0"),
    ("NAdam", dict(lr=1e-2, betas=(1.0, 0.0)), "Invalid beta parameter at index 0: 1.0"),
    ("NAdam", dict(lr=1e-2, momentum_decay=-0.2), "Invalid momentum_decay value: -0.2"),
] + [
    (name, kwargs, regex)
    for name in ("Adam", "AdamW")
    for kwargs, regex in [
        (dict(lr=1e-2, betas=(1.0, 0.0)), "Invalid beta parameter at index 0: 1.0"),
        (dict(lr=1e-2, weight_decay=-1), "Invalid weight_decay value: -1"),
        (dict(lr=_T(0.001), foreach=True),
         "lr as a Tensor is not supported for capturable=False and foreach=True"),
        (dict(lr=1e-2, betas=(0.9, _T(0.99))), "betas must be either both floats or both Tensors"),
        (dict(lr=1e-2, betas=(_T(0.9), 0.99)), "betas must be either both floats or both Tensors"),
        (dict(lr=1e-2, betas=(_T(0.9), _T(0.99)), foreach=True),
         r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True"),
        (dict(lr=_T([0.001, 0.001])), "Tensor lr must be 1-element"),
    ]
] + [
    (name, dict(lr=_T([0.001, 0.001])), "Tensor lr must be 1-element")
    for name in ("SGD", "Adagrad", "RMSprop", "Adadelta", "NAdam", "Adamax")
]


@pytest.mark.parametrize(
    "name,kwargs,regex",
    CLASSIC_ERROR_INPUTS,
    ids=[f"{n}-{r[:40]}" for n, _, r in CLASSIC_ERROR_INPUTS],
)
def test_classic_error_inputs_raise_torch_phrase(name, kwargs, regex):
    import optimizers

    with pytest.raises(ValueError, match=regex):
        getattr(torch.optim, name)(_params(), **kwargs)
    with pytest.raises(ValueError, match=regex) as err:
        getattr(optimizers, name)(_params(), **kwargs)
    assert "Invalid" in str(err.value) and "must" in str(err.value)


@pytest.mark.parametrize(
    "name", ["SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "NAdam", "Adamax"]
)
def test_classic_params_errors_carry_torch_phrase(name):
    """torch's ``get_error_inputs_for_all_optims``: a bare tensor is a TypeError with
    torch's phrase, duplicate parameters warn, and a parameter in two groups is refused."""
    import optimizers

    cls = getattr(optimizers, name)
    p = torch.nn.Parameter(torch.randn(1, 1))
    with pytest.raises(TypeError, match="params argument given to the optimizer should be an iterable of Tensors or dicts"):
        cls(p)
    with pytest.warns(UserWarning, match="a parameter group with duplicate parameters"):
        cls([p, p])
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        cls([{"params": p}, {"params": p}])
