/*
 * fastxent C numerics, part 2: the log-sum-exp of a row, every variant side by side, and the
 * row writers built on it.  A template: _rowmath.h includes it once per float type with
 *   FX_T (float / double), FX_S(name) (fx_<name>_f32 / _f64), FX_EXP (fx_expf / fx_exp),
 *   FX_LOG1P (fx_log1pf / fx_log1p).
 *
 * The statistics of a row are m = max(x) and t = sum(exp(x - m)) - 1 accumulated in double
 * (the sum s minus the maximum's own 1, so log(s) = log1p(t) keeps tiny losses exact):
 *   lse = m + log1p(t),   softmax = exp(x - m) / (1 + t).
 * Variants:
 *   seg_stats     one read of a row of at most FX_SEG elements, in blocks of FX_BLOCK (the block
 *                 max first, the block then still in L1 for the exp pass; when a block raises the
 *                 running max the sum is rescaled once); optionally stores e = exp(x - m_b) and
 *                 the running max m_b of each block, so a gradient needs no second exp;
 *                 optionally (the scoring statistics, fx_score.h) also q = sum(exp(x - m)^2)
 *                 - 1 from the same exps, in the "minus the maximum's own 1" form of t.
 *   row_stats     rows of any length: FX_SEG segments merged in segment order (stats_merge);
 *                 row_stats_sq the same with q.
 *   short_stats   FX_SHORT_R rows of at most FX_SHORT_C classes, vectorised across rows.
 * A row whose log-sum-exp is not finite is reported (return value 1): a NaN in the row
 * (t = NaN), a +inf and no NaN (m = t = +inf), every element -inf or n == 0 (m = -inf).
 */
#define T FX_T

/* The vector exp of this level (fx_math.h), if it has one: FX_V elements of T per vector of
 * type FX_VT, FX_VOP(op) the intrinsic _mm<width>_<op>_<ps|pd>, FX_VEXP the exp; AVX-512
 * compares into masks of type FX_VMASK with FX_VCMP_MASK. */
#if defined(__AVX512F__)
#define FX_HAVE_VEXP 1
#define FX_V (64 / (int)sizeof(T))
#if FX_F32
#define FX_VT __m512
#define FX_VMASK __mmask16
#define FX_VCMP_MASK _mm512_cmp_ps_mask
#define FX_VOP(op) _mm512_##op##_ps
#define FX_VEXP fx_expf_v16
#else
#define FX_VT __m512d
#define FX_VMASK __mmask8
#define FX_VCMP_MASK _mm512_cmp_pd_mask
#define FX_VOP(op) _mm512_##op##_pd
#define FX_VEXP fx_exp_v8
#endif
#elif defined(__AVX2__) && defined(__FMA__)
#define FX_HAVE_VEXP 1
#define FX_V (32 / (int)sizeof(T))
#if FX_F32
#define FX_VT __m256
#define FX_VOP(op) _mm256_##op##_ps
#define FX_VEXP fx_expf_v8
#else
#define FX_VT __m256d
#define FX_VOP(op) _mm256_##op##_pd
#define FX_VEXP fx_exp_v4
#endif
#else
#define FX_HAVE_VEXP 0
#endif

/* e[i] = exp(a[i] - b[i]) for i < n, every element through the same code (the vector exp where
 * the level has one; a partial last vector is computed on a copy padded with zeros), so that
 * a value does not depend on its position. */
static inline __attribute__((always_inline)) void
FX_S(exp_diff)(const T *a, const T *b, T *e, ptrdiff_t n)
{
#if FX_HAVE_VEXP
    ptrdiff_t i = 0;
    for (; i + FX_V <= n; i += FX_V)
        FX_VOP(storeu)(e + i, FX_VEXP(FX_VOP(sub)(FX_VOP(loadu)(a + i), FX_VOP(loadu)(b + i))));
    if (i < n) {
        T pa[FX_V], pb[FX_V], pe[FX_V];
        for (int j = 0; j < FX_V; j++) { pa[j] = 0; pb[j] = 0; }
        memcpy(pa, a + i, (size_t)(n - i) * sizeof(T));
        memcpy(pb, b + i, (size_t)(n - i) * sizeof(T));
        FX_VOP(storeu)(pe, FX_VEXP(FX_VOP(sub)(FX_VOP(loadu)(pa), FX_VOP(loadu)(pb))));
        memcpy(e + i, pe, (size_t)(n - i) * sizeof(T));
    }
#else
    FX_SIMD
    for (ptrdiff_t i = 0; i < n; i++) e[i] = FX_EXP(a[i] - b[i]);
#endif
}

/* ------------------------------------------------------------------ blocked statistics */
/* One FX_CHUNK of a block, max mn: its exps e = exp(x - mn) (stored into e with store), and per
 * lane the sum of the exps that are not a maximum's 1, the count of those, and (sq) the sum of
 * their squares: summed in T over FX_CHUNK / FX_LANES terms, then added into the double
 * accumulators acc / cnt / acq. */
static inline __attribute__((always_inline)) void
FX_S(chunk_sums)(const T *x, T *e, T mn, double *acc, double *cnt, double *acq, const int store,
                 const int sq)
{
    T fa[FX_LANES], fc[FX_LANES], fq[FX_LANES];
    ptrdiff_t j;
#if FX_HAVE_VEXP
    /* the same sums lane for lane: FX_LANES / FX_V vectors side by side, fx_math.h's vector exp */
    const FX_VT vm = FX_VOP(set1)(mn), zero = FX_VOP(setzero)(), one = FX_VOP(set1)((T)1);
    FX_VT a[FX_LANES / FX_V], c[FX_LANES / FX_V], q2[FX_LANES / FX_V];
    for (int h = 0; h < FX_LANES / FX_V; h++) { a[h] = zero; c[h] = zero; q2[h] = zero; }
    for (int u = 0; u < FX_CHUNK / FX_LANES; u++) {
        for (int h = 0; h < FX_LANES / FX_V; h++) {
            FX_VT d = FX_VOP(sub)(FX_VOP(loadu)(x + u * FX_LANES + FX_V * h), vm);
            FX_VT ev = FX_VEXP(d);
            if (store) FX_VOP(storeu)(e + u * FX_LANES + FX_V * h, ev);
#if defined(__AVX512F__)
            FX_VMASK top = FX_VCMP_MASK(d, zero, _CMP_EQ_OQ), rest = (FX_VMASK)~top;
            a[h] = FX_VOP(mask_add)(a[h], rest, a[h], ev);
            c[h] = FX_VOP(mask_add)(c[h], top, c[h], one);
            if (sq) q2[h] = FX_VOP(mask3_fmadd)(ev, ev, q2[h], rest);
#else
            FX_VT top = FX_VOP(cmp)(d, zero, _CMP_EQ_OQ), ea = FX_VOP(andnot)(top, ev);
            a[h] = FX_VOP(add)(a[h], ea);
            c[h] = FX_VOP(add)(c[h], FX_VOP(and)(top, one));
            if (sq) q2[h] = FX_VOP(fmadd)(ea, ea, q2[h]);
#endif
        }
    }
    for (int h = 0; h < FX_LANES / FX_V; h++) {
        FX_VOP(storeu)(fa + FX_V * h, a[h]);
        FX_VOP(storeu)(fc + FX_V * h, c[h]);
        FX_VOP(storeu)(fq + FX_V * h, q2[h]);
    }
#else
    FX_SIMD
    for (j = 0; j < FX_LANES; j++) {
        T a_ = 0, c_ = 0, q_ = 0;
        for (int u = 0; u < FX_CHUNK / FX_LANES; u++) {
            T d = x[u * FX_LANES + j] - mn;
            T ev = FX_EXP(d), ea = d == 0 ? (T)0 : ev;
            if (store) e[u * FX_LANES + j] = ev;
            a_ += ea;
            c_ += d == 0 ? (T)1 : (T)0;
            if (sq) q_ += ea * ea;
        }
        fa[j] = a_;
        fc[j] = c_;
        fq[j] = q_;
    }
#endif
    FX_SIMD
    for (j = 0; j < FX_LANES; j++) {
        acc[j] += (double)fa[j]; cnt[j] += (double)fc[j];
        if (sq) acq[j] += (double)fq[j];
    }
}

static inline __attribute__((always_inline)) int
FX_S(seg_stats_impl)(const T *x, ptrdiff_t n, T *m_out, double *t_out, T *e, T *bm,
                     const int store, double *q_out, const int sq)
{
    T m = -(T)INFINITY;
    double t = 0.0, q = 0.0;
    int nan_seen = 0;
    if (sq) *q_out = 0.0;
    for (ptrdiff_t b = 0; b < n; b += FX_BLOCK) {
        const T *xb = x + b;
        T *eb = store ? e + b : NULL;
        ptrdiff_t len = n - b < FX_BLOCK ? n - b : FX_BLOCK, i, j, w;
        T mx[4 * FX_LANES];
        double acc[FX_LANES], cnt[FX_LANES], acq[FX_LANES];
        for (j = 0; j < 4 * FX_LANES; j++) mx[j] = -(T)INFINITY;
        for (j = 0; j < FX_LANES; j++) {
            acc[j] = 0.0; cnt[j] = 0.0; acq[j] = 0.0;
        }
        /* the block's max, 4 * FX_LANES partial results (four independent chains of vector
         * max, folded to FX_LANES); a NaN is skipped here (comparisons with it are false) and
         * caught by the sum it turns into NaN */
        for (i = 0; i + 4 * FX_LANES <= len; i += 4 * FX_LANES) {
            FX_SIMD
            for (j = 0; j < 4 * FX_LANES; j++) {
                T v = xb[i + j];
                mx[j] = v > mx[j] ? v : mx[j];
            }
        }
        for (j = 0; j < FX_LANES; j++) {
            T v = mx[j + FX_LANES] > mx[j + 3 * FX_LANES] ? mx[j + FX_LANES] : mx[j + 3 * FX_LANES];
            T u = mx[j] > mx[j + 2 * FX_LANES] ? mx[j] : mx[j + 2 * FX_LANES];
            mx[j] = v > u ? v : u;
        }
        for (; i + FX_LANES <= len; i += FX_LANES) {
            FX_SIMD
            for (j = 0; j < FX_LANES; j++) {
                T v = xb[i + j];
                mx[j] = v > mx[j] ? v : mx[j];
            }
        }
        if (i < len) {      /* the tail as one masked vector step: missing lanes are -inf */
            ptrdiff_t rem = len - i;
            FX_SIMD
            for (j = 0; j < FX_LANES; j++) {
                T v = j < rem ? xb[i + j] : -(T)INFINITY;
                mx[j] = v > mx[j] ? v : mx[j];
            }
        }
        for (w = FX_LANES / 2; w > 0; w /= 2)
            for (j = 0; j < w; j++)
                mx[j] = mx[j + w] > mx[j] ? mx[j + w] : mx[j];
        T bmax = mx[0];
        if (bmax == (T)INFINITY) {
            /* +inf and no NaN anywhere in the row: m = t = +inf; a NaN: t = NaN */
            int nan_row = nan_seen || t != t;
            for (i = b; i < n && !nan_row; i++) nan_row = x[i] != x[i];
            *m_out = nan_row ? (T)NAN : bmax;
            *t_out = nan_row ? NAN : (double)INFINITY;
            return 1;
        }
        T mn = bmax > m ? bmax : m;
        if (store) bm[b / FX_BLOCK] = mn;
        if (mn == -(T)INFINITY) {
            /* every element so far is -inf or NaN: no exp to take, but a NaN must show */
            int nan_blk = 0;
            for (i = 0; i < len; i++) nan_blk |= xb[i] != xb[i];
            nan_seen |= nan_blk;
            if (store) for (i = 0; i < len; i++) eb[i] = nan_blk ? (T)NAN : (T)0;
            continue;
        }
        /* The maximum's own exp(0) = 1 terms are counted apart (cnt), so that t holds the rest
         * of the sum to full relative precision (tiny losses stay exact).  FX_CHUNK elements
         * are summed in T per lane (FX_CHUNK / FX_LANES terms each, a few ulp), then added
         * into the double accumulators. */
        for (i = 0; i + FX_CHUNK <= len; i += FX_CHUNK) {
            /* fetch the next block from memory while this one is computed */
            if (b + FX_BLOCK + i + FX_CHUNK <= n)
                for (ptrdiff_t q = 0; q < FX_CHUNK; q += 64 / (ptrdiff_t)sizeof(T))
                    FX_PREFETCH(xb + FX_BLOCK + i + q);
            FX_S(chunk_sums)(xb + i, store ? eb + i : NULL, mn, acc, cnt, acq, store, sq);
        }
        if (i < len) {
            /* the last, partial chunk: the same code on a copy padded with -inf (whose exp
             * adds exactly 0), so it vectorizes as a whole chunk */
            ptrdiff_t rem = len - i;
            T pad[FX_CHUNK] __attribute__((aligned(64))), pe[FX_CHUNK] __attribute__((aligned(64)));
            for (j = 0; j < FX_CHUNK; j++) pad[j] = -(T)INFINITY;
            memcpy(pad, xb + i, (size_t)rem * sizeof(T));
            FX_S(chunk_sums)(pad, store ? pe : NULL, mn, acc, cnt, acq, store, sq);
            if (store) memcpy(eb + i, pe, (size_t)rem * sizeof(T));
        }
        for (w = FX_LANES / 2; w > 0; w /= 2)
            for (j = 0; j < w; j++) {
                acc[j] += acc[j + w]; cnt[j] += cnt[j + w];
                if (sq) acq[j] += acq[j + w];
            }
        if (m == -(T)INFINITY) {
            t = (cnt[0] - 1.0) + acc[0];
            if (sq) q = (cnt[0] - 1.0) + acq[0];
        } else if (mn > m) {
            double f = exp((double)m - (double)mn);
            t = (1.0 + t) * f + (cnt[0] - 1.0) + acc[0];
            if (sq) q = (1.0 + q) * (f * f) + (cnt[0] - 1.0) + acq[0];
        } else {
            t += cnt[0] + acc[0];
            if (sq) q += cnt[0] + acq[0];
        }
        m = mn;
    }
    if (nan_seen || t != t) {
        *m_out = (T)NAN;
        *t_out = NAN;
        return 1;
    }
    *m_out = m;
    *t_out = t;
    if (sq) *q_out = q;
    return m == -(T)INFINITY;
}

/* Statistics of a segment (n <= FX_SEG); with e != NULL also e = exp(x - m_b) and the running
 * max m_b of each FX_BLOCK block in bm (e may be the row's own gradient buffer). */
static inline int FX_S(seg_stats)(const T *x, ptrdiff_t n, T *m_out, double *t_out, T *e, T *bm)
{
    if (e != NULL)
        return FX_S(seg_stats_impl)(x, n, m_out, t_out, e, bm, 1, NULL, 0);
    return FX_S(seg_stats_impl)(x, n, m_out, t_out, NULL, NULL, 0, NULL, 0);
}

/* Fold a segment's (mk, tk) into the running (m, t), in segment order; a NaN tk poisons t. */
static inline void FX_S(stats_merge)(T *m, double *t, T mk, double tk)
{
    if (tk != tk) { *t = NAN; return; }
    if (*t != *t) return;
    if (mk == (T)INFINITY || *m == (T)INFINITY) { *m = (T)INFINITY; *t = INFINITY; return; }
    if (mk == -(T)INFINITY) return;
    if (*m == -(T)INFINITY) { *m = mk; *t = tk; return; }
    if (mk > *m) {
        *t = (1.0 + *t) * exp((double)*m - (double)mk) + tk;
        *m = mk;
    } else {
        *t += (1.0 + tk) * exp((double)mk - (double)*m);
    }
}

/* A finite statistic pair (m, t): not NaN, not +inf, not all -inf. */
static inline int FX_S(stats_bad)(T m, double t)
{
    return (t != t) || m == -(T)INFINITY || m == (T)INFINITY;
}

/* Statistics of a row of any length (see the top of this file); e / bm as seg_stats. */
static inline int FX_S(row_stats)(const T *x, ptrdiff_t n, T *m_out, double *t_out, T *e, T *bm)
{
    if (n <= FX_SEG) return FX_S(seg_stats)(x, n, m_out, t_out, e, bm);
    T m = -(T)INFINITY, mk;
    double t = 0.0, tk;
    for (ptrdiff_t b = 0; b < n; b += FX_SEG) {
        FX_S(seg_stats)(x + b, n - b < FX_SEG ? n - b : FX_SEG, &mk, &tk,
                        e ? e + b : NULL, bm ? bm + b / FX_BLOCK : NULL);
        FX_S(stats_merge)(&m, &t, mk, tk);
        if (t != t) break;
    }
    *m_out = m;
    *t_out = t;
    return FX_S(stats_bad)(m, t);
}

/* row_stats with q = sum(exp(x - m)^2) - 1 (no stored exps): the sum of the squared softmax
 * is (1 + q) / (1 + t)^2.  Segments are merged as stats_merge merges t (q with the squared
 * factor); q is meaningful only when the row's statistics are (return value 0). */
static inline int FX_S(row_stats_sq)(const T *x, ptrdiff_t n, T *m_out, double *t_out,
                                     double *q_out)
{
    T m = -(T)INFINITY, mk;
    double t = 0.0, q = 0.0, tk, qk = 0.0;
    for (ptrdiff_t b = 0; b < n; b += FX_SEG) {
        FX_S(seg_stats_impl)(x + b, n - b < FX_SEG ? n - b : FX_SEG, &mk, &tk, NULL, NULL, 0,
                             &qk, 1);
        if (b == 0 || m == -(T)INFINITY) {
            q = qk;
        } else if (mk != -(T)INFINITY) {
            if (mk > m) {
                double f = exp((double)m - (double)mk);
                q = (1.0 + q) * (f * f) + qk;
            } else {
                double f = exp((double)mk - (double)m);
                q += (1.0 + qk) * (f * f);
            }
        }
        FX_S(stats_merge)(&m, &t, mk, tk);
        if (t != t) break;
    }
    *m_out = m;
    *t_out = t;
    *q_out = q;
    return FX_S(stats_bad)(m, t);
}

/* sum(w * (m - x)) in double: the label-smoothing term (every term >= 0, no cancellation);
 * w NULL: unit weights.  Segments in order, as row_stats. */
static inline double FX_S(seg_gap)(const T *x, ptrdiff_t n, T m, const double *w)
{
    double acc = 0.0;
    if (w == NULL) {
        FX_SIMD_SUM(acc)
        for (ptrdiff_t i = 0; i < n; i++) acc += (double)(m - x[i]);
    } else {
        FX_SIMD_SUM(acc)
        for (ptrdiff_t i = 0; i < n; i++) acc += w[i] * (double)(m - x[i]);
    }
    return acc;
}

static inline double FX_S(row_gap)(const T *x, ptrdiff_t n, T m, const double *w)
{
    double acc = 0.0;
    for (ptrdiff_t b = 0; b < n; b += FX_SEG)
        acc += FX_S(seg_gap)(x + b, n - b < FX_SEG ? n - b : FX_SEG, m, w ? w + b : NULL);
    return acc;
}

/* Soft targets: sp = sum(w p), spg = sum(w p (m - x)) in double (w NULL: unit weights). */
static inline void FX_S(row_soft)(const T *x, const T *p, ptrdiff_t n, T m, const double *w,
                                  double *sp, double *spg)
{
    double a = 0.0, b = 0.0;
    if (w == NULL) {
        FX_PRAGMA(omp simd reduction(+:a) reduction(+:b))
        for (ptrdiff_t i = 0; i < n; i++) {
            a += (double)p[i];
            b += (double)p[i] * (double)(m - x[i]);
        }
    } else {
        FX_PRAGMA(omp simd reduction(+:a) reduction(+:b))
        for (ptrdiff_t i = 0; i < n; i++) {
            double wp = w[i] * (double)p[i];
            a += wp;
            b += wp * (double)(m - x[i]);
        }
    }
    *sp = a;
    *spg = b;
}

/* ------------------------------------------------------------------ short rows
 * R rows of C <= FX_SHORT_C contiguous classes at row stride rs (elements), vectorised across
 * rows: m[r] = max, ls[r] = log(sum(exp(x - m))) (as log1p of the sum without the maximum's own
 * 1; NaN for a NaN / +inf / all -inf row), is[r] = 1 / sum, xy[r] = x[r, y[r]].  With sq
 * (short_stats_score, the scoring statistics) also, over c != y[r], u[r] = sum of exp(x - m)
 * (s u = 1 - p_y without cancellation) and q[r] = sum of exp(x - m)^2 in double (a float square
 * is exact there: the result does not depend on the row's lane), and rank[r], the classes that
 * beat y[r] (as fx_score.h's score_rank), from the same L1 tile. */
static inline __attribute__((always_inline)) void
FX_S(short_stats_impl)(const T *x, ptrdiff_t rs, ptrdiff_t R, ptrdiff_t C, const ptrdiff_t *y,
                       T *m, T *ls, T *is, T *xy, T *u, double *q, int *rank, const int sq)
{
    T tr[FX_SHORT_C * FX_SHORT_R];  /* the block transposed: tr[c][r], all in L1 */
    T t[FX_SHORT_R], cnt[FX_SHORT_R];
    int nan[FX_SHORT_R];
#if FX_F32
    fx_short_transpose_f32(x, rs, R, C, tr, FX_SHORT_R);
#else
    for (ptrdiff_t r = 0; r < R; r++)
        for (ptrdiff_t c = 0; c < C; c++) tr[c * FX_SHORT_R + r] = x[r * rs + c];
#endif
    FX_SIMD
    for (ptrdiff_t r = 0; r < R; r++) {
        T v = tr[r];
        m[r] = v; nan[r] = v != v; t[r] = 0; cnt[r] = 0;
        if (sq) { u[r] = 0; q[r] = 0.0; }
    }
    for (ptrdiff_t c = 1; c < C; c++) {
        const T *tc = tr + c * FX_SHORT_R;
        FX_SIMD
        for (ptrdiff_t r = 0; r < R; r++) {
            T v = tc[r];
            m[r] = v > m[r] ? v : m[r];
            nan[r] |= v != v;
        }
    }
    for (ptrdiff_t c = 0; c < C; c++) {
        const T *tc = tr + c * FX_SHORT_R;
        T ec[FX_SHORT_R];
        FX_S(exp_diff)(tc, m, ec, R);
        FX_SIMD
        for (ptrdiff_t r = 0; r < R; r++) {
            T d = tc[r] - m[r];
            T e = ec[r];
            t[r] += d == 0 ? (T)0 : e;
            cnt[r] += d == 0 ? (T)1 : (T)0;
            if (sq) {
                u[r] += c == y[r] ? (T)0 : e;
                q[r] += c == y[r] ? 0.0 : (double)e * (double)e;
            }
        }
    }
    FX_SIMD
    for (ptrdiff_t r = 0; r < R; r++) xy[r] = tr[y[r] * FX_SHORT_R + r];
    if (sq) {
        FX_SIMD
        for (ptrdiff_t r = 0; r < R; r++) rank[r] = 0;
        for (ptrdiff_t c = 0; c < C; c++) {
            const T *tc = tr + c * FX_SHORT_R;
            FX_SIMD
            for (ptrdiff_t r = 0; r < R; r++) {
                T v = tc[r];
                rank[r] += (v > xy[r]) | (v != v) | ((v == xy[r]) & (c < y[r]));
            }
        }
    }
    FX_SIMD
    for (ptrdiff_t r = 0; r < R; r++) {
        int bad = nan[r] | (m[r] == (T)INFINITY) | (m[r] == -(T)INFINITY);
        T l = FX_LOG1P((cnt[r] - 1) + t[r]);
        ls[r] = bad ? (T)NAN : l;
        is[r] = (T)1 / (cnt[r] + t[r]);
    }
}

static inline void FX_S(short_stats)(const T *x, ptrdiff_t rs, ptrdiff_t R, ptrdiff_t C,
                                     const ptrdiff_t *y, T *m, T *ls, T *is, T *xy)
{
    FX_S(short_stats_impl)(x, rs, R, C, y, m, ls, is, xy, NULL, NULL, NULL, 0);
}

static inline void FX_S(short_stats_score)(const T *x, ptrdiff_t rs, ptrdiff_t R, ptrdiff_t C,
                                           const ptrdiff_t *y, T *m, T *ls, T *is, T *xy,
                                           T *u, double *q, int *rank)
{
    FX_S(short_stats_impl)(x, rs, R, C, y, m, ls, is, xy, u, q, rank, 1);
}

/* ------------------------------------------------------------------ row writers
 * The gradient (or softmax) of a row from its statistics.  Every writer may write over x
 * (in-place gradient) unless it says otherwise. */

/* The gradient from stored exps: g = a * exp(bm_b - m) * e - c * w over the FX_BLOCK blocks
 * of e (e = exp(x - bm_b), as seg_stats / row_stats store them; g may be e itself). */
static inline void FX_S(row_grad_e)(const T *e, const T *bm, T *g, ptrdiff_t n, T m, double a,
                                    T c, const double *w)
{
    for (ptrdiff_t b = 0; b < n; b += FX_BLOCK) {
        ptrdiff_t len = n - b < FX_BLOCK ? n - b : FX_BLOCK;
        T f = (T)(a * exp((double)bm[b / FX_BLOCK] - (double)m));
        const T *eb = e + b;
        T *gb = g + b;
        if (w == NULL) {
            FX_SIMD
            for (ptrdiff_t i = 0; i < len; i++) gb[i] = f * eb[i] - c;
        } else {
            const double *wb = w + b;
            FX_SIMD
            for (ptrdiff_t i = 0; i < len; i++) gb[i] = f * eb[i] - c * (T)wb[i];
        }
    }
}

/* row_grad_e written with non-temporal stores into g (g must not overlap e): computed
 * FX_CHUNK elements at a time into an L1 buffer, then streamed out. */
static inline void FX_S(row_grad_e_stream)(const T *e, const T *bm, T *g, ptrdiff_t n, T m,
                                           double a, T c, const double *w)
{
    T buf[FX_CHUNK] __attribute__((aligned(64)));
    ptrdiff_t head = (ptrdiff_t)(((64 - ((uintptr_t)g & 63)) & 63) / sizeof(T));
    if (!FX_HAVE_STREAM || ((uintptr_t)g % sizeof(T)) || head >= n) {
        FX_S(row_grad_e)(e, bm, g, n, m, a, c, w);
        return;
    }
    /* the head (fewer than 64 bytes) with plain stores, then FX_CHUNK-element chunks from
     * the first 64-byte aligned element (a chunk may span two blocks of e) */
    ptrdiff_t i = 0, cur = -1;
    T f = 0;
    for (; i < head; i++) {
        if (i / FX_BLOCK != cur) { cur = i / FX_BLOCK; f = (T)(a * exp((double)bm[cur] - (double)m)); }
        g[i] = f * e[i] - c * (w ? (T)w[i] : (T)1);
    }
    for (; i < n; i += FX_CHUNK) {
        ptrdiff_t cl = n - i < FX_CHUNK ? n - i : FX_CHUNK;
        for (ptrdiff_t q = 0; q < cl;) {
            ptrdiff_t blk = (i + q) / FX_BLOCK, end = (blk + 1) * FX_BLOCK - i;
            end = end < cl ? end : cl;
            if (blk != cur) { cur = blk; f = (T)(a * exp((double)bm[cur] - (double)m)); }
            if (w == NULL) {
                FX_SIMD
                for (ptrdiff_t u = q; u < end; u++) buf[u] = f * e[i + u] - c;
            } else {
                FX_SIMD
                for (ptrdiff_t u = q; u < end; u++) buf[u] = f * e[i + u] - c * (T)w[i + u];
            }
            q = end;
        }
        if (cl == FX_CHUNK)
            fx_stream_copy(g + i, buf, FX_CHUNK * (ptrdiff_t)sizeof(T));
        else
            memcpy(g + i, buf, (size_t)cl * sizeof(T));
    }
}

/* short rows: g[r, c] = a[r] * exp(x[r, c] - m[r]) - cw[r] * (w ? w[c] : 1) */
static inline void FX_S(short_grad)(const T *x, ptrdiff_t rs, T *g, ptrdiff_t gs, ptrdiff_t R,
                                    ptrdiff_t C, const T *m, const T *a, const T *cw,
                                    const double *w)
{
    for (ptrdiff_t c = 0; c < C; c++) {
        T wc = w ? (T)w[c] : (T)1;
        FX_SIMD
        for (ptrdiff_t r = 0; r < R; r++)
            g[r * gs + c] = a[r] * FX_EXP(x[r * rs + c] - m[r]) - cw[r] * wc;
    }
}

/* log-softmax: y = (x - m) - ls with ls = log(s); x - m is exact near the max */
static inline void FX_S(row_shift)(const T *x, T *y, ptrdiff_t n, T m, T ls)
{
    FX_SIMD
    for (ptrdiff_t i = 0; i < n; i++) y[i] = (x[i] - m) - ls;
}

#undef T
#undef FX_HAVE_VEXP
#undef FX_V
#undef FX_VT
#undef FX_VMASK
#undef FX_VCMP_MASK
#undef FX_VOP
#undef FX_VEXP
