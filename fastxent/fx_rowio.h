/*
 * fastxent C numerics, part 3: moving rows between arrays and contiguous buffers (template, as
 * fx_lse.h; FX_TANH is fx_tanhf / fx_tanh, FX_DT the FX_DT_* code of FX_T).
 *
 * The buffered path of the kernels: a row of any supported dtype (FX_DT_*) and stride is loaded
 * into a contiguous buffer of the kernel's type, with the logit transform applied on the way
 * (z' = scale * x, then cap * tanh(z' / cap) when cap > 0); the gradient is stored back with the
 * chain rule (dz'/dx = scale * (1 - (z'/cap)^2)) and converted to the output dtype.
 */
#define T FX_T

static inline void FX_S(row_load)(const char *src, ptrdiff_t cs, int dt, ptrdiff_t n, T scale,
                                  T cap, T *buf)
{
    ptrdiff_t i;
    if (dt == FX_DT) {
        for (i = 0; i < n; i++) buf[i] = *(const T *)(src + i * cs);
    } else if (dt == FX_DT_F16) {
        FX_SIMD
        for (i = 0; i < n; i++) buf[i] = (T)fx_f16_to_f32(*(const uint16_t *)(src + i * cs));
    } else {
        FX_SIMD
        for (i = 0; i < n; i++) buf[i] = (T)fx_bf16_to_f32(*(const uint16_t *)(src + i * cs));
    }
    if (scale != (T)1) {
        FX_SIMD
        for (i = 0; i < n; i++) buf[i] *= scale;
    }
    if (cap > (T)0) {
        T ic = (T)1 / cap;
        FX_SIMD
        for (i = 0; i < n; i++) buf[i] = cap * FX_TANH(buf[i] * ic);
    }
}

static inline void FX_S(row_store)(T *g, const T *z, ptrdiff_t n, T scale, T cap, char *dst,
                                   ptrdiff_t cs, int dt)
{
    ptrdiff_t i;
    if (cap > (T)0) {
        T ic = (T)1 / cap;
        FX_SIMD
        for (i = 0; i < n; i++) { T u = z[i] * ic; g[i] *= scale * ((T)1 - u * u); }
    } else if (scale != (T)1) {
        FX_SIMD
        for (i = 0; i < n; i++) g[i] *= scale;
    }
    if (dt == FX_DT) {
        for (i = 0; i < n; i++) *(T *)(dst + i * cs) = g[i];
    } else if (dt == FX_DT_F16) {
        for (i = 0; i < n; i++) *(uint16_t *)(dst + i * cs) = fx_f32_to_f16((float)g[i]);
    } else {
        FX_SIMD
        for (i = 0; i < n; i++) *(uint16_t *)(dst + i * cs) = fx_f32_to_bf16((float)g[i]);
    }
}

/* y = v (NaN rows, ignored rows) */
static inline void FX_S(fill)(T *y, ptrdiff_t n, T v)
{
    for (ptrdiff_t i = 0; i < n; i++) y[i] = v;
}

/* y = v along a strided row (stride in bytes) */
static inline void FX_S(fill_strided)(char *y, ptrdiff_t stride, ptrdiff_t n, T v)
{
    for (ptrdiff_t i = 0; i < n; i++) *(T *)(y + i * stride) = v;
}

/* strided gather / scatter of n elements (stride in bytes) */
static inline void FX_S(gather)(const char *x, ptrdiff_t stride, ptrdiff_t n, T *buf)
{
    for (ptrdiff_t i = 0; i < n; i++) buf[i] = *(const T *)(x + i * stride);
}

static inline void FX_S(scatter)(const T *buf, ptrdiff_t n, char *y, ptrdiff_t stride)
{
    for (ptrdiff_t i = 0; i < n; i++) *(T *)(y + i * stride) = buf[i];
}

/* n elements from src (stride in bytes) as a contiguous run: in place, or gathered into buf */
static inline const T *FX_S(run)(const char *src, ptrdiff_t stride, ptrdiff_t n, T *buf)
{
    if (stride == (ptrdiff_t)sizeof(T))
        return (const T *)src;
    FX_S(gather)(src, stride, n, buf);
    return buf;
}

#undef T
