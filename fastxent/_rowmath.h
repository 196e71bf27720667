/*
 * fastxent row numerics: the SIMD inner loops over one contiguous row.
 *
 * Layer 1 of fastxent (see _rowmath.pxd for the Cython side).  Everything here is a
 * `static inline` function over a contiguous row that cannot fail, allocate or touch Python.
 * The loops are written so that gcc auto-vectorises them (`#pragma omp simd` supplies the
 * reassociation licence for the reductions, so no -ffast-math is needed and NaN/inf keep their
 * IEEE meaning).  This file holds the code base's only log-sum-exp (fx_row_stats_*).
 *
 * exp: Cody-Waite range reduction x = n*ln2 + r, |r| <= ln2/2, a polynomial for e^r (float:
 * Taylor degree 7, truncation 5e-9 relative; double: degree 11 through the Chebyshev nodes,
 * 2e-17), and 2^n built
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

/* ------------------------------------------------------------------ exp, float32
 * fx_expm1f_core: for a clamped x, returns q = e^r - 1 (the polynomial without its constant)
 * and the scale 2^n, x = n*ln2 + r; e^x = scale * (1 + q), e^x - 1 = scale * q + (scale - 1). */
static inline float fx_expm1f_core(float xc, float *scale)
{
    const float magic = 12582912.0f;            /* 1.5 * 2^23: rint by addition */
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
    int32_t ti;
    memcpy(&ti, &t, 4);
    uint32_t sb = ((uint32_t)(ti - 0x4B400000 + 127)) << 23;   /* bits(magic): n + bias */
    memcpy(scale, &sb, 4);
    return p * r;
}

static inline float fx_expf(float x)
{
    /* valid for x <= 88; every caller passes x <= 0 (x - max), -inf or NaN */
    float xc = x < -104.0f ? -104.0f : x;       /* NaN compares false: stays NaN */
    float scale;
    float q = fx_expm1f_core(xc, &scale);
    float y = (q + 1.0f) * scale;
    return xc < -87.3365447f ? 0.0f : y;        /* below FLT_MIN: flush to 0 */
}

/* ------------------------------------------------------------------ exp, float64 */
static inline double fx_expm1_core(double xc, double *scale)
{
    const double magic = 6755399441055744.0;    /* 1.5 * 2^52 */
    double t = xc * 1.4426950408889634074 + magic;
    double n = t - magic;
    double r = xc - n * 0.693147180369123816490;   /* ln2 hi (trailing zero bits) */
    r = r - n * 1.90821492927058770002e-10;         /* ln2 lo */
    /* (e^r - 1) / r as a degree-10 polynomial interpolating at the Chebyshev nodes of
     * [-ln2/2, ln2/2] (near-minimax: 2e-17 relative, against 4e-15 for Taylor's degree 10) */
    double p = 2.5105419192016337e-08;
    p = p * r + 2.7626633990293144e-07;
    p = p * r + 2.75572549134867e-06;
    p = p * r + 2.4801503680856384e-05;
    p = p * r + 0.00019841269875205077;
    p = p * r + 0.0013888888933014717;
    p = p * r + 0.008333333333326025;
    p = p * r + 0.041666666666571636;
    p = p * r + 0.1666666666666667;
    p = p * r + 0.5000000000000006;
    p = p * r + 1.0;
    int64_t ti;
    memcpy(&ti, &t, 8);
    uint64_t sb = ((uint64_t)(ti - 0x4338000000000000LL + 1023)) << 52;
    memcpy(scale, &sb, 8);
    return p * r;
}

static inline double fx_exp(double x)
{
    double xc = x < -746.0 ? -746.0 : x;
    double scale;
    double q = fx_expm1_core(xc, &scale);
    double y = (q + 1.0) * scale;
    return xc < -708.39641853226408 ? 0.0 : y;  /* below DBL_MIN: flush to 0 */
}

/*
 * Row statistics: m = max(x) and t = sum(exp(x - m)) - 1 accumulated in double (the sum s
 * minus the maximum's own 1, so log(s) = log1p(t) keeps tiny losses exact), one read of the row
 * from memory (blocks of FX_BLOCK elements: the block max is taken first, the block then
 * stays in L1 for the exp pass; when a block raises the running max the sum is rescaled once).
 * Returns 0 for a row whose log-sum-exp is finite; 1 otherwise: a NaN in the row (t = NaN),
 * a +inf and no NaN (m = t = +inf), every element -inf or n == 0 (m = -inf).
 * Softmax and cross-entropy give NaN for all three; logsumexp gives NaN, +inf, -inf.
 * log-sum-exp = m + log1p(t); softmax = exp(x - m) / (1 + t).
 * The reductions keep FX_LANES partial results (one vector) and combine them as a tree at
 * the end of a block, so a short row pays a few cycles, not a 16-step serial chain.
 */
#define FX_LANES 16
#if defined(__GNUC__) || defined(__clang__)
#define FX_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define FX_PREFETCH(p) ((void)0)
#endif
#define FX_CHUNK 128
#define FX_DEFINE_ROW_STATS(NAME, T, EXP, NEG_INF)                                      \
static inline int NAME(const T *x, ptrdiff_t n, T *m_out, double *s_out)                 \
{                                                                                       \
    T m = NEG_INF;                                                                      \
    double t = 0.0;                                                                     \
    for (ptrdiff_t b = 0; b < n; b += FX_BLOCK) {                                       \
        const T *xb = x + b;                                                            \
        ptrdiff_t len = n - b < FX_BLOCK ? n - b : FX_BLOCK, i, j, w;                   \
        T mx[FX_LANES];                                                                 \
        int nn[FX_LANES];                                                               \
        double acc[FX_LANES], cnt[FX_LANES];                                            \
        for (j = 0; j < FX_LANES; j++) {                                                \
            mx[j] = NEG_INF; nn[j] = 0; acc[j] = 0.0; cnt[j] = 0.0;                     \
        }                                                                               \
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
        if (nn[0] || bm == -NEG_INF) {                                                  \
            /* NaN: s = NaN.  +inf (and no NaN anywhere in the row): m = s = +inf */       \
            int nan_row = nn[0];                                                        \
            for (i = b + len; i < n && !nan_row; i++) nan_row = x[i] != x[i];           \
            *m_out = nan_row ? (T)NAN : bm;                                             \
            *s_out = nan_row ? NAN : (double)INFINITY;                                  \
            return 1;                                                                   \
        }                                                                               \
        T mn = bm > m ? bm : m;                                                         \
        if (mn == NEG_INF) continue;                                                    \
        /* the maximum's own exp(0) = 1 terms are counted apart (cnt), so that t holds    \
         * the rest of the sum to full relative precision (tiny losses stay exact) */    \
        /* FX_CHUNK elements are summed in T per lane (FX_CHUNK/FX_LANES terms each, a    \
         * few ulp), then added into the double accumulators */                         \
        for (i = 0; i + FX_CHUNK <= len; i += FX_CHUNK) {                               \
            T fa[FX_LANES], fc[FX_LANES];                                               \
            /* fetch the next block from memory while this one is computed */           \
            if (b + FX_BLOCK + i + FX_CHUNK <= n)                                       \
                for (ptrdiff_t q = 0; q < FX_CHUNK; q += 64 / (ptrdiff_t)sizeof(T))     \
                    FX_PREFETCH(xb + FX_BLOCK + i + q);                                 \
            FX_SIMD                                                                     \
            for (j = 0; j < FX_LANES; j++) {                                            \
                T a_ = 0, c_ = 0;                                                       \
                for (int u = 0; u < FX_CHUNK / FX_LANES; u++) {                         \
                    T d = xb[i + u * FX_LANES + j] - mn;                                \
                    T e = EXP(d);                                                       \
                    a_ += d == 0 ? (T)0 : e;                                            \
                    c_ += d == 0 ? (T)1 : (T)0;                                         \
                }                                                                       \
                fa[j] = a_;                                                             \
                fc[j] = c_;                                                             \
            }                                                                           \
            FX_SIMD                                                                     \
            for (j = 0; j < FX_LANES; j++) { acc[j] += (double)fa[j]; cnt[j] += (double)fc[j]; } \
        }                                                                               \
        for (; i + FX_LANES <= len; i += FX_LANES) {                                    \
            FX_SIMD                                                                     \
            for (j = 0; j < FX_LANES; j++) {                                            \
                T d = xb[i + j] - mn;                                                   \
                T e = EXP(d);                                                           \
                T keep = d == 0 ? (T)0 : e;                                             \
                T one = d == 0 ? (T)1 : (T)0;                                           \
                acc[j] += (double)keep;                                                 \
                cnt[j] += (double)one;                                                  \
            }                                                                           \
        }                                                                               \
        for (j = 0; i + j < len; j++) {                                                 \
            T d = xb[i + j] - mn;                                                       \
            T e = EXP(d);                                                               \
            acc[j] += d == 0 ? 0.0 : (double)e;                                         \
            cnt[j] += d == 0 ? 1.0 : 0.0;                                               \
        }                                                                               \
        for (w = FX_LANES / 2; w > 0; w /= 2)                                           \
            for (j = 0; j < w; j++) { acc[j] += acc[j + w]; cnt[j] += cnt[j + w]; }     \
        if (m == NEG_INF)                                                               \
            t = (cnt[0] - 1.0) + acc[0];                                                \
        else if (mn > m)                                                                \
            t = (1.0 + t) * exp((double)m - (double)mn) + (cnt[0] - 1.0) + acc[0];      \
        else                                                                            \
            t += cnt[0] + acc[0];                                                       \
        m = mn;                                                                         \
    }                                                                                   \
    *m_out = m;                                                                         \
    *s_out = t;                                                                         \
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
/* fold segment (mk, tk) into the running (m, t) (t = sum - 1); a NaN tk poisons t */   \
static inline void MERGE(T *m, double *t, T mk, double tk)                               \
{                                                                                       \
    if (tk != tk) { *t = NAN; return; }                                                 \
    if (*t != *t) return;                                                               \
    if (mk == -NEG_INF || *m == -NEG_INF) { *m = -NEG_INF; *t = INFINITY; return; }      \
    if (mk == NEG_INF) return;                                                          \
    if (*m == NEG_INF) { *m = mk; *t = tk; return; }                                    \
    if (mk > *m) {                                                                      \
        *t = (1.0 + *t) * exp((double)*m - (double)mk) + tk;                            \
        *m = mk;                                                                        \
    } else {                                                                            \
        *t += (1.0 + tk) * exp((double)mk - (double)*m);                                \
    }                                                                                   \
}                                                                                       \
static inline int NAME(const T *x, ptrdiff_t n, T *m_out, double *s_out)                 \
{                                                                                       \
    if (n <= FX_SEG) return SEG_STATS(x, n, m_out, s_out);                              \
    T m = NEG_INF, mk;                                                                  \
    double s = 0.0, sk;   /* s, sk: sums minus 1 (see above) */                          \
    for (ptrdiff_t b = 0; b < n; b += FX_SEG) {                                         \
        SEG_STATS(x + b, n - b < FX_SEG ? n - b : FX_SEG, &mk, &sk);                    \
        MERGE(&m, &s, mk, sk);                                                          \
        if (s != s) break;                                                              \
    }                                                                                   \
    *m_out = m;                                                                         \
    *s_out = s;                                                                         \
    return (s != s) || m == NEG_INF || m == -NEG_INF;                                   \
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

/*
 * The same gradient row written with non-temporal (streaming) stores: for a gradient much
 * larger than the caches, written once and not read back soon, this saves the read of every
 * destination line that a normal store costs (about a third of the memory traffic of loss +
 * gradient into a caller's out= buffer).  Computed FX_CHUNK elements at a time into an L1
 * buffer by the vectorised fx_row_grad, then streamed out.
 */
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#define FX_HAVE_STREAM 1
#else
#define FX_HAVE_STREAM 0
#endif
static inline void fx_stream_copy(void *dst, const void *src, ptrdiff_t bytes)
{
#if defined(__AVX512F__)
    for (ptrdiff_t i = 0; i < bytes; i += 64)
        _mm512_stream_si512((__m512i *)((char *)dst + i), _mm512_load_si512((const char *)src + i));
#elif defined(__AVX__)
    for (ptrdiff_t i = 0; i < bytes; i += 32)
        _mm256_stream_si256((__m256i *)((char *)dst + i), _mm256_load_si256((const __m256i *)((const char *)src + i)));
#else
    memcpy(dst, src, (size_t)bytes);
#endif
}

#define FX_DEFINE_ROW_GRAD_STREAM(NAME, GRAD, T)                                        \
static inline void NAME(const T *x, T *g, ptrdiff_t n, T m, T a, T c, const double *w)   \
{                                                                                       \
    T buf[FX_CHUNK] __attribute__((aligned(64)));                                      \
    ptrdiff_t i = 0;                                                                    \
    /* head: up to the first 64-byte aligned element of g */                            \
    ptrdiff_t head = (ptrdiff_t)(((64 - ((uintptr_t)g & 63)) & 63) / sizeof(T));        \
    if (!FX_HAVE_STREAM || ((uintptr_t)g % sizeof(T)) || head >= n) {                   \
        GRAD(x, g, n, m, a, c, w);                                                      \
        return;                                                                         \
    }                                                                                   \
    GRAD(x, g, head, m, a, c, w);                                                       \
    for (i = head; i + FX_CHUNK <= n; i += FX_CHUNK) {                                  \
        GRAD(x + i, buf, FX_CHUNK, m, a, c, w ? w + i : NULL);                          \
        fx_stream_copy(g + i, buf, FX_CHUNK * (ptrdiff_t)sizeof(T));                    \
    }                                                                                   \
    GRAD(x + i, g + i, n - i, m, a, c, w ? w + i : NULL);                               \
}
FX_DEFINE_ROW_GRAD_STREAM(fx_row_grad_stream_f32, fx_row_grad_f32, float)
FX_DEFINE_ROW_GRAD_STREAM(fx_row_grad_stream_f64, fx_row_grad_f64, double)

/* after streaming stores, before the data is handed to another thread or returned */
static inline void fx_store_fence(void)
{
#if FX_HAVE_STREAM
    _mm_sfence();
#endif
}

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
 * (as log1p of the sum without the maximum's own 1)
 * (NaN for a NaN / +inf / all -inf row), is[r] = 1 / sum, xy[r] = x[r, y[r]].
 */
#define FX_SHORT_C 32
#define FX_SHORT_R 256
#define FX_DEFINE_SHORT_STATS(NAME, T, EXP, LOG1P, INF)                                 \
static inline void NAME(const T *x, ptrdiff_t rs, ptrdiff_t R, ptrdiff_t C,              \
                        const ptrdiff_t *y, T *m, T *ls, T *is, T *xy)                   \
{                                                                                       \
    T tr[FX_SHORT_C * FX_SHORT_R];  /* the block transposed: tr[c][r], all in L1 */       \
    T t[FX_SHORT_R], cnt[FX_SHORT_R];                                                   \
    int nan[FX_SHORT_R];                                                                \
    for (ptrdiff_t r = 0; r < R; r++)                                                   \
        for (ptrdiff_t c = 0; c < C; c++) tr[c * FX_SHORT_R + r] = x[r * rs + c];       \
    FX_SIMD                                                                             \
    for (ptrdiff_t r = 0; r < R; r++) {                                                 \
        T v = tr[r];                                                                    \
        m[r] = v; nan[r] = v != v; t[r] = 0; cnt[r] = 0;                                \
    }                                                                                   \
    for (ptrdiff_t c = 1; c < C; c++) {                                                 \
        const T *tc = tr + c * FX_SHORT_R;                                              \
        FX_SIMD                                                                         \
        for (ptrdiff_t r = 0; r < R; r++) {                                             \
            T v = tc[r];                                                                \
            m[r] = v > m[r] ? v : m[r];                                                 \
            nan[r] |= v != v;                                                           \
        }                                                                               \
    }                                                                                   \
    for (ptrdiff_t c = 0; c < C; c++) {                                                 \
        const T *tc = tr + c * FX_SHORT_R;                                              \
        FX_SIMD                                                                         \
        for (ptrdiff_t r = 0; r < R; r++) {                                             \
            T d = tc[r] - m[r];                                                         \
            T e = EXP(d);                                                               \
            t[r] += d == 0 ? (T)0 : e;                                                  \
            cnt[r] += d == 0 ? (T)1 : (T)0;                                             \
        }                                                                               \
    }                                                                                   \
    FX_SIMD                                                                             \
    for (ptrdiff_t r = 0; r < R; r++) xy[r] = tr[y[r] * FX_SHORT_R + r];                \
    FX_SIMD                                                                             \
    for (ptrdiff_t r = 0; r < R; r++) {                                                 \
        int bad = nan[r] | (m[r] == INF) | (m[r] == -INF);                              \
        T l = LOG1P((cnt[r] - 1) + t[r]);                                               \
        ls[r] = bad ? (T)NAN : l;                                                       \
        is[r] = (T)1 / (cnt[r] + t[r]);                                                 \
    }                                                                                   \
}
/* log1p(u), u >= 0: log(1 + u) * u / ((1 + u) - 1) corrects the rounding of 1 + u */
static inline float fx_log1pf(float u)
{
    float w = 1.0f + u;
    float l = fx_logf(w) * (u / (w - 1.0f));
    return w == 1.0f ? u : l;
}
static inline double fx_log1p(double u)
{
    double w = 1.0 + u;
    double l = fx_log(w) * (u / (w - 1.0));
    return w == 1.0 ? u : l;
}
FX_DEFINE_SHORT_STATS(fx_short_stats_f32, float, fx_expf, fx_log1pf, INFINITY)
FX_DEFINE_SHORT_STATS(fx_short_stats_f64, double, fx_exp, fx_log1p, (double)INFINITY)

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

/* Short rows, per-row bookkeeping vectorised too: labels -> safe class indices (yi = y for a
 * valid label, 0 otherwise; valid = 0 <= y < C and y != ignore_index); returns the first row
 * (relative) whose label is out of range and not ignore_index, or -1. */
#define FX_DEFINE_SHORT_LABELS(NAME, L)                                                 \
static inline ptrdiff_t NAME(const char *t, ptrdiff_t ts, ptrdiff_t R, ptrdiff_t C,      \
                             ptrdiff_t ii, ptrdiff_t *yi, char *valid)                  \
{                                                                                       \
    int anybad = 0;                                                                     \
    FX_SIMD                                                                             \
    for (ptrdiff_t r = 0; r < R; r++) {                                                 \
        ptrdiff_t y = (ptrdiff_t)*(const L *)(t + r * ts);                              \
        int ok = (y >= 0) & (y < C) & (y != ii);                                        \
        valid[r] = (char)ok;                                                            \
        yi[r] = ok ? y : 0;                                                             \
        anybad |= !ok & (y != ii);                                                      \
    }                                                                                   \
    if (!anybad) return -1;                                                             \
    for (ptrdiff_t r = 0; r < R; r++) {                                                 \
        ptrdiff_t y = (ptrdiff_t)*(const L *)(t + r * ts);                              \
        if (!valid[r] && y != ii) return r;                                             \
    }                                                                                   \
    return -1;                                                                          \
}
FX_DEFINE_SHORT_LABELS(fx_short_labels_i32, int32_t)
FX_DEFINE_SHORT_LABELS(fx_short_labels_i64, int64_t)

/* Short rows, plain loss (no weights, smoothing or z-loss): loss[r] = (m - x[y]) + ls for a
 * valid row, 0 for an ignored one; returns the sum in double (fixed order) and the count. */
#define FX_DEFINE_SHORT_PLAIN(NAME, T)                                                  \
static inline double NAME(const T *m, const T *xy, const T *ls, const char *valid,       \
                          ptrdiff_t R, double *loss, double *count)                      \
{                                                                                       \
    double acc = 0.0, cnt = 0.0;                                                        \
    FX_PRAGMA(omp simd reduction(+:acc) reduction(+:cnt))                               \
    for (ptrdiff_t r = 0; r < R; r++) {                                                 \
        double l = ((double)m[r] - (double)xy[r]) + (double)ls[r];                      \
        l = valid[r] ? l : 0.0;                                                         \
        loss[r] = l;                                                                    \
        acc += l;                                                                       \
        cnt += valid[r] ? 1.0 : 0.0;                                                    \
    }                                                                                   \
    *count = cnt;                                                                       \
    return acc;                                                                         \
}
FX_DEFINE_SHORT_PLAIN(fx_short_plain_f32, float)
FX_DEFINE_SHORT_PLAIN(fx_short_plain_f64, double)

/* ------------------------------------------------------------------ soft targets
 * sp = sum(w * p), spg = sum(w * p * (m - x)) in double (w == NULL: unit weights). */
#define FX_DEFINE_ROW_SOFT(NAME, T)                                                     \
static inline void NAME(const T *x, const T *p, ptrdiff_t n, T m, const double *w,       \
                        double *sp, double *spg)                                        \
{                                                                                       \
    double a = 0.0, b = 0.0;                                                            \
    if (w == NULL) {                                                                    \
        FX_PRAGMA(omp simd reduction(+:a) reduction(+:b))                               \
        for (ptrdiff_t i = 0; i < n; i++) {                                             \
            a += (double)p[i];                                                          \
            b += (double)p[i] * (double)(m - x[i]);                                     \
        }                                                                               \
    } else {                                                                            \
        FX_PRAGMA(omp simd reduction(+:a) reduction(+:b))                               \
        for (ptrdiff_t i = 0; i < n; i++) {                                             \
            double wp = w[i] * (double)p[i];                                            \
            a += wp;                                                                    \
            b += wp * (double)(m - x[i]);                                               \
        }                                                                               \
    }                                                                                   \
    *sp = a;                                                                            \
    *spg = b;                                                                           \
}
FX_DEFINE_ROW_SOFT(fx_row_soft_f32, float)
FX_DEFINE_ROW_SOFT(fx_row_soft_f64, double)

/* soft-target gradient: g = a * exp(x - m) - w * (b * p + c); g may alias x. */
#define FX_DEFINE_ROW_GRAD_SOFT(NAME, T, EXP)                                           \
static inline void NAME(const T *x, const T *p, T *g, ptrdiff_t n, T m, T a, T b, T c,   \
                        const double *w)                                                \
{                                                                                       \
    if (w == NULL) {                                                                    \
        FX_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) g[i] = a * EXP(x[i] - m) - (b * p[i] + c);    \
    } else {                                                                            \
        FX_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                               \
            g[i] = a * EXP(x[i] - m) - (T)w[i] * (b * p[i] + c);                        \
    }                                                                                   \
}
FX_DEFINE_ROW_GRAD_SOFT(fx_row_grad_soft_f32, float, fx_expf)
FX_DEFINE_ROW_GRAD_SOFT(fx_row_grad_soft_f64, double, fx_exp)

/* ------------------------------------------------------------------ expm1 and tanh
 * expm1 from the same reduction and polynomial as fx_exp (fx_expm1*_core):
 * expm1(x) = 2^n * q(r) + (2^n - 1), q(r) = e^r - 1; exact (2^n - 1) for the n used here.
 * tanh(u) = -t / (2 + t) with t = expm1(-2|u|): no cancellation near 0.  For softcap. */
static inline float fx_expm1f_neg(float x)   /* x <= 0 */
{
    float scale;
    float q = fx_expm1f_core(x < -40.0f ? -40.0f : x, &scale);
    return scale * q + (scale - 1.0f);
}

static inline double fx_expm1_neg(double x)  /* x <= 0 */
{
    double scale;
    double q = fx_expm1_core(x < -60.0 ? -60.0 : x, &scale);
    return scale * q + (scale - 1.0);
}

static inline float fx_tanhf(float u)
{
    float au = u < 0 ? -u : u;
    float t = fx_expm1f_neg(-2.0f * au);
    float y = -t / (2.0f + t);
    return u < 0 ? -y : (u == u ? y : u);
}

static inline double fx_tanh(double u)
{
    double au = u < 0 ? -u : u;
    double t = fx_expm1_neg(-2.0 * au);
    double y = -t / (2.0 + t);
    return u < 0 ? -y : (u == u ? y : u);
}

/* ------------------------------------------------------------------ half precision
 * float16 <-> float32 by bit manipulation (branch-free, vectorises), bfloat16 by shifting.
 * Gradients written back to 16 bits round to nearest even. */
static inline float fx_f16_to_f32(uint16_t h)
{
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    uint32_t e = ((uint32_t)h >> 10) & 0x1fu, mant = (uint32_t)h & 0x3ffu;
    uint32_t normal = ((e + 112u) << 23) | (mant << 13);
    uint32_t special = 0x7f800000u | (mant << 13);
    uint32_t bits = e == 31u ? special : normal;
    float f;
    memcpy(&f, &bits, 4);
    float sub = (float)mant * 5.9604644775390625e-8f;   /* 2^-24 */
    f = e == 0u ? sub : f;
    uint32_t fb;
    memcpy(&fb, &f, 4);
    fb |= sign;
    memcpy(&f, &fb, 4);
    return f;
}

static inline uint16_t fx_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);           /* NaN */
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);          /* overflow: inf */
    if (ax < 0x38800000u) {                                             /* half subnormal */
        float af;
        memcpy(&af, &ax, 4);
        return (uint16_t)(sign | (uint32_t)rintf(af * 16777216.0f));   /* units of 2^-24 */
    }
    uint32_t r = ax - 0x38000000u;                                      /* rebias 127 -> 15 */
    r = r + 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

static inline float fx_bf16_to_f32(uint16_t h)
{
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static inline uint16_t fx_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);   /* NaN */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* ------------------------------------------------------------------ row load / store
 * The buffered path of the kernels: a row of any supported dtype (FX_DT_*) and stride is
 * loaded into a contiguous float/double buffer, with the logit transform applied on the way
 * (z' = scale * x, then cap * tanh(z' / cap) when cap > 0); the gradient is stored back with
 * the chain rule (dz'/dx = scale * (1 - (z'/cap)^2)) and converted to the output dtype. */
enum { FX_DT_F32 = 0, FX_DT_F64 = 1, FX_DT_F16 = 2, FX_DT_BF16 = 3 };

static inline void fx_load_f32(const char *src, ptrdiff_t cs, int dt, ptrdiff_t n, float scale,
                               float cap, float *buf)
{
    ptrdiff_t i;
    if (dt == FX_DT_F32) {
        for (i = 0; i < n; i++) buf[i] = *(const float *)(src + i * cs);
    } else if (dt == FX_DT_F16) {
        FX_SIMD
        for (i = 0; i < n; i++) buf[i] = fx_f16_to_f32(*(const uint16_t *)(src + i * cs));
    } else {
        FX_SIMD
        for (i = 0; i < n; i++) buf[i] = fx_bf16_to_f32(*(const uint16_t *)(src + i * cs));
    }
    if (scale != 1.0f) {
        FX_SIMD
        for (i = 0; i < n; i++) buf[i] *= scale;
    }
    if (cap > 0.0f) {
        float ic = 1.0f / cap;
        FX_SIMD
        for (i = 0; i < n; i++) buf[i] = cap * fx_tanhf(buf[i] * ic);
    }
}

static inline void fx_load_f64(const char *src, ptrdiff_t cs, int dt, ptrdiff_t n, double scale,
                               double cap, double *buf)
{
    ptrdiff_t i;
    (void)dt;
    for (i = 0; i < n; i++) buf[i] = *(const double *)(src + i * cs);
    if (scale != 1.0) {
        FX_SIMD
        for (i = 0; i < n; i++) buf[i] *= scale;
    }
    if (cap > 0.0) {
        double ic = 1.0 / cap;
        FX_SIMD
        for (i = 0; i < n; i++) buf[i] = cap * fx_tanh(buf[i] * ic);
    }
}

static inline void fx_store_f32(float *g, const float *z, ptrdiff_t n, float scale, float cap,
                                char *dst, ptrdiff_t cs, int dt)
{
    ptrdiff_t i;
    if (cap > 0.0f) {
        float ic = 1.0f / cap;
        FX_SIMD
        for (i = 0; i < n; i++) { float u = z[i] * ic; g[i] *= scale * (1.0f - u * u); }
    } else if (scale != 1.0f) {
        FX_SIMD
        for (i = 0; i < n; i++) g[i] *= scale;
    }
    if (dt == FX_DT_F32) {
        for (i = 0; i < n; i++) *(float *)(dst + i * cs) = g[i];
    } else if (dt == FX_DT_F16) {
        for (i = 0; i < n; i++) *(uint16_t *)(dst + i * cs) = fx_f32_to_f16(g[i]);
    } else {
        FX_SIMD
        for (i = 0; i < n; i++) *(uint16_t *)(dst + i * cs) = fx_f32_to_bf16(g[i]);
    }
}

static inline void fx_store_f64(double *g, const double *z, ptrdiff_t n, double scale, double cap,
                                char *dst, ptrdiff_t cs, int dt)
{
    ptrdiff_t i;
    (void)dt;
    if (cap > 0.0) {
        double ic = 1.0 / cap;
        FX_SIMD
        for (i = 0; i < n; i++) { double u = z[i] * ic; g[i] *= scale * (1.0 - u * u); }
    } else if (scale != 1.0) {
        FX_SIMD
        for (i = 0; i < n; i++) g[i] *= scale;
    }
    for (i = 0; i < n; i++) *(double *)(dst + i * cs) = g[i];
}

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

/* =====================================================================================
 * probability family  (fastxent/_probs.pyx; owned by the probability-family kernels)
 *
 * Element functions valid for every input, and the loops over contiguous chunks of the
 * probability-space losses.  Each loop sums its terms in double (`omp simd reduction`, a fixed
 * order for a given build, independent of the thread count) and ORs an "invalid input" flag.
 *   fx_plog*    log(x) for every x: 0 -> -inf, subnormals exact, +inf -> +inf, x < 0 / NaN -> NaN
 *   fx_pexp*    exp(x) for every x (overflow -> +inf; below the smallest normal -> 0)
 *   fx_plog1p*  log1p(u) for every u (-1 -> -inf, u < -1 -> NaN)
 * ===================================================================================== */
#ifndef FASTXENT_ROWMATH_PROBS_H
#define FASTXENT_ROWMATH_PROBS_H

static inline float fx_plogf(float x)
{
    int sub = x < 1.17549435e-38f;                  /* subnormal (also 0, negative) */
    float r = fx_logf(sub ? x * 8388608.0f : x);    /* 2^23 */
    r = sub ? r - 15.9423851528787421f : r;         /* 23 ln 2 */
    r = x > 0.0f ? r : (x == 0.0f ? -INFINITY : NAN);
    return x == INFINITY ? x : r;
}

static inline double fx_plog(double x)
{
    int sub = x < 2.2250738585072014e-308;
    double r = fx_log(sub ? x * 4503599627370496.0 : x);   /* 2^52 */
    r = sub ? r - 36.043653389117154 : r;                   /* 52 ln 2 */
    r = x > 0.0 ? r : (x == 0.0 ? -(double)INFINITY : (double)NAN);
    return x == (double)INFINITY ? x : r;
}

/* fx_expf is valid up to 88: above, exp(x) = exp(x / 2)^2 (x / 2 is exact) */
static inline float fx_pexpf(float x)
{
    int hi = x > 88.0f;
    float y = fx_expf(hi ? x * 0.5f : x);
    y = hi ? y * y : y;
    return x > 88.7228394f ? INFINITY : y;
}

static inline double fx_pexp(double x)
{
    int hi = x > 709.0;
    double y = fx_exp(hi ? x * 0.5 : x);
    y = hi ? y * y : y;
    return x > 709.782712893384 ? (double)INFINITY : y;
}

/* log1p(u) = log(w) * u / (w - 1), w = 1 + u: corrects the rounding of 1 + u (Goldberg) */
static inline float fx_plog1pf(float u)
{
    float w = 1.0f + u;
    float l = fx_plogf(w) * (u / (w - 1.0f));
    l = w == 1.0f ? u : l;
    return u == INFINITY ? u : l;
}

static inline double fx_plog1p(double u)
{
    double w = 1.0 + u;
    double l = fx_plog(w) * (u / (w - 1.0));
    l = w == 1.0 ? u : l;
    return u == (double)INFINITY ? u : l;
}

/* 1 where x is not a positive normal finite number (0, subnormal, inf, NaN, x < 0), i.e. where
 * the fast logs fx_logf / fx_log (exact on positive normal numbers only) cannot be used. */
static inline int fx_abnormalf(float x)
{
    uint32_t b;
    memcpy(&b, &x, 4);
    return (b - 0x00800000u) >= 0x7f000000u;
}

static inline int fx_abnormal(double x)
{
    uint64_t b;
    memcpy(&b, &x, 8);
    return (b - 0x0010000000000000ULL) >= 0x7fe0000000000000ULL;
}

static inline int fx_nocheck(double x)
{
    (void)x;
    return 0;
}

/* ------------------------------------------------ loops over n contiguous elements
 * Blocks of FX_PBLK elements: a block is computed with the fast log / exp while a flag records
 * whether any argument needs the full-range functions (0, subnormal, inf, NaN, negative, an
 * exp above its range); only then is the block (still in L1) computed again with fx_plog* /
 * fx_pexp*.  The row-wise losses write one term per element (double) into t; the kernels sum
 * the terms of a row with fx_dsum (rows of any length, in a fixed order: the result depends on
 * the data only, never on the thread count).
 *
 * xlogq_terms:  t = p * log(clip(q, lo, hi)), 0 where p == 0; bad: p < 0 or q < 0.
 * xlogq_grad:   g = a * p / q where lo <= q <= hi and p != 0, else 0 (the clip's derivative);
 *               NaN q or p gives NaN.
 * xlogx_terms:  t = p * log(p), 0 log 0 = 0; bad: p < 0.
 * kl_terms:     t = p * (log p - log q) (0 where p == 0); mode bit 1: q holds log q, bit 2: p
 *               holds log p (then p = exp(lp)); bad: a negative probability given as one. */
#define FX_PBLK 512
#define FX_BLOCKS(FAST, SLOW)                                                           \
    for (ptrdiff_t k = 0; k < n; k += FX_PBLK) {                                        \
        ptrdiff_t m = n - k < FX_PBLK ? n - k : FX_PBLK;                                \
        int sp = 0;                                                                     \
        FAST                                                                            \
        if (sp) {                                                                       \
            SLOW                                                                        \
        }                                                                               \
    }
#define FX_XLOGQ_BODY(T, LOG, CHK)                                                      \
    FX_PRAGMA(omp simd reduction(|:b) reduction(|:sp))                                  \
    for (ptrdiff_t i = k; i < k + m; i++) {                                             \
        T pi = p[i], qi = q[i];                                                         \
        b |= (pi < 0) | (qi < 0);                                                       \
        T qc = qi < lo ? lo : qi;                                                       \
        qc = qc > hi ? hi : qc;                                                         \
        sp |= CHK(qc);                                                                  \
        double v = (double)pi * (double)LOG(qc);                                        \
        t[i] = pi == 0 ? 0.0 : v;                                                       \
    }
#define FX_XLOGX_BODY(T, LOG, CHK)                                                      \
    FX_PRAGMA(omp simd reduction(|:b) reduction(|:sp))                                  \
    for (ptrdiff_t i = k; i < k + m; i++) {                                             \
        T pi = p[i];                                                                    \
        b |= pi < 0;                                                                    \
        sp |= CHK(pi) & (pi != 0);                                                      \
        double v = (double)pi * (double)LOG(pi);                                        \
        t[i] = pi == 0 ? 0.0 : v;                                                       \
    }
#define FX_KL_BODY(T, LOG, EXP, CHK, EXPMAX)                                            \
    if (mode == 0) {                                                                    \
        FX_PRAGMA(omp simd reduction(|:b) reduction(|:sp))                              \
        for (ptrdiff_t i = k; i < k + m; i++) {                                         \
            T pi = p[i], qi = q[i];                                                     \
            b |= (pi < 0) | (qi < 0);                                                   \
            sp |= (CHK(pi) | CHK(qi)) & (pi != 0);                                      \
            double v = (double)pi * ((double)LOG(pi) - (double)LOG(qi));                \
            t[i] = pi == 0 ? 0.0 : v;                                                   \
        }                                                                               \
    } else if (mode == 1) {                                                             \
        FX_PRAGMA(omp simd reduction(|:b) reduction(|:sp))                              \
        for (ptrdiff_t i = k; i < k + m; i++) {                                         \
            T pi = p[i];                                                                \
            b |= pi < 0;                                                                \
            sp |= CHK(pi) & (pi != 0);                                                  \
            double v = (double)pi * ((double)LOG(pi) - (double)q[i]);                   \
            t[i] = pi == 0 ? 0.0 : v;                                                   \
        }                                                                               \
    } else if (mode == 2) {                                                             \
        FX_PRAGMA(omp simd reduction(|:b) reduction(|:sp))                              \
        for (ptrdiff_t i = k; i < k + m; i++) {                                         \
            T lp = p[i], qi = q[i];                                                     \
            T pe = EXP(lp);                                                             \
            b |= qi < 0;                                                                \
            sp |= (lp > EXPMAX) | (CHK(qi) & (pe != 0));                                \
            double v = (double)pe * ((double)lp - (double)LOG(qi));                     \
            t[i] = pe == 0 ? 0.0 : v;                                                   \
        }                                                                               \
    } else {                                                                            \
        FX_PRAGMA(omp simd reduction(|:sp))                                             \
        for (ptrdiff_t i = k; i < k + m; i++) {                                         \
            T lp = p[i];                                                                \
            T pe = EXP(lp);                                                             \
            sp |= lp > EXPMAX;                                                          \
            double v = (double)pe * ((double)lp - (double)q[i]);                        \
            t[i] = pe == 0 ? 0.0 : v;                                                   \
        }                                                                               \
    }
#define FX_DEFINE_PROBS_ROWS(SFX, T, FLOG, PLOG, FEXP, PEXP, ABN, EXPMAX)               \
static inline void fx_xlogq_terms_##SFX(const T *p, const T *q, ptrdiff_t n, T lo, T hi,  \
                                        double *t, int *bad)                            \
{                                                                                       \
    int b = 0;                                                                          \
    FX_BLOCKS(FX_XLOGQ_BODY(T, FLOG, ABN), FX_XLOGQ_BODY(T, PLOG, fx_nocheck))          \
    *bad |= b;                                                                          \
}                                                                                       \
static inline void fx_xlogq_grad_##SFX(const T *p, const T *q, ptrdiff_t n, T lo, T hi,  \
                                       T a, T *g)                                       \
{                                                                                       \
    FX_SIMD                                                                             \
    for (ptrdiff_t i = 0; i < n; i++) {                                                 \
        T pi = p[i], qi = q[i];                                                         \
        T v = a * pi / qi;                                                              \
        g[i] = (qi < lo) | (qi > hi) | (pi == 0) ? (T)0 : v;                            \
    }                                                                                   \
}                                                                                       \
static inline void fx_xlogx_terms_##SFX(const T *p, ptrdiff_t n, double *t, int *bad)    \
{                                                                                       \
    int b = 0;                                                                          \
    FX_BLOCKS(FX_XLOGX_BODY(T, FLOG, ABN), FX_XLOGX_BODY(T, PLOG, fx_nocheck))          \
    *bad |= b;                                                                          \
}                                                                                       \
static inline void fx_kl_terms_##SFX(const T *p, const T *q, ptrdiff_t n, int mode,       \
                                     double *t, int *bad)                               \
{                                                                                       \
    int b = 0;                                                                          \
    FX_BLOCKS(FX_KL_BODY(T, FLOG, FEXP, ABN, EXPMAX),                                   \
              FX_KL_BODY(T, PLOG, PEXP, fx_nocheck, EXPMAX))                            \
    *bad |= b;                                                                          \
}
FX_DEFINE_PROBS_ROWS(f32, float, fx_logf, fx_plogf, fx_expf, fx_pexpf, fx_abnormalf, 88.0f)
FX_DEFINE_PROBS_ROWS(f64, double, fx_log, fx_plog, fx_exp, fx_pexp, fx_abnormal, 709.0)

/* sum of n doubles (a row's terms), vectorised: a fixed order for a given n */
static inline double fx_dsum(const double *t, ptrdiff_t n)
{
    double a = 0.0;
    FX_SIMD_SUM(a)
    for (ptrdiff_t i = 0; i < n; i++) a += t[i];
    return a;
}

/* fill y[0..n) with v (labels: rows of ones as the targets' probabilities) */
#define FX_DEFINE_PFILL(NAME, T)                                                        \
static inline void NAME(T *y, ptrdiff_t n, T v)                                          \
{                                                                                       \
    for (ptrdiff_t i = 0; i < n; i++) y[i] = v;                                         \
}
FX_DEFINE_PFILL(fx_pfill_f32, float)
FX_DEFINE_PFILL(fx_pfill_f64, double)

/* log1p(u) for 0 <= u <= 1 (softplus): 2 atanh(z), z = u / (2 + u) in [0, 1/3], odd series
 * (float: 7 terms, truncation 1e-8; double: 18 terms, 4e-18); exact for tiny u, one division. */
static inline float fx_log1p_unitf(float u)
{
    float z = u / (2.0f + u), z2 = z * z;
    float p = 1.0f / 13.0f;
    p = p * z2 + 1.0f / 11.0f;
    p = p * z2 + 1.0f / 9.0f;
    p = p * z2 + 1.0f / 7.0f;
    p = p * z2 + 1.0f / 5.0f;
    p = p * z2 + 1.0f / 3.0f;
    p = p * z2 + 1.0f;
    return 2.0f * z * p;
}

static inline double fx_log1p_unit(double u)
{
    double z = u / (2.0 + u), z2 = z * z;
    double p = 1.0 / 35.0;
    p = p * z2 + 1.0 / 33.0;
    p = p * z2 + 1.0 / 31.0;
    p = p * z2 + 1.0 / 29.0;
    p = p * z2 + 1.0 / 27.0;
    p = p * z2 + 1.0 / 25.0;
    p = p * z2 + 1.0 / 23.0;
    p = p * z2 + 1.0 / 21.0;
    p = p * z2 + 1.0 / 19.0;
    p = p * z2 + 1.0 / 17.0;
    p = p * z2 + 1.0 / 15.0;
    p = p * z2 + 1.0 / 13.0;
    p = p * z2 + 1.0 / 11.0;
    p = p * z2 + 1.0 / 9.0;
    p = p * z2 + 1.0 / 7.0;
    p = p * z2 + 1.0 / 5.0;
    p = p * z2 + 1.0 / 3.0;
    return 2.0 * z + 2.0 * z * z2 * p;
}

/* ------------------------------------------------ binary cross-entropy (n contiguous)
 * On probabilities, as torch:  l = w * ((y - 1) * max(log1p(-p), -100) - y * max(log p, -100)),
 *   bad: p or y outside [0, 1] (NaN included);  grad = f * (p - y) / max((1 - p) p, 1e-12)
 *   (1e-12 as a float, as torch, for both dtypes).  Blocks as above (fast logs unless p or 1 - p
 *   is 0 / subnormal / NaN).
 * On logits, the stable form  l = w * ((1 - y) sp(x) + pw y sp(-x)),  sp(x) = log(1 + e^x)
 *   = max(x, 0) + log1p(e^-|x|) (one exp and one log1p_unit per element, no overflow; a term
 *   whose coefficient is 0 is 0, so infinite logits give the loss's limit);
 *   grad = f * ((1 - y) sigmoid(x) - pw y sigmoid(-x)).  pw == NULL: pos_weight 1.
 * The loss of each element, times ls, is stored in loss[i]; the sum (unscaled) is returned.
 * f is the gradient factor (weight * grad_output); g may alias p / x. */
#define FX_BLOCKS_SUM(FAST, SLOW)                                                       \
    for (ptrdiff_t k = 0; k < n; k += FX_PBLK) {                                        \
        ptrdiff_t m = n - k < FX_PBLK ? n - k : FX_PBLK;                                \
        double a = 0.0;                                                                 \
        int sp = 0;                                                                     \
        FAST                                                                            \
        if (sp) {                                                                       \
            a = 0.0;                                                                    \
            SLOW                                                                        \
        }                                                                               \
        acc += a;                                                                       \
    }
#define FX_BCE_BODY(T, LOG, LOG1P, CHK)                                                 \
    FX_PRAGMA(omp simd reduction(+:a) reduction(|:b) reduction(|:sp))                   \
    for (ptrdiff_t i = k; i < k + m; i++) {                                             \
        T pi = p[i], yi = y[i];                                                         \
        b |= !((pi >= 0) & (pi <= 1) & (yi >= 0) & (yi <= 1));                          \
        sp |= CHK(pi) | CHK(1 - pi);                                                    \
        T lp = LOG(pi), lq = LOG1P(-pi);                                                \
        lp = lp > (T)-100 ? lp : (T)-100;                                               \
        lq = lq > (T)-100 ? lq : (T)-100;                                               \
        T l = w[i] * ((yi - 1) * lq - yi * lp);                                         \
        loss[i] = l * ls;                                                               \
        a += (double)l;                                                                 \
    }
#define FX_DEFINE_BINARY(SFX, T, FLOG, PLOG, FLOG1P, PLOG1P, SOFTLOG1P, EXP, ABN)       \
static inline double fx_bce_##SFX(const T *p, const T *y, const T *w, ptrdiff_t n, T ls, \
                                  T *loss, int *bad)                                    \
{                                                                                       \
    double acc = 0.0;                                                                   \
    int b = 0;                                                                          \
    FX_BLOCKS_SUM(FX_BCE_BODY(T, FLOG, FLOG1P, ABN),                                    \
                  FX_BCE_BODY(T, PLOG, PLOG1P, fx_nocheck))                             \
    *bad |= b;                                                                          \
    return acc;                                                                         \
}                                                                                       \
static inline void fx_bce_grad_##SFX(const T *p, const T *y, const T *f, ptrdiff_t n,   \
                                     T gs, T *g)                                        \
{                                                                                       \
    FX_SIMD                                                                             \
    for (ptrdiff_t i = 0; i < n; i++) {                                                 \
        T pi = p[i];                                                                    \
        T d = (1 - pi) * pi;                                                            \
        d = d > (T)1e-12f ? d : (T)1e-12f;                                              \
        g[i] = gs * f[i] * (pi - y[i]) / d;                                             \
    }                                                                                   \
}                                                                                       \
static inline double fx_bcel_##SFX(const T *x, const T *y, const T *w, const T *pw,     \
                                   ptrdiff_t n, T ls, T *loss)                          \
{                                                                                       \
    double acc = 0.0;                                                                   \
    if (pw == NULL) {                                                                   \
        FX_SIMD_SUM(acc)                                                                \
        for (ptrdiff_t i = 0; i < n; i++) {                                             \
            T xi = x[i], yi = y[i];                                                     \
            T ax = xi < 0 ? -xi : xi;                                                   \
            T l1 = SOFTLOG1P(EXP(-ax));                                                 \
            T spp = (xi > 0 ? xi : (T)0) + l1, spn = (xi < 0 ? -xi : (T)0) + l1;        \
            T a = 1 - yi;                                                               \
            T l = w[i] * ((a == 0 ? (T)0 : a * spp) + (yi == 0 ? (T)0 : yi * spn));     \
            loss[i] = l * ls;                                                           \
            acc += (double)l;                                                           \
        }                                                                               \
    } else {                                                                            \
        FX_SIMD_SUM(acc)                                                                \
        for (ptrdiff_t i = 0; i < n; i++) {                                             \
            T xi = x[i], yi = y[i];                                                     \
            T ax = xi < 0 ? -xi : xi;                                                   \
            T l1 = SOFTLOG1P(EXP(-ax));                                                 \
            T spp = (xi > 0 ? xi : (T)0) + l1, spn = (xi < 0 ? -xi : (T)0) + l1;        \
            T a = 1 - yi, c = pw[i] * yi;                                               \
            T l = w[i] * ((a == 0 ? (T)0 : a * spp) + (c == 0 ? (T)0 : c * spn));       \
            loss[i] = l * ls;                                                           \
            acc += (double)l;                                                           \
        }                                                                               \
    }                                                                                   \
    return acc;                                                                         \
}                                                                                       \
static inline void fx_bcel_grad_##SFX(const T *x, const T *y, const T *f, const T *pw,  \
                                      ptrdiff_t n, T gs, T *g)                          \
{                                                                                       \
    if (pw == NULL) {                                                                   \
        FX_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) {                                             \
            T xi = x[i], yi = y[i];                                                     \
            T ax = xi < 0 ? -xi : xi;                                                   \
            T e = EXP(-ax), s = 1 / (1 + e);                                            \
            T sp = xi >= 0 ? s : e * s, sn = xi >= 0 ? e * s : s;                       \
            g[i] = gs * f[i] * ((1 - yi) * sp - yi * sn);                               \
        }                                                                               \
    } else {                                                                            \
        FX_SIMD                                                                         \
        for (ptrdiff_t i = 0; i < n; i++) {                                             \
            T xi = x[i], yi = y[i];                                                     \
            T ax = xi < 0 ? -xi : xi;                                                   \
            T e = EXP(-ax), s = 1 / (1 + e);                                            \
            T sp = xi >= 0 ? s : e * s, sn = xi >= 0 ? e * s : s;                       \
            g[i] = gs * f[i] * ((1 - yi) * sp - pw[i] * yi * sn);                       \
        }                                                                               \
    }                                                                                   \
}
/* FLOG1P: the fast log1p of the lead section (fx_log1pf / fx_log1p: 1 + u positive normal) */
FX_DEFINE_BINARY(f32, float, fx_logf, fx_plogf, fx_log1pf, fx_plog1pf, fx_log1p_unitf, fx_expf,
                 fx_abnormalf)
FX_DEFINE_BINARY(f64, double, fx_log, fx_plog, fx_log1p, fx_plog1p, fx_log1p_unit, fx_exp,
                 fx_abnormal)

#endif /* FASTXENT_ROWMATH_PROBS_H  (end of the probability family) */
