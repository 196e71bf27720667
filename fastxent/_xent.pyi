# Type stubs of the compiled softmax cross-entropy kernels (fastxent/_xent.pyx).  Layer 2: no
# validation happens here; the arrays must be what the API layer (_api.py, _lse_api.py) passes.
import numpy as np

_Array = np.ndarray
_OptArray = np.ndarray | None

INPUT_LOGITS: int           # xent's input_kind: logits (softmax cross-entropy)
INPUT_LOGPROBS: int         # ... log-probabilities (nll_loss: no softmax)
LSE_LOGSUMEXP: int          # lse_family's modes
LSE_LOG_SOFTMAX: int
LSE_SOFTMAX: int
SCORE_LOGITS: int           # score_rows' kinds of input
SCORE_LOGPROBS: int
SCORE_PROBS: int

def openmp_enabled() -> bool: ...
def max_threads() -> int: ...

# returns (sum of row losses, sum of z-loss terms, sum of w[y] over non-ignored rows, first
# bad row or -1)
def xent(x: _Array, target: _OptArray, probs: _OptArray, weight: _OptArray, W: float,
         ignore_index: int, eps: float, zl: float, gamma: float, input_kind: int, scale: float,
         cap: float, lscale: float, gscale: float, row_scale: _OptArray, loss_out: _OptArray,
         z_out: _OptArray, grad_out: _OptArray, rows_per_block: int,
         n_threads: int) -> tuple[float, float, float, int]: ...

# the plain loss of one block of rows as a NumPy scalar, or None (the validating path's case)
def plain_scalar(x: object, t: object, ignore_index: int, mean: bool,
                 block_elems: int) -> np.floating | None: ...

# returns (first bad row or -1, sum of w[y] over the non-ignored rows)
def label_stats(target: _Array, C: int, ignore_index: int,
                weight: _OptArray) -> tuple[int, float]: ...

# mode 0: log-sum-exp into lse_out; 1: log_softmax into out; 2: softmax into out
def lse_family(x: _Array, mode: int, lse_out: _OptArray, out: _OptArray, rows_per_block: int,
               n_threads: int) -> None: ...

# exact sums: the finite values of x added into acc (int64, (groups, 2048, 2)) by group
def exact_add(x: _Array, index: _OptArray, acc: _Array) -> None: ...

# per-row scoring statistics; returns the first row whose label is out of range, or -1
def score_rows(x: _Array, labels: _Array, kind: int, ignore_index: int, lo: float,
               loss_out: _OptArray, rank_out: _OptArray, conf_out: _OptArray,
               brier_out: _OptArray, rows_per_block: int, n_threads: int,
               rank_cap: int) -> int: ...
