"""optimizers.SOAP against heavyball's SOAP (heavyball 3.2.1, the published implementation on PyPI).

heavyball's settings that reproduce Vyas et al.'s Algorithm 3 as optimizers.SOAP runs it:
``precondition_1d=False`` (vectors get Adam), ``merge_dims=True`` (a tensor with more than two
dimensions becomes ``(shape[0], rest)`` when ``rest <= max_precond_dim``), ``caution=False``,
``mars=False``, ``palm=False``, ``warmup_steps=0``, no gradient or update clipping, the same
``max_precond_dim``, ``storage_dtype="float64"`` for float64 parameters (its default keeps the
moments in float32) and ``heavyball.utils.compile_mode = None`` (eager; it compiles by default).
Four conventions differ and are pinned down here, each where it can be isolated:

* the eigenbasis refresh: heavyball does one power iteration and a QR decomposition warm-started
  from the previous basis (only the first basis comes from ``eigh``, with eigh's round-off basis
  inside a repeated eigenvalue), optimizers.SOAP an exact ``eigh`` with a fixed convention inside
  repeated eigenvalues;
* the refresh schedule: heavyball refreshes when the running sum of ``1/f`` crosses an integer
  (calls f, 2f, ... counted from the step that only builds the basis, and drifting by one where the
  floating-point sum falls short), optimizers.SOAP and the authors' code at steps 1 + f, 1 + 2f, ...;
* the stabiliser: heavyball divides by ``max(sqrt(v_hat), eps)``, optimizers.SOAP (as torch.optim.Adam)
  by ``sqrt(v_hat) + eps``;
* the learning rate and the bias correction of ``shampoo_beta`` are computed from heavyball's int64
  step counter and so in torch's default dtype (float32 unless changed), even for float64 parameters.

With the same eigensolver and the same schedule (heavyball's refresh replaced by optimizers.SOAP's
``eigh`` convention, its schedule set to refresh at steps 1 + f, 1 + 2f, ...), ``eps = 0`` and
float64 as the default dtype, heavyball reproduces optimizers.SOAP's trajectory to round-off:
everything else (step 1 only building the basis, the first moment in parameter coordinates, the
second moment in the rotated ones, bias corrections, the statistics and their average, decoupled
weight decay, AdamW for vectors, unrotated sides above ``max_precond_dim``) agrees. Without
replacing anything the two agree to round-off up to heavyball's first refresh.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import optimizers
from optimizers.soap import _eigenbasis

heavyball = pytest.importorskip("heavyball", reason="heavyball (requirements.txt) is not installed")

DT = torch.float64
N_DATA, BATCH = 64, 8
HP = dict(lr=0.02, betas=(0.9, 0.95), shampoo_beta=0.8, weight_decay=0.01)


@contextlib.contextmanager
def heavyball_eager_float64():
    """heavyball eager (no torch.compile), float64 as torch's default dtype, and torch.einsum
    without opt_einsum's path search (heavyball contracts with torch.einsum); all restored."""
    mode, dtype = heavyball.utils.compile_mode, torch.get_default_dtype()
    oe = torch.backends.opt_einsum.enabled
    heavyball.utils.compile_mode = None
    torch.set_default_dtype(DT)
    torch.backends.opt_einsum.enabled = False
    try:
        yield
    finally:
        heavyball.utils.compile_mode = mode
        torch.set_default_dtype(dtype)
        torch.backends.opt_einsum.enabled = oe


def make_heavyball(params, *, eps, f, max_precond_dim=10000, same_schedule=False):
    opt = heavyball.SOAP(params, eps=eps, precondition_frequency=f, max_precond_dim=max_precond_dim,
                         storage_dtype="float64", precondition_1d=False, merge_dims=True, caution=False,
                         mars=False, palm=False, warmup_steps=0, **HP)
    if same_schedule:  # refresh after steps 1 + f, 1 + 2f, ... (heavyball adds 1 at each refresh step)
        opt.precond_schedule = lambda j: 1.0 if j > 1 and (j - 1) % f == 0 else 0.0
    return opt


def make_ours(params, *, eps, f, max_precond_dim=10000):
    return optimizers.SOAP(params, eps=eps, precondition_frequency=f, max_precond_dim=max_precond_dim, **HP)


def eigh_refresh(GG, Q, *exp_avg, exp_avg_sq=None, heavy=False, floor=1e-8):
    """heavyball.utils.get_orthogonal_matrix_QR with optimizers.SOAP's eigenbasis in place of the QR
    power iteration. heavyball keeps its bases in descending order of the eigenvalues (the flips) and
    its first moment in the rotated coordinates: rotated here from the old basis into the new one."""
    assert not heavy and exp_avg_sq is None
    if all(q is None for q in Q):
        return
    new = [None if m is None else torch.stack([_eigenbasis(mi, qi.flip(-1)).flip(-1) for mi, qi in zip(m, q)])
           for m, q in zip(GG, Q)]
    for r in exp_avg:
        assert r.dim() == 3 and len(Q) == 2  # (bucket, m, n)
        x = r.clone()
        if Q[0] is not None:
            x = new[0].mT @ Q[0] @ x
        if Q[1] is not None:
            x = x @ Q[1].mT @ new[1]
        r.copy_(x)
    for q, qn in zip(Q, new):
        if q is not None:
            q.copy_(qn)


def eigh_init(mat, max_eps=1e-3, min_eps=1e-30):
    """heavyball.utils.get_orthogonal_matrix (the first basis) with optimizers.SOAP's convention."""
    return [None if m is None else torch.stack([_eigenbasis(mi, torch.eye(mi.shape[-1], dtype=mi.dtype)).flip(-1)
                                                for mi in m]) for m in mat]


def problem(shapes, seed=0):
    """A seeded two-layer tanh network (matrices or 3-D weights used as matrices, and biases),
    minibatch gradients, so that no two steps see the same gradient."""
    g = torch.Generator().manual_seed(seed)
    (o1, *in1), (o2, *in2) = shapes
    d_in, hidden = int(torch.tensor(in1).prod()), int(torch.tensor(in2).prod())
    assert hidden == o1
    X = torch.randn(N_DATA, d_in, generator=g, dtype=DT)
    Y = torch.randn(N_DATA, o2, generator=g, dtype=DT)
    init = [torch.randn(o1, *in1, generator=g, dtype=DT) / d_in**0.5, 0.1 * torch.randn(o1, generator=g, dtype=DT),
            torch.randn(o2, *in2, generator=g, dtype=DT) / hidden**0.5, 0.1 * torch.randn(o2, generator=g, dtype=DT)]

    def loss(ps, idx):
        h = torch.tanh(X[idx] @ ps[0].reshape(o1, -1).T + ps[1])
        return 0.5 * ((h @ ps[2].reshape(o2, -1).T + ps[3] - Y[idx]) ** 2).mean()

    return init, loss


def trajectory(make, shapes, steps, seed=0, batch=BATCH):
    init, loss = problem(shapes, seed)
    ps = [torch.nn.Parameter(x.clone()) for x in init]
    opt = make(ps)
    batches = torch.Generator().manual_seed(seed + 1)
    out = []
    with heavyball_eager_float64():
        for _ in range(steps):
            idx = torch.randperm(N_DATA, generator=batches)[:batch]
            opt.zero_grad()
            loss(ps, idx).backward()
            opt.step()
            out.append([p.detach().clone() for p in ps])
    return init, out


def gaps(a, b):
    """Per step, the largest entry-wise difference over all parameters."""
    return [max(float((x - y).abs().max()) for x, y in zip(u, v)) for u, v in zip(a, b)]


def scale(traj):
    """The largest weight entry along a trajectory: round-off is relative to it."""
    return max(float(p.abs().max()) for step in traj for p in step)


SQUARE_ISH = ((5, 4), (4, 5))  # no repeated eigenvalue in L_1, R_1 (batch 8): the first basis is unique


@pytest.mark.parametrize("f", [1, 3], ids=["f1", "f3"])
def test_same_to_round_off_until_heavyballs_first_refresh(f):
    """Unchanged heavyball: the trajectories agree to round-off while both use the first basis
    (from eigh of L_1, R_1), i.e. through step max(f, 2); the step after heavyball's first
    refresh (one QR power iteration) is where they part, by far more than round-off. (Over seeds
    0-7 the gap before the refresh was 4e-16 to 7e-14 of the weights' scale.)"""
    steps = max(f, 2) + 1
    init, ours = trajectory(lambda ps: make_ours(ps, eps=0.0, f=f), SQUARE_ISH, steps)
    _, hb = trajectory(lambda ps: make_heavyball(ps, eps=0.0, f=f), SQUARE_ISH, steps)
    d = gaps(ours, hb)
    assert d[0] == 0 and gaps([init], [ours[0]]) == [0.0]  # step 1 moves nothing, in both
    assert max(d[:-1]) <= 1e-12 * scale(ours), d
    moved = max(gaps([init], [ours[-2]]))
    assert d[-1] > 0.1 * moved, d


@pytest.mark.parametrize("f", [1, 3], ids=["f1", "f3"])
@pytest.mark.parametrize(
    "shapes,batch,max_precond_dim",
    [(SQUARE_ISH, BATCH, 10000),
     (((6, 3), (2, 6)), 2, 10000),  # rank <= 2 per step: repeated (zero) eigenvalues in L and R for steps
     (((5, 2, 2), (3, 5)), BATCH, 4)],  # a 3-D weight used as a 5 x 4 matrix; sides of 5 are not rotated
    ids=["square-ish", "repeated-eigenvalues", "3d-and-max_precond_dim"],
)
def test_same_to_round_off_with_the_same_eigenbasis_and_schedule(monkeypatch, f, shapes, batch, max_precond_dim):
    """Thirteen steps, with refreshes, agree to round-off (over seeds 0-7: 2e-16 to 6e-13 of the
    weights' scale, the largest with repeated and nearly repeated eigenvalues)."""
    monkeypatch.setattr(heavyball.utils, "get_orthogonal_matrix_QR", eigh_refresh)
    monkeypatch.setattr(heavyball.utils, "get_orthogonal_matrix", eigh_init)
    steps = 13
    init, ours = trajectory(lambda ps: make_ours(ps, eps=0.0, f=f, max_precond_dim=max_precond_dim),
                            shapes, steps, batch=batch)
    _, hb = trajectory(lambda ps: make_heavyball(ps, eps=0.0, f=f, max_precond_dim=max_precond_dim,
                                                 same_schedule=True), shapes, steps, batch=batch)
    moved = max(gaps([init], [ours[-1]]))
    assert moved > 0.1  # (lr 0.02, twelve moving steps)
    d = gaps(ours, hb)
    assert max(d) <= 1e-11 * scale(ours), d


def test_stabiliser_max_instead_of_sum():
    """heavyball's step 2 (before any refresh) is optimizers.SOAP's with sqrt(v_hat) + eps replaced by
    max(sqrt(v_hat), eps): rebuilt from optimizers.SOAP's own state after step 2. A large eps makes
    the two conventions differ visibly."""
    eps, g = 0.2, torch.Generator().manual_seed(7)
    grads = [torch.randn(4, 5, generator=g, dtype=DT) for _ in range(2)]
    gb = [torch.randn(4, generator=g, dtype=DT) for _ in range(2)]

    def run(make):
        w, b = (torch.nn.Parameter(torch.zeros(s, dtype=DT)) for s in ((4, 5), (4,)))
        opt = make([w, b])
        with heavyball_eager_float64():
            for G, B in zip(grads, gb):
                w.grad, b.grad = G.clone(), B.clone()
                opt.step()
        return opt, w.detach(), b.detach()

    ours, w_ours, b_ours = run(lambda ps: make_ours(ps, eps=eps, f=100))
    _, w_hb, b_hb = run(lambda ps: make_heavyball(ps, eps=eps, f=100))
    lr, (b1, b2) = HP["lr"], HP["betas"]
    st, sb = ours.state[ours.param_groups[0]["params"][0]], ours.state[ours.param_groups[0]["params"][1]]
    QL, QR = st["Q_L"], st["Q_R"]
    m_hat = QL.T @ st["exp_avg"] @ QR / (1 - b1)  # k = 1 gradient seen by the moments
    v_hat = st["exp_avg_sq"] / (1 - b2)
    w_max = -lr * QL @ (m_hat / v_hat.sqrt().clamp(min=eps)) @ QR.T
    b_max = -lr * (sb["exp_avg"] / (1 - b1)) / (sb["exp_avg_sq"] / (1 - b2)).sqrt().clamp(min=eps)
    assert (v_hat.sqrt() < eps).any()  # the clamp is active somewhere
    torch.testing.assert_close(w_hb, w_max, rtol=0, atol=1e-15)
    torch.testing.assert_close(b_hb, b_max, rtol=0, atol=1e-15)
    assert (w_hb - w_ours).abs().max() > 1e-3 * lr


def test_learning_rate_in_the_default_dtype():
    """heavyball multiplies the learning rate by its int64 step counter (its warmup factor), which
    gives a tensor in torch's default dtype: with float32 as the default, a float64 parameter moves
    by float32(lr). Adam's step 2 on a vector is lr * sign(g) exactly, so this shows bit for bit."""
    lr, g = 0.02, torch.Generator().manual_seed(8)
    grads = [torch.randn(6, generator=g, dtype=DT) for _ in range(2)]
    b = torch.nn.Parameter(torch.zeros(6, dtype=DT))
    opt = heavyball.SOAP([b], lr=lr, betas=(0.9, 0.95), eps=0.0, weight_decay=0.0, storage_dtype="float64")
    mode, dtype = heavyball.utils.compile_mode, torch.get_default_dtype()
    heavyball.utils.compile_mode = None
    torch.set_default_dtype(torch.float32)
    try:
        for G in grads:
            b.grad = G.clone()
            opt.step()
    finally:
        heavyball.utils.compile_mode = mode
        torch.set_default_dtype(dtype)
    lr32 = float(torch.tensor(lr, dtype=torch.float32))
    assert lr32 != lr
    assert torch.equal(b.detach(), -lr32 * grads[1].sign())


@pytest.mark.parametrize("f,hb_steps,our_steps", [(3, [3, 7, 9, 12, 16], [4, 7, 10, 13, 16]),
                                                  (10, [11, 20, 30, 40], [11, 21, 31, 41])], ids=["f3", "f10"])
def test_refresh_schedule(f, hb_steps, our_steps):
    """The steps after which each implementation replaces its basis (seen as a change of the stored
    left basis): heavyball's running sum of 1/f in floating point puts some a step late."""
    g = torch.Generator().manual_seed(9)
    grads = [torch.randn(3, 4, generator=g, dtype=DT) for _ in range(max(hb_steps + our_steps) + 1)]

    def changes(make, basis):
        w = torch.nn.Parameter(torch.zeros(3, 4, dtype=DT))
        opt = make([w])
        out, old = [], None
        with heavyball_eager_float64():
            for t, G in enumerate(grads, start=1):
                w.grad = G.clone()
                opt.step()
                q = basis(opt.state[w]).clone()
                if t > 1 and not torch.equal(q, old):
                    out.append(t)
                old = q
        return out

    hb_basis = lambda st: next(v for k, v in st[0].items() if "_Q_" in k)[0]  # noqa: E731
    assert changes(lambda ps: make_heavyball(ps, eps=0.0, f=f), hb_basis) == hb_steps
    assert changes(lambda ps: make_ours(ps, eps=0.0, f=f), lambda st: st["Q_L"]) == our_steps
