/* avx2_float.c — AVX2 + FMA + F16C micro-kernels for float weights (f32, f16, bf16).
 *
 * Register tile of 3 weight rows x 4 tokens = 12 ymm accumulators + 3 weight vectors + 1
 * activation vector (16 registers). Element p of k goes to lane p % 8, lanes summed in a fixed
 * tree at the end (results depend only on k). f16 via vcvtph2ps, bf16 by zero-extension and shift
 * (exact), activations stay f32 (shared default layout).
 */
#include <immintrin.h>

#include "avx2.h"

/* ---- float weights: 3 x 4 register tile ------------------------------------------------------ */
#define F_RM 3
#define F_RN 4

TL_INLINE __m256 f_load(const int WT, const uint8_t *w, int64_t p) {
    if (WT == TL_F32) return _mm256_loadu_ps((const float *)w + p);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + p));
    if (WT == TL_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* The last (k % 8) values of a row, widened to f32 and zero-padded to 8. */
TL_INLINE __m256 f_load_tail(const int WT, const uint8_t *w, int64_t p, int64_t k) {
    float buf[8] = {0};
    for (int64_t q = p; q < k; q++) {
        if (WT == TL_F32) memcpy(&buf[q - p], w + 4 * q, 4);
        else if (WT == TL_F16) buf[q - p] = tl_f16_to_f32(tl_load_u16(w + 2 * q));
        else buf[q - p] = tl_bf16_to_f32(tl_load_u16(w + 2 * q));
    }
    return _mm256_loadu_ps(buf);
}

/* Sums of the 8 lanes of a, b, c, d as (a, b, c, d), fixed tree. */
TL_INLINE __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

TL_INLINE void f_tile_impl(const int WT, const int RM, const int RN, const tl_gemm_args *a, int64_t i0, int64_t j0) {
    __m256 acc[F_RM][F_RN];
    const uint8_t *w[F_RM];
    const float *x[F_RN];
    for (int i = 0; i < RM; i++) w[i] = a->w + (i0 + i) * a->ldw;
    for (int j = 0; j < RN; j++) x[j] = (const float *)(a->act + (j0 + j) * a->ldact);
    for (int i = 0; i < RM; i++)
        for (int j = 0; j < RN; j++) acc[i][j] = _mm256_setzero_ps();
    const int64_t k = a->k;
    int64_t p = 0;
    for (; p + 8 <= k; p += 8) {
        __m256 wv[F_RM];
        for (int i = 0; i < RM; i++) wv[i] = f_load(WT, w[i], p);
        for (int j = 0; j < RN; j++) {
            __m256 xv = _mm256_load_ps(x[j] + p);
            for (int i = 0; i < RM; i++) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    if (p < k) {
        __m256 wv[F_RM];
        for (int i = 0; i < RM; i++) wv[i] = f_load_tail(WT, w[i], p, k);
        for (int j = 0; j < RN; j++) {
            __m256 xv = _mm256_load_ps(x[j] + p); /* zero-padded row */
            for (int i = 0; i < RM; i++) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    const __m256 z = _mm256_setzero_ps();
    for (int j = 0; j < RN; j++) {
        float s[4];
        _mm_storeu_ps(s, hsum4(acc[0][j], RM > 1 ? acc[1][j] : z, RM > 2 ? acc[2][j] : z, z));
        float *yp = a->y + (j0 + j) * a->ldy + i0;
        for (int i = 0; i < RM; i++) yp[i] = s[i];
    }
}

#define F_DISPATCH(CALL, rm, rn)                                                                   \
    switch ((rm) * 8 + (rn)) {                                                                     \
    case 011: CALL(1, 1); break; case 012: CALL(1, 2); break; case 013: CALL(1, 3); break;         \
    case 014: CALL(1, 4); break;                                                                   \
    case 021: CALL(2, 1); break; case 022: CALL(2, 2); break; case 023: CALL(2, 3); break;         \
    case 024: CALL(2, 4); break;                                                                   \
    case 031: CALL(3, 1); break; case 032: CALL(3, 2); break; case 033: CALL(3, 3); break;         \
    case 034: CALL(3, 4); break;                                                                   \
    default: break;                                                                                \
    }

#define F_FUNC(NAME, WT)                                                                           \
    static void NAME##_tile_3x4(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {   \
        F_DISPATCH(C_##NAME, rm, rn)                                                               \
    }
#define C_f32(M, N) f_tile_impl(TL_F32, M, N, a, i0, j0)
#define C_f16(M, N) f_tile_impl(TL_F16, M, N, a, i0, j0)
#define C_bf16(M, N) f_tile_impl(TL_BF16, M, N, a, i0, j0)
F_FUNC(f32, TL_F32)
F_FUNC(f16, TL_F16)
F_FUNC(bf16, TL_BF16)

const tl_ukernel tl_avx2_f32_3x4 = {.rm = F_RM, .rn = F_RN, .tile = f32_tile_3x4};
const tl_ukernel tl_avx2_f16_3x4 = {.rm = F_RM, .rn = F_RN, .tile = f16_tile_3x4};
const tl_ukernel tl_avx2_bf16_3x4 = {.rm = F_RM, .rn = F_RN, .tile = bf16_tile_3x4};
