"""Deep-learning optimizers as drop-in replacements for ``torch.optim``.

Each class has the same name, arguments, defaults, state and trajectory as its
``torch.optim`` counterpart; each module also exposes the functional core
(``optimizers.sgd.sgd``, ``optimizers.adam.adam``, ...), with a readable
single-tensor path (the default on CPU) and a multi-tensor ``torch._foreach_*``
path (the default on CUDA), chosen as ``torch.optim`` chooses.

===========  ==========================  =========================
class        module                      functional core
===========  ==========================  =========================
SGD          ``optimizers.sgd``          ``sgd``
Adagrad      ``optimizers.adagrad``      ``adagrad``
RMSprop      ``optimizers.rmsprop``      ``rmsprop``
Adadelta     ``optimizers.adadelta``     ``adadelta``
Adam, AdamW  ``optimizers.adam``         ``adam``, ``adamw``
NAdam        ``optimizers.nadam``        ``nadam``
Adamax       ``optimizers.adamax``       ``adamax``
RAdam        ``optimizers.radam``        ``radam``
Rprop        ``optimizers.rprop``        ``rprop``
ASGD         ``optimizers.asgd``         ``asgd``
Adafactor    ``optimizers.adafactor``    ``adafactor``
SparseAdam   ``optimizers.sparse_adam``  ``sparse_adam``
LBFGS        ``optimizers.lbfgs``        ``lbfgs_direction``, ``strong_wolfe``
SophiaG      ``optimizers.sophia``       ``sophiag``, ``sophiag_update_hessian``
Muon         ``optimizers.muon``         ``muon``
Shampoo      ``optimizers.shampoo``      ``shampoo``
SOAP         ``optimizers.soap``         ``soap``
Yogi         ``optimizers.yogi``         ``yogi``
Lion         ``optimizers.lion``         ``lion``
===========  ==========================  =========================

This module imports neither matplotlib nor the book helpers
(``optimizers.book``).
"""

from ._base import InvalidParamsError, OptimizerBase
from .adadelta import Adadelta
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .asgd import ASGD
from .nadam import NAdam
from .radam import RAdam
from .rmsprop import RMSprop
from .rprop import Rprop
from .sgd import SGD
from .sparse_adam import SparseAdam
from .lbfgs import LBFGS
from .lm_adagrad import FullMatrixAdagrad, LMAdagrad
from .schedules import warmup_cosine
from .param_groups import param_groups
from .a2grad import A2Grad
from .sophia import SophiaG
from .muon import Muon
from .shampoo import Shampoo
from .soap import SOAP
from .yogi import Yogi
from .lion import Lion

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adagrad",
    "RMSprop",
    "Adadelta",
    "Adam",
    "AdamW",
    "NAdam",
    "Adamax",
    "RAdam",
    "Rprop",
    "ASGD",
    "Adafactor",
    "SparseAdam",
    "LBFGS",
    "LMAdagrad",
    "FullMatrixAdagrad",
    "A2Grad",
    "SophiaG",
    "Muon",
    "Shampoo",
    "SOAP",
    "Yogi",
    "Lion",
    "OptimizerBase",
    "InvalidParamsError",
    "warmup_cosine",
    "param_groups",
    "__version__",
]
