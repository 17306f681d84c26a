"""The catalogue of optimizers that drives the parametrized tests.

In the spirit of ``OptimizerInfo`` in ``torch/testing/_internal/common_optimizers.py``:
one :class:`OptimizerInfo` per optimizer says what class to test, which
``torch.optim`` class is its reference, which keyword configurations to try,
what it supports, and how it must fail on bad hyperparameters. Adding an
optimizer to the package means adding one entry to :data:`CATALOGUE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

import optimizers


@dataclass
class OptimizerInfo:
    name: str
    cls: type
    #: the torch.optim class it must match, or None (no reference in torch)
    ref_cls: type | None
    #: sample keyword configurations spanning the options (lr always included)
    configs: list[dict[str, Any]]
    #: keys of the per-parameter state (used for sanity checks)
    state_keys: tuple[str, ...] = ()
    supports_sparse: bool = False
    supports_fused: bool = False
    #: False: complex parameters are refused at the first step (as the reference does)
    supports_complex: bool = True
    #: kwargs for the long runs on Rosenbrock and an ill-conditioned quadratic
    rosenbrock_kwargs: dict[str, Any] = field(default_factory=dict)
    quadratic_kwargs: dict[str, Any] = field(default_factory=dict)
    #: steps of the Rosenbrock run (2000 unless the method is known to be slow there)
    rosenbrock_steps: int = 2000
    #: (kwargs, name of the parameter the ValueError must mention)
    error_inputs: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    #: configuration used by sparse-gradient tests
    sparse_config: dict[str, Any] = field(default_factory=dict)
    #: torch's own error inputs (``optim_error_inputs_func_*`` in
    #: torch/testing/_internal/common_optimizers.py) that raise ValueError in
    #: ``__init__``: (kwargs, torch's error_regex); the message must match it
    torch_error_inputs: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    #: tolerance between the single-tensor and foreach paths, where torch's own
    #: two paths differ by more than float64 round-off (None: the shared one)
    paths_tol: dict[str, float] | None = None
    #: 0-dim float state that torch.optim's ``load_state_dict`` casts to the
    #: parameters' dtype (ours keeps it in the dtype it is computed in): a torch
    #: run resumed from a state dict then rounds differently from an
    #: uninterrupted one
    torch_load_casts: tuple[str, ...] = ()

    def config_ids(self) -> list[str]:
        return [_config_id(c) for c in self.configs]


def _config_id(kwargs: dict[str, Any]) -> str:
    if not kwargs:
        return "default"
    parts = []
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            v = f"T{v.item():g}"
        elif isinstance(v, tuple):
            v = "/".join(f"{x:g}" for x in v)
        parts.append(f"{k}={v}")
    return ",".join(parts)


NAN = math.nan

# Errors every optimizer with an lr, weight_decay and eps must raise.
def _common_errors(has_eps: bool = True, has_wd: bool = True) -> list[tuple[dict, str]]:
    errs: list[tuple[dict, str]] = [
        ({"lr": -0.1}, "lr"),
        ({"lr": NAN}, "lr"),
        ({"lr": torch.tensor([0.1, 0.2])}, "lr"),
        ({"lr": "fast"}, "lr"),
    ]
    if has_wd:
        errs += [({"weight_decay": -1e-2}, "weight_decay"), ({"weight_decay": NAN}, "weight_decay")]
    if has_eps:
        errs += [({"eps": -1e-8}, "eps"), ({"eps": NAN}, "eps")]
    return errs


# torch's error input shared by every optimizer that raises in __init__ (the
# others, duplicate or half-named params, come from torch.optim.Optimizer itself)
_TORCH_COMMON_ERRORS: list[tuple[dict, str]] = [
    ({"lr": torch.tensor([0.001, 0.001])}, "Tensor lr must be 1-element"),
]


def _beta_errors() -> list[tuple[dict, str]]:
    return [
        ({"betas": (1.0, 0.999)}, "betas[0]"),
        ({"betas": (-0.1, 0.999)}, "betas[0]"),
        ({"betas": (0.9, 1.0)}, "betas[1]"),
        ({"betas": (0.9, NAN)}, "betas[1]"),
        ({"betas": (0.9,)}, "betas"),
    ]


CATALOGUE: list[OptimizerInfo] = [
    OptimizerInfo(
        name="SGD",
        cls=optimizers.SGD,
        ref_cls=torch.optim.SGD,
        configs=[
            {"lr": 0.05},
            {"lr": torch.tensor(0.05)},
            {"lr": 0.05, "weight_decay": 0.1},
            {"lr": 0.05, "momentum": 0.9},
            {"lr": 0.05, "momentum": 0.9, "dampening": 0.5},
            {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1},
            {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
            {"lr": 0.05, "momentum": 0.5, "maximize": True, "weight_decay": 0.1},
        ],
        state_keys=("momentum_buffer",),
        supports_sparse=True,
        supports_fused=True,
        rosenbrock_kwargs={"lr": 1e-3, "momentum": 0.9},
        quadratic_kwargs={"lr": 1e-2, "momentum": 0.9},
        error_inputs=_common_errors(has_eps=False)
        + [
            ({"momentum": -0.5}, "momentum"),
            ({"momentum": NAN}, "momentum"),
            ({"momentum": 0.0, "nesterov": True}, "momentum"),
            ({"momentum": 0.9, "dampening": 0.1, "nesterov": True}, "dampening"),
            ({"dampening": NAN}, "dampening"),
            ({"foreach": True, "fused": True}, "fused"),
        ],
        sparse_config={"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
    ),
    OptimizerInfo(
        name="Adagrad",
        cls=optimizers.Adagrad,
        ref_cls=torch.optim.Adagrad,
        configs=[
            {"lr": 0.05},
            {"lr": torch.tensor(0.05)},
            {"lr": 0.05, "weight_decay": 0.1},
            {"lr": 0.05, "lr_decay": 1e-2},
            {"lr": 0.05, "initial_accumulator_value": 0.1, "eps": 1e-6},
            {"lr": 0.05, "maximize": True, "weight_decay": 0.1},
        ],
        state_keys=("step", "sum"),
        supports_sparse=True,
        supports_fused=True,
        rosenbrock_kwargs={"lr": 1.0},
        quadratic_kwargs={"lr": 0.5},
        error_inputs=_common_errors()
        + [
            ({"lr_decay": -1.0}, "lr_decay"),
            ({"lr_decay": NAN}, "lr_decay"),
            ({"initial_accumulator_value": -1.0}, "initial_accumulator_value"),
        ],
        sparse_config={"lr": 0.1},
    ),
    OptimizerInfo(
        name="RMSprop",
        cls=optimizers.RMSprop,
        supports_fused=True,  # compiled per-tensor update (optimizers._base._compiled_per_tensor)
        ref_cls=torch.optim.RMSprop,
        configs=[
            {"lr": 1e-2},
            {"lr": torch.tensor(1e-2)},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "centered": True},
            {"lr": 1e-2, "momentum": 0.9},
            {"lr": 1e-2, "momentum": 0.9, "centered": True, "alpha": 0.9},
            {"lr": 1e-2, "maximize": True, "weight_decay": 0.1, "momentum": 0.5},
        ],
        state_keys=("step", "square_avg"),
        rosenbrock_kwargs={"lr": 1e-3, "momentum": 0.9},
        quadratic_kwargs={"lr": 1e-3, "momentum": 0.9},
        error_inputs=_common_errors()
        + [
            ({"momentum": -0.1}, "momentum"),
            ({"alpha": -0.1}, "alpha"),
            ({"alpha": 1.5}, "alpha"),
            ({"alpha": NAN}, "alpha"),
        ],
    ),
    OptimizerInfo(
        name="Adadelta",
        cls=optimizers.Adadelta,
        supports_fused=True,  # compiled per-tensor update (optimizers._base._compiled_per_tensor)
        ref_cls=torch.optim.Adadelta,
        configs=[
            {},
            {"lr": torch.tensor(1.0)},
            {"lr": 0.5, "rho": 0.95},
            {"lr": 1.0, "weight_decay": 0.1},
            {"lr": 1.0, "eps": 1e-4},
            {"lr": 1.0, "maximize": True, "weight_decay": 0.1},
        ],
        state_keys=("step", "square_avg", "acc_delta"),
        rosenbrock_kwargs={"lr": 0.1},
        rosenbrock_steps=3000,  # Adadelta crawls along the curved valley
        quadratic_kwargs={"lr": 0.1},
        error_inputs=_common_errors()
        + [({"rho": -0.1}, "rho"), ({"rho": 1.1}, "rho"), ({"rho": NAN}, "rho")],
    ),
    OptimizerInfo(
        name="Adam",
        cls=optimizers.Adam,
        ref_cls=torch.optim.Adam,
        configs=[
            {"lr": 1e-2},
            {"lr": torch.tensor(1e-2)},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "amsgrad": True},
            {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6},
            {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
            {"lr": 1e-2, "maximize": True, "weight_decay": 0.1, "amsgrad": True},
        ],
        state_keys=("step", "exp_avg", "exp_avg_sq"),
        supports_fused=True,
        rosenbrock_kwargs={"lr": 1e-2},
        quadratic_kwargs={"lr": 1e-2},
        error_inputs=_common_errors() + _beta_errors(),
    ),
    OptimizerInfo(
        name="AdamW",
        cls=optimizers.AdamW,
        ref_cls=torch.optim.AdamW,
        configs=[
            {"lr": 1e-2},
            {"lr": torch.tensor(1e-2)},
            {"lr": 1e-2, "weight_decay": 0.0},
            {"lr": 1e-2, "amsgrad": True},
            {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.1},
            {"lr": 1e-2, "maximize": True, "amsgrad": True},
        ],
        state_keys=("step", "exp_avg", "exp_avg_sq"),
        supports_fused=True,
        rosenbrock_kwargs={"lr": 1e-2, "weight_decay": 0.0},
        quadratic_kwargs={"lr": 1e-2, "weight_decay": 0.0},
        error_inputs=_common_errors() + _beta_errors(),
    ),
    OptimizerInfo(
        name="NAdam",
        cls=optimizers.NAdam,
        supports_fused=True,  # compiled per-tensor update (optimizers._base._compiled_per_tensor)
        ref_cls=torch.optim.NAdam,
        configs=[
            {},
            {"lr": torch.tensor(2e-3)},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
            {"lr": 1e-2, "momentum_decay": 1e-2, "betas": (0.8, 0.99)},
            {"lr": 1e-2, "maximize": True, "weight_decay": 0.1},
        ],
        state_keys=("step", "mu_product", "exp_avg", "exp_avg_sq"),
        torch_load_casts=("mu_product",),
        rosenbrock_kwargs={"lr": 1e-2},
        quadratic_kwargs={"lr": 1e-2},
        error_inputs=_common_errors()
        + _beta_errors()
        + [({"momentum_decay": -1e-3}, "momentum_decay"), ({"momentum_decay": NAN}, "momentum_decay")],
    ),
    OptimizerInfo(
        name="Adamax",
        cls=optimizers.Adamax,
        supports_fused=True,  # compiled per-tensor update (optimizers._base._compiled_per_tensor)
        ref_cls=torch.optim.Adamax,
        configs=[
            {},
            {"lr": torch.tensor(2e-3)},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6},
            {"lr": 1e-2, "maximize": True},
            {"lr": 1e-2, "maximize": True, "weight_decay": 0.1},
        ],
        state_keys=("step", "exp_avg", "exp_inf"),
        rosenbrock_kwargs={"lr": 1e-1},
        quadratic_kwargs={"lr": 1e-2},
        error_inputs=_common_errors() + _beta_errors(),
    ),
    OptimizerInfo(
        name="RAdam",
        cls=optimizers.RAdam,
        supports_fused=True,  # compiled per-tensor update (optimizers._base._compiled_per_tensor)
        ref_cls=torch.optim.RAdam,
        # torch's OptimizerInfo configurations (optim_inputs_func_radam), with a
        # larger lr so that 100 steps move far, plus beta2 small enough that the
        # rectified phase starts early in the run and a tensor lr
        configs=[
            {},
            {"lr": 2e-3},
            {"lr": torch.tensor(1e-2)},
            {"lr": 1e-2, "eps": 1e-6},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "betas": (0.8, 0.9)},
            {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
            {"lr": 1e-2, "weight_decay": 0.1, "maximize": True},
        ],
        state_keys=("step", "exp_avg", "exp_avg_sq"),
        # the first (un-rectified) steps are momentum SGD with rate lr: on
        # Rosenbrock a shorter second-moment memory gets past them sooner
        rosenbrock_kwargs={"lr": 1e-2, "betas": (0.9, 0.99)},
        quadratic_kwargs={"lr": 1e-2},
        error_inputs=_common_errors() + _beta_errors(),
        torch_error_inputs=_TORCH_COMMON_ERRORS
        + [
            ({"lr": 1e-2, "betas": (1.0, 0.0)}, "Invalid beta parameter at index 0: 1.0"),
            ({"lr": 1e-2, "weight_decay": -1}, "Invalid weight_decay value: -1"),
        ],
    ),
    OptimizerInfo(
        name="Rprop",
        cls=optimizers.Rprop,
        supports_fused=True,  # compiled per-tensor update (optimizers._base._compiled_per_tensor)
        ref_cls=torch.optim.Rprop,
        # torch's OptimizerInfo configurations (optim_inputs_func_rprop), a tensor lr,
        # and tight step-size bounds that the run reaches
        configs=[
            {},
            {"lr": 2e-4},
            {"lr": torch.tensor(1e-2)},
            {"etas": (0.5, 1.5)},
            {"step_sizes": (2e-6, 100)},
            {"lr": 0.05, "step_sizes": (1e-3, 0.1)},
            {"maximize": True},
            # last: the config of the shared tests, one of which freezes a group
            # with lr = 0; Rprop's lr is only the initial step size, which the
            # clamp lifts to step_sizes[0] (as in torch), so that must be 0 too
            {"maximize": True, "step_sizes": (0.0, 50)},
        ],
        state_keys=("step", "prev", "step_size"),
        rosenbrock_kwargs={"lr": 1e-3},
        quadratic_kwargs={"lr": 1e-2},
        error_inputs=_common_errors(has_eps=False, has_wd=False)
        + [
            ({"etas": (1.0, 0.5)}, "etas"),
            ({"etas": (0.5, 1.0)}, "etas"),
            ({"etas": (0.0, 1.2)}, "etas"),
            ({"etas": (0.5, NAN)}, "etas"),
            ({"etas": (0.5,)}, "etas"),
            ({"step_sizes": (1.0, 1e-3)}, "step_sizes"),
            ({"step_sizes": (-1e-6, 50)}, "step_sizes"),
            ({"step_sizes": (1e-6, NAN)}, "step_sizes"),
        ],
        torch_error_inputs=_TORCH_COMMON_ERRORS
        + [({"lr": 1e-2, "etas": (1.0, 0.5)}, "Invalid eta values: 1.0, 0.5")],
    ),
    OptimizerInfo(
        name="ASGD",
        cls=optimizers.ASGD,
        supports_fused=True,  # compiled per-tensor update (optimizers._base._compiled_per_tensor)
        ref_cls=torch.optim.ASGD,
        # torch's OptimizerInfo configurations (optim_inputs_func_asgd), a tensor
        # lr, and a t0 inside the run so that the averaging starts
        configs=[
            {},
            {"lambd": 0.1},
            {"lr": 0.02},
            {"lr": torch.tensor(0.02)},
            {"t0": 100},
            {"lr": 0.05, "t0": 30, "alpha": 0.6, "lambd": 1e-2},
            {"maximize": True},
            {"weight_decay": 0.1},
            {"weight_decay": 0.1, "maximize": True, "t0": 10},
        ],
        state_keys=("step", "eta", "mu", "ax"),
        torch_load_casts=("eta", "mu"),
        # torch's foreach path computes eta_{t+1} in float32 arithmetic, its
        # single-tensor path in float64 before storing it in float32: one ulp
        # of eta apart at some steps, 1e-7 relative in the parameters
        paths_tol=dict(rtol=1e-6, atol=1e-8),
        rosenbrock_kwargs={"lr": 2e-3},
        quadratic_kwargs={"lr": 1e-2},
        error_inputs=_common_errors(has_eps=False)
        + [
            ({"lambd": -1e-4}, "lambd"),
            ({"alpha": -0.75}, "alpha"),
            ({"alpha": NAN}, "alpha"),
            ({"t0": -1.0}, "t0"),
            ({"t0": "never"}, "t0"),
        ],
        torch_error_inputs=_TORCH_COMMON_ERRORS
        + [({"lr": 1e-2, "weight_decay": -0.5}, "Invalid weight_decay value: -0.5")],
    ),
    OptimizerInfo(
        name="Adafactor",
        cls=optimizers.Adafactor,
        ref_cls=torch.optim.Adafactor,
        # torch's OptimizerInfo configurations (optim_inputs_func_adafactor),
        # a tensor lr, an explicit eps1 and a clipping threshold the run reaches
        configs=[
            {},
            {"lr": torch.tensor(1e-2)},
            {"weight_decay": 0.1, "lr": 0.01},
            {"beta2_decay": -1.0},
            {"d": 1.5},
            {"lr": 0.02, "eps": (1e-3, 1e-2), "beta2_decay": -0.5},
            {"lr": 0.5, "d": 1.0},
            {"weight_decay": 0.1, "maximize": True},
        ],
        state_keys=("step", "row_var", "col_var", "variance"),
        supports_complex=False,  # refused, as torch.optim.Adafactor does
        rosenbrock_kwargs={"lr": 1e-1},
        quadratic_kwargs={"lr": 1e-1},
        error_inputs=_common_errors(has_eps=False)
        + [
            ({"beta2_decay": 0.8}, "beta2_decay"),
            ({"beta2_decay": NAN}, "beta2_decay"),
            ({"eps": (-1e-30, 1e-3)}, "eps[0]"),
            ({"eps": (None, -1e-3)}, "eps[1]"),
            ({"eps": (None, NAN)}, "eps[1]"),
            ({"eps": 1e-3}, "eps"),
            ({"d": 0.0}, "d"),
            ({"d": NAN}, "d"),
        ],
        torch_error_inputs=_TORCH_COMMON_ERRORS
        + [
            ({"eps": (-1e-30, 1e-3)}, "epsilon1 should be >= 0"),
            ({"d": 0.0}, "Clipping threshold d should be >= 1"),
            ({"beta2_decay": 0.8}, "beta2_decay should be <= 0"),
        ],
    ),
]

# LM-Adagrad and its exact reference (no torch.optim counterpart; see tests/test_lm_adagrad.py).
for _name, _entry in [
    ("LMAdagrad", lambda: OptimizerInfo(
        name="LMAdagrad",
        cls=optimizers.LMAdagrad,
        ref_cls=None,
        configs=[
            {"lr": 1e-2},
            {"lr": torch.tensor(1e-2)},
            {"lr": 1e-2, "history_size": 3, "weight_decay": 0.1},
            {"lr": 1e-2, "centered": True},
            {"lr": 1e-2, "momentum": 0.9},
            {"lr": 1e-2, "momentum": 0.9, "momentum_mode": "update", "update_norm": "graft"},
            {"lr": 1e-2, "update_norm": "clip", "concatenate": True, "weight_decay": 0.1,
             "decoupled_weight_decay": True},
            {"lr": 1e-2, "history_size": 4, "momentum": 0.5, "update_norm": "clip",
             "concatenate": True, "maximize": True, "weight_decay": 0.1},
        ],
        state_keys=("step", "history"),
        supports_complex=True,
        rosenbrock_kwargs={"lr": 1e-2},
        quadratic_kwargs={"lr": 1e-2},
        error_inputs=_common_errors()
        + [
            ({"history_size": 0}, "history_size"),
            ({"history_size": 2.5}, "history_size"),
            ({"history_size": True}, "history_size"),
            ({"momentum": 1.0}, "momentum"),
            ({"momentum": -0.1}, "momentum"),
            ({"momentum_mode": "nesterov"}, "momentum_mode"),
            ({"update_norm": "scale"}, "update_norm"),
            ({"update_norm_beta": 1.0}, "update_norm_beta"),
            ({"centered": "yes"}, "centered"),
            ({"concatenate": 1}, "concatenate"),
        ],
    )),
    ("FullMatrixAdagrad", lambda: OptimizerInfo(
        name="FullMatrixAdagrad",
        cls=optimizers.FullMatrixAdagrad,
        ref_cls=None,
        configs=[
            {"lr": 0.1},
            {"lr": torch.tensor(0.1)},
            {"lr": 0.1, "history_size": 3},
            {"lr": 0.1, "weight_decay": 0.1, "eps": 1e-4},
            {"lr": 0.1, "history_size": 5, "maximize": True, "weight_decay": 0.1},
        ],
        state_keys=("step",),
        rosenbrock_kwargs={"lr": 0.3},
        quadratic_kwargs={"lr": 0.3},
        error_inputs=_common_errors()
        + [({"history_size": 0}, "history_size"), ({"history_size": 1.5}, "history_size")],
    )),
]:
    if hasattr(optimizers, _name):
        CATALOGUE.append(_entry())

if hasattr(optimizers, "Shampoo"):
    CATALOGUE.append(OptimizerInfo(
        name="Shampoo",
        cls=optimizers.Shampoo,
        ref_cls=None,  # no torch.optim reference; Kronecker-factor checks in tests/test_shampoo.py
        configs=[
            {"lr": 0.1},
            {"lr": torch.tensor(0.1)},
            {"lr": 0.1, "momentum": 0.9},
            {"lr": 0.1, "precondition_frequency": 3},
            {"lr": 0.1, "grafting": "sgd"},
            {"lr": 0.05, "grafting": "adagrad", "weight_decay": 0.1},
            {"lr": 0.1, "maximize": True, "momentum": 0.5, "eps": 1e-4, "precondition_frequency": 2},
        ],
        state_keys=("step",),
        supports_complex=False,
        rosenbrock_kwargs={"lr": 1.0},
        quadratic_kwargs={"lr": 0.5},
        error_inputs=_common_errors()
        + [
            ({"eps": 0.0}, "eps"),
            ({"momentum": 1.0}, "momentum"),
            ({"momentum": -0.1}, "momentum"),
            ({"precondition_frequency": 0}, "precondition_frequency"),
            ({"precondition_frequency": 2.5}, "precondition_frequency"),
            ({"grafting": "adam"}, "grafting"),
        ],
    ))

if hasattr(optimizers, "SOAP"):
    CATALOGUE.append(OptimizerInfo(
        name="SOAP",
        cls=optimizers.SOAP,
        ref_cls=None,  # no torch.optim reference; NumPy reference of the paper in tests/test_soap.py
        configs=[
            {"lr": 1e-2},
            {"lr": torch.tensor(1e-2)},
            {"lr": 1e-2, "precondition_frequency": 1, "weight_decay": 0.0},
            {"lr": 1e-2, "betas": (0.9, 0.99), "shampoo_beta": 0.9, "precondition_frequency": 3},
            {"lr": 1e-2, "max_precond_dim": 4, "eps": 1e-6},
            {"lr": 1e-2, "maximize": True, "weight_decay": 0.1, "precondition_frequency": 2},
        ],
        state_keys=("step", "exp_avg", "exp_avg_sq"),
        supports_complex=False,
        rosenbrock_kwargs={"lr": 1e-2, "betas": (0.9, 0.999), "weight_decay": 0.0},
        quadratic_kwargs={"lr": 1e-2, "betas": (0.9, 0.999), "weight_decay": 0.0},
        error_inputs=_common_errors()
        + _beta_errors()
        + [
            ({"shampoo_beta": 1.0}, "shampoo_beta"),
            ({"shampoo_beta": -0.5}, "shampoo_beta"),
            ({"precondition_frequency": 0}, "precondition_frequency"),
            ({"max_precond_dim": 0}, "max_precond_dim"),
        ],
    ))

if hasattr(optimizers, "A2Grad"):
    CATALOGUE.append(OptimizerInfo(
        name="A2Grad",
        cls=optimizers.A2Grad,
        supports_fused=True,  # compiled per-tensor update (optimizers._base._compiled_per_tensor)
        ref_cls=None,  # no torch.optim reference; parity with torch_optimizer in tests/test_a2grad.py
        configs=[
            {"lr": 1.0},
            {"lr": torch.tensor(1.0)},
            {"lr": 1.0, "variant": "inc"},
            {"lr": 1.0, "variant": "exp", "rho": 0.9},
            {"lr": 1.0, "per_coordinate": False},
            {"lr": 1.0, "variant": "exp", "per_coordinate": False, "beta": 1.0, "lips": 5.0},
            {"lr": 0.5, "variant": "inc", "per_coordinate": False, "weight_decay": 0.1},
            {"lr": 1.0, "variant": "exp", "maximize": True, "weight_decay": 0.1},
        ],
        state_keys=("step", "grad_avg", "x", "v"),
        rosenbrock_kwargs={"lips": 1000.0, "beta": 0.1},
        quadratic_kwargs={"lips": 100.0, "beta": 0.1},
        error_inputs=_common_errors(has_eps=False)
        + [
            ({"beta": -1.0}, "beta"),
            ({"beta": NAN}, "beta"),
            ({"lips": 0.0}, "lips"),
            ({"lips": -10.0}, "lips"),
            ({"lips": NAN}, "lips"),
            ({"rho": -0.1}, "rho"),
            ({"rho": 1.5}, "rho"),
            ({"rho": NAN}, "rho"),
            ({"variant": "adam"}, "variant"),
            ({"per_coordinate": "yes"}, "per_coordinate"),
        ],
    ))

if hasattr(optimizers, "Lion"):
    CATALOGUE.append(OptimizerInfo(
        name="Lion",
        cls=optimizers.Lion,
        supports_fused=True,  # compiled per-tensor update (optimizers._base._compiled_per_tensor)
        ref_cls=None,  # no torch.optim reference; parity with lion_pytorch in tests/test_lion.py
        configs=[
            {"lr": 1e-3},
            {"lr": torch.tensor(1e-3)},
            {"lr": 1e-3, "betas": (0.0, 0.99)},
            {"lr": 1e-3, "betas": (0.95, 0.98), "weight_decay": 0.1},
            {"lr": 3e-4, "weight_decay": 1.0},
            {"lr": 1e-3, "maximize": True, "weight_decay": 0.1},
        ],
        state_keys=("step", "exp_avg"),
        rosenbrock_kwargs={"lr": 3e-3},
        quadratic_kwargs={"lr": 1e-2},
        error_inputs=_common_errors(has_eps=False) + _beta_errors(),
    ))

if hasattr(optimizers, "Yogi"):
    CATALOGUE.append(OptimizerInfo(
        name="Yogi",
        cls=optimizers.Yogi,
        supports_fused=True,  # compiled per-tensor update (optimizers._base._compiled_per_tensor)
        ref_cls=None,  # no torch.optim reference; parity with torch_optimizer in tests/test_yogi.py
        configs=[
            {},
            {"lr": torch.tensor(1e-2)},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "initial_accumulator": 0.0},
            {"lr": 1e-2, "initial_accumulator": 1e-2},
            {"lr": 1e-2, "maximize": True, "weight_decay": 0.1},
        ],
        state_keys=("step", "exp_avg", "exp_avg_sq"),
        rosenbrock_kwargs={"lr": 1e-1},
        quadratic_kwargs={"lr": 1e-2},
        error_inputs=_common_errors()
        + _beta_errors()
        + [
            ({"initial_accumulator": -1e-6}, "initial_accumulator"),
            ({"initial_accumulator": NAN}, "initial_accumulator"),
        ],
    ))

if hasattr(optimizers, "SophiaG"):
    CATALOGUE.append(OptimizerInfo(
        name="SophiaG",
        cls=optimizers.SophiaG,
        supports_fused=True,  # compiled per-tensor update (optimizers._base._compiled_per_tensor)
        # no torch.optim reference; parity with the official code (sophia-opt), with
        # update_hessian() every k steps, in tests/test_sophia.py. The shared tests call
        # step() only: the curvature stays 0 and every step is clipped to lr * sign(m).
        ref_cls=None,
        configs=[
            {"lr": 1e-2},
            {"lr": torch.tensor(1e-2)},
            {"lr": 1e-2, "weight_decay": 0.0},
            {"lr": 1e-2, "betas": (0.9, 0.95), "rho": 0.1},
            {"lr": 1e-2, "maximize": True, "weight_decay": 0.0},
            {"lr": 1e-2, "maximize": True, "weight_decay": 0.2},
        ],
        state_keys=("step", "exp_avg", "hessian"),
        rosenbrock_kwargs={"lr": 5e-3, "weight_decay": 0.0},
        quadratic_kwargs={"lr": 5e-3, "weight_decay": 0.0},
        error_inputs=_common_errors(has_eps=False)
        + _beta_errors()
        + [({"rho": -0.01}, "rho"), ({"rho": NAN}, "rho"), ({"rho": "big"}, "rho")],
    ))

# Entries whose interface the step-level shared tests do not fit: SparseAdam
# takes only sparse gradients (tests/test_sparse_adam.py), LBFGS needs a
# closure and takes one parameter group (tests/test_lbfgs.py). Their
# configurations, error inputs and torch's error inputs live here all the same;
# the construction-level shared tests of tests/test_optimizers.py
# (``CONSTRUCTED``) run on them.
OWN_TESTS: list[OptimizerInfo] = [
    OptimizerInfo(
        name="SparseAdam",
        cls=optimizers.SparseAdam,
        ref_cls=torch.optim.SparseAdam,
        # torch's OptimizerInfo configurations (optim_inputs_func_sparseadam),
        # with larger learning rates, plus betas and eps
        configs=[
            {},
            {"lr": 0.01},
            {"lr": torch.tensor(0.01)},
            {"lr": 0.05, "betas": (0.8, 0.9), "eps": 1e-6},
            {"lr": 0.05, "maximize": True},
        ],
        state_keys=("step", "exp_avg", "exp_avg_sq"),
        supports_sparse=True,
        supports_complex=False,
        error_inputs=[
            ({"lr": -0.1}, "lr"),
            ({"lr": 0.0}, "lr"),
            ({"lr": NAN}, "lr"),
            ({"lr": torch.tensor([0.1, 0.2])}, "lr"),
            ({"eps": 0.0}, "eps"),
            ({"eps": NAN}, "eps"),
        ]
        + _beta_errors(),
        torch_error_inputs=_TORCH_COMMON_ERRORS
        + [({"lr": 1e-2, "betas": (1.0, 0.0)}, "Invalid beta parameter at index 0: 1.0")],
    ),
    OptimizerInfo(
        name="LBFGS",
        cls=optimizers.LBFGS,
        ref_cls=torch.optim.LBFGS,
        # torch's OptimizerInfo configurations (optim_inputs_func_lbfgs), plus a
        # short memory, a small evaluation budget and a strong-Wolfe search with
        # both, which exercise the memory's turnover and the line search's limit
        configs=[
            {},
            {"lr": 0.01},
            {"lr": torch.tensor(0.001)},
            {"tolerance_grad": 1e-6},
            {"line_search_fn": "strong_wolfe"},
            {"lr": 0.5, "history_size": 3, "max_iter": 7},
            {"line_search_fn": "strong_wolfe", "history_size": 2, "max_iter": 10, "max_eval": 6},
        ],
        state_keys=("func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag"),
        error_inputs=[
            ({"lr": -0.1}, "lr"),
            ({"lr": NAN}, "lr"),
            ({"lr": torch.tensor([0.1, 0.2])}, "lr"),
            ({"max_iter": 0}, "max_iter"),
            ({"max_iter": 2.5}, "max_iter"),
            ({"max_eval": 0}, "max_eval"),
            ({"tolerance_grad": NAN}, "tolerance_grad"),
            ({"tolerance_change": NAN}, "tolerance_change"),
            ({"history_size": 0}, "history_size"),
            ({"history_size": True}, "history_size"),
            ({"line_search_fn": "armijo"}, "line_search_fn"),
        ],
        torch_error_inputs=list(_TORCH_COMMON_ERRORS),
    ),
]

BY_NAME = {info.name: info for info in CATALOGUE}

#: optimizers that refuse a tensor lr together with foreach=True, as torch.optim's
#: Adam and AdamW do (without capturable): "lr as a Tensor is not supported for
#: capturable=False and foreach=True"
TENSOR_LR_NO_FOREACH = {"Adam", "AdamW"}


def refuses_foreach(info: OptimizerInfo, cfg: dict[str, Any]) -> bool:
    """Whether ``info.cls(..., **cfg, foreach=True)`` is refused at construction."""
    return info.name in TENSOR_LR_NO_FOREACH and isinstance(cfg.get("lr"), torch.Tensor)


def all_configs() -> list[tuple[OptimizerInfo, dict[str, Any]]]:
    """Every (optimizer, configuration) pair, for parametrization."""
    return [(info, cfg) for info in CATALOGUE for cfg in info.configs]


def all_config_ids() -> list[str]:
    return [f"{info.name}-{_config_id(cfg)}" for info, cfg in all_configs()]

# Optimizers of 2-D parameters only (Muon, as torch.optim.Muon): the shared
# tests' MLP has biases, so their own test files run the catalogue's checks
# (parity with torch on every configuration, paths, dtypes, state dicts,
# validation, torch's error inputs) on a model without biases.
MATRIX_ONLY: list[OptimizerInfo] = []
if hasattr(optimizers, "Muon"):
    MATRIX_ONLY.append(OptimizerInfo(
        name="Muon",
        cls=optimizers.Muon,
        ref_cls=torch.optim.Muon,
        # torch's OptimizerInfo configurations (optim_inputs_func_muon), then
        # the options it leaves at their defaults
        configs=[
            {},
            {"lr": 0.01},
            {"lr": torch.tensor(0.001)},
            {"weight_decay": 0.2},
            {"momentum": 0.8},
            {"ns_steps": 6},
            {"ns_coefficients": (3.4, -4.7, 2.0)},
            {"lr": 0.02, "nesterov": False},
            {"lr": 0.02, "adjust_lr_fn": "original"},
            {"lr": 0.02, "adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.0},
            {"lr": 0.02, "momentum": 0.0, "eps": 1e-3},
        ],
        state_keys=("momentum_buffer",),
        supports_complex=False,
        error_inputs=_common_errors()
        + [
            ({"momentum": -0.5}, "momentum"),
            ({"momentum": NAN}, "momentum"),
            ({"nesterov": "yes"}, "nesterov"),
            ({"ns_coefficients": (1.0, 2.0)}, "ns_coefficients"),
            ({"ns_coefficients": (1.0, NAN, 2.0)}, "ns_coefficients[1]"),
            ({"ns_steps": 100}, "ns_steps"),
            ({"ns_steps": 2.5}, "ns_steps"),
            ({"adjust_lr_fn": "arbitrary"}, "adjust_lr_fn"),
        ],
        torch_error_inputs=_TORCH_COMMON_ERRORS
        + [({"adjust_lr_fn": "arbitrary"}, "Adjust learning rate function arbitrary is not supported")],
    ))
