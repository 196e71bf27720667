/*
 * fastxent C numerics, part 1: scalar element functions (float and double twins; the twins
 * differ in their constants and polynomial degrees, so each is written out).
 *
 * exp: Cody-Waite range reduction x = n*ln2 + r, |r| <= ln2/2, a polynomial for e^r (float:
 * degree-5 minimax, 1.0e-7 relative, 2.3 ulp at most, every float in [-87.3, 0] checked;
 * double: degree 11 through the Chebyshev nodes, 2e-17, ~2 ulp), and 2^n built from exponent
 * bits; expm1 (softcap's tanh) keeps a degree-7 Taylor polynomial, accurate relative to e^r - 1.  Arguments below the smallest normal result are flushed to exactly 0 (so
 * exp(-inf) == 0 and a masked class has probability 0).  A NaN argument gives NaN (n is read
 * from the bits of a float, never converted with UB).
 *
 * fx_exp* / fx_log* are the fast forms for the arguments the row kernels pass (x - max <= 0;
 * s >= 1); fx_pexp* / fx_plog* / fx_plog1p* are valid for every argument (probability space).
 */
#ifndef FASTXENT_FX_MATH_H
#define FASTXENT_FX_MATH_H

#include "fx_common.h"

/* ------------------------------------------------------------------ exp constants
 * Named once: the scalar forms and the vector forms below (fx_expf_v16 / _v8, fx_exp_v8 / _v4)
 * share them, so that every level computes the same exps. */
#define FX_EXPF_MAGIC 12582912.0f               /* 1.5 * 2^23: rint by addition */
#define FX_EXPF_LOG2E 1.44269504088896341f
#define FX_EXPF_LN2_HI 0.693359375f             /* 9 bits: n * hi exact */
#define FX_EXPF_LN2_LO -2.12194440e-4f
#define FX_EXPF_C5 0.008314719217348604f        /* e^r - 1 = r + r^2 (c2 + c3 r + c4 r^2 + c5 r^3) */
#define FX_EXPF_C4 0.0418902082477686f
#define FX_EXPF_C3 0.16667089630971113f
#define FX_EXPF_C2 0.49999232232514346f
#define FX_EXPF_MIN -87.3365447f                /* log(FLT_MIN): below, flush to 0 */
#define FX_EXP_MAGIC 6755399441055744.0         /* 1.5 * 2^52 */
#define FX_EXP_LOG2E 1.4426950408889634074
#define FX_EXP_LN2_HI 0.693147180369123816490   /* trailing zero bits: n * hi exact */
#define FX_EXP_LN2_LO 1.90821492927058770002e-10
#define FX_EXP_MIN -708.39641853226408          /* log(DBL_MIN): below, flush to 0 */

/* ------------------------------------------------------------------ exp, float32
 * Range reduction shared by exp and expm1: x = n*ln2 + r, |r| <= ln2/2; the scale 2^n from the
 * bits of t (a float holding n + 1.5 * 2^23). */
FX_MATH float fx_expf_reduce(float xc, float *scale)
{
    const float magic = FX_EXPF_MAGIC;
    float t = xc * FX_EXPF_LOG2E + magic;
    float n = t - magic;
    float r = xc - n * FX_EXPF_LN2_HI;
    r = r - n * FX_EXPF_LN2_LO;
    int32_t ti;
    memcpy(&ti, &t, 4);
    uint32_t sb = ((uint32_t)(ti - 0x4B400000 + 127)) << 23;   /* bits(magic): n + bias */
    memcpy(scale, &sb, 4);
    return r;
}

/* fx_expm1f_core: for a clamped x, returns q = e^r - 1 (Taylor, degree 7: accurate relative to
 * q itself, for expm1) and the scale 2^n; e^x - 1 = scale * q + (scale - 1). */
FX_MATH float fx_expm1f_core(float xc, float *scale)
{
    float r = fx_expf_reduce(xc, scale);
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    return p * r;
}

/* e^x for the hot loops: e^r - 1 = r + r^2 (c2 + c3 r + c4 r^2 + c5 r^3), a degree-5 minimax
 * polynomial for e^r on [-ln2/2, ln2/2] (1.0e-7 relative), e^x = 2^n + 2^n (e^r - 1): at most
 * 2.3 ulp on [-87.3, 0], every float checked against exp in double. */
FX_MATH float fx_expf(float x)
{
    /* valid for x <= 88; every caller passes x <= 0 (x - max), -inf or NaN */
    float xc = x < -104.0f ? -104.0f : x;       /* NaN compares false: stays NaN */
    float scale;
    float r = fx_expf_reduce(xc, &scale);
    float p = FX_EXPF_C5;
    p = p * r + FX_EXPF_C4;
    p = p * r + FX_EXPF_C3;
    p = p * r + FX_EXPF_C2;
    float q = (r * r) * p + r;                  /* e^r - 1 */
    float y = scale * q + scale;                /* the operations of fx_expf_v16 / _v8 */
    return xc < FX_EXPF_MIN ? 0.0f : y;
}

/* ------------------------------------------------------------------ exp, float64 */
FX_MATH double fx_expm1_core(double xc, double *scale)
{
    const double magic = FX_EXP_MAGIC;
    double t = xc * FX_EXP_LOG2E + magic;
    double n = t - magic;
    double r = xc - n * FX_EXP_LN2_HI;
    r = r - n * FX_EXP_LN2_LO;
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

FX_MATH double fx_exp(double x)
{
    double xc = x < -746.0 ? -746.0 : x;
    double scale;
    double q = fx_expm1_core(xc, &scale);
    double y = (q + 1.0) * scale;
    return xc < FX_EXP_MIN ? 0.0 : y;
}


/* ------------------------------------------------------------------ exp, whole vectors (AVX-512, AVX2)
 * The AVX-512 and AVX2 levels' hot loops (fx_lse.h chunk_sums) take exp a whole vector at a
 * time with these, written with intrinsics because the compiler's vectorization of the
 * scalar forms above spends a third more instructions (a clamp, a blend and a select where
 * one zero-masked multiply-add does) and, for double, a degree-11 polynomial.
 * Both take x <= 0 (x - max), -inf or NaN, flush results below the smallest normal number to
 * exactly 0 (the zero-masked final multiply-add) and keep NaN (the unordered compare).
 *   float:  the reduction and degree-5 minimax polynomial of fx_expf; y = s + s * (e^r - 1).
 *   double: x = (16 n + j) ln2 / 16 + r, |r| <= ln2 / 32; 2^(j/16) from a 16-entry table held
 *           in two registers (one permute), e^r - 1 = r + r^2 (c2 + ... + c6 r^4) through the
 *           Chebyshev nodes of the interval (2.8e-17 relative), y = s + s * (e^r - 1), with s =
 *           2^n 2^(j/16) assembled by one integer add (each table entry stores its bits minus
 *           j << 48, so adding k << 48 = (16 n + j) << 48 puts n in the exponent).
 * Measured against exp in a wider type: float, every float in [-87.3, 0]: 2.3 ulp at most;
 * double, 2^24 points of [-708.4, 0]: 1.2 ulp at most. */
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
/* e^r - 1 = r + r^2 (c2 + ... + c6 r^4) on [-ln2/32, ln2/32] (the double forms' polynomial) */
#define FX_EXP16_C6 0.0013889034348599464
#define FX_EXP16_C5 0.008333449701253456
#define FX_EXP16_C4 0.04166666666496045
#define FX_EXP16_C3 0.1666666666530169
#define FX_EXP16_C2 0.5

/* bits of 2^(j/16), correctly rounded, minus j << 48 */
#define FX_EXP2_16(j, bits) ((long long)(bits##ULL - ((unsigned long long)(j) << 48)))
static const long long fx_exp2_16_table[16] __attribute__((aligned(64))) = {
    FX_EXP2_16(0, 0x3ff0000000000000), FX_EXP2_16(1, 0x3ff0b5586cf9890f),
    FX_EXP2_16(2, 0x3ff172b83c7d517b), FX_EXP2_16(3, 0x3ff2387a6e756238),
    FX_EXP2_16(4, 0x3ff306fe0a31b715), FX_EXP2_16(5, 0x3ff3dea64c123422),
    FX_EXP2_16(6, 0x3ff4bfdad5362a27), FX_EXP2_16(7, 0x3ff5ab07dd485429),
    FX_EXP2_16(8, 0x3ff6a09e667f3bcd), FX_EXP2_16(9, 0x3ff7a11473eb0187),
    FX_EXP2_16(10, 0x3ff8ace5422aa0db), FX_EXP2_16(11, 0x3ff9c49182a3f090),
    FX_EXP2_16(12, 0x3ffae89f995ad3ad), FX_EXP2_16(13, 0x3ffc199bdd85529c),
    FX_EXP2_16(14, 0x3ffd5818dcfba487), FX_EXP2_16(15, 0x3ffea4afa2a490da)};
#undef FX_EXP2_16
#endif

#if defined(__AVX512F__)
FX_MATH __m512 fx_expf_v16(__m512 x)
{
    const __m512 magic = _mm512_set1_ps(FX_EXPF_MAGIC);
    __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(FX_EXPF_LOG2E), magic);
    __m512 n = _mm512_sub_ps(t, magic);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(FX_EXPF_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(FX_EXPF_LN2_LO), r);
    /* bits(t) << 23 = n << 23 (the bits of magic shift out); + bits(1.0f) */
    __m512 s = _mm512_castsi512_ps(_mm512_add_epi32(
        _mm512_slli_epi32(_mm512_castps_si512(t), 23), _mm512_set1_epi32(0x3F800000)));
    __m512 p = _mm512_set1_ps(FX_EXPF_C5);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FX_EXPF_C4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FX_EXPF_C3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(FX_EXPF_C2));
    __m512 q = _mm512_fmadd_ps(_mm512_mul_ps(r, r), p, r);
    __mmask16 ok = _mm512_cmp_ps_mask(x, _mm512_set1_ps(FX_EXPF_MIN), _CMP_NLT_UQ);
    return _mm512_maskz_fmadd_ps(ok, s, q, s);
}


FX_MATH __m512d fx_exp_v8(__m512d x)
{
    const __m512i lo = _mm512_load_si512(fx_exp2_16_table);       /* entries 0-7 */
    const __m512i hi = _mm512_load_si512(fx_exp2_16_table + 8);   /* entries 8-15 */
    const __m512d magic = _mm512_set1_pd(FX_EXP_MAGIC);
    __m512d t = _mm512_fmadd_pd(x, _mm512_set1_pd(16.0 * FX_EXP_LOG2E), magic);
    __m512d k = _mm512_sub_pd(t, magic);
    /* ln2 / 16 in two parts (the ln2 hi / lo of fx_exp over 16: k * hi exact) */
    __m512d r = _mm512_fnmadd_pd(k, _mm512_set1_pd(FX_EXP_LN2_HI / 16), x);
    r = _mm512_fnmadd_pd(k, _mm512_set1_pd(FX_EXP_LN2_LO / 16), r);
    __m512i ti = _mm512_castpd_si512(t);
    __m512i tb = _mm512_permutex2var_epi64(lo, ti, hi);           /* index: the low 4 bits */
    __m512d s = _mm512_castsi512_pd(_mm512_add_epi64(tb, _mm512_slli_epi64(ti, 48)));
    __m512d p = _mm512_set1_pd(FX_EXP16_C6);
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(FX_EXP16_C5));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(FX_EXP16_C4));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(FX_EXP16_C3));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(FX_EXP16_C2));
    __m512d q = _mm512_fmadd_pd(_mm512_mul_pd(r, r), p, r);
    __mmask8 ok = _mm512_cmp_pd_mask(x, _mm512_set1_pd(FX_EXP_MIN), _CMP_NLT_UQ);
    return _mm512_maskz_fmadd_pd(ok, s, q, s);
}

#elif defined(__AVX2__) && defined(__FMA__)
/* The AVX2 level's forms: the same operations as the 512-bit ones (so that both levels give the
 * same exps), with the table read by a gather and the flush by an and with the compare. */
FX_MATH __m256 fx_expf_v8(__m256 x)
{
    const __m256 magic = _mm256_set1_ps(FX_EXPF_MAGIC);
    __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(FX_EXPF_LOG2E), magic);
    __m256 n = _mm256_sub_ps(t, magic);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(FX_EXPF_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(FX_EXPF_LN2_LO), r);
    __m256 s = _mm256_castsi256_ps(_mm256_add_epi32(
        _mm256_slli_epi32(_mm256_castps_si256(t), 23), _mm256_set1_epi32(0x3F800000)));
    __m256 p = _mm256_set1_ps(FX_EXPF_C5);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FX_EXPF_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FX_EXPF_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(FX_EXPF_C2));
    __m256 q = _mm256_fmadd_ps(_mm256_mul_ps(r, r), p, r);
    __m256 ok = _mm256_cmp_ps(x, _mm256_set1_ps(FX_EXPF_MIN), _CMP_NLT_UQ);
    return _mm256_and_ps(ok, _mm256_fmadd_ps(s, q, s));
}


FX_MATH __m256d fx_exp_v4(__m256d x)
{
    const __m256d magic = _mm256_set1_pd(FX_EXP_MAGIC);
    __m256d t = _mm256_fmadd_pd(x, _mm256_set1_pd(16.0 * FX_EXP_LOG2E), magic);
    __m256d k = _mm256_sub_pd(t, magic);
    __m256d r = _mm256_fnmadd_pd(k, _mm256_set1_pd(FX_EXP_LN2_HI / 16), x);
    r = _mm256_fnmadd_pd(k, _mm256_set1_pd(FX_EXP_LN2_LO / 16), r);
    __m256i ti = _mm256_castpd_si256(t);
    __m256i tb = _mm256_i64gather_epi64(fx_exp2_16_table,
                                        _mm256_and_si256(ti, _mm256_set1_epi64x(15)), 8);
    __m256d s = _mm256_castsi256_pd(_mm256_add_epi64(tb, _mm256_slli_epi64(ti, 48)));
    __m256d p = _mm256_set1_pd(FX_EXP16_C6);
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FX_EXP16_C5));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FX_EXP16_C4));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FX_EXP16_C3));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FX_EXP16_C2));
    __m256d q = _mm256_fmadd_pd(_mm256_mul_pd(r, r), p, r);
    __m256d ok = _mm256_cmp_pd(x, _mm256_set1_pd(FX_EXP_MIN), _CMP_NLT_UQ);
    return _mm256_and_pd(ok, _mm256_fmadd_pd(s, q, s));
}
#endif


/* ------------------------------------------------------------------ log, for s >= 1
 * (the sum of exps always holds exp(0) = 1).  log(s) = e*ln2 + 2*atanh(z), z = (f-1)/(f+1),
 * f in [sqrt(1/2), sqrt(2)): |z| <= 0.1716, so the odd series converges fast (float: 5 terms,
 * 2e-9 truncation; double: 11 terms, 6e-19).  Used once per row on the short-row path. */
FX_MATH float fx_logf(float s)
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

FX_MATH double fx_log(double s)
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


/* log1p(u), u >= 0: log(1 + u) * u / ((1 + u) - 1) corrects the rounding of 1 + u */
FX_MATH float fx_log1pf(float u)
{
    float w = 1.0f + u;
    float l = fx_logf(w) * (u / (w - 1.0f));
    return w == 1.0f ? u : l;
}
FX_MATH double fx_log1p(double u)
{
    double w = 1.0 + u;
    double l = fx_log(w) * (u / (w - 1.0));
    return w == 1.0 ? u : l;
}

/* ------------------------------------------------------------------ expm1 and tanh
 * expm1 from the same reduction and polynomial as fx_exp (fx_expm1*_core):
 * expm1(x) = 2^n * q(r) + (2^n - 1), q(r) = e^r - 1; exact (2^n - 1) for the n used here.
 * tanh(u) = -t / (2 + t) with t = expm1(-2|u|): no cancellation near 0.  For softcap. */
FX_MATH float fx_expm1f_neg(float x)   /* x <= 0 */
{
    float scale;
    float q = fx_expm1f_core(x < -40.0f ? -40.0f : x, &scale);
    return scale * q + (scale - 1.0f);
}

FX_MATH double fx_expm1_neg(double x)  /* x <= 0 */
{
    double scale;
    double q = fx_expm1_core(x < -60.0 ? -60.0 : x, &scale);
    return scale * q + (scale - 1.0);
}

FX_MATH float fx_tanhf(float u)
{
    float au = u < 0 ? -u : u;
    float t = fx_expm1f_neg(-2.0f * au);
    float y = -t / (2.0f + t);
    return u < 0 ? -y : (u == u ? y : u);
}

FX_MATH double fx_tanh(double u)
{
    double au = u < 0 ? -u : u;
    double t = fx_expm1_neg(-2.0 * au);
    double y = -t / (2.0 + t);
    return u < 0 ? -y : (u == u ? y : u);
}

/* ------------------------------------------------------------------ half precision
 * float16 <-> float32 by bit manipulation (branch-free, vectorises), bfloat16 by shifting.
 * Gradients written back to 16 bits round to nearest even. */
FX_MATH float fx_f16_to_f32(uint16_t h)
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

FX_MATH uint16_t fx_f32_to_f16(float f)
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

FX_MATH float fx_bf16_to_f32(uint16_t h)
{
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

FX_MATH uint16_t fx_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);   /* NaN */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}


FX_MATH float fx_plogf(float x)
{
    int sub = x < 1.17549435e-38f;                  /* subnormal (also 0, negative) */
    float r = fx_logf(sub ? x * 8388608.0f : x);    /* 2^23 */
    r = sub ? r - 15.9423851528787421f : r;         /* 23 ln 2 */
    r = x > 0.0f ? r : (x == 0.0f ? -INFINITY : NAN);
    return x == INFINITY ? x : r;
}

FX_MATH double fx_plog(double x)
{
    int sub = x < 2.2250738585072014e-308;
    double r = fx_log(sub ? x * 4503599627370496.0 : x);   /* 2^52 */
    r = sub ? r - 36.043653389117154 : r;                   /* 52 ln 2 */
    r = x > 0.0 ? r : (x == 0.0 ? -(double)INFINITY : (double)NAN);
    return x == (double)INFINITY ? x : r;
}

/* fx_expf is valid up to 88: above, exp(x) = exp(x / 2)^2 (x / 2 is exact) */
FX_MATH float fx_pexpf(float x)
{
    int hi = x > 88.0f;
    float y = fx_expf(hi ? x * 0.5f : x);
    y = hi ? y * y : y;
    return x > 88.7228394f ? INFINITY : y;
}

FX_MATH double fx_pexp(double x)
{
    int hi = x > 709.0;
    double y = fx_exp(hi ? x * 0.5 : x);
    y = hi ? y * y : y;
    return x > 709.782712893384 ? (double)INFINITY : y;
}

/* log1p(u) = log(w) * u / (w - 1), w = 1 + u: corrects the rounding of 1 + u (Goldberg) */
FX_MATH float fx_plog1pf(float u)
{
    float w = 1.0f + u;
    float l = fx_plogf(w) * (u / (w - 1.0f));
    l = w == 1.0f ? u : l;
    return u == INFINITY ? u : l;
}

FX_MATH double fx_plog1p(double u)
{
    double w = 1.0 + u;
    double l = fx_plog(w) * (u / (w - 1.0));
    l = w == 1.0 ? u : l;
    return u == (double)INFINITY ? u : l;
}

/* 1 where x is not a positive normal finite number (0, subnormal, inf, NaN, x < 0), i.e. where
 * the fast logs fx_logf / fx_log (exact on positive normal numbers only) cannot be used. */
FX_MATH int fx_abnormalf(float x)
{
    uint32_t b;
    memcpy(&b, &x, 4);
    return (b - 0x00800000u) >= 0x7f000000u;
}

FX_MATH int fx_abnormal(double x)
{
    uint64_t b;
    memcpy(&b, &x, 8);
    return (b - 0x0010000000000000ULL) >= 0x7fe0000000000000ULL;
}

FX_MATH int fx_nocheck(double x)
{
    (void)x;
    return 0;
}


/* log1p(u) for 0 <= u <= 1 (softplus): 2 atanh(z), z = u / (2 + u) in [0, 1/3], odd series
 * (float: 7 terms, truncation 1e-8; double: 18 terms, 4e-18); exact for tiny u, one division. */
FX_MATH float fx_log1p_unitf(float u)
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

FX_MATH double fx_log1p_unit(double u)
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


#endif /* FASTXENT_FX_MATH_H */
