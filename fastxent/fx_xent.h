/*
 * fastxent C numerics, part 4: softmax cross-entropy.
 *
 * First (once): fx_xent_row, THE per-row cross-entropy -- from a row's statistics to its loss
 * and the coefficients of its gradient -- which every path uses (rows one at a time, short rows
 * vectorised across rows, long rows split across threads).  Then (template, per float type as
 * fx_lse.h) the loops over a block of rows that compute the statistics, call fx_xent_row and
 * write the gradient, and the log-sum-exp family (logsumexp / log_softmax / softmax) of a block.
 */
#ifndef FASTXENT_FX_XENT_ROW
#define FASTXENT_FX_XENT_ROW

/* What fx_xent_row needs of a row.  For logits, lse = m + ls is the row's log-sum-exp; for
 * log-probability input (nll_loss) m = ls = inv_s = 0. */
typedef struct fx_xent_stat {
    double m;           /* max of the row */
    double ls;          /* log(sum(exp(x - m))) */
    double inv_s;       /* 1 / sum(exp(x - m)) */
    double xy;          /* hard targets: x[y] */
    double wy;          /* hard targets: w[y] (1 without weights) */
    double gap;         /* label smoothing: sum_c w_c (m - x_c); else 0 */
    double sp, spg;     /* soft targets: sum_c w_c p_c, sum_c w_c p_c (m - x_c) */
    double fu, fF;      /* focal loss: (1 - p_y)^gamma and the gradient's factor; else 1, 1 */
} fx_xent_stat;

/* The row's loss and gradient:  g = a exp(x - m) - cw w - b onehot(y)   (soft: - b w p). */
typedef struct fx_xent_res {
    double loss;        /* the row's loss, z-loss included */
    double z;           /* the z-loss part */
    double a, cw, b;
} fx_xent_res;

/* Focal loss (Lin et al. 2017, multi-class): loss = -(1 - p_y)^gamma log p_y.  With
 * l = -log p_y, q = 1 - p_y = -expm1(-l) (exact for small l):
 *   fu = q^gamma,   d loss / d x = fF (softmax - onehot),   fF = q^gamma (1 + gamma p_y l / q),
 * where l / q -> 1 as l -> 0 and p_y l / q -> 0 as l -> inf (no 0 * inf). */
static inline void fx_focal(double gamma, double l, double *fu, double *fF)
{
    double q = -expm1(-l), p = exp(-l);
    double u = pow(q, gamma);
    double r = l == 0.0 ? 1.0 : l / q;
    double pr = p == 0.0 ? 0.0 : p * r;
    *fu = u;
    *fF = u * (1.0 + gamma * pr);
}

/*
 * The per-row cross-entropy.  Hard label y, weight w_y, smoothing eps, C classes, W = sum(w):
 *   loss = (1 - eps) w_y fu (lse - x_y) + eps/C sum_c w_c (lse - x_c) + zl lse^2
 *   grad = a exp(x - m) - cw w - b onehot(y)
 *     a = gs ((1 - eps) w_y fF + eps W / C + 2 zl lse) / s,  cw = gs eps / C,  b = gs (1 - eps) w_y fF
 * Soft targets p (p' = (1 - eps) p + eps / C):
 *   loss = sum_c w_c p'_c (lse - x_c) + zl lse^2,   grad = gs (sum(w p') + 2 zl lse) softmax - gs w p'
 * with lse - x_c = (m - x_c) + log(s), so no large numbers cancel.  gs: the row's gradient scale.
 */
static inline fx_xent_res fx_xent_row(const fx_xent_opts *o, const fx_xent_stat *s, double gs)
{
    fx_xent_res r;
    double e1 = 1.0 - o->eps, ec = o->eps / (double)o->C, coef, lse;
    if (o->soft) {
        r.loss = e1 == 0.0 ? 0.0 : e1 * (s->sp * s->ls + s->spg);
        coef = e1 * s->sp;
        r.b = gs * e1;
    } else {
        r.loss = e1 * s->wy * s->fu * ((s->m - s->xy) + s->ls);
        coef = e1 * s->wy * s->fF;
        r.b = gs * coef;
    }
    r.loss += ec * (o->W * s->ls + s->gap);
    coef += ec * o->W;
    lse = s->m + s->ls;
    r.z = o->zl != 0.0 ? o->zl * lse * lse : 0.0;     /* no z-loss: exactly 0, even for a NaN row */
    r.loss += r.z;
    coef += 2.0 * o->zl * lse;
    r.a = gs * coef * s->inv_s;
    r.cw = gs * ec;
    return r;
}

static inline ptrdiff_t fx_label(const fx_xent_args *A, ptrdiff_t i)
{
    const char *p = A->t + i * A->ts;
    return A->t64 ? (ptrdiff_t)*(const int64_t *)p : (ptrdiff_t)*(const int32_t *)p;
}

/* the row's gradient scale */
static inline double fx_row_gs(const fx_xent_args *A, ptrdiff_t i)
{
    return A->row_scale != NULL ? A->gscale * A->row_scale[i] : A->gscale;
}

/* R labels from row r0: yi = y for a valid label, 0 otherwise; valid = 0 <= y < C and
 * y != ignore_index.  Returns the first row (relative) whose label is out of range and not
 * ignore_index, or -1. */
static inline ptrdiff_t fx_short_labels(const fx_xent_args *A, ptrdiff_t r0, ptrdiff_t R,
                                        ptrdiff_t *yi, char *valid)
{
    ptrdiff_t C = A->o.C, ii = A->ignore_index, ts = A->ts;
    const char *t = A->t + r0 * ts;
    int anybad = 0, t64 = A->t64;
    FX_SIMD
    for (ptrdiff_t r = 0; r < R; r++) {
        const char *p = t + r * ts;
        ptrdiff_t y = t64 ? (ptrdiff_t)*(const int64_t *)p : (ptrdiff_t)*(const int32_t *)p;
        int ok = (y >= 0) & (y < C) & (y != ii);
        valid[r] = (char)ok;
        yi[r] = ok ? y : 0;
        anybad |= !ok & (y != ii);
    }
    if (!anybad) return -1;
    for (ptrdiff_t r = 0; r < R; r++)
        if (!valid[r] && fx_label(A, r0 + r) != ii) return r;
    return -1;
}

#endif /* FASTXENT_FX_XENT_ROW */

/* ==================================================================== template part */
#define T FX_T

/* emit a row's results: per-row outputs (scaled to the unit) and the block's sums */
static inline void FX_S(xent_emit)(const fx_xent_args *A, ptrdiff_t i, double loss, double z,
                                   fx_part *part)
{
    part->loss += loss;
    part->z += z;
    if (A->loss_out != NULL) ((T *)A->loss_out)[i] = (T)(loss * A->lscale);
    if (A->z_out != NULL) ((T *)A->z_out)[i] = (T)(z * A->lscale);
}

/* fx_xent_row for R short rows from their statistics, vectorised across the rows (plain loads
 * only: the label weights wy, validity ok (1 / 0) and gradient scales gs gathered before). */
static inline __attribute__((always_inline)) void
FX_S(short_formula)(const fx_xent_opts *o, ptrdiff_t R, const T *m, const T *ls, const T *is,
                    const T *xy, const double *wy, const double *gap, const double *fu,
                    const double *fF, const double *gs, const double *ok, double *lossv,
                    double *zv, T *a, T *cw, T *b)
{
    FX_SIMD
    for (ptrdiff_t r = 0; r < R; r++) {
        fx_xent_stat st;
        st.m = (double)m[r]; st.ls = (double)ls[r]; st.inv_s = (double)is[r];
        st.xy = (double)xy[r]; st.wy = wy[r];
        st.gap = gap[r]; st.sp = 0.0; st.spg = 0.0; st.fu = fu[r]; st.fF = fF[r];
        fx_xent_res res = fx_xent_row(o, &st, gs[r]);
        int v = ok[r] != 0.0;
        lossv[r] = v ? res.loss : 0.0;
        zv[r] = v ? res.z : 0.0;
        a[r] = v ? (T)res.a : (T)0;
        cw[r] = v ? (T)res.cw : (T)0;
        b[r] = v ? (T)res.b : (T)0;
    }
}

/* Short rows (C <= FX_SHORT_C, hard labels, contiguous rows of the kernel type, 2-D),
 * FX_SHORT_R rows at a time: statistics and formula vectorised across rows. */
static inline void FX_S(xent_short)(const fx_xent_args *A, ptrdiff_t lo, ptrdiff_t hi,
                                    fx_part *part)
{
    const fx_xent_opts *o = &A->o;
    ptrdiff_t yi[FX_SHORT_R];
    char valid[FX_SHORT_R];
    T m[FX_SHORT_R], ls[FX_SHORT_R], is[FX_SHORT_R], xy[FX_SHORT_R];
    T a[FX_SHORT_R], cw[FX_SHORT_R], b[FX_SHORT_R];
    double lossv[FX_SHORT_R], zv[FX_SHORT_R], gap[FX_SHORT_R], fu[FX_SHORT_R];
    double fF[FX_SHORT_R], wy[FX_SHORT_R], ok[FX_SHORT_R], gs[FX_SHORT_R];
    ptrdiff_t C = o->C, rs = A->x.s0 / (ptrdiff_t)sizeof(T), grs = A->g.s0 / (ptrdiff_t)sizeof(T);
    int logits = o->input == FX_INPUT_LOGITS;
    /* the options with what this path implies as constants (hard labels; with or without
     * z-loss), so that the formula's selects on them fold away and its loop vectorizes */
    fx_xent_opts hard = *o, hard_z = *o;
    hard.soft = 0;
    hard.zl = 0.0;
    hard_z.soft = 0;
    for (ptrdiff_t r0 = lo; r0 < hi; r0 += FX_SHORT_R) {
        ptrdiff_t R = hi - r0 < FX_SHORT_R ? hi - r0 : FX_SHORT_R, r;
        ptrdiff_t y = fx_short_labels(A, r0, R, yi, valid);
        if (y >= 0 && part->bad < 0) part->bad = r0 + y;
        const T *xb = (const T *)(A->x.base + r0 * A->x.s0);
        if (logits) {
            FX_S(short_stats)(xb, rs, R, C, yi, m, ls, is, xy);
        } else {
            for (r = 0; r < R; r++) {
                m[r] = 0; ls[r] = 0; is[r] = 0; xy[r] = xb[r * rs + yi[r]];
            }
        }
        for (r = 0; r < R; r++) {
            gap[r] = 0.0; fu[r] = 1.0; fF[r] = 1.0;
        }
        if (o->eps != 0.0)
            for (r = 0; r < R; r++) gap[r] = FX_S(seg_gap)(xb + r * rs, C, m[r], o->w);
        if (o->gamma != 0.0)
            for (r = 0; r < R; r++)
                fx_focal(o->gamma, ((double)m[r] - (double)xy[r]) + (double)ls[r], &fu[r], &fF[r]);
        /* the label weights, validity and gradient scales gathered first, then the formula
         * vectorised across the rows (plain loads only; no reduction in the vector loop: the
         * block's sums are added in row order afterwards) */
        for (r = 0; r < R; r++) {
            ok[r] = valid[r] ? 1.0 : 0.0;
            wy[r] = valid[r] ? (o->w != NULL ? o->w[yi[r]] : 1.0) : 0.0;
            gs[r] = fx_row_gs(A, r0 + r);
        }
        double sl = 0.0, sz = 0.0, sw = 0.0;
        if (o->zl == 0.0)       /* the usual case, with "no z-loss" known to the compiler */
            FX_S(short_formula)(&hard, R, m, ls, is, xy, wy, gap, fu, fF, gs, ok, lossv, zv, a,
                                cw, b);
        else
            FX_S(short_formula)(&hard_z, R, m, ls, is, xy, wy, gap, fu, fF, gs, ok, lossv, zv,
                                a, cw, b);
        for (r = 0; r < R; r++) {
            sl += lossv[r];
            sz += zv[r];
            sw += wy[r];
        }
        part->loss += sl;
        part->z += sz;
        part->wsum += sw;
        if (A->loss_out != NULL)
            for (r = 0; r < R; r++) ((T *)A->loss_out)[r0 + r] = (T)(lossv[r] * A->lscale);
        if (A->z_out != NULL)
            for (r = 0; r < R; r++) ((T *)A->z_out)[r0 + r] = (T)(zv[r] * A->lscale);
        if (A->g.base != NULL) {
            T *gb = (T *)(A->g.base + r0 * A->g.s0);
            if (logits) {
                FX_S(short_grad)(xb, rs, gb, grs, R, C, m, a, cw, o->w);
            } else {
                for (r = 0; r < R; r++) {
                    T *gr = gb + r * grs;
                    for (ptrdiff_t c = 0; c < C; c++)
                        gr[c] = -cw[r] * (o->w != NULL ? (T)o->w[c] : (T)1);
                }
            }
            for (r = 0; r < R; r++) {
                if (valid[r])
                    gb[r * grs + yi[r]] -= b[r];
                else
                    FX_S(fill)(gb + r * grs, C, 0);
            }
        }
    }
}

/* Scratch of one block of rows (allocated once per block; NULL members are unused). */
typedef struct FX_S(xent_scratch) {
    T *z;               /* the row loaded (strided / 16-bit / transformed logits) */
    T *g;               /* the gradient row before it is stored (buffered path) */
    T *p;               /* soft targets loaded */
    T *e;               /* exp(x - m_b) when it cannot live in the gradient row itself */
    T *bm;              /* the running max of each FX_BLOCK block */
} FX_S(xent_scratch);

/* Gradient of one row from its stored exps: g = f_b e - w (b p + c) for soft targets,
 * g = f_b e - c w - b onehot(y) for a hard label (y < 0: none); f_b = a exp(bm_b - m). */
static inline void FX_S(xent_write_grad)(const fx_xent_opts *o, const T *e, const T *bm,
                                         const T *p, T *g, T m, const fx_xent_res *res,
                                         ptrdiff_t y, int stream)
{
    ptrdiff_t C = o->C;
    if (o->input != FX_INPUT_LOGITS) {
        for (ptrdiff_t c = 0; c < C; c++) g[c] = -(T)res->cw * (o->w ? (T)o->w[c] : (T)1);
    } else if (stream && p == NULL) {
        FX_S(row_grad_e_stream)(e, bm, g, C, m, res->a, (T)res->cw, o->w);
    } else {
        FX_S(row_grad_e)(e, bm, g, C, m, res->a, (T)res->cw, o->w);
        if (p != NULL) {
            T bb = (T)res->b;
            if (o->w == NULL) {
                FX_SIMD
                for (ptrdiff_t c = 0; c < C; c++) g[c] -= bb * p[c];
            } else {
                FX_SIMD
                for (ptrdiff_t c = 0; c < C; c++) g[c] -= (T)o->w[c] * (bb * p[c]);
            }
        }
    }
    if (y >= 0) g[y] -= (T)res->b;
}

/* Rows lo..hi one at a time.  Rows that cannot be used in place (strided classes, 16-bit
 * floats, a logit transform) go through row buffers: load -> compute -> store. */
static inline void FX_S(xent_rows)(const fx_xent_args *A, ptrdiff_t lo, ptrdiff_t hi,
                                   fx_part *part)
{
    const fx_xent_opts *o = &A->o;
    ptrdiff_t C = o->C, y = -1;
    int has_grad = A->g.base != NULL, logits = o->input == FX_INPUT_LOGITS;
    int in_place = has_grad && A->g.base == A->x.base;
    FX_S(xent_scratch) S = {NULL, NULL, NULL, NULL, NULL};
    if (A->direct && C <= FX_SHORT_C && !o->soft && A->x.D == 1
        && (!has_grad || A->g.D == 1)) {
        FX_S(xent_short)(A, lo, hi, part);
        return;
    }
    if (!A->direct) {
        S.z = (T *)malloc((size_t)C * sizeof(T));
        if (has_grad) S.g = (T *)malloc((size_t)C * sizeof(T));
        if (o->soft) S.p = (T *)malloc((size_t)C * sizeof(T));
        if (!S.z || (has_grad && !S.g) || (o->soft && !S.p)) goto nomem;
    } else if (has_grad && logits && (in_place || A->stream)) {
        S.e = (T *)malloc((size_t)C * sizeof(T));
        if (!S.e) goto nomem;
    }
    if (has_grad && logits) {
        S.bm = (T *)malloc((size_t)((C + FX_BLOCK - 1) / FX_BLOCK) * sizeof(T));
        if (!S.bm) goto nomem;
    }
    for (ptrdiff_t i = lo; i < hi; i++) {
        const T *xr, *pr = NULL;
        T *gr = NULL, *e = NULL;
        fx_xent_stat st;
        double gs = fx_row_gs(A, i);
        st.wy = 1.0; st.gap = 0.0; st.sp = 0.0; st.spg = 0.0; st.fu = 1.0; st.fF = 1.0;
        st.xy = 0.0;
        if (!o->soft) {
            y = fx_label(A, i);
            if (y == A->ignore_index || y < 0 || y >= C) {
                if (y != A->ignore_index && part->bad < 0) part->bad = i;
                if (has_grad) {
                    if (A->direct) {
                        FX_S(fill)((T *)fx_row(&A->g, i), C, 0);
                    } else {
                        FX_S(fill)(S.g, C, 0);
                        FX_S(row_store)(S.g, S.g, C, 1, 0, fx_row(&A->g, i), A->g.cs, A->g.dt);
                    }
                }
                FX_S(xent_emit)(A, i, 0.0, 0.0, part);
                continue;
            }
            st.wy = o->w != NULL ? o->w[y] : 1.0;
            part->wsum += st.wy;
        } else {
            part->wsum += 1.0;      /* soft targets: "mean" divides by the number of rows */
        }
        if (A->direct) {
            xr = (const T *)fx_row(&A->x, i);
            if (o->soft) pr = (const T *)fx_row(&A->p, i);
            if (has_grad) gr = (T *)fx_row(&A->g, i);
            e = S.e != NULL ? S.e : gr;
        } else {
            FX_S(row_load)(fx_row(&A->x, i), A->x.cs, A->x.dt, C, (T)A->scale, (T)A->cap, S.z);
            xr = S.z;
            if (o->soft) {
                FX_S(row_load)(fx_row(&A->p, i), A->p.cs, A->p.dt, C, 1, 0, S.p);
                pr = S.p;
            }
            gr = S.g;
            e = S.g;
        }
        T m = 0;
        if (logits) {
            double t;
            if (FX_S(row_stats)(xr, C, &m, &t, has_grad ? e : NULL, S.bm)) {
                if (has_grad) {
                    FX_S(fill)(gr, C, (T)NAN);
                    if (!A->direct)
                        FX_S(row_store)(S.g, S.z, C, (T)A->scale, (T)A->cap, fx_row(&A->g, i),
                                        A->g.cs, A->g.dt);
                }
                FX_S(xent_emit)(A, i, NAN, o->zl != 0.0 ? NAN : 0.0, part);
                continue;
            }
            st.m = (double)m;
            st.ls = log1p(t);
            st.inv_s = 1.0 / (1.0 + t);
        } else {
            st.m = 0.0; st.ls = 0.0; st.inv_s = 0.0;
        }
        if (!o->soft) st.xy = (double)xr[y];
        if (o->eps != 0.0) st.gap = FX_S(row_gap)(xr, C, m, o->w);
        if (o->soft) FX_S(row_soft)(xr, pr, C, m, o->w, &st.sp, &st.spg);
        if (o->gamma != 0.0) fx_focal(o->gamma, (st.m - st.xy) + st.ls, &st.fu, &st.fF);
        fx_xent_res res = fx_xent_row(o, &st, gs);
        if (has_grad) {
            FX_S(xent_write_grad)(o, e, S.bm, pr, gr, m, &res, o->soft ? -1 : y,
                                  A->stream && A->direct);
            if (!A->direct)
                FX_S(row_store)(S.g, S.z, C, (T)A->scale, (T)A->cap, fx_row(&A->g, i), A->g.cs,
                                A->g.dt);
        }
        FX_S(xent_emit)(A, i, res.loss, res.z, part);
    }
    if (A->stream) fx_store_fence();
    free(S.z); free(S.g); free(S.p); free(S.e); free(S.bm);
    return;
nomem:
    free(S.z); free(S.g); free(S.p); free(S.e); free(S.bm);
    part->nomem = 1;
}

/* ------------------------------------------------------------------ one long row, split
 * A long contiguous row (hard label) whose FX_SEG segments are spread over threads by the
 * caller: the same numbers as xent_rows (the same segments merged in the same order).
 * Step 1 (per segment k, in parallel): statistics (and stored exps when e is not NULL). */
static inline void FX_S(xent_split_stats)(const fx_xent_args *A, ptrdiff_t i, ptrdiff_t k,
                                          T *ms, double *ts, T *e, T *bm)
{
    ptrdiff_t lo = k * FX_SEG, C = A->o.C, n = C - lo < FX_SEG ? C - lo : FX_SEG;
    const T *xr = (const T *)fx_row(&A->x, i);
    FX_S(seg_stats)(xr + lo, n, &ms[k], &ts[k], e ? e + lo : NULL, e ? bm + lo / FX_BLOCK : NULL);
}

/* Step 2 (serial): merge the segments; returns 1 for a row whose log-sum-exp is not finite. */
static inline int FX_S(xent_split_merge)(ptrdiff_t C, const T *ms, const double *ts, T *m,
                                         double *t)
{
    ptrdiff_t nseg = (C + FX_SEG - 1) / FX_SEG;
    *m = -(T)INFINITY;
    *t = 0.0;
    for (ptrdiff_t k = 0; k < nseg; k++) FX_S(stats_merge)(m, t, ms[k], ts[k]);
    return FX_S(stats_bad)(*m, *t);
}

/* Step 3 (per segment, in parallel; label smoothing only): the segment's gap. */
static inline double FX_S(xent_split_gap)(const fx_xent_args *A, ptrdiff_t i, ptrdiff_t k, T m)
{
    ptrdiff_t lo = k * FX_SEG, C = A->o.C, n = C - lo < FX_SEG ? C - lo : FX_SEG;
    const T *xr = (const T *)fx_row(&A->x, i);
    return FX_S(seg_gap)(xr + lo, n, m, A->o.w ? A->o.w + lo : NULL);
}

/* Step 4 (serial): the formula. */
static inline fx_xent_res FX_S(xent_split_formula)(const fx_xent_args *A, ptrdiff_t i,
                                                   ptrdiff_t y, T m, double t, double gap)
{
    const fx_xent_opts *o = &A->o;
    const T *xr = (const T *)fx_row(&A->x, i);
    fx_xent_stat st;
    st.m = (double)m; st.ls = log1p(t); st.inv_s = 1.0 / (1.0 + t);
    st.xy = (double)xr[y]; st.wy = o->w != NULL ? o->w[y] : 1.0;
    st.gap = gap; st.sp = 0.0; st.spg = 0.0; st.fu = 1.0; st.fF = 1.0;
    if (o->gamma != 0.0) fx_focal(o->gamma, (st.m - st.xy) + st.ls, &st.fu, &st.fF);
    return fx_xent_row(o, &st, fx_row_gs(A, i));
}

/* Step 5 (per segment, in parallel): the segment's gradient; g[y] is adjusted by the caller. */
static inline void FX_S(xent_split_grad)(const fx_xent_args *A, ptrdiff_t i, ptrdiff_t k,
                                         const T *e, const T *bm, T m, const fx_xent_res *res)
{
    ptrdiff_t lo = k * FX_SEG, C = A->o.C, n = C - lo < FX_SEG ? C - lo : FX_SEG;
    T *gr = (T *)fx_row(&A->g, i);
    FX_S(row_grad_e)(e + lo, bm + lo / FX_BLOCK, gr + lo, n, m, res->a, (T)res->cw,
                     A->o.w ? A->o.w + lo : NULL);
}

/* ------------------------------------------------------------------ log-sum-exp family
 * Rows lo..hi of x: mode FX_LSE_LOGSUMEXP writes lse_out[i]; FX_LSE_LOG_SOFTMAX and
 * FX_LSE_SOFTMAX write the row of y (same shape).  Rows with a NaN give NaN; logsumexp of a
 * +inf row is +inf and of an all -inf row -inf (as torch and scipy).  Returns 0, or 1 when a
 * scratch allocation failed. */
static inline int FX_S(lse_short)(const fx_view *x, const fx_view *y, ptrdiff_t C, ptrdiff_t lo,
                                  ptrdiff_t hi, int mode, T *lse_out)
{
    ptrdiff_t yi[FX_SHORT_R];
    T m[FX_SHORT_R], ls[FX_SHORT_R], is[FX_SHORT_R], xy[FX_SHORT_R], zero[FX_SHORT_R];
    ptrdiff_t rs = x->s0 / (ptrdiff_t)sizeof(T), ys = y->s0 / (ptrdiff_t)sizeof(T);
    for (ptrdiff_t r = 0; r < FX_SHORT_R; r++) { yi[r] = 0; zero[r] = 0; }
    for (ptrdiff_t r0 = lo; r0 < hi; r0 += FX_SHORT_R) {
        ptrdiff_t R = hi - r0 < FX_SHORT_R ? hi - r0 : FX_SHORT_R;
        const T *xb = (const T *)(x->base + r0 * x->s0);
        FX_S(short_stats)(xb, rs, R, C, yi, m, ls, is, xy);
        if (mode == FX_LSE_LOGSUMEXP) {
            for (ptrdiff_t r = 0; r < R; r++) {
                if (ls[r] == ls[r]) {
                    lse_out[r0 + r] = m[r] + ls[r];
                } else {    /* NaN / +inf / all -inf row: the row path's exact rules */
                    T mm;
                    double t;
                    FX_S(row_stats)(xb + r * rs, C, &mm, &t, NULL, NULL);
                    lse_out[r0 + r] = (T)(t != t ? NAN : (mm > 0 ? INFINITY : -INFINITY));
                }
            }
            continue;
        }
        T *yb = (T *)(y->base + r0 * y->s0);
        if (mode == FX_LSE_SOFTMAX) {
            FX_S(short_grad)(xb, rs, yb, ys, R, C, m, is, zero, NULL);
        } else {
            for (ptrdiff_t r = 0; r < R; r++)
                for (ptrdiff_t c = 0; c < C; c++) yb[r * ys + c] = (xb[r * rs + c] - m[r]) - ls[r];
        }
        for (ptrdiff_t r = 0; r < R; r++)
            if (ls[r] != ls[r]) FX_S(fill)(yb + r * ys, C, (T)NAN);
    }
    return 0;
}

static inline int FX_S(lse_rows)(const fx_view *x, const fx_view *y, ptrdiff_t C, ptrdiff_t lo,
                                 ptrdiff_t hi, int mode, T *lse_out)
{
    int gather = x->cs != (ptrdiff_t)sizeof(T)
                 || (mode != FX_LSE_LOGSUMEXP && y->cs != (ptrdiff_t)sizeof(T));
    T *buf = NULL, *bm = NULL;
    if (C <= FX_SHORT_C && !gather)
        return FX_S(lse_short)(x, y, C, lo, hi, mode, lse_out);
    if (gather) {
        buf = (T *)malloc((size_t)C * sizeof(T));
        if (buf == NULL) return 1;
    }
    if (mode == FX_LSE_SOFTMAX) {
        bm = (T *)malloc((size_t)((C + FX_BLOCK - 1) / FX_BLOCK) * sizeof(T));
        if (bm == NULL) { free(buf); return 1; }
    }
    for (ptrdiff_t i = lo; i < hi; i++) {
        const T *xr = (const T *)fx_row(x, i);
        T m;
        double t;
        if (gather) {
            FX_S(gather)((const char *)xr, x->cs, C, buf);
            xr = buf;
        }
        if (mode == FX_LSE_LOGSUMEXP) {
            if (FX_S(row_stats)(xr, C, &m, &t, NULL, NULL))
                lse_out[i] = (T)(t != t ? NAN : (m > 0 ? INFINITY : -INFINITY));
            else
                lse_out[i] = (T)((double)m + log1p(t));
            continue;
        }
        T *yr = gather ? buf : (T *)fx_row(y, i);
        /* softmax keeps exp(x - m_b) in the output row: one exp per element */
        if (FX_S(row_stats)(xr, C, &m, &t, mode == FX_LSE_SOFTMAX ? yr : NULL, bm))
            FX_S(fill)(yr, C, (T)NAN);
        else if (mode == FX_LSE_LOG_SOFTMAX)
            FX_S(row_shift)(xr, yr, C, m, (T)log1p(t));
        else
            FX_S(row_grad_e)(yr, bm, yr, C, m, 1.0 / (1.0 + t), 0, NULL);
        if (gather)
            FX_S(scatter)(buf, C, fx_row(y, i), y->cs);
    }
    free(buf);
    free(bm);
    return 0;
}

#undef T
