/*
 * fastxent row numerics (layer 1): the C headers, each template instantiated once per float
 * type.  See fx_common.h for the map of the headers; _rowmath.pxd declares them to Cython.
 */
#ifndef FASTXENT_ROWMATH_H
#define FASTXENT_ROWMATH_H

#include "fx_common.h"
#include "fx_math.h"

/* Each template header is included once per float type, with its parameters defined here:
 * FX_T the type, FX_S(name) the function names, FX_DT its FX_DT_* code, and its element
 * functions (fx_math.h).  fx_templates.h includes the templates and undefines the parameters. */
#define FX_T float
#define FX_F32 1
#define FX_S(name) fx_##name##_f32
#define FX_DT FX_DT_F32
#define FX_EXP fx_expf
#define FX_PEXP fx_pexpf
#define FX_LOG fx_logf
#define FX_PLOG fx_plogf
#define FX_LOG1P fx_log1pf
#define FX_PLOG1P fx_plog1pf
#define FX_LOG1P_UNIT fx_log1p_unitf
#define FX_TANH fx_tanhf
#define FX_ABNORMAL fx_abnormalf
#define FX_EXPMAX 88.0f
#include "fx_templates.h"

#define FX_T double
#define FX_F32 0
#define FX_S(name) fx_##name##_f64
#define FX_DT FX_DT_F64
#define FX_EXP fx_exp
#define FX_PEXP fx_pexp
#define FX_LOG fx_log
#define FX_PLOG fx_plog
#define FX_LOG1P fx_log1p
#define FX_PLOG1P fx_plog1p
#define FX_LOG1P_UNIT fx_log1p_unit
#define FX_TANH fx_tanh
#define FX_ABNORMAL fx_abnormal
#define FX_EXPMAX 709.0
#include "fx_templates.h"

#endif /* FASTXENT_ROWMATH_H */
