/* avx2_float.c — AVX2 + FMA + F16C micro-kernels for float weights (f32, f16, bf16).
 *
 * Register tile of 3 weight rows x 4 tokens = 12 ymm accumulators + 3 weight vectors + 1
 * activation vector (16 registers). Element p of k goes to lane p % 8, lanes summed in a fixed
 * tree at the end (results depend only on k). f16 via vcvtph2ps, bf16 by zero-extension and shift
 * (exact), activations stay f32 (shared default layout). n == 1 has its own gemv (same arithmetic
 * per output, 8 rows at a time); prompts from AVX2_F_PACKED_MIN_N tokens take the
 * packed panels of avx2_float_packed.c.
 */
#include <immintrin.h>

#include "avx2.h"
#include "x86_common.h"

/* ---- float weights: 3 x 4 register tile ------------------------------------------------------ */
#define F_RM AVX2_F_RM
#define F_RN AVX2_F_RN

/* Sums of the 8 lanes of a, b, c, d as (a, b, c, d), fixed tree: ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)). */
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
        for (int i = 0; i < RM; i++) wv[i] = avx2_f_load(WT, w[i], p);
        for (int j = 0; j < RN; j++) {
            __m256 xv = _mm256_load_ps(x[j] + p);
            for (int i = 0; i < RM; i++) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    if (p < k) {
        __m256 wv[F_RM];
        for (int i = 0; i < RM; i++) wv[i] = avx2_f_load_part(WT, w[i], p, k);
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
    void tl_avx2_##NAME##_tile_3x4(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) { \
        F_DISPATCH(C_##NAME, rm, rn)                                                               \
    }
#define C_f32(M, N) f_tile_impl(TL_F32, M, N, a, i0, j0)
#define C_f16(M, N) f_tile_impl(TL_F16, M, N, a, i0, j0)
#define C_bf16(M, N) f_tile_impl(TL_BF16, M, N, a, i0, j0)
F_FUNC(f32, TL_F32)
F_FUNC(f16, TL_F16)
F_FUNC(bf16, TL_BF16)

/* ---- n == 1 (decode): F_GEMV_R rows at a time, weights streamed from DRAM --------------------------
 * Per output the arithmetic is the tile's (one accumulator, lane p % 8 in k order, the tail zero-padded,
 * hsum4), so a token decoded alone gives the bits of the same token in a small batch. That leaves one FMA
 * chain per row, so the rows are what keeps loads and FMAs in flight: each step eats 64 bytes of every row
 * (f16 / bf16: 32 values, 4 FMAs on the row's one accumulator; f32: 128 bytes, 8 FMAs) and prefetches as many
 * lines of the next 8 rows, linearly, into L2 (L1 for panels small enough: x86_pf_to_l1). AMD Zen 4 capped at
 * AVX2, 2 threads from DRAM (5632x2048, 2048x5632, 2048x2048 each cycled over 512 MiB), alternated in one
 * process, by medians: 8 rows without prefetch against 4 rows + prefetch of the same line of the next 4 rows
 * (f16, bf16) and the 3-row tile (f32): f16 +20 to +26 %, bf16 +20 to +25 %, f32 +4 to +16 %; 12 rows within
 * 2 % of 8; then the linear prefetch into L2: f16 +8 to +10 %, bf16 +12 to +20 %, f32 +2 % (into L1 it lost:
 * 32 KiB panels on a 32 KiB L1d). */
#define F_GEMV_R 8

TL_INLINE void f_gemv_rows(const int WT, const int R, const tl_gemm_args *a, int64_t i0) {
    const int64_t k = a->k;
    const uint8_t *w[F_GEMV_R];
    __m256 acc[F_GEMV_R];
    for (int r = 0; r < R; r++) {
        w[r] = a->w + (i0 + r) * a->ldw;
        acc[r] = _mm256_setzero_ps();
    }
    const float *x = (const float *)a->act;
    const int64_t kb = k / 32 * 32, k8 = k / 8 * 8;
    /* the next panel (the R rows after these, contiguous), linearly, as fast as this one is read */
    const int pfl = WT == TL_F32 ? 2 * R : R; /* lines read per step */
    const char *pf = (const char *)(a->w + (i0 + R) * a->ldw);
    const int pf_level = i0 + 2 * R > a->m ? 0 : x86_pf_to_l1(R * a->ldw) ? 3 : 2;
    for (int64_t p = 0; p < kb; p += 32) {
        const __m256 x0 = _mm256_load_ps(x + p), x1 = _mm256_load_ps(x + p + 8);
        const __m256 x2 = _mm256_load_ps(x + p + 16), x3 = _mm256_load_ps(x + p + 24);
        if (pf_level == 2) {
            for (int l = 0; l < pfl; l++) __builtin_prefetch(pf + 64 * l, 0, 2);
        } else if (pf_level == 3) {
            for (int l = 0; l < pfl; l++) __builtin_prefetch(pf + 64 * l, 0, 3);
        }
        pf += 64 * pfl;
        for (int r = 0; r < R; r++) {
            acc[r] = _mm256_fmadd_ps(avx2_f_load(WT, w[r], p), x0, acc[r]);
            acc[r] = _mm256_fmadd_ps(avx2_f_load(WT, w[r], p + 8), x1, acc[r]);
            acc[r] = _mm256_fmadd_ps(avx2_f_load(WT, w[r], p + 16), x2, acc[r]);
            acc[r] = _mm256_fmadd_ps(avx2_f_load(WT, w[r], p + 24), x3, acc[r]);
        }
    }
    for (int64_t p = kb; p < k8; p += 8) {
        const __m256 xv = _mm256_load_ps(x + p);
        for (int r = 0; r < R; r++) acc[r] = _mm256_fmadd_ps(avx2_f_load(WT, w[r], p), xv, acc[r]);
    }
    if (k8 < k) {
        const __m256 xv = _mm256_load_ps(x + k8); /* zero-padded row */
        for (int r = 0; r < R; r++) acc[r] = _mm256_fmadd_ps(avx2_f_load_part(WT, w[r], k8, k), xv, acc[r]);
    }
    const __m256 z = _mm256_setzero_ps();
    float s[F_GEMV_R];
    _mm_storeu_ps(s, hsum4(acc[0], R > 1 ? acc[1] : z, R > 2 ? acc[2] : z, R > 3 ? acc[3] : z));
    if (R > 4) _mm_storeu_ps(s + 4, hsum4(acc[4], R > 5 ? acc[5] : z, R > 6 ? acc[6] : z, R > 7 ? acc[7] : z));
    for (int r = 0; r < R; r++) a->y[i0 + r] = s[r];
}

TL_INLINE void f_gemv_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + F_GEMV_R <= i1; i += F_GEMV_R) f_gemv_rows(WT, F_GEMV_R, a, i);
    switch ((int)(i1 - i)) {
    case 1: f_gemv_rows(WT, 1, a, i); break;
    case 2: f_gemv_rows(WT, 2, a, i); break;
    case 3: f_gemv_rows(WT, 3, a, i); break;
    case 4: f_gemv_rows(WT, 4, a, i); break;
    case 5: f_gemv_rows(WT, 5, a, i); break;
    case 6: f_gemv_rows(WT, 6, a, i); break;
    case 7: f_gemv_rows(WT, 7, a, i); break;
    default: break;
    }
}
static void f32_gemv(const tl_gemm_args *a, int64_t i0, int64_t i1) { f_gemv_impl(TL_F32, a, i0, i1); }
static void f16_gemv(const tl_gemm_args *a, int64_t i0, int64_t i1) { f_gemv_impl(TL_F16, a, i0, i1); }
static void bf16_gemv(const tl_gemm_args *a, int64_t i0, int64_t i1) { f_gemv_impl(TL_BF16, a, i0, i1); }

/* ---- table entries: the 3 x 4 tiles, their gemv, and for prompts the packed 16 x 6 kernel ------- */
const tl_ukernel tl_avx2_f32_3x4 = {.rm = F_RM, .rn = F_RN, .tile = tl_avx2_f32_tile_3x4, .gemv_rows = F_GEMV_R,
                                    .gemv = f32_gemv,
                                    .big = &tl_avx2_f32_packed_16x6, .big_n = AVX2_F_PACKED_MIN_N};
const tl_ukernel tl_avx2_f16_3x4 = {.rm = F_RM, .rn = F_RN, .tile = tl_avx2_f16_tile_3x4, .gemv_rows = F_GEMV_R,
                                    .gemv = f16_gemv, .big = &tl_avx2_f16_packed_16x6,
                                    .big_n = AVX2_F_PACKED_MIN_N};
const tl_ukernel tl_avx2_bf16_3x4 = {.rm = F_RM, .rn = F_RN, .tile = tl_avx2_bf16_tile_3x4,
                                     .gemv_rows = F_GEMV_R, .gemv = bf16_gemv, .big = &tl_avx2_bf16_packed_16x6,
                                     .big_n = AVX2_F_PACKED_MIN_N};
