"""Every chapter reproduces its stored outputs under the scalar variant (see tests/portability.py).

One file per variant, so that pytest-xdist (`--dist loadfile`) runs the variants side by side.
"""
import pytest

from portability import NOTEBOOKS, check_notebook, check_variant_takes_effect

VARIANT = "scalar"


def test_variant_switches_the_kernels():
    check_variant_takes_effect(VARIANT)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_reproduces(notebook):
    check_notebook(notebook, VARIANT)
