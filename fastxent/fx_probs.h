/*
 * fastxent C numerics, part 5: the probability-space losses (cross-entropy of probabilities,
 * entropy, KL divergence, binary cross-entropy), loops over n contiguous elements.  A template
 * as fx_lse.h, with the element functions FX_LOG / FX_PLOG (fast / full-range log), FX_EXP /
 * FX_PEXP, FX_LOG1P / FX_PLOG1P, FX_LOG1P_UNIT, FX_ABNORMAL and FX_EXPMAX (fast exp's range).
 *
 * Blocks of FX_PBLK elements: a block is computed with the fast log / exp while a flag records
 * whether any argument needs the full-range functions (0, subnormal, inf, NaN, negative, an exp
 * above its range); only then is the block (still in L1) computed again with the full-range
 * ones.  The row-wise losses write one term per element (double) into t; the kernels sum the
 * terms of a row with fx_dsum (a fixed order: the result depends on the data only, never on
 * the thread count).  A term with p == 0 is 0 (0 log 0 = 0) unless its q is NaN: NaN
 * propagates to its row.
 *
 * xlogq_terms:  t = p * log(clip(q, lo, hi)); bad: p < 0 or q < 0.
 * xlogq_grad:   g = a * p / q where lo <= q <= hi and p != 0, else 0 (the clip's derivative);
 *               NaN q or p gives NaN.
 * xlogx_terms:  t = p * log(p); bad: p < 0.
 * kl_terms:     t = p * (log p - log q); mode bit 1: q holds log q, bit 2: p holds log p (then
 *               p = exp(lp)); bad: a negative probability given as one.
 * bce / bcel:   binary cross-entropy on probabilities / logits (see below).
 */
#ifndef FASTXENT_FX_PROBS_ONCE
#define FASTXENT_FX_PROBS_ONCE
enum { FX_PBLK = 512 };

/* the row losses of the probability family, and the two binary cross-entropies */
enum { FX_ROW_XENT = 0, FX_ROW_ENTROPY = 1, FX_ROW_KL = 2, FX_BIN_PROBS = 3, FX_BIN_LOGITS = 4 };
/* kl_terms mode bits */
enum { FX_KL_LOG_Q = 1, FX_KL_LOG_P = 2 };

/* sum of n doubles (a row's terms), vectorised into FX_LANES partial sums combined as a fixed
 * tree: the same order for every vector width, so every instruction-set level gives the same sum */
static inline double fx_dsum(const double *t, ptrdiff_t n)
{
    double acc[FX_LANES];
    ptrdiff_t i = 0, j, w;
    for (j = 0; j < FX_LANES; j++) acc[j] = 0.0;
    for (; i + FX_LANES <= n; i += FX_LANES) {
        FX_SIMD
        for (j = 0; j < FX_LANES; j++) acc[j] += t[i + j];
    }
    for (j = 0; i + j < n; j++) acc[j] += t[i + j];
    for (w = FX_LANES / 2; w > 0; w /= 2)
        for (j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0];
}
#endif

#define T FX_T
#define FX_AI static inline __attribute__((always_inline))

/* One block of the cross-entropy terms; slow: the full-range log (else the fast one, and the
 * return value says whether the block needs the full-range pass). */
FX_AI int FX_S(xlogq_block)(const T *p, const T *q, ptrdiff_t n, T lo, T hi, double *t, int *bad,
                            const int slow)
{
    int b = 0, sp = 0;
    FX_PRAGMA(omp simd reduction(|:b) reduction(|:sp))
    for (ptrdiff_t i = 0; i < n; i++) {
        T pi = p[i], qi = q[i];
        b |= (pi < 0) | (qi < 0);
        T qc = qi < lo ? lo : qi;
        qc = qc > hi ? hi : qc;
        if (!slow) sp |= FX_ABNORMAL(qc);
        double v = (double)pi * (double)(slow ? FX_PLOG(qc) : FX_LOG(qc));
        t[i] = (pi == 0) & (qi == qi) ? 0.0 : v;
    }
    *bad |= b;
    return sp;
}

static inline void FX_S(xlogq_terms)(const T *p, const T *q, ptrdiff_t n, T lo, T hi, double *t,
                                     int *bad)
{
    for (ptrdiff_t k = 0; k < n; k += FX_PBLK) {
        ptrdiff_t m = n - k < FX_PBLK ? n - k : FX_PBLK;
        if (FX_S(xlogq_block)(p + k, q + k, m, lo, hi, t + k, bad, 0))
            FX_S(xlogq_block)(p + k, q + k, m, lo, hi, t + k, bad, 1);
    }
}

static inline void FX_S(xlogq_grad)(const T *p, const T *q, ptrdiff_t n, T lo, T hi, T a, T *g)
{
    FX_SIMD
    for (ptrdiff_t i = 0; i < n; i++) {
        T pi = p[i], qi = q[i];
        T v = a * pi / qi;
        g[i] = (qi < lo) | (qi > hi) | ((pi == 0) & (qi == qi)) ? (T)0 : v;
    }
}

FX_AI int FX_S(xlogx_block)(const T *p, ptrdiff_t n, double *t, int *bad, const int slow)
{
    int b = 0, sp = 0;
    FX_PRAGMA(omp simd reduction(|:b) reduction(|:sp))
    for (ptrdiff_t i = 0; i < n; i++) {
        T pi = p[i];
        b |= pi < 0;
        if (!slow) sp |= FX_ABNORMAL(pi) & (pi != 0);
        double v = (double)pi * (double)(slow ? FX_PLOG(pi) : FX_LOG(pi));
        t[i] = pi == 0 ? 0.0 : v;
    }
    *bad |= b;
    return sp;
}

static inline void FX_S(xlogx_terms)(const T *p, ptrdiff_t n, double *t, int *bad)
{
    for (ptrdiff_t k = 0; k < n; k += FX_PBLK) {
        ptrdiff_t m = n - k < FX_PBLK ? n - k : FX_PBLK;
        if (FX_S(xlogx_block)(p + k, m, t + k, bad, 0))
            FX_S(xlogx_block)(p + k, m, t + k, bad, 1);
    }
}

/* KL terms of one block for one mode (bit 1: q holds log q; bit 2: p holds log p) */
FX_AI int FX_S(kl_block)(const T *p, const T *q, ptrdiff_t n, const int mode, double *t, int *bad,
                         const int slow)
{
    int b = 0, sp = 0;
    FX_PRAGMA(omp simd reduction(|:b) reduction(|:sp))
    for (ptrdiff_t i = 0; i < n; i++) {
        T pv = p[i], qv = q[i];
        T pe = (mode & 2) ? (slow ? FX_PEXP(pv) : FX_EXP(pv)) : pv;   /* the probability */
        T lp = (mode & 2) ? pv : (slow ? FX_PLOG(pv) : FX_LOG(pv));   /* its log */
        T lq = (mode & 1) ? qv : (slow ? FX_PLOG(qv) : FX_LOG(qv));
        if (!(mode & 2)) b |= pv < 0;
        if (!(mode & 1)) b |= qv < 0;
        if (!slow) {
            int need = (mode & 2) ? (pv > FX_EXPMAX) : FX_ABNORMAL(pv) & (pv != 0);
            if (!(mode & 1)) need |= FX_ABNORMAL(qv) & ((pe != 0) | (qv != qv));
            sp |= need;
        }
        double v = (double)pe * ((double)lp - (double)lq);
        t[i] = (pe == 0) & (qv == qv) ? 0.0 : v;
    }
    *bad |= b;
    return sp;
}

static inline void FX_S(kl_terms)(const T *p, const T *q, ptrdiff_t n, int mode, double *t,
                                  int *bad)
{
    for (ptrdiff_t k = 0; k < n; k += FX_PBLK) {
        ptrdiff_t m = n - k < FX_PBLK ? n - k : FX_PBLK;
        const T *pk = p + k, *qk = q + k;
        double *tk = t + k;
        switch (mode) {
        case 0:
            if (FX_S(kl_block)(pk, qk, m, 0, tk, bad, 0)) FX_S(kl_block)(pk, qk, m, 0, tk, bad, 1);
            break;
        case 1:
            if (FX_S(kl_block)(pk, qk, m, 1, tk, bad, 0)) FX_S(kl_block)(pk, qk, m, 1, tk, bad, 1);
            break;
        case 2:
            if (FX_S(kl_block)(pk, qk, m, 2, tk, bad, 0)) FX_S(kl_block)(pk, qk, m, 2, tk, bad, 1);
            break;
        default:
            if (FX_S(kl_block)(pk, qk, m, 3, tk, bad, 0)) FX_S(kl_block)(pk, qk, m, 3, tk, bad, 1);
            break;
        }
    }
}

/* ------------------------------------------------ binary cross-entropy (n contiguous)
 * On probabilities, as torch:  l = w * ((y - 1) * max(log1p(-p), -100) - y * max(log p, -100)),
 *   bad: p or y outside [0, 1] (NaN included);  grad = f * (p - y) / max((1 - p) p, 1e-12)
 *   (1e-12 as a float, as torch, for both dtypes).  Blocks as above (fast logs unless p or 1 - p
 *   is 0 / subnormal / NaN).
 * On logits, the stable form  l = w * ((1 - y) sp(x) + pw y sp(-x)),  sp(x) = log(1 + e^x)
 *   = max(x, 0) + log1p(e^-|x|) (one exp and one log1p_unit per element, no overflow; a term
 *   whose coefficient is 0 is 0, so infinite logits give the loss's limit);
 *   grad = f * ((1 - y) sigmoid(x) - pw y sigmoid(-x)).  pw: pos_weight per element, never
 *   NULL (ones for none: a pointer test inside the loop becomes a masked load, which real CPUs
 *   never fault on but some emulators do).
 * The loss of each element, times ls, is stored in loss[i]; the sum (unscaled) is returned.
 * f is the gradient factor (weight * grad_output); g may alias p / x. */
FX_AI int FX_S(bce_block)(const T *p, const T *y, const T *w, ptrdiff_t n, T ls, T *loss,
                          double *acc, int *bad, const int slow)
{
    double a = 0.0;
    int b = 0, sp = 0;
    FX_PRAGMA(omp simd reduction(+:a) reduction(|:b) reduction(|:sp))
    for (ptrdiff_t i = 0; i < n; i++) {
        T pi = p[i], yi = y[i];
        b |= !((pi >= 0) & (pi <= 1) & (yi >= 0) & (yi <= 1));
        if (!slow) sp |= FX_ABNORMAL(pi) | FX_ABNORMAL(1 - pi);
        T lp = slow ? FX_PLOG(pi) : FX_LOG(pi);
        T lq = slow ? FX_PLOG1P(-pi) : FX_LOG1P(-pi);
        lp = lp > (T)-100 ? lp : (T)-100;
        lq = lq > (T)-100 ? lq : (T)-100;
        T l = w[i] * ((yi - 1) * lq - yi * lp);
        loss[i] = l * ls;
        a += (double)l;
    }
    *bad |= b;
    *acc = a;
    return sp;
}

static inline double FX_S(bce)(const T *p, const T *y, const T *w, ptrdiff_t n, T ls, T *loss,
                               int *bad)
{
    double acc = 0.0, a;
    for (ptrdiff_t k = 0; k < n; k += FX_PBLK) {
        ptrdiff_t m = n - k < FX_PBLK ? n - k : FX_PBLK;
        if (FX_S(bce_block)(p + k, y + k, w + k, m, ls, loss + k, &a, bad, 0))
            FX_S(bce_block)(p + k, y + k, w + k, m, ls, loss + k, &a, bad, 1);
        acc += a;
    }
    return acc;
}

static inline void FX_S(bce_grad)(const T *p, const T *y, const T *f, ptrdiff_t n, T gs, T *g)
{
    FX_SIMD
    for (ptrdiff_t i = 0; i < n; i++) {
        T pi = p[i];
        T d = (1 - pi) * pi;
        d = d > (T)1e-12f ? d : (T)1e-12f;
        g[i] = gs * f[i] * (pi - y[i]) / d;
    }
}

/* softplus terms of one logit: spp = sp(x), spn = sp(-x) */
FX_AI void FX_S(softplus2)(T x, T *spp, T *spn)
{
    T ax = x < 0 ? -x : x;
    T l1 = FX_LOG1P_UNIT(FX_EXP(-ax));
    *spp = (x > 0 ? x : (T)0) + l1;
    *spn = (x < 0 ? -x : (T)0) + l1;
}

static inline double FX_S(bcel)(const T *x, const T *y, const T *w, const T *pw, ptrdiff_t n,
                                T ls, T *loss)
{
    double acc = 0.0;
    FX_SIMD_SUM(acc)
    for (ptrdiff_t i = 0; i < n; i++) {
        T yi = y[i], spp, spn;
        FX_S(softplus2)(x[i], &spp, &spn);
        T a = 1 - yi, c = pw[i] * yi;
        T l = w[i] * ((a == 0 ? (T)0 : a * spp) + (c == 0 ? (T)0 : c * spn));
        loss[i] = l * ls;
        acc += (double)l;
    }
    return acc;
}

static inline void FX_S(bcel_grad)(const T *x, const T *y, const T *f, const T *pw, ptrdiff_t n,
                                   T gs, T *g)
{
    FX_SIMD
    for (ptrdiff_t i = 0; i < n; i++) {
        T xi = x[i], yi = y[i];
        T ax = xi < 0 ? -xi : xi;
        T e = FX_EXP(-ax), s = 1 / (1 + e);
        T sp = xi >= 0 ? s : e * s, sn = xi >= 0 ? e * s : s;
        T c = pw[i] * yi;
        g[i] = gs * f[i] * ((1 - yi) * sp - c * sn);
    }
}

#undef FX_AI
#undef T
