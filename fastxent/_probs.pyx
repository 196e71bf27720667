# cython: language_level=3
"""Layer 2 of fastxent: the probability-space kernels of the cross-entropy family.

    fx_probs.h / _rowmath.pxd   element functions and chunk loops        <- layer 1
    _probs.pyx (this file)      array kernels: rows / tiles -> threads   <- layer 2
    _probs_api.py               validation, dtype/layout/threads, output <- layer 3
    __init__.py                 the public names                         <- layer 4

Two kinds of kernel, both reading the NumPy arrays' data pointers and strides directly (inputs
are never written; the API layer has validated dtypes, shapes and strides):

* ``rows``: cross-entropy from probabilities, entropy and KL divergence, per row along the class
  axis.  The arrays are (rows, C) or (A, D, C) views (class axis last, any strides).  The
  element terms (p log q, p log p, p (log p - log q)) are written into an L1 buffer of RCH
  doubles, vectorised over whole runs of rows when rows are short (RCH // C rows at a time) or
  over RCH-element chunks of a long row, and each row (chunk) is summed with fx_dsum, chunks
  in order.  Rows are grouped in blocks of ``rows_per_block`` (chosen from C alone) spread over
  threads, each block's sum in its own slot, slots combined in block order (compensated).  With
  fewer rows than threads and rows longer than FX_SEG, one row's FX_SEG pieces are spread over
  the threads instead, each chunk sum kept in a slot and added in order: the same numbers.
* ``binary``: elementwise binary cross-entropy (on probabilities or logits).  Every operand is a
  2-D (R, K) strided view of the broadcast shape (broadcast weights have zero strides); the flat
  index space is cut into tiles of TILE elements, each tile's sum in its own slot.

Contiguous runs are used in place, strided ones are gathered into CHUNK-element buffers (and
the gradient scattered back).  Every result is bit-identical for any thread count.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport malloc, free
from libc.math cimport fabs, NAN

cimport numpy as cnp

from fastxent._views cimport view_of, grid_of, data_of, rows_of

from fastxent._rowmath cimport (
    fx_view, fx_row, fx_neumaier, fx_neumaier_result, FX_SEG, fx_xlogq_terms_f32,
    fx_xlogq_terms_f64, fx_xlogq_grad_f32, fx_xlogq_grad_f64, fx_xlogx_terms_f32,
    fx_xlogx_terms_f64, fx_kl_terms_f32, fx_kl_terms_f64, fx_dsum, fx_fill_f32, fx_fill_f64,
    fx_bce_f32, fx_bce_f64, fx_bce_grad_f32, fx_bce_grad_f64, fx_bcel_f32, fx_bcel_f64,
    fx_bcel_grad_f32, fx_bcel_grad_f64, fx_gather_f32, fx_gather_f64, fx_scatter_f32,
    fx_scatter_f64, FX_ROW_XENT, FX_ROW_ENTROPY, FX_ROW_KL, FX_BIN_PROBS, FX_BIN_LOGITS,
    FX_KL_LOG_Q, FX_KL_LOG_P)

cnp.import_array()

cdef enum:
    RCH = 2048          # elements per chunk of the row kernels (terms buffer of 16 KiB)
    CHUNK = 512         # elements per chunk of the elementwise kernels (buffers stay in L1)
    TILE = 16384        # elements per partial sum of the elementwise kernels


# the ``op`` codes of ``rows`` and ``binary``, for the API layer
OP_XENT = FX_ROW_XENT
OP_ENTROPY = FX_ROW_ENTROPY
OP_KL = FX_ROW_KL
OP_BCE = FX_BIN_PROBS
OP_BCE_LOGITS = FX_BIN_LOGITS
KL_LOG_Q = FX_KL_LOG_Q
KL_LOG_P = FX_KL_LOG_P


# ------------------------------------------------------------------ fused-type names
cdef inline void _terms(int op, int mode, const floating *p, const floating *q, Py_ssize_t n,
                        double lo, double hi, double *t, int *bad) noexcept nogil:
    """t[i] = the row loss's term of element i (see _rowmath.h), invalid inputs flagged."""
    if op == FX_ROW_ENTROPY:
        if floating is float:
            fx_xlogx_terms_f32(p, n, t, bad)
        else:
            fx_xlogx_terms_f64(p, n, t, bad)
    elif op == FX_ROW_KL:
        if floating is float:
            fx_kl_terms_f32(p, q, n, mode, t, bad)
        else:
            fx_kl_terms_f64(p, q, n, mode, t, bad)
    else:
        if floating is float:
            fx_xlogq_terms_f32(p, q, n, <float>lo, <float>hi, t, bad)
        else:
            fx_xlogq_terms_f64(p, q, n, lo, hi, t, bad)


cdef inline void _xlogq_grad(const floating *p, const floating *q, Py_ssize_t n, double lo,
                             double hi, double a, floating *g) noexcept nogil:
    if floating is float:
        fx_xlogq_grad_f32(p, q, n, <float>lo, <float>hi, <float>a, g)
    else:
        fx_xlogq_grad_f64(p, q, n, lo, hi, a, g)


cdef inline void _fill(floating *y, Py_ssize_t n, floating v) noexcept nogil:
    if floating is float:
        fx_fill_f32(y, n, v)
    else:
        fx_fill_f64(y, n, v)


cdef inline void _gather(const char *src, Py_ssize_t stride, Py_ssize_t n,
                         floating *buf) noexcept nogil:
    if floating is float:
        fx_gather_f32(src, stride, n, buf)
    else:
        fx_gather_f64(src, stride, n, buf)


cdef inline void _scatter(const floating *buf, Py_ssize_t n, char *dst,
                          Py_ssize_t stride) noexcept nogil:
    if floating is float:
        fx_scatter_f32(buf, n, dst, stride)
    else:
        fx_scatter_f64(buf, n, dst, stride)


# ------------------------------------------------------------------ row kernels
cdef struct RowArgs:
    fx_view p            # targets / the distribution (base NULL: integer labels in t)
    fx_view q          # predictions (entropy: unused)
    fx_view g          # gradient out (cross-entropy only), base NULL: none
    char *t             # integer labels (N,), contiguous, or NULL
    bint t64            # labels are int64 (else int32)
    Py_ssize_t N, C
    int op              # FX_ROW_XENT, FX_ROW_ENTROPY, FX_ROW_KL
    int mode            # KL: bit 1 q holds log q, bit 2 p holds log p
    double lo, hi       # cross-entropy: q is clipped to [lo, hi]
    double sign         # row value = sign * sum of the terms (-1: cross-entropy, entropy)
    double gscale       # gradient scale (grad_output / rows for "mean", / ln(base))
    const double *row_scale   # per-row gradient scale (N,) or NULL
    char *vals_out      # per-row values * lscale, contiguous (N,) of the kernel dtype, or NULL
    double lscale       # 1 / ln(base)


cdef inline void _emit(const RowArgs *A, Py_ssize_t i, double v, floating *dummy) noexcept nogil:
    if A.vals_out != NULL:
        (<floating *>A.vals_out)[i] = <floating>(v * A.lscale)


cdef inline double _gs(const RowArgs *A, Py_ssize_t i) noexcept nogil:
    return A.gscale * (A.row_scale[i] if A.row_scale != NULL else 1.0)


cdef inline bint _flat(const fx_view *a, Py_ssize_t R, Py_ssize_t C, Py_ssize_t isz) noexcept nogil:
    """R rows from one row on are one contiguous run of R * C elements."""
    return a.cs == isz and (R == 1 or (a.D == 1 and a.s0 == C * isz))


cdef inline const floating *_rows_in(const fx_view *a, Py_ssize_t r, Py_ssize_t R, Py_ssize_t C,
                                     floating *buf) noexcept nogil:
    """Rows r .. r+R-1 as one contiguous run (in place, or gathered into buf)."""
    cdef Py_ssize_t j
    if _flat(a, R, C, sizeof(floating)):
        return <const floating *>fx_row(a, r)
    for j in range(R):
        _gather(fx_row(a, r + j), a.cs, C, buf + j * C)
    return buf


cdef double _short_rows(const RowArgs *A, Py_ssize_t lo, Py_ssize_t hi, floating *pb, floating *qb,
                        floating *gb, double *tb, int *bad) noexcept nogil:
    """Rows lo..hi of C <= RCH classes, RCH // C rows at a time as one contiguous run: terms
    (vectorised over the run), then each row's sum.  Returns the sum of the row values."""
    cdef Py_ssize_t C = A.C, G = RCH // A.C, r = lo, R, j, n
    cdef const floating *pp
    cdef const floating *qp = NULL
    cdef floating *gp
    cdef double v, acc = 0.0
    while r < hi:
        R = min(G, hi - r)
        n = R * C
        pp = _rows_in(&A.p, r, R, C, pb)
        if A.op != FX_ROW_ENTROPY:
            qp = _rows_in(&A.q, r, R, C, qb)
        _terms(A.op, A.mode, pp, qp, n, A.lo, A.hi, tb, bad)
        for j in range(R):
            v = A.sign * fx_dsum(tb + j * C, C)
            acc += v
            _emit(A, r + j, v, pb)
        if A.g.base != NULL:
            gp = <floating *>fx_row(&A.g, r) if _flat(&A.g, R, C, sizeof(floating)) else gb
            if A.row_scale == NULL:
                _xlogq_grad(pp, qp, n, A.lo, A.hi, -A.gscale, gp)
            else:
                for j in range(R):
                    _xlogq_grad(pp + j * C, qp + j * C, C, A.lo, A.hi, -_gs(A, r + j), gp + j * C)
            if gp == gb:
                for j in range(R):
                    _scatter(gb + j * C, C, fx_row(&A.g, r + j), A.g.cs)
        r += R
    return acc


cdef double _long_part(const RowArgs *A, Py_ssize_t i, Py_ssize_t k0, Py_ssize_t k1, floating *pb,
                       floating *qb, floating *gb, double *tb, int *bad,
                       double *slots) noexcept nogil:
    """Classes k0..k1 of row i, RCH at a time: the sum of the chunks' term sums, added in order
    (each chunk's sum also stored in slots[j] when slots is not NULL)."""
    cdef Py_ssize_t k = k0, n, j = 0
    cdef const floating *pp
    cdef const floating *qp = NULL
    cdef floating *gp
    cdef char *gdst
    cdef double s, acc = 0.0
    while k < k1:
        n = min(<Py_ssize_t>RCH, k1 - k)
        if A.p.cs == sizeof(floating):
            pp = <const floating *>(fx_row(&A.p, i) + k * A.p.cs)
        else:
            _gather(fx_row(&A.p, i) + k * A.p.cs, A.p.cs, n, pb)
            pp = pb
        if A.op != FX_ROW_ENTROPY:
            if A.q.cs == sizeof(floating):
                qp = <const floating *>(fx_row(&A.q, i) + k * A.q.cs)
            else:
                _gather(fx_row(&A.q, i) + k * A.q.cs, A.q.cs, n, qb)
                qp = qb
        _terms(A.op, A.mode, pp, qp, n, A.lo, A.hi, tb, bad)
        s = fx_dsum(tb, n)
        if slots != NULL:
            slots[j] = s
        acc += s
        if A.g.base != NULL:
            gdst = fx_row(&A.g, i) + k * A.g.cs
            gp = <floating *>gdst if A.g.cs == sizeof(floating) else gb
            _xlogq_grad(pp, qp, n, A.lo, A.hi, -_gs(A, i), gp)
            if gp == gb:
                _scatter(gb, n, gdst, A.g.cs)
        k += n
        j += 1
    return acc


cdef double _label_rows(const RowArgs *A, Py_ssize_t lo, Py_ssize_t hi, floating *pb, floating *qb,
                        double *tb, int *bad) noexcept nogil:
    """Integer labels: -log clip(q[i, y_i]) for RCH rows at a time (q[i, y_i] gathered first, so
    the gradient may overwrite q); the gradient row is 0 but -gs / q[i, y_i] at the label."""
    cdef Py_ssize_t r = lo, R, j, c, y, C = A.C
    cdef char *grow
    cdef floating qv
    cdef double v, acc = 0.0
    _fill(pb, RCH, <floating>1)
    while r < hi:
        R = min(<Py_ssize_t>RCH, hi - r)
        for j in range(R):
            y = <Py_ssize_t>(<const int64_t *>A.t)[r + j] if A.t64 else \
                <Py_ssize_t>(<const int32_t *>A.t)[r + j]
            if 0 <= y < C:
                qb[j] = (<const floating *>(fx_row(&A.q, r + j) + y * A.q.cs))[0]
            else:
                bad[0] = 1
                qb[j] = <floating>NAN
        _terms(FX_ROW_XENT, 0, pb, qb, R, A.lo, A.hi, tb, bad)
        for j in range(R):
            v = -tb[j]
            acc += v
            _emit(A, r + j, v, pb)
        if A.g.base != NULL:
            for j in range(R):
                grow = fx_row(&A.g, r + j)
                if A.g.cs == sizeof(floating):
                    _fill(<floating *>grow, C, <floating>0)
                else:
                    for c in range(C):
                        (<floating *>(grow + c * A.g.cs))[0] = 0
                y = <Py_ssize_t>(<const int64_t *>A.t)[r + j] if A.t64 else \
                    <Py_ssize_t>(<const int32_t *>A.t)[r + j]
                qv = qb[j]
                if 0 <= y < C and not (qv < A.lo or qv > A.hi):
                    (<floating *>(grow + y * A.g.cs))[0] = <floating>(-_gs(A, r + j) / <double>qv)
        r += R
    return acc


cdef void _rows_block(const RowArgs *A, Py_ssize_t lo, Py_ssize_t hi, double *sum_out, int *bad,
                      floating *dummy) noexcept nogil:
    """Rows lo..hi (one block): their values emitted, their sum in sum_out."""
    cdef Py_ssize_t i
    cdef double acc = 0.0, v
    cdef double *tb = <double *>malloc(RCH * (sizeof(double) + 3 * sizeof(floating)))
    cdef floating *pb = <floating *>(tb + RCH)
    cdef floating *qb = pb + RCH
    cdef floating *gb = qb + RCH
    if tb == NULL:
        bad[0] = 2
        sum_out[0] = NAN
        return
    if A.t != NULL:
        acc = _label_rows(A, lo, hi, pb, qb, tb, bad)
    elif A.C <= RCH:
        acc = _short_rows(A, lo, hi, pb, qb, gb, tb, bad)
    else:
        for i in range(lo, hi):
            v = A.sign * _long_part(A, i, 0, A.C, pb, qb, gb, tb, bad, NULL)
            acc += v
            _emit(A, i, v, dummy)
    free(tb)
    sum_out[0] = acc


cdef tuple _rows_run(const RowArgs *A, Py_ssize_t rows_per_block, int n_threads, floating *dummy):
    cdef Py_ssize_t N = A.N, C = A.C, nb, b, lo, hi, i, k, j, nseg = 0, per = FX_SEG // RCH
    cdef double total = 0.0, comp = 0.0, v
    cdef int bad = 0
    cdef double *parts = NULL
    cdef double *slots = NULL
    cdef double *tbufs = NULL
    cdef int *bads = NULL
    cdef bint split
    if N == 0:
        return 0.0, 0
    split = (n_threads > 1 and N < n_threads and C > FX_SEG and A.t == NULL
             and A.p.cs == sizeof(floating)
             and (A.op == FX_ROW_ENTROPY or A.q.cs == sizeof(floating))
             and (A.g.base == NULL or A.g.cs == sizeof(floating)))
    if split:
        nseg = (C + FX_SEG - 1) // FX_SEG
        nb = nseg
        slots = <double *>malloc(((C + RCH - 1) // RCH) * sizeof(double))
        tbufs = <double *>malloc(n_threads * RCH * sizeof(double))
    else:
        nb = (N + rows_per_block - 1) // rows_per_block
    parts = <double *>malloc(nb * sizeof(double))
    bads = <int *>malloc(nb * sizeof(int))
    if parts == NULL or bads == NULL or (split and (slots == NULL or tbufs == NULL)):
        free(parts)
        free(bads)
        free(slots)
        free(tbufs)
        raise MemoryError()
    with nogil:
        if split:
            # one long row at a time, its FX_SEG pieces over the threads; each RCH chunk's sum
            # goes to its slot and the row's value adds the slots in order, exactly as the
            # serial path (_long_part) does
            for i in range(N):
                for k in prange(nseg, schedule="static", num_threads=n_threads):
                    bads[k] = 0
                    _long_part(A, i, k * FX_SEG, min(C, (k + 1) * FX_SEG), <floating *>NULL,
                               <floating *>NULL, <floating *>NULL, tbufs + threadid() * RCH,
                               &bads[k], slots + k * per)
                v = 0.0
                for j in range((C + RCH - 1) // RCH):
                    v += slots[j]
                v = A.sign * v
                for k in range(nseg):
                    bad |= bads[k]
                fx_neumaier(&total, &comp, v)
                _emit(A, i, v, dummy)
        else:
            if n_threads <= 1 or nb == 1:
                for b in range(nb):
                    bads[b] = 0
                    lo = b * rows_per_block
                    _rows_block(A, lo, min(lo + rows_per_block, N), &parts[b], &bads[b], dummy)
            else:
                for b in prange(nb, schedule="static", num_threads=n_threads):
                    bads[b] = 0
                    lo = b * rows_per_block
                    hi = min(lo + rows_per_block, N)
                    _rows_block(A, lo, hi, &parts[b], &bads[b], dummy)
            for b in range(nb):
                fx_neumaier(&total, &comp, parts[b])
                bad |= bads[b]
    free(parts)
    free(bads)
    free(slots)
    free(tbufs)
    if bad & 2:
        raise MemoryError()
    return fx_neumaier_result(total, comp), bad


def rows(p, q, grad_out, labels, int op, int mode, double lo, double hi, double gscale, row_scale,
         vals_out, double lscale, Py_ssize_t rows_per_block, int n_threads):
    """Row values of cross-entropy (op 0: -sum p log clip(q, lo, hi), or -log clip(q[y]) with
    integer ``labels``), entropy (op 1: -sum p log p) or KL divergence (op 2, ``mode`` bits:
    1 q holds log q, 2 p holds log p), per row of the (N, C) or (A, D, C) views ``p`` / ``q``
    (same layout of rows; ``p`` None with ``labels``, ``q`` None for entropy).

    grad_out: None or a view of q's row layout receiving d(row value)/dq * gscale (* row_scale[i]);
    labels: None or contiguous int32/int64 (N,); row_scale: None or contiguous float64 (N,);
    vals_out: None or contiguous (N,) of the kernel dtype, receiving row value * lscale.
    Returns (sum of the row values (unscaled), invalid flag: a negative probability or a label
    outside [0, C))."""
    cdef RowArgs A
    cdef cnp.ndarray ref = <cnp.ndarray>(q if q is not None else p)
    A.p = view_of(p)
    A.q = view_of(q)
    A.g = view_of(grad_out)
    A.t = NULL if labels is None else <char *>cnp.PyArray_DATA(<cnp.ndarray>labels)
    A.t64 = labels is not None and cnp.PyArray_TYPE(<cnp.ndarray>labels) == cnp.NPY_INT64
    A.N = cnp.PyArray_DIM(ref, 0)
    if cnp.PyArray_NDIM(ref) == 3:
        A.N = A.N * cnp.PyArray_DIM(ref, 1)
    A.C = cnp.PyArray_DIM(ref, cnp.PyArray_NDIM(ref) - 1)
    A.op = op
    A.mode = mode
    A.lo = lo
    A.hi = hi
    A.sign = 1.0 if op == FX_ROW_KL else -1.0
    A.gscale = gscale
    A.row_scale = <const double *>data_of(row_scale)
    A.vals_out = NULL if vals_out is None else <char *>cnp.PyArray_DATA(<cnp.ndarray>vals_out)
    A.lscale = lscale
    if cnp.PyArray_TYPE(ref) == cnp.NPY_FLOAT32:
        return _rows_run(&A, rows_per_block, n_threads, <float *>NULL)
    return _rows_run(&A, rows_per_block, n_threads, <double *>NULL)


# ------------------------------------------------------------------ elementwise kernels
cdef struct BinArgs:
    fx_view x              # probabilities / logits
    fx_view y              # targets
    fx_view w              # weight (broadcast), or absent
    fx_view pw             # pos_weight (broadcast, logits only), or absent
    fx_view go             # per-element grad_output (broadcast), or absent
    fx_view g              # gradient out, or absent (may be x itself)
    char *loss_out      # per-element losses * lscale, contiguous (R*K,), or NULL
    Py_ssize_t R, K
    int op              # OP_BCE, OP_BCE_LOGITS
    double lscale, gscale


cdef inline const floating *_chunk(const fx_view *a, Py_ssize_t r, Py_ssize_t k, Py_ssize_t n,
                                   floating *buf) noexcept nogil:
    cdef char *src = a.base + r * a.s0 + k * a.cs
    if a.cs == sizeof(floating):
        return <const floating *>src
    _gather(src, a.cs, n, buf)
    return buf


cdef double _bin_tile(const BinArgs *A, Py_ssize_t lo, Py_ssize_t hi, int *bad,
                      floating *dummy) noexcept nogil:
    """Elements lo..hi of the flat (R, K) index space, CHUNK at a time; returns their loss sum."""
    cdef floating xb[CHUNK]
    cdef floating yb[CHUNK]
    cdef floating wb[CHUNK]
    cdef floating pwb[CHUNK]
    cdef floating fb[CHUNK]
    cdef floating lb[CHUNK]
    cdef floating gb[CHUNK]
    cdef floating ones[CHUNK]
    cdef const floating *xp
    cdef const floating *yp
    cdef const floating *wp
    cdef const floating *pwp
    cdef const floating *fp
    cdef const floating *gop
    cdef floating *lp
    cdef floating *gp
    cdef char *gdst
    cdef Py_ssize_t pos = lo, r = lo // A.K, k = lo - (lo // A.K) * A.K, n, c0, m, j, kk
    cdef double acc = 0.0
    cdef floating ls = <floating>A.lscale, gs = <floating>A.gscale
    if A.w.base == NULL or A.pw.base == NULL:      # the weight or pos_weight of none
        for j in range(CHUNK):
            ones[j] = 1
    while pos < hi:
        n = min(A.K - k, hi - pos)
        c0 = 0
        while c0 < n:
            m = min(<Py_ssize_t>CHUNK, n - c0)
            kk = k + c0
            xp = _chunk(&A.x, r, kk, m, xb)
            yp = _chunk(&A.y, r, kk, m, yb)
            wp = _chunk(&A.w, r, kk, m, wb) if A.w.base != NULL else ones
            pwp = _chunk(&A.pw, r, kk, m, pwb) if A.pw.base != NULL else ones
            lp = (<floating *>A.loss_out) + pos + c0 if A.loss_out != NULL else lb
            if A.op == FX_BIN_PROBS:
                if floating is float:
                    acc += fx_bce_f32(xp, yp, wp, m, ls, lp, bad)
                else:
                    acc += fx_bce_f64(xp, yp, wp, m, ls, lp, bad)
            else:
                if floating is float:
                    acc += fx_bcel_f32(xp, yp, wp, pwp, m, ls, lp)
                else:
                    acc += fx_bcel_f64(xp, yp, wp, pwp, m, ls, lp)
            if A.g.base != NULL:
                fp = wp
                if A.go.base != NULL:
                    gop = _chunk(&A.go, r, kk, m, fb)
                    for j in range(m):
                        fb[j] = gop[j] * wp[j]
                    fp = fb
                gdst = A.g.base + r * A.g.s0 + kk * A.g.cs
                gp = <floating *>gdst if A.g.cs == sizeof(floating) else gb
                if A.op == FX_BIN_PROBS:
                    if floating is float:
                        fx_bce_grad_f32(xp, yp, fp, m, gs, gp)
                    else:
                        fx_bce_grad_f64(xp, yp, fp, m, gs, gp)
                else:
                    if floating is float:
                        fx_bcel_grad_f32(xp, yp, fp, pwp, m, gs, gp)
                    else:
                        fx_bcel_grad_f64(xp, yp, fp, pwp, m, gs, gp)
                if gp == gb:
                    _scatter(gb, m, gdst, A.g.cs)
            c0 += m
        pos += n
        r += 1
        k = 0
    return acc


cdef tuple _bin_run(const BinArgs *A, int n_threads, floating *dummy):
    cdef Py_ssize_t total_n = A.R * A.K, nt, t, lo
    cdef double total = 0.0, comp = 0.0
    cdef int bad = 0
    cdef double *parts
    cdef int *bads
    if total_n == 0:
        return 0.0, 0
    nt = (total_n + TILE - 1) // TILE
    parts = <double *>malloc(nt * sizeof(double))
    bads = <int *>malloc(nt * sizeof(int))
    if parts == NULL or bads == NULL:
        free(parts)
        free(bads)
        raise MemoryError()
    with nogil:
        if n_threads <= 1 or nt == 1:
            for t in range(nt):
                bads[t] = 0
                lo = t * TILE
                parts[t] = _bin_tile(A, lo, min(lo + TILE, total_n), &bads[t], dummy)
        else:
            for t in prange(nt, schedule="static", num_threads=n_threads):
                bads[t] = 0
                lo = t * TILE
                parts[t] = _bin_tile(A, lo, min(lo + TILE, total_n), &bads[t], dummy)
        for t in range(nt):
            fx_neumaier(&total, &comp, parts[t])
            bad |= bads[t]
    free(parts)
    free(bads)
    return fx_neumaier_result(total, comp), bad


def binary(int op, Py_ssize_t R, Py_ssize_t K, x, y, w, pw, go, grad_out, loss_out,
           double lscale, double gscale, int n_threads):
    """Binary cross-entropy over an (R, K) element grid (op 0: probabilities, op 1: logits).

    x, y, w, pw, go, grad_out: (array, s0, s1) -- the array's data pointer is element (0, 0)
    and (s0, s1) its byte strides on the grid -- or None (w: unit weights; pw: pos_weight 1;
    go: no per-element grad_output; grad_out: loss only).  x, y, w, pw, go, grad_out share the
    kernel dtype (x's).  loss_out: None or contiguous (R*K,) receiving the losses * lscale.
    Returns (sum of the losses (unscaled), invalid flag: a probability or target outside [0, 1])."""
    cdef BinArgs A
    A.x = grid_of(x)
    A.y = grid_of(y)
    A.w = grid_of(w)
    A.pw = grid_of(pw)
    A.go = grid_of(go)
    A.g = grid_of(grad_out)
    A.loss_out = NULL if loss_out is None else <char *>cnp.PyArray_DATA(<cnp.ndarray>loss_out)
    A.R = R
    A.K = K
    A.op = op
    A.lscale = lscale
    A.gscale = gscale
    if cnp.PyArray_TYPE(<cnp.ndarray>x[0]) == cnp.NPY_FLOAT32:
        return _bin_run(&A, n_threads, <float *>NULL)
    return _bin_run(&A, n_threads, <double *>NULL)
