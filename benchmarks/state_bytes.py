"""Bytes of optimizer state per parameter, for every optimizer the package exports.

Every class that ``optimizers`` exports and that is a ``torch.optim.Optimizer`` (found at run
time from ``optimizers.__all__``, so a new class appears here without editing this script) is
constructed with its defaults on the same freshly initialised float32 model, takes one step on
one minibatch, and the bytes of every tensor in ``optimizer.state`` (nested in lists, tuples and
dicts; each storage counted once) are summed. A few common non-default configurations (momentum,
AMSGrad) are measured too, since they add a buffer.

Two models:

* ``digits_mlp``: the book's digits classifier, ``optimizers.book.train.mlp((64, 64, 10))``
  (4,810 parameters), one minibatch of 64 digits;
* ``transformer``: a small decoder-only Transformer (token embedding 256 x 128, two blocks of
  causal self-attention and a 4x MLP with pre-LayerNorm, an output head; 0.46 M parameters),
  one minibatch of 8 random token sequences of length 32.

Classes defined for matrices only (they refuse vectors at construction, e.g. ``Muon``) are
measured on the model's 2-D parameters and reported per parameter of those.
``SparseAdam`` accepts sparse gradients only, so it is measured on each model's first layer
turned into an ``nn.Embedding(sparse=True)`` of the same shape (the digits model's first layer
is dense, so there it is measured on an embedding of the same 64 x 64 size) and reported per
parameter of that layer. ``FullMatrixAdagrad`` keeps a d x d matrix per tensor: where that
would exceed 1 GiB it is not run, and the bytes it would allocate are computed and reported as
such (``measured: false``).

Run from the repository root:

    .venv/bin/python benchmarks/state_bytes.py

It writes ``benchmarks/results/state_bytes.json`` (about 20 s on two cores).
"""
from __future__ import annotations

import inspect
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import torch

import optimizers
from optimizers.book.problems import digits
from optimizers.book.train import mlp

OUT = Path(__file__).resolve().parent / "results" / "state_bytes.json"
FULL_MATRIX_LIMIT = 2**30  # bytes


# --------------------------------------------------------------------------- models
class Block(torch.nn.Module):
    """Pre-LayerNorm Transformer block: causal self-attention and a 4x MLP."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.up, self.down = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, n, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.down(torch.nn.functional.gelu(self.up(self.ln2(x))))


class TinyTransformer(torch.nn.Module):
    def __init__(self, vocab: int = 256, d: int = 128, heads: int = 4, layers: int = 2,
                 context: int = 32, sparse: bool = False):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d, sparse=sparse)
        self.pos = torch.nn.Parameter(torch.zeros(context, d))
        self.blocks = torch.nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.ln = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        return self.head(self.ln(self.blocks(x)))


def transformer_case(sparse: bool = False):
    torch.manual_seed(0)
    model = TinyTransformer(sparse=sparse)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (8, 33), generator=gen)

    def loss_fn():
        logits = model(tokens[:, :-1])
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1))

    return model, loss_fn


class EmbeddingMLP(torch.nn.Module):
    """The digits MLP with its first layer as a (sparse) embedding of the same size, for SparseAdam."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(64, 64, sparse=True)
        self.rest = torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(64, 10))

    def forward(self, idx):
        return self.rest(self.embed(idx).sum(dim=1))


def digits_case(sparse: bool = False):
    X, y, _, _ = digits()
    xb = torch.tensor(X[:64], dtype=torch.float32)
    yb = torch.tensor(y[:64])
    if sparse:
        torch.manual_seed(0)
        model = EmbeddingMLP()
        idx = torch.argsort(xb, dim=1, descending=True)[:, :8]   # the 8 brightest pixels

        def loss_fn():
            return torch.nn.functional.cross_entropy(model(idx), yb)

        return model, loss_fn
    model = mlp((64, 64, 10), seed=0, dtype=torch.float32)

    def loss_fn():
        return torch.nn.functional.cross_entropy(model(xb), yb)

    return model, loss_fn


CASES = {"digits_mlp": digits_case, "transformer": transformer_case}


# --------------------------------------------------------------------------- measuring
def tensors_in(obj):
    """Every tensor in a state value (nested lists, tuples, dicts)."""
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors_in(v)


def state_bytes(opt: torch.optim.Optimizer) -> tuple[int, list[str]]:
    """Bytes of all tensors in ``opt.state`` (each storage once) and the state keys seen."""
    seen, total, keys = set(), 0, set()
    for st in opt.state.values():
        keys.update(st.keys())
        for t in tensors_in(st):
            if t.is_sparse:
                parts = (t._indices(), t._values())
            else:
                parts = (t,)
            for p in parts:
                key = (p.untyped_storage().data_ptr(), p.untyped_storage().nbytes())
                if key in seen:
                    continue
                seen.add(key)
                total += p.untyped_storage().nbytes()
    return total, sorted(keys)


def exported_optimizers():
    out = {}
    for name in optimizers.__all__:
        obj = getattr(optimizers, name)
        if (inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer)
                and obj is not optimizers.OptimizerBase):
            out[name] = obj
    return out


def configurations():
    """(label, class name, keyword arguments): every exported class with its defaults, plus
    common configurations that add state."""
    configs = [(name, name, {}) for name in exported_optimizers()]
    extra = [("SGD, momentum=0.9", "SGD", dict(momentum=0.9)),
             ("Adam, amsgrad=True", "Adam", dict(amsgrad=True))]
    return configs + [c for c in extra if c[1] in exported_optimizers()]


def measure(label, cls, kwargs, case_name):
    sparse = cls is optimizers.SparseAdam
    model, loss_fn = CASES[case_name](sparse=sparse)
    params = [p for p in model.parameters()]
    if sparse:   # SparseAdam: the parameters that receive sparse gradients
        params = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    n_params = sum(p.numel() for p in params)
    row = dict(optimizer=label, cls=cls.__name__, kwargs=kwargs, n_params=n_params,
               param_bytes=sum(p.numel() * p.element_size() for p in params))
    if cls is optimizers.FullMatrixAdagrad and kwargs.get("history_size") is None:
        would = sum(p.numel() ** 2 * p.element_size() for p in params)
        if would > FULL_MATRIX_LIMIT:
            row.update(measured=False, state_bytes=would, bytes_per_param=would / n_params,
                       state_keys=["step", "sum"],
                       note=f"not run: a d x d matrix per tensor would take {would / 2**30:.1f} GiB")
            return row
    try:
        opt = cls(params, **kwargs)
    except ValueError:
        # classes defined for matrices only (e.g. Muon) refuse vectors: measure them on the 2-D
        # weights, the parameters they are meant for, and say so
        params = [p for p in params if p.dim() == 2]
        opt = cls(params, **kwargs)
        n_params = sum(p.numel() for p in params)
        row.update(n_params=n_params, param_bytes=sum(p.numel() * p.element_size() for p in params),
                   note="measured on the 2-D weight matrices only (the class refuses other parameters)")

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    step_params = inspect.signature(opt.step).parameters
    if hasattr(opt, "update_hessian"):          # Sophia-style: one Hessian estimate, then a step
        closure()
        opt.update_hessian()
    if "bs" in step_params:
        closure()
        opt.step(bs=64)
    else:
        opt.step(closure)
    total, keys = state_bytes(opt)
    row.update(measured=True, state_bytes=total, bytes_per_param=total / n_params, state_keys=keys)
    if sparse:
        row["note"] = "measured on the model's embedding table (sparse gradients)"
    if cls is optimizers.LBFGS:
        row["note"] = ("after one step (up to 20 inner iterations); the history grows to "
                       "history_size pairs of vectors")
    return row


def main():
    torch.set_num_threads(1)
    results = {"torch": torch.__version__, "python": platform.python_version(),
               "dtype": "float32", "models": {}, "rows": []}
    for case_name, make in CASES.items():
        model, _ = make()
        shapes = [list(p.shape) for p in model.parameters()]
        results["models"][case_name] = dict(n_params=sum(p.numel() for p in model.parameters()),
                                            n_tensors=len(shapes), shapes=shapes)
    for label, name, kwargs in configurations():
        cls = getattr(optimizers, name)
        for case_name in CASES:
            row = measure(label, cls, kwargs, case_name)
            row["model"] = case_name
            results["rows"].append(row)
            print(f"{label:<22} {case_name:<11} {row['bytes_per_param']:>10.3f} bytes/param"
                  f"{'' if row['measured'] else ' (computed, not run)'}", file=sys.stderr)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
