# Type stubs of the compiled softmax cross-entropy kernels (fastxent/_xent.pyx).  Layer 2: no
# validation happens here; the arrays must be what the API layer (_api.py, _lse_api.py) passes.
import numpy as np

_Array = np.ndarray
_OptArray = np.ndarray | None

def openmp_enabled() -> bool: ...
def max_threads() -> int: ...
def simd_level() -> str: ...

# returns (sum of row losses, sum of z-loss terms, sum of w[y] over non-ignored rows, first
# bad row or -1)
def xent(x: _Array, target: _OptArray, probs: _OptArray, weight: _OptArray, W: float,
         ignore_index: int, eps: float, zl: float, scale: float, cap: float, lscale: float,
         gscale: float, row_scale: _OptArray, loss_out: _OptArray, z_out: _OptArray,
         grad_out: _OptArray, rows_per_block: int,
         n_threads: int) -> tuple[float, float, float, int]: ...

# returns (first bad row or -1, sum of w[y] over the non-ignored rows)
def label_stats(target: _Array, C: int, ignore_index: int,
                weight: _OptArray) -> tuple[int, float]: ...

# mode 0: log-sum-exp into lse_out; 1: log_softmax into out; 2: softmax into out
def lse_family(x: _Array, mode: int, lse_out: _OptArray, out: _OptArray, rows_per_block: int,
               n_threads: int) -> None: ...
