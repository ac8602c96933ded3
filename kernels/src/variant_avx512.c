/* variant_avx512.c — the `avx512` variant: AVX-512 F/BW/VL/DQ + VNNI + BF16, every weight type. */
#include "avx512.h"
#include "kquants.h"

const char tl_uk_name[] = "avx512";
const uint64_t tl_uk_required = TL_CPU_AVX2 | TL_CPU_FMA | TL_CPU_F16C | TL_CPU_AVX512F | TL_CPU_AVX512BW |
                                TL_CPU_AVX512VL | TL_CPU_AVX512DQ | TL_CPU_AVX512VNNI | TL_CPU_AVX512BF16;
const tl_config tl_uk_config = {TL_CONFIG_DEFAULTS};
void tl_x86_caches_init(void); /* cpu_detect.c */
int tl_uk_init(void) {
    tl_x86_caches_init();
    (void)tl_avx512_amx_init(); /* the AMX tile state, where the CPU has it; the VNNI kernels otherwise */
    return TL_OK;
}

const tl_ukernel *tl_uk_lookup(const tl_ctx *ctx, int wtype) {
    const int amx = tl_avx512_amx_usable(ctx);
    switch (wtype) {
    case TL_F32: return &tl_avx512_f32_4x6;
    case TL_F16: return &tl_avx512_f16_4x6;
    case TL_BF16: return ctx->opt.bf16_exact ? &tl_avx512_bf16_4x6 : &tl_avx512_bf16dp_4x6;
    case TL_Q8_0: return amx ? &tl_avx512_q8_0_16x8_amx : &tl_avx512_q8_0_16x8;
    case TL_Q4_0: return amx ? &tl_avx512_q4_0_16x8_amx : &tl_avx512_q4_0_16x8;
    case TL_Q4_1: return &tl_avx512_q4_1_16x8; /* AMX measured slower for q4_1 (avx512_q8_amx.h) */
    case TL_Q5_0: return &tl_avx512_q5_0_16x8;
    case TL_Q4_K: return &tl_avx512_q4_k_16x8;
    case TL_Q5_K: return &tl_avx512_q5_k_16x8;
    case TL_Q6_K: return &tl_avx512_q6_k_16x8;
    default: return tl_avx512_qx_lookup(wtype); /* avx2_qx.c's types, 16-row zmm panels + VNNI; else NULL */
    }
}
