/*
 * fastxent C numerics, part 6: the scoring statistics of a row (batch evaluation), a template
 * as fx_lse.h.  For a row of C scores and its label y, one read of the row from memory gives:
 *   loss   the negative log-likelihood of y: logits through fx_xent_row (the cross-entropy's own
 *          per-row formula, the same number as cross_entropy(reduction="none")); log-probabilities
 *          -x[y]; probabilities -log(clip(q[y], lo, 1)) (as cross_entropy_from_probs)
 *   rank   the number of classes that beat y: x[c] > x[y], or x[c] == x[y] and c < y (so
 *          rank == 0 is an argmax-first top-1 hit and rank < k a top-k hit); a NaN beats every
 *          number, as np.argmax sees it (ties among NaNs by class index).  Reported up to a
 *          cap (the largest k of a top-k accuracy): with cap 1 (top-1 only) the rank of logits
 *          needs no counting pass (y is a hit when x[y] is the row's maximum m and no earlier
 *          class ties it).
 *   conf   the top-1 probability (softmax max, exp(max), or max q)
 *   brier  sum_c (p_c - [c == y])^2 = (1 - p_y)^2 + sum_{c != y} p_c^2 (no cancellation for a
 *          confident row; 1 - p_y = -expm1(-loss) for logits and log-probabilities)
 * The loss of logits is rounded to the row's type, so it equals cross_entropy(reduction="none")
 * bit for bit.
 * Rows whose label is ignore_index give loss 0, rank -1, conf 0, brier 0.  For logits the sum
 * of the squared exps comes out of the log-sum-exp pass itself (row_stats_sq / short_stats_score):
 * one exp per element, and the row is read from memory once (a rank count, when a cap above 1
 * asks for one, reads it again from cache).
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
    ptrdiff_t rank_cap;     /* ranks >= rank_cap (>= 1) are reported as rank_cap */
    double lo;              /* probabilities: the lower clip */
    double *loss, *conf, *brier;
    int64_t *rank;
} fx_score_args;

/* Exact sums (the scoring summary's arithmetic, fastxent/score/_exact.py): each finite value
 * v = +-m * 2**(max(e, 1) - 1075) as a float64 (a float32 converts exactly), its 53-bit
 * mantissa m split into 26 low and 27 high bits, added with its sign into
 * acc[g][e][0] (low) and acc[g][e][1] (high), g = idx[i] (0 without idx).  Every addend is
 * below 2**27 in magnitude, so fewer than 2**36 values keep each int64 total exact.  Returns
 * the first i whose group is outside [0, n_groups), or -1. */
static inline ptrdiff_t fx_exact_add(const void *x, int f32, ptrdiff_t n, const int64_t *idx,
                                     int64_t *acc, ptrdiff_t n_groups)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        double v = f32 ? (double)((const float *)x)[i] : ((const double *)x)[i];
        int64_t g = idx != NULL ? idx[i] : 0;
        uint64_t bits;
        if (g < 0 || g >= n_groups) return i;
        memcpy(&bits, &v, sizeof bits);
        int64_t e = (int64_t)((bits >> 52) & 0x7FF);
        int64_t m = (int64_t)(bits & ((UINT64_C(1) << 52) - 1)) | (e ? INT64_C(1) << 52 : 0);
        int64_t *a = acc + (g * 2048 + e) * 2;
        if (bits >> 63) {
            a[0] -= m & ((INT64_C(1) << 26) - 1);
            a[1] -= m >> 26;
        } else {
            a[0] += m & ((INT64_C(1) << 26) - 1);
            a[1] += m >> 26;
        }
    }
    return -1;
}

static inline void fx_score_skip(const fx_score_args *A, ptrdiff_t i)
{
    A->loss[i] = 0.0;
    A->rank[i] = -1;
    A->conf[i] = 0.0;
    A->brier[i] = 0.0;
}
#endif

#define T FX_T

/* Classes c in [lo, hi) that beat a label value xy: x[c] >= xy before the label (ties with an
 * earlier class), x[c] > xy from the label on, and NaN anywhere.  32-bit lane counts (full
 * vectors), at most FX_SEG classes per call. */
static inline int FX_S(score_beat)(const T *x, ptrdiff_t lo, ptrdiff_t hi, T xy, int before)
{
    int k = 0;
    if (before) {
        FX_PRAGMA(omp simd reduction(+:k))
        for (ptrdiff_t c = lo; c < hi; c++) k += (x[c] >= xy) | (x[c] != x[c]);
    } else {
        FX_PRAGMA(omp simd reduction(+:k))
        for (ptrdiff_t c = lo; c < hi; c++) k += (x[c] > xy) | (x[c] != x[c]);
    }
    return k;
}

static inline ptrdiff_t FX_S(score_capped)(const fx_score_args *A, ptrdiff_t rank)
{
    return rank < A->rank_cap ? rank : A->rank_cap;
}

/* the classes c < y with x[c] == xy */
static inline ptrdiff_t FX_S(score_ties)(const T *x, ptrdiff_t y, T xy)
{
    ptrdiff_t k = 0;
    for (ptrdiff_t b = 0; b < y; b += FX_SEG) {
        int eq = 0;
        ptrdiff_t e = y - b < FX_SEG ? y : b + FX_SEG;
        FX_PRAGMA(omp simd reduction(+:eq))
        for (ptrdiff_t c = b; c < e; c++) eq += x[c] == xy;
        k += eq;
    }
    return k;
}

/* rank of y among the row's scores (see the top of this file); one pass over the row */
static inline ptrdiff_t FX_S(score_rank)(const T *x, ptrdiff_t n, ptrdiff_t y)
{
    T xy = x[y];
    ptrdiff_t k = 0;
    if (xy != xy) {             /* only the NaNs before the label beat a NaN label */
        for (ptrdiff_t b = 0; b < y; b += FX_SEG) {
            int nan = 0;
            ptrdiff_t e = y - b < FX_SEG ? y : b + FX_SEG;
            FX_PRAGMA(omp simd reduction(+:nan))
            for (ptrdiff_t c = b; c < e; c++) nan += x[c] != x[c];
            k += nan;
        }
        return k;
    }
    for (ptrdiff_t b = 0; b < n; b += FX_SEG) {
        ptrdiff_t e = n - b < FX_SEG ? n : b + FX_SEG;
        ptrdiff_t s = y < b ? b : (y > e ? e : y);      /* [b, s) lies before the label */
        k += FX_S(score_beat)(x, b, s, xy, 1) + FX_S(score_beat)(x, s, e, xy, 0);
    }
    return k;
}

/* One row (any length), contiguous in x. */
static inline void FX_S(score_row)(const fx_score_args *A, const T *x, ptrdiff_t i, ptrdiff_t y)
{
    ptrdiff_t C = A->C;
    double s2 = 0.0, miss;
    if (A->kind == FX_SCORE_LOGITS) {
        T m, xy = x[y];
        double t, q = 0.0;
        int bad = FX_S(row_stats_sq)(x, C, &m, &t, &q);
        if (A->rank_cap <= 1 && !bad)    /* a top-1 hit: y is a maximum, with no tie before it */
            A->rank[i] = xy == m ? FX_S(score_ties)(x, y, xy) > 0 : 1;
        else
            A->rank[i] = FX_S(score_capped)(A, FX_S(score_rank)(x, C, y));
        if (bad) {
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
        /* 1 - p_y and the sum of the other squared probabilities: the label's own terms taken
         * out of the sums (t and q alone when the label is a maximum; else 1 + t >= 1 + e_y,
         * 1 + q >= 1 + e_y^2: no cancellation) */
        if (xy == m) {
            miss = t;
            s2 = q;
        } else {
            double ey = exp((double)xy - (double)m);
            miss = (1.0 + t) - ey;
            s2 = (1.0 + q) - ey * ey;
        }
        miss *= st.inv_s;
        s2 *= st.inv_s * st.inv_s;
    } else {
        T mx = -(T)INFINITY;
        A->rank[i] = FX_S(score_capped)(A, FX_S(score_rank)(x, C, y));
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
 * xent_short; rank and the sum of squared probabilities from the same transposed L1 tile. */
static inline ptrdiff_t FX_S(score_short)(const fx_score_args *A, ptrdiff_t lo, ptrdiff_t hi)
{
    ptrdiff_t C = A->C, rs = A->x.s0 / (ptrdiff_t)sizeof(T), bad = -1;
    ptrdiff_t yi[FX_SHORT_R];
    char valid[FX_SHORT_R];
    T m[FX_SHORT_R], ls[FX_SHORT_R], is[FX_SHORT_R], xy[FX_SHORT_R], u[FX_SHORT_R];
    double q[FX_SHORT_R];
    int rank[FX_SHORT_R];
    fx_xent_opts o = {NULL, (double)C, C, 0.0, 0.0, 0.0, 0, FX_INPUT_LOGITS};
    for (ptrdiff_t r0 = lo; r0 < hi; r0 += FX_SHORT_R) {
        ptrdiff_t R = hi - r0 < FX_SHORT_R ? hi - r0 : FX_SHORT_R, r;
        for (r = 0; r < R; r++) {
            ptrdiff_t y = (ptrdiff_t)*(const int64_t *)(A->t + (r0 + r) * A->ts);
            int ok = y >= 0 && y < C && y != A->ignore_index;
            if (!ok && y != A->ignore_index && bad < 0) bad = r0 + r;
            valid[r] = (char)ok;
            yi[r] = ok ? y : 0;
        }
        const T *xb = (const T *)(A->x.base + r0 * A->x.s0);
        FX_S(short_stats_score)(xb, rs, R, C, yi, m, ls, is, xy, u, q, rank);
        double *loss = A->loss + r0, *conf = A->conf + r0, *brier = A->brier + r0;
        int64_t *rk = A->rank + r0;
        /* the statistics of every row, vectorised across the rows */
        FX_SIMD
        for (r = 0; r < R; r++) {
            fx_xent_stat st;
            st.m = (double)m[r]; st.ls = (double)ls[r]; st.inv_s = (double)is[r];
            st.xy = (double)xy[r]; st.wy = 1.0; st.gap = 0.0; st.sp = 0.0; st.spg = 0.0;
            st.fu = 1.0; st.fF = 1.0;
            double miss = (double)u[r] * st.inv_s;          /* 1 - p_y */
            loss[r] = (double)(T)fx_xent_row(&o, &st, 0.0).loss;
            conf[r] = st.inv_s;
            brier[r] = miss * miss + q[r] * st.inv_s * st.inv_s;
            rk[r] = rank[r] < A->rank_cap ? rank[r] : A->rank_cap;
        }
        /* then the exceptions: ignored rows, rows without finite statistics, a NaN label */
        for (r = 0; r < R; r++) {
            if (!valid[r])
                fx_score_skip(A, r0 + r);
            else if (ls[r] != ls[r]) {          /* NaN / +inf / all -inf row */
                loss[r] = NAN;
                conf[r] = NAN;
                brier[r] = NAN;
                if (xy[r] != xy[r])
                    rk[r] = FX_S(score_capped)(A, FX_S(score_rank)(xb + r * rs, C, yi[r]));
            }
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
    T *buf = NULL;
    if (logits && C <= FX_SHORT_C && !strided && A->x.D == 1)
        return FX_S(score_short)(A, lo, hi);
    if (strided && !(buf = (T *)malloc((size_t)C * sizeof(T))))
        return -2;
    for (ptrdiff_t i = lo; i < hi; i++) {
        ptrdiff_t y = (ptrdiff_t)*(const int64_t *)(A->t + i * A->ts);
        if (y == A->ignore_index || y < 0 || y >= C) {
            if (y != A->ignore_index && bad < 0) bad = i;
            fx_score_skip(A, i);
            continue;
        }
        const T *xr = FX_S(run)(fx_row(&A->x, i), A->x.cs, C, buf);
        FX_S(score_row)(A, xr, i, y);
    }
    free(buf);
    return bad;
}

#undef T
