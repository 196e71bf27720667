"""fastxent: fast, numerically stable cross-entropy on the CPU.

Layers (one direction): ``_rowmath`` (row numerics, the only log-sum-exp) -> ``_xent``
(Cython + OpenMP array kernels) -> ``_api`` (validation and dispatch) -> this package.
``fastxent.reference`` holds the same functions in plain NumPy: the ground truth.
``fastxent.score`` (batch scoring of stored outputs) and ``fastxent.dask`` build on the API.
"""
from ._api import cross_entropy, cross_entropy_with_grad, nll_loss, nll_loss_with_grad
from ._lse_api import log_softmax, logsumexp, softmax
from ._config import config, show_config
from ._version import __version__
from ._linear import linear_cross_entropy
from ._binary_api import *  # noqa: F401,F403
from ._binary_api import __all__ as _binary_all
from ._probs_api import *  # noqa: F401,F403
from ._probs_api import __all__ as _probs_all
from .score import score_arrays, score_files


__all__ = [
    "__version__",
    "config",
    "cross_entropy",
    "cross_entropy_with_grad",
    "linear_cross_entropy",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "nll_loss_with_grad",
    "score_arrays",
    "score_files",
    "show_config",
    "softmax",
] + list(_binary_all) + list(_probs_all)
