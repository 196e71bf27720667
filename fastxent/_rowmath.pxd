# cython: language_level=3
"""Layer 1 of fastxent: the row numerics every kernel family cimports.

The SIMD inner loops (vectorised exp, the online max / sum-of-exp that is the code base's only
log-sum-exp, the gradient write) are C in ``_rowmath.h`` so that gcc vectorises them
predictably; this file gives them fused-type names and builds the per-row cross-entropy on top.
Nothing here can fail, allocate or touch Python.
"""
from cython cimport floating
from libc.math cimport log, log1p, NAN


cdef extern from "_rowmath.h" nogil:
    float fx_expf(float x)
    double fx_exp(double x)
    int fx_row_stats_f32(const float *x, Py_ssize_t n, float *m, double *s)
    int fx_row_stats_f64(const double *x, Py_ssize_t n, double *m, double *s)
    int fx_seg_stats_f32(const float *x, Py_ssize_t n, float *m, double *s)
    int fx_seg_stats_f64(const double *x, Py_ssize_t n, double *m, double *s)
    void fx_stats_merge_f32(float *m, double *s, float mk, double sk)
    void fx_stats_merge_f64(double *m, double *s, double mk, double sk)
    double fx_seg_gap_f32(const float *x, Py_ssize_t n, float m, const double *w)
    double fx_seg_gap_f64(const double *x, Py_ssize_t n, double m, const double *w)
    enum: FX_SEG
    void fx_row_soft_f32(const float *x, const float *p, Py_ssize_t n, float m, const double *w,
                         double *sp, double *spg)
    void fx_row_soft_f64(const double *x, const double *p, Py_ssize_t n, double m, const double *w,
                         double *sp, double *spg)
    void fx_row_grad_soft_f32(const float *x, const float *p, float *g, Py_ssize_t n, float m,
                              float a, float b, float c, const double *w)
    void fx_row_grad_soft_f64(const double *x, const double *p, double *g, Py_ssize_t n, double m,
                              double a, double b, double c, const double *w)
    enum: FX_DT_F32
    enum: FX_DT_F64
    enum: FX_DT_F16
    enum: FX_DT_BF16
    void fx_load_f32(const char *src, Py_ssize_t cs, int dt, Py_ssize_t n, float scale, float cap,
                     float *buf)
    void fx_load_f64(const char *src, Py_ssize_t cs, int dt, Py_ssize_t n, double scale, double cap,
                     double *buf)
    void fx_store_f32(float *g, const float *z, Py_ssize_t n, float scale, float cap, char *dst,
                      Py_ssize_t cs, int dt)
    void fx_store_f64(double *g, const double *z, Py_ssize_t n, double scale, double cap, char *dst,
                      Py_ssize_t cs, int dt)
    double fx_row_gap_f32(const float *x, Py_ssize_t n, float m, const double *w)
    double fx_row_gap_f64(const double *x, Py_ssize_t n, double m, const double *w)
    void fx_row_grad_f32(const float *x, float *g, Py_ssize_t n, float m, float a, float c, const double *w)
    void fx_row_grad_f64(const double *x, double *g, Py_ssize_t n, double m, double a, double c, const double *w)
    void fx_row_grad_stream_f32(const float *x, float *g, Py_ssize_t n, float m, float a, float c, const double *w)
    void fx_row_grad_stream_f64(const double *x, double *g, Py_ssize_t n, double m, double a, double c, const double *w)
    void fx_store_fence()
    void fx_row_shift_f32(const float *x, float *y, Py_ssize_t n, float m, float ls)
    void fx_row_shift_f64(const double *x, double *y, Py_ssize_t n, double m, double ls)
    void fx_row_fill_f32(float *y, Py_ssize_t n, float v)
    void fx_row_fill_f64(double *y, Py_ssize_t n, double v)
    void fx_row_gather_f32(const float *x, Py_ssize_t stride, Py_ssize_t n, float *buf)
    void fx_row_gather_f64(const double *x, Py_ssize_t stride, Py_ssize_t n, double *buf)
    void fx_row_scatter_f32(const float *buf, Py_ssize_t n, float *y, Py_ssize_t stride)
    void fx_row_scatter_f64(const double *buf, Py_ssize_t n, double *y, Py_ssize_t stride)
    const char *fx_simd_level()
    enum: FX_SHORT_C
    enum: FX_SHORT_R
    void fx_short_stats_f32(const float *x, Py_ssize_t rs, Py_ssize_t R, Py_ssize_t C,
                            const Py_ssize_t *y, float *m, float *ls, float *inv_s, float *xy)
    void fx_short_stats_f64(const double *x, Py_ssize_t rs, Py_ssize_t R, Py_ssize_t C,
                            const Py_ssize_t *y, double *m, double *ls, double *inv_s, double *xy)
    Py_ssize_t fx_short_labels_i32(const char *t, Py_ssize_t ts, Py_ssize_t R, Py_ssize_t C,
                                   Py_ssize_t ii, Py_ssize_t *yi, char *valid)
    Py_ssize_t fx_short_labels_i64(const char *t, Py_ssize_t ts, Py_ssize_t R, Py_ssize_t C,
                                   Py_ssize_t ii, Py_ssize_t *yi, char *valid)
    double fx_short_plain_f32(const float *m, const float *xy, const float *ls, const char *valid,
                              Py_ssize_t R, double *loss, double *count)
    double fx_short_plain_f64(const double *m, const double *xy, const double *ls, const char *valid,
                              Py_ssize_t R, double *loss, double *count)
    void fx_short_grad_f32(const float *x, Py_ssize_t rs, float *g, Py_ssize_t gs, Py_ssize_t R,
                           Py_ssize_t C, const float *m, const float *a, const float *cw, const double *w)
    void fx_short_grad_f64(const double *x, Py_ssize_t rs, double *g, Py_ssize_t gs, Py_ssize_t R,
                           Py_ssize_t C, const double *m, const double *a, const double *cw, const double *w)


# ---------------------------------------------------------------- fused-type names
cdef inline int row_stats(const floating *x, Py_ssize_t n, floating *m, double *s) noexcept nogil:
    """m = max(x), s = sum(exp(x - m)) - 1 (the maximum's own 1 left out, so log1p(s) is
    exact for tiny losses); returns 1 when the row has a NaN (s NaN), a +inf (m = s = +inf)
    or only -inf elements (m = -inf)."""
    if floating is float:
        return fx_row_stats_f32(x, n, m, s)
    else:
        return fx_row_stats_f64(x, n, m, s)


cdef inline double row_gap(const floating *x, Py_ssize_t n, floating m, const double *w) noexcept nogil:
    """sum(w * (m - x)) in double (w NULL: unit weights)."""
    if floating is float:
        return fx_row_gap_f32(x, n, m, w)
    else:
        return fx_row_gap_f64(x, n, m, w)


cdef inline void row_grad(const floating *x, floating *g, Py_ssize_t n, floating m, floating a,
                          floating c, const double *w) noexcept nogil:
    """g = a * exp(x - m) - c * w; g may alias x."""
    if floating is float:
        fx_row_grad_f32(x, g, n, m, a, c, w)
    else:
        fx_row_grad_f64(x, g, n, m, a, c, w)


cdef inline void row_grad_stream(const floating *x, floating *g, Py_ssize_t n, floating m,
                                 floating a, floating c, const double *w) noexcept nogil:
    """row_grad with non-temporal stores (g must not alias x)."""
    if floating is float:
        fx_row_grad_stream_f32(x, g, n, m, a, c, w)
    else:
        fx_row_grad_stream_f64(x, g, n, m, a, c, w)


cdef inline void row_shift(const floating *x, floating *y, Py_ssize_t n, floating m, floating ls) noexcept nogil:
    if floating is float:
        fx_row_shift_f32(x, y, n, m, ls)
    else:
        fx_row_shift_f64(x, y, n, m, ls)


cdef inline void row_fill(floating *y, Py_ssize_t n, floating v) noexcept nogil:
    if floating is float:
        fx_row_fill_f32(y, n, v)
    else:
        fx_row_fill_f64(y, n, v)


cdef inline void row_gather(const floating *x, Py_ssize_t stride, Py_ssize_t n, floating *buf) noexcept nogil:
    if floating is float:
        fx_row_gather_f32(x, stride, n, buf)
    else:
        fx_row_gather_f64(x, stride, n, buf)


cdef inline void row_scatter(const floating *buf, Py_ssize_t n, floating *y, Py_ssize_t stride) noexcept nogil:
    if floating is float:
        fx_row_scatter_f32(buf, n, y, stride)
    else:
        fx_row_scatter_f64(buf, n, y, stride)


cdef inline void short_stats(const floating *x, Py_ssize_t rs, Py_ssize_t R, Py_ssize_t C,
                             const Py_ssize_t *y, floating *m, floating *ls, floating *inv_s,
                             floating *xy) noexcept nogil:
    """R short rows at once (vectorised across rows): m = max, ls = log(sum(exp(x - m)))
    (NaN for a NaN row), inv_s = 1 / sum, xy = x[r, y[r]]."""
    if floating is float:
        fx_short_stats_f32(x, rs, R, C, y, m, ls, inv_s, xy)
    else:
        fx_short_stats_f64(x, rs, R, C, y, m, ls, inv_s, xy)


cdef inline void short_grad(const floating *x, Py_ssize_t rs, floating *g, Py_ssize_t gs,
                            Py_ssize_t R, Py_ssize_t C, const floating *m, const floating *a,
                            const floating *cw, const double *w) noexcept nogil:
    """g[r] = a[r] * exp(x[r] - m[r]) - cw[r] * w for R short rows."""
    if floating is float:
        fx_short_grad_f32(x, rs, g, gs, R, C, m, a, cw, w)
    else:
        fx_short_grad_f64(x, rs, g, gs, R, C, m, a, cw, w)


cdef inline int seg_stats(const floating *x, Py_ssize_t n, floating *m, double *s) noexcept nogil:
    """row_stats of one segment (n <= FX_SEG) of a long row."""
    if floating is float:
        return fx_seg_stats_f32(x, n, m, s)
    else:
        return fx_seg_stats_f64(x, n, m, s)


cdef inline void stats_merge(floating *m, double *s, floating mk, double sk) noexcept nogil:
    """Fold a segment's (max, sum) into the running pair, in segment order."""
    if floating is float:
        fx_stats_merge_f32(m, s, mk, sk)
    else:
        fx_stats_merge_f64(m, s, mk, sk)


cdef inline double seg_gap(const floating *x, Py_ssize_t n, floating m, const double *w) noexcept nogil:
    if floating is float:
        return fx_seg_gap_f32(x, n, m, w)
    else:
        return fx_seg_gap_f64(x, n, m, w)


cdef inline void row_soft(const floating *x, const floating *p, Py_ssize_t n, floating m,
                          const double *w, double *sp, double *spg) noexcept nogil:
    """sp = sum(w p), spg = sum(w p (m - x)) in double."""
    if floating is float:
        fx_row_soft_f32(x, p, n, m, w, sp, spg)
    else:
        fx_row_soft_f64(x, p, n, m, w, sp, spg)


cdef inline void row_grad_soft(const floating *x, const floating *p, floating *g, Py_ssize_t n,
                               floating m, floating a, floating b, floating c,
                               const double *w) noexcept nogil:
    """g = a exp(x - m) - w (b p + c); g may alias x."""
    if floating is float:
        fx_row_grad_soft_f32(x, p, g, n, m, a, b, c, w)
    else:
        fx_row_grad_soft_f64(x, p, g, n, m, a, b, c, w)


# ---------------------------------------------------------------- per-row cross-entropy
# For a non-ignored row with label y, weight wy = w[y], m = max, s = sum(exp(x - m)):
#     loss = (1-eps) * wy * (lse - x[y]) + eps/C * sum_c w[c] * (lse - x[c])
#     grad = a * exp(x - m) - cw * w - b * onehot(y)
#       a  = gs * ((1-eps)*wy + eps*W/C) / s,   cw = gs*eps/C,   b = gs*(1-eps)*wy
# with lse - x[c] = (m - x[c]) + log(s), so no large numbers cancel, and gap = sum w*(m - x).
# row_stats returns t = s - 1 (the sum without the maximum's own 1): log(s) = log1p(t) keeps
# a tiny loss (a confident, correct prediction) exact to its last bits.
cdef inline double xent_loss(double m, double xy, double logs, double wy, double W,
                             double eps, Py_ssize_t C, double gap) noexcept nogil:
    cdef double loss = (1.0 - eps) * wy * ((m - xy) + logs)
    if eps != 0.0:
        loss = loss + (eps / C) * (W * logs + gap)
    return loss


cdef inline double xent_a(double gs, double wy, double W, double eps, Py_ssize_t C,
                          double inv_s) noexcept nogil:
    return gs * ((1.0 - eps) * wy + eps * W / C) * inv_s


cdef inline void row_load(const char *src, Py_ssize_t cs, int dt, Py_ssize_t n, double scale,
                          double cap, floating *buf) noexcept nogil:
    """Any supported dtype / stride -> contiguous buffer, with z' = cap*tanh(scale*x/cap)."""
    if floating is float:
        fx_load_f32(src, cs, dt, n, <float>scale, <float>cap, buf)
    else:
        fx_load_f64(src, cs, dt, n, scale, cap, buf)


cdef inline void row_store(floating *g, const floating *z, Py_ssize_t n, double scale, double cap,
                           char *dst, Py_ssize_t cs, int dt) noexcept nogil:
    """Gradient buffer -> output row, chain rule through the logit transform, dtype conversion."""
    if floating is float:
        fx_store_f32(g, z, n, <float>scale, <float>cap, dst, cs, dt)
    else:
        fx_store_f64(g, z, n, scale, cap, dst, cs, dt)


cdef inline double row_xent(const floating *x, Py_ssize_t C, Py_ssize_t y, const floating *p,
                            double wy, const double *w, double W, double eps, double zl,
                            double gs, floating *g, double *zterm, bint stream) noexcept nogil:
    """Loss of one non-ignored row; hard label ``y`` (p NULL) or soft targets ``p`` (row of
    probabilities).  Writes the gradient into ``g`` unless it is NULL (``g`` may alias ``x``:
    in-place gradient) and the z-loss part of the loss into ``zterm``; ``stream``: write the
    gradient with non-temporal stores (g must not alias x).  A NaN row gives NaN.

    soft:  loss = sum_c w_c p'_c (lse - x_c),  p' = (1-eps) p + eps/C
           grad = gs * (sum(w p') * softmax - w p')
    z-loss adds zl * lse^2 to the loss and gs * 2 zl lse * softmax to the gradient."""
    cdef floating m
    cdef double s, logs, lse, loss, coef, sp, spg, z = 0.0
    if row_stats(x, C, &m, &s):
        if g != NULL:
            row_fill(g, C, <floating>NAN)
        zterm[0] = NAN
        return NAN
    logs = log1p(s)
    if p == NULL:
        loss = xent_loss(m, x[y], logs, wy, W, eps, C, row_gap(x, C, m, w) if eps != 0.0 else 0.0)
        coef = (1.0 - eps) * wy + eps * W / C
    else:
        row_soft(x, p, C, m, w, &sp, &spg)
        coef = (1.0 - eps) * sp + eps * W / C
        loss = coef * logs + (1.0 - eps) * spg
        if eps != 0.0:
            loss = loss + (eps / C) * row_gap(x, C, m, w)
    if zl != 0.0:
        lse = <double>m + logs
        z = zl * lse * lse
        loss = loss + z
        coef = coef + 2.0 * zl * lse
    zterm[0] = z
    if g != NULL:
        if p == NULL:
            if stream:
                row_grad_stream(x, g, C, m, <floating>(gs * coef / (1.0 + s)), <floating>(gs * eps / C), w)
            else:
                row_grad(x, g, C, m, <floating>(gs * coef / (1.0 + s)), <floating>(gs * eps / C), w)
            g[y] = g[y] - <floating>(gs * (1.0 - eps) * wy)
        else:
            row_grad_soft(x, p, g, C, m, <floating>(gs * coef / (1.0 + s)), <floating>(gs * (1.0 - eps)),
                          <floating>(gs * eps / C), w)
    return loss


# ==================================================================== probability family
# Declarations of the "probability family" section at the end of _rowmath.h (used by _probs.pyx).
cdef extern from "_rowmath.h" nogil:
    float fx_plogf(float x)
    double fx_plog(double x)
    float fx_pexpf(float x)
    double fx_pexp(double x)
    float fx_plog1pf(float u)
    double fx_plog1p(double u)
    void fx_xlogq_terms_f32(const float *p, const float *q, Py_ssize_t n, float lo, float hi,
                            double *t, int *bad)
    void fx_xlogq_terms_f64(const double *p, const double *q, Py_ssize_t n, double lo, double hi,
                            double *t, int *bad)
    void fx_xlogq_grad_f32(const float *p, const float *q, Py_ssize_t n, float lo, float hi, float a,
                           float *g)
    void fx_xlogq_grad_f64(const double *p, const double *q, Py_ssize_t n, double lo, double hi,
                           double a, double *g)
    void fx_xlogx_terms_f32(const float *p, Py_ssize_t n, double *t, int *bad)
    void fx_xlogx_terms_f64(const double *p, Py_ssize_t n, double *t, int *bad)
    void fx_kl_terms_f32(const float *p, const float *q, Py_ssize_t n, int mode, double *t, int *bad)
    void fx_kl_terms_f64(const double *p, const double *q, Py_ssize_t n, int mode, double *t,
                         int *bad)
    double fx_dsum(const double *t, Py_ssize_t n)
    void fx_pfill_f32(float *y, Py_ssize_t n, float v)
    void fx_pfill_f64(double *y, Py_ssize_t n, double v)
    double fx_bce_f32(const float *p, const float *y, const float *w, Py_ssize_t n, float ls,
                      float *loss, int *bad)
    double fx_bce_f64(const double *p, const double *y, const double *w, Py_ssize_t n, double ls,
                      double *loss, int *bad)
    void fx_bce_grad_f32(const float *p, const float *y, const float *f, Py_ssize_t n, float gs,
                         float *g)
    void fx_bce_grad_f64(const double *p, const double *y, const double *f, Py_ssize_t n, double gs,
                         double *g)
    double fx_bcel_f32(const float *x, const float *y, const float *w, const float *pw, Py_ssize_t n,
                       float ls, float *loss)
    double fx_bcel_f64(const double *x, const double *y, const double *w, const double *pw,
                       Py_ssize_t n, double ls, double *loss)
    void fx_bcel_grad_f32(const float *x, const float *y, const float *f, const float *pw,
                          Py_ssize_t n, float gs, float *g)
    void fx_bcel_grad_f64(const double *x, const double *y, const double *f, const double *pw,
                          Py_ssize_t n, double gs, double *g)
