"""The character-level Transformer workload of the book (optimizers/book/charlm.py): small and seeded."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import optimizers
from optimizers.book.charlm import (CharLM, Vocabulary, corpus, decay_groups, prose_of_markdown,
                                    state_bytes, train_charlm)

SMALL = dict(d=32, n_layers=1, heads=2, context=32, batch_size=8, eval_every=10, eval_batches=2)


def adamw(m):
    return optimizers.AdamW(decay_groups(m, 0.1), lr=3e-3)


def test_corpus_is_the_frozen_prose_snapshot():
    text = corpus()
    assert len(text) > 100_000
    assert not text.startswith("# charlm corpus")  # the provenance line is not training text
    assert set(text) <= {chr(c) for c in range(32, 127)} | {"\n"}
    assert "{code-cell}" not in text and "import numpy" not in text  # no code cells
    vocab = Vocabulary(text)
    assert vocab.decode(vocab.encode(text[:500])) == text[:500]


def test_prose_of_markdown_drops_front_matter_code_and_markup():
    md = ("---\njupytext:\n  x: 1\n---\n\n# Title\n\nSome prose, $x^2$ \u2264 1.\n\n"
          "```{code-cell} ipython3\nprint(1)\n```\n\n+++\n(sec-label)=\n:::{note}\n\n\n\nMore.\n")
    assert prose_of_markdown(md) == "# Title\n\nSome prose, $x^2$ ? 1.\n\nMore.\n"


def test_same_seed_same_run_other_seed_other_run():
    a = train_charlm(adamw, steps=12, seed=3, **SMALL)
    b = train_charlm(adamw, steps=12, seed=3, **SMALL)
    c = train_charlm(adamw, steps=12, seed=4, **SMALL)
    np.testing.assert_array_equal(a.train_loss, b.train_loss)
    np.testing.assert_array_equal(a.eval_loss, b.eval_loss)
    assert not np.array_equal(a.train_loss, c.train_loss)
    assert a.eval_steps.tolist() == [0, 10, 12] and len(a.seconds) == 12
    assert np.all(np.diff(a.seconds) > 0)


def test_starts_at_log_vocabulary_and_learns():
    r = train_charlm(adamw, steps=40, seed=0, **SMALL)
    v = len(Vocabulary(corpus()))
    assert abs(r.eval_loss[0] - math.log(v)) < 0.05  # small initial logits: a uniform guess
    assert r.eval_loss[-1] < r.eval_loss[0] - 1.0  # at least the character frequencies are learnt


def test_model_is_causal():
    model = CharLM(20, d=16, n_layers=2, heads=2, context=10, seed=0, dtype=torch.float64)
    x = torch.randint(0, 20, (2, 10), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 20  # change only the future of position 5
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :6], model(y)[:, :6], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(model(x)[:, 6:], model(y)[:, 6:])


def test_decay_groups_split_matrices_from_vectors():
    model = CharLM(20, d=16, n_layers=1, heads=2, context=8)
    decay, rest = decay_groups(model, 0.5)
    assert decay["weight_decay"] == 0.5 and rest["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in rest["params"])
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))


def test_hessian_hook_and_bs_reach_sophia_style_optimizers():
    calls = {"hessian": [], "bs": []}

    class Recorder(optimizers.AdamW):
        def update_hessian(self):
            calls["hessian"].append(all(p.grad is not None for g in self.param_groups for p in g["params"]))

        def step(self, closure=None, bs=None):
            calls["bs"].append(bs)
            return super().step(closure)

    train_charlm(lambda m: Recorder(m.parameters(), lr=1e-3), steps=9, seed=0, hessian_every=4, **SMALL)
    assert calls["hessian"] == [True, True]  # after steps 4 and 8, with fresh gradients
    assert calls["bs"] == [SMALL["batch_size"] * SMALL["context"]] * 9


def test_lion_keeps_half_the_state_of_adamw():
    kw = dict(steps=2, seed=0, **SMALL)
    a = train_charlm(adamw, **kw)
    b = train_charlm(lambda m: optimizers.Lion(decay_groups(m, 1.0), lr=1e-3), **kw)
    n_tensors = len(list(a.model.parameters()))
    # float32: AdamW 8 bytes per parameter, Lion 4, plus a 4-byte step counter per tensor
    assert state_bytes(a.optimizer) == 8 * a.n_params + 4 * n_tensors
    assert state_bytes(b.optimizer) == 4 * b.n_params + 4 * n_tensors


@pytest.mark.parametrize("val_fraction", [0.0, 0.01, 0.99, 1.0])
def test_validation_and_training_text_must_each_hold_a_window(val_fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        train_charlm(adamw, steps=1, text="abcdefgh" * 50, val_fraction=val_fraction, **SMALL)
