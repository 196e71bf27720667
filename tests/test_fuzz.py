"""A hypothesis fuzz of every public array function of ``fastxent.__all__``.

For random shapes (empty ones included), dtypes, memory layouts, special values (+-inf, NaN,
1e4), valid and invalid options, each call must either

* equal :mod:`fastxent.reference` run in float64 (within the tolerance of the input's dtype),
  or
* raise fastxent's TypeError / ValueError whose message starts with the name of an argument
  (and then the reference must refuse the input too, unless the check is one the reference does
  not make: ``out``, ``num_threads``, flags),

and in both cases leave every input unchanged, and ``out=`` untouched when it raises.
"""
import inspect
import os
import re

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastxent
from fastxent import reference as ref
from tests.conftest import assert_close

# 40 fixed examples per function in the suite (a few seconds); FASTXENT_FUZZ_EXAMPLES=5000 runs
# a long random hunt instead
_EXAMPLES = int(os.environ.get("FASTXENT_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_EXAMPLES or 40, deadline=None, derandomize=not _EXAMPLES,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
# checks only the API makes (the reference accepts anything there)
API_ONLY = {"out", "num_threads", "inplace", "grad_dtype", "return_z_loss", "keepdims",
            "return_sign", "log_q", "log_p", "return_grad", "chunk_size"}


# ------------------------------------------------------------------ building blocks
def _rng(draw):
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def _values(draw, shape, dtype=np.float64, scale=None):
    """Random floats of ``shape``, sometimes with one special value."""
    r = _rng(draw)
    scale = draw(st.sampled_from([1.0, 4.0])) if scale is None else scale
    x = r.standard_normal(shape) * scale
    special = draw(st.sampled_from([None, None, None, 1e4, -1e4, -np.inf, np.inf, np.nan]))
    if special is not None and x.size:
        x.flat[r.integers(0, x.size)] = special
    return x.astype(dtype)


def _probs(draw, shape, axis=-1, zeros=True):
    """Non-negative rows summing to 1 along ``axis`` (some entries exactly 0)."""
    r = _rng(draw)
    p = r.dirichlet(np.ones(shape[axis]), size=shape[:axis % len(shape)] +
                    shape[axis % len(shape) + 1:]) if shape[axis] else np.zeros(shape)
    p = np.moveaxis(np.asarray(p).reshape(shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
                                          + (shape[axis],)), -1, axis)
    if zeros and p.size and draw(st.booleans()):
        p.flat[r.integers(0, p.size)] = 0.0
    return np.ascontiguousarray(p)


def _layout(draw, a):
    """The same values in another memory layout (Fortran order, or reversed along axis 0)."""
    if a.ndim < 2 or a.dtype.itemsize < 4:
        return a
    kind = draw(st.sampled_from(["C", "F", "reversed"]))
    if kind == "F":
        return np.asfortranarray(a)
    if kind == "reversed":
        return np.ascontiguousarray(a[::-1])[::-1]
    return a


def _shape(draw, min_ndim=1, max_ndim=3, min_side=0):
    return tuple(draw(st.lists(st.integers(min_side, 5), min_size=min_ndim, max_size=max_ndim)))


def _threads(draw):
    return draw(st.sampled_from([None, None, 1, 2, 0]))


def _base(draw):
    return draw(st.sampled_from([None, None, 2, 10.0, 1, -2.0]))


def _reduction(draw, extra=()):
    return draw(st.sampled_from(["mean", "sum", "none", "avg", *extra]))


def _f64(a):
    """A float64 copy of a float array (16-bit values are exact in float64)."""
    if isinstance(a, np.ndarray) and (a.dtype.kind == "f" or a.dtype == BF16):
        return a.astype(np.float64)
    return a


def _tol_dtype(*arrays):
    """The dtype whose tolerance applies: float64 only if the computation is float64."""
    return np.float64 if any(isinstance(a, np.ndarray) and a.dtype == np.float64
                             for a in arrays) else np.float32


# ------------------------------------------------------------------ one call, checked
def _compare(got, want, dtype):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            _compare(g, w, dtype)
        return
    assert np.shape(got) == np.shape(want), (np.shape(got), np.shape(want))
    with np.errstate(over="ignore"):
        want = np.asarray(want, dtype=np.float64).astype(dtype)   # overflows as the result must
    assert_close(np.asarray(got, dtype=np.float64), want, dtype)


def _same_bytes(a, b):
    """Unchanged, bit for bit (NaN payloads included)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _check(name, args, kwargs, ref_kwargs=None, ref_func=None, dtype=np.float64):
    """Call fastxent.<name>; check the result against the reference, or the error."""
    f = getattr(fastxent, name)
    params = set(inspect.signature(f).parameters) | set(kwargs)
    out = kwargs.get("out")
    inplace = kwargs.get("inplace") is True
    watched = [a for a in list(args) + list(kwargs.values()) if isinstance(a, np.ndarray)]
    before = [a.copy() for a in watched]
    ref_args = [_f64(a) for a in args]
    rkw = {k: _f64(v) for k, v in (kwargs if ref_kwargs is None else ref_kwargs).items()
           if k not in ("out", "num_threads", "inplace")}
    ref_func = ref_func or getattr(ref, name)
    try:
        got = f(*args, **kwargs)
    except (TypeError, ValueError) as e:
        m = re.match(r"^(\w+):", str(e))
        assert m and m.group(1) in params, f"{name}: error without an argument name: {e!r}"
        for a, b in zip(watched, before):
            assert _same_bytes(a, b), f"{name}: an input or out= changed on error"
        if m.group(1) not in API_ONLY:
            with pytest.raises((TypeError, ValueError, IndexError, ZeroDivisionError)):
                ref_func(*ref_args, **rkw)
        return
    for a, b in zip(watched, before):
        if a is not out and not (inplace and a is args[0]):
            assert _same_bytes(a, b), f"{name}: an input was modified"
    with np.errstate(all="ignore"):
        want = ref_func(*ref_args, **rkw)
    _compare(got, want, dtype)


# ------------------------------------------------------------------ the functions
@st.composite
def cross_entropy_case(draw, name):
    with_grad = name.endswith("_with_grad")
    shape = _shape(draw, 1, 3)
    nd = len(shape)
    axis = draw(st.sampled_from([-1, 0, 1 % nd, nd]))
    dt = draw(st.sampled_from([np.float64, np.float32] + ([F16, BF16] if not with_grad else [])))
    x = _layout(draw, _values(draw, shape, dt))
    ax = axis % nd if -nd <= axis < nd else -1
    C = shape[ax]
    row_shape = shape[:ax] + shape[ax + 1:]
    r = _rng(draw)
    soft = draw(st.booleans()) and name != "perplexity"
    if soft:
        target = _probs(draw, shape, ax).astype(draw(st.sampled_from([np.float64, np.float32])))
    else:
        target = r.integers(0, max(C, 1), row_shape) if C else np.full(row_shape, -100)
        if target.size and draw(st.booleans()):
            target.flat[r.integers(0, target.size)] = draw(st.sampled_from([-100, C, -1, 3]))
        target = target.astype(draw(st.sampled_from([np.int64, np.int32, np.uint8, np.int16])))
    kw = dict(axis=axis)
    kw["reduction"] = _reduction(draw) if name != "perplexity" else draw(
        st.sampled_from(["mean", "none", "sum"]))
    if draw(st.booleans()):
        kw["weight"] = r.uniform(-1, 2, C + draw(st.sampled_from([0, 0, 1])))
    kw["label_smoothing"] = draw(st.sampled_from([0.0, 0.0, 0.1, 1.0, 1.5]))
    if draw(st.booleans()):
        kw["sample_weight"] = r.uniform(0, 2, row_shape)
    if name != "perplexity":
        kw["z_loss"] = draw(st.sampled_from([0.0, 0.0, 1e-3, -1.0]))
        kw["return_z_loss"] = draw(st.sampled_from([False, True]))
        kw["base"] = _base(draw)
    if name != "perplexity" and draw(st.integers(0, 3)) == 0:
        kw["focal_gamma"] = draw(st.sampled_from([0.5, 2.0, -1.0]))
    kw["softcap"] = draw(st.sampled_from([None, None, 5.0, 0.0]))
    kw["logit_scale"] = draw(st.sampled_from([1.0, 1.0, 0.5, np.inf]))
    kw["num_threads"] = _threads(draw)
    if with_grad:
        kw["grad_output"] = draw(st.sampled_from([1.0, 0.5, "row"]))
        if kw["grad_output"] == "row":
            kw["grad_output"] = r.uniform(-1, 1, row_shape)
        dest = draw(st.sampled_from([None, None, "out", "inplace"]))
        if dest == "out":
            kw["out"] = np.full(shape, 7.0, dtype=draw(st.sampled_from([dt, dt, np.float32])))
        elif dest == "inplace":
            kw["inplace"] = True
    return x, target, kw


@pytest.mark.parametrize("name", ["cross_entropy", "cross_entropy_with_grad", "perplexity"])
@FUZZ
@given(data=st.data())
def test_cross_entropy_family(name, data):
    x, target, kw = data.draw(cross_entropy_case(name))
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    if kw.get("inplace"):
        x = x.copy(order="C")                  # the caller's writeable array
    _check(name, (x, target), kw, dtype=dtype)


@st.composite
def nll_case(draw, name):
    shape = _shape(draw, 1, 3)
    nd = len(shape)
    axis = draw(st.sampled_from([-1, 0, nd]))
    ax = axis % nd if -nd <= axis < nd else -1
    dt = draw(st.sampled_from([np.float64, np.float32, F16, BF16]))
    x = _values(draw, shape)
    if draw(st.booleans()) and shape[ax]:
        with np.errstate(all="ignore"):
            x = x - np.max(x, axis=ax, keepdims=True)          # log-probabilities (<= 0)
    x = _layout(draw, x.astype(dt))
    C, row_shape = shape[ax], shape[:ax] + shape[ax + 1:]
    r = _rng(draw)
    target = r.integers(0, max(C, 1), row_shape) if C else np.full(row_shape, -100)
    if target.size and draw(st.booleans()):
        target.flat[r.integers(0, target.size)] = draw(st.sampled_from([-100, C, -1]))
    kw = dict(axis=axis, reduction=_reduction(draw), base=_base(draw), num_threads=_threads(draw))
    if draw(st.booleans()):
        kw["weight"] = r.uniform(-1, 2, C)
    if draw(st.booleans()):
        kw["sample_weight"] = r.uniform(0, 2, row_shape)
    if name.endswith("_with_grad"):
        kw["grad_output"] = draw(st.sampled_from([1.0, -0.5]))
        dest = draw(st.sampled_from([None, "out", "inplace"]))
        if dest == "out":
            kw["out"] = np.full(shape, 7.0, dtype=dt)
        elif dest == "inplace":
            kw["inplace"] = True
    return x, target, kw


@pytest.mark.parametrize("name", ["nll_loss", "nll_loss_with_grad"])
@FUZZ
@given(data=st.data())
def test_nll_loss(name, data):
    x, target, kw = data.draw(nll_case(name))
    if kw.get("inplace"):
        x = x.copy(order="C")
    # 16-bit gradients are stored in 16 bits: compared at their own precision below
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    if name.endswith("_with_grad") and x.dtype.itemsize == 2:
        kw.pop("out", None)
        kw.pop("inplace", None)
        got = fastxent.nll_loss_with_grad(x, target, **kw) if _valid_nll(x, target, kw) else None
        if got is not None:
            rkw = {k: _f64(v) for k, v in kw.items() if k != "num_threads"}
            want = ref.nll_loss_with_grad(_f64(x), target, **rkw)
            _compare(got[0], want[0], np.float32)
            np.testing.assert_allclose(got[1].astype(np.float64),
                                       want[1].astype(x.dtype).astype(np.float64), rtol=1e-2,
                                       atol=1e-6, equal_nan=True)
            return
    _check(name, (x, target), kw, dtype=dtype)


def _valid_nll(x, target, kw):
    try:
        fastxent.nll_loss(x, target, **{k: v for k, v in kw.items() if k != "grad_output"})
    except (TypeError, ValueError):
        return False
    return True


@st.composite
def lse_case(draw, name):
    shape = _shape(draw, 0, 3)
    nd = len(shape)
    dt = draw(st.sampled_from([np.float64, np.float32, F16, BF16]))
    x = _layout(draw, _values(draw, shape, dt))
    axis = draw(st.sampled_from([None, -1, 0, (0, -1), (), nd, (0, 0), 1.0]))
    kw = dict(axis=axis, num_threads=_threads(draw))
    if name == "logsumexp":
        kind = draw(st.sampled_from([None, "positive", "mixed", "broadcast", "bad"]))
        r = _rng(draw)
        if kind == "positive":
            kw["b"] = r.uniform(0, 2, shape).astype(draw(st.sampled_from([np.float64, np.float32])))
        elif kind == "mixed":
            kw["b"] = r.integers(-2, 3, shape)
        elif kind == "broadcast":
            kw["b"] = r.uniform(-1, 2, (3,) + shape[1:] if nd else (3,))
        elif kind == "bad":
            kw["b"] = np.ones((7,) * max(nd, 1) + (2,))
        kw["keepdims"] = draw(st.sampled_from([False, True]))
        kw["return_sign"] = draw(st.sampled_from([False, True, "yes"]))
    return x, kw


@pytest.mark.parametrize("name", ["logsumexp", "softmax", "log_softmax"])
@FUZZ
@given(data=st.data())
def test_lse_family(name, data):
    x, kw = data.draw(lse_case(name))
    b = kw.get("b")
    dtype = np.float64 if np.float64 in (x.dtype, getattr(b, "dtype", None)) else np.float32
    if b is not None and dtype == np.float64 and x.dtype != np.float64 and np.any(b < 0):
        dtype = np.float32      # the difference of two float32-accurate parts
    _check(name, (x,), kw, dtype=dtype)


@st.composite
def probs_case(draw, name):
    with_grad = name.endswith("_with_grad")
    shape = _shape(draw, 1, 3)
    nd = len(shape)
    axis = draw(st.sampled_from([-1, 0, nd]))
    ax = axis % nd if -nd <= axis < nd else -1
    dt = draw(st.sampled_from([np.float64, np.float32]))
    q = _probs(draw, shape, ax).astype(dt)
    r = _rng(draw)
    row_shape = shape[:ax] + shape[ax + 1:]
    kind = draw(st.sampled_from(["labels", "probs", "probs32"]))
    if kind == "labels":
        p = r.integers(0, max(shape[ax], 1), row_shape)
        if p.size and draw(st.booleans()):
            p.flat[r.integers(0, p.size)] = draw(st.sampled_from([-1, shape[ax], 0]))
    else:
        p = _probs(draw, shape, ax).astype(np.float32 if kind == "probs32" else np.float64)
    if q.size and draw(st.integers(0, 4)) == 0:
        a = q if draw(st.booleans()) or p.dtype.kind != "f" else p
        a.flat[r.integers(0, a.size)] = -0.5
    if q.size and draw(st.integers(0, 5)) == 0:
        q.flat[r.integers(0, q.size)] = np.nan if draw(st.booleans()) else 1e-30
    kw = dict(axis=axis, reduction=_reduction(draw), base=_base(draw),
              eps=draw(st.sampled_from([None, None, 0.0, 1e-3, 1.0, np.nan])),
              num_threads=_threads(draw))
    if draw(st.booleans()):
        kw["sample_weight"] = r.uniform(0, 2, row_shape)
    if with_grad:
        kw["grad_output"] = draw(st.sampled_from([1.0, -2.0]))
        dest = draw(st.sampled_from([None, "out", "out=q"]))
        if dest == "out":
            kw["out"] = np.full(shape, 7.0, dtype=draw(st.sampled_from([dt, dt, np.float16])))
        elif dest == "out=q":
            kw["out"] = q
    return p, q, kw


@pytest.mark.parametrize("name", ["cross_entropy_from_probs", "cross_entropy_from_probs_with_grad"])
@FUZZ
@given(data=st.data())
def test_cross_entropy_from_probs(name, data):
    p, q, kw = data.draw(probs_case(name))
    dtype = _tol_dtype(q, p if p.dtype.kind == "f" else q)
    # the reference clips at the machine epsilon of its own (float64) dtype: name fastxent's
    rkw = dict(kw)
    if rkw["eps"] is None:
        rkw["eps"] = float(np.finfo(dtype).eps)
    _check(name, (p, q), kw, rkw, dtype=dtype)


@st.composite
def binary_case(draw, name):
    logits = "logits" in name
    shape = _shape(draw, 0, 3)
    dt = draw(st.sampled_from([np.float64, np.float32]))
    r = _rng(draw)
    x = _values(draw, shape, dt) if logits else r.uniform(0, 1, shape).astype(dt)
    if not logits and x.size and draw(st.booleans()):
        x.flat[r.integers(0, x.size)] = draw(st.sampled_from([0.0, 1.0, 1.5, np.nan]))
    y = r.uniform(0, 1, shape)
    if y.size and draw(st.booleans()):
        y.flat[0] = draw(st.sampled_from([0.0, 1.0, -0.5]))
    kw = dict(reduction=_reduction(draw), base=_base(draw), num_threads=_threads(draw))
    wshape = draw(st.sampled_from([None, shape, shape[-1:], (7,)]))
    if wshape is not None:
        kw["weight"] = r.uniform(-1, 2, wshape)
    if logits and draw(st.booleans()):
        kw["pos_weight"] = r.uniform(0, 3, shape[-1:])
    if name.endswith("_with_grad"):
        kw["grad_output"] = draw(st.sampled_from([1.0, 3.0]))
        dest = draw(st.sampled_from([None, "out", "in place"]))
        if dest == "out":
            kw["out"] = np.full(shape, 7.0, dtype=dt)
        elif dest == "in place":
            kw["out"] = x
    return x, y.astype(dt), kw


@pytest.mark.parametrize("name", ["binary_cross_entropy", "binary_cross_entropy_with_grad",
                                  "binary_cross_entropy_with_logits",
                                  "binary_cross_entropy_with_logits_with_grad"])
@FUZZ
@given(data=st.data())
def test_binary(name, data):
    x, y, kw = data.draw(binary_case(name))
    _check(name, (x, y), kw, dtype=_tol_dtype(x))


@st.composite
def entropy_kl_case(draw, name):
    shape = _shape(draw, 1, 3, min_side=1)
    dt = draw(st.sampled_from([np.float64, np.float32]))
    p = _probs(draw, shape).astype(dt)
    if draw(st.integers(0, 5)) == 0:
        p.flat[0] = draw(st.sampled_from([-0.5, np.nan, 0.0]))
    kw = dict(base=_base(draw), num_threads=_threads(draw),
              axis=draw(st.sampled_from([-1, 0, len(shape)])))
    if name == "entropy":
        return (p,), kw
    q = _probs(draw, shape).astype(draw(st.sampled_from([np.float64, np.float32])))
    if draw(st.integers(0, 5)) == 0:
        q.flat[0] = np.nan                          # NaN propagates, also where p == 0
    kw.update(reduction=_reduction(draw, ("batchmean",)),
              log_q=draw(st.sampled_from([False, True])), log_p=draw(st.sampled_from([False, True])))
    with np.errstate(divide="ignore", invalid="ignore"):
        if kw["log_q"]:
            q = np.log(q)
        if kw["log_p"]:
            p = np.log(p)
    return (p, q), kw


@pytest.mark.parametrize("name", ["entropy", "kl_divergence"])
@FUZZ
@given(data=st.data())
def test_entropy_kl(name, data):
    args, kw = data.draw(entropy_kl_case(name))
    _check(name, args, kw, dtype=_tol_dtype(*args))


def _ref_linear(hidden, weight, target, *, bias=None, chunk_size=None, grad_output=1.0,
                return_grad=False, num_threads=None, **kw):
    """The reference of linear_cross_entropy: materialise the logits, then the chain rule."""
    z = hidden @ weight.T + (0 if bias is None else bias)
    if not return_grad:
        return ref.cross_entropy(z, target, **kw)
    loss, g = ref.cross_entropy_with_grad(z, target, grad_output=grad_output, **kw)
    g2 = g.reshape(-1, z.shape[-1])
    out = (loss, (g2 @ weight).reshape(hidden.shape), g2.T @ hidden.reshape(-1, hidden.shape[-1]))
    return out + ((g2.sum(0),) if bias is not None else ())


@st.composite
def linear_case(draw):
    r = _rng(draw)
    n, d, v = draw(st.integers(0, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    dt = draw(st.sampled_from([np.float64, np.float32]))
    h = r.standard_normal((n, d)).astype(dt)
    w = r.standard_normal((v, d)).astype(dt)
    t = r.integers(0, v, n)
    if n and draw(st.booleans()):
        t[0] = draw(st.sampled_from([-100, v]))
    kw = dict(reduction=_reduction(draw), label_smoothing=draw(st.sampled_from([0.0, 0.2])),
              chunk_size=draw(st.sampled_from([None, 1, 2, 0])),
              return_grad=draw(st.booleans()), num_threads=_threads(draw))
    if draw(st.booleans()):
        kw["bias"] = r.standard_normal(v).astype(dt)
    return h, w, t, kw


@FUZZ
@given(data=st.data())
def test_linear_cross_entropy(data):
    h, w, t, kw = data.draw(linear_case())
    _check("linear_cross_entropy", (h, w, t), kw, ref_func=_ref_linear, dtype=_tol_dtype(h))


def test_every_public_function_is_fuzzed():
    fuzzed = {"cross_entropy", "cross_entropy_with_grad", "perplexity", "nll_loss",
              "nll_loss_with_grad", "logsumexp", "softmax",
              "log_softmax", "cross_entropy_from_probs", "cross_entropy_from_probs_with_grad",
              "binary_cross_entropy", "binary_cross_entropy_with_grad",
              "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_with_grad",
              "entropy", "kl_divergence", "linear_cross_entropy"}
    public = {n for n in fastxent.__all__ if callable(getattr(fastxent, n))}
    # the batch-scoring entry points are checked against reference.score_rows by their own
    # tests (tests/test_score*.py)
    assert public - fuzzed == {"config", "show_config", "score_arrays", "score_files"}
