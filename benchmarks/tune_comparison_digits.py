"""Learning-rate tuning for the comparison chapter's network task (book/20_comparison.md).

Every optimizer of the chapter gets the same learning-rate grid (half-decade steps). A rate is
scored by the mean, over the tuning seeds, of the full-training-set loss after the budget (a
diverged run scores +inf). Whenever some optimizer's best rate lies on an edge of the grid, the
grid is extended by one half-decade on that side, for every optimizer, and the new rates are
run; this repeats until every winner is interior. The chosen rate of each optimizer is then run
on the reporting seeds, which are disjoint from the tuning seeds.

Run from the repository root (about a minute on 2 cores)::

    python benchmarks/tune_comparison_digits.py   # writes benchmarks/results/comparison_digits_tuning.json

The chapter reads the JSON (grid, every tuning score, chosen rates, reporting-seed results),
plots the tuning curves, and re-runs the reporting seeds itself to check this file.
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

CONTENDERS = {  # the same factories as the chapter's CONTENDERS
    "SGD": lambda p, lr: optimizers.SGD(p, lr=lr),
    "momentum": lambda p, lr: optimizers.SGD(p, lr=lr, momentum=0.9),
    "Nesterov": lambda p, lr: optimizers.SGD(p, lr=lr, momentum=0.9, nesterov=True),
    "AdaGrad": lambda p, lr: optimizers.Adagrad(p, lr=lr),
    "RMSprop": lambda p, lr: optimizers.RMSprop(p, lr=lr),
    "Adadelta": lambda p, lr: optimizers.Adadelta(p, lr=lr),
    "Adam": lambda p, lr: optimizers.Adam(p, lr=lr),
    "NAdam": lambda p, lr: optimizers.NAdam(p, lr=lr),
    "Adamax": lambda p, lr: optimizers.Adamax(p, lr=lr),
    "A2Grad (uni)": lambda p, lr: optimizers.A2Grad(p, lr=lr),
    "LM-Adagrad": lambda p, lr: optimizers.LMAdagrad(p, lr=lr),
}
EPOCHS = 5
TUNING_SEEDS = (100, 101, 102)
REPORTING_SEEDS = (0, 1, 2, 3, 4)
START_EXPONENTS = np.arange(-4.0, 1.51, 0.5)  # 1e-4 ... 10**1.5 before any extension
OUT = Path(__file__).resolve().parent / "results" / "comparison_digits_tuning.json"


def run(name, lr, seed):
    r = train_classifier(lambda p: CONTENDERS[name](p, lr), hidden=(32,), epochs=EPOCHS, seed=seed)
    loss = float(r.epoch_train_loss[-1])
    return (loss if math.isfinite(loss) else math.inf), float(r.epoch_test_accuracy[-1])


def main():
    t0 = time.time()
    exponents = [float(e) for e in START_EXPONENTS]
    scores: dict[str, dict[float, float]] = {n: {} for n in CONTENDERS}
    while True:
        for name in CONTENDERS:
            for e in exponents:
                if e not in scores[name]:
                    losses = [run(name, 10.0 ** e, s)[0] for s in TUNING_SEEDS]
                    scores[name][e] = float(np.mean(losses))  # inf if any tuning seed diverged
        best = {n: min(exponents, key=lambda e: (scores[n][e], e)) for n in CONTENDERS}
        low, high = any(b == exponents[0] for b in best.values()), any(b == exponents[-1] for b in best.values())
        if not (low or high):
            break
        if low:
            exponents.insert(0, exponents[0] - 0.5)
        if high:
            exponents.append(exponents[-1] + 0.5)
        print("extending the grid to", exponents[0], "...", exponents[-1], file=sys.stderr)
    report = {}
    for name in CONTENDERS:
        lr = 10.0 ** best[name]
        runs = [run(name, lr, s) for s in REPORTING_SEEDS]
        report[name] = {"lr_exponent": best[name], "train_loss": [r[0] for r in runs],
                        "test_accuracy": [r[1] for r in runs]}
    out = {
        "what": "digits MLP 64-32-10 (tanh), cross-entropy, batch 64, float64, "
                f"{EPOCHS} epochs; score = mean final full-train loss over the tuning seeds",
        "epochs": EPOCHS, "tuning_seeds": list(TUNING_SEEDS), "reporting_seeds": list(REPORTING_SEEDS),
        "grid_exponents": exponents,
        "tuning_scores": {n: [scores[n][e] if math.isfinite(scores[n][e]) else None for e in exponents]
                          for n in CONTENDERS},
        "chosen": report,
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "seconds": round(time.time() - t0, 1),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT} in {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
