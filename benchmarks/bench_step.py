"""Time one optimizer step of every optimizer in the package against its memory-bandwidth bound.

An elementwise optimizer step is memory-bound: it has to read the parameter, the gradient and
each state tensor, and write back the parameter and the state. Per float32 parameter with S
full-size state tensors that is at least 4 (3 + 2S) bytes (parameter read + write, gradient
read, each state tensor read + write). Divided by the memory bandwidth of the machine it gives
a lower bound on the step time; **time / bound** says how far an implementation is from it.

**The bound.** ``bound = bytes moved / reference bandwidth``, where

* *bytes moved* is the minimal traffic of the update, counted from the optimizer's actual state
  after the warm-up steps: 3 passes over the parameter's bytes (read, write, and the gradient's
  read) plus, for every tensor in the state, its bytes times the passes the algorithm needs
  (2 by default, read + write; an entry lists the exceptions, e.g. SophiaG's Hessian estimate is
  only read by the step, ASGD's average only written while the averaging has not started,
  LMAdagrad's window of k gradients is read twice and one row of it written). Each entry also
  states the hand count (the formula above), and the run checks that the two agree;
* the *reference bandwidth* is a STREAM-style kernel measured in the same process and run:
  the in-place update ``a.add_(b, alpha=s)`` on 256 MiB float32 buffers, counting three arrays
  (a read, b read, a written). It is timed in about 15 rounds of every optimizer, interleaved
  with its steps in the same random order, and each optimizer's bound uses the best of its own
  samples: the bandwidth available under the load its steps ran with (the machine is shared; on
  a quiet machine this is the same number for all). The *run bound* uses the best update
  bandwidth of the whole run instead (also sampled by repetitions before, between and after the
  parameter sets): stricter where the machine was busy while an optimizer ran. The update is the
  reference because it has the access pattern of an optimizer step: every tensor is read and
  the updated ones are written back in place, so its counted bytes are its actual bytes.
  STREAM's copy (``c.copy_(a)``, 2 arrays) and triad (``torch.add(a, b, alpha=s, out=c)``,
  3 arrays) are measured alongside and reported: they write to a buffer they did not read,
  which a write-allocate cache reads first, so their counted bandwidth is lower (typically by a
  third and a quarter) than what the memory delivers, and a bound built on them would be too
  loose.

  Time / bound is computed from the best step time (against the best bandwidth). Below 1 means
  that part of the working set was still in the caches: the gradients were just refilled, and
  the last-level cache holds a few tens of MB. The ``small`` set fits in the caches entirely,
  so there time / bound measures per-tensor overhead, not memory traffic.

**Implementations.** For each entry and each parameter set, every implementation (ours:
single-tensor, foreach, default, fused where the class accepts ``fused=True``; the references:
torch.optim's for-loop, foreach and fused where torch accepts it, or a published
implementation) gets its own copy of the parameters and gradients. ``fused=True`` is tried at
construction for every class (ours and torch's): an implementation is benchmarked wherever the
constructor accepts it. Each takes its warm-up steps (which create the state and, for a
``torch.compile``'d fused path, compile it; their time is reported separately as *first step*
and *warm-up*, never in the step time; the compile caches of inductor are written to a fresh
temporary folder, so the compile is cold). Then the implementations are timed **interleaved**
(round-robin, in a new random order each round): before each timed step the gradients are
refilled from a fixed random pool (so they are not cache-hot, as after a backward pass), then
one ``opt.step()`` is timed. Reported are the best and the median over rounds.

Parameter sets:

* ``large``: a transformer-like list of shapes, about 10.3M float32 parameters in 172 tensors
  (token and position embeddings, 14 blocks of attention + MLP weights, biases and LayerNorms);
* ``small``: the same architecture at width 24: about 150k parameters in 244 tensors, where
  per-tensor overhead dominates.

Run from the repository root::

    python benchmarks/bench_step.py            # about 6-10 minutes on 2 shared cores
    python benchmarks/bench_step.py --quick    # fewer rounds
    python benchmarks/bench_step.py --only Adam,SGD --sets large

It writes ``benchmarks/results/step_times.md``, ``step_times.csv`` and ``step_times.json``
(the data the book's cost section reads).

To add an optimizer, append a :class:`BenchEntry` to :data:`REGISTRY` (or call
:func:`register`): a name, the factories of our implementations and those of the references,
keyed by a label, and the hand count of the bytes moved per parameter (plus the passes over
any state tensor that is not read and written once)::

    register(BenchEntry(
        name="SophiaG",
        ours={"ours default": lambda ps: optimizers.SophiaG(ps)},
        references={"sophia-opt": lambda ps: sophia_opt.SophiaG(ps)},
        bytes_per_param=24, passes={"hessian": 1},
        baseline="sophia-opt",
    ))
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# A cold compile: inductor's on-disk caches go to a fresh folder (removed at the end), so the
# warm-up of a torch.compile'd fused path includes its whole compile. Set before torch loads.
_OWN_CACHE = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="bench_step_inductor_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _OWN_CACHE

import torch  # noqa: E402

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
        bytes_per_param: the hand count of the minimal memory traffic of one step per float32
            parameter (reads + writes of parameter, gradient and state): 4 (3 + 2S) with S
            full-size state tensors read and written once (or a function of the parameter
            set's shapes, where the state is not parameter-sized). Checked against the count
            from the actual state (see ``passes``).
        passes: state key -> passes over that tensor per step where it is not 2 (read + write):
            1 for a tensor only read or only written, 2 + 1/k for a window of k rows read twice
            with one row written.
        baseline: the reference label that "ours default" is compared with
            (torch.optim's default path on the device, if None).
        pairs: (ours label, reference label) pairs whose ratio is reported.
        sets: the parameter sets it runs on (a method whose step is far from
            memory-bound, such as Shampoo's root computations, only on ``small``).
        memory_bound: False for steps dominated by matrix products or decompositions (Muon,
            Shampoo, SOAP): their time / bound is reported but means little.
        warmup_steps: untimed steps before the timed rounds (state creation, compilation; a
            windowed method needs its window full).
        note: shown under the tables (what the entry's step covers).
    """

    name: str
    ours: dict[str, Factory]
    references: dict[str, Factory]
    bytes_per_param: float | Callable[[list[tuple[int, ...]]], float]
    baseline: str | None = None
    pairs: list[tuple[str, str]] = field(default_factory=list)
    sets: tuple[str, ...] = ("large", "small")
    passes: dict[str, float] = field(default_factory=dict)
    memory_bound: bool = True
    warmup_steps: int = 2
    note: str = ""


REGISTRY: list[BenchEntry] = []


def register(entry: BenchEntry) -> BenchEntry:
    REGISTRY.append(entry)
    return entry


def _probe_params() -> list[torch.Tensor]:
    ps = [torch.zeros(4, 3, requires_grad=True), torch.zeros(3, requires_grad=True)]
    for p in ps:
        p.grad = torch.zeros_like(p)
    return ps


def accepts_fused(cls, kwargs: dict) -> bool:
    """Whether ``cls(params, **kwargs, fused=True)`` constructs (no step is taken, so a
    torch.compile'd fused path is not compiled here: its compile is measured in the warm-up)."""
    try:
        cls(_probe_params(), **kwargs, fused=True)
    except (TypeError, ValueError, RuntimeError):
        return False
    return True


def torch_optim_entry(name: str, kwargs: dict, bytes_per_param, **extra) -> BenchEntry:
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
    if accepts_fused(ours_cls, kwargs):
        ours["ours fused"] = lambda ps: ours_cls(ps, **kwargs, fused=True)
    if accepts_fused(ref_cls, kwargs):
        refs["torch fused"] = lambda ps: ref_cls(ps, **kwargs, fused=True)
    if "ours fused" in ours and "torch fused" in refs:
        pairs.append(("ours fused", "torch fused"))
    return BenchEntry(name, ours, refs, bytes_per_param, baseline=None, pairs=pairs, **extra)


# Hand counts, bytes per float32 parameter: 4 per tensor read or written.
register(torch_optim_entry("SGD", dict(lr=1e-3, momentum=0.9), 20))  # p rw, g r, buf rw
register(torch_optim_entry("Adagrad", dict(lr=1e-2), 20))  # p rw, g r, sum rw
register(torch_optim_entry("RMSprop", dict(lr=1e-3), 20))  # p rw, g r, v rw
register(torch_optim_entry("Adadelta", dict(lr=1.0), 28))  # p rw, g r, v rw, u rw
register(torch_optim_entry("Adam", dict(lr=1e-3), 28))  # p rw, g r, m rw, v rw
register(torch_optim_entry("AdamW", dict(lr=1e-3), 28))
register(torch_optim_entry("NAdam", dict(lr=1e-3), 28))  # mu_product: a 0-dim tensor
register(torch_optim_entry("Adamax", dict(lr=1e-3), 28))  # p rw, g r, m rw, u rw
register(torch_optim_entry("RAdam", dict(lr=1e-3), 28))  # p rw, g r, m rw, v rw
register(torch_optim_entry("Rprop", dict(lr=1e-3), 28))  # p rw, g r, prev rw, step size rw
# ASGD: eta and mu are 0-dim; while mu = 1 (steps before t0 = 1e6, the default) the average is
# the iterate, ax is only written (torch: ax.copy_(param)): p rw, g r, ax w.
register(torch_optim_entry(
    "ASGD", dict(lr=1e-3), 16, passes={"ax": 1},
    note="ASGD: 16 B/param while the averaging has not started (mu = 1 before t0 = 1e6 steps, "
         "the default): the average ax is then only written; 20 B/param once it averages."))
# Adafactor: the factored second moment is O(rows + cols) per matrix, so its traffic is the
# parameter, the gradient and (for vectors) a full second moment: about 12 bytes per parameter.
def adafactor_bytes(shapes) -> float:
    """12 B/param, plus each vector's full second moment (read + write) and each matrix's row
    and column vectors (read + write): the hand count for Adafactor, per parameter."""
    n = sum(torch.Size(s).numel() for s in shapes)
    extra = sum(8 * (s[0] if len(s) == 1 else torch.Size(s[:-1]).numel() + s[-1]) for s in shapes)
    return 12 + extra / n


register(torch_optim_entry(
    "Adafactor", dict(lr=1e-2), adafactor_bytes,
    note="Adafactor: a matrix's second moment is a row and a column vector, so 12 B/param plus "
         "the full second moment of the vectors (biases, norms); its step reads the gradient "
         "twice (row and column sums of g^2, then the update), the second time from cache."))


def _reference_entry(name: str, ours_cls, ref_label: str, ref_factory: Factory | None, kwargs: dict,
                     bytes_per_param: float, foreach: bool = True, **extra) -> BenchEntry:
    """Entry for an optimizer whose reference is a published implementation (not torch.optim),
    or that has none (``ref_factory=None``)."""
    ours: dict[str, Factory] = {"ours default": lambda ps: ours_cls(ps, **kwargs)}
    if foreach:
        ours["ours single"] = lambda ps: ours_cls(ps, **kwargs, foreach=False)
        ours["ours foreach"] = lambda ps: ours_cls(ps, **kwargs, foreach=True)
    if accepts_fused(ours_cls, kwargs):
        ours["ours fused"] = lambda ps: ours_cls(ps, **kwargs, fused=True)
    refs = {ref_label: ref_factory} if ref_factory is not None else {}
    return BenchEntry(name, ours, refs, bytes_per_param,
                      baseline=ref_label if ref_factory is not None else None, **extra)


def _hidden_matrices(ps):
    """The 2-D weights of the blocks (not the two embeddings): what Muon is meant for."""
    return [p for p in ps if p.ndim == 2][2:]


LM_K = 10  # LMAdagrad's window (its default history_size)


def lm_adagrad_bytes(shapes) -> float:
    """12 + 4 (2k + 1) B/param (96 at k = 10), plus each tensor's float64 k x k Gram matrix read
    and written: the hand count for LMAdagrad with its window full."""
    n = sum(torch.Size(s).numel() for s in shapes)
    return 12 + 4 * (2 * LM_K + 1) + len(shapes) * 2 * 8 * LM_K**2 / n


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
        passes={"hessian": 1},
        note="SophiaG: the step only, 24 B/param (its Hessian estimate h is read, not written, "
             "by the step; the estimate every k steps costs an extra backward pass, which is "
             "not an optimizer step)."))
    # A2Grad: grad_avg and x are full-size; v (and v_tilde for exp) are 0-dim per tensor, or
    # full-size per coordinate (the paper's form, the package's default).
    register(_reference_entry(
        "A2Grad uni/tensor", optimizers.A2Grad, "torch_optimizer",
        lambda ps: torch_optimizer.A2GradUni(ps), dict(variant="uni", per_coordinate=False), 28))
    register(_reference_entry(
        "A2Grad exp/tensor", optimizers.A2Grad, "torch_optimizer",
        lambda ps: torch_optimizer.A2GradExp(ps), dict(variant="exp", per_coordinate=False), 28))
    register(_reference_entry(
        "A2Grad uni/coord", optimizers.A2Grad, "", None,
        dict(variant="uni", per_coordinate=True), 36,  # p rw, g r, grad_avg rw, x rw, v rw
        note="A2Grad: */tensor keeps h_k per tensor (torch-optimizer's form, its reference), "
             "uni/coord per coordinate (the paper's form, the package's default: one more "
             "state tensor, 36 B/param; torch-optimizer has no such form)."))
    register(_reference_entry(
        f"LMAdagrad k={LM_K}", optimizers.LMAdagrad, "", None, dict(lr=1e-3, history_size=LM_K),
        lm_adagrad_bytes,  # p rw, g r; the k x d window read twice, one row written
        passes={"history": 2 + 1 / LM_K}, warmup_steps=LM_K + 1,
        note=f"LMAdagrad: timed with its window full (k = {LM_K}); its bound counts the k x d "
             f"window read twice (M^T g, then M a) and the new gradient written into it: "
             f"{12 + 4 * (2 * LM_K + 1)} B/param. The k x k eigenproblems are not memory traffic."))
    muon_note = ("Muon: steps the blocks' 2-D weights only (about 94% of the large set's parameters; "
                 "embeddings, biases and norms go to AdamW in practice); its Newton-Schulz "
                 "iteration is matrix multiplications, so GB/s and time / bound say little about it.")
    register(BenchEntry(
        "Muon", {"ours default": lambda ps: optimizers.Muon(_hidden_matrices(ps), lr=1e-3)},
        {"torch default": lambda ps: torch.optim.Muon(_hidden_matrices(ps), lr=1e-3)},
        20, baseline="torch default", memory_bound=False, note=muon_note))
    for name in ("Shampoo", "SOAP"):
        register(BenchEntry(
            name, {"ours default": lambda ps, c=getattr(optimizers, name): c(ps, lr=1e-3)},
            {"torch.optim.AdamW (for scale)": lambda ps: torch.optim.AdamW(ps, lr=1e-3)},
            28, baseline="torch.optim.AdamW (for scale)", sets=("small",), memory_bound=False,
            note=f"{name}: no published implementation installs here without another torch; "
                 "the ratio is against torch.optim.AdamW's default step, for scale. Small set only: "
                 "its eigendecompositions, not memory traffic, set the cost (its bytes count "
                 "its preconditioner matrices once read and written)."))


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


# STREAM-style kernels: name -> (arrays counted per element, description)
KERNELS = {
    "update": (3, "a.add_(b, alpha=s): a read, b read, a written in place"),
    "triad": (3, "torch.add(a, b, alpha=s, out=c): a, b read, c written"),
    "copy": (2, "c.copy_(a): a read, c written"),
}
REFERENCE_KERNEL = "update"
BW_LABEL = "(bandwidth)"  # the reference kernel's samples among an entry's rounds


BANDWIDTH_MIB = 256  # size of each buffer of the bandwidth kernels


def stream_bandwidths(device: str = "cpu", mib: int = BANDWIDTH_MIB, repeats: int = 5) -> dict[str, float]:
    """Best bandwidth in GB/s of each kernel of :data:`KERNELS` (counted bytes per second)."""
    n = mib * 2**20 // 4
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(n, generator=gen).to(device)
    b = torch.randn(n, generator=gen).to(device)
    c = torch.empty_like(a)
    ops = {
        "update": lambda: a.add_(b, alpha=1e-9),
        "triad": lambda: torch.add(a, b, alpha=0.5, out=c),
        "copy": lambda: c.copy_(a),
    }
    out = {}
    for name, op in ops.items():
        op()  # first touch
        best = math.inf
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            op()
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        out[name] = KERNELS[name][0] * a.nbytes / best / 1e9
    del a, b, c
    gc.collect()
    return out


def _tensors(v):
    if torch.is_tensor(v):
        yield v
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _tensors(x)
    elif isinstance(v, dict):
        for x in v.values():
            yield from _tensors(x)


def opt_params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in _tensors(s))


def traffic_bytes(opt: torch.optim.Optimizer, passes: dict[str, float]) -> float:
    """Minimal bytes one step moves, from the optimizer's state: 3 passes over each parameter
    (read, write, gradient read) and ``passes.get(key, 2)`` over each state tensor."""
    total = 0.0
    for p in opt_params(opt):
        total += 3 * p.numel() * p.element_size()
        for key, v in opt.state.get(p, {}).items():
            for t in _tensors(v):
                total += passes.get(key, 2) * t.numel() * t.element_size()
    return total


def torch_default_label(device: str) -> str:
    """The label of torch.optim's default path for plain float tensors on ``device``."""
    from torch.optim.optimizer import _default_to_fused_or_foreach

    probe = [torch.zeros(1, device=device)]
    _, foreach = _default_to_fused_or_foreach(probe, differentiable=False, use_fused=False)
    return "torch foreach" if foreach else "torch for-loop"


def bench_entry(entry: BenchEntry, shapes, pool, rounds: int, device: str) -> tuple[dict[str, dict], dict[str, str]]:
    """Interleaved timing of all implementations of one entry: (label -> stats, label -> error)."""
    impls = {**entry.ours, **entry.references}
    runs, warm, failed = {}, {}, {}
    for label, factory in impls.items():
        params = make_params(shapes, device=device)
        torch._foreach_copy_([p.grad for p in params], pool)
        try:
            opt = factory(params)
            gen = torch.Generator().manual_seed(3)
            step_s = []
            for i in range(entry.warmup_steps):
                if i and entry.warmup_steps > 2:  # a window of distinct gradients
                    for p in params:
                        p.grad.copy_(1e-3 * torch.randn(p.shape, generator=gen))
                _sync(device)
                t0 = time.perf_counter()
                opt.step()  # creates the state (and compiles a compiled path)
                _sync(device)
                step_s.append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            failed[label] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            print(f"  {entry.name} / {label} failed in its warm-up: {failed[label]}", flush=True)
            continue
        runs[label] = (params, opt)
        warm[label] = step_s
    labels = list(runs)
    times: dict[str, list[float]] = {label: [] for label in labels}
    # the reference kernel, interleaved with the steps in about 15 of the rounds: samples of the
    # bandwidth under the same load as the steps (the machine is shared)
    n = BANDWIDTH_MIB * 2**20 // 4
    bw_a, bw_b = torch.ones(n, device=device), torch.ones(n, device=device)
    bw_samples: list[float] = []
    every = max(1, rounds // 15)
    rng = random.Random(0)
    for k in range(rounds):
        # a fresh random order every round: no implementation always runs
        # right after the same other one (whose data would fill the caches)
        order = rng.sample(labels + ([BW_LABEL] if k % every == 0 else []), len(labels) + (k % every == 0))
        for label in order:
            if label == BW_LABEL:
                _sync(device)
                t0 = time.perf_counter()
                bw_a.add_(bw_b, alpha=1e-9)
                _sync(device)
                bw_samples.append(3 * bw_a.nbytes / (time.perf_counter() - t0) / 1e9)
                continue
            params, opt = runs[label]
            torch._foreach_copy_([p.grad for p in params], pool)  # fresh, cache-cold gradients
            _sync(device)
            t0 = time.perf_counter()
            opt.step()
            _sync(device)
            times[label].append(time.perf_counter() - t0)
    del bw_a, bw_b
    out = {BW_LABEL: bw_samples}
    for label in labels:
        opt = runs[label][1]
        n = sum(p.numel() for p in opt_params(opt))
        out[label] = dict(
            best=min(times[label]),
            median=statistics.median(times[label]),
            times=times[label],
            n_params=n,
            state_bytes_per_param=state_bytes(opt) / n,
            bytes_moved_per_param=traffic_bytes(opt, entry.passes) / n,
            first_step=warm[label][0],
            warmup=sum(warm[label]),
        )
    del runs
    gc.collect()
    return out, failed


def compiler_start_up() -> float:
    """Seconds to compile and run one tiny elementwise function with ``torch.compile``: the
    one-time start-up of Dynamo and inductor (imports, the C++ toolchain check), paid before the
    benchmark so that the warm-up of the first compiled fused path is its own compile only."""
    t0 = time.perf_counter()
    f = torch.compile(lambda x: x.mul_(2.0).add_(1.0), dynamic=True, fullgraph=True)
    f(torch.ones(1 << 16))
    return time.perf_counter() - t0


def _matches(entry: BenchEntry, only: str | None) -> bool:
    if only is None:
        return True
    names = only.split(",")
    return entry.name in names or entry.name.split()[0].split("/")[0] in names


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--rounds", type=int, default=None, help="rounds for the large set")
    parser.add_argument("--only", default=None,
                        help="comma-separated optimizer names (a first word such as A2Grad selects all its entries)")
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
    rounds = {"large": rounds_large, "small": 5 * rounds_large}  # small steps: best-of settles quickly
    entries = [e for e in REGISTRY if _matches(e, args.only)]
    sets = args.sets.split(",")
    default_ref = torch_default_label(args.device)

    started = time.time()
    load_before = os.getloadavg()
    compiler_startup = compiler_start_up()
    print(f"compiler start-up (one tiny compiled function): {compiler_startup:.1f} s", flush=True)
    bw_samples = [dict(when="before", **stream_bandwidths(args.device))]
    print("bandwidth (GB/s): " + ", ".join(f"{k} {v:.1f}" for k, v in bw_samples[-1].items() if k != "when")
          + f"; load average {load_before[0]:.1f}", flush=True)

    rows, failures, interleaved_bw = [], [], []
    for set_name in sets:
        shapes = PARAM_SETS[set_name]
        pool = grad_pool(shapes, device=args.device)
        for entry in (e for e in entries if set_name in e.sets):
            stats, failed = bench_entry(entry, shapes, pool, rounds[set_name], args.device)
            entry_bw = stats.pop(BW_LABEL)
            interleaved_bw.append(dict(param_set=set_name, optimizer=entry.name, samples=len(entry_bw),
                                       best=max(entry_bw), median=statistics.median(entry_bw)))
            failures += [dict(param_set=set_name, optimizer=entry.name, implementation=k, error=v)
                         for k, v in failed.items()]
            for label, st in stats.items():
                rows.append(dict(
                    param_set=set_name, n_params=st["n_params"], n_tensors=len(shapes),
                    optimizer=entry.name, implementation=label,
                    side="ours" if label.startswith("ours") else "reference",
                    best_ms=1e3 * st["best"], median_ms=1e3 * st["median"],
                    first_step_ms=1e3 * st["first_step"], warmup_ms=1e3 * st["warmup"],
                    warmup_steps=entry.warmup_steps,
                    bytes_moved_per_param=st["bytes_moved_per_param"],
                    hand_count_bytes_per_param=(entry.bytes_per_param(shapes) if callable(entry.bytes_per_param)
                                                else entry.bytes_per_param),
                    state_bytes_per_param=st["state_bytes_per_param"],
                    memory_bound=entry.memory_bound,
                    _times=st["times"],
                ))
            line = ", ".join(f"{label} {1e3 * st['best']:.2f}" for label, st in stats.items())
            print(f"[{set_name}] {entry.name}: {line} ms", flush=True)
        bw_samples.append(dict(when=f"after {set_name}", **stream_bandwidths(args.device)))
        print(f"bandwidth after {set_name} (GB/s): " + ", ".join(
            f"{k} {v:.1f}" for k, v in bw_samples[-1].items() if k != "when"), flush=True)

    load_after = os.getloadavg()
    best_bw = {k: max(s[k] for s in bw_samples) for k in KERNELS}
    # the reference: the best in-place update bandwidth of the run, separate or interleaved
    best_bw[REFERENCE_KERNEL] = max([best_bw[REFERENCE_KERNEL]] + [e["best"] for e in interleaved_bw])
    ref_bw = best_bw[REFERENCE_KERNEL]
    entry_bw = {(e["param_set"], e["optimizer"]): e["best"] for e in interleaved_bw}
    for row in rows:
        moved = row["bytes_moved_per_param"] * row["n_params"]
        # the bound: at the bandwidth sampled among this optimizer's own rounds (the load its
        # steps ran under); the run's best bandwidth gives the stricter "run bound"
        bw = entry_bw[row["param_set"], row["optimizer"]]
        bound_ms = 1e3 * moved / (bw * 1e9)
        run_bound_ms = 1e3 * moved / (ref_bw * 1e9)
        row.update(effective_gbps=moved / (row["best_ms"] / 1e3) / 1e9, reference_gbps=bw,
                   bound_ms=bound_ms, time_over_bound=row["best_ms"] / bound_ms,
                   median_over_bound=row["median_ms"] / bound_ms,
                   run_best_gbps=ref_bw, run_bound_ms=run_bound_ms,
                   time_over_run_bound=row["best_ms"] / run_bound_ms)
    # the hand count and the count from the state must agree (the state is what the step moves)
    mismatches = [
        f"{r['param_set']} {r['optimizer']} {r['implementation']}: hand count "
        f"{r['hand_count_bytes_per_param']:g}, from the state {r['bytes_moved_per_param']:.2f} B/param"
        for r in rows if r["memory_bound"]
        and abs(r["bytes_moved_per_param"] / r["hand_count_bytes_per_param"] - 1) > 0.02
    ]
    for m in mismatches:
        print("BYTES MISMATCH " + m, flush=True)
    elapsed = time.time() - started

    os.makedirs(args.out, exist_ok=True)
    meta = dict(
        device=args.device, cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
        threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(),
        bandwidth_samples=bw_samples, interleaved_bandwidth=interleaved_bw,
        best_bandwidth=best_bw, reference_kernel=REFERENCE_KERNEL,
        reference_gbps=ref_bw, kernels={k: dict(arrays=v[0], op=v[1]) for k, v in KERNELS.items()},
        load_before=load_before, load_after=load_after, rounds=rounds, elapsed=elapsed,
        default_ref=default_ref, cold_compile_cache=_OWN_CACHE is not None,
        bandwidth_buffer_mib=BANDWIDTH_MIB, compiler_startup_s=compiler_startup,
        param_sets={name: dict(n_params=sum(torch.Size(s).numel() for s in PARAM_SETS[name]),
                               n_tensors=len(PARAM_SETS[name]),
                               largest_tensor=max(torch.Size(s).numel() for s in PARAM_SETS[name]))
                    for name in sets},
        failures=failures, bytes_mismatches=mismatches,
        notes={e.name: e.note for e in entries if e.note},
    )
    _write_csv(os.path.join(args.out, "step_times.csv"), rows)
    _write_json(os.path.join(args.out, "step_times.json"), rows, meta)
    _write_markdown(os.path.join(args.out, "step_times.md"), rows, entries, sets, meta)
    print(f"wrote {args.out}/step_times.md, .csv and .json in {elapsed:.0f} s", flush=True)
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# --------------------------------------------------------------------------- #
# Reports                                                                      #
# --------------------------------------------------------------------------- #


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def _write_csv(path: str, rows: list[dict]) -> None:
    fields = [k for k in rows[0] if not k.startswith("_")]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row[k]) for k in fields})


def _write_json(path: str, rows: list[dict], meta: dict) -> None:
    def rnd(v):
        return float(f"{v:.4g}") if isinstance(v, float) else v

    out = dict(meta=meta, rows=[{k: rnd(v) for k, v in r.items() if not k.startswith("_")}
                                for r in rows])
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
        f.write("\n")


def best_of(rows: list[dict], side: str) -> dict | None:
    cands = [r for r in rows if r["side"] == side]
    return min(cands, key=lambda r: r["best_ms"]) if cands else None


def _write_markdown(path: str, rows: list[dict], entries: list[BenchEntry], sets: list[str], meta: dict) -> None:
    by = {(r["param_set"], r["optimizer"], r["implementation"]): r for r in rows}
    bw = meta["bandwidth_samples"]
    lines = [
        "# Optimizer step times against the memory-bandwidth bound",
        "",
        "Written by `python benchmarks/bench_step.py` "
        f"({meta['elapsed']:.0f} s). Device: {meta['device']} ({meta['cores']} cores, "
        f"{meta['threads']} torch intra-op thread(s)), torch {meta['torch']}, Python {meta['python']}. "
        f"Load average {meta['load_before'][0]:.1f} before, {meta['load_after'][0]:.1f} after (the machine "
        "is shared: timings of separate runs vary by 20% or more; compare rows of one run).",
        "",
        "## Bandwidth measured in this run",
        "",
        "STREAM-style kernels on 256 MiB float32 buffers, best of 5 repetitions each, counted bytes "
        "per second (GB/s):",
        "",
        "| kernel | operation | arrays counted | " + " | ".join(s["when"] for s in bw) + " | best |",
        "|---|---|---:|" + "---:|" * len(bw) + "---:|",
    ]
    for k, (arrays, op) in KERNELS.items():
        lines.append(f"| {k}{' (reference)' if k == meta['reference_kernel'] else ''} | `{op.split(':')[0]}` "
                     f"| {arrays} | " + " | ".join(f"{s[k]:.1f}" for s in bw)
                     + f" | {meta['best_bandwidth'][k]:.1f} |")
    ib = meta["interleaved_bandwidth"]
    lines += [
        "",
        f"The update kernel was also timed interleaved with the steps ({sum(e['samples'] for e in ib)} "
        "samples, in about 15 rounds of every optimizer, in the same random order as its "
        "implementations): per optimizer, its best ranged from "
        f"{min(e['best'] for e in ib):.1f} to {max(e['best'] for e in ib):.1f} GB/s and its median from "
        f"{min(e['median'] for e in ib):.1f} to {max(e['median'] for e in ib):.1f} GB/s (the load of the "
        "shared machine while each optimizer ran).",
        "",
        "**bound** = bytes moved / the best update bandwidth sampled among the optimizer's own rounds "
        "(*bw GB/s* below: the bandwidth available under the load its steps ran with; on a quiet "
        "machine it is the same for all). The update kernel is the reference because an optimizer "
        "step reads its tensors and writes the updated ones back in place, as this kernel does; copy "
        "and triad write into buffers they did not read, which the cache first reads, so they count "
        "fewer bytes than they move. *run bound* uses the best update bandwidth of the whole run "
        f"instead ({meta['reference_gbps']:.1f} GB/s): stricter where the machine was busy while an "
        "optimizer ran. *B/param* is the minimal traffic "
        "of one step, counted from the optimizer's state (parameter read + write, gradient read, "
        "each state tensor read + write unless a note says otherwise: 4 (3 + 2S) for S full-size float32 "
        "state tensors). *time/bound* = best step time / bound; below 1 means part of the working set "
        "was still in the caches (the gradients were just refilled).",
        "",
        "Method: every implementation has its own parameters and state; after its warm-up steps "
        "(*first step* and *warm-up*, total of the warm-up steps: state creation, and the compile of a "
        "torch.compile'd path, with a "
        f"{'cold' if meta['cold_compile_cache'] else 'possibly warm'} inductor cache, after the "
        f"compiler's one-time start-up of {meta['compiler_startup_s']:.1f} s, paid once before "
        "everything) they are timed "
        "interleaved (round-robin, in a new random order each round), each timed step preceded by "
        f"refilling the gradients. Rounds: {meta['rounds']}. **best** is the fastest step, **median** the "
        "median one. *state B/param* counts every state tensor, including per-tensor step counters.",
        "",
        f"torch.optim's default path on {meta['device']} is **{meta['default_ref']}** "
        "(torch defaults to foreach only on accelerators); ours follows the same rule, so "
        "*ours default* runs the same path as *torch default*.",
        "",
    ]
    if meta["failures"]:
        lines += ["Implementations that failed in their warm-up (not timed):", ""]
        lines += [f"* {f['param_set']} {f['optimizer']} / {f['implementation']}: {f['error']}"
                  for f in meta["failures"]] + [""]
    if meta["bytes_mismatches"]:
        lines += ["Rows whose state-derived bytes differ from the hand count by more than 2%:", ""]
        lines += [f"* {m}" for m in meta["bytes_mismatches"]] + [""]
    for set_name in sets:
        set_rows = [r for r in rows if r["param_set"] == set_name]
        if not set_rows:
            continue
        n_all = sum(torch.Size(s).numel() for s in PARAM_SETS[set_name])
        set_entries = [e for e in entries if set_name in e.sets]
        cache_note = (" This set fits in the last-level cache, so time / bound here measures "
                      "per-tensor overhead, not memory traffic." if set_name == "small" else "")
        lines += [
            f"## {set_name}: {n_all:,} float32 parameters in {set_rows[0]['n_tensors']} tensors",
            "",
            "### Against the bound",
            "",
            "Time / bound of our default path, of `fused=True` (where the class accepts it), of the "
            "fastest of ours and of the fastest reference (best step times); *ours fused warm-up* is "
            f"the warm-up of `fused=True` (state creation and compile).{cache_note}",
            "",
            "| optimizer | B/param | bw GB/s | bound ms | ours default | ours fused | fastest of ours "
            "| fastest reference | ours fused, run bound | ours fused warm-up s |",
            "|---|---:|---:|---:|---:|---:|---|---|---:|---:|",
        ]
        for e in set_entries:
            er = [r for r in set_rows if r["optimizer"] == e.name]
            if not er:
                continue
            od = by.get((set_name, e.name, "ours default"))
            bo, br = best_of(er, "ours"), best_of(er, "reference")
            fu = by.get((set_name, e.name, "ours fused"))
            mark = "" if e.memory_bound else " (not memory-bound)"
            lines.append(
                f"| {e.name}{mark} | {od['bytes_moved_per_param']:.1f} | {od['reference_gbps']:.1f} "
                f"| {od['bound_ms']:.2f} "
                f"| {od['time_over_bound']:.2f} | {format(fu['time_over_bound'], '.2f') if fu else '-'} "
                f"| {bo['implementation']} {bo['time_over_bound']:.2f} "
                f"| {(br['implementation'] + ' ' + format(br['time_over_bound'], '.2f')) if br else '-'} "
                f"| {format(fu['time_over_run_bound'], '.2f') if fu else '-'} "
                f"| {format(fu['warmup_ms'] / 1e3, '.1f') if fu else '-'} |")
        lines += [
            "",
            "### Ratio of step times, ours / reference",
            "",
            "Median over rounds of the per-round ratio; below 1 means ours is faster; the reference is "
            "torch.optim's default path unless a note below names another.",
            "",
            "| optimizer | ours default / reference default | ours single / torch for-loop "
            "| ours foreach / torch foreach | ours fused / torch fused | fastest of all |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for e in set_entries:
            if not any(r["optimizer"] == e.name for r in set_rows):
                continue

            def ratio(a, b, e=e):
                # median over rounds of the per-round ratio: robust to the
                # machine's load drifting during the run
                ra, rb = by.get((set_name, e.name, a)), by.get((set_name, e.name, b))
                if not (ra and rb):
                    return "-"
                return f"{statistics.median(x / y for x, y in zip(ra['_times'], rb['_times'])):.2f}"

            r = min((r for r in set_rows if r["optimizer"] == e.name), key=lambda r: r["best_ms"])
            base = e.baseline or meta["default_ref"]
            lines.append(
                f"| {e.name} | {ratio('ours default', base)} | {ratio('ours single', 'torch for-loop')} "
                f"| {ratio('ours foreach', 'torch foreach')} | {ratio('ours fused', 'torch fused')} "
                f"| {r['implementation']} ({r['best_ms']:.2f} ms) |"
            )
        lines += [
            "",
            "### All implementations",
            "",
            "| optimizer | implementation | best ms | median ms | B/param | GB/s | time/bound "
            "| time/run bound | first step ms | warm-up ms | state B/param |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in set_entries:
            for r in (r for r in set_rows if r["optimizer"] == e.name):
                lines.append(
                    f"| {e.name} | {r['implementation']} | {r['best_ms']:.2f} | {r['median_ms']:.2f} "
                    f"| {r['bytes_moved_per_param']:.1f} | {r['effective_gbps']:.1f} "
                    f"| {r['time_over_bound']:.2f} | {r['time_over_run_bound']:.2f} | {r['first_step_ms']:.0f} "
                    f"| {r['warmup_ms']:.0f} ({r['warmup_steps']}) | {r['state_bytes_per_param']:.2f} |"
                )
        lines.append("")
        notes = [e.note for e in set_entries if e.note]
        if notes:
            lines += ["Notes:", ""] + [f"* {n}" for n in notes] + [""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
