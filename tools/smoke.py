"""Smoke test of an installed fastxent: it imports, reports the kernel level it chose, and a few
results of every kernel family match the NumPy reference (small inputs: it also runs under an
emulator, e.g. ``qemu-x86_64 -cpu Nehalem``, an SSE4.2-only CPU).

    python tools/smoke.py [--expect x86-64-v2]

Exit code 0 when everything matches (and the level is the expected one), 1 otherwise.
"""
import argparse
import sys

import numpy as np

import fastxent
from fastxent import reference as ref


def _close(name, got, expected, rtol):
    ok = np.allclose(np.asarray(got, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=rtol,
                     equal_nan=True)
    print(f"  {name:<40} {'ok' if ok else 'MISMATCH'}")
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect", help="the kernel level fastxent must choose on this CPU")
    args = parser.parse_args(argv)
    c = fastxent.config()
    print(f"fastxent {c['version']} on {c['cpu'] or c['machine']}: {c['isa']} ({c['simd']}), "
          f"chosen by {c['isa_chosen_by']}; this CPU runs {', '.join(c['isa_supported'])}")
    rng = np.random.default_rng(0)
    ok = True
    for dtype, rtol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        x = (rng.standard_normal((300, 70)) * 3).astype(dtype)
        x[0, 0] = -np.inf
        t = rng.integers(1, 70, 300)
        p = rng.dirichlet(np.ones(70), 300).astype(dtype)
        q = rng.dirichlet(np.ones(70), 300).astype(dtype)
        y = (rng.random((300, 70)) < 0.5).astype(dtype)
        x64 = x.astype(np.float64)
        name = np.dtype(dtype).name
        loss, grad = fastxent.cross_entropy_with_grad(x, t, label_smoothing=0.1, num_threads=2)
        rloss, rgrad = ref.cross_entropy_with_grad(x64, t, label_smoothing=0.1)
        ok &= _close(f"{name} cross_entropy_with_grad loss", loss, rloss, rtol)
        ok &= _close(f"{name} cross_entropy_with_grad grad", grad, rgrad, rtol)
        ok &= _close(f"{name} logsumexp", fastxent.logsumexp(x), ref.logsumexp(x64), rtol)
        ok &= _close(f"{name} softmax", fastxent.softmax(x), ref.softmax(x64), rtol)
        ok &= _close(f"{name} cross_entropy_from_probs", fastxent.cross_entropy_from_probs(p, q, reduction="none"),
                     ref.cross_entropy_from_probs(p.astype(np.float64), q.astype(np.float64), reduction="none",
                                                  eps=float(np.finfo(dtype).eps)), rtol)
        ok &= _close(f"{name} binary_cross_entropy_with_logits",
                     fastxent.binary_cross_entropy_with_logits(x[:, 1:], y[:, 1:]),
                     ref.binary_cross_entropy_with_logits(x64[:, 1:], y[:, 1:].astype(np.float64)), rtol)
    if args.expect and c["isa"] != args.expect:
        print(f"smoke: expected the {args.expect} kernels, got {c['isa']}")
        ok = False
    print("smoke: ok" if ok else "smoke: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
