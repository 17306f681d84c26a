"""optimizers.SophiaG against the official implementation and an independent NumPy reference.

The official code (github.com/Liuhong99/Sophia, ``sophia.py``) is packaged on PyPI
as ``sophia-opt`` (pinned in requirements.txt; its module is byte-identical to the
repository's file). Its training protocol (``train_sophiag.py``) is reproduced
here: a normal step at every iteration, and every ``k`` iterations, after the
step, a backward pass of the cross-entropy on labels sampled from the model's
own softmax followed by ``update_hessian()``. The NumPy reference below is
written from the update equations, not from either implementation, so the
tests that use it run even without ``sophia-opt``.

The shared behaviour (validation, state dicts, param groups, dtypes, closures)
is tested through the catalogue (tests/optim_catalogue.py).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from optimizers.sophia import SophiaG, sophiag, sophiag_update_hessian

N_CLASSES, N_FEATURES, N_SAMPLES = 4, 6, 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_problem(dtype=torch.float64, seed=0, hidden=0):
    """Softmax regression (hidden=0) or a one-hidden-layer MLP classifier, seeded."""
    gen = torch.Generator().manual_seed(seed)
    if hidden:
        model = torch.nn.Sequential(
            torch.nn.Linear(N_FEATURES, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, N_CLASSES)
        )
    else:
        model = torch.nn.Linear(N_FEATURES, N_CLASSES)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(N_SAMPLES, N_FEATURES, generator=gen)
    y = torch.randint(0, N_CLASSES, (N_SAMPLES,), generator=gen)
    return model.to(dtype), x.to(dtype), y


def sample_labels(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Labels drawn from the model's softmax (float64 probabilities, seeded)."""
    probs = torch.softmax(logits.detach().double(), dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=gen).squeeze(1).to(logits.device)


def train(model, x, y, opt, steps=60, k=5, labels=None, record=None):
    """The official protocol. ``labels``: list to fill with the sampled labels
    (first run) or to replay (second run), so that two runs see the same samples."""
    gen = torch.Generator().manual_seed(123)
    replay = labels is not None and len(labels) > 0
    used = 0
    for t in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step(bs=N_SAMPLES)
        if record is not None:
            record.append([p.detach().clone() for p in model.parameters()])
        if t % k == k - 1:
            opt.zero_grad()
            logits = model(x)
            if replay:
                y_hat = labels[used]
                used += 1
            else:
                y_hat = sample_labels(logits, gen)
                if labels is not None:
                    labels.append(y_hat)
            F.cross_entropy(logits, y_hat).backward()
            opt.update_hessian()
    return [p.detach().clone() for p in model.parameters()]


CONFIGS = [
    {},  # the official defaults: lr=1e-4, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1
    {"lr": 0.05},
    {"lr": 0.05, "rho": 0.5, "weight_decay": 0.0},
    {"lr": 0.02, "betas": (0.9, 0.95), "rho": 0.01, "weight_decay": 0.2},
    {"lr": 0.05, "rho": 0.1, "maximize": True},
]


# --------------------------------------------------------------------------- #
# An independent reference: the update equations in NumPy                      #
# --------------------------------------------------------------------------- #


def numpy_sophiag_step(theta, m, h, g, *, lr, beta1, rho, weight_decay, bs, maximize=False, eps=1e-15):
    """One step: decoupled decay, m <- beta1 m + (1 - beta1) g, then
    theta <- theta - lr * sign(m) * min(|m| / (rho * bs * h + eps), 1)."""
    g = -g if maximize else g
    theta = theta * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * g
    ratio = np.minimum(np.abs(m) / (rho * bs * h + eps), 1.0)
    return theta - lr * np.sign(m) * ratio, m


def numpy_update_hessian(h, g_hat, beta2):
    """h <- beta2 h + (1 - beta2) g_hat * g_hat."""
    return beta2 * h + (1 - beta2) * g_hat * g_hat


def softmax_regression_grads(W, b, x, y):
    """Gradients of the mean cross-entropy of softmax(x W^T + b) (NumPy, by hand)."""
    z = x @ W.T + b
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    r = p / len(y)
    return r.T @ x, r.sum(axis=0)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_matches_numpy_equations(cfg, foreach):
    model, x, y = make_problem()
    labels: list[torch.Tensor] = []
    theta_pkg = train(model, x, y, SophiaG(model.parameters(), **cfg, foreach=foreach), labels=labels)

    fresh, _, _ = make_problem()
    W, b = (p.detach().numpy().copy() for p in fresh.parameters())
    xn, yn = x.numpy(), y.numpy()
    lr, (beta1, beta2) = cfg.get("lr", 1e-4), cfg.get("betas", (0.965, 0.99))
    kw = dict(lr=lr, beta1=beta1, rho=cfg.get("rho", 0.04), weight_decay=cfg.get("weight_decay", 0.1),
              bs=N_SAMPLES, maximize=cfg.get("maximize", False))
    mW, mb, hW, hb = np.zeros_like(W), np.zeros_like(b), np.zeros_like(W), np.zeros_like(b)
    for t in range(60):
        gW, gb = softmax_regression_grads(W, b, xn, yn)
        W, mW = numpy_sophiag_step(W, mW, hW, gW, **kw)
        b, mb = numpy_sophiag_step(b, mb, hb, gb, **kw)
        if t % 5 == 4:
            gW, gb = softmax_regression_grads(W, b, xn, labels[t // 5].numpy())
            hW, hb = numpy_update_hessian(hW, gW, beta2), numpy_update_hessian(hb, gb, beta2)
    np.testing.assert_allclose(theta_pkg[0].numpy(), W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(theta_pkg[1].numpy(), b, rtol=1e-10, atol=1e-12)


def test_both_regimes_occur_in_the_parity_runs():
    """The comparison is only meaningful if some coordinates take the Newton-like
    step |m| / (rho B h) < 1 and others are clipped: check both happen."""
    model, x, y = make_problem()
    opt = SophiaG(model.parameters(), **CONFIGS[2])
    clipped = newton = 0
    for _ in range(60 // 5):
        train(model, x, y, opt, steps=5)
        ratios = torch.cat([
            (s["exp_avg"].abs() / (0.5 * N_SAMPLES * s["hessian"] + 1e-15)).flatten() for s in opt.state.values()
        ])
        clipped += int((ratios > 1).sum())
        newton += int((ratios < 1).sum())
    assert clipped > 0 and newton > 0, (clipped, newton)


# --------------------------------------------------------------------------- #
# The official implementation                                                  #
# --------------------------------------------------------------------------- #


def _official():
    return pytest.importorskip("sophia_opt").SophiaG


@pytest.mark.parametrize("hidden", [0, 5], ids=["softmax", "mlp"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_matches_official_float64(cfg, foreach, hidden):
    Official = _official()
    m1, x, y = make_problem(hidden=hidden)
    m2, _, _ = make_problem(hidden=hidden)
    labels: list[torch.Tensor] = []
    rec1: list = []
    rec2: list = []
    train(m1, x, y, Official(m1.parameters(), **cfg), labels=labels, record=rec1)
    train(m2, x, y, SophiaG(m2.parameters(), **cfg, foreach=foreach), labels=labels, record=rec2)
    for a, b in zip(rec1, rec2):  # the whole trajectory, not just the end point
        for pa, pb in zip(a, b):
            torch.testing.assert_close(pb, pa, rtol=1e-12, atol=1e-14)
    # same operations in the same order: the single-tensor path is bit-identical
    if not foreach:
        assert all(torch.equal(pa, pb) for pa, pb in zip(rec1[-1], rec2[-1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_matches_official_low_precision(dtype, foreach):
    Official = _official()
    m1, x, y = make_problem(dtype=dtype)
    m2, _, _ = make_problem(dtype=dtype)
    labels: list[torch.Tensor] = []
    cfg = {"lr": 0.05}
    p1 = train(m1, x, y, Official(m1.parameters(), **cfg), labels=labels)
    p2 = train(m2, x, y, SophiaG(m2.parameters(), **cfg, foreach=foreach), labels=labels)
    for a, b in zip(p1, p2):
        assert b.dtype == dtype
        if foreach and dtype == torch.bfloat16:
            # the foreach kernels round some bfloat16 intermediates differently:
            # within a few steps' worth of lr
            torch.testing.assert_close(b, a, rtol=0, atol=5 * cfg["lr"])
        else:
            assert torch.equal(a, b)


def test_state_dict_loads_into_official_and_back():
    Official = _official()
    m1, x, y = make_problem()
    m2, _, _ = make_problem()
    ours = SophiaG(m1.parameters(), lr=0.05)
    labels: list[torch.Tensor] = []
    train(m1, x, y, ours, steps=20, labels=labels)
    with torch.no_grad():
        for p1, p2 in zip(m1.parameters(), m2.parameters()):
            p2.copy_(p1)
    theirs = Official(m2.parameters(), lr=0.05)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))  # load_state_dict may share tensors
    assert set(theirs.state_dict()["state"][0]) == set(ours.state_dict()["state"][0]) == {
        "step", "exp_avg", "hessian"}
    more: list[torch.Tensor] = []
    a = train(m1, x, y, ours, steps=20, labels=more)
    b = train(m2, x, y, theirs, steps=20, labels=more)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    back = SophiaG(m2.parameters(), lr=0.05)
    back.load_state_dict(theirs.state_dict())
    assert back.param_groups[0]["foreach"] is None and back.param_groups[0]["capturable"] is False


def test_same_signature_and_defaults_as_official():
    import inspect

    theirs = inspect.signature(_official().__init__).parameters
    ours = inspect.signature(SophiaG.__init__).parameters
    for name, p in theirs.items():
        assert name in ours, name
        assert ours[name].default == p.default, name
        assert ours[name].kind == p.kind, name
    step_theirs = inspect.signature(_official().step).parameters
    step_ours = inspect.signature(SophiaG.step).parameters
    assert list(step_ours) == list(step_theirs)
    assert step_ours["bs"].default == step_theirs["bs"].default == 5120


# --------------------------------------------------------------------------- #
# Properties of the update                                                     #
# --------------------------------------------------------------------------- #


def test_before_any_hessian_update_every_step_is_lr_times_sign():
    """h = 0: |m| / eps is huge, so every coordinate moves by exactly lr (signSGD with momentum)."""
    x = torch.tensor([1.0, -2.0, 3e-6, -4e3], dtype=torch.float64, requires_grad=True)
    opt = SophiaG([x], lr=0.1, weight_decay=0.0)
    x0 = x.detach().clone()
    x.grad = torch.tensor([2.0, -1e-3, 5.0, -7.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(x.detach(), x0 - 0.1 * torch.sign(x.grad), rtol=0, atol=1e-15)


def test_large_curvature_gives_the_diagonal_newton_step_of_the_momentum():
    """Where rho B h >= |m|, the step is lr * m / (rho B h): a Newton step on the momentum."""
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = SophiaG([x], lr=1.0, betas=(0.0, 0.0), rho=1.0, weight_decay=0.0)
    h = torch.tensor([4.0, 10.0, 0.5], dtype=torch.float64)
    x.grad = h.sqrt()  # update_hessian with beta2 = 0 stores g * g
    opt.update_hessian()
    torch.testing.assert_close(opt.state[x]["hessian"], h)
    g = torch.tensor([1.0, -3.0, 2.0], dtype=torch.float64)
    x.grad = g
    opt.step(bs=1)
    expected = -torch.where(g.abs() < h, g / h, torch.sign(g))  # the third coordinate is clipped
    torch.testing.assert_close(x.detach(), expected, rtol=1e-15, atol=0)


def test_no_coordinate_moves_more_than_lr():
    model, x, y = make_problem(hidden=5)
    opt = SophiaG(model.parameters(), lr=0.03, rho=1e-3, weight_decay=0.0)
    rec: list = []
    train(model, x, y, opt, steps=40, record=rec)
    for a, b in zip(rec[:-1], rec[1:]):
        for pa, pb in zip(a, b):
            assert (pb - pa).abs().max() <= 0.03 * (1 + 1e-12)


def test_only_the_product_rho_times_bs_matters():
    m1, x, y = make_problem()
    m2, _, _ = make_problem()
    labels: list[torch.Tensor] = []
    o1 = SophiaG(m1.parameters(), lr=0.05, rho=0.04)
    o2 = SophiaG(m2.parameters(), lr=0.05, rho=0.16)
    gen1, gen2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for t in range(30):
        for model, opt, bs, gen in ((m1, o1, 64, gen1), (m2, o2, 16, gen2)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step(bs=bs)
            if t % 3 == 2:
                opt.zero_grad()
                logits = model(x)
                F.cross_entropy(logits, sample_labels(logits, gen)).backward()
                opt.update_hessian()
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_update_hessian_before_any_step_creates_state_and_skips_params_without_grad():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    opt = SophiaG([a, b], betas=(0.9, 0.5))
    a.grad = torch.tensor([1.0, -2.0, 3.0])
    opt.update_hessian()
    assert b not in opt.state
    torch.testing.assert_close(opt.state[a]["hessian"], 0.5 * a.grad**2)
    assert opt.state[a]["step"].item() == 0  # update_hessian is not a step
    torch.testing.assert_close(a.detach(), torch.ones(3))


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_complex_params_are_pairs_of_real_ones(foreach):
    """Both the step and the curvature treat real and imaginary parts as two coordinates."""
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(5, dtype=torch.complex128, generator=gen)
    z = z0.clone().requires_grad_()
    r = torch.view_as_real(z0).clone().requires_grad_()
    oz = SophiaG([z], lr=0.05, foreach=foreach)
    orr = SophiaG([r], lr=0.05, foreach=foreach)
    for t in range(20):
        gz = torch.randn(5, dtype=torch.complex128, generator=gen)
        z.grad, r.grad = gz, torch.view_as_real(gz).clone()
        oz.step(bs=4)
        orr.step(bs=4)
        if t % 4 == 3:
            hz = torch.randn(5, dtype=torch.complex128, generator=gen)
            z.grad, r.grad = hz, torch.view_as_real(hz).clone()
            oz.update_hessian()
            orr.update_hessian()
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=1e-14, atol=1e-15)
    assert (orr.state[r]["hessian"] > 0).all()


def test_functional_core_equals_class():
    model, x, y = make_problem()
    params = [p.detach().clone() for p in model.parameters()]
    m = [torch.zeros_like(p) for p in params]
    h = [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0) for _ in params]
    opt = SophiaG(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    for t in range(12):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step(bs=N_SAMPLES)
        sophiag(params, grads, m, h, steps, bs=N_SAMPLES, beta1=0.965, rho=0.04, lr=0.05, weight_decay=0.1)
        if t % 4 == 3:
            opt.zero_grad()
            logits = model(x)
            F.cross_entropy(logits, sample_labels(logits, gen)).backward()
            opt.update_hessian()
            sophiag_update_hessian(params, h, [p.grad for p in model.parameters()], beta2=0.99)
    assert all(torch.equal(p, q.detach()) for p, q in zip(params, model.parameters()))
    assert steps[0].item() == 12


@pytest.mark.parametrize("bs", [0, -5, float("nan"), "big", torch.tensor([1.0, 2.0]), True])
def test_invalid_bs_is_refused(bs):
    x = torch.zeros(2, requires_grad=True)
    x.grad = torch.ones(2)
    opt = SophiaG([x])
    with pytest.raises(ValueError, match="Invalid bs"):
        opt.step(bs=bs)
    assert x.detach().eq(0).all()  # refused before anything moved


def test_validation_messages_carry_the_official_phrases():
    x = [torch.zeros(2, requires_grad=True)]
    for kwargs, phrase in [({"lr": -1.0}, "Invalid learning rate: -1.0"),
                           ({"betas": (1.0, 0.99)}, "Invalid beta parameter at index 0: 1.0"),
                           ({"betas": (0.9, 1.5)}, "Invalid beta parameter at index 1: 1.5"),
                           ({"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
                           ({"rho": -0.1}, "Invalid rho")]:
        with pytest.raises(ValueError, match=phrase):
            SophiaG(x, **kwargs)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("maximize", [False, True])
def test_gradients_are_not_modified(foreach, maximize):
    model, x, y = make_problem()
    opt = SophiaG(model.parameters(), lr=0.05, maximize=maximize, foreach=foreach)
    F.cross_entropy(model(x), y).backward()
    opt.update_hessian()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step(bs=N_SAMPLES)
    opt.update_hessian()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("foreach", [None, False, True], ids=["default", "single", "foreach"])
def test_cuda_matches_official(foreach):
    Official = _official()
    m1, x, y = make_problem(dtype=torch.float32)
    m2, _, _ = make_problem(dtype=torch.float32)
    m1, m2, x, y = m1.cuda(), m2.cuda(), x.float().cuda(), y.cuda()
    labels: list[torch.Tensor] = []
    p1 = train(m1, x, y, Official(m1.parameters(), lr=0.05), labels=labels)
    p2 = train(m2, x, y, SophiaG(m2.parameters(), lr=0.05, foreach=foreach), labels=labels)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
