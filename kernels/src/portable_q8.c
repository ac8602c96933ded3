/* ukernel_portable.c — plain-C micro-kernels for every weight type (f32, f16, bf16, q8_0,
 * q4_0, q4_1), compiled for the baseline ISA. No intrinsics: the loops are written in fixed
 * shapes (constant tile sizes after inlining, lane-wise float accumulators, 32-wide integer
 * dots) so the compiler can vectorise them with whatever the target offers.
 *
 * Numerics (identical for every tile shape, hence for every thread count):
 *   float types: element p of k goes to accumulator lane p % LANES; lanes are summed in a
 *     fixed tree at the end. f16/bf16 weights are widened to f32 in chunks of KC values and
 *     multiplied against f32 activations (never 16-bit accumulation).
 *   quantized: exact int32 dot of each 16-value half of a 32-block (one activation scale per
 *     16, tl_internal.h), then acc += d_w * (d_x0 * dot0 + d_x1 * dot1) in f32 in block order;
 *     q4_1 adds m_w * (s_x0 + s_x1) per block into a second accumulator.
 */
#include "kquants.h"
#include "tl_internal.h"
#include "ukernel.h"

const char tl_uk_name[] = "portable";
const uint64_t tl_uk_required = 0;
int tl_uk_init(void) { return TL_OK; }

/* ---- tile-size dispatch -------------------------------------------------------------------
 * The kernels below are always_inline functions taking the tile shape as (RM, RN) arguments;
 * this switch instantiates each shape with constants so loops unroll and accumulators live in
 * registers. */
#define TL_MAXT 4
#define TL_DISPATCH(impl, a, i0, j0, rm, rn)                                           \
    switch ((rm) * 8 + (rn)) {                                                         \
    case 011: impl(a, i0, j0, 1, 1); break; case 012: impl(a, i0, j0, 1, 2); break;    \
    case 013: impl(a, i0, j0, 1, 3); break; case 014: impl(a, i0, j0, 1, 4); break;    \
    case 021: impl(a, i0, j0, 2, 1); break; case 022: impl(a, i0, j0, 2, 2); break;    \
    case 023: impl(a, i0, j0, 2, 3); break; case 024: impl(a, i0, j0, 2, 4); break;    \
    case 031: impl(a, i0, j0, 3, 1); break; case 032: impl(a, i0, j0, 3, 2); break;    \
    case 033: impl(a, i0, j0, 3, 3); break; case 034: impl(a, i0, j0, 3, 4); break;    \
    case 041: impl(a, i0, j0, 4, 1); break; case 042: impl(a, i0, j0, 4, 2); break;    \
    case 043: impl(a, i0, j0, 4, 3); break; case 044: impl(a, i0, j0, 4, 4); break;    \
    default: break;                                                                    \
    }

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

/* ---- quantized weights ---------------------------------------------------------------------- */
TL_INLINE int32_t dot16(const int8_t *TL_RESTRICT a, const int8_t *TL_RESTRICT b) {
    int32_t s = 0;
    for (int t = 0; t < TL_QG; t++) s += (int32_t)a[t] * (int32_t)b[t];
    return s;
}

/* Unpack one weight block to 32 int8 values and its scale (and min for q4_1). */
TL_INLINE void unpack_q8_0(const uint8_t *blk, int8_t *q, float *d) {
    *d = tl_f16_to_f32(tl_load_u16(blk));
    memcpy(q, blk + 2, TL_QK);
}
TL_INLINE void unpack_q4_0(const uint8_t *blk, int8_t *q, float *d) {
    *d = tl_f16_to_f32(tl_load_u16(blk));
    const uint8_t *qs = blk + 2;
    for (int t = 0; t < 16; t++) {
        q[t] = (int8_t)((qs[t] & 15) - 8);   /* element t: low nibble */
        q[t + 16] = (int8_t)((qs[t] >> 4) - 8); /* element t+16: high nibble */
    }
}
TL_INLINE void unpack_q4_1(const uint8_t *blk, int8_t *q, float *d, float *mn) {
    *d = tl_f16_to_f32(tl_load_u16(blk));
    *mn = tl_f16_to_f32(tl_load_u16(blk + 2));
    const uint8_t *qs = blk + 4;
    for (int t = 0; t < 16; t++) {
        q[t] = (int8_t)(qs[t] & 15);
        q[t + 16] = (int8_t)(qs[t] >> 4);
    }
}

/* WT: 0 = q8_0, 1 = q4_0, 2 = q4_1 (constant after inlining). */
TL_INLINE void q_tile_impl(const tl_gemm_args *a, int64_t i0, int64_t j0, const int RM, const int RN, const int WT) {
    const int bytes = WT == 0 ? TL_Q8_0_BYTES : WT == 1 ? TL_Q4_0_BYTES : TL_Q4_1_BYTES;
    const int64_t k = a->k, nb = k / TL_QK;
    const uint8_t *w[TL_MAXT], *xr[TL_MAXT];
    float acc[TL_MAXT][TL_MAXT] = {{0}}, macc[TL_MAXT][TL_MAXT] = {{0}};
    for (int i = 0; i < RM; i++) w[i] = a->w + (i0 + i) * a->ldw;
    for (int j = 0; j < RN; j++) xr[j] = a->act + (j0 + j) * a->ldact;
    for (int64_t b = 0; b < nb; b++) {
        int8_t wq[TL_MAXT][TL_QK];
        float dw[TL_MAXT], mw[TL_MAXT];
        for (int i = 0; i < RM; i++) {
            const uint8_t *blk = w[i] + b * bytes;
            if (WT == 0) unpack_q8_0(blk, wq[i], &dw[i]);
            else if (WT == 1) unpack_q4_0(blk, wq[i], &dw[i]);
            else unpack_q4_1(blk, wq[i], &dw[i], &mw[i]);
        }
        for (int j = 0; j < RN; j++) {
            const int8_t *xq = tl_q8a_qs(xr[j]) + b * TL_QK;
            const float dx0 = tl_q8a_d(xr[j], k)[2 * b], dx1 = tl_q8a_d(xr[j], k)[2 * b + 1];
            for (int i = 0; i < RM; i++)
                acc[i][j] += dw[i] * (dx0 * (float)dot16(wq[i], xq) + dx1 * (float)dot16(wq[i] + 16, xq + 16));
            if (WT == 2) {
                const float sx = tl_q8a_s(xr[j], k)[2 * b] + tl_q8a_s(xr[j], k)[2 * b + 1];
                for (int i = 0; i < RM; i++) macc[i][j] += mw[i] * sx;
            }
        }
    }
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) a->y[(j0 + j) * a->ldy + i0 + i] = WT == 2 ? acc[i][j] + macc[i][j] : acc[i][j];
}
#define q8_0_tile_impl(a, i0, j0, RM, RN) q_tile_impl(a, i0, j0, RM, RN, 0)
#define q4_0_tile_impl(a, i0, j0, RM, RN) q_tile_impl(a, i0, j0, RM, RN, 1)
#define q4_1_tile_impl(a, i0, j0, RM, RN) q_tile_impl(a, i0, j0, RM, RN, 2)

/* ---- the table ------------------------------------------------------------------------------ */
#define DEF_TILE(name)                                                                        \
    static void name##_tile(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) { \
        TL_DISPATCH(name##_tile_impl, a, i0, j0, rm, rn)                                      \
    }
DEF_TILE(f32)
DEF_TILE(f16)
DEF_TILE(bf16)
DEF_TILE(q8_0)
DEF_TILE(q4_0)
DEF_TILE(q4_1)

/* Tile shapes: float 4x3 = 12 vector accumulators (fits 16 SSE registers with the loads);
 * quantized 4x4: scalar accumulators, the 16-wide integer dots are what gets vectorised. */
static const tl_ukernel uk_f32 = {4, 3, f32_tile, 0, NULL, NULL, NULL, NULL};
static const tl_ukernel uk_f16 = {4, 3, f16_tile, 0, NULL, NULL, NULL, NULL};
static const tl_ukernel uk_bf16 = {4, 3, bf16_tile, 0, NULL, NULL, NULL, NULL};
static const tl_ukernel uk_q8_0 = {4, 4, q8_0_tile, 0, NULL, NULL, NULL, NULL};
static const tl_ukernel uk_q4_0 = {4, 4, q4_0_tile, 0, NULL, NULL, NULL, NULL};
static const tl_ukernel uk_q4_1 = {4, 4, q4_1_tile, 0, NULL, NULL, NULL, NULL};

const tl_ukernel *tl_uk_lookup(const tl_ctx *ctx, int wtype) {
    (void)ctx;
    switch (wtype) {
    case TL_F32: return &uk_f32;
    case TL_F16: return &uk_f16;
    case TL_BF16: return &uk_bf16;
    case TL_Q8_0: return &uk_q8_0;
    case TL_Q4_0: return &uk_q4_0;
    case TL_Q4_1: return &uk_q4_1;
    default: return tl_kq_portable_lookup(wtype); /* q5_0, q4_K, q5_K, q6_K (kquants.c) */
    }
}
