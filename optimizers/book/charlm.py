"""A small character-level Transformer language model, trained on the book's own prose.

The workload on which claims about optimizers for Transformers (Lion, Sophia) are tested in the
book. Everything is seeded and CPU-sized:

* :func:`corpus` returns the training text: a frozen snapshot of the book's prose
  (``charlm_corpus.txt`` beside this module), so that a result computed today is reproducible
  after the chapters are edited. :func:`prose_of_markdown` is how the snapshot was made
  (chapters' MyST text with the front matter, code cells and directives removed); the snapshot's
  first line names the sources.
* :class:`CharLM`: a decoder-only, pre-LayerNorm Transformer (token and position embeddings,
  ``n_layers`` blocks of causal self-attention and a 4x GELU MLP, a final LayerNorm and a linear
  head), initialised from a seed.
* :func:`train_charlm` trains it with any optimizer factory for ``steps`` steps on seeded random
  windows of the text and returns the per-step training loss, the validation loss at checkpoints
  and the cumulative wall-clock time. Optimizers with an ``update_hessian()`` method (Sophia)
  get the Gauss-Newton-Bartlett estimate every ``hessian_every`` steps (a backward pass through
  the loss of labels sampled from the model), and ``step(bs=tokens_per_batch)``, as in the
  official Sophia training loop.

The default size (2 layers, width 64, context 64, batch 16) trains 100 steps in a few seconds on
one CPU core.
"""
from __future__ import annotations

import inspect
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["corpus", "prose_of_markdown", "Vocabulary", "CharLM", "CharLMResult", "train_charlm",
           "decay_groups", "state_bytes"]

_CORPUS_PATH = Path(__file__).with_name("charlm_corpus.txt")


def prose_of_markdown(text: str) -> str:
    """The prose of a MyST chapter: no front matter, no fenced blocks, no directive or role markup
    lines, blank lines collapsed, and only printable ASCII (other characters become ``?``)."""
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)  # front matter
    text = re.sub(r"^(`{3,}|~{3,}).*?^\1\s*$", "", text, flags=re.S | re.M)  # fenced blocks
    lines = [ln for ln in text.splitlines() if not ln.startswith(("+++", "(", ":::", "<!--"))]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    return "".join(ch if (" " <= ch <= "~" or ch == "\n") else "?" for ch in text)


def corpus() -> str:
    """The frozen training text (the snapshot's header line removed)."""
    text = _CORPUS_PATH.read_text(encoding="ascii")
    return text.split("\n", 1)[1]


class Vocabulary:
    """Characters <-> integer ids; the vocabulary is the sorted set of characters of the text."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class _Block(nn.Module):
    """Pre-LayerNorm block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (t.view(B, T, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CharLM(nn.Module):
    """A decoder-only Transformer over characters, initialised from ``seed``.

    Weights of the linear layers and embeddings are drawn from N(0, 0.02^2) (GPT-2's rule), the
    output projections of each block scaled by 1/sqrt(2 n_layers); biases start at zero.
    """

    def __init__(self, vocab_size: int, d: int = 64, n_layers: int = 2, heads: int = 4,
                 context: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab_size, d)
        self.pos = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab_size)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif "ln" in name.split(".")[-2]:
                    p.fill_(1.0)
                else:
                    std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("proj.weight", "out.weight")) else 0.02
                    p.copy_(std * torch.randn(p.shape, generator=gen))
        self.to(dtype)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: matrices (weights of linear layers and embeddings) decay, vectors
    (biases, LayerNorm scales) do not, as in GPT-2 / nanoGPT training."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


@dataclass
class CharLMResult:
    """Per-step training loss, validation loss at ``eval_steps`` (nats per character) and cumulative
    wall-clock seconds after each step (optimizer, forward, backward and Hessian estimates; the
    evaluations are not timed)."""

    train_loss: np.ndarray
    eval_steps: np.ndarray
    eval_loss: np.ndarray
    seconds: np.ndarray
    n_params: int
    model: CharLM = field(repr=False)
    optimizer: torch.optim.Optimizer = field(repr=False)


def _windows(data: torch.Tensor, starts: torch.Tensor, context: int):
    x = torch.stack([data[s:s + context] for s in starts.tolist()])
    y = torch.stack([data[s + 1:s + 1 + context] for s in starts.tolist()])
    return x, y


def train_charlm(make_optimizer: Callable[[CharLM], torch.optim.Optimizer], steps: int = 100, *,
                 seed: int = 0, d: int = 64, n_layers: int = 2, heads: int = 4, context: int = 64,
                 batch_size: int = 16, eval_every: int = 25, eval_batches: int = 4,
                 hessian_every: int = 10, val_fraction: float = 0.1, text: str | None = None,
                 dtype: torch.dtype = torch.float32, threads: int | None = 1) -> CharLMResult:
    """Train a :class:`CharLM` on :func:`corpus` (or ``text``) and return its curves.

    ``make_optimizer(model)`` builds the optimizer (e.g. ``lambda m: Lion(decay_groups(m, 1.0),
    lr=3e-4)``). ``seed`` sets the initialisation, the order of the training windows and the labels
    sampled for Sophia's Hessian estimate; the validation windows (the last ``val_fraction`` of the
    text) are fixed by ``eval_batches`` alone, so every run is scored on the same characters. The
    validation loss is computed at step 0 and every ``eval_every`` steps (and after the last).
    ``threads``: intra-op threads during the run (1: reproducible and fast at this size; ``None``
    leaves torch's setting).
    """
    text = corpus() if text is None else text
    vocab = Vocabulary(text)
    data = vocab.encode(text)
    n_val = int(len(data) * val_fraction)
    if not (context + 1 < n_val < len(data) - context - 1):
        raise ValueError(f"Invalid val_fraction: {val_fraction} (the validation and the training text "
                         f"must each be longer than context + 1 = {context + 1} characters)")
    train_data, val_data = data[:-n_val], data[-n_val:]

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model = CharLM(len(vocab), d=d, n_layers=n_layers, heads=heads, context=context, seed=seed,
                       dtype=dtype)
        opt = make_optimizer(model)
        wants_hessian = hasattr(opt, "update_hessian")
        step_takes_bs = "bs" in inspect.signature(opt.step).parameters
        gen = torch.Generator().manual_seed(10_000 + seed)
        val_gen = torch.Generator().manual_seed(12345)
        val_starts = torch.randint(0, len(val_data) - context - 1, (eval_batches, batch_size), generator=val_gen)
        val = [_windows(val_data, s, context) for s in val_starts]

        def evaluate() -> float:
            model.eval()
            with torch.no_grad():
                total = sum(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in val)
            model.train()
            return total / len(val)

        train_loss, seconds, eval_steps, eval_loss = [], [], [0], [evaluate()]
        elapsed = 0.0
        for k in range(steps):
            starts = torch.randint(0, len(train_data) - context - 1, (batch_size,), generator=gen)
            x, y = _windows(train_data, starts, context)
            t0 = time.perf_counter()
            logits = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step_takes_bs:
                opt.step(bs=batch_size * context)
            else:
                opt.step()
            if wants_hessian and k % hessian_every == hessian_every - 1:
                # Gauss-Newton-Bartlett: the squared gradient of the loss of labels sampled from the model
                logits = model(x)
                probs = torch.softmax(logits.detach().flatten(0, 1).to(torch.float64), dim=-1)
                y_hat = torch.multinomial(probs, 1, generator=gen).squeeze(1)
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(logits.flatten(0, 1), y_hat).backward()
                opt.update_hessian()
                opt.zero_grad(set_to_none=True)
            elapsed += time.perf_counter() - t0
            train_loss.append(loss.item())
            seconds.append(elapsed)
            if (k + 1) % eval_every == 0 or k + 1 == steps:
                eval_steps.append(k + 1)
                eval_loss.append(evaluate())
    finally:
        torch.set_num_threads(old_threads)
    return CharLMResult(np.array(train_loss), np.array(eval_steps), np.array(eval_loss),
                        np.array(seconds), sum(p.numel() for p in model.parameters()), model, opt)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in ``optimizer.state`` (every tensor, 0-dim step counters included)."""
    return sum(v.numel() * v.element_size() for st in optimizer.state.values()
               for v in st.values() if torch.is_tensor(v))
