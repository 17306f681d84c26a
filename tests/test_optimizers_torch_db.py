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
