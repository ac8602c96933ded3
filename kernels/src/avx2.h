/* avx2.h — the kernels of the avx2 variant (its table is variant_avx2.c). */
#ifndef TL_AVX2_H
#define TL_AVX2_H

#include "tl_internal.h"
#include "ukernel.h"

/* avx2_float.c: 3 rows x 4 tokens */
extern const tl_ukernel tl_avx2_f32_3x4, tl_avx2_f16_3x4, tl_avx2_bf16_3x4;
/* avx2_q8.c: 8-row panels x 4 tokens, n == 1 by 8 rows; and the shared q8 activations, vectorised */
extern const tl_ukernel tl_avx2_q8_0_8x4, tl_avx2_q4_0_8x4, tl_avx2_q4_1_8x4;
void tl_avx2_q8_act_prepare(const float *x, int64_t ldx, int64_t j0, int64_t j1, int64_t k, uint8_t *act,
                            int64_t ldact);
/* avx2_kquants.c: 8-row panels x 4 tokens */
extern const tl_ukernel tl_avx2_q5_0_8x4, tl_avx2_q4_k_8x4, tl_avx2_q5_k_8x4, tl_avx2_q6_k_8x4;

#endif
