/*
 * fastxent C numerics, part 0: what every other header shares.
 *
 * The row numerics of fastxent are plain C (static inline functions over one row or one block
 * of rows) so that gcc vectorises them predictably; `#pragma omp simd` gives the reassociation
 * licence for reductions, so no -ffast-math is needed and NaN/inf keep their IEEE meaning.
 *
 *   fx_common.h    shared types: array views, option structs, named constants     (this file)
 *   fx_math.h      scalar element functions: exp, expm1, log, log1p, tanh, 16-bit floats
 *   fx_lse.h       the log-sum-exp variants, side by side (template, one per float type)
 *   fx_xent.h      the per-row cross-entropy formula and the row/block loops (template)
 *   fx_probs.h     the probability-space losses (template)
 *   fx_score.h     the scoring statistics of a row: loss, rank of the label, confidence, Brier
 *   _rowmath.h     includes the above, instantiating each template for float and double
 */
#ifndef FASTXENT_FX_COMMON_H
#define FASTXENT_FX_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>

#define FX_PRAGMA(x) _Pragma(#x)
#if defined(_OPENMP) || defined(FASTXENT_OMP_SIMD)
#define FX_SIMD FX_PRAGMA(omp simd)
#define FX_SIMD_SUM(v) FX_PRAGMA(omp simd reduction(+:v))
#else
#define FX_SIMD
#define FX_SIMD_SUM(v)
#endif

/* the scalar math of fx_math.h: always inlined, so that every loop calling it vectorizes (a
 * large kernel body can exhaust the compiler's inlining budget, and a call stops a loop from
 * vectorizing) */
#if defined(__GNUC__) || defined(__clang__)
#define FX_MATH static inline __attribute__((always_inline))
#else
#define FX_MATH static inline
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FX_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define FX_PREFETCH(p) ((void)0)
#endif

/* ------------------------------------------------------------------ sizes
 * FX_BLOCK: elements per block of the online max / sum (8 KiB of float32: stays in L1).
 * FX_LANES: partial results kept per reduction (one 512-bit vector of float32).
 * FX_CHUNK: elements summed in the row's own precision before adding into double.
 * FX_SEG:   long rows are cut into segments of this many elements, merged in order; the
 *           canonical definition for every row longer than FX_SEG, whether its segments run
 *           on one thread or several, so results never depend on the thread count.
 * FX_SHORT_C / FX_SHORT_R: rows of at most FX_SHORT_C classes are computed FX_SHORT_R at a
 *           time, vectorised across rows (a row of a few classes fills no vector). */
enum {
    FX_BLOCK = 2048,
    FX_LANES = 16,
    FX_CHUNK = 128,
    FX_SEG = 65536,
    FX_SHORT_C = 32,
    FX_SHORT_R = 256,
};

/* element types of arrays the kernels read (logits may be 16-bit floats) */
enum { FX_DT_F32 = 0, FX_DT_F64 = 1, FX_DT_F16 = 2, FX_DT_BF16 = 3 };

/* what the log-sum-exp family writes */
enum { FX_LSE_LOGSUMEXP = 0, FX_LSE_LOG_SOFTMAX = 1, FX_LSE_SOFTMAX = 2 };

/* what a cross-entropy row holds: logits (softmax taken) or log-probabilities (nll_loss) */
enum { FX_INPUT_LOGITS = 0, FX_INPUT_LOGPROBS = 1 };

/* ------------------------------------------------------------------ array views
 * An array seen as rows of C elements: row i is (i / D, i % D) of an (A, D, C) view, so
 * PyTorch's (N, C, d1, ...) layout needs no transposed copy; every stride is in bytes.  A view
 * with base NULL is an absent operand.  (R, K) element grids of the elementwise kernels are
 * views with D = 1 (s0: row stride, cs: element stride). */
typedef struct fx_view {
    char *base;         /* element (0, 0) */
    ptrdiff_t s0, s1;   /* strides of the two row indices */
    ptrdiff_t D;        /* length of the inner row index (1 for 2-D input) */
    ptrdiff_t cs;       /* stride of the class (element) axis */
    int dt;             /* FX_DT_* element type */
    int isz;            /* item size */
} fx_view;

static inline char *fx_row(const fx_view *a, ptrdiff_t i)
{
    if (a->D == 1)
        return a->base + i * a->s0;
    return a->base + (i / a->D) * a->s0 + (i % a->D) * a->s1;
}

/* ------------------------------------------------------------------ cross-entropy options
 * The options of a cross-entropy call, in one struct: adding an option is one field here, one
 * term in fx_xent_row (fx_xent.h), one check in the API and one reference function. */
typedef struct fx_xent_opts {
    const double *w;        /* class weights (C,), or NULL for unit weights */
    double W;               /* sum of the class weights (C when w is NULL) */
    ptrdiff_t C;            /* number of classes */
    double eps;             /* label smoothing in [0, 1] */
    double zl;              /* z-loss coefficient (0: none) */
    double gamma;           /* focal-loss exponent (0: plain cross-entropy) */
    int soft;               /* targets are class probabilities (else integer labels) */
    int input;              /* FX_INPUT_LOGITS or FX_INPUT_LOGPROBS */
} fx_xent_opts;

/* A whole cross-entropy call: the options, the arrays and the output scales. */
typedef struct fx_xent_args {
    fx_xent_opts o;
    fx_view x;              /* logits (rows, C) */
    fx_view g;              /* gradient out (base NULL: loss only); may be x itself */
    fx_view p;              /* soft targets (base NULL: integer labels in t) */
    const char *t;          /* integer labels */
    ptrdiff_t ts;           /* label stride, bytes */
    int t64;                /* labels are int64 (else int32) */
    ptrdiff_t N;            /* rows */
    ptrdiff_t ignore_index;
    double scale, cap;      /* logit transform z' = cap tanh(scale z / cap) (cap 0: none) */
    double lscale;          /* loss scale: 1 / ln(base) */
    double gscale;          /* gradient scale (grad_output, / denominator for "mean", / ln(base)) */
    const double *row_scale;/* per-row gradient scale (N,) or NULL */
    char *loss_out;         /* per-row losses * lscale (N,), contiguous, kernel dtype, or NULL */
    char *z_out;            /* per-row z-loss terms * lscale (N,), or NULL */
    int direct;             /* x, g, p usable in place: contiguous rows of the kernel dtype */
    int stream;             /* write the gradient with non-temporal stores */
} fx_xent_args;

/* What a block of rows adds to the call's result; combined in block order by the caller. */
typedef struct fx_part {
    double loss;            /* sum of the row losses */
    double z;               /* sum of the z-loss terms */
    double wsum;            /* sum of w[y] over the scored rows (rows, for soft targets) */
    ptrdiff_t bad;          /* first row whose label is out of [0, C) and not ignore_index, or -1 */
    int nomem;              /* a scratch allocation failed */
} fx_part;

static inline void fx_part_init(fx_part *p)
{
    p->loss = 0.0;
    p->z = 0.0;
    p->wsum = 0.0;
    p->bad = -1;
    p->nomem = 0;
}

/* ------------------------------------------------------------------ compensated sum
 * Per-block partial results are combined in block order with Neumaier's compensation: a mean
 * over 1e7+ rows is accurate to the last bits of a double and identical for every thread count. */
static inline void fx_neumaier(double *total, double *comp, double v)
{
    double t = *total + v;
    if (fabs(*total) >= fabs(v))
        *comp += (*total - t) + v;
    else
        *comp += (v - t) + *total;
    *total = t;
}

static inline double fx_neumaier_result(double total, double comp)
{
    return comp == comp ? total + comp : total;
}

/* ------------------------------------------------------------------ streaming stores
 * For a gradient much larger than the caches, written once and not read back soon,
 * non-temporal stores save the read of every destination line that a normal store costs. */
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#define FX_HAVE_STREAM 1
#else
#define FX_HAVE_STREAM 0
#endif

/* copy bytes (a multiple of 64) from an aligned buffer to a 64-byte aligned destination */
static inline void fx_stream_copy(void *dst, const void *src, ptrdiff_t bytes)
{
#if defined(__AVX512F__)
    for (ptrdiff_t i = 0; i < bytes; i += 64)
        _mm512_stream_si512((__m512i *)((char *)dst + i), _mm512_load_si512((const char *)src + i));
#elif defined(__AVX__)
    for (ptrdiff_t i = 0; i < bytes; i += 32)
        _mm256_stream_si256((__m256i *)((char *)dst + i),
                            _mm256_load_si256((const __m256i *)((const char *)src + i)));
#else
    memcpy(dst, src, (size_t)bytes);
#endif
}

/* after streaming stores, before the data is handed to another thread or returned */
static inline void fx_store_fence(void)
{
#if FX_HAVE_STREAM
    _mm_sfence();
#endif
}

/* ------------------------------------------------------------------ short-row transpose
 * R rows of C <= 32 float32 values (row stride rs elements) into tr[c * ld + r].  With AVX-512,
 * 16 rows at a time: masked row loads and an in-register 16 x 16 transpose (16 loads, 64
 * shuffles and C stores per 16 rows, instead of 16 C scalar loads and stores). */
#if defined(__AVX512F__)
static inline void fx_tr16x16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
        r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
    }
}
#endif

static inline void fx_short_transpose_f32(const float *x, ptrdiff_t rs, ptrdiff_t R, ptrdiff_t C,
                                          float *tr, ptrdiff_t ld)
{
    ptrdiff_t r0 = 0;
#if defined(__AVX512F__)
    for (ptrdiff_t c0 = 0; c0 < C; c0 += 16) {
        ptrdiff_t w = C - c0 < 16 ? C - c0 : 16;
        __mmask16 mask = (__mmask16)((1u << w) - 1u);
        for (r0 = 0; r0 + 16 <= R; r0 += 16) {
            __m512 v[16];
            for (int i = 0; i < 16; i++)
                v[i] = _mm512_maskz_loadu_ps(mask, x + (r0 + i) * rs + c0);
            fx_tr16x16(v);
            for (ptrdiff_t c = 0; c < w; c++)
                _mm512_storeu_ps(tr + (c0 + c) * ld + r0, v[c]);
        }
    }
#endif
    for (ptrdiff_t r = r0; r < R; r++)
        for (ptrdiff_t c = 0; c < C; c++) tr[c * ld + r] = x[r * rs + c];
}

#endif /* FASTXENT_FX_COMMON_H */
