# cython: language_level=3
"""Layer 2 of fastxent: the softmax cross-entropy array kernels.

    _rowmath.h / _rowmath.pxd   row numerics (vectorised exp, the only log-sum-exp)   <- layer 1
    _xent.pyx (this file)       array kernels: rows -> blocks -> threads              <- layer 2
    _api.py                     validation, dtype/layout/threads resolution, output   <- layer 3
    __init__.py                 the public names                                      <- layer 4

Every kernel takes typed memoryviews (``const`` for inputs, so read-only and memory-mapped
arrays work), the thread count as an explicit ``int`` and outputs suffixed ``_out``.  No
validation happens here: the API layer guarantees shapes, dtypes and ranges.  Labels are
checked once more here only because a bad label must never turn into an out-of-bounds read.

Work split: rows are grouped into fixed blocks of ``rows_per_block`` rows (chosen by the caller
from C alone), blocks are spread over threads with ``prange(schedule="static")``.  Every block
writes its partial sums into its own slot, and the slots are added in block order afterwards,
so reductions are bit-identical for every thread count.  A single block runs without a
parallel region at all (small inputs pay no OpenMP start-up cost).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport malloc, free
from libc.math cimport log, NAN

from fastxent._rowmath cimport (row_stats, row_gap, row_grad, row_shift, row_fill,
                                row_gather, row_scatter, row_xent, short_stats, short_grad,
                                fx_simd_level, FX_SHORT_C, FX_SHORT_R)

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FX_HAVE_OPENMP 1
    static int fx_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define FX_HAVE_OPENMP 0
    static int fx_omp_max_threads(void) { return 1; }
    #endif
    """
    int FX_HAVE_OPENMP
    int fx_omp_max_threads() nogil


ctypedef fused label_t:
    int32_t
    int64_t


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(FX_HAVE_OPENMP)


def max_threads():
    """OpenMP's current default thread count (OMP_NUM_THREADS, threadpoolctl limits)."""
    return fx_omp_max_threads()


def simd_level():
    return fx_simd_level().decode()


# ------------------------------------------------------------------ row views
cdef struct RowView:
    char *base          # element (0, 0)
    Py_ssize_t rs       # row stride, bytes
    Py_ssize_t cs       # class stride, elements (1: contiguous row)


cdef inline RowView _view2d(const char *base, Py_ssize_t rs_bytes, Py_ssize_t cs_bytes,
                            Py_ssize_t itemsize) noexcept nogil:
    cdef RowView v
    v.base = <char *>base
    v.rs = rs_bytes
    v.cs = cs_bytes // itemsize
    return v


# ------------------------------------------------------------------ cross-entropy
cdef void _xent_short(RowView xv, floating *gp, RowView gv,
                      const label_t *tp, Py_ssize_t ts, Py_ssize_t C,
                      Py_ssize_t lo, Py_ssize_t hi,
                      const double *w, double W, Py_ssize_t ignore_index, double eps,
                      double gscale, const double *row_scale,
                      floating *loss_out, double *block_loss, double *block_wsum,
                      Py_ssize_t *block_bad) noexcept nogil:
    """Rows of at most FX_SHORT_C contiguous classes, FX_SHORT_R at a time, vectorised
    across rows (same formulas as row_xent)."""
    cdef Py_ssize_t yi[FX_SHORT_R]
    cdef char valid[FX_SHORT_R]
    cdef floating m[FX_SHORT_R]
    cdef floating ls[FX_SHORT_R]
    cdef floating inv_s[FX_SHORT_R]
    cdef floating xy[FX_SHORT_R]
    cdef floating a[FX_SHORT_R]
    cdef floating cw[FX_SHORT_R]
    cdef double wyv[FX_SHORT_R]
    cdef double gsv[FX_SHORT_R]
    cdef Py_ssize_t r0, r, R, y, i
    cdef Py_ssize_t rs = xv.rs // sizeof(floating), grs = 0
    cdef const floating *xb
    cdef floating *gb
    cdef double loss, wy, lsum = 0.0, wsum = 0.0, gs = gscale
    cdef Py_ssize_t bad = -1
    if gp != NULL:
        grs = gv.rs // sizeof(floating)
    r0 = lo
    while r0 < hi:
        R = min(<Py_ssize_t>FX_SHORT_R, hi - r0)
        for r in range(R):
            y = <Py_ssize_t>tp[(r0 + r) * ts]
            valid[r] = 0 <= y < C
            yi[r] = y if valid[r] else 0
            if not valid[r] and y != ignore_index and bad < 0:
                bad = r0 + r
        xb = <const floating *>(xv.base + r0 * xv.rs)
        short_stats(xb, rs, R, C, yi, m, ls, inv_s, xy)
        for r in range(R):
            i = r0 + r
            if not valid[r]:
                loss = 0.0 if yi[r] == 0 and <Py_ssize_t>tp[i * ts] == ignore_index else NAN
                a[r] = 0
                cw[r] = 0
            else:
                wy = w[yi[r]] if w != NULL else 1.0
                wyv[r] = wy
                wsum += wy
                loss = (1.0 - eps) * wy * ((<double>m[r] - <double>xy[r]) + <double>ls[r])
                if eps != 0.0:
                    loss = loss + (eps / C) * (W * <double>ls[r] + row_gap(xb + r * rs, C, m[r], w))
                if row_scale != NULL:
                    gs = gscale * row_scale[i]
                gsv[r] = gs
                a[r] = <floating>(gs * ((1.0 - eps) * wy + eps * W / C) * <double>inv_s[r])
                cw[r] = <floating>(gs * eps / C)
            if loss_out != NULL:
                loss_out[i] = <floating>loss
            lsum += loss
        if gp != NULL:
            gb = <floating *>(gv.base + r0 * gv.rs)
            short_grad(xb, rs, gb, grs, R, C, m, a, cw, w)
            for r in range(R):
                if valid[r]:
                    gb[r * grs + yi[r]] -= <floating>(gsv[r] * (1.0 - eps) * wyv[r])
                else:
                    row_fill(gb + r * grs, C, 0)
        r0 += R
    block_loss[0] = lsum
    block_wsum[0] = wsum
    block_bad[0] = bad


cdef void _xent_block(RowView xv, floating *gp, RowView gv,
                      const label_t *tp, Py_ssize_t ts, Py_ssize_t C,
                      Py_ssize_t lo, Py_ssize_t hi,
                      const double *w, double W, Py_ssize_t ignore_index, double eps,
                      double gscale, const double *row_scale,
                      floating *loss_out, double *block_loss, double *block_wsum,
                      Py_ssize_t *block_bad) noexcept nogil:
    cdef Py_ssize_t i, y
    cdef const floating *xr
    cdef floating *gr
    cdef floating *buf = NULL
    cdef double loss, wy, lsum = 0.0, wsum = 0.0, gs = gscale
    cdef Py_ssize_t bad = -1
    cdef bint gather = xv.cs != 1 or (gp != NULL and gv.cs != 1)
    if C <= FX_SHORT_C and not gather:
        _xent_short(xv, gp, gv, tp, ts, C, lo, hi, w, W, ignore_index, eps, gscale, row_scale,
                    loss_out, block_loss, block_wsum, block_bad)
        return
    if gather:
        buf = <floating *>malloc(C * sizeof(floating))
    for i in range(lo, hi):
        y = <Py_ssize_t>tp[i * ts]
        xr = <const floating *>(xv.base + i * xv.rs)
        gr = NULL
        if gp != NULL:
            gr = <floating *>(gv.base + i * gv.rs)
        if y == ignore_index or y < 0 or y >= C:
            if y != ignore_index and bad < 0:
                bad = i
            if gr != NULL:
                if gv.cs == 1:
                    row_fill(gr, C, 0)
                else:
                    row_fill(buf, C, 0)
                    row_scatter(buf, C, gr, gv.cs)
            loss = 0.0 if y == ignore_index else NAN
        else:
            wy = w[y] if w != NULL else 1.0
            wsum += wy
            if row_scale != NULL:
                gs = gscale * row_scale[i]
            if not gather:
                loss = row_xent(xr, C, y, wy, w, W, eps, gs, gr)
            else:
                row_gather(xr, xv.cs, C, buf)
                loss = row_xent(<const floating *>buf, C, y, wy, w, W, eps, gs,
                                buf if gr != NULL else <floating *>NULL)
                if gr != NULL:
                    row_scatter(buf, C, gr, gv.cs)
        if loss_out != NULL:
            loss_out[i] = <floating>loss
        lsum += loss
    block_loss[0] = lsum
    block_wsum[0] = wsum
    block_bad[0] = bad
    if buf != NULL:
        free(buf)


def xent(const floating[:, :] x, const label_t[:] target, const double[::1] weight,
         double W, Py_ssize_t ignore_index, double eps, double gscale,
         const double[::1] row_scale, floating[::1] loss_out, floating[:, :] grad_out,
         double[::1] block_loss, double[::1] block_wsum, Py_ssize_t[::1] block_bad,
         Py_ssize_t rows_per_block, int n_threads):
    """Fused cross-entropy (+ gradient when ``grad_out`` is not None) over rows of ``x``.

    Per block b: block_loss[b] = sum of row losses, block_wsum[b] = sum of w[y] over the
    non-ignored rows, block_bad[b] = first row with a label outside [0, C) (or -1).
    ``loss_out`` (None or length N) receives per-row losses; ``row_scale`` (None or length N)
    multiplies ``gscale`` per row.  ``grad_out`` may be ``x`` itself (in-place gradient).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef Py_ssize_t nb = block_loss.shape[0], b, lo, hi
    if N == 0 or C == 0:
        return
    cdef RowView xv = _view2d(<const char *>&x[0, 0], x.strides[0], x.strides[1], sizeof(floating))
    cdef RowView gv
    cdef floating *gp = NULL
    if grad_out is not None:
        gv = _view2d(<const char *>&grad_out[0, 0], grad_out.strides[0], grad_out.strides[1],
                     sizeof(floating))
        gp = &grad_out[0, 0]
    cdef const label_t *tp = &target[0]
    cdef Py_ssize_t ts = target.strides[0] // sizeof(label_t)
    cdef const double *wp = &weight[0] if weight is not None else NULL
    cdef const double *rsp = &row_scale[0] if row_scale is not None else NULL
    cdef floating *lp = &loss_out[0] if loss_out is not None else NULL
    if n_threads <= 1 or nb == 1:
        with nogil:
            for b in range(nb):
                lo = b * rows_per_block
                hi = min(lo + rows_per_block, N)
                _xent_block(xv, gp, gv, tp, ts, C, lo, hi, wp, W, ignore_index, eps,
                            gscale, rsp, lp, &block_loss[b], &block_wsum[b], &block_bad[b])
    else:
        for b in prange(nb, nogil=True, schedule="static", num_threads=n_threads):
            lo = b * rows_per_block
            hi = min(lo + rows_per_block, N)
            _xent_block(xv, gp, gv, tp, ts, C, lo, hi, wp, W, ignore_index, eps,
                        gscale, rsp, lp, &block_loss[b], &block_wsum[b], &block_bad[b])


def check_labels(const label_t[:] target, Py_ssize_t C, Py_ssize_t ignore_index):
    """Index of the first label outside [0, C) that is not ``ignore_index``, or -1."""
    cdef Py_ssize_t i, N = target.shape[0], y, bad = -1
    with nogil:
        for i in range(N):
            y = <Py_ssize_t>target[i]
            if (y < 0 or y >= C) and y != ignore_index:
                bad = i
                break
    return bad


# ------------------------------------------------------------------ log-sum-exp family
cdef void _lse_block(RowView xv, Py_ssize_t C, Py_ssize_t lo, Py_ssize_t hi, int mode,
                     floating *lse_out, RowView ov) noexcept nogil:
    """mode 0: lse_out[i] = logsumexp(row i); 1: log_softmax into ov; 2: softmax into ov."""
    cdef Py_ssize_t i
    cdef const floating *xr
    cdef floating *orow
    cdef floating m
    cdef double s
    cdef floating *buf = NULL
    cdef bint gather = xv.cs != 1 or (mode != 0 and ov.cs != 1)
    if gather:
        buf = <floating *>malloc(C * sizeof(floating))
    for i in range(lo, hi):
        xr = <const floating *>(xv.base + i * xv.rs)
        if gather:
            row_gather(xr, xv.cs, C, buf)
            xr = buf
        if mode == 0:
            if row_stats(xr, C, &m, &s):
                lse_out[i] = <floating>NAN
            else:
                lse_out[i] = <floating>(<double>m + log(s))
            continue
        orow = buf if gather else <floating *>(ov.base + i * ov.rs)
        if row_stats(xr, C, &m, &s):
            row_fill(orow, C, <floating>NAN)
        elif mode == 1:
            row_shift(xr, orow, C, m, <floating>log(s))
        else:
            row_grad(xr, orow, C, m, <floating>(1.0 / s), 0, NULL)
        if gather:
            row_scatter(buf, C, <floating *>(ov.base + i * ov.rs), ov.cs)
    if buf != NULL:
        free(buf)


def lse_family(const floating[:, :] x, int mode, floating[::1] lse_out, floating[:, :] out,
               Py_ssize_t rows_per_block, int n_threads):
    """mode 0: log-sum-exp of each row into ``lse_out``; 1: log_softmax into ``out``;
    2: softmax into ``out``."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], nb, b, lo, hi
    if N == 0 or C == 0:
        return
    nb = (N + rows_per_block - 1) // rows_per_block
    cdef RowView xv = _view2d(<const char *>&x[0, 0], x.strides[0], x.strides[1], sizeof(floating))
    cdef RowView ov
    cdef floating *lp = NULL
    if mode == 0:
        lp = &lse_out[0]
        ov = xv
    else:
        ov = _view2d(<const char *>&out[0, 0], out.strides[0], out.strides[1], sizeof(floating))
    if n_threads <= 1 or nb == 1:
        with nogil:
            for b in range(nb):
                lo = b * rows_per_block
                hi = min(lo + rows_per_block, N)
                _lse_block(xv, C, lo, hi, mode, lp, ov)
    else:
        for b in prange(nb, nogil=True, schedule="static", num_threads=n_threads):
            lo = b * rows_per_block
            hi = min(lo + rows_per_block, N)
            _lse_block(xv, C, lo, hi, mode, lp, ov)
