"""The compiled kernel modules in use: ``xent`` (softmax cross-entropy, log-sum-exp family)
and ``probs`` (probability-space losses).  Every API module reaches the kernels through this
module's attributes (``_kernels.xent.xent(...)``), so that the kernels in use are chosen in
one place."""
from . import _probs as probs  # noqa: F401
from . import _xent as xent  # noqa: F401
