/* neon_table.c — the NEON kernels by weight type: the neon variant's table, and the small-batch
 * kernels of the SME variants. */
#include "kquants.h"
#include "neon.h"

const tl_ukernel *tl_neon_lookup(int wtype) {
    switch (wtype) {
    case TL_F32: return &tl_neon_f32_4x6;
    case TL_F16: return &tl_neon_f16_4x6;
    case TL_BF16: return &tl_neon_bf16_4x6;
    case TL_Q8_0: return &tl_neon_q8_0_4x4;
    case TL_Q4_0: return &tl_neon_q4_0_4x4;
    case TL_Q4_1: return &tl_neon_q4_1_4x4;
    case TL_Q5_0: return &tl_neon_q5_0_4x6;
    case TL_Q4_K: return &tl_neon_q4_k_4x6;
    case TL_Q5_K: return &tl_neon_q5_k_4x6;
    case TL_Q6_K: return &tl_neon_q6_k_4x6;
    case TL_Q5_1: return &tl_neon_q5_1_4x4; /* neon_qx.c */
    case TL_IQ4_NL: return &tl_neon_iq4_nl_4x4;
    case TL_IQ4_XS: return &tl_neon_iq4_xs_4x4;
    case TL_Q2_K: return &tl_neon_q2_k_4x4;
    case TL_Q3_K: return &tl_neon_q3_k_4x4;
    default: return NULL;
    }
}
