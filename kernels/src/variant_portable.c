/* variant_portable.c — the `portable` variant: plain C for the baseline ISA (no FMA contraction),
 * every weight type the library knows. */
#include "kquants.h"
#include "portable.h"

const char tl_uk_name[] = "portable";
const uint64_t tl_uk_required = 0;
const tl_config tl_uk_config = {TL_CONFIG_DEFAULTS};
int tl_uk_init(void) { return TL_OK; }

const tl_ukernel *tl_uk_lookup(const tl_ctx *ctx, int wtype) {
    (void)ctx;
    switch (wtype) {
    case TL_F32: return &tl_portable_f32_4x3;
    case TL_F16: return &tl_portable_f16_4x3;
    case TL_BF16: return &tl_portable_bf16_4x3;
    case TL_Q8_0: return &tl_portable_q8_0_4x4;
    case TL_Q4_0: return &tl_portable_q4_0_4x4;
    case TL_Q4_1: return &tl_portable_q4_1_4x4;
    case TL_Q5_1: case TL_IQ4_NL: case TL_IQ4_XS: case TL_Q2_K: case TL_Q3_K:
        return tl_qx_portable_lookup(wtype); /* portable_qx.c */
    default: return tl_kq_portable_lookup(wtype); /* q5_0, q4_K, q5_K, q6_K (portable_kquants.c) */
    }
}
