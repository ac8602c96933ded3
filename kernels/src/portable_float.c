/* portable_float.c — plain-C micro-kernels for float weights (f32, f16, bf16), compiled for the
 * baseline ISA. No intrinsics: the loops are written in fixed shapes (constant tile sizes after
 * inlining, lane-wise float accumulators) so the compiler can vectorise them with whatever the
 * target offers.
 *
 * Numerics (identical for every tile shape, hence for every thread count): element p of k goes to
 * accumulator lane p % LANES; lanes are summed in a fixed tree at the end. f16/bf16 weights are
 * widened to f32 in chunks of KC values and multiplied against f32 activations (never 16-bit
 * accumulation).
 */
#include "portable.h"

/* ---- float weights -------------------------------------------------------------------------- */
#define LANES 4   /* one SSE / NEON vector of f32 per accumulator */
#define KC 256    /* f16/bf16 values widened per chunk (a multiple of LANES) */

/* acc[i][j][l] += sum over p in [0, kc), p % LANES == l, of w[i][p] * x[j][p]. */
TL_INLINE void f32_accum(const int RM, const int RN, const float *const *w, const float *const *x, int64_t kc,
                         float acc[TL_MAXT][TL_MAXT][LANES]) {
    int64_t p = 0;
    for (; p + LANES <= kc; p += LANES)
        for (int i = 0; i < RM; i++)
            for (int j = 0; j < RN; j++)
                for (int l = 0; l < LANES; l++) acc[i][j][l] += w[i][p + l] * x[j][p + l];
    for (int l = 0; p + l < kc; l++)
        for (int i = 0; i < RM; i++)
            for (int j = 0; j < RN; j++) acc[i][j][l] += w[i][p + l] * x[j][p + l];
}

TL_INLINE void f32_store(const int RM, const int RN, const tl_gemm_args *a, int64_t i0, int64_t j0,
                         float acc[TL_MAXT][TL_MAXT][LANES]) {
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++)
            a->y[(j0 + j) * a->ldy + i0 + i] = (acc[i][j][0] + acc[i][j][1]) + (acc[i][j][2] + acc[i][j][3]);
}

TL_INLINE void f32_tile_impl(const tl_gemm_args *a, int64_t i0, int64_t j0, const int RM, const int RN) {
    const float *w[TL_MAXT], *x[TL_MAXT];
    float acc[TL_MAXT][TL_MAXT][LANES] = {{{0}}};
    for (int i = 0; i < RM; i++) w[i] = (const float *)(a->w + (i0 + i) * a->ldw);
    for (int j = 0; j < RN; j++) x[j] = (const float *)(a->act + (j0 + j) * a->ldact);
    f32_accum(RM, RN, w, x, a->k, acc);
    f32_store(RM, RN, a, i0, j0, acc);
}

/* Widen n 16-bit floats (possibly only 2-byte aligned) to f32; separate loops so each
 * vectorises on its own. */
static void widen_f16(const uint8_t *TL_RESTRICT src, float *TL_RESTRICT dst, int64_t n) {
    uint16_t h[KC];
    memcpy(h, src, (size_t)n * 2);
    for (int64_t t = 0; t < n; t++) dst[t] = tl_f16_to_f32(h[t]);
}
static void widen_bf16(const uint8_t *TL_RESTRICT src, float *TL_RESTRICT dst, int64_t n) {
    uint16_t h[KC];
    memcpy(h, src, (size_t)n * 2);
    for (int64_t t = 0; t < n; t++) dst[t] = tl_bf16_to_f32(h[t]);
}

/* f16 / bf16: widen KC weights of each row into a stack buffer, then the f32 loop; the chunk
 * is reused by all RN tokens, so the conversion costs 1/RN of a multiply-add per value. */
#define HALF_TILE_IMPL(name, widen)                                                                 \
    TL_INLINE void name(const tl_gemm_args *a, int64_t i0, int64_t j0, const int RM, const int RN) { \
        float wbuf[TL_MAXT][KC];                                                                    \
        const float *w[TL_MAXT], *x[TL_MAXT];                                                       \
        const uint8_t *wr[TL_MAXT];                                                                 \
        float acc[TL_MAXT][TL_MAXT][LANES] = {{{0}}};                                               \
        for (int i = 0; i < RM; i++) {                                                              \
            wr[i] = a->w + (i0 + i) * a->ldw;                                                       \
            w[i] = wbuf[i];                                                                         \
        }                                                                                           \
        for (int64_t p0 = 0; p0 < a->k; p0 += KC) {                                                 \
            int64_t kc = TL_MIN((int64_t)KC, a->k - p0);                                            \
            for (int i = 0; i < RM; i++) widen(wr[i] + 2 * p0, wbuf[i], kc);                        \
            for (int j = 0; j < RN; j++) x[j] = (const float *)(a->act + (j0 + j) * a->ldact) + p0; \
            f32_accum(RM, RN, w, x, kc, acc);                                                       \
        }                                                                                           \
        f32_store(RM, RN, a, i0, j0, acc);                                                          \
    }
HALF_TILE_IMPL(f16_tile_impl, widen_f16)
HALF_TILE_IMPL(bf16_tile_impl, widen_bf16)

#define TILE_4X3(name)                                                                             \
    static void name##_tile_4x3(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {  \
        TL_DISPATCH(name##_tile_impl, a, i0, j0, rm, rn)                                          \
    }
TILE_4X3(f32)
TILE_4X3(f16)
TILE_4X3(bf16)

const tl_ukernel tl_portable_f32_4x3 = {.rm = 4, .rn = 3, .tile = f32_tile_4x3};
const tl_ukernel tl_portable_f16_4x3 = {.rm = 4, .rn = 3, .tile = f16_tile_4x3};
const tl_ukernel tl_portable_bf16_4x3 = {.rm = 4, .rn = 3, .tile = bf16_tile_4x3};
