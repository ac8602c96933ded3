/* avx512.h — what the avx512 kernel files share: the float weight loads (inline) and the kernels
 * (the variant's table is variant_avx512.c). */
#ifndef TL_AVX512_H
#define TL_AVX512_H

#include <immintrin.h>

#include "tl_internal.h"
#include "ukernel.h"

/* avx512_float.c: 4 rows x 6 tokens, f16 / exact bf16 / f32 gemv row by row */
#define F_RM 4
#define F_RN 6
extern const tl_ukernel tl_avx512_f32_4x6, tl_avx512_f16_4x6, tl_avx512_bf16_4x6; /* f32 activations */
extern const tl_ukernel tl_avx512_bf16dp_4x6; /* bf16 weights x bf16 activations, vdpbf16ps */
void tl_avx512_f32_tile_4x6(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn);
void tl_avx512_f16_tile_4x6(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn);
void tl_avx512_bf16_tile_4x6(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn);
void tl_avx512_bf16dp_tile_4x6(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn);
int64_t tl_avx512_f32_act_row_bytes(int64_t k);
void tl_avx512_f32_act_prepare(const float *x, int64_t ldx, int64_t j0, int64_t j1, int64_t k, uint8_t *act,
                               int64_t ldact);
int64_t tl_avx512_bf16_act_row_bytes(int64_t k);
void tl_avx512_bf16_act_prepare(const float *x, int64_t ldx, int64_t j0, int64_t j1, int64_t k, uint8_t *act,
                                int64_t ldact);

/* avx512_float_packed.c: packed 32-row panels x 12 tokens, the 4 x 6 kernels' `big` for prompts */
extern const tl_ukernel tl_avx512_f32_packed_32x12, tl_avx512_f16_packed_32x12, tl_avx512_bf16_packed_32x12,
    tl_avx512_bf16dp_packed_32x12;
/* Fewer tokens than this (the driver's big_n): the 4 x 6 tiles. f32 n = 24 / 32: -28 %, 64: even, 128: +5..15 %;
 * bf16 (vdpbf16ps) n = 128: +2..12 %; f16, whose tiles read half the bytes: n = 128: -2..-5 %,
 * 256: -1..+4 %, 512: +8..10 % (2048 x 2048, 2 threads, A/B in one process). */
#define F_PACKED_MIN_N 96
#define F_PACKED_MIN_N_F16 256

/* avx512_q8.c: 16-row panels x 8 tokens, n == 1 by 16 rows; and the shared q8 activations, vectorised */
extern const tl_ukernel tl_avx512_q8_0_16x8, tl_avx512_q4_0_16x8, tl_avx512_q4_1_16x8;
/* q8_0 / q4_0 with prompts (n >= Q_AMX_MIN_N) on AMX int8 tiles (avx512_q8_amx.h; same bits), for
 * contexts where tl_avx512_amx_usable: tl_avx512_amx_init (tl_uk_init) got the tile state from the
 * OS and the context's amx_off is 0 */
extern const tl_ukernel tl_avx512_q8_0_16x8_amx, tl_avx512_q4_0_16x8_amx;
#define Q_AMX_MIN_N 96
int tl_avx512_amx_init(void);
int tl_avx512_amx_usable(const tl_ctx *ctx);
void tl_avx512_q8_act_prepare(const float *x, int64_t ldx, int64_t j0, int64_t j1, int64_t k, uint8_t *act,
                              int64_t ldact);
/* avx512_kquants.c: 16-row panels x 8 tokens */
extern const tl_ukernel tl_avx512_q5_0_16x8, tl_avx512_q4_k_16x8, tl_avx512_q5_k_16x8, tl_avx512_q6_k_16x8;

/* ---- float weight loads (f32, f16, bf16 widened exactly) ------------------------------------------ */
TL_INLINE __m512 f_load(const int WT, const uint8_t *w, int64_t p) {
    if (WT == TL_F32) return _mm512_loadu_ps((const float *)w + p);
    if (WT == TL_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + p)));
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + p))), 16));
}
TL_INLINE __m512 f_load_mask(const int WT, const uint8_t *w, int64_t p, __mmask16 mk) {
    if (WT == TL_F32) return _mm512_maskz_loadu_ps(mk, (const float *)w + p);
    __m256i h = _mm256_maskz_loadu_epi16(mk, (const uint16_t *)w + p);
    if (WT == TL_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* ---- acc + vpdpbusd(w, the 4 bytes at x broadcast), the broadcast as the instruction's {1to16} memory operand:
 * gcc 12 does not fold _mm512_set1_epi32(*x) and emits a vpbroadcastd per dot, 64 extra uops per block at n = 8,
 * which made the small-n token loops uop-bound (q4_0 5632 x 2048, 1 thread, n = 8: 0.85x the CPU time, n = 2:
 * 0.92x, n = 16: 0.88x; q8_0 n = 8 0.91x; interleaved in one process). The same instruction on the same bytes:
 * the same bits. */
TL_INLINE __m512i dpbusd_bcst(__m512i acc, __m512i w, const int32_t *x) {
#if defined(__GNUC__)
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*x));
    return acc;
#else
    return _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(*x));
#endif
}

#endif
