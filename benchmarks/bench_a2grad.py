"""Step time of optimizers.A2Grad against torch-optimizer's A2GradUni/Inc/Exp.

Uses the shared machinery of ``benchmarks/bench_step.py``: the ``large`` parameter set (a
transformer-like list of shapes, about 10.3M float32 parameters in 172 tensors), gradients
refilled from a fixed pool before every timed step, all implementations timed interleaved
(round-robin, rotating order) in one process, best and median over rounds.

Run from the repository root (about a minute on 2 cores)::

    python benchmarks/bench_a2grad.py            # writes benchmarks/results/a2grad_step_times.md
    python benchmarks/bench_a2grad.py --device cuda

torch-optimizer has only the per-tensor granularity; ``optimizers.A2Grad(per_coordinate=False)``
computes the same trajectory, so those rows are the like-for-like comparison. The per-coordinate
rows (the paper's method, one more state tensor) are listed for their cost.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_step import (  # noqa: E402
    PARAM_SETS,
    RESULTS_DIR,
    BenchEntry,
    bench_entry,
    copy_bandwidth,
    grad_pool,
)

import optimizers  # noqa: E402  (bench_step puts the repository root on sys.path)

try:
    import torch_optimizer
except ImportError:  # pragma: no cover
    torch_optimizer = None

# minimal traffic per float32 parameter: p rw, g r, grad_avg rw, x rw (+ v rw per coordinate)
BYTES_PER_TENSOR_FORM = 28
BYTES_PER_COORDINATE_FORM = 36


def entries() -> list[tuple[str, BenchEntry]]:
    """One entry per variant: torch-optimizer's class and our implementations of it."""
    out = []
    for variant, ref in (("uni", "A2GradUni"), ("inc", "A2GradInc"), ("exp", "A2GradExp")):
        ref_cls = getattr(torch_optimizer, ref)
        ours = {
            "ours per tensor, default": (
                lambda v: lambda ps: optimizers.A2Grad(ps, variant=v, per_coordinate=False))(variant),
            "ours per tensor, foreach": (
                lambda v: lambda ps: optimizers.A2Grad(ps, variant=v, per_coordinate=False,
                                                       foreach=True))(variant),
        }
        if variant == "uni":
            ours["ours per coordinate, default"] = lambda ps: optimizers.A2Grad(ps)
            ours["ours per coordinate, foreach"] = lambda ps: optimizers.A2Grad(ps, foreach=True)
        out.append((variant, BenchEntry(
            name=f"A2Grad {variant}",
            ours=ours,
            references={f"torch_optimizer.{ref}": lambda ps, c=ref_cls: c(ps)},
            bytes_per_param=BYTES_PER_TENSOR_FORM,
            baseline=f"torch_optimizer.{ref}",
        )))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (1, as bench_step.py, on the shared 2-core machine)")
    parser.add_argument("--out", default=os.path.join(RESULTS_DIR, "a2grad_step_times.md"))
    args = parser.parse_args(argv)
    if torch_optimizer is None:
        raise SystemExit("torch_optimizer is not installed")
    if args.threads:
        torch.set_num_threads(args.threads)

    shapes = PARAM_SETS["large"]
    n_params = sum(torch.Size(s).numel() for s in shapes)
    pool = grad_pool(shapes, device=args.device)
    started = time.time()
    load_before = os.getloadavg()[0]
    bw = copy_bandwidth(args.device)
    results = []
    for variant, entry in entries():
        stats = bench_entry(entry, shapes, pool, args.rounds, args.device)
        results.append((variant, entry, stats))
        print(entry.name + ": " + ", ".join(f"{k} {1e3 * v['median']:.1f}" for k, v in stats.items())
              + " ms (median)", flush=True)
    bw = max(bw, copy_bandwidth(args.device))
    load_after = os.getloadavg()[0]
    elapsed = time.time() - started

    lines = [
        "# A2Grad step time against torch-optimizer",
        "",
        f"Written by `python benchmarks/bench_a2grad.py` ({elapsed:.0f} s). Device: {args.device} "
        f"({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), torch {torch.__version__}, "
        f"torch-optimizer {getattr(torch_optimizer, '__version__', '?')}, Python {platform.python_version()}. "
        f"Parameter set `large` of `bench_step.py`: {n_params:,} float32 parameters in {len(shapes)} "
        f"tensors. {args.rounds} interleaved rounds per variant (gradients refilled before every "
        f"timed step, one warm-up step first). Copy bandwidth {bw:.1f} GB/s (read + write); load "
        f"average {load_before:.1f} before, {load_after:.1f} after (shared machine: compare rows of "
        "one run).",
        "",
        "*speed-up* is torch-optimizer's median step time over this row's (same variant). "
        "*eff. GB/s* is the minimal memory traffic of the update over the best time: "
        f"{BYTES_PER_TENSOR_FORM} bytes per parameter per tensor (parameter rw, gradient r, two state "
        f"tensors rw), {BYTES_PER_COORDINATE_FORM} per coordinate (and v rw).",
        "",
        "| variant | implementation | best ms | median ms | speed-up (median) | eff. GB/s | state B/param |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for variant, entry, stats in results:
        base = stats[entry.baseline]["median"]
        for label, st in stats.items():
            nbytes = BYTES_PER_COORDINATE_FORM if "per coordinate" in label else BYTES_PER_TENSOR_FORM
            lines.append(
                f"| {variant} | {label} | {1e3 * st['best']:.1f} | {1e3 * st['median']:.1f} | "
                f"{base / st['median']:.2f}x | {nbytes * n_params / st['best'] / 1e9:.1f} | "
                f"{st['state_bytes_per_param']:.2f} |"
            )
    lines += [
        "",
        "`ours ... default` is the single-tensor path on CPU (the package follows torch.optim's rule: "
        "foreach by default only on accelerators) and the foreach path on CUDA. torch-optimizer "
        "keeps v_k as a Python float and calls `.item()` on every tensor at every step; on CPU that "
        "costs little, on CUDA it is one device synchronisation per tensor per step, which "
        "`optimizers.A2Grad` never does.",
    ]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
