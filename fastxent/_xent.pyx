# cython: language_level=3
"""Layer 2 of fastxent: the softmax cross-entropy array kernels.

    fx_*.h / _rowmath.h / .pxd  row numerics: exp, the log-sum-exp variants, the per-row
                                cross-entropy fx_xent_row and the loops over a block of rows  <- 1
    _xent.pyx (this file)       arrays -> fx_view structs, blocks of rows -> threads          <- 2
    _api.py                     validation, dtype/layout/threads resolution, outputs          <- 3
    __init__.py                 the public names                                              <- 4

The kernels take NumPy arrays that the API layer has already validated (dtype, shape,
alignment, ranges) and read their data pointers and strides directly, so a call costs well
under a microsecond before the work starts; inputs are never written (read-only and
memory-mapped arrays work).  Outputs are suffixed ``_out``; the thread count is an ``int``.

Work split, chosen from the shape alone:
  * rows are grouped into fixed blocks of ``rows_per_block`` rows (set by the caller from C)
    spread over threads with ``prange(schedule="static")``; the C block loop picks rows one at
    a time, or FX_SHORT_R at a time vectorised across rows when rows are short;
  * when there are fewer rows than threads and rows are longer than FX_SEG, each row is split
    into FX_SEG segments spread over the threads.
Every block (and segment) writes its partial results into its own slot and the slots are
combined in order afterwards, so every result is bit-identical for any thread count.  A single
block runs without a parallel region (small inputs pay no OpenMP start-up cost).
"""
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport malloc, free
from libc.math cimport NAN, INFINITY

cimport numpy as cnp

from fastxent._views cimport view_of, data_of, rows_of
from fastxent._rowmath cimport (
    fx_view, fx_xent_args, fx_part, fx_xent_res, fx_part_init, fx_neumaier, fx_neumaier_result,
    fx_store_fence, fx_label, fx_xent_rows_f32, fx_xent_rows_f64,
    fx_xent_split_stats_f32, fx_xent_split_stats_f64, fx_xent_split_merge_f32,
    fx_xent_split_merge_f64, fx_xent_split_gap_f32, fx_xent_split_gap_f64,
    fx_xent_split_formula_f32, fx_xent_split_formula_f64, fx_xent_split_grad_f32,
    fx_xent_split_grad_f64, fx_fill_f32, fx_fill_f64, fx_lse_rows_f32, fx_lse_rows_f64,
    fx_score_args, fx_score_rows_f32, fx_score_rows_f64, fx_exact_add, FX_SEG, FX_BLOCK, FX_DT_F32, FX_DT_F64,
    FX_INPUT_LOGITS, FX_INPUT_LOGPROBS, FX_SCORE_LOGITS, FX_SCORE_LOGPROBS, FX_SCORE_PROBS)

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    object PyArray_Scalar(void *data, cnp.dtype descr, object base)

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

# gradients at least this large are written with non-temporal stores (far above the caches)
cdef Py_ssize_t STREAM_MIN_BYTES = 64 * 1024 * 1024

# what a row holds, for the API layer
INPUT_LOGITS = FX_INPUT_LOGITS
INPUT_LOGPROBS = FX_INPUT_LOGPROBS


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(FX_HAVE_OPENMP)


def max_threads():
    """OpenMP's current default thread count (OMP_NUM_THREADS, threadpoolctl limits)."""
    return fx_omp_max_threads()


# ------------------------------------------------------------------ cross-entropy
cdef inline void _rows(const fx_xent_args *A, bint f64, Py_ssize_t lo, Py_ssize_t hi,
                       fx_part *part) noexcept nogil:
    if f64:
        fx_xent_rows_f64(A, lo, hi, part)
    else:
        fx_xent_rows_f32(A, lo, hi, part)


cdef int _split_row(const fx_xent_args *A, bint f64, Py_ssize_t i, fx_part *part, char *ms,
                    double *ts, double *gaps, char *e, char *bm, int n_threads) noexcept nogil:
    """One long contiguous row (hard label, logits), its FX_SEG segments spread over the
    threads; the same numbers as the block loop (the same segments merged in the same order).
    ``e``: scratch for the exps when the gradient is written in place (else NULL: the gradient
    row holds them); ``bm``: the block maxima.  Returns 1 for a row that is not finite."""
    cdef Py_ssize_t C = A.o.C, nseg = (C + FX_SEG - 1) // FX_SEG, k, y
    cdef bint has_grad = A.g.base != NULL
    cdef char *ex = NULL
    cdef double t = 0.0, gap = 0.0, md = 0.0
    cdef float m32 = 0
    cdef double m64 = 0
    cdef fx_xent_res res
    cdef int bad
    y = fx_label(A, i)
    if y == A.ignore_index or y < 0 or y >= C:
        if y != A.ignore_index and part.bad < 0:
            part.bad = i
        if has_grad:
            for k in prange(nseg, schedule="static", num_threads=n_threads):
                if f64:
                    fx_fill_f64(<double *>(A.g.base + i * A.g.s0) + k * FX_SEG,
                                min(C - k * FX_SEG, <Py_ssize_t>FX_SEG), 0)
                else:
                    fx_fill_f32(<float *>(A.g.base + i * A.g.s0) + k * FX_SEG,
                                min(C - k * FX_SEG, <Py_ssize_t>FX_SEG), 0)
        _emit(A, f64, i, 0.0 if y == A.ignore_index else NAN, 0.0, part)
        return 0
    part.wsum += A.o.w[y] if A.o.w != NULL else 1.0
    if has_grad:
        ex = e if e != NULL else A.g.base + i * A.g.s0
    for k in prange(nseg, schedule="static", num_threads=n_threads):
        if f64:
            fx_xent_split_stats_f64(A, i, k, <double *>ms, ts, <double *>ex, <double *>bm)
        else:
            fx_xent_split_stats_f32(A, i, k, <float *>ms, ts, <float *>ex, <float *>bm)
    if f64:
        bad = fx_xent_split_merge_f64(C, <double *>ms, ts, &m64, &t)
        md = m64
    else:
        bad = fx_xent_split_merge_f32(C, <float *>ms, ts, &m32, &t)
        md = m32
    if bad:
        if has_grad:
            for k in prange(nseg, schedule="static", num_threads=n_threads):
                if f64:
                    fx_fill_f64(<double *>(A.g.base + i * A.g.s0) + k * FX_SEG,
                                min(C - k * FX_SEG, <Py_ssize_t>FX_SEG), NAN)
                else:
                    fx_fill_f32(<float *>(A.g.base + i * A.g.s0) + k * FX_SEG,
                                min(C - k * FX_SEG, <Py_ssize_t>FX_SEG), NAN)
        _emit(A, f64, i, NAN, NAN if A.o.zl != 0.0 else 0.0, part)
        return 1
    if A.o.eps != 0.0:
        for k in prange(nseg, schedule="static", num_threads=n_threads):
            gaps[k] = fx_xent_split_gap_f64(A, i, k, m64) if f64 else \
                fx_xent_split_gap_f32(A, i, k, m32)
        for k in range(nseg):
            gap += gaps[k]
    if f64:
        res = fx_xent_split_formula_f64(A, i, y, m64, t, gap)
    else:
        res = fx_xent_split_formula_f32(A, i, y, m32, t, gap)
    if has_grad:
        for k in prange(nseg, schedule="static", num_threads=n_threads):
            if f64:
                fx_xent_split_grad_f64(A, i, k, <double *>ex, <double *>bm, m64, &res)
            else:
                fx_xent_split_grad_f32(A, i, k, <float *>ex, <float *>bm, m32, &res)
        if f64:
            (<double *>(A.g.base + i * A.g.s0))[y] -= <double>res.b
        else:
            (<float *>(A.g.base + i * A.g.s0))[y] -= <float>res.b
    _emit(A, f64, i, res.loss, res.z, part)
    return 0


cdef inline void _emit(const fx_xent_args *A, bint f64, Py_ssize_t i, double loss, double z,
                       fx_part *part) noexcept nogil:
    part.loss += loss
    part.z += z
    if f64:
        if A.loss_out != NULL:
            (<double *>A.loss_out)[i] = loss * A.lscale
        if A.z_out != NULL:
            (<double *>A.z_out)[i] = z * A.lscale
    else:
        if A.loss_out != NULL:
            (<float *>A.loss_out)[i] = <float>(loss * A.lscale)
        if A.z_out != NULL:
            (<float *>A.z_out)[i] = <float>(z * A.lscale)


cdef tuple _split_run(const fx_xent_args *A, bint f64, int n_threads):
    """Every row split over the threads (few long rows)."""
    cdef Py_ssize_t C = A.o.C, nseg = (C + FX_SEG - 1) // FX_SEG, isz = 8 if f64 else 4, i
    cdef fx_part one
    cdef bint scratch = A.g.base != NULL and A.g.base == A.x.base
    cdef char *ms = <char *>malloc(nseg * isz)
    cdef double *ts = <double *>malloc(nseg * sizeof(double))
    cdef double *gaps = <double *>malloc(nseg * sizeof(double))
    cdef char *bm = <char *>malloc(((C + FX_BLOCK - 1) // FX_BLOCK) * isz)
    cdef char *e = <char *>malloc(C * isz) if scratch else NULL
    fx_part_init(&one)
    if ms == NULL or ts == NULL or gaps == NULL or bm == NULL or (scratch and e == NULL):
        free(ms); free(ts); free(gaps); free(bm); free(e)
        raise MemoryError()
    with nogil:
        for i in range(A.N):
            _split_row(A, f64, i, &one, ms, ts, gaps, e, bm, n_threads)
    free(ms); free(ts); free(gaps); free(bm); free(e)
    return (one.loss, one.z, one.wsum, one.bad)


cdef tuple _xent_run(const fx_xent_args *A, bint f64, Py_ssize_t rows_per_block, int n_threads):
    cdef Py_ssize_t N = A.N, nb = (N + rows_per_block - 1) // rows_per_block, b, lo
    cdef fx_part one
    cdef fx_part *parts = &one
    cdef double total = 0.0, comp = 0.0, ztot = 0.0, zcomp = 0.0, wsum = 0.0
    cdef Py_ssize_t bad = -1
    cdef int nomem = 0
    if N == 0:
        return (0.0, 0.0, 0.0, -1)
    if (n_threads > 1 and N < n_threads and A.o.C > FX_SEG and A.direct and A.p.base == NULL
            and A.o.input == FX_INPUT_LOGITS):
        return _split_run(A, f64, n_threads)
    if nb > 1:
        parts = <fx_part *>malloc(nb * sizeof(fx_part))
        if parts == NULL:
            raise MemoryError()
    with nogil:
        if n_threads <= 1 or nb == 1:
            for b in range(nb):
                fx_part_init(&parts[b])
                lo = b * rows_per_block
                _rows(A, f64, lo, min(lo + rows_per_block, N), &parts[b])
        else:
            for b in prange(nb, schedule="static", num_threads=n_threads):
                fx_part_init(&parts[b])
                lo = b * rows_per_block
                _rows(A, f64, lo, min(lo + rows_per_block, N), &parts[b])
        # combine in block order, compensated: identical for every thread count
        for b in range(nb):
            fx_neumaier(&total, &comp, parts[b].loss)
            fx_neumaier(&ztot, &zcomp, parts[b].z)
            wsum += parts[b].wsum
            nomem |= parts[b].nomem
            if bad < 0 and parts[b].bad >= 0:
                bad = parts[b].bad
    if parts != &one:
        free(parts)
    if nomem:
        raise MemoryError()
    return (fx_neumaier_result(total, comp), fx_neumaier_result(ztot, zcomp), wsum, bad)


def xent(x, target, probs, weight, double W, Py_ssize_t ignore_index, double eps, double zl,
         double gamma, int input_kind, double scale, double cap, double lscale, double gscale,
         row_scale, loss_out, z_out, grad_out, Py_ssize_t rows_per_block, int n_threads):
    """Fused cross-entropy (+ gradient when ``grad_out`` is not None) over the rows of ``x``.

    x: (N, C) or (A, D, C) view (N = A*D rows) of float32/float64/float16/bfloat16 logits
    (``input_kind`` INPUT_LOGITS) or log-probabilities (INPUT_LOGPROBS: no softmax, nll_loss);
    target: contiguous int32/int64 (N,) labels, or None with ``probs`` (soft targets) of x's
    row layout; weight / row_scale: None or contiguous float64; W: sum of the weights;
    eps / zl / gamma: label smoothing, z-loss, focal exponent; scale / cap: the logit transform;
    loss_out / z_out: None or contiguous (N,) of the kernel dtype (float64 for float64 input,
    else float32); grad_out: None, ``x`` itself (in place) or an array of x's row layout.

    Returns (sum of row losses, sum of z-loss terms, sum of w[y] over non-ignored rows (rows
    for soft targets), first bad row or -1); sums are not multiplied by ``lscale``.
    """
    cdef fx_xent_args A
    A.x = view_of(x)
    A.g = view_of(grad_out)
    A.p = view_of(probs)
    A.t = data_of(target)
    A.ts = cnp.PyArray_STRIDE(<cnp.ndarray>target, 0) if target is not None else 0
    A.t64 = target is None or cnp.PyArray_TYPE(<cnp.ndarray>target) == cnp.NPY_INT64
    A.N = rows_of(x)
    A.o.C = cnp.PyArray_DIM(<cnp.ndarray>x, cnp.PyArray_NDIM(<cnp.ndarray>x) - 1)
    A.o.w = <const double *>data_of(weight)
    A.o.W = W
    A.o.eps = eps
    A.o.zl = zl
    A.o.gamma = gamma
    A.o.soft = probs is not None
    A.o.input = input_kind
    A.ignore_index = ignore_index
    A.scale = scale
    A.cap = cap
    A.lscale = lscale
    A.gscale = gscale
    A.row_scale = <const double *>data_of(row_scale)
    A.loss_out = data_of(loss_out)
    A.z_out = data_of(z_out)
    cdef bint f64 = A.x.dt == FX_DT_F64
    cdef int kdt = FX_DT_F64 if f64 else FX_DT_F32
    cdef Py_ssize_t isz = 8 if f64 else 4
    A.direct = (scale == 1.0 and cap == 0.0
                and A.x.dt == kdt and A.x.cs == isz
                and (A.g.base == NULL or (A.g.dt == kdt and A.g.cs == isz))
                and (A.p.base == NULL or (A.p.dt == kdt and A.p.cs == isz)))
    # streaming stores pay off when the gradient is far larger than the last-level cache
    A.stream = (A.g.base != NULL and A.g.base != A.x.base
                and A.N * A.o.C * A.g.isz >= STREAM_MIN_BYTES)
    return _xent_run(&A, f64, rows_per_block, n_threads)


def plain_scalar(x, t, ignore_index, bint mean, Py_ssize_t block_elems):
    """The per-call fast path of ``cross_entropy``: the plain loss (no option) of a 2-D float32 /
    float64 ndarray with contiguous, aligned rows and 1-D int64 / int32 ndarray labels, reduced
    ("mean" or "sum") to a NumPy scalar -- when the rows fit one block (``block_elems``
    elements: computed on the calling thread).  Returns None for anything else, and for a bad
    label, so that the validating path handles (and reports) it."""
    cdef cnp.ndarray xa, ta
    cdef fx_xent_args A
    cdef fx_part part
    cdef Py_ssize_t N, C, isz, rpb
    cdef int xt, tt
    cdef float f32
    cdef double v
    if not (cnp.PyArray_CheckExact(x) and cnp.PyArray_CheckExact(t)
            and -9223372036854775807 - 1 <= ignore_index <= 9223372036854775807):
        return None
    xa = <cnp.ndarray>x
    ta = <cnp.ndarray>t
    xt = cnp.PyArray_TYPE(xa)
    tt = cnp.PyArray_TYPE(ta)
    if (cnp.PyArray_NDIM(xa) != 2 or cnp.PyArray_NDIM(ta) != 1 or not cnp.PyArray_ISALIGNED(xa)
            or (xt != cnp.NPY_FLOAT32 and xt != cnp.NPY_FLOAT64)
            or (tt != cnp.NPY_INT64 and tt != cnp.NPY_INT32)):
        return None
    N = cnp.PyArray_DIM(xa, 0)
    C = cnp.PyArray_DIM(xa, 1)
    isz = cnp.PyArray_ITEMSIZE(xa)
    if C == 0 or cnp.PyArray_DIM(ta, 0) != N or cnp.PyArray_STRIDE(xa, 1) != isz \
            or cnp.PyArray_STRIDE(xa, 0) % isz != 0:
        return None
    rpb = block_elems // C if block_elems >= C else 1
    if N > rpb:
        return None
    A.x = view_of(x)
    A.g = view_of(None)
    A.p = view_of(None)
    A.t = <const char *>cnp.PyArray_DATA(ta)
    A.ts = cnp.PyArray_STRIDE(ta, 0)
    A.t64 = tt == cnp.NPY_INT64
    A.N = N
    A.o.C = C
    A.o.w = NULL
    A.o.W = <double>C
    A.o.eps = 0.0
    A.o.zl = 0.0
    A.o.gamma = 0.0
    A.o.soft = 0
    A.o.input = FX_INPUT_LOGITS
    A.ignore_index = <Py_ssize_t>ignore_index
    A.scale = 1.0
    A.cap = 0.0
    A.lscale = 1.0
    A.gscale = 1.0
    A.row_scale = NULL
    A.loss_out = NULL
    A.z_out = NULL
    A.direct = 1
    A.stream = 0
    fx_part_init(&part)
    with nogil:
        if xt == cnp.NPY_FLOAT64:
            fx_xent_rows_f64(&A, 0, N, &part)
        else:
            fx_xent_rows_f32(&A, 0, N, &part)
    if part.bad >= 0 or part.nomem:
        return None
    v = part.loss
    if mean:    # IEEE division, as the validating path (0/0: nan, x/0: +-inf)
        if part.wsum != 0.0:
            v = v / part.wsum
        elif v != v or v == 0.0:
            v = NAN
        else:
            v = INFINITY if v > 0 else -INFINITY
    if xt == cnp.NPY_FLOAT64:
        return PyArray_Scalar(&v, cnp.PyArray_DescrFromType(cnp.NPY_FLOAT64), None)
    f32 = <float>v
    return PyArray_Scalar(&f32, cnp.PyArray_DescrFromType(cnp.NPY_FLOAT32), None)


cdef tuple _label_stats(const char *tp, bint t64, Py_ssize_t ts, Py_ssize_t N, Py_ssize_t C,
                        Py_ssize_t ignore_index, const double *w):
    cdef Py_ssize_t i, y, bad = -1
    cdef double wsum = 0.0
    with nogil:
        for i in range(N):
            if t64:
                y = <Py_ssize_t>(<const int64_t *>(tp + i * ts))[0]
            else:
                y = <Py_ssize_t>(<const int32_t *>(tp + i * ts))[0]
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
    return _label_stats(data_of(target), cnp.PyArray_TYPE(<cnp.ndarray>target) == cnp.NPY_INT64,
                        cnp.PyArray_STRIDE(<cnp.ndarray>target, 0),
                        cnp.PyArray_DIM(<cnp.ndarray>target, 0), C, ignore_index,
                        <const double *>data_of(weight))


# ------------------------------------------------------------------ log-sum-exp family
LSE_LOGSUMEXP = 0
LSE_LOG_SOFTMAX = 1
LSE_SOFTMAX = 2


def lse_family(x, int mode, lse_out, out, Py_ssize_t rows_per_block, int n_threads):
    """mode LSE_LOGSUMEXP: log-sum-exp of each row of the 2-D array ``x`` into the contiguous
    ``lse_out``; LSE_LOG_SOFTMAX / LSE_SOFTMAX: into ``out`` (same shape and dtype as x)."""
    cdef fx_view xv = view_of(x)
    cdef fx_view ov = view_of(out)
    cdef Py_ssize_t N = cnp.PyArray_DIM(<cnp.ndarray>x, 0), C = cnp.PyArray_DIM(<cnp.ndarray>x, 1)
    cdef Py_ssize_t nb = (N + rows_per_block - 1) // rows_per_block, b, lo
    cdef char *lp = data_of(lse_out)
    cdef bint f64 = xv.dt == FX_DT_F64
    cdef int nomem = 0
    if N == 0:
        return
    with nogil:
        if n_threads <= 1 or nb <= 1:
            if f64:
                nomem = fx_lse_rows_f64(&xv, &ov, C, 0, N, mode, <double *>lp)
            else:
                nomem = fx_lse_rows_f32(&xv, &ov, C, 0, N, mode, <float *>lp)
        else:
            for b in prange(nb, schedule="static", num_threads=n_threads):
                lo = b * rows_per_block
                if f64:
                    nomem |= fx_lse_rows_f64(&xv, &ov, C, lo, min(lo + rows_per_block, N), mode,
                                             <double *>lp)
                else:
                    nomem |= fx_lse_rows_f32(&xv, &ov, C, lo, min(lo + rows_per_block, N), mode,
                                             <float *>lp)
    if nomem:
        raise MemoryError()


# ------------------------------------------------------------------ scoring statistics
SCORE_LOGITS = FX_SCORE_LOGITS
SCORE_LOGPROBS = FX_SCORE_LOGPROBS
SCORE_PROBS = FX_SCORE_PROBS


def score_rows(x, labels, int kind, Py_ssize_t ignore_index, double lo, loss_out, rank_out,
               conf_out, brier_out, Py_ssize_t rows_per_block, int n_threads,
               Py_ssize_t rank_cap):
    """Scoring statistics of every row of the 2-D float32/float64 array ``x`` (see fx_score.h):
    ``kind`` SCORE_LOGITS / SCORE_LOGPROBS / SCORE_PROBS (``lo``: the probabilities' lower clip);
    labels: int64 (N,); loss_out / conf_out / brier_out: contiguous float64 (N,); rank_out:
    contiguous int64 (N,); ranks >= ``rank_cap`` (>= 1) are written as ``rank_cap``.  Returns
    the first row whose label is out of [0, C) and not ``ignore_index``, or -1."""
    cdef fx_score_args A
    A.x = view_of(x)
    A.t = data_of(labels)
    A.ts = cnp.PyArray_STRIDE(<cnp.ndarray>labels, 0)
    A.C = cnp.PyArray_DIM(<cnp.ndarray>x, 1)
    A.ignore_index = ignore_index
    A.kind = kind
    A.lo = lo
    A.rank_cap = max(1, rank_cap)
    A.loss = <double *>data_of(loss_out)
    A.conf = <double *>data_of(conf_out)
    A.brier = <double *>data_of(brier_out)
    A.rank = <int64_t *>data_of(rank_out)
    cdef Py_ssize_t N = cnp.PyArray_DIM(<cnp.ndarray>x, 0), nb, b, lo_r, r, bad = -1
    cdef bint f64 = A.x.dt == FX_DT_F64
    cdef int nomem = 0
    if N == 0:
        return -1
    nb = (N + rows_per_block - 1) // rows_per_block
    cdef Py_ssize_t *bads = <Py_ssize_t *>malloc(nb * sizeof(Py_ssize_t))
    if bads == NULL:
        raise MemoryError()
    with nogil:
        if n_threads <= 1 or nb == 1:
            for b in range(nb):
                lo_r = b * rows_per_block
                bads[b] = fx_score_rows_f64(&A, lo_r, min(lo_r + rows_per_block, N)) if f64 else \
                    fx_score_rows_f32(&A, lo_r, min(lo_r + rows_per_block, N))
        else:
            # dynamic: a block's results do not depend on the thread that computes it, and the
            # scoring engine reads the next chunk on another thread meanwhile
            for b in prange(nb, schedule="dynamic", num_threads=n_threads):
                lo_r = b * rows_per_block
                bads[b] = fx_score_rows_f64(&A, lo_r, min(lo_r + rows_per_block, N)) if f64 else \
                    fx_score_rows_f32(&A, lo_r, min(lo_r + rows_per_block, N))
        for b in range(nb):
            r = bads[b]
            if r == -2:
                nomem = 1
            elif r >= 0 and bad < 0:
                bad = r
    free(bads)
    if nomem:
        raise MemoryError()
    return bad


def exact_add(x, index, acc):
    """Add the finite float32/float64 values of the contiguous 1-D ``x`` into the exact-sum
    accumulator ``acc`` (C-contiguous int64, shape (groups, 2048, 2); see fx_exact_add in
    fx_score.h), value i into group ``index[i]`` (contiguous int64; None: group 0).  Raises
    ValueError for a group outside [0, groups)."""
    cdef Py_ssize_t n = cnp.PyArray_DIM(<cnp.ndarray>x, 0), bad
    cdef Py_ssize_t groups = cnp.PyArray_DIM(<cnp.ndarray>acc, 0)
    cdef void *xp = <void *>data_of(x)
    cdef int64_t *ip = NULL if index is None else <int64_t *>data_of(index)
    cdef int64_t *ap = <int64_t *>data_of(acc)
    cdef int f32 = cnp.PyArray_ITEMSIZE(<cnp.ndarray>x) == 4
    with nogil:
        bad = fx_exact_add(xp, f32, n, ip, ap, groups)
    if bad >= 0:
        raise ValueError(f"index: group {index[bad]} at {bad} is outside [0, {groups})")
