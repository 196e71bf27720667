# cython: language_level=3
"""Helpers shared by the kernel families: array views (a validated NumPy array seen as rows of
C classes, read through its data pointer and strides: no copies, any layout) and the
compensated sum that combines per-block partial results in block order."""
cimport numpy as cnp
from libc.math cimport fabs

cdef extern from "_rowmath.h":
    enum: FX_DT_F32
    enum: FX_DT_F64
    enum: FX_DT_F16
    enum: FX_DT_BF16


cdef struct View2:
    char *base          # element (0, 0)
    Py_ssize_t rs       # row stride, bytes
    Py_ssize_t cs       # class stride, elements (1: contiguous row)


cdef struct Arr:
    # a validated array seen as (rows, C): row i is (i // D, i % D) of an (A, D, C) view,
    # so PyTorch's (N, C, d1, ...) layout needs no transposed copy
    char *base
    Py_ssize_t s0, s1   # strides of the two row indices, bytes
    Py_ssize_t D        # length of the inner row index (1 for 2-D input)
    Py_ssize_t cs       # class stride, bytes
    int dt              # FX_DT_* element type
    int isz             # item size, bytes


cdef inline View2 _view2(object a):
    """Data pointer and strides of a validated 2-D array (or an empty view for None)."""
    cdef View2 v
    cdef cnp.ndarray arr
    if a is None:
        v.base = NULL
        v.rs = 0
        v.cs = 1
        return v
    arr = <cnp.ndarray>a
    v.base = <char *>cnp.PyArray_DATA(arr)
    v.rs = cnp.PyArray_STRIDE(arr, 0)
    v.cs = cnp.PyArray_STRIDE(arr, 1) // cnp.PyArray_ITEMSIZE(arr)
    return v


cdef inline int _dtcode(cnp.ndarray arr):
    cdef int t = cnp.PyArray_TYPE(arr)
    if t == cnp.NPY_FLOAT32:
        return FX_DT_F32
    if t == cnp.NPY_FLOAT64:
        return FX_DT_F64
    if t == cnp.NPY_FLOAT16:
        return FX_DT_F16
    return FX_DT_BF16   # the API passes bfloat16 (ml_dtypes) as a 2-byte non-float16 type


cdef inline Arr _arr(object a):
    """A 2-D (rows, C) or 3-D (A, D, C) validated array as an Arr (base NULL for None)."""
    cdef Arr v
    cdef cnp.ndarray arr
    v.base = NULL
    v.s0 = v.s1 = 0
    v.D = 1
    v.cs = 0
    v.dt = FX_DT_F32
    v.isz = 4
    if a is None:
        return v
    arr = <cnp.ndarray>a
    v.base = <char *>cnp.PyArray_DATA(arr)
    v.dt = _dtcode(arr)
    v.isz = cnp.PyArray_ITEMSIZE(arr)
    v.s0 = cnp.PyArray_STRIDE(arr, 0)
    if cnp.PyArray_NDIM(arr) == 3:
        v.s1 = cnp.PyArray_STRIDE(arr, 1)
        v.D = cnp.PyArray_DIM(arr, 1)
        v.cs = cnp.PyArray_STRIDE(arr, 2)
    else:
        v.cs = cnp.PyArray_STRIDE(arr, 1)
    return v


cdef inline char *_row(const Arr *a, Py_ssize_t i) noexcept nogil:
    if a.D == 1:
        return a.base + i * a.s0
    return a.base + (i // a.D) * a.s0 + (i % a.D) * a.s1


cdef inline char *_data(object a):
    return NULL if a is None else <char *>cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline Py_ssize_t _stride0(object a):
    return cnp.PyArray_STRIDE(<cnp.ndarray>a, 0)


# ------------------------------------------------------------------ block reduction
cdef inline void _neumaier(double *total, double *comp, double v) noexcept nogil:
    cdef double t = total[0] + v
    if fabs(total[0]) >= fabs(v):
        comp[0] += (total[0] - t) + v
    else:
        comp[0] += (v - t) + total[0]
    total[0] = t


cdef inline double _finish(double total, double comp) noexcept nogil:
    return total + comp if comp == comp else total
