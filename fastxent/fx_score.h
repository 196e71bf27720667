/*
 * fastxent C numerics, part 6: the scoring statistics of a row (batch evaluation), a template
 * as fx_lse.h.  For a row of C scores and its label y, one read of the row from memory gives:
 *   loss   the negative log-likelihood of y: logits through fx_xent_row (the cross-entropy's own
 *          per-row formula, the same number as cross_entropy(reduction="none")); log-probabilities
 *          -x[y]; probabilities -log(clip(q[y], lo, 1)) (as cross_entropy_from_probs)
 *   rank   the number of classes that beat y: x[c] > x[y], or x[c] == x[y] and c < y (so
 *          rank == 0 is an argmax-first top-1 hit and rank < k a top-k hit); a NaN beats every
 *          number, as np.argmax sees it (ties among NaNs by class index)
 *   conf   the top-1 probability (softmax max, exp(max), or max q)
 *   brier  sum_c (p_c - [c == y])^2 = (1 - p_y)^2 + sum_{c != y} p_c^2 (no cancellation for a
 *          confident row; 1 - p_y = -expm1(-loss) for logits and log-probabilities)
 * The loss of logits is rounded to the row's type, so it equals cross_entropy(reduction="none")
 * bit for bit.
 * Rows whose label is ignore_index give loss 0, rank -1, conf 0, brier 0.  For logits the row's
 * exps are kept from the log-sum-exp pass (rows one at a time) or recomputed from the L1 tile
 * (short rows, vectorised across rows): the row is read from memory once.
 */
#ifndef FASTXENT_FX_SCORE_ONCE
#define FASTXENT_FX_SCORE_ONCE
enum { FX_SCORE_LOGITS = 0, FX_SCORE_LOGPROBS = 1, FX_SCORE_PROBS = 2 };

/* A scoring call: the rows, the labels and the per-row outputs (float64 / int64, contiguous). */
typedef struct fx_score_args {
    fx_view x;              /* scores (rows, C) */
    const char *t;          /* labels, int64, stride ts bytes */
    ptrdiff_t ts;
    ptrdiff_t C;
    ptrdiff_t ignore_index;
    int kind;               /* FX_SCORE_* */
    double lo;              /* probabilities: the lower clip */
    double *loss, *conf, *brier;
    int64_t *rank;
} fx_score_args;

static inline void fx_score_skip(const fx_score_args *A, ptrdiff_t i)
{
    A->loss[i] = 0.0;
    A->rank[i] = -1;
    A->conf[i] = 0.0;
    A->brier[i] = 0.0;
}
#endif

#define T FX_T

/* rank of y among the row's scores (see the top of this file) */
static inline ptrdiff_t FX_S(score_rank)(const T *x, ptrdiff_t n, ptrdiff_t y)
{
    T xy = x[y];
    ptrdiff_t above = 0, tied = 0;
    if (xy != xy) {
        FX_PRAGMA(omp simd reduction(+:tied))
        for (ptrdiff_t c = 0; c < y; c++) tied += x[c] != x[c];
        return tied;
    }
    FX_PRAGMA(omp simd reduction(+:above))
    for (ptrdiff_t c = 0; c < n; c++) above += (x[c] > xy) | (x[c] != x[c]);
    FX_PRAGMA(omp simd reduction(+:tied))
    for (ptrdiff_t c = 0; c < y; c++) tied += x[c] == xy;
    return above + tied;
}

/* One row (any length), contiguous in x.  e / bm: scratch for the stored exps (logits). */
static inline void FX_S(score_row)(const fx_score_args *A, const T *x, ptrdiff_t i, ptrdiff_t y,
                                   T *e, T *bm)
{
    ptrdiff_t C = A->C;
    double s2 = 0.0, miss;
    A->rank[i] = FX_S(score_rank)(x, C, y);
    if (A->kind == FX_SCORE_LOGITS) {
        T m;
        double t;
        if (FX_S(row_stats)(x, C, &m, &t, e, bm)) {
            A->loss[i] = NAN; A->conf[i] = NAN; A->brier[i] = NAN;
            return;
        }
        fx_xent_opts o = {NULL, (double)C, C, 0.0, 0.0, 0.0, 0, FX_INPUT_LOGITS};
        fx_xent_stat st;
        st.m = (double)m; st.ls = log1p(t); st.inv_s = 1.0 / (1.0 + t);
        st.xy = (double)x[y]; st.wy = 1.0; st.gap = 0.0; st.sp = 0.0; st.spg = 0.0;
        st.fu = 1.0; st.fF = 1.0;
        double loss = fx_xent_row(&o, &st, 0.0).loss;
        A->loss[i] = (double)(T)loss;
        A->conf[i] = st.inv_s;
        e[y] = 0;                               /* the label's own term is (1 - p_y)^2 */
        for (ptrdiff_t b = 0; b < C; b += FX_BLOCK) {
            ptrdiff_t len = C - b < FX_BLOCK ? C - b : FX_BLOCK;
            double f = exp((double)bm[b / FX_BLOCK] - (double)m), acc = 0.0;
            const T *eb = e + b;
            FX_SIMD_SUM(acc)
            for (ptrdiff_t c = 0; c < len; c++) acc += (double)eb[c] * (double)eb[c];
            s2 += acc * f * f;
        }
        s2 *= st.inv_s * st.inv_s;
        miss = -expm1(-loss);
    } else {
        T mx = -(T)INFINITY;
        int logp = A->kind == FX_SCORE_LOGPROBS, nan = 0;
        FX_PRAGMA(omp simd reduction(max:mx) reduction(+:s2) reduction(|:nan))
        for (ptrdiff_t c = 0; c < C; c++) {
            T v = x[c];
            double p = logp ? (double)FX_PEXP(v) : (double)v;
            mx = v > mx ? v : mx;
            nan |= v != v;
            s2 += c == y ? 0.0 : p * p;
        }
        double xy = (double)x[y];
        if (logp) {
            A->loss[i] = -xy;
            A->conf[i] = nan ? NAN : exp((double)mx);
            miss = -expm1(xy);
        } else {
            T qc = x[y] < (T)A->lo ? (T)A->lo : x[y];
            qc = qc > (T)1 ? (T)1 : qc;
            A->loss[i] = -(double)FX_PLOG(qc);
            A->conf[i] = nan ? NAN : (double)mx;
            miss = 1.0 - xy;
        }
    }
    A->brier[i] = miss * miss + s2;
}

/* Short rows (logits, C <= FX_SHORT_C, contiguous): the statistics vectorised across rows, as
 * xent_short; rank and the sum of squared probabilities from the same L1-resident rows. */
static inline ptrdiff_t FX_S(score_short)(const fx_score_args *A, ptrdiff_t lo, ptrdiff_t hi)
{
    ptrdiff_t C = A->C, rs = A->x.s0 / (ptrdiff_t)sizeof(T), bad = -1;
    ptrdiff_t yi[FX_SHORT_R];
    char valid[FX_SHORT_R];
    T m[FX_SHORT_R], ls[FX_SHORT_R], is[FX_SHORT_R], xy[FX_SHORT_R];
    double s2[FX_SHORT_R];
    int64_t rank[FX_SHORT_R];
    fx_xent_opts o = {NULL, (double)C, C, 0.0, 0.0, 0.0, 0, FX_INPUT_LOGITS};
    for (ptrdiff_t r0 = lo; r0 < hi; r0 += FX_SHORT_R) {
        ptrdiff_t R = hi - r0 < FX_SHORT_R ? hi - r0 : FX_SHORT_R, r;
        for (r = 0; r < R; r++) {
            ptrdiff_t y = (ptrdiff_t)*(const int64_t *)(A->t + (r0 + r) * A->ts);
            int ok = y >= 0 && y < C && y != A->ignore_index;
            if (!ok && y != A->ignore_index && bad < 0) bad = r0 + r;
            valid[r] = (char)ok;
            yi[r] = ok ? y : 0;
            s2[r] = 0.0;
            rank[r] = 0;
        }
        const T *xb = (const T *)(A->x.base + r0 * A->x.s0);
        FX_S(short_stats)(xb, rs, R, C, yi, m, ls, is, xy);
        for (ptrdiff_t c = 0; c < C; c++) {
            FX_SIMD
            for (r = 0; r < R; r++) {
                T v = xb[r * rs + c];
                T e = FX_EXP(v - m[r]);
                s2[r] += c == yi[r] ? 0.0 : (double)e * (double)e;
                rank[r] += (v > xy[r]) | (v != v) | ((v == xy[r]) & (c < yi[r]));
            }
        }
        for (r = 0; r < R; r++) {
            ptrdiff_t i = r0 + r;
            if (!valid[r]) {
                fx_score_skip(A, i);
                continue;
            }
            fx_xent_stat st;
            st.m = (double)m[r]; st.ls = (double)ls[r]; st.inv_s = (double)is[r];
            st.xy = (double)xy[r]; st.wy = 1.0; st.gap = 0.0; st.sp = 0.0; st.spg = 0.0;
            st.fu = 1.0; st.fF = 1.0;
            double loss = fx_xent_row(&o, &st, 0.0).loss;
            A->loss[i] = (double)(T)loss;
            if (xy[r] != xy[r])
                A->rank[i] = FX_S(score_rank)(xb + r * rs, C, yi[r]);
            else
                A->rank[i] = rank[r];
            if (ls[r] != ls[r]) {           /* NaN / +inf / all -inf row */
                A->loss[i] = NAN;
                A->conf[i] = NAN;
                A->brier[i] = NAN;
                continue;
            }
            double miss = -expm1(-loss);
            A->conf[i] = st.inv_s;
            A->brier[i] = miss * miss + s2[r] * st.inv_s * st.inv_s;
        }
    }
    return bad;
}

/* Rows lo..hi.  Returns the first row whose label is out of [0, C) and not ignore_index, or
 * -1; -2 when a scratch allocation failed. */
static inline ptrdiff_t FX_S(score_rows)(const fx_score_args *A, ptrdiff_t lo, ptrdiff_t hi)
{
    ptrdiff_t C = A->C, bad = -1;
    int logits = A->kind == FX_SCORE_LOGITS, strided = A->x.cs != (ptrdiff_t)sizeof(T);
    T *e = NULL, *bm = NULL, *buf = NULL;
    if (logits && C <= FX_SHORT_C && !strided && A->x.D == 1)
        return FX_S(score_short)(A, lo, hi);
    if (logits) {
        e = (T *)malloc((size_t)C * sizeof(T));
        bm = (T *)malloc((size_t)((C + FX_BLOCK - 1) / FX_BLOCK) * sizeof(T));
    }
    if (strided) buf = (T *)malloc((size_t)C * sizeof(T));
    if ((logits && (!e || !bm)) || (strided && !buf)) {
        free(e); free(bm); free(buf);
        return -2;
    }
    for (ptrdiff_t i = lo; i < hi; i++) {
        ptrdiff_t y = (ptrdiff_t)*(const int64_t *)(A->t + i * A->ts);
        if (y == A->ignore_index || y < 0 || y >= C) {
            if (y != A->ignore_index && bad < 0) bad = i;
            fx_score_skip(A, i);
            continue;
        }
        const T *xr = FX_S(run)(fx_row(&A->x, i), A->x.cs, C, buf);
        FX_S(score_row)(A, xr, i, y, e, bm);
    }
    free(e); free(bm); free(buf);
    return bad;
}

#undef T
