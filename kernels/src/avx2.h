/* avx2.h — the kernels of the avx2 variant (its table is variant_avx2.c), and the float weight loads its
 * float files share (inline). */
#ifndef TL_AVX2_H
#define TL_AVX2_H

#include <immintrin.h>
#include <string.h>

#include "tl_internal.h"
#include "ukernel.h"

/* avx2_float.c: 3 rows x 4 tokens (f16 / bf16 n == 1: 4 rows at a time, same arithmetic per output) */
extern const tl_ukernel tl_avx2_f32_3x4, tl_avx2_f16_3x4, tl_avx2_bf16_3x4;
#define AVX2_F_RM 3
#define AVX2_F_RN 4
void tl_avx2_f32_tile_3x4(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn);
void tl_avx2_f16_tile_3x4(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn);
void tl_avx2_bf16_tile_3x4(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn);

/* avx2_float_packed.c: packed 16-row panels x 6 tokens, the 3 x 4 kernels' `big` for prompts */
extern const tl_ukernel tl_avx2_f32_packed_16x6, tl_avx2_f16_packed_16x6, tl_avx2_bf16_packed_16x6;
/* Fewer tokens than this (the driver's big_n): the 3 x 4 tiles. 96 as avx512 (for f16 too), which the models'
 * batching assumes (llm/models/base.py SMALL_GEMM_ROWS: rows below it keep the tiles' bits whatever else is in
 * their batch). 2048 x 2048, one thread, CPU time, A/B on a machine at load 15 (noisy): n = 48 packed vs tiles
 * even (f32 -3 %, f16 +4 %), n = 64 f16 +13 %, bf16 +3 %, f32 -8 %, n = 96 +2 to +13 %. */
#define AVX2_F_PACKED_MIN_N 96

/* avx2_q8.c: 8-row panels x 4 tokens, n == 1 by 8 rows; and the shared q8 activations, vectorised */
extern const tl_ukernel tl_avx2_q8_0_8x4, tl_avx2_q4_0_8x4, tl_avx2_q4_1_8x4;
void tl_avx2_q8_act_prepare(const float *x, int64_t ldx, int64_t j0, int64_t j1, int64_t k, uint8_t *act,
                            int64_t ldact);
/* avx2_kquants.c: 8-row panels x 4 tokens */
extern const tl_ukernel tl_avx2_q5_0_8x4, tl_avx2_q4_k_8x4, tl_avx2_q5_k_8x4, tl_avx2_q6_k_8x4;

/* ---- float weight loads: 8 values widened to f32 exactly (f16 by F16C, bf16 by zero-extension and shift) */
TL_INLINE __m256 avx2_f_load(const int WT, const uint8_t *w, int64_t p) {
    if (WT == TL_F32) return _mm256_loadu_ps((const float *)w + p);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + p));
    if (WT == TL_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* Values [p, e) of a row (e - p < 8), widened to f32 and zero-padded to 8. */
TL_INLINE __m256 avx2_f_load_part(const int WT, const uint8_t *w, int64_t p, int64_t e) {
    float buf[8] = {0};
    for (int64_t q = p; q < e; q++) {
        if (WT == TL_F32) memcpy(&buf[q - p], w + 4 * q, 4);
        else if (WT == TL_F16) buf[q - p] = tl_f16_to_f32(tl_load_u16(w + 2 * q));
        else buf[q - p] = tl_bf16_to_f32(tl_load_u16(w + 2 * q));
    }
    return _mm256_loadu_ps(buf);
}

#endif
