/* avx512_float.c — AVX-512 micro-kernels for float weights (f32, f16, bf16) and their activations.
 *
 * Float weights (f32, f16, bf16-exact): tinyBLAS-style register tile of 4 weight rows x 6
 * tokens = 24 zmm accumulators; per 16 k-values 4 weight loads (f16 -> vcvtph2ps, bf16 ->
 * zero-extend + shift) and 6 activation loads feed 24 FMAs. Element p of k goes to lane p % 16,
 * lanes are summed in a fixed tree at the end, so results depend only on k.
 *
 * bf16 weights (default): vdpbf16ps on activations rounded to bf16 (act type TL_BF16; what
 * llama.cpp does; 2x the FMA rate, products exact, f32 accumulation). Same 4 x 6 tile, per 32
 * k-values; lane l accumulates the pairs (32s + 2l, 32s + 2l + 1). Option bf16_exact: the
 * exact path above (f32 activations).
 */
#include <immintrin.h>
#include <string.h>

#include "avx512.h"

/* ---- activation layouts -------------------------------------------------------------------------
 * TL_F32 (f32, f16 and exact-bf16 weights): f32 x[k], zero pad to 64 bytes (the tiles' last
 *   16-block reads the padding as zeros).
 * TL_BF16 (bf16 weights, vdpbf16ps): bf16(x)[k] round to nearest even (vcvtne2ps2bf16: nan stays
 *   nan; like vdpbf16ps it treats f32 denormal inputs as zero), zero pad to 64 bytes. */
int64_t tl_avx512_f32_act_row_bytes(int64_t k) { return tl_round_up(4 * k, 64); }

void tl_avx512_f32_act_prepare(const float *x, int64_t ldx, int64_t j0, int64_t j1, int64_t k, uint8_t *act,
                               int64_t ldact) {
    for (int64_t j = j0; j < j1; j++) {
        uint8_t *row = act + j * ldact;
        memcpy(row, x + j * ldx, (size_t)k * 4);
        memset(row + 4 * k, 0, (size_t)(ldact - 4 * k));
    }
}

int64_t tl_avx512_bf16_act_row_bytes(int64_t k) { return tl_round_up(2 * k, 64); }

void tl_avx512_bf16_act_prepare(const float *x, int64_t ldx, int64_t j0, int64_t j1, int64_t k, uint8_t *act,
                                int64_t ldact) {
    for (int64_t j = j0; j < j1; j++) {
        const float *xr = x + j * ldx;
        uint8_t *row = act + j * ldact;
        uint16_t *hb = (uint16_t *)row;
        int64_t p = 0;
        for (; p + 32 <= k; p += 32) {
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(xr + p + 16), _mm512_loadu_ps(xr + p));
            _mm512_storeu_si512((void *)(hb + p), (__m512i)v);
        }
        for (; p < k; p += 16) {
            int64_t r = TL_MIN(k - p, 16);
            __mmask16 mk = (__mmask16)((1u << r) - 1);
            __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, xr + p));
            _mm256_mask_storeu_epi16((void *)(hb + p), mk, (__m256i)v);
        }
        memset(row + 2 * k, 0, (size_t)(ldact - 2 * k));
    }
}

/* ---- float weights: 4 x 6 register tile (F_RM x F_RN, avx512.h) ---------------------------- */
/* Sums of the 16 lanes of a, b, c, d as one __m128 (a, b, c, d), fixed tree. */
TL_INLINE __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xEE));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(abcd), _mm512_extractf32x8_ps(abcd, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

TL_INLINE void f_store(const int RM, const int RN, const tl_gemm_args *a, int64_t i0, int64_t j0,
                       __m512 acc[F_RM][F_RN]) {
    const __m512 z = _mm512_setzero_ps();
    for (int j = 0; j < RN; j++) {
        __m128 s = hsum4(acc[0][j], RM > 1 ? acc[1][j] : z, RM > 2 ? acc[2][j] : z, RM > 3 ? acc[3][j] : z);
        float *yp = a->y + (j0 + j) * a->ldy + i0;
        if (RM == 4) _mm_storeu_ps(yp, s);
        else _mm_mask_storeu_ps(yp, (__mmask8)((1u << RM) - 1), s);
    }
}

TL_INLINE void f_tile_impl(const int WT, const int RM, const int RN, const tl_gemm_args *a, int64_t i0, int64_t j0) {
    __m512 acc[F_RM][F_RN];
    const uint8_t *w[F_RM];
    const float *x[F_RN];
    for (int i = 0; i < RM; i++) w[i] = a->w + (i0 + i) * a->ldw;
    for (int j = 0; j < RN; j++) x[j] = (const float *)(a->act + (j0 + j) * a->ldact);
    for (int i = 0; i < RM; i++)
        for (int j = 0; j < RN; j++) acc[i][j] = _mm512_setzero_ps();
    const int64_t k = a->k;
    int64_t p = 0;
    for (; p + 16 <= k; p += 16) {
        __m512 wv[F_RM];
        for (int i = 0; i < RM; i++) wv[i] = f_load(WT, w[i], p);
        for (int j = 0; j < RN; j++) {
            __m512 xv = _mm512_load_ps(x[j] + p);
            for (int i = 0; i < RM; i++) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    if (p < k) {
        __mmask16 mk = (__mmask16)((1u << (k - p)) - 1);
        __m512 wv[F_RM];
        for (int i = 0; i < RM; i++) wv[i] = f_load_mask(WT, w[i], p, mk);
        for (int j = 0; j < RN; j++) {
            __m512 xv = _mm512_load_ps(x[j] + p); /* zero-padded row */
            for (int i = 0; i < RM; i++) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    f_store(RM, RN, a, i0, j0, acc);
}

/* bf16 weights x bf16-rounded activations, vdpbf16ps: lane l accumulates elements 32s + 2l, 2l+1. */
TL_INLINE void bf_tile_impl(const int RM, const int RN, const tl_gemm_args *a, int64_t i0, int64_t j0) {
    __m512 acc[F_RM][F_RN];
    const uint16_t *w[F_RM];
    const uint16_t *x[F_RN];
    for (int i = 0; i < RM; i++) w[i] = (const uint16_t *)(a->w + (i0 + i) * a->ldw);
    for (int j = 0; j < RN; j++) x[j] = (const uint16_t *)(a->act + (j0 + j) * a->ldact);
    for (int i = 0; i < RM; i++)
        for (int j = 0; j < RN; j++) acc[i][j] = _mm512_setzero_ps();
    const int64_t k = a->k;
    int64_t p = 0;
    for (; p + 32 <= k; p += 32) {
        __m512i wv[F_RM];
        for (int i = 0; i < RM; i++) wv[i] = _mm512_loadu_si512((const void *)(w[i] + p));
        for (int j = 0; j < RN; j++) {
            __m512i xv = _mm512_load_si512((const void *)(x[j] + p));
            for (int i = 0; i < RM; i++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)wv[i], (__m512bh)xv);
        }
    }
    if (p < k) {
        __mmask32 mk = (__mmask32)((1ull << (k - p)) - 1);
        __m512i wv[F_RM];
        for (int i = 0; i < RM; i++) wv[i] = _mm512_maskz_loadu_epi16(mk, (const void *)(w[i] + p));
        for (int j = 0; j < RN; j++) {
            __m512i xv = _mm512_maskz_loadu_epi16(mk, (const void *)(x[j] + p));
            for (int i = 0; i < RM; i++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)wv[i], (__m512bh)xv);
        }
    }
    f_store(RM, RN, a, i0, j0, acc);
}

#define F_DISPATCH(CALL, rm, rn)                                                                   \
    switch ((rm) * 8 + (rn)) {                                                                     \
    case 011: CALL(1, 1); break; case 012: CALL(1, 2); break; case 013: CALL(1, 3); break;         \
    case 014: CALL(1, 4); break; case 015: CALL(1, 5); break; case 016: CALL(1, 6); break;         \
    case 021: CALL(2, 1); break; case 022: CALL(2, 2); break; case 023: CALL(2, 3); break;         \
    case 024: CALL(2, 4); break; case 025: CALL(2, 5); break; case 026: CALL(2, 6); break;         \
    case 031: CALL(3, 1); break; case 032: CALL(3, 2); break; case 033: CALL(3, 3); break;         \
    case 034: CALL(3, 4); break; case 035: CALL(3, 5); break; case 036: CALL(3, 6); break;         \
    case 041: CALL(4, 1); break; case 042: CALL(4, 2); break; case 043: CALL(4, 3); break;         \
    case 044: CALL(4, 4); break; case 045: CALL(4, 5); break; case 046: CALL(4, 6); break;         \
    default: break;                                                                                \
    }

void tl_avx512_f32_tile_4x6(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {
#define C_(M, N) f_tile_impl(TL_F32, M, N, a, i0, j0)
    F_DISPATCH(C_, rm, rn)
#undef C_
}
void tl_avx512_f16_tile_4x6(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {
#define C_(M, N) f_tile_impl(TL_F16, M, N, a, i0, j0)
    F_DISPATCH(C_, rm, rn)
#undef C_
}
void tl_avx512_bf16_tile_4x6(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {
#define C_(M, N) f_tile_impl(TL_BF16, M, N, a, i0, j0)
    F_DISPATCH(C_, rm, rn)
#undef C_
}
/* bf16 weights x bf16-rounded activations (vdpbf16ps): the default (variant_avx512.c's table). */
void tl_avx512_bf16dp_tile_4x6(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {
#define C_(M, N) bf_tile_impl(M, N, a, i0, j0)
    F_DISPATCH(C_, rm, rn)
#undef C_
}

/* ---- n == 1 (decode), f16 and exact bf16: F_GEMV_R rows at a time, weights streamed from DRAM ------
 * A 16-bit weight row costs two loads, two conversions and two FMAs per 64-byte line, twice the
 * f32 / vdpbf16ps count, so the out-of-order window covers half as many lines and a core keeps
 * fewer misses in flight (one thread from DRAM: f16 ~21 GB/s vs ~30 for f32 and bf16-dp with
 * the same tile). Each step eats one 64-byte line of every row and prefetches the same line of
 * the next F_GEMV_R rows, which software prefetches keep in flight past the window. The arithmetic
 * per output is the tiles' with rn = 1 (lane p % 16, one accumulator per row, hsum4), so a
 * row's result is bit-identical to the n > 1 tiles' (not the packed prompt kernel's). f32 takes it
 * too (2 threads from DRAM vs the 4-row tiles, two rounds: 2048x2048 +3 / +14 %, 5632x2048 +2 /
 * +12 %, 32000x2048 +8 / +7 %, 2048x5632 -1 / -5 %; model tg ratio to llama.cpp 0.958 -> 0.990,
 * 0.993); vdpbf16ps bf16 streams as fast through its tile (measured), so it has no gemv.
 * One row at a time (F_GEMV_R = 1): each thread then reads one sequential stream, which the memory here
 * serves best; 2 threads from DRAM, f16, F_GEMV_R = 1 vs 4: +4 % to +22 % in all eight shape x round
 * comparisons (2048x2048 .. 32000x2048), 1 thread +10 to +20 %. The code still takes F_GEMV_R up to 4. */
#define F_GEMV_R 1

TL_INLINE void f_gemv_rows(const int WT, const int R, const tl_gemm_args *a, int64_t i0) {
    const int64_t k = a->k;
    const uint8_t *w[4]; /* R <= 4: the ragged-end cases of f_gemv_impl instantiate R up to 3 */
    const char *pf[4];
    __m512 acc[4];
    for (int r = 0; r < R; r++) {
        w[r] = a->w + (i0 + r) * a->ldw;
        pf[r] = (const char *)(a->w + TL_MIN(i0 + R + r, a->m - 1) * a->ldw); /* next rows, clamped */
        acc[r] = _mm512_setzero_ps();
    }
    const float *x = (const float *)a->act;
    const int64_t kb = k / 32 * 32;
    for (int64_t p = 0; p < kb; p += 32) {
        const __m512 x0 = _mm512_load_ps(x + p), x1 = _mm512_load_ps(x + p + 16);
        for (int r = 0; r < R; r++) {
            if (WT == TL_F32) { /* 128 bytes per step */
                _mm_prefetch(pf[r] + 4 * p, _MM_HINT_T0);
                _mm_prefetch(pf[r] + 4 * p + 64, _MM_HINT_T0);
            } else {
                _mm_prefetch(pf[r] + 2 * p, _MM_HINT_T0);
            }
            acc[r] = _mm512_fmadd_ps(f_load(WT, w[r], p), x0, acc[r]);
            acc[r] = _mm512_fmadd_ps(f_load(WT, w[r], p + 16), x1, acc[r]);
        }
    }
    for (int64_t p = kb; p < k; p += 16) { /* x is zero-padded to a multiple of 16 */
        const __mmask16 mk = (__mmask16)(k - p >= 16 ? 0xffff : (1u << (k - p)) - 1);
        const __m512 xv = _mm512_load_ps(x + p);
        for (int r = 0; r < R; r++) acc[r] = _mm512_fmadd_ps(f_load_mask(WT, w[r], p, mk), xv, acc[r]);
    }
    const __m512 z = _mm512_setzero_ps();
    __m128 s = hsum4(acc[0], R > 1 ? acc[1] : z, R > 2 ? acc[2] : z, R > 3 ? acc[3] : z);
    if (R == 4) _mm_storeu_ps(a->y + i0, s);
    else _mm_mask_storeu_ps(a->y + i0, (__mmask8)((1u << R) - 1), s);
}

TL_INLINE void f_gemv_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + F_GEMV_R <= i1; i += F_GEMV_R) f_gemv_rows(WT, F_GEMV_R, a, i);
    switch ((int)(i1 - i)) {
    case 1: f_gemv_rows(WT, 1, a, i); break;
    case 2: f_gemv_rows(WT, 2, a, i); break;
    case 3: f_gemv_rows(WT, 3, a, i); break;
    default: break;
    }
}
static void f32_gemv_1(const tl_gemm_args *a, int64_t i0, int64_t i1) { f_gemv_impl(TL_F32, a, i0, i1); }
static void f16_gemv_1(const tl_gemm_args *a, int64_t i0, int64_t i1) { f_gemv_impl(TL_F16, a, i0, i1); }
static void bf16_gemv_1(const tl_gemm_args *a, int64_t i0, int64_t i1) { f_gemv_impl(TL_BF16, a, i0, i1); }

/* ---- table entries ---------------------------------------------------------------------------
 * The 4 x 6 dot-product tiles (and f16 / exact-bf16 gemv); for prompts their `big` is the packed
 * 32 x 12 kernel of avx512_float_packed.c. */
const tl_ukernel tl_avx512_f32_4x6 = {
    .rm = F_RM, .rn = F_RN, .tile = tl_avx512_f32_tile_4x6, .gemv_rows = F_GEMV_R, .gemv = f32_gemv_1,
    .act_row_bytes = tl_avx512_f32_act_row_bytes, .act_prepare = tl_avx512_f32_act_prepare,
    .big = &tl_avx512_f32_packed_32x12, .big_n = F_PACKED_MIN_N};
const tl_ukernel tl_avx512_f16_4x6 = {
    .rm = F_RM, .rn = F_RN, .tile = tl_avx512_f16_tile_4x6, .gemv_rows = F_GEMV_R, .gemv = f16_gemv_1,
    .act_row_bytes = tl_avx512_f32_act_row_bytes, .act_prepare = tl_avx512_f32_act_prepare,
    .big = &tl_avx512_f16_packed_32x12, .big_n = F_PACKED_MIN_N_F16};
const tl_ukernel tl_avx512_bf16_4x6 = {
    .rm = F_RM, .rn = F_RN, .tile = tl_avx512_bf16_tile_4x6, .gemv_rows = F_GEMV_R, .gemv = bf16_gemv_1,
    .act_row_bytes = tl_avx512_f32_act_row_bytes, .act_prepare = tl_avx512_f32_act_prepare,
    .big = &tl_avx512_bf16_packed_32x12, .big_n = F_PACKED_MIN_N};
const tl_ukernel tl_avx512_bf16dp_4x6 = {
    .rm = F_RM, .rn = F_RN, .tile = tl_avx512_bf16dp_tile_4x6, .act_row_bytes = tl_avx512_bf16_act_row_bytes,
    .act_prepare = tl_avx512_bf16_act_prepare, .act_type = TL_BF16, .big = &tl_avx512_bf16dp_packed_32x12,
    .big_n = F_PACKED_MIN_N};
