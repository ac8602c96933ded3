/* variant_avxvnni.c — the `avxvnni` variant: AVX2 + FMA + F16C + AVX-VNNI (Alder Lake and later, Zen 5 without
 * its AVX-512 in use): the integer types on vpdpbusd (ymm), the float types and avx2_qx.c's types on avx2's
 * kernels (compiled in, so a model's decode layer stays one C call). "auto" prefers avx512 where the CPU has it;
 * $TILELLM_CPU_CAP=avx2 hides this variant (an AVX2-only CPU has no AVX-VNNI). */
#include "avxvnni.h"
#include "kquants.h"

const char tl_uk_name[] = "avxvnni";
const uint64_t tl_uk_required = TL_CPU_AVX2 | TL_CPU_FMA | TL_CPU_F16C | TL_CPU_AVX_VNNI;
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
    case TL_Q8_0: return &tl_avxvnni_q8_0_8x4;
    case TL_Q4_0: return &tl_avxvnni_q4_0_8x4;
    case TL_Q4_1: return &tl_avxvnni_q4_1_8x4;
    case TL_Q5_0: return &tl_avxvnni_q5_0_8x4;
    case TL_Q4_K: return &tl_avxvnni_q4_k_8x4;
    case TL_Q5_K: return &tl_avxvnni_q5_k_8x4;
    case TL_Q6_K: return &tl_avxvnni_q6_k_8x4;
    default: return tl_avx2_qx_lookup(wtype); /* avx2_qx.c's types, linked in (vpmaddubsw, as in avx2); else NULL */
    }
}
