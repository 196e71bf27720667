# Type stubs of the compiled probability-space kernels (fastxent/_probs.pyx).  Layer 2: no
# validation happens here; the arrays must be what the API layer (_probs_api.py,
# _binary_api.py) passes.
import numpy as np

OP_XENT: int
OP_ENTROPY: int
OP_KL: int
OP_BCE: int
OP_BCE_LOGITS: int
KL_LOG_Q: int               # rows' mode bits for OP_KL: q / p hold log-probabilities
KL_LOG_P: int

_OptArray = np.ndarray | None
# an operand of the elementwise kernel: (array whose data pointer is element (0, 0), byte
# stride along the grid's rows, byte stride along its columns); x and y are never None
_Operand = tuple[np.ndarray, int, int] | None

# returns (sum of the row values, invalid flag)
def rows(p: _OptArray, q: _OptArray, grad_out: _OptArray, labels: _OptArray, op: int, mode: int,
         lo: float, hi: float, gscale: float, row_scale: _OptArray, vals_out: _OptArray,
         lscale: float, rows_per_block: int, n_threads: int) -> tuple[float, int]: ...

# returns (sum of the losses, invalid flag)
def binary(op: int, R: int, K: int, x: _Operand, y: _Operand, w: _Operand, pw: _Operand,
           go: _Operand, grad_out: _Operand, loss_out: _OptArray, lscale: float, gscale: float,
           n_threads: int) -> tuple[float, int]: ...
