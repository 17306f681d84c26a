"""Time one optimizer step of every optimizer in the package against torch.optim.

For each entry of :data:`REGISTRY` and each parameter set, every implementation
(ours: single-tensor, default, fused where torch has a kernel; torch: for-loop,
foreach, fused) gets its own copy of the parameters and gradients and takes one
warm-up step (which creates the state). Then the implementations are timed
**interleaved** (round-robin, in a new random order each round): before each timed
step the gradients are refilled from a fixed random pool (so they are not
cache-hot, as after a backward pass), then one ``opt.step()`` is timed. Reported
are the best and the median over rounds.

Alongside: the optimizer state's bytes per parameter, and the effective memory
bandwidth of the step (the minimal memory traffic of the update, e.g. 28 bytes
per float32 parameter for Adam: parameter read+write, gradient read, two
moments read+write) against the copy bandwidth measured in the same run
(``dst.copy_(src)`` on 256 MiB buffers, counting read+write).

Parameter sets:

* ``large``: a transformer-like list of shapes, about 10.3M float32 parameters
  in 172 tensors (token and position embeddings, 14 blocks of attention + MLP
  weights, biases and LayerNorms);
* ``small``: the same architecture at width 24: about 150k parameters in 244
  tensors, where per-tensor overhead dominates.

Run from the repository root::

    python benchmarks/bench_step.py            # about 2-3 minutes on 2 cores
    python benchmarks/bench_step.py --quick    # fewer rounds
    python benchmarks/bench_step.py --only Adam,SGD --sets small

It writes ``benchmarks/results/step_times.md`` and ``step_times.csv``.

To add an optimizer, append a :class:`BenchEntry` to :data:`REGISTRY` (or call
:func:`register`): a name, the factories of our implementations and those of
the references, keyed by a label, and the minimal bytes moved per parameter::

    register(BenchEntry(
        name="A2Grad",
        ours={"ours default": lambda ps: optimizers.A2Grad(ps)},
        references={"torch_optimizer": lambda ps: torch_optimizer.A2GradUni(ps)},
        bytes_per_param=28,
        baseline="torch_optimizer",
    ))
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import optimizers  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

Factory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


# --------------------------------------------------------------------------- #
# Registry                                                                     #
# --------------------------------------------------------------------------- #


@dataclass
class BenchEntry:
    """One optimizer to benchmark.

    Attributes:
        name: shown in the tables.
        ours: label -> factory ``f(params) -> optimizer`` for our implementations.
        references: label -> factory for the reference implementations.
        bytes_per_param: minimal memory traffic of one step per float32
            parameter (reads + writes of parameter, gradient and state).
        baseline: the reference label that "ours default" is compared with
            (torch.optim's default path on the device, if None).
        pairs: (ours label, reference label) pairs whose ratio is reported.
        sets: the parameter sets it runs on (a method whose step is far from
            memory-bound, such as Shampoo's root computations, only on ``small``).
        note: shown under the tables (what the entry's step covers).
    """

    name: str
    ours: dict[str, Factory]
    references: dict[str, Factory]
    bytes_per_param: float
    baseline: str | None = None
    pairs: list[tuple[str, str]] = field(default_factory=list)
    sets: tuple[str, ...] = ("large", "small")
    note: str = ""


REGISTRY: list[BenchEntry] = []


def register(entry: BenchEntry) -> BenchEntry:
    REGISTRY.append(entry)
    return entry


def torch_optim_entry(name: str, kwargs: dict, bytes_per_param: float, fused: bool = False) -> BenchEntry:
    """Entry for an optimizer that ``torch.optim`` also has (same class name)."""
    ours_cls, ref_cls = getattr(optimizers, name), getattr(torch.optim, name)
    ours: dict[str, Factory] = {
        "ours single": lambda ps: ours_cls(ps, **kwargs, foreach=False),
        "ours foreach": lambda ps: ours_cls(ps, **kwargs, foreach=True),
        "ours default": lambda ps: ours_cls(ps, **kwargs),
    }
    refs: dict[str, Factory] = {
        "torch for-loop": lambda ps: ref_cls(ps, **kwargs, foreach=False),
        "torch foreach": lambda ps: ref_cls(ps, **kwargs, foreach=True),
    }
    pairs = [("ours single", "torch for-loop"), ("ours foreach", "torch foreach")]
    if fused:
        ours["ours fused"] = lambda ps: ours_cls(ps, **kwargs, fused=True)
        refs["torch fused"] = lambda ps: ref_cls(ps, **kwargs, fused=True)
        pairs.append(("ours fused", "torch fused"))
    return BenchEntry(name, ours, refs, bytes_per_param, baseline=None, pairs=pairs)


# bytes per float32 parameter: 4 per tensor read or written
register(torch_optim_entry("SGD", dict(lr=1e-3, momentum=0.9), 20, fused=True))  # p rw, g r, buf rw
register(torch_optim_entry("Adagrad", dict(lr=1e-2), 20, fused=True))  # p rw, g r, sum rw
register(torch_optim_entry("RMSprop", dict(lr=1e-3), 20))  # p rw, g r, v rw
register(torch_optim_entry("Adadelta", dict(lr=1.0), 28))  # p rw, g r, v rw, u rw
register(torch_optim_entry("Adam", dict(lr=1e-3), 28, fused=True))  # p rw, g r, m rw, v rw
register(torch_optim_entry("AdamW", dict(lr=1e-3), 28, fused=True))
register(torch_optim_entry("NAdam", dict(lr=1e-3), 28))
register(torch_optim_entry("Adamax", dict(lr=1e-3), 28))  # p rw, g r, m rw, u rw
register(torch_optim_entry("RAdam", dict(lr=1e-3), 28))  # p rw, g r, m rw, v rw
register(torch_optim_entry("Rprop", dict(lr=1e-3), 28))  # p rw, g r, prev rw, step size rw
register(torch_optim_entry("ASGD", dict(lr=1e-3), 20))  # p rw, g r, ax rw
# Adafactor: the factored second moment is O(rows + cols) per matrix, so its traffic is the
# parameter, the gradient and (for vectors) a full second moment: about 12 bytes per parameter.
register(torch_optim_entry("Adafactor", dict(lr=1e-2), 12))


def _reference_entry(name: str, ours_cls, ref_label: str, ref_factory: Factory, kwargs: dict,
                     bytes_per_param: float, foreach: bool = True, sets=("large", "small"),
                     note: str = "") -> BenchEntry:
    """Entry for an optimizer whose reference is a published implementation (not torch.optim)."""
    ours: dict[str, Factory] = {"ours default": lambda ps: ours_cls(ps, **kwargs)}
    if foreach:
        ours["ours single"] = lambda ps: ours_cls(ps, **kwargs, foreach=False)
        ours["ours foreach"] = lambda ps: ours_cls(ps, **kwargs, foreach=True)
    return BenchEntry(name, ours, {ref_label: ref_factory}, bytes_per_param, baseline=ref_label,
                      sets=sets, note=note)


def _hidden_matrices(ps):
    """The 2-D weights of the blocks (not the two embeddings): what Muon is meant for."""
    return [p for p in ps if p.ndim == 2][2:]


def _register_published() -> None:
    import lion_pytorch
    import sophia_opt
    import torch_optimizer

    register(_reference_entry(
        "Lion", optimizers.Lion, "lion-pytorch",
        lambda ps: lion_pytorch.Lion(ps, lr=1e-4), dict(lr=1e-4), 20))  # p rw, g r, m rw
    register(_reference_entry(
        "Yogi", optimizers.Yogi, "torch_optimizer",
        lambda ps: torch_optimizer.Yogi(ps, lr=1e-2), dict(lr=1e-2), 28))
    register(_reference_entry(
        "SophiaG", optimizers.SophiaG, "sophia-opt",
        lambda ps: sophia_opt.SophiaG(ps, lr=1e-4), dict(lr=1e-4), 24,  # p rw, g r, m rw, h r
        note="SophiaG: the step only (the Hessian estimate every k steps costs an extra backward "
             "pass, which is not an optimizer step)."))
    muon_note = ("Muon: steps the blocks' 2-D weights only (about 94% of the large set's parameters; "
                 "embeddings, biases and norms go to AdamW in practice); its Newton-Schulz "
                 "iteration is matrix multiplications, so eff. GB/s says little about it.")
    register(BenchEntry(
        "Muon", {"ours default": lambda ps: optimizers.Muon(_hidden_matrices(ps), lr=1e-3)},
        {"torch default": lambda ps: torch.optim.Muon(_hidden_matrices(ps), lr=1e-3)},
        20, baseline="torch default", note=muon_note))
    for name in ("Shampoo", "SOAP"):
        register(BenchEntry(
            name, {"ours default": lambda ps, c=getattr(optimizers, name): c(ps, lr=1e-3)},
            {"torch.optim.AdamW (for scale)": lambda ps: torch.optim.AdamW(ps, lr=1e-3)},
            28, baseline="torch.optim.AdamW (for scale)", sets=("small",),
            note=f"{name}: no published implementation installs here without another torch; "
                 "the ratio is against torch.optim.AdamW's default step, for scale. Small set only: "
                 "its eigendecompositions, not memory traffic, set the cost."))


_register_published()


# --------------------------------------------------------------------------- #
# Parameter sets                                                               #
# --------------------------------------------------------------------------- #


def transformer_shapes(d: int, layers: int, vocab: int, ctx: int) -> list[tuple[int, ...]]:
    """Shapes of a GPT-like model: embeddings, ``layers`` blocks, final LayerNorm."""
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [
            (d,), (d,),  # LayerNorm 1
            (3 * d, d), (3 * d,),  # qkv projection
            (d, d), (d,),  # output projection
            (d,), (d,),  # LayerNorm 2
            (4 * d, d), (4 * d,),  # MLP up
            (d, 4 * d), (d,),  # MLP down
        ]
    return shapes + [(d,), (d,)]


PARAM_SETS = {
    "large": transformer_shapes(d=240, layers=14, vocab=2048, ctx=256),  # ~10.3M in 172 tensors
    "small": transformer_shapes(d=24, layers=20, vocab=256, ctx=64),  # ~150k in 244 tensors
}


def make_params(shapes, dtype=torch.float32, device="cpu", seed=0):
    """Leaf tensors of the given shapes with ``.grad`` allocated (contents set later)."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = (0.02 * torch.randn(s, generator=gen, dtype=dtype)).to(device).requires_grad_()
        p.grad = torch.empty_like(p)
        params.append(p)
    return params


def grad_pool(shapes, dtype=torch.float32, device="cpu", seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(1e-3 * torch.randn(s, generator=gen, dtype=dtype)).to(device) for s in shapes]


# --------------------------------------------------------------------------- #
# Measurements                                                                 #
# --------------------------------------------------------------------------- #


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: str = "cpu", mib: int = 256, repeats: int = 7) -> float:
    """Best copy bandwidth in GB/s (bytes read + bytes written per second)."""
    n = mib * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def state_bytes(opt: torch.optim.Optimizer) -> int:
    total = 0
    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
    return total


def torch_default_label(device: str) -> str:
    """The label of torch.optim's default path for plain float tensors on ``device``."""
    from torch.optim.optimizer import _default_to_fused_or_foreach

    probe = [torch.zeros(1, device=device)]
    _, foreach = _default_to_fused_or_foreach(probe, differentiable=False, use_fused=False)
    return "torch foreach" if foreach else "torch for-loop"


def bench_entry(entry: BenchEntry, shapes, pool, rounds: int, device: str) -> dict[str, dict]:
    """Interleaved timing of all implementations of one entry; returns label -> stats."""
    impls = {**entry.ours, **entry.references}
    runs = {}
    for label, factory in impls.items():
        params = make_params(shapes, device=device)
        torch._foreach_copy_([p.grad for p in params], pool)
        opt = factory(params)
        opt.step()  # warm-up: creates the state
        runs[label] = (params, opt)
    labels = list(runs)
    times: dict[str, list[float]] = {label: [] for label in labels}
    rng = random.Random(0)
    for _ in range(rounds):
        # a fresh random order every round: no implementation always runs
        # right after the same other one (whose data would fill the caches)
        order = rng.sample(labels, len(labels))
        for label in order:
            params, opt = runs[label]
            torch._foreach_copy_([p.grad for p in params], pool)  # fresh, cache-cold gradients
            _sync(device)
            t0 = time.perf_counter()
            opt.step()
            _sync(device)
            times[label].append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in runs[labels[0]][0])
    out = {}
    for label in labels:
        out[label] = dict(
            best=min(times[label]),
            median=statistics.median(times[label]),
            times=times[label],
            state_bytes_per_param=state_bytes(runs[label][1]) / n_params,
        )
    del runs
    gc.collect()
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about 1 minute)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds for the large set")
    parser.add_argument("--only", default=None, help="comma-separated optimizer names")
    parser.add_argument("--sets", default="large,small", help="comma-separated parameter sets")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch.set_num_threads (default 1: on a shared 2-core machine a second OpenMP "
        "thread makes steps slower and erratic; 0 keeps torch's default)",
    )
    parser.add_argument("--out", default=RESULTS_DIR)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    rounds_large = args.rounds or (3 if args.quick else 15)
    rounds = {"large": rounds_large, "small": 10 * rounds_large}
    entries = [e for e in REGISTRY if args.only is None or e.name in args.only.split(",")]
    sets = args.sets.split(",")
    default_ref = torch_default_label(args.device)

    started = time.time()
    load_before = os.getloadavg()
    bw_before = copy_bandwidth(args.device)
    print(f"copy bandwidth {bw_before:.1f} GB/s; load average {load_before[0]:.1f}", flush=True)

    rows = []
    for set_name in sets:
        shapes = PARAM_SETS[set_name]
        n_params = sum(torch.Size(s).numel() for s in shapes)
        pool = grad_pool(shapes, device=args.device)
        for entry in (e for e in entries if set_name in e.sets):
            stats = bench_entry(entry, shapes, pool, rounds[set_name], args.device)
            for label, st in stats.items():
                eff = entry.bytes_per_param * n_params / st["best"] / 1e9
                rows.append(dict(
                    param_set=set_name, n_params=n_params, n_tensors=len(shapes),
                    optimizer=entry.name, implementation=label,
                    best_ms=1e3 * st["best"], median_ms=1e3 * st["median"],
                    bytes_moved_per_param=entry.bytes_per_param, effective_gbps=eff,
                    state_bytes_per_param=st["state_bytes_per_param"],
                    _times=st["times"],
                ))
            line = ", ".join(f"{label} {1e3 * st['best']:.2f}" for label, st in stats.items())
            print(f"[{set_name}] {entry.name}: {line} ms", flush=True)

    bw_after = copy_bandwidth(args.device)
    load_after = os.getloadavg()
    copy_bw = max(bw_before, bw_after)
    for row in rows:
        row["copy_gbps"] = copy_bw
        row["pct_of_copy_bw"] = 100 * row["effective_gbps"] / copy_bw
    elapsed = time.time() - started

    os.makedirs(args.out, exist_ok=True)
    _write_csv(os.path.join(args.out, "step_times.csv"), rows)
    meta = dict(
        device=args.device, cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
        threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(),
        bw_before=bw_before, bw_after=bw_after, load_before=load_before, load_after=load_after,
        rounds=rounds, elapsed=elapsed, default_ref=default_ref,
    )
    _write_markdown(os.path.join(args.out, "step_times.md"), rows, entries, sets, meta)
    print(f"wrote {args.out}/step_times.md and step_times.csv in {elapsed:.0f} s", flush=True)


# --------------------------------------------------------------------------- #
# Reports                                                                      #
# --------------------------------------------------------------------------- #


def _write_csv(path: str, rows: list[dict]) -> None:
    fields = [k for k in rows[0] if not k.startswith("_")]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{row[k]:.4g}" if isinstance(row[k], float) else row[k]) for k in fields})


def _write_markdown(path: str, rows: list[dict], entries: list[BenchEntry], sets: list[str], meta: dict) -> None:
    by = {(r["param_set"], r["optimizer"], r["implementation"]): r for r in rows}
    lines = [
        "# Optimizer step times: `optimizers` against `torch.optim`",
        "",
        "Written by `python benchmarks/bench_step.py` "
        f"({meta['elapsed']:.0f} s). Device: {meta['device']} ({meta['cores']} cores, "
        f"{meta['threads']} torch intra-op thread(s)), torch {meta['torch']}, Python {meta['python']}.",
        f"Copy bandwidth (read + write, best of 7 copies of 256 MiB): {meta['bw_before']:.1f} GB/s before, "
        f"{meta['bw_after']:.1f} GB/s after; the higher is the reference below. Load average "
        f"{meta['load_before'][0]:.1f} before, {meta['load_after'][0]:.1f} after (the machine is shared: "
        "timings of separate runs vary by 20% or more; compare rows of one run).",
        "",
        "Method: every implementation has its own parameters and state; they are timed interleaved "
        "(round-robin, in a new random order each round), each timed step preceded by refilling the gradients. "
        f"Rounds: {meta['rounds']}. **best** is the fastest step, **median** the median one. "
        "*eff. GB/s* is the minimal memory traffic of the update (bytes/param x params) over the best "
        "time; *% copy* compares it with the copy bandwidth (above 100% means part of the working "
        "set was still in cache: the gradients were just written). *state B/param* counts every "
        "state tensor, including per-tensor step counters.",
        "",
        f"torch.optim's default path on {meta['device']} is **{meta['default_ref']}** "
        "(torch defaults to foreach only on accelerators); ours follows the same rule, so "
        "*ours default* runs the same path as *torch default*.",
        "",
    ]
    for set_name in sets:
        any_row = next(r for r in rows if r["param_set"] == set_name)
        lines += [
            f"## {set_name}: {any_row['n_params']:,} float32 parameters in {any_row['n_tensors']} tensors",
            "",
            "### Summary: ratio of step times, ours / reference (median over rounds of the per-round "
            "ratio; below 1 means ours is faster; the reference is torch.optim's default path unless "
            "a note below names another)",
            "",
            "| optimizer | ours default / reference default | ours single / torch for-loop "
            "| ours foreach / torch foreach | ours fused / torch fused | fastest of all |",
            "|---|---:|---:|---:|---:|---|",
        ]
        set_entries = [e for e in entries if set_name in e.sets]
        for e in set_entries:
            def ratio(a, b):
                # median over rounds of the per-round ratio: robust to the
                # machine's load drifting during the run
                ra, rb = by.get((set_name, e.name, a)), by.get((set_name, e.name, b))
                if not (ra and rb):
                    return "-"
                return f"{statistics.median(x / y for x, y in zip(ra['_times'], rb['_times'])):.2f}"
            def fastest(name):
                cands = [r for r in rows if r["param_set"] == set_name and r["optimizer"] == name]
                r = min(cands, key=lambda r: r["best_ms"])
                return f"{r['implementation']} ({r['best_ms']:.2f} ms)"
            base = e.baseline or meta["default_ref"]
            lines.append(
                f"| {e.name} | {ratio('ours default', base)} | {ratio('ours single', 'torch for-loop')} "
                f"| {ratio('ours foreach', 'torch foreach')} | {ratio('ours fused', 'torch fused')} "
                f"| {fastest(e.name)} |"
            )
        lines += [
            "",
            "### All implementations",
            "",
            "| optimizer | implementation | best ms | median ms | eff. GB/s | % copy | state B/param |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for e in set_entries:
            for r in (r for r in rows if r["param_set"] == set_name and r["optimizer"] == e.name):
                lines.append(
                    f"| {e.name} | {r['implementation']} | {r['best_ms']:.2f} | {r['median_ms']:.2f} "
                    f"| {r['effective_gbps']:.1f} | {r['pct_of_copy_bw']:.0f}% | {r['state_bytes_per_param']:.2f} |"
                )
        lines.append("")
        notes = [e.note for e in set_entries if e.note]
        if notes:
            lines += ["Notes:", ""] + [f"* {n}" for n in notes] + [""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
