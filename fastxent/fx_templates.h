/*
 * The template headers of fastxent's C numerics, instantiated for the float type whose
 * parameters (FX_T, FX_S, FX_EXP, ...) _rowmath.h has just defined; the parameters are
 * undefined at the end, ready for the next type.  No include guard: included once per type.
 */
#include "fx_lse.h"
#include "fx_rowio.h"
#include "fx_xent.h"
#include "fx_probs.h"
#include "fx_score.h"

#undef FX_T
#undef FX_F32
#undef FX_S
#undef FX_DT
#undef FX_EXP
#undef FX_PEXP
#undef FX_LOG
#undef FX_PLOG
#undef FX_LOG1P
#undef FX_PLOG1P
#undef FX_LOG1P_UNIT
#undef FX_TANH
#undef FX_ABNORMAL
#undef FX_EXPMAX
