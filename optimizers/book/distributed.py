"""Train a small model on two processes (gloo, loopback) and on one, and compare.

:func:`run_distributed` starts ``world_size`` Python processes on this machine
(``torch.distributed`` with the gloo backend, rendezvous on 127.0.0.1 at a free
port, no ``torchrun``), each of which trains the same small float64 model on
its slice of a fixed global batch under DDP, ``ZeroRedundancyOptimizer`` (over
DDP) or FSDP2 (``fully_shard``: DTensor parameters sharded by rows), and
returns the parameters after every step, full size, as seen by every rank.
:func:`train_single` trains the same model on the whole batch in this process:
the reference the distributed runs must reproduce. :func:`traffic` counts what
each scheme keeps per rank and sends per step.

Everything is bounded in time: a process group timeout and a wall-clock limit
on the launched processes, which are killed when it passes.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["MODES", "make_model", "global_batch", "train_single", "run_distributed", "traffic",
           "gloo_available"]

#: the three ways of training on several processes
MODES = ("ddp", "zero", "fsdp2")

#: samples of the global batch (split evenly across the ranks)
BATCH = 8


def gloo_available() -> bool:
    """Whether ``torch.distributed`` with the gloo backend can be used here."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


def make_model(setup: str = "mlp", seed: int = 0) -> torch.nn.Module:
    """The float64 model of a setup, with parameters drawn from ``seed``.

    ``"mlp"`` (and ``"lbfgs"``, the same model trained with a closure): 6 -> 5 -> 3 -> 1
    with tanh; its last layer has one row, so that one rank's row shard is
    empty under FSDP2. ``"embedding"``: two sparse embedding tables (sparse
    gradients, for SparseAdam). ``"matrix"``: the MLP without biases (for
    optimizers of 2-D parameters only).
    """
    gen = torch.Generator().manual_seed(seed)
    if setup in ("mlp", "lbfgs", "matrix"):
        bias = setup != "matrix"
        model = torch.nn.Sequential(
            torch.nn.Linear(6, 5, bias=bias), torch.nn.Tanh(), torch.nn.Linear(5, 3, bias=bias),
            torch.nn.Tanh(), torch.nn.Linear(3, 1, bias=bias),
        ).double()
    elif setup == "embedding":
        model = _Embeddings()
    else:
        raise ValueError(f"unknown setup {setup!r}")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


class _Embeddings(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Embedding(10, 3, sparse=True).double()
        self.b = torch.nn.Embedding(7, 3, sparse=True).double()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.a(idx[:, 0]) + self.b(idx[:, 1])


def global_batch(setup: str = "mlp", seed: int = 0, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of the global batch of ``BATCH`` samples of step ``step``
    (a new batch every step, as in minibatch training)."""
    gen = torch.Generator().manual_seed(1000 * seed + step + 1)
    if setup == "embedding":
        x = torch.stack([torch.randint(0, 10, (BATCH,), generator=gen),
                         torch.randint(0, 7, (BATCH,), generator=gen)], dim=1)
        y = torch.randn(BATCH, 3, generator=gen, dtype=torch.float64)
        return x, y
    x = torch.randn(BATCH, 6, generator=gen, dtype=torch.float64)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    return x, y


def _batch_index(setup: str, step: int) -> int:
    """The batch of a step: a new one every step, except for LBFGS, a full-batch
    method (its line search and stopping tests compare losses of one function)."""
    return 0 if setup == "lbfgs" else step


def _optimizer_class(name: str) -> type:
    if name.startswith("torch.optim."):
        return getattr(torch.optim, name.rsplit(".", 1)[1])
    import optimizers

    return getattr(optimizers, name)


def _snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    out = []
    for p in model.parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out.append(full.detach().clone())
    return out


def _train(model: torch.nn.Module, opt: Any, batches: list[tuple[torch.Tensor, torch.Tensor]],
           closure_mode: bool, reduce_loss: Any, snap_model: torch.nn.Module,
           halves: bool = False, before_step: Any = None, resume: Any = None) -> list[list[torch.Tensor]]:
    snaps = [_snapshot(snap_model)]
    for t, (x, y) in enumerate(batches):
        def closure() -> torch.Tensor:
            opt.zero_grad()
            if halves:  # the mean of the two half-batch means: the other summation order
                h = len(x) // 2
                loss = 0.5 * (torch.nn.functional.mse_loss(model(x[:h]), y[:h])
                              + torch.nn.functional.mse_loss(model(x[h:]), y[h:]))
            else:
                loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return reduce_loss(loss.detach())

        if closure_mode:
            opt.step(closure)
        else:
            closure()
            if before_step is not None:
                before_step(t)
            opt.step()
        snaps.append(_snapshot(snap_model))
        if resume is not None and t == resume[0]:  # a new optimizer from a copy of the state dict
            saved = copy.deepcopy(resume[2](opt))
            opt = resume[1]()
            opt.load_state_dict(saved)
    return snaps


def train_single(case: dict[str, Any], steps: int, seed: int = 0,
                 halves: bool = False) -> list[list[torch.Tensor]]:
    """Parameters after 0, 1, ..., ``steps`` steps on the global batches, in one process.

    ``case``: ``{"cls": name in optimizers (or "torch.optim.Name"), "kwargs": {...},
    "setup": "mlp" | "lbfgs" | "embedding"}``. ``halves=True`` takes the
    loss as the mean of the two half-batch means (the same number, summed in
    another order): how far that moves the run is the round-off floor of a
    comparison with a distributed run.
    """
    setup = case.get("setup", "mlp")
    model = make_model(setup, seed)
    batches = [global_batch(setup, seed, _batch_index(setup, t)) for t in range(steps)]
    opt = _optimizer_class(case["cls"])(model.parameters(), **case["kwargs"])
    return _train(model, opt, batches, setup == "lbfgs", lambda loss: loss, model, halves)


# --------------------------------------------------------------------------- #
# The processes                                                                #
# --------------------------------------------------------------------------- #


def _worker_run(case: dict[str, Any], mode: str, steps: int, seed: int, rank: int, world: int,
                mesh: Any) -> list[list[torch.Tensor]]:
    import torch.distributed as dist

    setup = case.get("setup", "mlp")
    model = make_model(setup, seed)
    per = BATCH // world
    batches = [(x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per])
               for x, y in (global_batch(setup, seed, _batch_index(setup, t)) for t in range(steps))]
    cls = _optimizer_class(case["cls"])

    def reduce_loss(loss: torch.Tensor) -> torch.Tensor:  # the global batch's mean loss
        loss = loss.clone()
        dist.all_reduce(loss)
        return loss / world

    if mode == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(model)
    elif mode == "zero":
        net = torch.nn.parallel.DistributedDataParallel(model)
    elif mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        net = fully_shard(model, mesh=mesh)
    else:
        raise ValueError(f"unknown mode {mode!r}")

    def make_opt() -> Any:
        if mode == "zero":
            from torch.distributed.optim import ZeroRedundancyOptimizer

            return ZeroRedundancyOptimizer(net.parameters(), optimizer_class=cls, **case["kwargs"])
        return cls(net.parameters(), **case["kwargs"])

    def full_state_dict(opt: Any) -> dict[str, Any]:
        if mode != "zero":
            return opt.state_dict()
        saved = None
        for r in range(world):  # ZeRO gathers the whole state on one rank at a time
            opt.consolidate_state_dict(to=r)
            if r == rank:
                saved = opt.state_dict()
        return saved

    opt = make_opt()
    resume = None if case.get("resume_after") is None else (case["resume_after"], make_opt,
                                                            full_state_dict)
    def poison(t: int) -> None:  # a NaN in one rank's gradient (shard) at one step
        if (rank, t) == tuple(case.get("nan_grad", (-1, -1))):
            g = next(iter(net.parameters())).grad
            (g.to_local() if hasattr(g, "to_local") else g).view(-1)[0] = float("nan")

    return _train(net, opt, batches, setup == "lbfgs", reduce_loss, model, before_step=poison,
                  resume=resume)


@contextlib.contextmanager
def _without_all_reduce(active: bool) -> Iterator[None]:
    """With ``active``, LMAdagrad skips its all-reduce of the Gram-matrix rows
    (each rank whitens its shards with its own Gram block) and Adafactor its
    all-reduces of column statistics and norms (each rank sums over its own rows
    only): what the sums are for."""
    if not active:
        yield
        return
    from optimizers import adafactor, lm_adagrad

    modules = (lm_adagrad, adafactor)
    saved = [m._all_reduce_sums for m in modules]
    for m in modules:
        m._all_reduce_sums = lambda tensors, groups: None
    try:
        yield
    finally:
        for m, f in zip(modules, saved):
            m._all_reduce_sums = f


def _worker_main(spec_path: str, out_path: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    spec = torch.load(spec_path, weights_only=False)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{spec['port']}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=spec["collective_timeout"]),
    )
    mesh = None
    if any("fsdp2" in c["modes"] for c in spec["cases"]):
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (world,))
    results: dict[str, dict[str, Any]] = {}
    for case in spec["cases"]:
        results[case["id"]] = {}
        for mode in case["modes"]:
            try:
                with _without_all_reduce(case.get("no_all_reduce", False)):
                    out: Any = _worker_run(case, mode, spec["steps"], spec["seed"], rank, world, mesh)
            except Exception as err:  # recorded: the parent decides whether it was expected
                out = f"{type(err).__name__}: {err}"
            results[case["id"]][mode] = out
    torch.save(results, f"{out_path}.rank{rank}")
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(cases: list[dict[str, Any]], steps: int, world_size: int = 2, seed: int = 0,
                    timeout: float = 120.0, collective_timeout: float = 30.0) -> list[dict[str, Any]]:
    """Train every case under each of its ``"modes"`` on ``world_size`` processes.

    ``cases``: dicts as for :func:`train_single`, plus ``"id"`` (a unique
    name) and ``"modes"`` (a subset of :data:`MODES`); optionally
    ``"nan_grad": (rank, step)`` puts a NaN into that rank's (shard of the)
    first gradient before that step, ``"no_all_reduce": True`` makes
    LMAdagrad and Adafactor skip their all-reduces, and ``"resume_after": t`` replaces the
    optimizer after step ``t`` by a new one loaded from a copy of its
    ``state_dict()`` (the run must not notice). The processes run on
    this machine, talk over loopback only, use one thread each, and are killed
    after ``timeout`` seconds (``TimeoutError``); a launch whose free port was
    taken meanwhile is tried once more. Returns, per rank,
    ``{id: {mode: snapshots or "ErrorType: message"}}`` where ``snapshots[t]``
    are the full parameters after ``t`` steps.
    """
    try:
        return _run_once(cases, steps, world_size, seed, timeout, collective_timeout)
    except _PortTaken:
        return _run_once(cases, steps, world_size, seed, timeout, collective_timeout)


class _PortTaken(RuntimeError):
    pass


def _run_once(cases: list[dict[str, Any]], steps: int, world_size: int, seed: int,
              timeout: float, collective_timeout: float) -> list[dict[str, Any]]:
    """One launch of :func:`run_distributed`."""
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="optimizers-dist-") as tmp:
        spec_path, out_path = os.path.join(tmp, "spec.pt"), os.path.join(tmp, "out.pt")
        torch.save({"cases": cases, "steps": steps, "seed": seed, "port": _free_port(),
                    "collective_timeout": collective_timeout}, spec_path)
        env = {**os.environ, "WORLD_SIZE": str(world_size), "OMP_NUM_THREADS": "1",
               "GLOO_SOCKET_IFNAME": "lo0" if sys.platform == "darwin" else "lo",
               "MASTER_ADDR": "127.0.0.1",
               "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        procs = [
            subprocess.Popen([sys.executable, "-m", "optimizers.book.distributed", spec_path, out_path],
                             env={**env, "RANK": str(r)}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
            for r in range(world_size)
        ]
        deadline = time.monotonic() + timeout
        logs = []
        try:
            for p in procs:
                out, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
                logs.append(out.decode(errors="replace"))
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the {world_size} processes did not finish within {timeout} s") from None
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        for r, p in enumerate(procs):
            if p.returncode != 0:
                if "address already in use" in logs[r].lower():
                    raise _PortTaken(logs[r][-500:])
                raise RuntimeError(f"rank {r} exited with {p.returncode}:\n{logs[r][-3000:]}")
        return [torch.load(f"{out_path}.rank{r}", weights_only=False) for r in range(world_size)]


# --------------------------------------------------------------------------- #
# What each scheme keeps and sends                                             #
# --------------------------------------------------------------------------- #


def traffic(shapes: list[tuple[int, ...]], state_per_entry: int, world_size: int,
            bytes_per_number: int = 4, history_size: int | None = None) -> dict[str, dict[str, float]]:
    """Numbers kept per rank and sent per rank per step, for parameters of ``shapes``.

    ``state_per_entry``: optimizer state numbers per parameter entry (2 for
    Adam). Communication is counted as what one rank sends in the bandwidth-
    optimal ring algorithms, :math:`2(W-1)/W` of the buffer for an all-reduce
    and :math:`(W-1)/W` for a reduce-scatter or an all-gather. With
    ``history_size`` :math:`k`, the extra all-reduce of LMAdagrad under FSDP2
    (:math:`k` Gram-row numbers per tensor and one for its non-finite check,
    float64, without gradient momentum) is counted too. Returns
    ``{scheme: {"params", "grads", "state", "sent"}}`` in bytes per rank.
    """
    n = sum(int(torch.Size(s).numel()) for s in shapes)
    W, b = world_size, bytes_per_number
    ring = (W - 1) / W
    out = {
        "single": {"params": n * b, "grads": n * b, "state": state_per_entry * n * b, "sent": 0.0},
        "ddp": {"params": n * b, "grads": n * b, "state": state_per_entry * n * b,
                "sent": 2 * ring * n * b},  # all-reduce of the gradients
        # ZeRO-1: gradients all-reduced (DDP), each rank updates its part, then broadcasts it
        "zero": {"params": n * b, "grads": n * b, "state": state_per_entry * n * b / W,
                 "sent": 2 * ring * n * b + ring * n * b},
        # FSDP2: parameters all-gathered for forward and again for backward, gradients reduce-scattered
        "fsdp2": {"params": n * b / W, "grads": n * b / W, "state": state_per_entry * n * b / W,
                  "sent": 2 * ring * n * b + ring * n * b},
    }
    if history_size is not None:  # k Gram-row numbers per tensor, one for the non-finite check
        extra = 2 * ring * 8 * (history_size * len(shapes) + 1)
        out["fsdp2"]["sent"] += extra
    return out


if __name__ == "__main__":
    _worker_main(sys.argv[1], sys.argv[2])
