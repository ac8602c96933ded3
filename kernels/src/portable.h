/* portable.h — what the portable kernel files share: the tile-shape dispatch and their kernels
 * (the table is variant_portable.c; the q5_0 / K-quant ones in kquants.h are shared with every variant). */
#ifndef TL_PORTABLE_H
#define TL_PORTABLE_H

#include "tl_internal.h"
#include "ukernel.h"

/* Tile-size dispatch:  * The kernels below are always_inline functions taking the tile shape as (RM, RN) arguments;
 * this switch instantiates each shape with constants so loops unroll and accumulators live in
 * registers. */
#define TL_MAXT 4
#define TL_DISPATCH(impl, a, i0, j0, rm, rn)                                           \
    switch ((rm) * 8 + (rn)) {                                                         \
    case 011: impl(a, i0, j0, 1, 1); break; case 012: impl(a, i0, j0, 1, 2); break;    \
    case 013: impl(a, i0, j0, 1, 3); break; case 014: impl(a, i0, j0, 1, 4); break;    \
    case 021: impl(a, i0, j0, 2, 1); break; case 022: impl(a, i0, j0, 2, 2); break;    \
    case 023: impl(a, i0, j0, 2, 3); break; case 024: impl(a, i0, j0, 2, 4); break;    \
    case 031: impl(a, i0, j0, 3, 1); break; case 032: impl(a, i0, j0, 3, 2); break;    \
    case 033: impl(a, i0, j0, 3, 3); break; case 034: impl(a, i0, j0, 3, 4); break;    \
    case 041: impl(a, i0, j0, 4, 1); break; case 042: impl(a, i0, j0, 4, 2); break;    \
    case 043: impl(a, i0, j0, 4, 3); break; case 044: impl(a, i0, j0, 4, 4); break;    \
    default: break;                                                                    \
    }

/* Tile shapes: float 4x3 = 12 vector accumulators (fits 16 SSE registers with the loads);
 * quantized 4x4: scalar accumulators, the 16-wide integer dots are what gets vectorised. */
extern const tl_ukernel tl_portable_f32_4x3, tl_portable_f16_4x3, tl_portable_bf16_4x3; /* portable_float.c */
extern const tl_ukernel tl_portable_q8_0_4x4, tl_portable_q4_0_4x4, tl_portable_q4_1_4x4; /* portable_q8.c */

#endif
