"""A2Grad-specific tests (the generic behaviour is covered through tests/optim_catalogue.py).

* per_coordinate=False equals torch_optimizer's A2GradUni/Inc/Exp (0.3.0), float64;
* per_coordinate=True equals a NumPy transcription of the paper's three-sequence
  Algorithm 1 with the uni/inc/exp rules (Deng, Cheng and Lan, 2018);
* long runs on Rosenbrock stay finite; torch-optimizer's own convergence test passes;
* lr is a multiplier equivalent to scaling lips and beta; no host reads of device values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import optimizers
from reference_problem import make_model, minibatches, run_model

torch_optimizer = pytest.importorskip("torch_optimizer")

VARIANTS = ("uni", "inc", "exp")
REF = {"uni": "A2GradUni", "inc": "A2GradInc", "exp": "A2GradExp"}
TOL = dict(rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- #
# per_coordinate=False == torch_optimizer                                     #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("beta,lips,rho", [(10.0, 10.0, 0.5), (1.0, 3.0, 0.9), (0.1, 50.0, 0.1)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_per_tensor_matches_torch_optimizer(variant, beta, lips, rho, foreach):
    batches = minibatches(120)
    ours_model, ref_model = make_model(), make_model()
    kw = dict(beta=beta, lips=lips, **({"rho": rho} if variant == "exp" else {}))
    ours = optimizers.A2Grad(ours_model.parameters(), variant=variant, per_coordinate=False,
                             foreach=foreach, **kw)
    ref = getattr(torch_optimizer, REF[variant])(ref_model.parameters(), **kw)
    run_model(ours_model, ours, batches)
    run_model(ref_model, ref, batches)
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, **TOL)
        s, r = ours.state[p], ref.state[q]
        assert s["step"].item() == r["step"] == 120
        torch.testing.assert_close(s["grad_avg"], r["avg_grad"], **TOL)
        torch.testing.assert_close(s["x"], r["x_k"], **TOL)
        assert math.isclose(s["v"].item(), r["v_k"], rel_tol=1e-10)
        if variant == "exp":
            assert math.isclose(s["v_tilde"].item(), r["v_kk"], rel_tol=1e-10)
    # the adaptive term was active (delta_k != 0) and the parameters moved
    assert all(ours.state[p]["v"].item() > 0 for p in ours_model.parameters())


# --------------------------------------------------------------------------- #
# per_coordinate=True == the paper, transcribed in NumPy                       #
# --------------------------------------------------------------------------- #


def paper_a2grad(grad, y0, steps, *, beta, lips, rho, variant):
    """Algorithm 1 of Deng, Cheng and Lan with diagonal scaling h_k and the uni/inc/exp rules.

    Three sequences: the gradient is taken at z_k = (1 - alpha_k) ybar_k + alpha_k x_k,
    x_{k+1} = x_k - G_k / (gamma_k + beta h_k), ybar_{k+1} = (1 - alpha_k) ybar_k + alpha_k x_{k+1}.
    Returns the points z_0, z_1, ... where gradients are evaluated (what the optimizer's
    parameters hold after each step).
    """
    x, ybar = y0.copy(), y0.copy()
    g_sum, v, v_tilde = np.zeros_like(y0), np.zeros_like(y0), np.zeros_like(y0)
    zs = [y0.copy()]
    for k in range(steps):
        alpha, gamma = 2 / (k + 2), 2 * lips / (k + 1)
        z = (1 - alpha) * ybar + alpha * x
        G = grad(z, k)
        g_sum += G
        delta = G - g_sum / (k + 1)
        if variant == "uni":
            v = v + delta**2
            h = np.sqrt(v)
        elif variant == "inc":
            v = k**2 / (k + 1) ** 2 * v + delta**2
            h = np.sqrt(v)
        else:
            v_tilde = delta**2 if k == 0 else rho * v_tilde + (1 - rho) * delta**2
            v = np.maximum(v_tilde, v)
            h = np.sqrt((k + 1) * v)
        x = x - G / (gamma + beta * h)
        ybar = (1 - alpha) * ybar + alpha * x
        alpha_next = 2 / (k + 3)
        zs.append((1 - alpha_next) * ybar + alpha_next * x)
    return np.array(zs)


def noisy_quadratic(d: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    A = Q @ np.diag(np.logspace(0, 2, d)) @ Q.T
    noise = rng.standard_normal((1000, d)) * np.logspace(-1, 1, d)  # per-coordinate noise scales

    def grad(z, k):
        return A @ z + noise[k]

    return grad, rng.standard_normal(d)


def run_with_grad(grad, y0, steps, **kw):
    """Optimizer trajectory with gradients supplied by the NumPy function (set as .grad)."""
    y = torch.tensor(y0, dtype=torch.float64, requires_grad=True)
    opt = optimizers.A2Grad([y], **kw)
    out = [y0.copy()]
    for k in range(steps):
        y.grad = torch.from_numpy(grad(y.detach().numpy(), k))
        opt.step()
        out.append(y.detach().numpy().copy())
    return np.array(out)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("beta,lips,rho", [(10.0, 10.0, 0.5), (0.5, 100.0, 0.9)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_per_coordinate_matches_paper(variant, beta, lips, rho, foreach):
    grad, y0 = noisy_quadratic()
    steps = 300
    expected = paper_a2grad(grad, y0, steps, beta=beta, lips=lips, rho=rho, variant=variant)
    ours = run_with_grad(grad, y0, steps, beta=beta, lips=lips, rho=rho, variant=variant,
                         per_coordinate=True, foreach=foreach)
    np.testing.assert_allclose(ours, expected, **TOL)


def test_granularities_differ():
    """With several coordinates the two granularities are different methods."""
    grad, y0 = noisy_quadratic()
    a = run_with_grad(grad, y0, 50, per_coordinate=True)
    b = run_with_grad(grad, y0, 50, per_coordinate=False)
    assert np.abs(a[-1] - b[-1]).max() > 1e-3


def test_state_shapes_and_memory():
    """Per-tensor: 2 parameter-sized tensors (as AdamW); per-coordinate: 3, or 4 with exp."""
    model = make_model()
    n = sum(p.numel() for p in model.parameters())
    for per_coordinate, variant, expected in [
        (False, "uni", 2), (False, "exp", 2), (True, "uni", 3), (True, "inc", 3), (True, "exp", 4),
    ]:
        opt = optimizers.A2Grad(model.parameters(), variant=variant, per_coordinate=per_coordinate)
        run_model(model, opt, minibatches(2))
        big = sum(t.numel() for s in opt.state.values() for t in s.values() if t.dim() > 0)
        assert big == expected * n, (per_coordinate, variant)
        for p, s in opt.state.items():
            assert s["v"].shape == (p.shape if per_coordinate else ())
            assert s["step"].device.type == "cpu"


# --------------------------------------------------------------------------- #
# Long runs                                                                    #
# --------------------------------------------------------------------------- #


def rosenbrock(xy, b=100.0):
    return (1 - xy[0]) ** 2 + b * (xy[1] - xy[0] ** 2) ** 2


def rosenbrock_grad(xy, b=100.0):
    x, y = xy[0], xy[1]
    return torch.stack([-2 * (1 - x) - 4 * b * x * (y - x**2), 2 * b * (y - x**2)])


def run_rosenbrock(opt, xy, steps, b):
    """Analytic gradients (set as .grad): the same numbers as autograd's, without its overhead."""
    with torch.no_grad():
        for _ in range(steps):
            xy.grad = rosenbrock_grad(xy, b)
            opt.step()


@pytest.mark.parametrize("per_coordinate", [True, False], ids=["per_coordinate", "per_tensor"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_rosenbrock_2000_steps_stay_finite(variant, per_coordinate):
    """Default hyperparameters (beta=10, lips=10) on Rosenbrock b=100 stay finite (lips=10 is far
    below the curvature there, about 2000, so the run need not descend: only boundedness is asserted)."""
    xy = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    opt = optimizers.A2Grad([xy], variant=variant, per_coordinate=per_coordinate)
    f0 = rosenbrock(xy).item()
    run_rosenbrock(opt, xy, 2000, b=100.0)
    assert torch.isfinite(xy).all()
    assert all(torch.isfinite(t).all() for t in opt.state[xy].values())
    assert rosenbrock(xy).item() < 1e4 * f0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("per_coordinate", [True, False], ids=["per_coordinate", "per_tensor"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_optimizer_benchmark_setting(variant, per_coordinate, dtype):
    """torch-optimizer's own test: Rosenbrock with b=1 from (1.5, 1.5), lips=40, beta=1e-4,
    800 steps, must end within atol 1e-3 of (1, 1) (their tolerance)."""
    xy = torch.tensor([1.5, 1.5], dtype=dtype, requires_grad=True)
    opt = optimizers.A2Grad([xy], beta=1e-4, lips=40.0, variant=variant, per_coordinate=per_coordinate)
    run_rosenbrock(opt, xy, 800, b=1.0)
    torch.testing.assert_close(xy.detach(), torch.ones(2, dtype=dtype), rtol=0, atol=1e-3)


# --------------------------------------------------------------------------- #
# lr, schedulers, validation                                                   #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("variant", VARIANTS)
def test_lr_is_scaling_of_lips_and_beta(variant):
    """c_k = lr / (gamma_k + beta h_k): lr = s is the same method as lips/s, beta/s."""
    grad, y0 = noisy_quadratic()
    a = run_with_grad(grad, y0, 200, lr=0.25, lips=10.0, beta=2.0, variant=variant)
    b = run_with_grad(grad, y0, 200, lr=1.0, lips=40.0, beta=8.0, variant=variant)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_scheduler_scales_later_steps():
    m1, m2 = make_model(), make_model()
    o1 = optimizers.A2Grad(m1.parameters())
    o2 = optimizers.A2Grad(m2.parameters())
    sched = torch.optim.lr_scheduler.StepLR(o1, step_size=10, gamma=0.5)
    batches = minibatches(30)
    for xb, yb in batches:
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            ((m(xb) - yb) ** 2).mean().backward()
            o.step()
        sched.step()
    assert o1.param_groups[0]["lr"] == 0.125
    first = [p.detach() for p in m1.parameters()]
    assert not torch.equal(first[0], next(m2.parameters()).detach())


def test_variant_and_hyperparameters_validated_in_param_groups():
    model = make_model()
    with pytest.raises(ValueError, match="Invalid variant"):
        optimizers.A2Grad([{"params": model[0].parameters(), "variant": "nope"}])
    with pytest.raises(ValueError, match="Invalid lips"):
        optimizers.A2Grad([{"params": model[0].parameters(), "lips": -1.0}])
    with pytest.raises(ValueError, match="Invalid rho"):
        optimizers.A2Grad([{"params": model[0].parameters(), "rho": 2.0}])


def test_param_groups_with_different_variants():
    """One optimizer with two differently configured groups == two optimizers, one per group."""
    m, c = make_model(), make_model()
    opt = optimizers.A2Grad([
        {"params": m[0].parameters(), "variant": "exp", "per_coordinate": False},
        {"params": m[2].parameters(), "variant": "inc", "beta": 1.0},
    ])
    oa = optimizers.A2Grad(c[0].parameters(), variant="exp", per_coordinate=False)
    ob = optimizers.A2Grad(c[2].parameters(), variant="inc", beta=1.0)
    for xb, yb in minibatches(20):
        for model, opts in ((m, [opt]), (c, [oa, ob])):
            for o in opts:
                o.zero_grad()
            ((model(xb) - yb) ** 2).mean().backward()
            for o in opts:
                o.step()
    for p, q in zip(m.parameters(), c.parameters()):
        assert torch.equal(p, q)
    assert opt.state[m[0].weight]["v"].dim() == 0 and opt.state[m[2].weight]["v"].dim() == 2


@pytest.mark.parametrize("per_coordinate", [True, False], ids=["per_coordinate", "per_tensor"])
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_no_host_reads_of_device_values(monkeypatch, foreach, per_coordinate):
    """The step reads only the CPU step counters: no .item()/float()/bool() on anything else."""
    model = make_model()
    opt = optimizers.A2Grad(model.parameters(), variant="exp", per_coordinate=per_coordinate,
                            foreach=foreach)
    run_model(model, opt, minibatches(1))
    allowed = {id(s["step"]) for s in opt.state.values()}
    original_item = torch.Tensor.item

    def guarded_item(self):
        assert id(self) in allowed, "A2Grad read a tensor that is not a step counter"
        return original_item(self)

    def refuse(self, *args):
        raise AssertionError("A2Grad converted a tensor to a Python value")

    batches = minibatches(3)
    for xb, yb in batches:
        opt.zero_grad()
        ((model(xb) - yb) ** 2).mean().backward()
        with monkeypatch.context() as mp:
            mp.setattr(torch.Tensor, "item", guarded_item)
            mp.setattr(torch.Tensor, "__float__", refuse)
            mp.setattr(torch.Tensor, "__bool__", refuse)
            opt.step()


# --------------------------------------------------------------------------- #
# CUDA (skipped without a GPU)                                                 #
# --------------------------------------------------------------------------- #

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("per_coordinate", [True, False], ids=["per_coordinate", "per_tensor"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_matches_cpu_without_synchronising(variant, per_coordinate):
    batches = minibatches(30)
    cpu_model, gpu_model = make_model(), make_model().cuda()
    kw = dict(variant=variant, per_coordinate=per_coordinate)
    o_cpu = optimizers.A2Grad(cpu_model.parameters(), **kw)
    o_gpu = optimizers.A2Grad(gpu_model.parameters(), **kw)
    run_model(cpu_model, o_cpu, batches)
    for xb, yb in batches:
        o_gpu.zero_grad()
        ((gpu_model(xb.cuda()) - yb.cuda()) ** 2).mean().backward()
        torch.cuda.set_sync_debug_mode("error")
        try:
            o_gpu.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for p, q in zip(gpu_model.parameters(), cpu_model.parameters()):
        torch.testing.assert_close(p.cpu(), q, rtol=1e-9, atol=1e-11)
