"""The package as a user installs it: its distribution name, its typing marker, its contents."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_has_its_own_name_and_ships_py_typed(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("*.whl")
    # "optimizers" on the package index is an unrelated project: ours must never be confused with it.
    assert wheel.name.startswith("optimizers_that_run-")
    names = zipfile.ZipFile(wheel).namelist()
    assert "optimizers/py.typed" in names
    assert "optimizers/__init__.py" in names and "optimizers/book/__init__.py" in names
    assert "optimizers/book/charlm_corpus.txt" in names  # the char-level LM trains on it
    assert not [n for n in names if n.startswith(("tests/", "book/", "tools/", "benchmarks/"))]
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Name: optimizers-that-run" in metadata
    assert "Requires-Dist: torch>=2.3" in metadata


def test_every_exported_optimizer_is_in_the_one_catalogue():
    """A class the package exports is tested by the shared catalogue (CATALOGUE, OWN_TESTS, or
    MATRIX_ONLY for the matrix-only Muon), so no optimizer ships without the shared tests."""
    import torch

    import optimizers
    from optim_catalogue import CATALOGUE, MATRIX_ONLY, OWN_TESTS

    exported = {name for name in optimizers.__all__
                if isinstance(getattr(optimizers, name), type)
                and issubclass(getattr(optimizers, name), torch.optim.Optimizer)
                and name != "OptimizerBase"}
    catalogued = {info.cls.__name__ for info in CATALOGUE + OWN_TESTS + MATRIX_ONLY}
    assert exported - catalogued == set()
    assert catalogued - exported == set() and len(exported) >= 23
