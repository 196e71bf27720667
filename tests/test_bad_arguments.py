"""Every bad argument of every public function raises fastxent's TypeError or ValueError whose
message starts with the name of an argument: never a raw OverflowError, a NumPy message, a
crash, or a silently accepted flag.  A sweep over every parameter of every function in
``fastxent.__all__`` with values of the wrong kind, plus the cases that used to escape.
"""
import inspect
import re

import numpy as np
import pytest

import fastxent

N, C = 4, 3
_rng = np.random.default_rng(0)
X = _rng.standard_normal((N, C))
T = np.array([0, 1, 2, 1])
Q = _rng.dirichlet(np.ones(C), N)
PB = _rng.uniform(0.1, 0.9, (N, C))
TB = _rng.uniform(0, 1, (N, C))
H = _rng.standard_normal((N, 2))
WL = _rng.standard_normal((C, 2))

# valid positional arguments of each array function
ARGS = {
    "cross_entropy": (X, T), "cross_entropy_with_grad": (X, T),
    "nll_loss": (X, T), "nll_loss_with_grad": (X, T),
    "logsumexp": (X,), "softmax": (X,), "log_softmax": (X,),
    "cross_entropy_from_probs": (T, Q), "cross_entropy_from_probs_with_grad": (T, Q),
    "binary_cross_entropy": (PB, TB), "binary_cross_entropy_with_grad": (PB, TB),
    "binary_cross_entropy_with_logits": (X, TB),
    "binary_cross_entropy_with_logits_with_grad": (X, TB),
    "entropy": (Q,), "kl_divergence": (Q, Q), "perplexity": (X, T),
    "linear_cross_entropy": (H, WL, T),
    "score_arrays": (X, T),
}


def test_every_public_function_is_swept():
    funcs = {n for n in fastxent.__all__ if callable(getattr(fastxent, n))}
    # score_files reads paths: its errors are the CLI's (tests/test_score*.py)
    assert funcs - set(ARGS) == {"config", "show_config", "score_files"}


BAD_VALUES = [
    None, "abc", b"x", 2**70, -2**70, float("nan"), float("inf"), -1, 0, 1.5, True, 1j,
    [1, [2, 3]], object(), np.ones(3, dtype=object), np.array(["a", "b"]), np.zeros((7, 9)),
    np.float64(np.nan), (0, 0), {}, slice(1), np.full(N, np.nan),
]

# (function, parameter) pairs that accept every value of BAD_VALUES that they accept for a
# documented reason (real scale factors and weights broadcast; grad_output and z_loss take any
# real number; softcap / base / chunk_size any large number ...): the sweep checks that what
# they refuse is refused cleanly.
FLAGS = {"return_z_loss", "inplace", "keepdims", "return_sign", "log_q", "log_p", "return_grad"}


def _params(f):
    sig = inspect.signature(f)
    return [p for p in sig.parameters if sig.parameters[p].kind != inspect.Parameter.VAR_KEYWORD]


CASES = [pytest.param(name, p, id=f"{name}-{p}") for name in ARGS
         for p in _params(getattr(fastxent, name))]


@pytest.mark.parametrize("name, param", CASES)
def test_bad_values_raise_a_named_error(name, param):
    f = getattr(fastxent, name)
    params = _params(f)
    args = ARGS[name]
    i = params.index(param)
    for value in BAD_VALUES:
        a, kw = list(args), {}
        if i < len(args):
            a[i] = value
        else:
            kw[param] = value
        try:
            f(*a, **kw)
        except (TypeError, ValueError) as e:
            first = re.match(r"^(\w+):", str(e))
            assert first and first.group(1) in params, \
                f"{name}({param}={value!r}): message does not start with an argument: {e}"
        else:
            assert param not in FLAGS or isinstance(value, bool), \
                f"{name}: flag {param}={value!r} accepted"


# ------------------------------------------------------------------ the cases that escaped
def _ce(**kw):
    return fastxent.cross_entropy(X, T, **kw)


def _ceg(**kw):
    return fastxent.cross_entropy_with_grad(X, T, **kw)


def _xp(**kw):
    return fastxent.cross_entropy_from_probs_with_grad(T, Q, **kw)


@pytest.mark.parametrize("func, kw, exc, name", [
    (_ce, dict(ignore_index=2**70), ValueError, "ignore_index"),
    (_ce, dict(ignore_index=-2**63 - 1), ValueError, "ignore_index"),
    (_ce, dict(ignore_index=np.uint64(2**64 - 1)), ValueError, "ignore_index"),
    (_ce, dict(num_threads=2**70), ValueError, "num_threads"),
    (_ce, dict(num_threads=2**31), ValueError, "num_threads"),
    (_ce, dict(num_threads=100000), ValueError, "num_threads"),
    (_ce, dict(num_threads=-1), ValueError, "num_threads"),
    (_ce, dict(axis=2**70), ValueError, "axis"),
    (_ce, dict(base=2**2000), ValueError, "base"),
    (_ce, dict(base=1), ValueError, "base"),
    (_ce, dict(base=float("nan")), ValueError, "base"),
    (_ce, dict(logit_scale=2**2000), ValueError, "logit_scale"),
    (_ce, dict(logit_scale=True), TypeError, "logit_scale"),
    (_ce, dict(z_loss=2**2000), ValueError, "z_loss"),
    (_ce, dict(label_smoothing=2**2000), ValueError, "label_smoothing"),
    (_ce, dict(softcap=2**2000), ValueError, "softcap"),
    (_ce, dict(reduction=np.array(["mean"])), TypeError, "reduction"),
    (_ce, dict(return_z_loss="yes"), TypeError, "return_z_loss"),
    (_ceg, dict(grad_output=np.ones((N, 2)), reduction="none"), ValueError, "grad_output"),
    (_ceg, dict(grad_output=np.ones(N)), ValueError, "grad_output"),
    (_ceg, dict(grad_output=2**2000), ValueError, "grad_output"),
    (_ceg, dict(grad_output="1"), TypeError, "grad_output"),
    (_ceg, dict(grad_dtype="no such dtype"), TypeError, "grad_dtype"),
    (_ceg, dict(inplace=1), TypeError, "inplace"),
    (_ceg, dict(out=[[0.0] * C] * N), TypeError, "out"),
    (_xp, dict(eps=float("nan")), ValueError, "eps"),
    (_xp, dict(eps=1e300), ValueError, "eps"),
    (_xp, dict(eps=2**2000), ValueError, "eps"),
    (_xp, dict(grad_output=np.ones((N, C)), reduction="none"), ValueError, "grad_output"),
    (_xp, dict(grad_output=2**2000), ValueError, "grad_output"),
    (lambda **kw: fastxent.binary_cross_entropy_with_grad(PB, TB, **kw),
     dict(grad_output=2**2000), ValueError, "grad_output"),
    (lambda **kw: fastxent.kl_divergence(Q, Q, **kw), dict(log_q="no"), TypeError, "log_q"),
    (lambda **kw: fastxent.kl_divergence(Q, Q, **kw), dict(reduction=None), TypeError, "reduction"),
    (lambda **kw: fastxent.perplexity(X, T, **kw), dict(nonsense=1), TypeError, "nonsense"),
    (lambda **kw: fastxent.linear_cross_entropy(H, WL, T, **kw), dict(return_grad="no"),
     TypeError, "return_grad"),
    (lambda **kw: fastxent.linear_cross_entropy([[1.0], [1.0, 2.0]], WL, T, **kw), {},
     TypeError, "hidden"),
    (lambda **kw: fastxent.cross_entropy(X, [[0], [1, 2]], **kw), {}, TypeError, "target"),
])
def test_escaped_cases(func, kw, exc, name):
    with pytest.raises(exc, match=rf"^{name}\b"):
        func(**kw)
