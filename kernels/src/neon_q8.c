/* neon_q8.c — ARMv8.2 NEON (dotprod) micro-kernels for the 32-block weights q8_0, q4_0 and q4_1,
 * tinyBLAS-style register tiles. Plain Advanced SIMD: never run in streaming mode.
 *
 * Quantized weights (q8_0, q4_0, q4_1) x q8 activations (tl_internal.h layout, one f32 scale
 * per 16 values): per 32-block, one `sdot` (vdotq_s32) per 16-value half gives an int32x4 of
 * partial sums per (row, token, half); vpaddq_s32 twice folds four rows into one int32x4 of
 * exact half-block dots (one lane per row), converted to f32: f = dot0 * d_x0 + dot1 * d_x1,
 * then acc += f * d_w (per-row scale vector); q4_1 adds m_w * (s_x0 + s_x1). The
 * accumulators run over rows, so each token's 4 outputs leave with one vst1q. Tile 4 rows x 4
 * tokens; the matrix-vector path (n == 1) uses the same code with 8 rows x 1 token.
 *
 * Bit-reproducibility: the operations applied to one output depend only on k (not on the tile
 * size or position), so tile, gemv and any thread count give identical bits.
 */
#include <arm_neon.h>

#include "neon.h"

/* ---- quantized weights -------------------------------------------------------------------- */

/* One 32-block of weight row wb (type wt) as signed int8 halves (elements 0..15, 16..31). */
TL_INLINE void tl_neon_wblock(const int wt, const uint8_t *wb, int8x16_t *lo, int8x16_t *hi) {
    if (wt == TL_Q8_0) {
        *lo = vld1q_s8((const int8_t *)(wb + 2));
        *hi = vld1q_s8((const int8_t *)(wb + 18));
        return;
    }
    const uint8x16_t v = vld1q_u8(wb + (wt == TL_Q4_1 ? 4 : 2));
    int8x16_t l = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f)));
    int8x16_t h = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
    if (wt == TL_Q4_0) {
        l = vsubq_s8(l, vdupq_n_s8(8));
        h = vsubq_s8(h, vdupq_n_s8(8));
    }
    *lo = l;
    *hi = h;
}

/* RM x RN outputs (RM <= 8, RN <= 4). */
TL_INLINE void tl_neon_qtile(const tl_gemm_args *a, int64_t i0, int64_t j0, const int wt, const int RM,
                             const int RN) {
    const int64_t k = a->k, nb = k / TL_QK;
    const int bb = tl_type_size(wt);
    const int NG = (RM + 3) / 4;
    const uint8_t *wr[8];
    const uint8_t *xr[4];
    const float *xd[4], *xs[4];
    float32x4_t acc[2][4];
    for (int r = 0; r < RM; r++) wr[r] = a->w + (i0 + r) * a->ldw;
    for (int c = 0; c < RN; c++) {
        xr[c] = a->act + (j0 + c) * a->ldact;
        xd[c] = tl_q8a_d(xr[c], k);
        xs[c] = tl_q8a_s(xr[c], k);
    }
    for (int g = 0; g < NG; g++)
        for (int c = 0; c < RN; c++) acc[g][c] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        int8x16_t xl[4], xh[4];
        for (int c = 0; c < RN; c++) {
            xl[c] = vld1q_s8((const int8_t *)xr[c] + b * TL_QK);
            xh[c] = vld1q_s8((const int8_t *)xr[c] + b * TL_QK + 16);
        }
        for (int g = 0; g < NG; g++) {
            /* rows 4g..4g+3 (dead rows of a short tile: zero dots, never stored) */
            int32x4_t d0[4][4], d1[4][4];
            uint16_t dh[4] = {0}, mh[4] = {0};
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < RN; c++) d0[r][c] = d1[r][c] = vdupq_n_s32(0);
            for (int r = 0; r < 4 && 4 * g + r < RM; r++) {
                const uint8_t *wb = wr[4 * g + r] + b * bb;
                int8x16_t wl, wh;
                tl_neon_wblock(wt, wb, &wl, &wh);
                dh[r] = tl_load_u16(wb);
                if (wt == TL_Q4_1) mh[r] = tl_load_u16(wb + 2);
                for (int c = 0; c < RN; c++) {
                    d0[r][c] = vdotq_s32(d0[r][c], wl, xl[c]);
                    d1[r][c] = vdotq_s32(d1[r][c], wh, xh[c]);
                }
            }
            const float32x4_t dw = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(dh)));
            const float32x4_t mw = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(mh)));
            for (int c = 0; c < RN; c++) {
                /* lane i = exact dot of row 4g+i with each 16-value half of the block */
                int32x4_t s0 = vpaddq_s32(vpaddq_s32(d0[0][c], d0[1][c]), vpaddq_s32(d0[2][c], d0[3][c]));
                int32x4_t s1 = vpaddq_s32(vpaddq_s32(d1[0][c], d1[1][c]), vpaddq_s32(d1[2][c], d1[3][c]));
                float32x4_t f = vmulq_n_f32(vcvtq_f32_s32(s0), xd[c][2 * b]);
                f = vfmaq_n_f32(f, vcvtq_f32_s32(s1), xd[c][2 * b + 1]);
                acc[g][c] = vfmaq_f32(acc[g][c], f, dw);
                if (wt == TL_Q4_1) acc[g][c] = vfmaq_n_f32(acc[g][c], mw, xs[c][2 * b] + xs[c][2 * b + 1]);
            }
        }
    }
    for (int c = 0; c < RN; c++) {
        float *yc = a->y + (j0 + c) * a->ldy + i0;
        for (int g = 0; g < NG; g++) {
            if (4 * g + 4 <= RM) {
                vst1q_f32(yc + 4 * g, acc[g][c]);
            } else {
                float t[4];
                vst1q_f32(t, acc[g][c]);
                for (int r = 4 * g; r < RM; r++) yc[r] = t[r - 4 * g];
            }
        }
    }
}

/* ---- instances: a switch over (rm, rn) of fully specialised tiles -------------------------- */
#define TL_NEON_Q4(WT, R)                                            \
    case (R - 1) * 8 + 1: tl_neon_qtile(a, i0, j0, WT, R, 1); return; \
    case (R - 1) * 8 + 2: tl_neon_qtile(a, i0, j0, WT, R, 2); return; \
    case (R - 1) * 8 + 3: tl_neon_qtile(a, i0, j0, WT, R, 3); return; \
    case (R - 1) * 8 + 4: tl_neon_qtile(a, i0, j0, WT, R, 4); return;

#define TL_NEON_QUANT_KERNEL(NAME, WT)                                                                 \
    static void NAME##_tile_4x4(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {       \
        switch ((rm - 1) * 8 + rn) {                                                                   \
            TL_NEON_Q4(WT, 1) TL_NEON_Q4(WT, 2) TL_NEON_Q4(WT, 3) TL_NEON_Q4(WT, 4)                    \
        default: break;                                                                                \
        }                                                                                              \
    }                                                                                                  \
    static void NAME##_gemv_8(const tl_gemm_args *a, int64_t i0, int64_t i1) {                         \
        const int64_t j0 = 0;                                                                          \
        int64_t i = i0;                                                                                \
        for (; i + 8 <= i1; i += 8) tl_neon_qtile(a, i, j0, WT, 8, 1);                                 \
        for (; i + 4 <= i1; i += 4) tl_neon_qtile(a, i, j0, WT, 4, 1);                                 \
        for (; i < i1; i++) tl_neon_qtile(a, i, j0, WT, 1, 1);                                         \
    }                                                                                                  \
    const tl_ukernel tl_neon_##NAME##_4x4 = {.rm = 4, .rn = 4, .tile = NAME##_tile_4x4, .gemv_rows = 8, \
                                             .gemv = NAME##_gemv_8};

TL_NEON_QUANT_KERNEL(q8_0, TL_Q8_0)
TL_NEON_QUANT_KERNEL(q4_0, TL_Q4_0)
TL_NEON_QUANT_KERNEL(q4_1, TL_Q4_1)
