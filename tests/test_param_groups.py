"""optimizers.param_groups: coverage, order, decay split, layer decay, validation, use with optimizers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import optimizers


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 8),
                         nn.BatchNorm1d(8), nn.Linear(8, 3, bias=False))


def all_params(groups):
    return [p for g in groups for p in g["params"]]


def test_each_trainable_param_exactly_once_in_order():
    net = small_net()
    groups = optimizers.param_groups(net, lr=1e-3, weight_decay=0.1)
    ps = all_params(groups)
    assert len(ps) == len({id(p) for p in ps}) == len(list(net.parameters()))
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, _ in net.named_parameters())
    # deterministic: a second call gives the same structure
    again = optimizers.param_groups(net, lr=1e-3, weight_decay=0.1)
    assert [g["param_names"] for g in again] == [g["param_names"] for g in groups]


def test_default_no_decay_rule():
    net = small_net()
    groups = optimizers.param_groups(net, lr=1e-3, weight_decay=0.1)
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert wd == {"0.weight": 0.1, "0.bias": 0.0, "1.weight": 0.0, "1.bias": 0.0,
                  "3.weight": 0.1, "3.bias": 0.0, "4.weight": 0.0, "4.bias": 0.0,
                  "5.weight": 0.1}
    # without layer decay: one decayed and one non-decayed group
    assert [(g["weight_decay"], len(g["params"])) for g in
            optimizers.param_groups(net, lr=1e-3, weight_decay=0.1, layer_of=lambda n: 0)] == \
        [(0.1, 3), (0.0, 6)]


def test_layer_decay_lrs():
    net = small_net()
    groups = optimizers.param_groups(net, lr=1.0, weight_decay=0.0, layer_decay=0.5)
    lr = {n: g["lr"] for g in groups for n in g["param_names"]}
    # default layers: top-level children with params: 0, 1, 3, 4, 5 -> L = 5
    assert lr["5.weight"] == 1.0 and lr["4.weight"] == 0.5 and lr["3.bias"] == 0.25
    assert lr["1.weight"] == 0.125 and lr["0.weight"] == 0.0625
    assert [g["layer"] for g in groups] == sorted(g["layer"] for g in groups)


def test_custom_layer_of_and_patterns():
    net = small_net()
    groups = optimizers.param_groups(net, lr=1.0, weight_decay=0.2, layer_decay=0.1,
                                     layer_of=lambda n: 10 if n.startswith("5") else 3,
                                     no_decay=["*.bias"])
    lr = {n: g["lr"] for g in groups for n in g["param_names"]}
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert lr["5.weight"] == 1.0 and lr["0.weight"] == pytest.approx(0.1)
    assert wd["1.weight"] == 0.2 and wd["1.bias"] == 0.0  # pattern rule, not the norm rule
    groups = optimizers.param_groups(net, 1.0, 0.2, no_decay=lambda n, p, m: p.ndim <= 1)
    assert {n for g in groups if g["weight_decay"] == 0 for n in g["param_names"]} == \
        {n for n, p in net.named_parameters() if p.ndim <= 1}
    assert all(g["weight_decay"] == 0.2 for g in optimizers.param_groups(net, 1.0, 0.2, no_decay=()))


def test_shared_and_frozen_parameters():
    lin = nn.Linear(3, 3)
    net = nn.Sequential(lin, nn.Tanh(), lin, nn.Linear(3, 2))
    net[3].weight.requires_grad_(False)
    groups = optimizers.param_groups(net, lr=0.1)
    names = [n for g in groups for n in g["param_names"]]
    assert names == ["0.weight", "0.bias", "3.bias"]
    with_frozen = optimizers.param_groups(net, lr=0.1, include_frozen=True)
    assert len(all_params(with_frozen)) == 4


def test_root_parameters_go_to_layer_0():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.head = nn.Linear(2, 2)

    groups = optimizers.param_groups(M(), lr=1.0, layer_decay=0.5)
    lr = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert lr == {"scale": 0.5, "head.weight": 1.0, "head.bias": 1.0}


@pytest.mark.parametrize("cls", [optimizers.SGD, optimizers.AdamW, torch.optim.AdamW])
def test_optimizer_uses_groups_and_state_dict_round_trip(cls):
    net = small_net().double()
    opt = cls(optimizers.param_groups(net, lr=1e-2, weight_decay=0.1, layer_decay=0.5), lr=1e-2)
    x = torch.randn(16, 4, dtype=torch.float64)
    for _ in range(3):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
    sd = opt.state_dict()
    assert [g["param_names"] for g in sd["param_groups"]] == \
        [g["param_names"] for g in opt.param_groups]
    opt2 = cls(optimizers.param_groups(net, lr=1e-2, weight_decay=0.1, layer_decay=0.5), lr=1e-2)
    opt2.load_state_dict(sd)
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]


def test_decay_only_touches_decayed_params():
    """With a zero loss gradient, AdamW's decoupled decay shrinks exactly the decayed params."""
    net = small_net().double()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = optimizers.AdamW(optimizers.param_groups(net, lr=0.1, weight_decay=0.5))
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for g in opt.param_groups:
        for n, p in zip(g["param_names"], g["params"]):
            expected = before[n] * (1 - 0.1 * g["weight_decay"])
            torch.testing.assert_close(p.detach(), expected)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(lr=1.0, weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(lr=1.0, layer_decay=0.0), ValueError, "layer_decay"),
    (dict(lr=1.0, layer_decay=1.5), ValueError, "layer_decay"),
    (dict(lr=1.0, no_decay="bias"), ValueError, "no_decay"),
    (dict(lr=1.0, no_decay=3), TypeError, "no_decay"),
    (dict(lr=1.0, no_decay=[1]), TypeError, "no_decay"),
    (dict(lr=1.0, layer_of=lambda n: -1), ValueError, "layer_of"),
    (dict(lr=1.0, layer_of=lambda n: 1.5), ValueError, "layer_of"),
])
def test_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        optimizers.param_groups(small_net(), **kwargs)


def test_not_a_model_and_no_params():
    with pytest.raises(TypeError, match="model"):
        optimizers.param_groups([torch.zeros(1)], lr=1.0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        optimizers.param_groups(nn.Tanh(), lr=1.0)
