r"""Build optimizer parameter groups from a model: weight-decay exclusion and layer-wise lr decay.

Every ``torch.optim`` optimizer (and every optimizer in this package) accepts a list of dicts,
each with its own ``params`` and overriding hyperparameters. Two conventions are written by hand
in most training scripts; :func:`param_groups` writes them once:

* **No weight decay on biases and normalisation weights.** Decay pulls weights towards zero;
  for a bias or the scale :math:`\gamma` of a LayerNorm/BatchNorm that is not a regulariser of
  model capacity but a bias towards a particular, arbitrary function (a zero scale switches the
  feature off), so these parameters usually get ``weight_decay=0``.
* **Layer-wise learning-rate decay** (discriminative learning rates): with layers numbered
  :math:`l = 0, \dots, n_{\mathrm{layers}}-1` from the input, layer :math:`l` gets
  :math:`\eta\,\delta^{\,n_{\mathrm{layers}}-1-l}` with :math:`\delta` = ``layer_decay``, so the output layer keeps
  :math:`\eta` and each layer below gets a factor :math:`\delta` less (fine-tuning: layers near the
  input change least).
"""

from __future__ import annotations

import fnmatch
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ._base import _check_lr, _check_nonnegative, _real_number

__all__ = ["param_groups", "NORM_LAYERS", "default_no_decay"]

#: Module types whose parameters are normalisation weights/biases (excluded from decay by default).
NORM_LAYERS: tuple[type[nn.Module], ...] = tuple(
    t for t in (
        nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
        nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, getattr(nn, "RMSNorm", None),
    ) if t is not None
)


def default_no_decay(name: str, param: nn.Parameter, module: nn.Module) -> bool:
    """The default rule: biases (a name ending in ``bias``) and parameters of :data:`NORM_LAYERS`."""
    return name.rsplit(".", 1)[-1] == "bias" or isinstance(module, NORM_LAYERS)


def _owners(model: nn.Module) -> dict[int, nn.Module]:
    """id(parameter) -> the first module (in ``named_modules`` order) that registers it."""
    owners: dict[int, nn.Module] = {}
    for _, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), module)
    return owners


def _default_layers(model: nn.Module, names: list[str]) -> dict[str, int]:
    """Layer of each name: the rank of its top-level child among those holding trainable params.

    Parameters registered on ``model`` itself form layer 0, before the first child.
    """
    children = []
    for n in names:
        head = n.split(".", 1)[0] if "." in n else None
        if head is not None and head not in children:
            children.append(head)
    offset = 1 if any("." not in n for n in names) else 0
    rank = {c: i + offset for i, c in enumerate(children)}
    return {n: rank[n.split(".", 1)[0]] if "." in n else 0 for n in names}


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    *,
    layer_decay: float | None = None,
    no_decay: str | Callable[[str, nn.Parameter, nn.Module], bool] | Iterable[str] = "auto",
    layer_of: Callable[[str], int] | None = None,
    include_frozen: bool = False,
) -> list[dict[str, Any]]:
    r"""Parameter groups for ``model``: decay / no-decay split and optional layer-wise lr decay.

    Pass the result to any optimizer, e.g. ``optimizers.AdamW(param_groups(model, 1e-3, 0.05))``.

    Each group is a dict with ``params``, ``param_names``, ``lr``, ``weight_decay`` and ``layer``
    (extra keys are kept by torch optimizers and saved in their state dicts). Every trainable
    parameter of ``model`` appears in exactly one group, once, even when shared between modules
    (it is listed under its first name in ``model.named_parameters()``). The order is
    deterministic: groups by layer (input first), within a layer the decayed group before the
    non-decayed one, and parameters in ``named_parameters()`` order. Empty groups are omitted.

    Args:
        model: the model.
        lr: learning rate :math:`\eta \ge 0` of the last layer (of every layer without
            ``layer_decay``).
        weight_decay: weight decay :math:`\lambda \ge 0` of the decayed parameters (default: 0).
        layer_decay: :math:`\delta \in (0, 1]`; layer :math:`l` of :math:`n_{\mathrm{layers}}` gets
            :math:`\eta\,\delta^{n_{\mathrm{layers}}-1-l}` (default: None, every group gets ``lr``).
        no_decay: which parameters get ``weight_decay=0``: ``"auto"`` (biases and normalisation
            layers' parameters, :func:`default_no_decay`), a callable
            ``(name, param, owning_module) -> bool``, or an iterable of ``fnmatch`` patterns
            matched against parameter names (``()`` decays everything).
        layer_of: ``name -> layer index >= 0`` (0 nearest the input). Default: the rank of the
            parameter's top-level child module among the children that hold trainable
            parameters (parameters of ``model`` itself form a layer 0 before them). Layers are renumbered
            ``0..n_layers-1`` in increasing order of the returned indices.
        include_frozen: also group parameters with ``requires_grad=False`` (default: skip them).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``no_decay`` has the wrong type.
        ValueError: a hyperparameter is out of range, ``layer_of`` returns something other than
            a non-negative integer, or there is no parameter to optimize. Messages name the
            argument.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Invalid model: {type(model).__name__} (must be a torch.nn.Module)")
    _check_lr(lr)
    _check_nonnegative("weight_decay", weight_decay)
    if layer_decay is not None:
        d = _real_number("layer_decay", layer_decay)
        if not 0.0 < d <= 1.0:
            raise ValueError(f"Invalid layer_decay: {layer_decay!r} (must be in (0, 1])")

    if isinstance(no_decay, str):
        if no_decay != "auto":
            raise ValueError(f"Invalid no_decay: {no_decay!r} (must be 'auto', a callable or an "
                             "iterable of name patterns)")
        rule: Callable[[str, nn.Parameter, nn.Module], bool] = default_no_decay
    elif callable(no_decay):
        rule = no_decay
    elif isinstance(no_decay, Iterable):
        patterns = list(no_decay)
        if not all(isinstance(p, str) for p in patterns):
            raise TypeError(f"Invalid no_decay: {patterns!r} (patterns must be strings)")
        rule = lambda name, p, m: any(fnmatch.fnmatchcase(name, pat) for pat in patterns)  # noqa: E731
    else:
        raise TypeError(f"Invalid no_decay: {type(no_decay).__name__} (must be 'auto', a "
                        "callable or an iterable of name patterns)")

    named = [(n, p) for n, p in model.named_parameters() if include_frozen or p.requires_grad]
    if not named:
        raise ValueError(f"Invalid model: {type(model).__name__} has no "
                         f"{'' if include_frozen else 'trainable '}parameters")
    names = [n for n, _ in named]
    owners = _owners(model)

    if layer_of is None:
        layer_idx = _default_layers(model, names)
    else:
        layer_idx = {}
        for n in names:
            k = layer_of(n)
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
                raise ValueError(f"Invalid layer_of: returned {k!r} for {n!r} (must be an "
                                 "integer >= 0)")
            layer_idx[n] = int(k)
    ranks = {k: i for i, k in enumerate(sorted(set(layer_idx.values())))}
    n_layers = len(ranks)

    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for n, p in named:
        layer = ranks[layer_idx[n]]
        decay = not rule(n, p, owners[id(p)])
        key = (layer, not decay)
        if key not in groups:
            scale = 1.0 if layer_decay is None else float(layer_decay) ** (n_layers - 1 - layer)
            groups[key] = {"params": [], "param_names": [], "lr": lr * scale,
                           "weight_decay": weight_decay if decay else 0.0, "layer": layer}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(n)
    return [groups[k] for k in sorted(groups)]
