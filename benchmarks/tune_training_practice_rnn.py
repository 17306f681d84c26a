"""Learning-rate tuning for the clipping experiments of book/19_training_practice.md.

The task is the chapter's: a tanh RNN (16 units, recurrent matrix of spectral radius about 1.5)
must output the sum of the first two of 20 standard-normal inputs; 300 minibatch steps of 32.
Each variant (optimizer, with or without clipping) gets the same learning-rate grid, in
half-decade steps, extended on a side for every variant until every variant's best rate is
interior. A rate is scored by the mean, over the tuning seeds, of the mean loss of the last 50
steps (a run whose loss is not finite scores +inf). The chosen rate is then run on the reporting
seeds (32, disjoint from the tuning seeds: single runs are chaotic, so only statistics over many
seeds are stable), where we also record the fraction of steps whose gradient
norm exceeded the clipping threshold.

Run from the repository root (about four minutes of CPU time for the tuning, two more for
``--scalar-check``; longer on a busy machine)::

    python benchmarks/tune_training_practice_rnn.py                  # writes benchmarks/results/training_practice_rnn_tuning.json
    python benchmarks/tune_training_practice_rnn.py --scalar-check   # adds the reporting runs with torch's scalar kernels

``--scalar-check`` re-runs the reporting seeds at the chosen rates in a child process with
``ATEN_CPU_CAPABILITY=default`` (torch's scalar kernels, as on a CPU without vector units) and
stores them under ``scalar_kernels``: the chaos of single runs shows as different per-seed values,
and the chapter checks that its comparisons hold on both sets of runs (run both commands, in this
order: the chapter needs both). The chapter reads the JSON
and re-runs a few reporting seeds itself.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import optimizers

torch.set_num_threads(1)
S, HIDDEN = 20, 16


def sequence_task(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, S, 1, generator=g, dtype=torch.float64)
    return x, x[:, :2, 0].sum(1, keepdim=True)


class TinyRNN(torch.nn.Module):
    def __init__(self, gain=1.5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.rnn = torch.nn.RNN(1, HIDDEN, batch_first=True, dtype=torch.float64)
        self.out = torch.nn.Linear(HIDDEN, 1, dtype=torch.float64)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(gain * torch.randn(HIDDEN, HIDDEN, dtype=torch.float64)
                                        / math.sqrt(HIDDEN))

    def forward(self, x):
        return self.out(self.rnn(x)[0][:, -1])


def train_rnn(make_opt, clip=None, steps=300, seed=0):
    X, Y = sequence_task(seed=seed)
    net = TinyRNN(seed=seed)
    opt = make_opt(net.parameters())
    losses, norms = [], []
    for step in range(steps):
        idx = torch.arange(step * 32 % 256, step * 32 % 256 + 32)
        opt.zero_grad()
        loss = ((net(X[idx]) - Y[idx]) ** 2).mean()
        loss.backward()
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in net.parameters()]).item())
        if clip is not None:
            clip(list(net.parameters()))
        opt.step()
        losses.append(loss.item())
    return np.array(losses), np.array(norms)


def norm_clip(tau):
    return lambda ps: torch.nn.utils.clip_grad_norm_(ps, tau)


def value_clip(v):
    return lambda ps: torch.nn.utils.clip_grad_value_(ps, v)


SGD = lambda lr: (lambda p: optimizers.SGD(p, lr=lr, momentum=0.9))  # noqa: E731
ADAM = lambda lr: (lambda p: optimizers.Adam(p, lr=lr))  # noqa: E731
RMSPROP = lambda lr: (lambda p: optimizers.RMSprop(p, lr=lr))  # noqa: E731
# name: (optimizer factory lr -> (params -> optimizer), clip, threshold counted as "clipped")
VARIANTS = {
    "SGD": (SGD, None, None),
    "SGD, norm <= 1": (SGD, norm_clip(1.0), 1.0),
    "SGD, norm <= 10": (SGD, norm_clip(10.0), 10.0),
    "SGD, values <= 0.1": (SGD, value_clip(0.1), None),
    "Adam": (ADAM, None, None),
    "Adam, norm <= 1": (ADAM, norm_clip(1.0), 1.0),
    "RMSprop": (RMSPROP, None, None),
    "RMSprop, norm <= 1": (RMSPROP, norm_clip(1.0), 1.0),
}
TUNING_SEEDS = (100, 101, 102, 103)
REPORTING_SEEDS = tuple(range(32))
START_EXPONENTS = np.arange(-4.0, -0.99, 0.5)
OUT = Path(__file__).resolve().parent / "results" / "training_practice_rnn_tuning.json"


def last50(name, lr, seed):
    make, clip, _ = VARIANTS[name]
    losses, norms = train_rnn(make(lr), clip, seed=seed)
    value = float(losses[-50:].mean())
    return (value if math.isfinite(value) else math.inf), norms


def report_runs(chosen_exponents):
    out = {}
    for name, (_, _, tau) in VARIANTS.items():
        runs = [last50(name, 10.0 ** chosen_exponents[name], s) for s in REPORTING_SEEDS]
        out[name] = {"lr_exponent": chosen_exponents[name], "last50_loss": [r[0] for r in runs],
                     "fraction_clipped": None if tau is None else [float(np.mean(r[1] > tau)) for r in runs]}
    return out


def scalar_check():
    data = json.loads(OUT.read_text())
    exps = {n: c["lr_exponent"] for n, c in data["chosen"].items()}
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    child = subprocess.run([sys.executable, __file__, "--report-only", json.dumps(exps)], env=env,
                           check=True, capture_output=True, text=True)
    data["scalar_kernels"] = json.loads(child.stdout)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"added scalar-kernel reporting runs to {OUT}", file=sys.stderr)


def main():
    if sys.argv[1:2] == ["--report-only"]:
        print(json.dumps(report_runs(json.loads(sys.argv[2]))))
        return
    if sys.argv[1:2] == ["--scalar-check"]:
        scalar_check()
        return
    t0 = time.time()
    exponents = [float(e) for e in START_EXPONENTS]
    scores = {n: {} for n in VARIANTS}
    while True:
        for name in VARIANTS:
            for e in exponents:
                if e not in scores[name]:
                    scores[name][e] = float(np.mean([last50(name, 10.0 ** e, s)[0] for s in TUNING_SEEDS]))
        best = {n: min(exponents, key=lambda e: (scores[n][e], e)) for n in VARIANTS}
        low, high = any(b == exponents[0] for b in best.values()), any(b == exponents[-1] for b in best.values())
        if not (low or high):
            break
        if low:
            exponents.insert(0, exponents[0] - 0.5)
        if high:
            exponents.append(exponents[-1] + 0.5)
        print("extending the grid to", exponents[0], "...", exponents[-1], file=sys.stderr)
    chosen = report_runs(best)
    out = {
        "what": "tanh RNN (16 units, gain 1.5), sum of the first two of 20 inputs, 300 steps of 32, "
                "float64; score = mean over the tuning seeds of the mean loss of the last 50 steps",
        "tuning_seeds": list(TUNING_SEEDS), "reporting_seeds": list(REPORTING_SEEDS),
        "grid_exponents": exponents,
        "tuning_scores": {n: [scores[n][e] if math.isfinite(scores[n][e]) else None for e in exponents]
                          for n in VARIANTS},
        "chosen": chosen,
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "seconds": round(time.time() - t0, 1),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT} in {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
