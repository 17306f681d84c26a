"""Audit how every optimizer's ``step()`` behaves under ``torch.compile``.

For every optimizer class exported by :mod:`optimizers` (and the ``torch.optim``
class of the same name, where one exists) this script measures, each optimizer
in its own subprocess with a timeout and after ``torch._dynamo.reset()``:

1. **Graph breaks.** A small float32 CPU model (two ``Linear`` layers, 8 -> 16 -> 4;
   without biases for Muon, which takes only 2-D parameters) gets gradients from a
   fixed seeded batch; one eager warm-up ``opt.step()`` creates the state; then
   ``torch._dynamo.explain`` runs a function that calls ``opt.step()`` and reports
   the graph count, the graph-break count and the break reasons (shortened).
2. **Recompilation** (ours and torch.optim, only when step 1 finished in time): a fresh
   model and optimizer take step 1 eagerly, then steps 2..6 through a
   ``torch.compile``'d function that calls ``opt.step()`` (gradients are computed
   eagerly outside it, from a new seeded batch each step). Counted per step are the
   frames Dynamo compiled (``torch._dynamo.utils.counters["frames"]["ok"]``). The
   frames compiled at step 2 are the first compilation (several when the step has
   graph breaks); every frame compiled during steps 3..6 is a recompilation.
3. **Equality.** The same run is repeated eagerly on an identical copy; reported is
   the largest absolute difference of the parameters after 3 steps (and after 6).
4. **Speed of the compiled step** (ours against torch.optim, side by side in one
   process): a larger float32 parameter set (``TIMING_SHAPES``: about 2.1M parameters
   in 12 tensors), one eager step each, then each optimizer's step compiled with
   inductor and warmed up; then ``TIMING_ROUNDS`` rounds, each timing one compiled
   step of every implementation in a new random order (gradients refilled before each
   step). Reported: median milliseconds per implementation and the median of the
   per-round ratio ours / torch.optim (below 1: ours faster), plus the eager step of
   ours for scale. Where there is no torch.optim class, ours compiled against ours eager.
   (FullMatrixAdagrad, whose state is a d x d matrix per tensor, on ``TIMING_SHAPES_FULL_MATRIX``.)

The constructor per class is the first configuration of its entry in
``tests/optim_catalogue.py``. SparseAdam (sparse gradients only) and LBFGS
(``step(closure)`` with a data-dependent line search) are listed as not
applicable, with the reason.

Run from the repository root (about 10-15 minutes on a loaded 2-core machine)::

    nice python benchmarks/compile_audit.py
    nice python benchmarks/compile_audit.py --only Adam,SGD --timeout 120

Writes ``benchmarks/results/compile_audit.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

NOT_APPLICABLE = {
    "SparseAdam": "takes sparse gradients only (the dense two-Linear model does not fit it); "
    "not audited",
    "LBFGS": "step(closure) runs forward and backward inside the step, with a data-dependent "
    "line search; not a plain step to audit this way; not audited",
}

STEPS = 6
COMPARE_AT = 3
#: parameter set of the compiled-step timing (weights and biases of a 4-block MLP)
TIMING_SHAPES = [(512, 512), (512,)] * 4 + [(1024, 512), (1024,), (512, 1024), (512,)]
TIMING_ROUNDS = 40
#: FullMatrixAdagrad keeps a d x d matrix per tensor (d = numel): about 4k parameters
TIMING_SHAPES_FULL_MATRIX = [(32, 32), (32,)] * 4
#: compiled == eager when the parameters differ by at most this after 3 steps
TOL = 1e-5


# --------------------------------------------------------------------------- child


def _short(reason: str, n: int = 140) -> str:
    reason = " ".join(str(reason).split())
    return reason if len(reason) <= n else reason[: n - 3] + "..."


def _child_setup(name: str) -> dict:
    """In a child process: one intra-op thread, and the first configuration of ``name``'s
    catalogue entry (``{}`` without one)."""
    import torch

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from optim_catalogue import CATALOGUE, MATRIX_ONLY, OWN_TESTS

    torch.set_num_threads(1)
    infos = {i.name: i for i in CATALOGUE + MATRIX_ONLY + OWN_TESTS}
    info = infos.get(name)
    return dict(info.configs[0]) if info is not None else {}


def _child(name: str, impl: str, explain_budget: float) -> None:
    import torch

    kwargs = _child_setup(name)
    import optimizers

    if impl == "ours":
        cls = getattr(optimizers, name)
    else:
        cls = getattr(torch.optim, name)
    bias = name != "Muon"

    def make_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(8, 16, bias=bias), torch.nn.Tanh(), torch.nn.Linear(16, 4, bias=bias)
        )

    def set_grads(model, step):
        g = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(32, 8, generator=g)
        y = torch.randn(32, 4, generator=g)
        model.zero_grad(set_to_none=False)
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()

    out: dict = {"name": name, "impl": impl, "kwargs": {k: repr(v) for k, v in kwargs.items()}}

    def emit():
        print("RESULT " + json.dumps(out), flush=True)

    # 1. explain, after one eager warm-up step
    torch._dynamo.reset()
    model = make_model()
    opt = cls(model.parameters(), **kwargs)
    set_grads(model, 1)
    opt.step()
    set_grads(model, 2)

    def step_fn():
        opt.step()

    # explain() only sees breaks that end a graph with ops in it: a break at the
    # top of a frame (e.g. ``.item()`` before any tensor op) is missing from its
    # break_reasons. Dynamo's own graph-break counter and the ``graph_breaks`` log
    # artifact (with the user-code location) see every one, so both are recorded.
    import logging
    import re

    from torch._dynamo.utils import counters

    logged: list[str] = []

    class _Grab(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            m = re.search(r"Graph break in user code at (\S+)\s*\n.*?Graph Break Reason: "
                          r"(?:Encountered graph break when attempting to trace [^\n]*\n\s*\n)?\s*([^\n]+)",
                          msg, re.S)
            if m:
                where = m.group(1).replace(str(ROOT) + "/", "")
                where = re.sub(r".*site-packages/", "", where)
                logged.append(f"{where}: {m.group(2).strip()}")

    handler = _Grab()
    gb_logger = logging.getLogger("torch._dynamo.symbolic_convert.__graph_breaks")
    gb_logger.addHandler(handler)
    torch._logging.set_logs(graph_breaks=True)
    counters.clear()
    t0 = time.perf_counter()
    try:
        ex = torch._dynamo.explain(step_fn)()
        out["explain"] = {
            "graph_count": ex.graph_count,
            "graph_break_count": ex.graph_break_count,
            "op_count": ex.op_count,
            "break_reasons": [_short(r.reason) for r in ex.break_reasons[:3]],
            "n_break_reasons": len(ex.break_reasons),
        }
    except Exception as e:  # noqa: BLE001 - report, do not hide
        out["explain"] = {"error": _short(f"{type(e).__name__}: {e}", 200)}
    out["explain_s"] = round(time.perf_counter() - t0, 1)
    out["dynamo_graph_breaks"] = sum(counters["graph_break"].values())
    out["dynamo_graph_break_reasons"] = {
        _short(k.splitlines()[0], 120): v for k, v in counters["graph_break"].items()
    }
    seen: list[str] = []
    for item in logged:
        if item not in seen:
            seen.append(_short(item, 200))
    out["graph_break_sites"] = seen[:5]
    out["n_graph_break_log_records"] = len(logged)
    gb_logger.removeHandler(handler)
    torch._logging.set_logs()
    emit()

    if out["explain_s"] > explain_budget:
        out["compile"] = {"skipped": f"explain took {out['explain_s']} s > {explain_budget} s"}
        emit()
        return

    # 2./3. compiled steps 2..6 against eager, identical copies
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    m_eager, m_comp = make_model(), make_model()
    o_eager = cls(m_eager.parameters(), **kwargs)
    o_comp = cls(m_comp.parameters(), **kwargs)

    @torch.compile(backend="inductor")
    def compiled_step():
        o_comp.step()

    frames_per_step = []
    diffs = {}
    t0 = time.perf_counter()
    try:
        for step in range(1, STEPS + 1):
            set_grads(m_eager, step)
            o_eager.step()
            set_grads(m_comp, step)
            before = counters["frames"]["ok"]
            if step == 1:
                o_comp.step()  # eager warm-up: the state exists before compiling
            else:
                compiled_step()
                frames_per_step.append(counters["frames"]["ok"] - before)
            if step in (COMPARE_AT, STEPS):
                diffs[step] = max(
                    (a - b).abs().max().item()
                    for a, b in zip(m_eager.parameters(), m_comp.parameters())
                )
        out["compile"] = {
            "frames_compiled_per_step_2_to_6": frames_per_step,
            "first_compile_frames": frames_per_step[0],
            "recompiles_steps_3_to_6": sum(frames_per_step[1:]),
            "unique_graphs": counters["stats"]["unique_graphs"],
            "max_abs_diff_step3": diffs.get(COMPARE_AT),
            "max_abs_diff_step6": diffs.get(STEPS),
            "compile_run_s": round(time.perf_counter() - t0, 1),
        }
    except Exception as e:  # noqa: BLE001
        out["compile"] = {
            "error": _short(f"{type(e).__name__}: {e}", 200),
            "frames_compiled_per_step_2_to_6": frames_per_step,
        }
    emit()


def _time_child(name: str) -> None:
    """Compiled step time of ours and torch.optim's class, interleaved in this process."""
    import random
    import statistics

    import torch

    kwargs = _child_setup(name)
    import optimizers

    shapes = [s for s in TIMING_SHAPES if len(s) == 2] if name == "Muon" else TIMING_SHAPES
    if name == "FullMatrixAdagrad":  # its d x d matrix per tensor: small tensors only
        shapes = TIMING_SHAPES_FULL_MATRIX
    gen = torch.Generator().manual_seed(0)
    pool = [torch.randn(s, generator=gen) for s in shapes]
    classes = {"ours compiled": getattr(optimizers, name)}
    if hasattr(torch.optim, name):
        classes["torch compiled"] = getattr(torch.optim, name)
    classes["ours eager"] = getattr(optimizers, name)
    runs = {}
    out: dict = {"name": name, "n_params": sum(p.numel() for p in pool), "n_tensors": len(pool)}
    for label, cls in classes.items():
        params = [torch.nn.Parameter(t.clone() * 0.1) for t in pool]
        opt = cls(params, **{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()})
        for p, g in zip(params, pool):
            p.grad = g.clone()
        opt.step()  # eager: the state exists

        def step(opt=opt):
            opt.step()

        fn = torch.compile(step, backend="inductor") if "compiled" in label else step
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        out[f"{label} warm-up s"] = round(time.perf_counter() - t0, 1)
        runs[label] = (fn, params)
    times: dict[str, list[float]] = {k: [] for k in runs}
    ratios: list[float] = []
    for _ in range(TIMING_ROUNDS):
        order = list(runs)
        random.shuffle(order)
        this = {}
        for label in order:
            fn, params = runs[label]
            for p, g in zip(params, pool):
                p.grad.copy_(g)
            t0 = time.perf_counter()
            fn()
            this[label] = time.perf_counter() - t0
            times[label].append(this[label])
        ref = "torch compiled" if "torch compiled" in this else "ours eager"
        ratios.append(this["ours compiled"] / this[ref])
    out["median_ms"] = {k: round(1e3 * statistics.median(v), 3) for k, v in times.items()}
    out["ratio_reference"] = "torch compiled" if "torch compiled" in runs else "ours eager"
    out["median_ratio"] = round(statistics.median(ratios), 3)
    print("RESULT " + json.dumps(out), flush=True)


# -------------------------------------------------------------------------- parent


def _run_one(name: str, impl: str, timeout: float, explain_budget: float) -> dict:
    cmd = [sys.executable, "-u", __file__, "--child", name, "--impl", impl,
           "--explain-budget", str(explain_budget)]
    t0 = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
        stdout, stderr, timed_out = p.stdout, p.stderr, False
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        timed_out = True
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    res = json.loads(lines[-1][7:]) if lines else {"name": name, "impl": impl}
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    if timed_out:
        res["timed_out"] = f"killed after {timeout:.0f} s"
    if not lines:
        tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        res["error"] = _short(tail[0] if tail else "no output", 200)
    return res


def _run_timing(name: str, timeout: float) -> dict:
    cmd = [sys.executable, "-u", __file__, "--time-child", name]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=2 * timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"timed_out": f"killed after {2 * timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        tail = p.stderr.strip().splitlines()[-1:] if p.stderr.strip() else []
        return {"error": _short(tail[0] if tail else "no output", 200)}
    return json.loads(lines[-1][7:])


def _classes() -> list[str]:
    sys.path.insert(0, str(ROOT))
    import torch

    import optimizers

    names = []
    for n in optimizers.__all__:
        obj = getattr(optimizers, n)
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and n != "OptimizerBase":
            names.append(n)
    return names


def _fmt_explain(r: dict | None) -> tuple[str, str]:
    """(graph-break cell, first reason) of one explain run."""
    if r is None:
        return "–", ""
    if "timed_out" in r and "explain" not in r:
        return "timeout", r["timed_out"]
    e = r.get("explain")
    if e is None:
        return "error", r.get("error", "")
    if "error" in e:
        return "error", e["error"]
    n = r.get("dynamo_graph_breaks", 0)
    deliberate = sum(v for k, v in r.get("dynamo_graph_break_reasons", {}).items()
                     if k.startswith("Call to `torch._dynamo.graph_break()`"))
    cell = f"{n}"
    if deliberate:
        cell += f" ({deliberate} deliberate `torch._dynamo.graph_break()`)"
    cell += f"; explain: {e['graph_count']} graphs, {max(e['graph_break_count'], 0)} breaks"
    sites = r.get("graph_break_sites") or []
    reason = sites[0] if sites else (e["break_reasons"][0] if e["break_reasons"] else "")
    if any("falling back to eager" in s for s in sites):
        reason += " (and Dynamo skips frames: they run eagerly)"
    return cell, reason


def _fmt_compile(r: dict | None) -> tuple[str, str]:
    """(recompiles cell, compiled == eager cell) of one run."""
    if r is None:
        return "–", "–"
    c = r.get("compile")
    if c is None:
        return "not run (" + (r.get("timed_out") or r.get("error") or "no result") + ")", "not run"
    if "skipped" in c:
        return "skipped: " + c["skipped"], "skipped"
    if "error" in c:
        return "error: " + c["error"], "–"
    rec = (f"{c['recompiles_steps_3_to_6']} (step 2: {c['first_compile_frames']} frames; "
           f"{c['unique_graphs']} graphs in all)")
    d = c["max_abs_diff_step3"]
    eq = f"{'yes' if d <= TOL else 'NO'} ({d:.1e})"
    if c["unique_graphs"] == 0:
        eq += ", but nothing was compiled: the step ran eagerly"
    return rec, eq


def _fmt_timing(t: dict | None) -> tuple[str, str]:
    if not t:
        return "not run", "–"
    if "median_ms" not in t:
        return "not run (" + (t.get("timed_out") or t.get("error") or "no result") + ")", "–"
    ms = t["median_ms"]
    cell = " / ".join(f"{ms[k]:.2f}" if k in ms else "–" for k in ("ours compiled", "torch compiled", "ours eager"))
    ref = "torch.optim compiled" if t["ratio_reference"] == "torch compiled" else "ours eager"
    return cell, f"{t['median_ratio']:.2f} (vs {ref})"


def _write(rows: list[dict], meta: dict) -> None:
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compile_audit.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        "# Optimizer steps under torch.compile",
        "",
        f"torch {torch.__version__}, CPU, float32, model Linear(8,16)-Tanh-Linear(16,4) "
        "(no biases for Muon); constructor: first configuration of the catalogue entry. "
        "Graph breaks: Dynamo's graph-break counter (`counters['graph_break']`) while "
        "`torch._dynamo.explain` runs a function calling `opt.step()` after one eager warm-up "
        "step; in brackets what `explain` itself reports (it misses a break that comes before "
        "any op of a frame, and a frame Dynamo then skips gives no graph at all). Recompiles: frames Dynamo compiled during compiled steps 3..6 "
        "(step 1 eager, step 2 the first compilation). Compiled == eager: largest absolute "
        "parameter difference after 3 steps against an identical eager run. "
        f"Generated by `benchmarks/compile_audit.py` ({meta['date']}, total {meta['total_s']:.0f} s)"
        + (f"; a partial re-run of {', '.join(meta['partial_run'])} on that date, the other rows "
           f"from the run of {meta.get('full_run_date', 'an earlier date')}." if meta.get("partial_run") else "."),
        "",
        "| optimizer | ours graph breaks | first reason (ours) | torch.optim graph breaks | "
        "first reason (torch.optim) | ours: recompiles (steps 3..6) | "
        "ours: compiled == eager (max abs diff, step 3) | torch.optim: recompiles | "
        "torch.optim: compiled == eager | compiled step, ms (ours / torch.optim / ours eager) | "
        "ours compiled / reference (median of per-round ratios) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["name"]
        if "not_applicable" in r:
            lines.append(f"| {name} | n/a | {r['not_applicable']} | n/a | | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        if "missing" in r:
            lines.append(f"| {name} | not run | {r['missing']} | not run | | not run | not run | not run | not run | not run | not run |")
            continue
        ob, oreason = _fmt_explain(r.get("ours"))
        tb, treason = _fmt_explain(r.get("torch")) if r.get("torch") else ("– (no torch.optim class)", "")
        rec, eq = _fmt_compile(r.get("ours"))
        trec, teq = _fmt_compile(r.get("torch"))
        oreason, treason = oreason.replace("|", "\\|"), treason.replace("|", "\\|")
        tcell, rcell = _fmt_timing(r.get("timing"))
        lines.append(f"| {name} | {ob} | {oreason} | {tb} | {treason} | {rec} | {eq} | {trec} | {teq} | {tcell} | {rcell} |")
    lines += [
        "",
        f"\"yes\" means a difference of at most {TOL:g} (float32 round-off of a few steps; "
        "Muon's Newton-Schulz iteration runs in bfloat16, so its compiled and eager steps "
        "round differently). Where Dynamo skips the frames that hold the update "
        "(\"Failed to handle graph break gracefully ... falling back to eager\"), the "
        "\"compiled\" step runs eagerly and its equality says nothing about compiled code: "
        "\"graphs in all\" (`counters['stats']['unique_graphs']`) is then 0. "
        "The JSON holds per-step frame counts, up to five break sites per optimizer, "
        "the explain times and the difference after 6 steps. The timing columns: "
        "compiled (inductor) steps on about 2.1M float32 parameters in 12 tensors, ours and "
        "torch.optim's interleaved in one process (see the script's docstring); the reference "
        "of the ratio is torch.optim compiled, or ours eager where torch has no class.",
        "",
    ]
    (RESULTS / "compile_audit.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--time-child")
    ap.add_argument("--no-timing", action="store_true", help="skip the compiled-step timing")
    ap.add_argument("--impl", default="ours")
    ap.add_argument("--only", default="")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds per subprocess")
    ap.add_argument("--explain-budget", type=float, default=60.0,
                    help="skip the compile check when explain took longer than this")
    ap.add_argument("--total-budget", type=float, default=840.0,
                    help="stop starting new optimizers after this many seconds")
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.impl, args.explain_budget)
        return
    if args.time_child:
        _time_child(args.time_child)
        return
    if args.render:  # rewrite the markdown from the committed JSON
        data = json.loads((RESULTS / "compile_audit.json").read_text())
        for row in data["rows"]:
            if row["name"] in NOT_APPLICABLE:
                row["not_applicable"] = NOT_APPLICABLE[row["name"]]
        _write(data["rows"], data["meta"])
        return

    import torch

    names = _classes()
    if args.only:
        keep = set(args.only.split(","))
        names = [n for n in names if n in keep]
    t_start = time.perf_counter()
    rows: list[dict] = []
    previous: dict[str, dict] = {}
    previous_meta: dict = {}
    if args.only and (RESULTS / "compile_audit.json").exists():
        # a partial run replaces its rows in the committed results and keeps the others
        committed = json.loads((RESULTS / "compile_audit.json").read_text())
        previous = {r["name"]: r for r in committed["rows"]}
        previous_meta = committed["meta"]

    def merged(rows: list[dict]) -> list[dict]:
        if not previous:
            return rows
        new = {r["name"]: r for r in rows}
        return [new.get(n, previous.get(n)) for n in _classes() if n in new or n in previous]

    for name in names:
        if name in NOT_APPLICABLE:
            rows.append({"name": name, "not_applicable": NOT_APPLICABLE[name]})
            continue
        if time.perf_counter() - t_start > args.total_budget:
            rows.append({"name": name, "missing": "total time budget spent"})
            continue
        row = {"name": name, "ours": _run_one(name, "ours", args.timeout, args.explain_budget)}
        if hasattr(torch.optim, name):
            row["torch"] = _run_one(name, "torch", args.timeout, args.explain_budget)
        if not args.no_timing:
            row["timing"] = _run_timing(name, args.timeout)
        rows.append(row)
        print(name, json.dumps(row)[:300], flush=True)
        meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "torch": torch.__version__, "total_s": time.perf_counter() - t_start,
                "timeout_s": args.timeout, "explain_budget_s": args.explain_budget}
        _write(merged(rows), meta)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "torch": torch.__version__, "total_s": time.perf_counter() - t_start,
            "timeout_s": args.timeout, "explain_budget_s": args.explain_budget}
    if previous:
        meta["partial_run"] = sorted(names)
        meta["full_run_date"] = previous_meta.get("full_run_date", previous_meta.get("date"))
    _write(merged(rows), meta)


if __name__ == "__main__":
    main()
