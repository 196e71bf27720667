# cython: language_level=3
"""NumPy arrays as the C kernels see them (shared by the kernel families): a validated array
becomes an ``fx_view`` -- its data pointer and byte strides, rows of C elements, no copy, any
layout (see fx_common.h)."""
cimport numpy as cnp

from fastxent._rowmath cimport fx_view, FX_DT_F32, FX_DT_F64, FX_DT_F16, FX_DT_BF16


cdef inline int dtype_code(cnp.ndarray arr):
    """The FX_DT_* code of a validated array (the API passes bfloat16 as a 2-byte non-float16
    type)."""
    cdef int t = cnp.PyArray_TYPE(arr)
    if t == cnp.NPY_FLOAT32:
        return FX_DT_F32
    if t == cnp.NPY_FLOAT64:
        return FX_DT_F64
    if t == cnp.NPY_FLOAT16:
        return FX_DT_F16
    return FX_DT_BF16


cdef inline fx_view view_of(object a):
    """A validated 2-D (rows, C) or 3-D (A, D, C) array as an fx_view (base NULL for None)."""
    cdef fx_view v
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
    v.dt = dtype_code(arr)
    v.isz = cnp.PyArray_ITEMSIZE(arr)
    v.s0 = cnp.PyArray_STRIDE(arr, 0)
    if cnp.PyArray_NDIM(arr) == 3:
        v.s1 = cnp.PyArray_STRIDE(arr, 1)
        v.D = cnp.PyArray_DIM(arr, 1)
        v.cs = cnp.PyArray_STRIDE(arr, 2)
    elif cnp.PyArray_NDIM(arr) == 2:
        v.cs = cnp.PyArray_STRIDE(arr, 1)
    return v


cdef inline fx_view grid_of(object spec):
    """``(array, s0, s1)`` -- element (0, 0) and the byte strides of an (R, K) element grid --
    as an fx_view; None: an absent operand."""
    cdef fx_view v = view_of(None)
    if spec is None:
        return v
    v.base = <char *>cnp.PyArray_DATA(<cnp.ndarray>spec[0])
    v.s0 = spec[1]
    v.cs = spec[2]
    return v


cdef inline char *data_of(object a):
    return NULL if a is None else <char *>cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline Py_ssize_t rows_of(object a):
    """Number of rows of a 2-D / 3-D view."""
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_NDIM(arr) == 3:
        return cnp.PyArray_DIM(arr, 0) * cnp.PyArray_DIM(arr, 1)
    return cnp.PyArray_DIM(arr, 0)
