/* portable_q8.c — plain-C micro-kernels for the 32-block weights q8_0, q4_0 and q4_1 (against the
 * shared q8 activations of tl_internal.h), compiled for the baseline ISA; fixed 16-wide integer dots
 * the compiler vectorises.
 *
 * Numerics (identical for every tile shape, hence for every thread count): exact int32 dot of each
 * 16-value half of a 32-block (one activation scale per 16), then acc += d_w * (d_x0 * dot0 +
 * d_x1 * dot1) in f32 in block order; q4_1 adds m_w * (s_x0 + s_x1) per block into a second
 * accumulator.
 */
#include "portable.h"

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

#define TILE_4X4(name)                                                                             \
    static void name##_tile_4x4(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {  \
        TL_DISPATCH(name##_tile_impl, a, i0, j0, rm, rn)                                          \
    }
TILE_4X4(q8_0)
TILE_4X4(q4_0)
TILE_4X4(q4_1)

const tl_ukernel tl_portable_q8_0_4x4 = {.rm = 4, .rn = 4, .tile = q8_0_tile_4x4};
const tl_ukernel tl_portable_q4_0_4x4 = {.rm = 4, .rn = 4, .tile = q4_0_tile_4x4};
const tl_ukernel tl_portable_q4_1_4x4 = {.rm = 4, .rn = 4, .tile = q4_1_tile_4x4};
