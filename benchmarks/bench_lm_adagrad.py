"""Time one LM-Adagrad step against an SVD of the d x k window, on the CPU.

Both implementations keep the last ``k = 10`` float32 gradients of one parameter
vector of ``d`` elements (``d`` = 1M and 10M) and compute the same update
``w -= lr * U (S^2 + eps)^{-1/2} U^T g``:

* **window SVD** (the baseline, the update computed literally from a thin SVD): append
  ``g`` to a list of the last ``k`` gradients, stack them as the columns of a
  ``d x k`` matrix, take its thin SVD with ``torch.linalg.svd(M,
  full_matrices=False)`` (the default CPU driver: ``driver="gesvda"``
  exists only on CUDA), then ``U @ ((U.T @ g) / sqrt(S^2 + eps))``;
* **optimizers.LMAdagrad** (default settings, ``history_size=10``): a ring
  buffer, one new row of a float64 ``k x k`` Gram matrix per step (``O(dk)``),
  a ``k x k`` eigendecomposition and one combination ``M a``.

Each implementation starts with a full window, then they are timed interleaved,
round-robin (LMAdagrad three steps per round, the SVD one), each step on a fresh
gradient from a small pool. Reported: best and median over rounds, the speed-up of the best times, and
the state memory. Before timing, one update of each is computed from the same
window and compared (they must agree to float32 precision).

Run from the repository root (about a minute on 2 cores)::

    python benchmarks/bench_lm_adagrad.py
    python benchmarks/bench_lm_adagrad.py --sizes 1000000 --rounds 3

It writes ``benchmarks/results/lm_adagrad_step_times.md``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import optimizers  # noqa: E402

try:  # the package's shared timing utilities, if present
    from bench_step import copy_bandwidth  # noqa: E402
except ImportError:  # pragma: no cover - fallback with the same definition
    def copy_bandwidth(device: str = "cpu", mib: int = 256, repeats: int = 7) -> float:
        """Best copy bandwidth in GB/s (bytes read + bytes written per second)."""
        src = torch.randn(mib * 2**20 // 4)
        dst = torch.empty_like(src)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - t0)
        return 2 * src.nbytes / best / 1e9

RESULTS = os.path.join(HERE, "results", "lm_adagrad_step_times.md")
K, LR, EPS = 10, 1e-3, 1e-6


class WindowSVD:
    """The update from an SVD of the d x k window, literally: a list of the last k gradients and a thin SVD."""

    def __init__(self, w: torch.Tensor, lr: float = LR, k: int = K, eps: float = EPS) -> None:
        self.w, self.lr, self.k, self.eps = w, lr, k, eps
        self.history: list[torch.Tensor] = []

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        self.history.append(g.clone())
        if len(self.history) > self.k:
            del self.history[0]
        M = torch.stack(self.history, dim=1)  # d x k
        U, S, _ = torch.linalg.svd(M, full_matrices=False)
        S = torch.sqrt(S**2 + self.eps)
        return U @ ((U.T @ g) / S)

    def step(self, g: torch.Tensor) -> None:
        self.w.sub_(self.direction(g), alpha=self.lr)

    def state_bytes(self) -> int:
        return sum(h.nbytes for h in self.history)


class Ours:
    def __init__(self, w: torch.Tensor) -> None:
        self.w = w.requires_grad_()
        self.opt = optimizers.LMAdagrad([self.w], lr=LR, history_size=K, eps=EPS)

    def step(self, g: torch.Tensor) -> None:
        self.w.grad = g
        self.opt.step()

    def state_bytes(self) -> int:
        return sum(t.nbytes for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t))


def check_same_update(d: int, seed: int = 0) -> float:
    """Relative difference of the two updates from the same window of k gradients."""
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(d, generator=gen) for _ in range(K)]
    svd, ours = WindowSVD(torch.zeros(d), lr=1.0), Ours(torch.zeros(d))
    for g in grads[:-1]:
        svd.direction(g)
        ours.step(g)
    before = ours.w.detach().clone()
    u_svd = svd.direction(grads[-1])
    ours.step(grads[-1])
    u_ours = (before - ours.w.detach()) / LR
    return float((u_ours - u_svd).norm() / u_svd.norm())


def bench(d: int, rounds: int, pool_size: int = 3, repeat: int = 3) -> dict:
    gen = torch.Generator().manual_seed(1)
    pool = [torch.randn(d, generator=gen) for _ in range(pool_size)]
    impls = {"window SVD": WindowSVD(torch.zeros(d)), "optimizers.LMAdagrad": Ours(torch.zeros(d))}
    # fill the windows (the baseline's list directly: its warm-up SVDs would cost minutes)
    impls["window SVD"].history = [pool[i % pool_size].clone() for i in range(K - 1)]
    for i in range(K):
        impls["optimizers.LMAdagrad"].step(pool[i % pool_size].clone())
    times: dict[str, list[float]] = {name: [] for name in impls}
    names = list(impls)
    for r in range(rounds):
        for name in names[r % 2:] + names[: r % 2]:  # alternate who goes first
            # the cheap step is timed `repeat` times per round: more samples for its best time
            for j in range(1 if name == "window SVD" else repeat):
                g = pool[(r + j) % pool_size].clone()
                gc.collect()
                t0 = time.perf_counter()
                impls[name].step(g)
                times[name].append(time.perf_counter() - t0)
    return {
        "d": d,
        "best": {n: min(t) for n, t in times.items()},
        "median": {n: statistics.median(t) for n, t in times.items()},
        "state": {n: impl.state_bytes() for n, impl in impls.items()},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--rounds", type=int, default=0, help="0: 7 rounds at 1M, 5 at 10M")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    torch.manual_seed(0)
    t_start = time.perf_counter()
    agree = check_same_update(100_000)
    print(f"same window, one update: |u_ours - u_svd| / |u_svd| = {agree:.1e}")
    bw = copy_bandwidth("cpu", mib=128, repeats=5)
    rows = []
    for d in sizes:
        rounds = args.rounds or (7 if d <= 2_000_000 else 5)
        res = bench(d, rounds)
        res["rounds"] = rounds
        rows.append(res)
        b, m = res["best"], res["median"]
        print(f"d={d:>9,}: window SVD best {b['window SVD'] * 1e3:8.1f} ms (median {m['window SVD'] * 1e3:8.1f}), "
              f"LMAdagrad best {b['optimizers.LMAdagrad'] * 1e3:7.1f} ms (median "
              f"{m['optimizers.LMAdagrad'] * 1e3:7.1f}), speed-up {b['window SVD'] / b['optimizers.LMAdagrad']:.1f}x")
    elapsed = time.perf_counter() - t_start
    if not args.no_write:
        write_markdown(rows, agree, bw, elapsed)
        print(f"wrote {os.path.relpath(RESULTS)}")


def write_markdown(rows: list[dict], agree: float, bw: float, elapsed: float) -> None:
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    lines = [
        "# LM-Adagrad step time: Gram route vs an SVD of the d x k window",
        "",
        "Written by `benchmarks/bench_lm_adagrad.py`. One parameter vector of d float32",
        f"elements, window k = {K}, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads,",
        f"{platform.processor() or platform.machine()}; copy bandwidth in this run {bw:.1f} GB/s.",
        "Times are per `step()` with a full window, best and median over interleaved rounds",
        "(the machine is shared: the medians swing; compare the best times).",
        "",
        f"Same window, one update: relative difference of the two updates {agree:.1e} (float32).",
        "",
        "| d | rounds (SVD steps) | window SVD best (ms) | window SVD median (ms) | LMAdagrad best (ms) | "
        "LMAdagrad median (ms) | speed-up (best) | state, window SVD (MB) | state, LMAdagrad (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b, m, s = r["best"], r["median"], r["state"]
        lines.append(
            f"| {r['d']:,} | {r['rounds']} | {b['window SVD'] * 1e3:.1f} | {m['window SVD'] * 1e3:.1f} | "
            f"{b['optimizers.LMAdagrad'] * 1e3:.1f} | {m['optimizers.LMAdagrad'] * 1e3:.1f} | "
            f"{b['window SVD'] / b['optimizers.LMAdagrad']:.1f}x | {s['window SVD'] / 1e6:.1f} | "
            f"{s['optimizers.LMAdagrad'] / 1e6:.1f} |"
        )
    lines += [
        "",
        "State: both keep the k gradients (k x d float32 = 4k bytes per parameter); LMAdagrad adds",
        "a float64 k x k Gram matrix and a step counter. The SVD route also allocates U (d x k) and",
        "the stacked d x k matrix at every step; the Gram route's temporaries are O(k^2) plus one",
        "d-vector and a 16384-column float64 buffer.",
        "",
        f"Total benchmark time: {elapsed:.0f} s.",
        "",
    ]
    with open(RESULTS, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
