# cython: language_level=3
"""Layer 2 of fastxent: the softmax cross-entropy array kernels.

    _rowmath.h / _rowmath.pxd   row numerics (vectorised exp, the only log-sum-exp)   <- layer 1
    _xent.pyx (this file)       array kernels: rows -> blocks -> threads              <- layer 2
    _api.py                     validation, dtype/layout/threads resolution, output   <- layer 3
    __init__.py                 the public names                                      <- layer 4

The kernels take NumPy arrays that the API layer has already validated (dtype, shape,
alignment, ranges) and read their data pointers and strides directly, so a call costs well
under a microsecond before the work starts; inputs are never written (read-only and
memory-mapped arrays work).  Outputs are suffixed ``_out``; the thread count is an ``int``.

Work split, chosen from the shape:
  * rows are grouped into fixed blocks of ``rows_per_block`` rows (set by the caller from C
    alone) and blocks are spread over threads with ``prange(schedule="static")``;
  * rows of at most FX_SHORT_C classes are computed FX_SHORT_R at a time, vectorised across
    rows (short rows fill no vector);
  * when there are fewer rows than threads and rows are longer than FX_SEG, each row is split
    into FX_SEG segments spread over the threads.
Every block (and segment) writes its partial results into its own slot and the slots are
combined in order afterwards, so every result is bit-identical for any thread count.  A single
block runs without a parallel region (small inputs pay no OpenMP start-up cost).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport malloc, free
from libc.math cimport log, log1p, fabs, NAN, INFINITY

cimport numpy as cnp

from fastxent._views cimport View2, Arr, _view2, _arr, _row, _data, _stride0, _neumaier, _finish

from fastxent._rowmath cimport (row_stats, row_gap, row_grad, row_shift, row_fill,
                                row_gather, row_scatter, row_xent, xent_loss, xent_a,
                                short_stats, short_grad, seg_stats, stats_merge, seg_gap,
                                row_load, row_store, fx_store_fence, fx_simd_level, FX_SHORT_C, FX_SHORT_R,
                                FX_SEG, FX_DT_F32, FX_DT_F64, FX_DT_F16, FX_DT_BF16,
                                fx_short_labels_i32, fx_short_labels_i64, fx_short_plain_f32,
                                fx_short_plain_f64)

cnp.import_array()

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


# gradients at least this large are written with non-temporal stores (the L3 here is 32 MiB)
DEF STREAM_MIN_BYTES = 64 * 1024 * 1024

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


# ------------------------------------------------------------------ array views
cdef inline bint _direct(const Arr *a, int dt) noexcept nogil:
    """Rows can be used in place: contiguous classes of the kernel's own element type."""
    return a.base == NULL or (a.dt == dt and a.cs == a.isz)


# ------------------------------------------------------------------ cross-entropy
cdef struct XentArgs:
    Arr x               # logits as (rows, C)
    Arr g               # gradient out, base NULL: loss only; may be the logits themselves
    Arr p               # soft targets (class probabilities), base NULL: hard labels
    char *t             # labels (hard targets)
    Py_ssize_t ts       # label stride, bytes
    Py_ssize_t N, C
    const double *w     # class weights (C,) or NULL
    double W            # sum of the weights (C when w is NULL)
    Py_ssize_t ignore_index
    double eps          # label smoothing
    double zl           # z-loss coefficient
    double scale        # logit scale (inverse temperature)
    double cap          # softcap (0: none)
    double lscale       # loss scale: 1 / ln(base)
    double gscale       # gradient scale (grad_output, / denominator for "mean", / ln(base))
    const double *row_scale   # per-row gradient scale (N,) or NULL
    char *loss_out      # per-row losses (N,), contiguous, kernel dtype, or NULL
    char *z_out         # per-row z-loss terms (N,), contiguous, kernel dtype, or NULL
    bint direct         # x, g, p all usable in place (else the buffered path)
    bint stream         # write the gradient with non-temporal stores (large, not in place)


cdef struct Part:
    double loss         # sum of row losses
    double z            # sum of row z-loss terms
    double wsum         # sum of w[y] over non-ignored rows
    Py_ssize_t bad      # first row with a label outside [0, C) (not ignore_index), or -1


cdef inline Py_ssize_t _label(const XentArgs *A, const label_t *tp, Py_ssize_t i) noexcept nogil:
    return <Py_ssize_t>(<const label_t *>(A.t + i * A.ts))[0]


cdef inline void _emit(const XentArgs *A, floating *lp, Py_ssize_t i, double loss, double z,
                       Part *part) noexcept nogil:
    part.loss += loss
    part.z += z
    if lp != NULL:
        lp[i] = <floating>(loss * A.lscale)
    if A.z_out != NULL:
        (<floating *>A.z_out)[i] = <floating>(z * A.lscale)


cdef void _xent_short(const XentArgs *A, const label_t *tp, floating *lp, Py_ssize_t lo,
                      Py_ssize_t hi, Part *part) noexcept nogil:
    """Hard labels, rows of at most FX_SHORT_C contiguous classes, FX_SHORT_R rows at a time,
    vectorised across rows (same formulas as row_xent)."""
    cdef Py_ssize_t yi[FX_SHORT_R]
    cdef char valid[FX_SHORT_R]
    cdef floating m[FX_SHORT_R]
    cdef floating ls[FX_SHORT_R]
    cdef floating inv_s[FX_SHORT_R]
    cdef floating xy[FX_SHORT_R]
    cdef floating a[FX_SHORT_R]
    cdef floating cw[FX_SHORT_R]
    cdef floating b[FX_SHORT_R]
    cdef Py_ssize_t r0, r, R, y, i, C = A.C
    cdef Py_ssize_t rs = A.x.s0 // sizeof(floating), grs = A.g.s0 // sizeof(floating)
    cdef const floating *xb
    cdef floating *gb
    cdef double lossv[FX_SHORT_R]
    cdef double loss, wy, lse, z, coef, cnt, gs = A.gscale, eps = A.eps
    cdef bint plain = A.w == NULL and eps == 0.0 and A.zl == 0.0
    r0 = lo
    while r0 < hi:
        R = min(<Py_ssize_t>FX_SHORT_R, hi - r0)
        if label_t is int64_t:
            y = fx_short_labels_i64(A.t + r0 * A.ts, A.ts, R, C, A.ignore_index, yi, valid)
        else:
            y = fx_short_labels_i32(A.t + r0 * A.ts, A.ts, R, C, A.ignore_index, yi, valid)
        if y >= 0 and part.bad < 0:
            part.bad = r0 + y
        xb = <const floating *>(A.x.base + r0 * A.x.s0)
        short_stats(xb, rs, R, C, yi, m, ls, inv_s, xy)
        if plain:
            # the common case, vectorised: loss = (m - x[y]) + log(sum), weight 1
            if floating is float:
                part.loss += fx_short_plain_f32(m, xy, ls, valid, R, lossv, &cnt)
            else:
                part.loss += fx_short_plain_f64(m, xy, ls, valid, R, lossv, &cnt)
            part.wsum += cnt
            if lp != NULL:
                for r in range(R):
                    lp[r0 + r] = <floating>(lossv[r] * A.lscale)
            if A.z_out != NULL:
                for r in range(R):
                    (<floating *>A.z_out)[r0 + r] = 0
            if A.g.base != NULL:
                for r in range(R):
                    if A.row_scale != NULL:
                        gs = A.gscale * A.row_scale[r0 + r]
                    a[r] = <floating>(gs * <double>inv_s[r]) if valid[r] else 0
                    cw[r] = 0
                    b[r] = <floating>gs
        for r in range(R):
            if plain:
                break
            i = r0 + r
            z = 0.0
            if valid[r]:
                wy = A.w[yi[r]] if A.w != NULL else 1.0
                part.wsum += wy
                loss = xent_loss(m[r], xy[r], ls[r], wy, A.W, eps, C,
                                 row_gap(xb + r * rs, C, m[r], A.w) if eps != 0.0 else 0.0)
                coef = (1.0 - eps) * wy + eps * A.W / C
                if A.zl != 0.0:
                    lse = <double>m[r] + <double>ls[r]
                    z = A.zl * lse * lse
                    loss = loss + z
                    coef = coef + 2.0 * A.zl * lse
                if A.row_scale != NULL:
                    gs = A.gscale * A.row_scale[i]
                a[r] = <floating>(gs * coef * <double>inv_s[r])
                cw[r] = <floating>(gs * eps / C)
                b[r] = <floating>(gs * (1.0 - eps) * wy)
            else:
                loss = 0.0 if _label(A, tp, i) == A.ignore_index else NAN
                a[r] = 0
                cw[r] = 0
            _emit(A, lp, i, loss, z, part)
        if A.g.base != NULL:
            gb = <floating *>(A.g.base + r0 * A.g.s0)
            short_grad(xb, rs, gb, grs, R, C, m, a, cw, A.w)
            for r in range(R):
                if valid[r]:
                    gb[r * grs + yi[r]] -= b[r]
                else:
                    row_fill(gb + r * grs, C, 0)
        r0 += R


cdef void _xent_rows(const XentArgs *A, const label_t *tp, floating *lp, Py_ssize_t lo,
                     Py_ssize_t hi, Part *part) noexcept nogil:
    """Rows lo..hi one at a time.  Rows that cannot be used in place (strided classes, 16-bit
    floats, a logit transform) go through row buffers: load -> compute -> store."""
    cdef Py_ssize_t i, y = 0, C = A.C
    cdef const floating *xr
    cdef const floating *pr = NULL
    cdef floating *gr = NULL
    cdef floating *zb = NULL
    cdef floating *gb = NULL
    cdef floating *pb = NULL
    cdef double loss, z, wy = 1.0, gs = A.gscale
    cdef bint has_grad = A.g.base != NULL, soft = A.p.base != NULL
    if A.direct and C <= FX_SHORT_C and not soft and A.x.D == 1 and A.g.D == 1:
        _xent_short(A, tp, lp, lo, hi, part)
        return
    if not A.direct:
        zb = <floating *>malloc(C * sizeof(floating))
        if has_grad:
            gb = <floating *>malloc(C * sizeof(floating))
        if soft:
            pb = <floating *>malloc(C * sizeof(floating))
    for i in range(lo, hi):
        z = 0.0
        if not soft:
            y = _label(A, tp, i)
            if y == A.ignore_index or y < 0 or y >= C:
                if y != A.ignore_index and part.bad < 0:
                    part.bad = i
                if has_grad:
                    if A.direct:
                        row_fill(<floating *>_row(&A.g, i), C, 0)
                    else:
                        row_fill(gb, C, 0)
                        row_store(gb, gb, C, 1.0, 0.0, _row(&A.g, i), A.g.cs, A.g.dt)
                _emit(A, lp, i, 0.0 if y == A.ignore_index else NAN, 0.0, part)
                continue
            wy = A.w[y] if A.w != NULL else 1.0
            part.wsum += wy
        else:
            part.wsum += 1.0     # soft targets: "mean" divides by the number of rows
        if A.row_scale != NULL:
            gs = A.gscale * A.row_scale[i]
        if A.direct:
            xr = <const floating *>_row(&A.x, i)
            if soft:
                pr = <const floating *>_row(&A.p, i)
            if has_grad:
                gr = <floating *>_row(&A.g, i)
        else:
            row_load(_row(&A.x, i), A.x.cs, A.x.dt, C, A.scale, A.cap, zb)
            xr = zb
            if soft:
                row_load(_row(&A.p, i), A.p.cs, A.p.dt, C, 1.0, 0.0, pb)
                pr = pb
            gr = gb
        loss = row_xent(xr, C, y, pr, wy, A.w, A.W, A.eps, A.zl, gs, gr, &z,
                        A.stream and A.direct)
        if has_grad and not A.direct:
            row_store(gb, zb, C, A.scale, A.cap, _row(&A.g, i), A.g.cs, A.g.dt)
        _emit(A, lp, i, loss, z, part)
    free(zb)
    free(gb)
    free(pb)
    if A.stream:
        fx_store_fence()


cdef void _xent_split_row(const XentArgs *A, const label_t *tp, floating *lp, Py_ssize_t i,
                          Part *part, floating *ms, double *ss, double *gaps,
                          int n_threads) noexcept nogil:
    """One long contiguous row (hard label), its FX_SEG segments spread over the threads.
    Same numbers as row_xent: row_stats / row_gap merge the same segments in the same order."""
    cdef Py_ssize_t C = A.C, nseg = (C + FX_SEG - 1) // FX_SEG, k, lo, y
    cdef const floating *xr = <const floating *>_row(&A.x, i)
    cdef floating *gr = <floating *>_row(&A.g, i) if A.g.base != NULL else NULL
    cdef floating m = -INFINITY
    cdef double s = 0.0, loss, wy, gs = A.gscale, gap = 0.0, coef, cw, lse, z = 0.0, logs
    y = _label(A, tp, i)
    if y == A.ignore_index or y < 0 or y >= C:
        if y != A.ignore_index and part.bad < 0:
            part.bad = i
        if gr != NULL:
            for k in prange(nseg, schedule="static", num_threads=n_threads):
                lo = k * FX_SEG
                row_fill(gr + lo, min(C - lo, <Py_ssize_t>FX_SEG), 0)
        _emit(A, lp, i, 0.0 if y == A.ignore_index else NAN, 0.0, part)
        return
    wy = A.w[y] if A.w != NULL else 1.0
    part.wsum += wy
    if A.row_scale != NULL:
        gs = A.gscale * A.row_scale[i]
    for k in prange(nseg, schedule="static", num_threads=n_threads):
        lo = k * FX_SEG
        seg_stats(xr + lo, min(C - lo, <Py_ssize_t>FX_SEG), &ms[k], &ss[k])
    for k in range(nseg):
        stats_merge(&m, &s, ms[k], ss[k])
    if s != s or m == -INFINITY or m == INFINITY:
        if gr != NULL:
            for k in prange(nseg, schedule="static", num_threads=n_threads):
                lo = k * FX_SEG
                row_fill(gr + lo, min(C - lo, <Py_ssize_t>FX_SEG), <floating>NAN)
        _emit(A, lp, i, NAN, NAN, part)
        return
    if A.eps != 0.0:
        for k in prange(nseg, schedule="static", num_threads=n_threads):
            lo = k * FX_SEG
            gaps[k] = seg_gap(xr + lo, min(C - lo, <Py_ssize_t>FX_SEG), m,
                              A.w + lo if A.w != NULL else NULL)
        for k in range(nseg):
            gap += gaps[k]
    logs = log1p(s)
    loss = xent_loss(m, xr[y], logs, wy, A.W, A.eps, C, gap)
    coef = (1.0 - A.eps) * wy + A.eps * A.W / C
    if A.zl != 0.0:
        lse = <double>m + logs
        z = A.zl * lse * lse
        loss = loss + z
        coef = coef + 2.0 * A.zl * lse
    if gr != NULL:
        coef = gs * coef / (1.0 + s)
        cw = gs * A.eps / C
        for k in prange(nseg, schedule="static", num_threads=n_threads):
            lo = k * FX_SEG
            row_grad(xr + lo, gr + lo, min(C - lo, <Py_ssize_t>FX_SEG), m, <floating>coef,
                     <floating>cw, A.w + lo if A.w != NULL else NULL)
        gr[y] = gr[y] - <floating>(gs * (1.0 - A.eps) * wy)
    _emit(A, lp, i, loss, z, part)


cdef inline void _part_init(Part *p) noexcept nogil:
    p.loss = 0.0
    p.z = 0.0
    p.wsum = 0.0
    p.bad = -1


cdef tuple _xent_run(const XentArgs *A, const label_t *tp, floating *lp,
                     Py_ssize_t rows_per_block, int n_threads):
    cdef Py_ssize_t N = A.N, nb = (N + rows_per_block - 1) // rows_per_block, b, lo, hi, i
    cdef Py_ssize_t nseg
    cdef Part one
    cdef Part *parts = &one
    cdef floating *ms = NULL
    cdef double *ss = NULL
    cdef double *gaps = NULL
    cdef double total = 0.0, comp = 0.0, ztot = 0.0, zcomp = 0.0, wsum = 0.0
    cdef Py_ssize_t bad = -1
    _part_init(&one)
    if N == 0:
        return (0.0, 0.0, 0.0, -1)
    if n_threads > 1 and N < n_threads and A.C > FX_SEG and A.direct and A.p.base == NULL:
        nseg = (A.C + FX_SEG - 1) // FX_SEG
        ms = <floating *>malloc(nseg * sizeof(floating))
        ss = <double *>malloc(nseg * sizeof(double))
        gaps = <double *>malloc(nseg * sizeof(double))
        if ms == NULL or ss == NULL or gaps == NULL:
            free(ms); free(ss); free(gaps)
            raise MemoryError()
        with nogil:
            for i in range(N):
                _xent_split_row(A, tp, lp, i, &one, ms, ss, gaps, n_threads)
        free(ms); free(ss); free(gaps)
        return (one.loss, one.z, one.wsum, one.bad)
    if nb > 1:
        parts = <Part *>malloc(nb * sizeof(Part))
        if parts == NULL:
            raise MemoryError()
    with nogil:
        if n_threads <= 1 or nb == 1:
            for b in range(nb):
                _part_init(&parts[b])
                lo = b * rows_per_block
                _xent_rows(A, tp, lp, lo, min(lo + rows_per_block, N), &parts[b])
        else:
            for b in prange(nb, schedule="static", num_threads=n_threads):
                _part_init(&parts[b])
                lo = b * rows_per_block
                hi = min(lo + rows_per_block, N)
                _xent_rows(A, tp, lp, lo, hi, &parts[b])
        # combine in block order, compensated (Neumaier): a mean over 1e7+ rows is accurate
        # to the last bits of a double, and identical for every thread count
        for b in range(nb):
            _neumaier(&total, &comp, parts[b].loss)
            _neumaier(&ztot, &zcomp, parts[b].z)
            wsum += parts[b].wsum
            if bad < 0 and parts[b].bad >= 0:
                bad = parts[b].bad
    if parts != &one:
        free(parts)
    return (_finish(total, comp), _finish(ztot, zcomp), wsum, bad)


def xent(x, target, probs, weight, double W, Py_ssize_t ignore_index, double eps, double zl,
         double scale, double cap, double lscale, double gscale, row_scale, loss_out, z_out,
         grad_out, Py_ssize_t rows_per_block, int n_threads):
    """Fused cross-entropy (+ gradient when ``grad_out`` is not None) over the rows of ``x``.

    x: (N, C) or (A, D, C) view (N = A*D rows) of float32/float64/float16/bfloat16 logits;
    target: contiguous int32/int64 (N,) labels, or None with ``probs`` (soft targets) of x's
    row layout; weight / row_scale: None or contiguous float64; loss_out / z_out: None or
    contiguous (N,) of the kernel dtype (float64 for float64 logits, else float32);
    grad_out: None, ``x`` itself (in place) or an array of x's row layout.

    Returns (sum of row losses, sum of z-loss terms, sum of w[y] over non-ignored rows (rows
    for soft targets), first bad row or -1); sums are not multiplied by ``lscale``.
    """
    cdef XentArgs A
    A.x = _arr(x)
    A.g = _arr(grad_out)
    A.p = _arr(probs)
    A.t = _data(target)
    A.ts = _stride0(target) if target is not None else 0
    A.N = cnp.PyArray_DIM(<cnp.ndarray>x, 0)
    if cnp.PyArray_NDIM(<cnp.ndarray>x) == 3:
        A.N = A.N * cnp.PyArray_DIM(<cnp.ndarray>x, 1)
    A.C = cnp.PyArray_DIM(<cnp.ndarray>x, cnp.PyArray_NDIM(<cnp.ndarray>x) - 1)
    A.w = <const double *>_data(weight)
    A.W = W
    A.ignore_index = ignore_index
    A.eps = eps
    A.zl = zl
    A.scale = scale
    A.cap = cap
    A.lscale = lscale
    A.gscale = gscale
    A.row_scale = <const double *>_data(row_scale)
    A.loss_out = _data(loss_out)
    A.z_out = _data(z_out)
    cdef int kdt = FX_DT_F64 if A.x.dt == FX_DT_F64 else FX_DT_F32
    A.direct = (_direct(&A.x, kdt) and _direct(&A.g, kdt) and _direct(&A.p, kdt)
                and scale == 1.0 and cap == 0.0)
    # streaming stores pay off when the gradient is far larger than the last-level cache
    A.stream = (A.g.base != NULL and A.g.base != A.x.base
                and A.N * A.C * A.g.isz >= STREAM_MIN_BYTES)
    cdef bint i64 = target is None or cnp.PyArray_TYPE(<cnp.ndarray>target) == cnp.NPY_INT64
    if kdt == FX_DT_F32:
        if i64:
            return _xent_run(&A, <const int64_t *>NULL, <float *>A.loss_out, rows_per_block, n_threads)
        return _xent_run(&A, <const int32_t *>NULL, <float *>A.loss_out, rows_per_block, n_threads)
    if i64:
        return _xent_run(&A, <const int64_t *>NULL, <double *>A.loss_out, rows_per_block, n_threads)
    return _xent_run(&A, <const int32_t *>NULL, <double *>A.loss_out, rows_per_block, n_threads)


cdef tuple _label_stats(const label_t *tp, Py_ssize_t ts, Py_ssize_t N, Py_ssize_t C,
                        Py_ssize_t ignore_index, const double *w):
    cdef Py_ssize_t i, y, bad = -1
    cdef double wsum = 0.0
    with nogil:
        for i in range(N):
            y = <Py_ssize_t>(<const label_t *>(<const char *>tp + i * ts))[0]
            if y == ignore_index:
                continue
            if y < 0 or y >= C:
                bad = i
                break
            wsum += w[y] if w != NULL else 1.0
    return bad, wsum


def label_stats(target, Py_ssize_t C, Py_ssize_t ignore_index, weight):
    """(first row whose label is outside [0, C) and not ``ignore_index`` or -1,
    sum of w[y] over the non-ignored rows) -- the same order as the kernels' sum."""
    cdef char *tp = _data(target)
    cdef Py_ssize_t ts = _stride0(target), N = cnp.PyArray_DIM(<cnp.ndarray>target, 0)
    cdef const double *w = <const double *>_data(weight)
    if cnp.PyArray_TYPE(<cnp.ndarray>target) == cnp.NPY_INT64:
        return _label_stats(<const int64_t *>tp, ts, N, C, ignore_index, w)
    return _label_stats(<const int32_t *>tp, ts, N, C, ignore_index, w)


# ------------------------------------------------------------------ log-sum-exp family
cdef void _lse_short(View2 xv, View2 ov, Py_ssize_t C, Py_ssize_t lo, Py_ssize_t hi, int mode,
                     floating *lse_out) noexcept nogil:
    """_lse_block for rows of at most FX_SHORT_C contiguous classes, vectorised across rows."""
    cdef Py_ssize_t yi[FX_SHORT_R]
    cdef floating m[FX_SHORT_R]
    cdef floating ls[FX_SHORT_R]
    cdef floating inv_s[FX_SHORT_R]
    cdef floating xy[FX_SHORT_R]
    cdef floating zero[FX_SHORT_R]
    cdef Py_ssize_t r0, r, R, c, rs = xv.rs // sizeof(floating), ors = ov.rs // sizeof(floating)
    cdef const floating *xb
    cdef floating *ob
    cdef floating mm
    cdef double t
    for r in range(FX_SHORT_R):
        yi[r] = 0
        zero[r] = 0
    r0 = lo
    while r0 < hi:
        R = min(<Py_ssize_t>FX_SHORT_R, hi - r0)
        xb = <const floating *>(xv.base + r0 * xv.rs)
        short_stats(xb, rs, R, C, yi, m, ls, inv_s, xy)
        if mode == 0:
            for r in range(R):
                if ls[r] == ls[r]:
                    lse_out[r0 + r] = m[r] + ls[r]
                else:   # NaN / +inf / all -inf row: the row path's exact rules
                    row_stats(xb + r * rs, C, &mm, &t)
                    lse_out[r0 + r] = <floating>(NAN if t != t else (INFINITY if mm > 0 else -INFINITY))
        else:
            ob = <floating *>(ov.base + r0 * ov.rs)
            if mode == 2:
                short_grad(xb, rs, ob, ors, R, C, m, inv_s, zero, NULL)
            else:
                for r in range(R):
                    for c in range(C):
                        ob[r * ors + c] = (xb[r * rs + c] - m[r]) - ls[r]
            for r in range(R):
                if ls[r] != ls[r]:
                    row_fill(ob + r * ors, C, <floating>NAN)
        r0 += R


cdef void _lse_block(View2 xv, View2 ov, Py_ssize_t C, Py_ssize_t lo, Py_ssize_t hi, int mode,
                     floating *lse_out) noexcept nogil:
    """mode 0: lse_out[i] = logsumexp(row i); 1: log_softmax into ov; 2: softmax into ov."""
    cdef Py_ssize_t i
    cdef const floating *xr
    cdef floating *orow
    cdef floating m
    cdef double s
    cdef floating *buf = NULL
    cdef bint gather = xv.cs != 1 or (mode != 0 and ov.cs != 1)
    if C <= FX_SHORT_C and not gather:
        _lse_short(xv, ov, C, lo, hi, mode, lse_out)
        return
    if gather:
        buf = <floating *>malloc(C * sizeof(floating))
    for i in range(lo, hi):
        xr = <const floating *>(xv.base + i * xv.rs)
        if gather:
            row_gather(xr, xv.cs, C, buf)
            xr = buf
        if mode == 0:
            if row_stats(xr, C, &m, &s):
                # as torch.logsumexp / scipy: NaN row -> NaN, +inf -> +inf, all -inf -> -inf
                lse_out[i] = <floating>(NAN if s != s else (INFINITY if m > 0 else -INFINITY))
            else:
                lse_out[i] = <floating>(<double>m + log1p(s))
            continue
        orow = buf if gather else <floating *>(ov.base + i * ov.rs)
        if row_stats(xr, C, &m, &s):
            row_fill(orow, C, <floating>NAN)
        elif mode == 1:
            row_shift(xr, orow, C, m, <floating>log1p(s))
        else:
            row_grad(xr, orow, C, m, <floating>(1.0 / (1.0 + s)), 0, NULL)
        if gather:
            row_scatter(buf, C, <floating *>(ov.base + i * ov.rs), ov.cs)
    if buf != NULL:
        free(buf)


cdef void _lse_run(View2 xv, View2 ov, Py_ssize_t N, Py_ssize_t C, int mode, floating *lp,
                   Py_ssize_t rows_per_block, int n_threads) noexcept nogil:
    cdef Py_ssize_t nb = (N + rows_per_block - 1) // rows_per_block, b, lo, hi
    if n_threads <= 1 or nb <= 1:
        _lse_block(xv, ov, C, 0, N, mode, lp)
    else:
        for b in prange(nb, schedule="static", num_threads=n_threads):
            lo = b * rows_per_block
            hi = min(lo + rows_per_block, N)
            _lse_block(xv, ov, C, lo, hi, mode, lp)


def lse_family(x, int mode, lse_out, out, Py_ssize_t rows_per_block, int n_threads):
    """mode 0: log-sum-exp of each row of the 2-D array ``x`` into the contiguous ``lse_out``;
    1: log_softmax into ``out``; 2: softmax into ``out`` (same shape and dtype as x)."""
    cdef View2 xv = _view2(x)
    cdef View2 ov = _view2(out)
    cdef Py_ssize_t N = cnp.PyArray_DIM(<cnp.ndarray>x, 0), C = cnp.PyArray_DIM(<cnp.ndarray>x, 1)
    cdef char *lp = _data(lse_out)
    if N == 0:
        return
    with nogil:
        if cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_FLOAT32:
            _lse_run(xv, ov, N, C, mode, <float *>lp, rows_per_block, n_threads)
        else:
            _lse_run(xv, ov, N, C, mode, <double *>lp, rows_per_block, n_threads)
