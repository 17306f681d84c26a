"""Re-execute every chapter under another CPU's kernels and compare with the stored outputs.

The notebooks are executed once, on one machine, and their outputs are committed; the test
command then re-executes them under strict nbval on whatever machine runs it. Vectorised kernels
give results that differ in the last bits between CPUs (AVX-512, AVX2, none), so an output that
depends on those bits passes on one machine and fails on another. This module makes a single
machine behave like the others:

* ``scalar``: torch's scalar kernels (``ATEN_CPU_CAPABILITY=default``), MKL's conditional
  numerical reproducibility path (``MKL_CBWR=COMPATIBLE``: different BLAS bits from the default
  path on every CPU), NumPy without any of its dispatched SIMD features (SSE baseline only), and
  OpenBLAS's generic x86-64 kernels (``OPENBLAS_CORETYPE=Prescott``; NumPy's and SciPy's BLAS);
* ``avx2``: torch's AVX2 kernels, NumPy without its AVX-512 features and OpenBLAS's Haswell
  kernels, which is what an AVX2-only machine runs. It is skipped where the machine has no AVX-512, because there the
  normal run already is this variant.

Each notebook is re-executed in a separate pytest process with the variant's environment (the
kernel inherits it), with exactly the options of the normal run: strict nbval, the same
sanitizer, nothing ignored.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tools import book

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = [nb for _, nb in book.chapter_pairs()]


def _numpy_dispatched() -> list[str]:
    from numpy._core._multiarray_umath import __cpu_dispatch__

    return list(__cpu_dispatch__)


def variant_env(name: str) -> dict[str, str]:
    """The environment variables that make this machine compute like the named kind of CPU."""
    dispatched = _numpy_dispatched()
    if name == "scalar":
        return {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE",
                "NPY_DISABLE_CPU_FEATURES": " ".join(dispatched), "OPENBLAS_CORETYPE": "Prescott"}
    if name == "avx2":
        wide = [f for f in dispatched if "AVX512" in f or f == "X86_V4"]
        return {"ATEN_CPU_CAPABILITY": "avx2", "NPY_DISABLE_CPU_FEATURES": " ".join(wide),
                "OPENBLAS_CORETYPE": "Haswell"}
    raise ValueError(f"unknown variant {name!r}")


def skip_reason(name: str) -> str | None:
    """Why the variant cannot (or need not) run here, or None."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the {name} variant emulates x86-64 CPUs; this machine is {platform.machine()}"
    if name == "avx2":
        import torch

        if torch.backends.cpu.get_cpu_capability() != "AVX512":
            return "no AVX-512 here: the normal run already uses the AVX2 (or scalar) kernels"
    return None


def run_nbval(notebook: Path, name: str) -> subprocess.CompletedProcess:
    """Strict nbval on one notebook in a fresh pytest process under the variant's environment."""
    env = {**os.environ, **variant_env(name)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", str(notebook.relative_to(ROOT))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def check_notebook(notebook: Path, name: str) -> None:
    reason = skip_reason(name)
    if reason:
        pytest.skip(reason)
    result = run_nbval(notebook, name)
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-60:])
    assert result.returncode == 0, (
        f"{notebook.name} under the {name} variant ({variant_env(name)}) does not reproduce its "
        f"stored outputs:\n{tail}")


def check_variant_takes_effect(name: str) -> None:
    """Prove the environment really switches the kernels (else the check could not fail)."""
    reason = skip_reason(name)
    if reason:
        pytest.skip(reason)
    probe = ("import json, torch, threadpoolctl\n"
             "import numpy._core._multiarray_umath as m\n"
             "blas = [i.get('architecture') for i in threadpoolctl.threadpool_info()\n"
             "        if i['internal_api'] == 'openblas']\n"
             "print(json.dumps([torch.backends.cpu.get_cpu_capability(),\n"
             "                  [k for k in m.__cpu_dispatch__ if m.__cpu_features__.get(k)], blas]))")
    out = subprocess.run([sys.executable, "-W", "error::ImportWarning", "-c", probe],
                         env={**os.environ, **variant_env(name)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr     # NumPy warns (here: fails) on a feature it cannot disable
    capability, numpy_features, blas = json.loads(out.stdout)
    assert blas, "NumPy's OpenBLAS not found"
    if name == "scalar":
        assert (capability, numpy_features) == ("DEFAULT", [])
        assert set(blas) <= {"Prescott", "Katmai"}, blas   # OpenBLAS names its generic kernels Katmai
    else:
        assert capability == "AVX2"
        assert not [f for f in numpy_features if "AVX512" in f or f == "X86_V4"]
        assert set(blas) == {"Haswell"}, blas
