"""Run torch's own optimizer test class on torch.optim and on the package, and compare.

``TestOptimRenewed`` (pytorch's ``test/test_optim.py``) is parametrised over
``optim_db`` (``torch.testing._internal.common_optimizers``): one ``OptimizerInfo``
per ``torch.optim`` class, with its inputs, error inputs and the implementations
torch claims (``supported_impls``: foreach, fused, differentiable). This driver

1. runs the class on CPU with torch's classes (``optim_db`` as shipped);
2. runs it again with every entry replaced by a deep copy whose ``optim_cls`` is
   the package's class of the same name (``optimizers.Adam`` for ``torch.optim.Adam``),
   everything else unchanged, so torch's claims decide which configurations run;
3. writes a Markdown summary: counts per optimizer, a test x optimizer grid of
   outcomes (torch / ours), and every test that passes for torch and fails for
   the package with the first line of its failure, marked where the difference is
   deliberate (``DELIBERATE``) or known with its fix's place (``KNOWN``);
4. tries every ``ErrorOptimizerInput`` of ``optim_db`` on its own, on both classes
   (``test_errors`` stops at an optimizer's first mismatch).

torch's test file is not in the wheel and is not part of this repository; pass
its path. It imports ``expecttest`` (torch's test dependency): install it outside
the project (``pip install --no-deps --target DIR expecttest``) and pass ``--site DIR``.

    .venv/bin/python tools/run_torch_optim_suite.py /tmp/torchsuite/test_optim.py \\
        --site /tmp/torchsuite/site --out benchmarks/results/torch_testoptim.md

Both runs are subprocesses of ``pytest -p no:xdist`` on CPU (``-k cpu``), each with this
module loaded as a pytest plugin (``-p tools.run_torch_optim_suite``) that records
outcomes and, for the package's run, substitutes the classes before collection.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_ENV_IMPL = "TORCH_OPTIM_SUITE_IMPL"  # "torch" or "ours"
_ENV_OUT = "TORCH_OPTIM_SUITE_JSON"


# --------------------------------------------------------------------------- plugin side
def _substitute_package_classes() -> list[str]:
    """Replace each ``optim_db`` entry, in place, by a copy with the package's class."""
    import torch.testing._internal.common_optimizers as common

    import optimizers

    replaced = []
    for i, info in enumerate(common.optim_db):
        name = info.optim_cls.__name__
        ours = getattr(optimizers, name, None)
        if ours is None:
            continue
        new = copy.deepcopy(info)
        new.optim_cls = ours
        common.optim_db[i] = new
        replaced.append(name)
    return replaced


_RECORDS: dict[str, dict[str, str]] = {}
_REPLACED: list[str] = []


def pytest_configure(config):  # noqa: D103 (pytest hook)
    if os.environ.get(_ENV_IMPL) == "ours":
        _REPLACED.extend(_substitute_package_classes())


def _first_line(report) -> str:
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple):  # skip: (path, line, reason)
        return str(longrepr[2]).splitlines()[0] if longrepr[2] else ""
    crash = getattr(longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(longrepr)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[0][:300] if lines else ""


def pytest_runtest_logreport(report):  # noqa: D103 (pytest hook)
    name = report.nodeid.rsplit("::", 1)[-1]
    rec = _RECORDS.setdefault(name, {"outcome": "passed", "message": ""})
    if report.when == "call" or report.outcome != "passed":
        if rec["outcome"] == "passed" or report.outcome == "failed":
            outcome = report.outcome
            if report.when != "call" and outcome == "failed":
                outcome = "error"
            rec["outcome"] = outcome
            rec["message"] = _first_line(report)


def pytest_sessionfinish(session):  # noqa: D103 (pytest hook)
    out = os.environ.get(_ENV_OUT)
    if out:
        Path(out).write_text(json.dumps(_RECORDS, indent=1, sort_keys=True))
        Path(out).with_suffix(".replaced").write_text(json.dumps(_REPLACED))


# --------------------------------------------------------------------------- driver side
def _run(impl: str, test_file: Path, site: str | None, json_out: Path, extra: list[str]) -> float:
    env = dict(os.environ)
    paths = [str(ROOT)] + ([site] if site else []) + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env[_ENV_IMPL] = impl
    env[_ENV_OUT] = str(json_out)
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    cmd = [
        sys.executable, "-m", "pytest", str(test_file), "-p", "no:xdist", "-p", "no:cacheprovider",
        "-p", "tools.run_torch_optim_suite", "-q", "-k", "cpu", "-W", "ignore", "--tb=line",
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=test_file.parent, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    tail = "\n".join(proc.stdout.splitlines()[-3:])
    print(f"[{impl}] pytest exit {proc.returncode} in {elapsed:.0f} s: {tail}", flush=True)
    if not json_out.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"the {impl} run recorded nothing")
    return elapsed


def _split(test_id: str, names: list[str]) -> tuple[str, str]:
    """``test_x_params_Adam_cpu_float32`` -> (``test_x_params [float32]``, ``Adam``)."""
    for name in sorted(names, key=len, reverse=True):
        m = re.match(rf"^(?P<test>.+)_{name}_cpu(?:_(?P<dtype>\w+))?$", test_id)
        if m:
            dtype = m.group("dtype")
            return (m.group("test") + (f" [{dtype}]" if dtype else ""), name)
    return (test_id, "?")


def _check_error_input(cls, error_input) -> tuple[bool, str]:
    """Does ``cls`` raise (or warn) what torch's ``ErrorOptimizerInput`` expects?

    Returns (matches, what happened): the same check as torch's ``test_errors``, but for
    each error input on its own instead of stopping at the first mismatch.
    """
    import warnings

    from torch.testing._internal.common_optimizers import OptimizerErrorEnum

    inp = error_input.optimizer_error_input
    expected = error_input.error_type
    regex = error_input.error_regex
    construction = error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            opt = cls(inp.params, **inp.kwargs)
            if not construction:
                opt.step()
        except Exception as err:  # noqa: BLE001 (any refusal is recorded)
            got = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            ok = (not issubclass(expected, Warning) and isinstance(err, expected)
                  and re.search(regex, str(err)) is not None)
            return ok, got
    if issubclass(expected, Warning):
        for w in caught:
            if issubclass(w.category, expected) and re.search(regex, str(w.message)):
                return True, f"{w.category.__name__}: {str(w.message).splitlines()[0]}"
        return False, "no matching warning" + (f" ({caught[0].category.__name__}: {caught[0].message})" if caught else "")
    return False, "accepted (no error)"


def _error_inputs_report(optim_db) -> tuple[list[str], dict[str, tuple[int, int, int]]]:
    """Every error input of every ``OptimizerInfo``, on torch's class and on the package's."""
    import torch

    import optimizers

    rows, counts = [], {}
    for info in optim_db:
        name = info.optim_cls.__name__
        if info.optim_error_inputs_func is None or not hasattr(optimizers, name):
            continue
        ours_cls = getattr(optimizers, name)
        torch_inputs = info.optim_error_inputs_func(device="cpu", dtype=torch.float32)
        ours_inputs = info.optim_error_inputs_func(device="cpu", dtype=torch.float32)
        n_torch = n_ours = 0
        for ti, oi in zip(torch_inputs, ours_inputs):
            t_ok, t_got = _check_error_input(info.optim_cls, ti)
            o_ok, o_got = _check_error_input(ours_cls, oi)
            n_torch += t_ok
            n_ours += o_ok
            if t_ok and not o_ok:
                desc = ti.optimizer_error_input.desc
                note = DELIBERATE_ERRORS.get((name, desc))
                rows.append(f"- **{name}**, {desc}: expected {ti.error_type.__name__} matching "
                            f"`{ti.error_regex}`; got {o_got}".replace("|", "\\|")
                            + (f" *(deliberate: {note})*" if note else ""))
        counts[name] = (len(torch_inputs), n_torch, n_ours)
    return rows, counts


_CODE = {"passed": "P", "failed": "F", "error": "E", "skipped": "s", None: "-"}


def _summary(torch_rec, ours_rec, names, meta, deliberate) -> str:
    keys = sorted(set(torch_rec) | set(ours_rec))
    grid: dict[str, dict[str, tuple]] = defaultdict(dict)
    counts = {n: (Counter(), Counter()) for n in names}
    for k in keys:
        test, opt = _split(k, names)
        t = torch_rec.get(k, {}).get("outcome")
        o = ours_rec.get(k, {}).get("outcome")
        grid[test][opt] = (t, o)
        if opt in counts:
            counts[opt][0][t] += 1
            counts[opt][1][o] += 1

    lines = ["# torch's TestOptimRenewed on torch.optim and on the package", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += [
        "",
        "Each `optim_db` entry is run twice on CPU: as shipped (torch) and as a deep copy with",
        "`optim_cls` replaced by the package's class of the same name (ours); torch's",
        "`supported_impls` (foreach, fused, differentiable) decide which configurations run for both.",
        "",
        "## Counts per optimizer",
        "",
        "| optimizer | torch passed | torch failed | torch skipped | ours passed | ours failed | ours skipped |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    tot = [0] * 6
    for n in names:
        ct, co = counts[n]
        row = [ct["passed"], ct["failed"] + ct["error"], ct["skipped"],
               co["passed"], co["failed"] + co["error"], co["skipped"]]
        tot = [a + b for a, b in zip(tot, row)]
        lines.append(f"| {n} | " + " | ".join(map(str, row)) + " |")
    lines.append("| **all** | " + " | ".join(f"**{v}**" for v in tot) + " |")

    worse = [(k, *(_split(k, names))) for k in keys
             if torch_rec.get(k, {}).get("outcome") == "passed"
             and ours_rec.get(k, {}).get("outcome") in ("failed", "error")]
    better = [(k, *(_split(k, names))) for k in keys
              if ours_rec.get(k, {}).get("outcome") == "passed"
              and torch_rec.get(k, {}).get("outcome") in ("failed", "error")]
    lines += ["", f"## Passes for torch, fails for the package ({len(worse)})", ""]
    if not worse:
        lines.append("None.")
    for k, test, opt in worse:
        base = test.split(" [")[0]
        note = (f" *(deliberate: {deliberate[(base, opt)]})*" if (base, opt) in deliberate
                else f" *(known: {KNOWN[(base, opt)]})*" if (base, opt) in KNOWN else "")
        msg = ours_rec[k]["message"].replace("|", "\\|")
        lines.append(f"- `{test}` / **{opt}**: {msg}{note}")
    lines += ["", f"## Passes for the package, fails for torch ({len(better)})", ""]
    if not better:
        lines.append("None.")
    for k, test, opt in better:
        msg = torch_rec[k]["message"].replace("|", "\\|")
        lines.append(f"- `{test}` / **{opt}**: torch: {msg}")
    differ = [(k, *(_split(k, names))) for k in keys
              if torch_rec.get(k, {}).get("outcome") != ours_rec.get(k, {}).get("outcome")
              and (k, *(_split(k, names))) not in worse + better]
    lines += ["", f"## Other differences (skipped on one side, or missing) ({len(differ)})", ""]
    if not differ:
        lines.append("None.")
    for k, test, opt in differ:
        t = torch_rec.get(k, {})
        o = ours_rec.get(k, {})
        lines.append(f"- `{test}` / **{opt}**: torch {t.get('outcome')} ({t.get('message', '')}),"
                     f" ours {o.get('outcome')} ({o.get('message', '')})".replace("|", "\\|"))

    both = defaultdict(list)
    for k in keys:
        t, o = torch_rec.get(k, {}), ours_rec.get(k, {})
        if t.get("outcome") in ("failed", "error") and o.get("outcome") in ("failed", "error"):
            test, opt = _split(k, names)
            both[(opt, t.get("message", "")[:160])].append(test)
    lines += ["", f"## Fails for both ({sum(map(len, both.values()))}), by torch's message", ""]
    if not both:
        lines.append("None.")
    for (opt, msg), tests in sorted(both.items()):
        lines.append(f"- **{opt}** ({len(tests)}): torch: {msg}".replace("|", "\\|"))
    for opt in sorted({opt for opt, _ in both}):
        if opt in SHARED:
            lines.append(f"\n{opt}: {SHARED[opt]}.")

    lines += ["", "## Grid (torch/ours: P passed, F failed, E error, s skipped, - not run)", "",
              "| test | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for test in sorted(grid):
        cells = []
        for n in names:
            t, o = grid[test].get(n, (None, None))
            cell = f"{_CODE[t]}/{_CODE[o]}"
            cells.append(f"**{cell}**" if t != o else cell)
        lines.append(f"| `{test}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# Differences the package makes on purpose, named in the summary next to the failure.
# (test name, optimizer) -> why
DELIBERATE: dict[tuple[str, str], str] = {}
# Known differences not (yet) fixed: (test name, optimizer) -> where the fix belongs
KNOWN: dict[tuple[str, str], str] = {}
# Failures shared by torch and the package: optimizer -> why
SHARED: dict[str, str] = {
    "Muon": (
        "this test file predates Muon's entry in optim_db: its tests build 1-D and 4-D "
        "parameters, which Muon refuses (torch's class and the package's alike), and "
        "test_step_is_noop_for_zero_grads skips only configurations that set weight_decay, "
        "while Muon's default weight_decay (0.1) moves the parameter"
    ),
}
# (optimizer, error input's desc) -> why
DELIBERATE_ERRORS: dict[tuple[str, str], str] = {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test_file", type=Path, help="torch's test/test_optim.py (outside the repository)")
    parser.add_argument("--site", help="folder holding expecttest (pip install --target)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/torch_testoptim.md")
    parser.add_argument("--source", default="", help="where the test file comes from (commit, date)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the raw JSON records")
    parser.add_argument("--pytest", default="", help="extra pytest arguments, one string")
    parser.add_argument("--from-records", action="store_true",
                        help="write the summary from the last run's records in --work, without running")
    args = parser.parse_args(argv)
    args.pytest_args = shlex.split(args.pytest)

    if args.site:
        sys.path.insert(0, args.site)
    import torch
    import torch.testing._internal.common_optimizers as common  # fails early without expecttest

    import optimizers

    test_file = args.test_file.resolve()
    work = args.work or test_file.parent
    names = [info.optim_cls.__name__ for info in common.optim_db]
    missing = [n for n in names if not hasattr(optimizers, n)]
    records = {}
    times = {}
    for impl in ("torch", "ours"):
        out = work / f"records_{impl}.json"
        if not args.from_records:
            out.unlink(missing_ok=True)
            times[impl] = _run(impl, test_file, args.site, out, args.pytest_args)
        records[impl] = json.loads(out.read_text())
        replaced = json.loads(out.with_suffix(".replaced").read_text())
        expected = [n for n in names if n not in missing] if impl == "ours" else []
        if replaced != expected:
            raise SystemExit(f"the {impl} run replaced {replaced}, expected {expected}")
    times_file = work / "records_times.json"
    if args.from_records:
        times = json.loads(times_file.read_text())
    else:
        times_file.write_text(json.dumps(times))
    cmd = "python tools/run_torch_optim_suite.py " + " ".join(
        [str(args.test_file)] + ([f"--site {args.site}"] if args.site else [])
        + ([f"--pytest {shlex.quote(args.pytest)}"] if args.pytest else [])
    )
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "optimizers"], cwd=ROOT,
                           capture_output=True, text=True).stdout.split("\n")
    dirty = sorted(line[3:] for line in dirty if line.strip())
    meta = {
        "package": f"commit {head}" + (f", with uncommitted edits in {', '.join(dirty)}" if dirty else ""),
        "torch": torch.__version__,
        "test file": args.source or str(test_file),
        "optimizers in optim_db (all replaced by the package's in the second run)": ", ".join(names)
        + (f" (not in the package, run as torch's: {', '.join(missing)})" if missing else ""),
        "command": f"`{cmd}`",
        "pytest": "`-p no:xdist -k cpu` (CPU device tests only)",
        "run time": f"torch {times['torch']:.0f} s, ours {times['ours']:.0f} s (shared 2-core machine)",
    }
    text = _summary(records["torch"], records["ours"], names, meta, DELIBERATE)
    rows, counts = _error_inputs_report(common.optim_db)
    text += "\n## torch's error inputs, one by one\n\n"
    text += ("`test_errors` stops at an optimizer's first mismatch; here every `ErrorOptimizerInput`\n"
             "of `optim_db` is tried on its own (same type, message matching torch's regex).\n\n")
    text += "| optimizer | error inputs | torch matches | ours matches |\n|---|---:|---:|---:|\n"
    for n, (tot, t, o) in counts.items():
        text += f"| {n} | {tot} | {t} | {o} |\n"
    text += f"\nMismatches of the package ({len(rows)}):\n\n" + ("\n".join(rows) if rows else "None.") + "\n"
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
