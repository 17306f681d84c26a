"""AdamW vs Lion vs SophiaG on the book's character-level Transformer (optimizers.book.charlm).

Protocol (the same for every method):

* the model of :func:`optimizers.book.charlm.train_charlm` at its default size (2 layers, width 64,
  context 64, batch 16 windows), float32, one intra-op thread, ``STEPS`` steps, constant learning
  rate; weight decay on matrices only (:func:`~optimizers.book.charlm.decay_groups`);
* tuning: a 3 x 4 grid over (lr, weight_decay) per method, twelve runs each, on the tuning seed
  ``TUNE_SEED``, which is not a reported seed; the learning rates are centred on each method's
  usual default (Lion: lr smaller than AdamW's, as its paper advises); the weight decays are zero
  and three values a factor ~3 apart around the usual default (Lion: larger than AdamW's;
  SophiaG: around the official runs' 0.2; default rho = 0.04, Hessian every 10 steps). Zero is in
  every grid because weight decay cannot go lower: a winner at zero is at the end of the feasible
  range, not at an edge that a wider grid could move. The criterion is the validation loss after
  the last step; whether the winner lies inside the grid is recorded (``interior``; for weight
  decay, zero counts as inside, and ``wd_at_zero`` says when it won);
* reporting: the chosen setting of each method on seeds ``REPORT_SEEDS`` (initialisation and
  window order), runs interleaved seed by seed so that the machine's load falls on all methods
  alike; per-step training loss, validation loss every ``EVAL_EVERY`` steps, cumulative
  wall-clock, bytes of optimizer state.

Writes benchmarks/results/charlm_modern.json (everything) and charlm_modern.csv (one row per
reported run). Run from the repository root: ``nice .venv/bin/python benchmarks/charlm_modern.py``
(the committed results took 6 minutes on the 2-core machine, with other work running). ``--quick`` runs a tiny version (for a smoke test;
writes to /tmp).

Wall-clock times recorded on a shared machine vary by a factor two between identical runs: the
loss-against-time curves show the order of magnitude, not a ranking.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import optimizers
from optimizers.book.charlm import decay_groups, state_bytes, train_charlm

ROOT = Path(__file__).resolve().parent.parent
STEPS = 400
EVAL_EVERY = 50
TUNE_SEED = 100
REPORT_SEEDS = (0, 1, 2)
HESSIAN_EVERY = 10

GRIDS = {
    "AdamW": {"lr": [1e-3, 3e-3, 1e-2], "weight_decay": [0.0, 0.01, 0.03, 0.1]},
    "Lion": {"lr": [3e-4, 1e-3, 3e-3], "weight_decay": [0.0, 0.1, 0.3, 1.0]},
    "SophiaG": {"lr": [1e-4, 3e-4, 1e-3], "weight_decay": [0.0, 0.1, 0.3, 1.0]},
}


def factory(name: str, lr: float, wd: float):
    if name == "AdamW":
        return lambda m: optimizers.AdamW(decay_groups(m, wd), lr=lr)
    if name == "Lion":
        return lambda m: optimizers.Lion(decay_groups(m, wd), lr=lr)
    if name == "SophiaG":
        from optimizers.sophia import SophiaG

        return lambda m: SophiaG(decay_groups(m, wd), lr=lr)
    raise ValueError(name)


def available_methods() -> list[str]:
    names = ["AdamW", "Lion"]
    try:
        from optimizers.sophia import SophiaG  # noqa: F401
    except ImportError:
        print("optimizers.sophia.SophiaG is not importable: AdamW and Lion only")
    else:
        names.append("SophiaG")
    return names


def run(name, lr, wd, seed, steps, eval_every):
    r = train_charlm(factory(name, lr, wd), steps=steps, seed=seed, eval_every=eval_every,
                     hessian_every=HESSIAN_EVERY)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    steps, eval_every = (20, 10) if args.quick else (STEPS, EVAL_EVERY)
    out_dir = Path("/tmp/charlm_modern_quick") if args.quick else ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = available_methods()
    t_start = time.time()

    tuning = {}
    for name in methods:
        grid = GRIDS[name]
        rows = []
        for lr, wd in itertools.product(grid["lr"], grid["weight_decay"]):
            r = run(name, lr, wd, TUNE_SEED, steps, eval_every)
            final = float(r.eval_loss[-1])
            rows.append({"lr": lr, "weight_decay": wd, "final_val_loss": final if np.isfinite(final) else None,
                         "eval_loss": [float(v) for v in r.eval_loss]})
            print(f"tune {name:8s} lr={lr:g} wd={wd:g} val={final:.4f} ({time.time() - t_start:.0f}s)", flush=True)
        ok = [row for row in rows if row["final_val_loss"] is not None]
        best = min(ok, key=lambda row: row["final_val_loss"])
        interior = {
            "lr": grid["lr"][0] < best["lr"] < grid["lr"][-1],
            # zero is the end of the feasible range, not a grid edge
            "weight_decay": grid["weight_decay"][0] <= best["weight_decay"] < grid["weight_decay"][-1],
        }
        assert grid["weight_decay"][0] == 0.0
        tuning[name] = {"grid": grid, "runs": rows, "best": {"lr": best["lr"], "weight_decay": best["weight_decay"]},
                        "interior": interior, "wd_at_zero": best["weight_decay"] == 0.0}
        print(f"best {name}: {tuning[name]['best']} interior={interior}", flush=True)

    reported = {name: [] for name in methods}
    for seed in REPORT_SEEDS:
        for name in methods:
            best = tuning[name]["best"]
            r = run(name, best["lr"], best["weight_decay"], seed, steps, eval_every)
            nbytes = state_bytes(r.optimizer)
            reported[name].append({
                "seed": seed,
                "train_loss": [round(float(v), 5) for v in r.train_loss],
                "eval_steps": [int(v) for v in r.eval_steps],
                "eval_loss": [float(v) for v in r.eval_loss],
                "seconds": [round(float(v), 4) for v in r.seconds],
                "state_bytes": nbytes,
                "n_params": r.n_params,
            })
            print(f"report {name:8s} seed={seed} val={r.eval_loss[-1]:.4f} time={r.seconds[-1]:.1f}s "
                  f"state={nbytes / r.n_params:.2f} B/param", flush=True)

    result = {
        "description": "AdamW vs Lion vs SophiaG on the character-level Transformer of optimizers.book.charlm; "
                       "see benchmarks/charlm_modern.py for the protocol",
        "protocol": {"steps": steps, "eval_every": eval_every, "tune_seed": TUNE_SEED,
                     "report_seeds": list(REPORT_SEEDS), "hessian_every": HESSIAN_EVERY,
                     "model": {"d": 64, "n_layers": 2, "heads": 4, "context": 64, "batch_size": 16,
                               "dtype": "float32", "threads": 1},
                     "criterion": "validation loss after the last step (nats per character)",
                     "lr_schedule": "constant"},
        "methods": methods,
        "tuning": tuning,
        "reported": reported,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(),
                        "note": "shared 2-core machine: wall-clock times are noisy; runs interleaved"},
        "total_seconds": round(time.time() - t_start, 1),
    }
    (out_dir / "charlm_modern.json").write_text(json.dumps(result, indent=1) + "\n")
    with open(out_dir / "charlm_modern.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "lr", "weight_decay", "seed", "final_val_loss", "seconds",
                    "state_bytes", "n_params", "state_bytes_per_param"])
        for name in methods:
            best = tuning[name]["best"]
            for rec in reported[name]:
                w.writerow([name, best["lr"], best["weight_decay"], rec["seed"], f"{rec['eval_loss'][-1]:.5f}",
                            f"{rec['seconds'][-1]:.2f}", rec["state_bytes"], rec["n_params"],
                            f"{rec['state_bytes'] / rec['n_params']:.4f}"])
    print(f"wrote {out_dir} in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
