/* variant_avx2.c — the `avx2` variant: AVX2 + FMA + F16C (no VNNI), every weight type. */
#include "avx2.h"
#include "kquants.h"

const char tl_uk_name[] = "avx2";
const uint64_t tl_uk_required = TL_CPU_AVX2 | TL_CPU_FMA | TL_CPU_F16C;
const tl_config tl_uk_config = {TL_CONFIG_DEFAULTS};
void tl_x86_caches_init(void); /* cpu_detect.c */
int tl_uk_init(void) {
    tl_x86_caches_init();
    return TL_OK;
}

const tl_ukernel *tl_uk_lookup(const tl_ctx *ctx, int wtype) {
    (void)ctx;
    switch (wtype) {
    case TL_F32: return &tl_avx2_f32_3x4;
    case TL_F16: return &tl_avx2_f16_3x4;
    case TL_BF16: return &tl_avx2_bf16_3x4;
    case TL_Q8_0: return &tl_avx2_q8_0_8x4;
    case TL_Q4_0: return &tl_avx2_q4_0_8x4;
    case TL_Q4_1: return &tl_avx2_q4_1_8x4;
    case TL_Q5_0: return &tl_avx2_q5_0_8x4;
    case TL_Q4_K: return &tl_avx2_q4_k_8x4;
    case TL_Q5_K: return &tl_avx2_q5_k_8x4;
    case TL_Q6_K: return &tl_avx2_q6_k_8x4;
    default: return tl_avx2_qx_lookup(wtype); /* avx2_qx.c's types; else NULL */
    }
}
