/*
 * fastxent row numerics: the SIMD inner loops over one contiguous row.
 *
 * Layer 1 of fastxent (see _rowmath.pxd for the Cython side).  Everything here is a
 * `static inline` function over a contiguous row that cannot fail, allocate or touch Python.
 * The loops are written so that gcc auto-vectorises them (`#pragma omp simd` supplies the
 * reassociation licence for the reductions, so no -ffast-math is needed and NaN/inf keep their
 * IEEE meaning).  This file holds the code base's only log-sum-exp (fx_row_stats_*).
 *
 * exp: Cody-Waite range reduction x = n*ln2 + r, |r| <= ln2/2, a Taylor polynomial for e^r
 * (degree 7 in float: truncation 5e-9 relative; degree 13 in double: 4e-18), and 2^n built
 * from exponent bits.  Measured max error ~2 ulp (float) / ~2 ulp (double) on [-87, 0].
 * Arguments below the smallest normal result are flushed to exactly 0 (so exp(-inf) == 0 and
 * a masked class has probability 0).  A NaN argument gives NaN (no integer conversion of a
 * NaN happens: n is read from the bits of a float, never converted with UB).
 */
#ifndef FASTXENT_ROWMATH_H
#define FASTXENT_ROWMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stddef.h>

#define FX_PRAGMA(x) _Pragma(#x)
#if defined(_OPENMP) || defined(FASTXENT_OMP_SIMD)
#define FX_SIMD FX_PRAGMA(omp simd)
#define FX_SIMD_SUM(v) FX_PRAGMA(omp simd reduction(+:v))
#define FX_SIMD_MAX_NAN(m, f) FX_PRAGMA(omp simd reduction(max:m) reduction(|:f))
#else
#define FX_SIMD
#define FX_SIMD_SUM(v)
#define FX_SIMD_MAX_NAN(m, f)
#endif

/* Elements per block of the online max/sum: 8 KiB of float32, stays in L1. */
#define FX_BLOCK 2048

/* ------------------------------------------------------------------ exp, float32 */
static inline float fx_expf(float x)
{
    /* valid for x <= 88; every caller passes x <= 0 (x - max), -inf or NaN */
    const float magic = 12582912.0f;            /* 1.5 * 2^23: rint by addition */
    float xc = x < -104.0f ? -104.0f : x;       /* NaN compares false: stays NaN */
    float t = xc * 1.44269504088896341f + magic;
    float n = t - magic;
    float r = xc - n * 0.693359375f;            /* ln2 hi: 9 bits, n*hi exact */
    r = r - n * -2.12194440e-4f;                /* ln2 lo */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t ti, ni;
    memcpy(&ti, &t, 4);
    ni = ti - 0x4B400000;                       /* bits(magic) */
    uint32_t sb = ((uint32_t)(ni + 127)) << 23;
    float scale;
    memcpy(&scale, &sb, 4);
    float y = p * scale;
    return xc < -87.3365447f ? 0.0f : y;        /* below FLT_MIN: flush to 0 */
}

/* ------------------------------------------------------------------ exp, float64 */
static inline double fx_exp(double x)
{
    const double magic = 6755399441055744.0;    /* 1.5 * 2^52 */
    double xc = x < -746.0 ? -746.0 : x;
    double t = xc * 1.4426950408889634074 + magic;
    double n = t - magic;
    double r = xc - n * 0.693147180369123816490;   /* ln2 hi (trailing zero bits) */
    r = r - n * 1.90821492927058770002e-10;         /* ln2 lo */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t ti, ni;
    memcpy(&ti, &t, 8);
    ni = ti - 0x4338000000000000LL;
    uint64_t sb = ((uint64_t)(ni + 1023)) << 52;
    double scale;
    memcpy(&scale, &sb, 8);
    double y = p * scale;
    return xc < -708.39641853226408 ? 0.0 : y;  /* below DBL_MIN: flush to 0 */
}

/*
 * Row statistics: m = max(x), s = sum(exp(x - m)) accumulated in double, one read of the row
 * from memory (blocks of FX_BLOCK elements: the block max is taken first, the block then
 * stays in L1 for the exp pass; when a block raises the running max the sum is rescaled once).
 * Returns 0 for a row whose log-sum-exp is finite; 1 for a row that must give NaN (a NaN, a
 * +inf, every element -inf, or n == 0).
 * log-sum-exp = m + log(s); softmax = exp(x - m) / s.
 * The reductions keep FX_LANES partial results (one vector) and combine them as a tree at
 * the end of a block, so a short row pays a few cycles, not a 16-step serial chain.
 */
#define FX_LANES 16
#define FX_DEFINE_ROW_STATS(NAME, T, EXP, NEG_INF)                                      \
static inline int NAME(const T *x, ptrdiff_t n, T *m_out, double *s_out)                 \
{                                                                                       \
    T m = NEG_INF;                                                                      \
    double s = 0.0;                                                                     \
    for (ptrdiff_t b = 0; b < n; b += FX_BLOCK) {                                       \
        const T *xb = x + b;                                                            \
        ptrdiff_t len = n - b < FX_BLOCK ? n - b : FX_BLOCK, i, j, w;                   \
        T mx[FX_LANES];                                                                 \
        int nn[FX_LANES];                                                               \
        double acc[FX_LANES];                                                           \
        for (j = 0; j < FX_LANES; j++) { mx[j] = NEG_INF; nn[j] = 0; acc[j] = 0.0; }    \
        for (i = 0; i + FX_LANES <= len; i += FX_LANES) {                               \
            FX_SIMD                                                                     \
            for (j = 0; j < FX_LANES; j++) {                                            \
                T v = xb[i + j];                                                        \
                mx[j] = v > mx[j] ? v : mx[j];                                          \
                nn[j] |= v != v;                                                        \
            }                                                                           \
        }                                                                               \
        for (j = 0; i + j < len; j++) {                                                 \
            T v = xb[i + j];                                                            \
            mx[j] = v > mx[j] ? v : mx[j];                                              \
            nn[j] |= v != v;                                                            \
        }                                                                               \
        for (w = FX_LANES / 2; w > 0; w /= 2)                                           \
            for (j = 0; j < w; j++) {                                                   \
                mx[j] = mx[j + w] > mx[j] ? mx[j + w] : mx[j];                          \
                nn[j] |= nn[j + w];                                                     \
            }                                                                           \
        T bm = mx[0];                                                                   \
        if (nn[0] || bm == -NEG_INF) { *m_out = bm; *s_out = NAN; return 1; }            \
        if (bm > m) {                                                                   \
            if (b > 0) s *= exp((double)m - (double)bm);                                \
            m = bm;                                                                     \
        }                                                                               \
        if (m == NEG_INF) continue;                                                     \
        for (i = 0; i + FX_LANES <= len; i += FX_LANES) {                               \
            FX_SIMD                                                                     \
            for (j = 0; j < FX_LANES; j++) acc[j] += (double)EXP(xb[i + j] - m);        \
        }                                                                               \
        for (j = 0; i + j < len; j++) acc[j] += (double)EXP(xb[i + j] - m);             \
        for (w = FX_LANES / 2; w > 0; w /= 2)                                           \
            for (j = 0; j < w; j++) acc[j] += acc[j + w];                               \
        s += acc[0];                                                                    \
    }                                                                                   \
    *m_out = m;                                                                         \
    *s_out = s;                                                                         \
    return m == NEG_INF;                                                                \
}
FX_DEFINE_ROW_STATS(fx_seg_stats_f32, float, fx_expf, -INFINITY)
FX_DEFINE_ROW_STATS(fx_seg_stats_f64, double, fx_exp, -(double)INFINITY)

/* sum(m - x) in double: the label-smoothing term (every term >= 0, no cancellation).
 * With a weight vector: sum(w * (m - x)). */
#define FX_DEFINE_ROW_GAP(NAME, T)                                                      \
static inline double NAME(const T *x, ptrdiff_t n, T m, const double *w)                 \
{                                                                                       \
    double acc = 0.0;                                                                   \
    if (w == NULL) {                                                                    \
        FX_SIMD_SUM(acc)                                                                \
        for (ptrdiff_t i = 0; i < n; i++) acc += (double)(m - x[i]);                    \
    } else {                                                                            \
        FX_SIMD_SUM(acc)                                                                \
        for (ptrdiff_t i = 0; i < n; i++) acc += w[i] * (double)(m - x[i]);             \
    }                                                                                   \
    return acc;                                                                         \
}
FX_DEFINE_ROW_GAP(fx_seg_gap_f32, float)
FX_DEFINE_ROW_GAP(fx_seg_gap_f64, double)

/*
 * Long rows are cut into segments of FX_SEG elements whose (max, sum) pairs are merged in
 * segment order.  This is the canonical definition for every row longer than FX_SEG, whether
 * its segments run on one thread or on several (a few long rows split across threads), so a
 * result never depends on the thread count.
 */
#define FX_SEG 65536
#define FX_DEFINE_ROW_LONG(NAME, MERGE, GAP, SEG_STATS, SEG_GAP, T, NEG_INF)            \
/* fold segment (mk, sk) into the running (m, s); a NaN sk poisons s */                 \
static inline void MERGE(T *m, double *s, T mk, double sk)                               \
{                                                                                       \
    if (sk != sk) { *s = NAN; return; }                                                 \
    if (mk == NEG_INF) return;                                                          \
    if (mk > *m) {                                                                      \
        if (*m != NEG_INF) *s *= exp((double)*m - (double)mk);                          \
        *m = mk;                                                                        \
        *s += sk;                                                                       \
    } else {                                                                            \
        *s += sk * exp((double)mk - (double)*m);                                        \
    }                                                                                   \
}                                                                                       \
static inline int NAME(const T *x, ptrdiff_t n, T *m_out, double *s_out)                 \
{                                                                                       \
    if (n <= FX_SEG) return SEG_STATS(x, n, m_out, s_out);                              \
    T m = NEG_INF, mk;                                                                  \
    double s = 0.0, sk;                                                                 \
    for (ptrdiff_t b = 0; b < n; b += FX_SEG) {                                         \
        SEG_STATS(x + b, n - b < FX_SEG ? n - b : FX_SEG, &mk, &sk);                    \
        MERGE(&m, &s, mk, sk);                                                          \
        if (s != s) break;                                                              \
    }                                                                                   \
    *m_out = m;                                                                         \
    *s_out = s;                                                                         \
    return (s != s) || m == NEG_INF;                                                    \
}                                                                                       \
static inline double GAP(const T *x, ptrdiff_t n, T m, const double *w)                  \
{                                                                                       \
    double acc = 0.0;                                                                   \
    for (ptrdiff_t b = 0; b < n; b += FX_SEG)                                           \
        acc += SEG_GAP(x + b, n - b < FX_SEG ? n - b : FX_SEG, m, w ? w + b : NULL);    \
    return acc;                                                                         \
}
FX_DEFINE_ROW_LONG(fx_row_stats_f32, fx_stats_merge_f32, fx_row_gap_f32, fx_seg_stats_f32,
                   fx_seg_gap_f32, float, -INFINITY)
FX_DEFINE_ROW_LONG(fx_row_stats_f64, fx_stats_merge_f64, fx_row_gap_f64, fx_seg_stats_f64,
                   fx_seg_gap_f64, double, -(double)INFINITY)

/* g = a * exp(x - m) - c * w   (w == NULL: g = a * exp(x - m) - c).  g may alias x. */
#define FX_DEFINE_ROW_GRAD(NAME, T, EXP)                                                \
static inline void NAME(const T *x, T *g, ptrdiff_t n, T m, T a, T c, const double *w)   \
{                                                                                       \
    if (w == NULL) {                                                                    \
        FX_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) g[i] = a * EXP(x[i] - m) - c;                 \
    } else {                                                                            \
        FX_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) g[i] = a * EXP(x[i] - m) - c * (T)w[i];       \
    }                                                                                   \
}
FX_DEFINE_ROW_GRAD(fx_row_grad_f32, float, fx_expf)
FX_DEFINE_ROW_GRAD(fx_row_grad_f64, double, fx_exp)

/* y = (x - m) - ls: log-softmax with ls = log(s); x - m is exact near the max */
#define FX_DEFINE_ROW_SHIFT(NAME, T)                                                    \
static inline void NAME(const T *x, T *y, ptrdiff_t n, T m, T ls)                        \
{                                                                                       \
    FX_SIMD                                                                             \
    for (ptrdiff_t i = 0; i < n; i++) y[i] = (x[i] - m) - ls;                           \
}
FX_DEFINE_ROW_SHIFT(fx_row_shift_f32, float)
FX_DEFINE_ROW_SHIFT(fx_row_shift_f64, double)

/* y = v (fill, for NaN rows) */
#define FX_DEFINE_ROW_FILL(NAME, T)                                                     \
static inline void NAME(T *y, ptrdiff_t n, T v)                                          \
{                                                                                       \
    for (ptrdiff_t i = 0; i < n; i++) y[i] = v;                                         \
}
FX_DEFINE_ROW_FILL(fx_row_fill_f32, float)
FX_DEFINE_ROW_FILL(fx_row_fill_f64, double)

/* strided gather / scatter of one row (for logits whose class axis is not contiguous) */
#define FX_DEFINE_ROW_COPY(GNAME, SNAME, T)                                             \
static inline void GNAME(const T *x, ptrdiff_t stride, ptrdiff_t n, T *buf)              \
{                                                                                       \
    for (ptrdiff_t i = 0; i < n; i++) buf[i] = x[i * stride];                           \
}                                                                                       \
static inline void SNAME(const T *buf, ptrdiff_t n, T *y, ptrdiff_t stride)              \
{                                                                                       \
    for (ptrdiff_t i = 0; i < n; i++) y[i * stride] = buf[i];                           \
}
FX_DEFINE_ROW_COPY(fx_row_gather_f32, fx_row_scatter_f32, float)
FX_DEFINE_ROW_COPY(fx_row_gather_f64, fx_row_scatter_f64, double)

/* ------------------------------------------------------------------ log, for s >= 1
 * (the sum of exps always holds exp(0) = 1).  log(s) = e*ln2 + 2*atanh(z), z = (f-1)/(f+1),
 * f in [sqrt(1/2), sqrt(2)): |z| <= 0.1716, so the odd series converges fast (float: 5 terms,
 * 2e-9 truncation; double: 11 terms, 6e-19).  Used once per row on the short-row path. */
static inline float fx_logf(float s)
{
    uint32_t b;
    memcpy(&b, &s, 4);
    int32_t e = (int32_t)((b >> 23) & 0xff) - 127;
    uint32_t fb = (b & 0x007fffffu) | 0x3f800000u;
    float f;
    memcpy(&f, &fb, 4);
    int big = f > 1.41421356f;
    f = big ? f * 0.5f : f;
    e += big;
    float z = (f - 1.0f) / (f + 1.0f), z2 = z * z;
    float p = 1.0f / 9.0f;
    p = p * z2 + 1.0f / 7.0f;
    p = p * z2 + 1.0f / 5.0f;
    p = p * z2 + 1.0f / 3.0f;
    p = p * z2 + 1.0f;
    return (float)e * 0.693147180559945309f + 2.0f * z * p;
}

static inline double fx_log(double s)
{
    /* as fx_logf, in the form log(f) = f1 - (h - t*(h + R)) with f1 = f - 1 (exact),
     * h = f1^2/2, t = f1/(2 + f1), R = sum_k 2 t^(2k) / (2k+1): under 1 ulp */
    uint64_t b;
    memcpy(&b, &s, 8);
    int64_t e = (int64_t)((b >> 52) & 0x7ff) - 1023;
    uint64_t fb = (b & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL;
    double f;
    memcpy(&f, &fb, 8);
    int64_t big = f > 1.4142135623730951;
    f = big ? f * 0.5 : f;
    e += big;
    double f1 = f - 1.0, h = 0.5 * f1 * f1;
    double t = f1 / (2.0 + f1), z = t * t;
    double R = 2.0 / 23.0;
    R = R * z + 2.0 / 21.0;
    R = R * z + 2.0 / 19.0;
    R = R * z + 2.0 / 17.0;
    R = R * z + 2.0 / 15.0;
    R = R * z + 2.0 / 13.0;
    R = R * z + 2.0 / 11.0;
    R = R * z + 2.0 / 9.0;
    R = R * z + 2.0 / 7.0;
    R = R * z + 2.0 / 5.0;
    R = R * z + 2.0 / 3.0;
    R = R * z;
    double de = (double)e;
    return de * 0.693147180369123816490 + ((f1 - (h - t * (h + R))) + de * 1.90821492927058770002e-10);
}

/*
 * Short rows (C <= FX_SHORT_C): the same log-sum-exp as fx_row_stats_*, vectorised across
 * rows instead of along one row, since a row of a few classes fills no vector.  For R rows
 * of C contiguous classes at row stride rs (elements): m[r] = max, ls[r] = log(sum(exp(x - m)))
 * (NaN for a NaN / +inf / all -inf row), is[r] = 1 / sum, xy[r] = x[r, y[r]].
 */
#define FX_SHORT_C 32
#define FX_SHORT_R 256
#define FX_DEFINE_SHORT_STATS(NAME, T, EXP, LOG, INF)                                   \
static inline void NAME(const T *x, ptrdiff_t rs, ptrdiff_t R, ptrdiff_t C,              \
                        const ptrdiff_t *y, T *m, T *ls, T *is, T *xy)                   \
{                                                                                       \
    T t[FX_SHORT_C * FX_SHORT_R];  /* the block transposed: t[c][r], all in L1 */        \
    T s[FX_SHORT_R];                                                                    \
    int nan[FX_SHORT_R];                                                                \
    for (ptrdiff_t r = 0; r < R; r++)                                                   \
        for (ptrdiff_t c = 0; c < C; c++) t[c * FX_SHORT_R + r] = x[r * rs + c];        \
    FX_SIMD                                                                             \
    for (ptrdiff_t r = 0; r < R; r++) {                                                 \
        T v = t[r];                                                                     \
        m[r] = v; nan[r] = v != v; s[r] = 0;                                            \
    }                                                                                   \
    for (ptrdiff_t c = 1; c < C; c++) {                                                 \
        const T *tc = t + c * FX_SHORT_R;                                               \
        FX_SIMD                                                                         \
        for (ptrdiff_t r = 0; r < R; r++) {                                             \
            T v = tc[r];                                                                \
            m[r] = v > m[r] ? v : m[r];                                                 \
            nan[r] |= v != v;                                                           \
        }                                                                               \
    }                                                                                   \
    for (ptrdiff_t c = 0; c < C; c++) {                                                 \
        const T *tc = t + c * FX_SHORT_R;                                               \
        FX_SIMD                                                                         \
        for (ptrdiff_t r = 0; r < R; r++) s[r] += EXP(tc[r] - m[r]);                    \
    }                                                                                   \
    FX_SIMD                                                                             \
    for (ptrdiff_t r = 0; r < R; r++) xy[r] = t[y[r] * FX_SHORT_R + r];                 \
    FX_SIMD                                                                             \
    for (ptrdiff_t r = 0; r < R; r++) {                                                 \
        int bad = nan[r] | (m[r] == INF) | (m[r] == -INF);                              \
        T l = LOG(s[r]);                                                                \
        ls[r] = bad ? (T)NAN : l;                                                       \
        is[r] = (T)1 / s[r];                                                            \
    }                                                                                   \
}
FX_DEFINE_SHORT_STATS(fx_short_stats_f32, float, fx_expf, fx_logf, INFINITY)
FX_DEFINE_SHORT_STATS(fx_short_stats_f64, double, fx_exp, fx_log, (double)INFINITY)

/* Short rows: g[r, c] = a[r] * exp(x[r, c] - m[r]) - cw[r] * (w ? w[c] : 1); g may alias x. */
#define FX_DEFINE_SHORT_GRAD(NAME, T, EXP)                                              \
static inline void NAME(const T *x, ptrdiff_t rs, T *g, ptrdiff_t gs, ptrdiff_t R,       \
                        ptrdiff_t C, const T *m, const T *a, const T *cw, const double *w) \
{                                                                                       \
    for (ptrdiff_t c = 0; c < C; c++) {                                                 \
        T wc = w ? (T)w[c] : (T)1;                                                      \
        FX_SIMD                                                                         \
        for (ptrdiff_t r = 0; r < R; r++)                                               \
            g[r * gs + c] = a[r] * EXP(x[r * rs + c] - m[r]) - cw[r] * wc;              \
    }                                                                                   \
}
FX_DEFINE_SHORT_GRAD(fx_short_grad_f32, float, fx_expf)
FX_DEFINE_SHORT_GRAD(fx_short_grad_f64, double, fx_exp)

/* SIMD level the kernels were compiled for (reported by show_config). */
static inline const char *fx_simd_level(void)
{
#if defined(__AVX512F__)
    return "AVX-512 (512-bit vectors)";
#elif defined(__AVX2__)
    return "AVX2 (256-bit vectors)";
#elif defined(__AVX__)
    return "AVX (256-bit vectors)";
#elif defined(__SSE2__)
    return "SSE2 (128-bit vectors)";
#elif defined(__ARM_NEON)
    return "NEON (128-bit vectors)";
#else
    return "scalar / compiler default";
#endif
}

#endif /* FASTXENT_ROWMATH_H */
