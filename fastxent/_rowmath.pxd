# cython: language_level=3
"""Layer 1 of fastxent, as Cython sees it: the C row numerics of ``_rowmath.h`` (see
``fx_common.h`` for the map of the headers).  Every kernel family cimports its C functions and
types from here; nothing here can fail, allocate Python objects or touch the GIL.
"""

from libc.stdint cimport int64_t

cdef extern from "_rowmath.h" nogil:
    enum:
        FX_BLOCK
        FX_SEG
        FX_SHORT_C
        FX_DT_F32
        FX_DT_F64
        FX_DT_F16
        FX_DT_BF16
        FX_LSE_LOGSUMEXP
        FX_LSE_LOG_SOFTMAX
        FX_LSE_SOFTMAX
        FX_INPUT_LOGITS
        FX_INPUT_LOGPROBS

    ctypedef struct fx_view:
        char *base
        Py_ssize_t s0, s1, D, cs
        int dt, isz

    ctypedef struct fx_xent_opts:
        const double *w
        double W
        Py_ssize_t C
        double eps, zl, gamma
        int soft, input

    ctypedef struct fx_xent_args:
        fx_xent_opts o
        fx_view x, g, p
        const char *t
        Py_ssize_t ts
        int t64
        Py_ssize_t N, ignore_index
        double scale, cap, lscale, gscale
        const double *row_scale
        char *loss_out
        char *z_out
        int direct, stream

    ctypedef struct fx_part:
        double loss, z, wsum
        Py_ssize_t bad
        int nomem

    ctypedef struct fx_xent_res:
        double loss, z, a, cw, b

    char *fx_row(const fx_view *a, Py_ssize_t i)
    void fx_part_init(fx_part *p)
    void fx_neumaier(double *total, double *comp, double v)
    double fx_neumaier_result(double total, double comp)
    void fx_store_fence()
    Py_ssize_t fx_label(const fx_xent_args *A, Py_ssize_t i)

    # cross-entropy: a block of rows; one long row split over threads (steps 1-5)
    void fx_xent_rows_f32(const fx_xent_args *A, Py_ssize_t lo, Py_ssize_t hi, fx_part *part)
    void fx_xent_rows_f64(const fx_xent_args *A, Py_ssize_t lo, Py_ssize_t hi, fx_part *part)
    void fx_xent_split_stats_f32(const fx_xent_args *A, Py_ssize_t i, Py_ssize_t k, float *ms,
                                 double *ts, float *e, float *bm)
    void fx_xent_split_stats_f64(const fx_xent_args *A, Py_ssize_t i, Py_ssize_t k, double *ms,
                                 double *ts, double *e, double *bm)
    int fx_xent_split_merge_f32(Py_ssize_t C, const float *ms, const double *ts, float *m,
                                double *t)
    int fx_xent_split_merge_f64(Py_ssize_t C, const double *ms, const double *ts, double *m,
                                double *t)
    double fx_xent_split_gap_f32(const fx_xent_args *A, Py_ssize_t i, Py_ssize_t k, float m)
    double fx_xent_split_gap_f64(const fx_xent_args *A, Py_ssize_t i, Py_ssize_t k, double m)
    fx_xent_res fx_xent_split_formula_f32(const fx_xent_args *A, Py_ssize_t i, Py_ssize_t y,
                                          float m, double t, double gap)
    fx_xent_res fx_xent_split_formula_f64(const fx_xent_args *A, Py_ssize_t i, Py_ssize_t y,
                                          double m, double t, double gap)
    void fx_xent_split_grad_f32(const fx_xent_args *A, Py_ssize_t i, Py_ssize_t k, const float *e,
                                const float *bm, float m, const fx_xent_res *res)
    void fx_xent_split_grad_f64(const fx_xent_args *A, Py_ssize_t i, Py_ssize_t k,
                                const double *e, const double *bm, double m,
                                const fx_xent_res *res)
    void fx_fill_f32(float *y, Py_ssize_t n, float v)
    void fx_fill_f64(double *y, Py_ssize_t n, double v)

    # log-sum-exp family: a block of rows
    int fx_lse_rows_f32(const fx_view *x, const fx_view *y, Py_ssize_t C, Py_ssize_t lo,
                        Py_ssize_t hi, int mode, float *lse_out)
    int fx_lse_rows_f64(const fx_view *x, const fx_view *y, Py_ssize_t C, Py_ssize_t lo,
                        Py_ssize_t hi, int mode, double *lse_out)

    # scoring statistics of a block of rows
    enum:
        FX_SCORE_LOGITS
        FX_SCORE_LOGPROBS
        FX_SCORE_PROBS
    ctypedef struct fx_score_args:
        fx_view x
        const char *t
        Py_ssize_t ts, C, ignore_index
        int kind
        Py_ssize_t rank_cap
        double lo
        double *loss
        double *conf
        double *brier
        int64_t *rank
    Py_ssize_t fx_exact_add(const void *x, int f32, Py_ssize_t n, const int64_t *idx,
                            int64_t *acc, Py_ssize_t n_groups) nogil
    Py_ssize_t fx_score_rows_f32(const fx_score_args *A, Py_ssize_t lo, Py_ssize_t hi)
    Py_ssize_t fx_score_rows_f64(const fx_score_args *A, Py_ssize_t lo, Py_ssize_t hi)

    # probability family: element loops
    enum:
        FX_ROW_XENT
        FX_ROW_ENTROPY
        FX_ROW_KL
        FX_BIN_PROBS
        FX_BIN_LOGITS
        FX_KL_LOG_Q
        FX_KL_LOG_P
    double fx_dsum(const double *t, Py_ssize_t n)
    void fx_xlogq_terms_f32(const float *p, const float *q, Py_ssize_t n, float lo, float hi,
                            double *t, int *bad)
    void fx_xlogq_terms_f64(const double *p, const double *q, Py_ssize_t n, double lo, double hi,
                            double *t, int *bad)
    void fx_xlogq_grad_f32(const float *p, const float *q, Py_ssize_t n, float lo, float hi,
                           float a, float *g)
    void fx_xlogq_grad_f64(const double *p, const double *q, Py_ssize_t n, double lo, double hi,
                           double a, double *g)
    void fx_xlogx_terms_f32(const float *p, Py_ssize_t n, double *t, int *bad)
    void fx_xlogx_terms_f64(const double *p, Py_ssize_t n, double *t, int *bad)
    void fx_kl_terms_f32(const float *p, const float *q, Py_ssize_t n, int mode, double *t,
                         int *bad)
    void fx_kl_terms_f64(const double *p, const double *q, Py_ssize_t n, int mode, double *t,
                         int *bad)
    double fx_bce_f32(const float *p, const float *y, const float *w, Py_ssize_t n, float ls,
                      float *loss, int *bad)
    double fx_bce_f64(const double *p, const double *y, const double *w, Py_ssize_t n, double ls,
                      double *loss, int *bad)
    void fx_bce_grad_f32(const float *p, const float *y, const float *f, Py_ssize_t n, float gs,
                         float *g)
    void fx_bce_grad_f64(const double *p, const double *y, const double *f, Py_ssize_t n,
                         double gs, double *g)
    double fx_bcel_f32(const float *x, const float *y, const float *w, const float *pw,
                       Py_ssize_t n, float ls, float *loss)
    double fx_bcel_f64(const double *x, const double *y, const double *w, const double *pw,
                       Py_ssize_t n, double ls, double *loss)
    void fx_bcel_grad_f32(const float *x, const float *y, const float *f, const float *pw,
                          Py_ssize_t n, float gs, float *g)
    void fx_bcel_grad_f64(const double *x, const double *y, const double *f, const double *pw,
                          Py_ssize_t n, double gs, double *g)
    void fx_gather_f32(const char *x, Py_ssize_t stride, Py_ssize_t n, float *buf)
    void fx_gather_f64(const char *x, Py_ssize_t stride, Py_ssize_t n, double *buf)
    void fx_scatter_f32(const float *buf, Py_ssize_t n, char *y, Py_ssize_t stride)
    void fx_scatter_f64(const double *buf, Py_ssize_t n, char *y, Py_ssize_t stride)
    void fx_fill_strided_f32(char *y, Py_ssize_t stride, Py_ssize_t n, float v)
    void fx_fill_strided_f64(char *y, Py_ssize_t stride, Py_ssize_t n, double v)
