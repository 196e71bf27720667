"""Argument checks shared by every API module of fastxent (layer 3).

Each checker takes what a caller passed, returns it in the form the kernels need, or raises
TypeError / ValueError naming the argument and the problem.  The API modules (``_api``,
``_probs_api``, ``_linear``) and the integrations (``score``, ``dask``, ``torch``) import these
names; nothing here calls a kernel except the thread-count lookup.

Also here: the dtype constants, the thread-count rules (OpenMP default, fork safety, the cap),
the row layout of N-D arrays (``rows_of``) and the caller's output-array checks.
"""
import math
import numbers
import os

import numpy as np

F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
I32 = np.dtype(np.int32)
I64 = np.dtype(np.int64)
FLOATS = (F32, F64)
REDUCTIONS = ("mean", "sum", "none")

# Rows are processed in blocks of about this many elements: the unit of work of one thread
# and of the fixed-order reduction (so it depends on C only, never on the thread count).
BLOCK_ELEMS = 1 << 16

# The largest num_threads accepted: far above any core count a kernel can use, far below what
# makes the OpenMP runtime fail to create its threads.
MAX_THREADS = max(1024, os.cpu_count() or 1)


def rows_per_block(C):
    """Rows per block of work for rows of C classes (at least 1)."""
    return max(1, BLOCK_ELEMS // max(int(C), 1))


# ------------------------------------------------------------------ threads
# GNU OpenMP's thread pool does not survive fork(): a child process would hang in its first
# parallel region.  A process forked after fastxent has run therefore computes single
# threaded (correct results; use the "spawn" or "forkserver" start method for threads).
_FORKED = False


def _after_fork_in_child():
    global _FORKED
    _FORKED = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def default_threads():
    """OpenMP's default thread count (OMP_NUM_THREADS, threadpoolctl), 1 in a forked child."""
    from ._kernels import xent
    return 1 if _FORKED else min(xent.max_threads(), MAX_THREADS)


def num_threads(value):
    """``num_threads=``: None (the OpenMP default) or an int in [1, MAX_THREADS]."""
    if value is None:
        return default_threads()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"num_threads: expected an int or None, got {type(value).__name__}")
    n = int(value)
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"num_threads: must be between 1 and {MAX_THREADS}, got {n}")
    return 1 if _FORKED else n


# Rows longer than FX_SEG (_rowmath.h) may be split over threads; the elementwise kernels of
# _probs.pyx sum TILE elements per partial sum.
_SEG = 65536
_TILE = 16384


def work_threads(value, work, rows, C):
    """Thread count of a call: the OpenMP default or ``num_threads=value``, 1 for small inputs
    (one block of rows, or for elementwise work (``rows`` None) one tile)."""
    n = num_threads(value)
    if rows is None:
        return 1 if work <= _TILE else n
    if rows <= rows_per_block(C) and not (rows < n and C > _SEG):
        return 1
    return n


# ------------------------------------------------------------------ arrays
def values_of(arr, shape):
    """Per-row / per-element results: ``arr`` as an array of ``shape`` (a NumPy scalar for
    shape ())."""
    arr = arr.reshape(shape)
    return arr[()] if arr.ndim == 0 else arr


def as_array(obj, name="input"):
    """An ndarray view of ``obj``: DLPack producers (torch, JAX, CuPy on the CPU, ...) are read
    without a copy where they allow it, anything else goes through ``np.asarray``.  Objects
    NumPy cannot turn into an array (ragged nested lists, ...) raise a TypeError naming ``name``."""
    if isinstance(obj, np.ndarray):
        return obj
    if hasattr(obj, "__dlpack__"):
        try:
            return np.from_dlpack(obj)
        except (TypeError, ValueError, RuntimeError, BufferError):
            pass
    try:
        return np.asarray(obj)
    except (TypeError, ValueError, OverflowError, RuntimeError) as e:
        raise TypeError(f"{name}: cannot be read as an array of numbers "
                        f"({type(obj).__name__}: {e})") from None


def is_bf16(dt):
    """True for the bfloat16 dtype of ml_dtypes (a 2-byte type NumPy knows by name only)."""
    return dt.name == "bfloat16" and dt.itemsize == 2


def float_array(x, name):
    """``x`` as an aligned, native-byte-order float32 or float64 array (no copy if it is one)."""
    a = x if type(x) is np.ndarray else as_array(x, name)
    dt = a.dtype
    if (dt is F32 or dt is F64) and a.flags.aligned:
        return a  # the common case, checked cheaply; strides of aligned arrays are whole items
    if dt.kind == "f" and dt.itemsize in (4, 8) and not dt.isnative:
        a = a.astype(dt.newbyteorder("="))
    if a.dtype not in FLOATS:
        raise TypeError(
            f"{name}: expected a float32 or float64 array, got dtype {a.dtype}"
            + (" (convert it with .astype(np.float32))" if a.dtype.kind == "f" else "")
        )
    if not a.flags.aligned or any(s % a.itemsize for s in a.strides):
        a = a.copy()  # unaligned views (e.g. of structured arrays): the kernels need whole elements
    return a


def logits_array(logits, name="logits"):
    """Logits as an ndarray of a kernel-readable dtype (float16 and bfloat16 included)."""
    x = logits if type(logits) is np.ndarray else as_array(logits, name)
    dt = x.dtype
    if (dt is F32 or dt is F64) and x.flags.aligned:
        return x
    if dt == F16 or is_bf16(dt):
        return x if x.flags.aligned else x.copy()
    return float_array(x, name)


def real_array(x, name):
    """Any real-valued (bool, integer or float) array."""
    a = x if type(x) is np.ndarray else as_array(x, name)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a real-valued array, got dtype {a.dtype}")
    return a


def kernel_dtype(dt):
    """float64 logits are computed in float64, every other float type in float32."""
    return F64 if dt is F64 or dt == F64 else F32


def promote(*dts):
    """The computation dtype of mixed inputs: float64 if any is float64, else float32."""
    return F64 if any(dt == F64 for dt in dts) else F32


def as_kernel_dtype(a, kdt):
    """``a`` (a real-valued ndarray) as an aligned array of the kernel dtype ``kdt``."""
    if a.dtype != kdt:
        return a.astype(kdt)
    return a if a.flags.aligned else a.copy()


def rows_of(a, axis, C, name, need_view):
    """``a`` as a 2-D (rows, C) or 3-D (A, D, C) view with the class axis last, rows in the
    C order of the remaining axes.  Raises if a view is needed but only a copy is possible."""
    if a.ndim == 2 and axis == 1:
        return a
    shape = a.shape
    A = math.prod(shape[:axis])
    if axis == a.ndim - 1:
        v = a.reshape(A, C)
    else:
        D = math.prod(shape[axis + 1:])
        v = a.reshape(A, C, D).transpose(0, 2, 1)
    if need_view and v.size and not np.may_share_memory(v, a):
        raise ValueError(f"{name}: this memory layout cannot be written in place; "
                         "pass a C-contiguous array")
    return v


def first_index(mask):
    """Index (a tuple) of the first True of ``mask`` in C order."""
    flat = int(np.argmax(mask.reshape(-1)))
    return tuple(int(i) for i in np.unravel_index(flat, mask.shape))


# ------------------------------------------------------------------ scalar options
def axis(value, ndim, name):
    """An axis of an array of dimension ``ndim`` (negative counts from the end)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"axis: expected an int, got {type(value).__name__}")
    if not -ndim <= value < ndim:
        raise ValueError(f"axis: {value} is out of bounds for {name} of dimension {ndim}")
    return int(value) % ndim


def axes(value, ndim, name="x"):
    """``axis=`` of a reduction over several axes: None (all), an int or a tuple of ints, as a
    sorted tuple of distinct non-negative axes."""
    items = tuple(range(ndim)) if value is None else value if isinstance(value, tuple) else (value,)
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, numbers.Integral):
            raise TypeError(f"axis: expected an int, a tuple of ints or None, got "
                            f"{type(value).__name__}" + ("" if a is value else
                                                         f" holding a {type(a).__name__}"))
        if not -ndim <= a < ndim:
            raise ValueError(f"axis: {a} is out of bounds for {name} of dimension {ndim}")
        a = int(a) % ndim
        if a in out:
            raise ValueError(f"axis: axis {a} is repeated in {value!r}")
        out.append(a)
    return tuple(sorted(out))


def flag(value, name):
    """A bool option (``keepdims``, ``inplace``, ...): True/False or a NumPy bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__}")
    return bool(value)


def reduction(value, allowed=REDUCTIONS):
    """``reduction=``: one of the strings ``allowed``."""
    if type(value) is not str or value not in allowed:
        raise (ValueError if isinstance(value, str) else TypeError)(
            f"reduction: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def to_float(value, name):
    """float(value) of a real number; a Python int too large for a double is a ValueError."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name}: {value!r} is too large for a float") from None


def unit_float(value, name):
    """A float in [0, 1] (label smoothing)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float in [0, 1], got {type(value).__name__}")
    v = to_float(value, name)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name}: must be in [0, 1], got {value!r}")
    return v


def nonneg_float(value, name):
    """A finite float >= 0 (z-loss, focal gamma)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a non-negative float, got {type(value).__name__}")
    v = to_float(value, name)
    if not (v >= 0.0 and math.isfinite(v)):
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
    return v


_INT64 = np.iinfo(np.int64)


def integer(value, name):
    """An int that fits int64 (ignore_index)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    v = int(value)
    if not _INT64.min <= v <= _INT64.max:
        raise ValueError(f"{name}: {v} does not fit a 64-bit integer")
    return v


def log_base_scale(base):
    """1 / ln(base): the factor that turns nats into the requested unit (None: nats)."""
    if base is None:
        return 1.0
    if isinstance(base, bool) or not isinstance(base, numbers.Real):
        raise TypeError(f"base: expected a positive number or None, got {type(base).__name__}")
    b = to_float(base, "base")
    if not (b > 0.0 and math.isfinite(b)) or b == 1.0:
        raise ValueError(f"base: must be a positive finite number other than 1, got {base!r}")
    return 1.0 / math.log(b)


def logit_transform(softcap, logit_scale):
    """(cap, scale) of the logit transform z' = cap * tanh(scale * z / cap) (cap 0: none)."""
    cap = 0.0
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
            raise TypeError(f"softcap: expected a positive float or None, got {type(softcap).__name__}")
        cap = to_float(softcap, "softcap")
        if not (cap > 0.0 and math.isfinite(cap)):
            raise ValueError(f"softcap: must be a positive finite number or None, got {softcap!r}")
    if isinstance(logit_scale, bool) or not isinstance(logit_scale, numbers.Real):
        raise TypeError(f"logit_scale: expected a float, got {type(logit_scale).__name__}")
    scale = to_float(logit_scale, "logit_scale")
    if not math.isfinite(scale):
        raise ValueError(f"logit_scale: must be finite, got {logit_scale!r}")
    return cap, scale


# ------------------------------------------------------------------ labels and weights
def labels(t, C, ignore_index, row_shape, name="target"):
    """Integer labels as a contiguous int32/int64 vector of the rows (row-major order); the
    range is checked by the kernels (see ``raise_bad_label``)."""
    if t.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer class labels or float class probabilities, "
                        f"got dtype {t.dtype}")
    if t.shape != row_shape:
        raise ValueError(f"{name}: expected shape {row_shape} to match the rows, got {t.shape}")
    if t.dtype.kind == "u" and t.size and t.max() > _INT64.max:
        row = int(np.argmax(t.reshape(-1) > _INT64.max))
        raise_bad_label(t, row, C, ignore_index, name)
    dt = t.dtype
    if not (dt.isnative and dt.num in (I64.num, I32.num)):
        if dt.kind == "i" and dt.itemsize in (4, 8) and dt.isnative:
            # the same integer under another type number (np.longlong, np.intc): the kernels
            # dispatch on the type number, so relabel it without copying
            t = t.view(I64 if dt.itemsize == 8 else I32)
        else:
            t = t.astype(I64)
    return t.reshape(-1)


def raise_bad_label(t, row, C, ignore_index=None, name="target", as_index=False):
    """The error for the label of (flattened) row ``row``: out of [0, C) and not ignored;
    ``as_index``: name its position as an index of ``t``'s shape instead of a row number."""
    if as_index:
        where = f"index {tuple(int(i) for i in np.unravel_index(row, t.shape))}"
    else:
        where = f"row {row}"
    ign = "" if ignore_index is None else f" and is not ignore_index ({ignore_index})"
    raise ValueError(f"{name}: label {int(t.reshape(-1)[row])} at {where} is out of range "
                     f"[0, {C}){ign}")


def class_weight(weight, C):
    """float64 contiguous class weights and their sum (None: unit weights, sum C)."""
    if weight is None:
        return None, float(C)
    w = weight if type(weight) is np.ndarray else as_array(weight, "weight")
    if w.dtype.kind not in "fiu" and not is_bf16(w.dtype):
        raise TypeError(f"weight: expected a real-valued array of class weights, got dtype {w.dtype}")
    if w.shape != (C,):
        raise ValueError(f"weight: expected shape ({C},) (one weight per class), got {w.shape}")
    w = np.ascontiguousarray(w, dtype=F64)
    if not np.isfinite(w).all():
        raise ValueError("weight: contains NaN or inf")
    return w, math.fsum(w.tolist())


def sample_weight(value, row_shape):
    """``sample_weight=``: one finite real weight per row (an array of ``row_shape``), as
    contiguous float64 of the rows (None passes through)."""
    if value is None:
        return None
    s = value if type(value) is np.ndarray else as_array(value, "sample_weight")
    if s.dtype.kind not in "biuf" and not is_bf16(s.dtype):
        raise TypeError(f"sample_weight: expected a real-valued array, got dtype {s.dtype}")
    if s.shape != row_shape:
        raise ValueError(f"sample_weight: expected shape {row_shape} (one weight per row), "
                         f"got {s.shape}")
    s = np.ascontiguousarray(s, dtype=F64).reshape(-1)
    if not np.isfinite(s).all():
        raise ValueError(f"sample_weight: contains NaN or inf at row {int(np.argmin(np.isfinite(s)))}")
    return s


def grad_output(value, reduction, row_shape):
    """(scalar scale, per-row scale as contiguous float64 or None)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return to_float(value, "grad_output"), None
    g = value if type(value) is np.ndarray else as_array(value, "grad_output")
    if g.dtype.kind not in "fiu":
        raise TypeError(f"grad_output: expected a real number or array, got dtype {g.dtype}")
    if g.ndim == 0 or (g.size == 1 and reduction != "none"):
        return float(g.reshape(())), None
    if reduction == "none" and g.shape == row_shape:
        return 1.0, np.ascontiguousarray(g, dtype=F64).reshape(-1)
    want = f"a scalar or shape {row_shape}" if reduction == "none" else "a scalar"
    raise ValueError(f"grad_output: expected {want} for reduction={reduction!r}, got shape {g.shape}")


# ------------------------------------------------------------------ outputs
def _memory_of(obj):
    """An ndarray over the memory of ``obj`` (an ndarray, DLPack producer or __array__ object)
    for overlap checks, or None when it has no CPU memory to compare."""
    if obj is None or isinstance(obj, (numbers.Number, str, bytes)):
        return None
    if isinstance(obj, np.ndarray):
        return obj
    try:
        a = as_array(obj)
    except Exception:  # noqa: BLE001 - anything that cannot be viewed cannot overlap
        return None
    return a if isinstance(a, np.ndarray) and a.dtype.kind != "O" else None


def check_no_overlap(arr, name, others):
    """Raise if ``arr`` shares memory with any of ``others`` ((object, name) pairs)."""
    for other, oname in others:
        m = _memory_of(other)
        if m is not None and np.may_share_memory(arr, m):
            extra = "; use inplace=True to overwrite the logits" if oname == "logits" else ""
            raise ValueError(f"{name}: overlaps {oname} in memory{extra}")


def check_out(out, shape, dtype, same=(), others=(), what="result"):
    """The caller's output array: right type, shape, dtype, writeable and aligned.  It may be
    one of ``same`` ((object, name) pairs) itself -- the same memory with the same layout, which
    the result then overwrites -- but must not overlap anything else."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a NumPy array, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out: expected shape {shape}, got {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"out: expected dtype {dtype} (the {what}'s dtype), got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out: the array is read-only")
    if not out.flags.aligned or any(s % out.itemsize for s in out.strides):
        raise ValueError("out: must be aligned with strides that are whole elements")
    for obj, name in same:
        arr = _memory_of(obj)
        if (arr is not None and np.may_share_memory(out, arr)
                and not (arr.shape == out.shape and arr.strides == out.strides
                         and arr.__array_interface__["data"][0]
                         == out.__array_interface__["data"][0])):
            raise ValueError(f"out: overlaps {name} in memory (only {name} itself, with the "
                             "same layout, may be overwritten)")
    check_no_overlap(out, "out", others)
    return out


# ------------------------------------------------------------------ arithmetic
def div(a, b):
    """a / b with IEEE semantics (0/0 -> nan, x/0 -> +-inf) and no warning."""
    if b != 0.0:
        return a / b
    if a != a or a == 0.0:
        return math.nan
    return math.copysign(math.inf, a)
