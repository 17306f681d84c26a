"""AdamW, Shampoo, SOAP and Muon on the digits network with the same tuning budget.

The long runs behind book/17_matrix_preconditioners.md. The network is the book's MLP on the
bundled digits (``optimizers.book.train.train_classifier``, 64 -> 64 -> 64 -> 10, tanh,
float64, batches of 64). Every method gets the same learning-rate grid (half-decade steps) and
nothing else is tuned: the other hyperparameters are each method's published defaults (weight
decay 0 for all, so that only the preconditioner differs):

* AdamW: betas (0.9, 0.999), eps 1e-8, every parameter.
* Shampoo: momentum 0.9, AdaGrad grafting, roots every 10 steps, eps 1e-6; biases get its
  diagonal (AdaGrad) rule.
* SOAP: betas (0.95, 0.95), shampoo_beta = beta2, basis refreshed every 10 steps; biases get AdamW.
* Muon: the two hidden-layer matrices (64 x 64 each: the input layer of a network on pixels
  is a dense map, not an embedding table) with Muon (momentum 0.95, Nesterov,
  ``adjust_lr_fn="match_rms_adamw"`` so that one learning rate serves both parts, as Liu et al.
  propose); the output layer and the biases with AdamW at the same learning rate.

A rate is scored by the mean, over the tuning seeds, of the full-training-set loss after the
budget (a diverged run scores +inf). Whenever a method's best rate lies on an edge of the grid,
the grid is extended by one half-decade on that side for every method; this repeats until every
winner is interior. The chosen rate of each method is then run on the reporting seeds (disjoint
from the tuning seeds), timed (interleaved: seed by seed, method by method), and its optimizer
state counted.

Run from the repository root (a few minutes on 2 shared cores)::

    python benchmarks/matrix_preconditioners.py   # writes benchmarks/results/matrix_preconditioners.{json,md}
"""
from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import optimizers
from optimizers.book.train import train_classifier

HIDDEN = (64, 64)
EPOCHS = 15
TUNE_SEEDS = (0, 1)
REPORT_SEEDS = (2, 3, 4)
GRID = [10.0 ** (k / 2) for k in range(-7, 0)]  # 3e-4 ... 3e-1, half-decade steps
TARGET = 0.01  # full-training-set loss for "epochs to target"
OUT = Path(__file__).resolve().parent / "results"


class Combined:
    """Several optimizers stepped as one (the Muon + AdamW split). Enough of the
    ``torch.optim.Optimizer`` interface for a training loop: ``param_groups``, ``state``,
    ``zero_grad``, ``step``."""

    def __init__(self, *opts):
        self.opts = opts
        self.param_groups = [g for o in opts for g in o.param_groups]

    @property
    def state(self):
        return {p: s for o in self.opts for p, s in o.state.items()}

    def zero_grad(self, set_to_none: bool = True):
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        for o in self.opts:
            o.step()


def muon_split(params, lr):
    """Muon for the hidden matrices, AdamW for the output layer and the vectors.

    ``params`` in the order of ``model.parameters()`` of the book's MLP: weight, bias, weight,
    bias, ... The last weight is the classifier head."""
    params = list(params)
    weights = [p for p in params if p.ndim == 2]
    hidden = weights[:-1]
    rest = [p for p in params if all(p is not h for h in hidden)]
    return Combined(
        optimizers.Muon(hidden, lr=lr, weight_decay=0.0, adjust_lr_fn="match_rms_adamw"),
        optimizers.AdamW(rest, lr=lr, weight_decay=0.0),
    )


METHODS = {
    "AdamW": lambda p, lr: optimizers.AdamW(p, lr=lr, weight_decay=0.0),
    "Shampoo": lambda p, lr: optimizers.Shampoo(p, lr=lr, momentum=0.9, grafting="adagrad",
                                                precondition_frequency=10),
    "SOAP": lambda p, lr: optimizers.SOAP(p, lr=lr, weight_decay=0.0, precondition_frequency=10),
    "Muon": muon_split,
}


def run(name: str, lr: float, seed: int):
    holder = {}

    def make(params):
        holder["opt"] = METHODS[name](params, lr)
        return holder["opt"]

    t0 = time.perf_counter()
    res = train_classifier(make, hidden=HIDDEN, epochs=EPOCHS, seed=seed)
    seconds = time.perf_counter() - t0
    return res, holder["opt"], seconds


def score(name: str, lr: float) -> float:
    losses = []
    for seed in TUNE_SEEDS:
        res, _, _ = run(name, lr, seed)
        final = res.epoch_train_loss[-1]
        losses.append(final if math.isfinite(final) else math.inf)
    return float(np.mean(losses))


def state_numbers(opt, model_params) -> dict:
    """Numbers (and bytes) held in the optimizer's state per parameter of the model."""
    n_params = sum(p.numel() for p in model_params)
    numbers = nbytes = 0
    for st in opt.state.values():
        for v in st.values():
            if torch.is_tensor(v) and v.dim() > 0:
                numbers += v.numel()
                nbytes += v.numel() * v.element_size()
    return {"numbers_per_param": numbers / n_params, "bytes_per_param": nbytes / n_params, "n_params": n_params}


def main() -> None:
    grid = list(GRID)
    scores: dict[str, dict[float, float]] = {name: {} for name in METHODS}
    while True:
        for name in METHODS:
            for lr in grid:
                if lr not in scores[name]:
                    scores[name][lr] = score(name, lr)
                    print(f"{name:8s} lr {lr:.3g}: {scores[name][lr]:.4g}", flush=True)
        best = {name: min(grid, key=lambda lr: scores[name][lr]) for name in METHODS}
        low = any(b == grid[0] for b in best.values())
        high = any(b == grid[-1] for b in best.values())
        if not (low or high):
            break
        if low:
            grid.insert(0, grid[0] / math.sqrt(10))
        if high:
            grid.append(grid[-1] * math.sqrt(10))

    report: dict[str, dict] = {name: {"epoch_train_loss": [], "epoch_test_accuracy": [], "seconds": [],
                                      "steps": None} for name in METHODS}
    for seed in REPORT_SEEDS:
        for name in METHODS:  # interleaved, so that a busy spell of the machine hits every method
            res, opt, seconds = run(name, best[name], seed)
            r = report[name]
            r["epoch_train_loss"].append(res.epoch_train_loss.tolist())
            r["epoch_test_accuracy"].append(res.epoch_test_accuracy.tolist())
            r["seconds"].append(seconds)
            r["steps"] = len(res.step_loss)
            r.update(state_numbers(opt, list(res.model.parameters())))

    results = {
        "workload": {"hidden": HIDDEN, "epochs": EPOCHS, "batch_size": 64, "dtype": "float64",
                     "data": "digits (optimizers.book.problems.digits)"},
        "tune_seeds": TUNE_SEEDS, "report_seeds": REPORT_SEEDS, "target": TARGET,
        "grid": grid,
        "scores": {name: [scores[name][lr] for lr in grid] for name in METHODS},
        "best_lr": best,
        "report": report,
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine(),
                    "threads": 1},
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "matrix_preconditioners.json").write_text(json.dumps(results, indent=1) + "\n")

    lines = ["# AdamW, Shampoo, SOAP and Muon on the digits network", "",
             f"MLP 64-{HIDDEN[0]}-{HIDDEN[1]}-10, {EPOCHS} epochs of batches of 64 "
             f"({report['AdamW']['steps']} steps), float64, one thread. Learning rate tuned on seeds "
             f"{TUNE_SEEDS} over the same grid; reported: mean over seeds {REPORT_SEEDS}.", "",
             "| method | lr | final train loss | test accuracy | epochs to loss <= "
             f"{TARGET:g} | seconds per step | state numbers per parameter | state bytes per parameter |",
             "|---|---|---|---|---|---|---|---|"]
    for name in METHODS:
        r = report[name]
        losses = np.array(r["epoch_train_loss"])
        reach = [int(np.argmax(row <= TARGET)) + 1 if (row <= TARGET).any() else None for row in losses]
        reach_txt = "/".join("-" if e is None else str(e) for e in reach)
        lines.append(f"| {name} | {best[name]:.3g} | {losses[:, -1].mean():.3g} | "
                     f"{np.mean([a[-1] for a in r['epoch_test_accuracy']]):.4f} | {reach_txt} | "
                     f"{np.median(r['seconds']) / r['steps'] * 1e3:.2f} ms | {r['numbers_per_param']:.2f} | "
                     f"{r['bytes_per_param']:.1f} |")
    (OUT / "matrix_preconditioners.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
