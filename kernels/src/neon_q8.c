/* neon_kernels.h — ARMv8.2 NEON micro-kernels (dotprod + fp16), tinyBLAS-style register tiles.
 *
 * Included by ukernel_neon.c (the `neon` variant) and by the SME variants, which hand small
 * batches (n == 1 and n below their threshold) to this code. Everything is `static`, so each
 * including translation unit gets its own copy compiled with its own flags; the includer must
 * be compiled with at least -march=armv8.2-a+dotprod+fp16. Nothing here may run in streaming
 * mode (it is plain Advanced SIMD).
 *
 * Float weights (f32, f16, bf16) x f32 activations: both operands are k-contiguous, so the
 * vectors run along k: acc[r][c] (float32x4) gathers lane l = sum over k = l (mod 4), reduced
 * at the end with vaddvq_f32, then the k % 4 tail in scalar. f16/bf16 are widened to f32 on
 * load (vcvt_f32_f16 / shift-left-16), products and sums are f32 — never fp16 accumulation.
 * Tile 4 rows x 6 tokens: 24 accumulators + 4 weight vectors + 1 activation vector = 29 of
 * the 32 vector registers.
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
#ifndef TL_NEON_KERNELS_H
#define TL_NEON_KERNELS_H

#include <arm_neon.h>

#include "tl_internal.h"
#include "ukernel.h"

#if !defined(__ARM_FEATURE_DOTPROD) || !defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
#error "neon_kernels.h needs -march=armv8.2-a+dotprod+fp16 (or later)"
#endif

/* ---- float weights ---------------------------------------------------------------------- */

/* 4 consecutive weights (k, k+1, k+2, k+3) of type wt as f32, exactly. */
TL_INLINE float32x4_t tl_neon_ld4w(const int wt, const uint8_t *p) {
    if (wt == TL_F32) return vld1q_f32((const float *)(const void *)p);
    uint16x4_t h = vld1_u16((const uint16_t *)(const void *)p);
    if (wt == TL_F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16)); /* bf16: the top half of an f32 */
}
TL_INLINE float tl_neon_ld1w(const int wt, const uint8_t *p) {
    if (wt == TL_F32) { float f; memcpy(&f, p, 4); return f; }
    if (wt == TL_F16) return tl_f16_to_f32(tl_load_u16(p));
    return tl_bf16_to_f32(tl_load_u16(p));
}

/* RM x RN outputs (RM <= 8, RN <= 6; compile-time constants after inlining). */
TL_INLINE void tl_neon_ftile(const tl_gemm_args *a, int64_t i0, int64_t j0, const int wt, const int RM,
                             const int RN) {
    const int64_t k = a->k, k4 = k & ~(int64_t)3;
    const int es = wt == TL_F32 ? 4 : 2;
    const uint8_t *wr[8];
    const float *xr[6];
    float32x4_t acc[8][6];
    for (int r = 0; r < RM; r++) wr[r] = a->w + (i0 + r) * a->ldw;
    for (int c = 0; c < RN; c++) xr[c] = (const float *)(const void *)(a->act + (j0 + c) * a->ldact);
    for (int r = 0; r < RM; r++)
        for (int c = 0; c < RN; c++) acc[r][c] = vdupq_n_f32(0.0f);
    for (int64_t kk = 0; kk < k4; kk += 4) {
        float32x4_t wv[8];
        for (int r = 0; r < RM; r++) wv[r] = tl_neon_ld4w(wt, wr[r] + kk * es);
        for (int c = 0; c < RN; c++) {
            float32x4_t xv = vld1q_f32(xr[c] + kk);
            for (int r = 0; r < RM; r++) acc[r][c] = vfmaq_f32(acc[r][c], wv[r], xv);
        }
    }
    for (int c = 0; c < RN; c++) {
        float *yc = a->y + (j0 + c) * a->ldy + i0;
        for (int r = 0; r < RM; r++) {
            float s = vaddvq_f32(acc[r][c]);
            for (int64_t kk = k4; kk < k; kk++) s += tl_neon_ld1w(wt, wr[r] + kk * es) * xr[c][kk];
            yc[r] = s;
        }
    }
}

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
#define TL_NEON_F6(KIND, WT, R)                                       \
    case (R - 1) * 8 + 1: tl_neon_##KIND(a, i0, j0, WT, R, 1); return; \
    case (R - 1) * 8 + 2: tl_neon_##KIND(a, i0, j0, WT, R, 2); return; \
    case (R - 1) * 8 + 3: tl_neon_##KIND(a, i0, j0, WT, R, 3); return; \
    case (R - 1) * 8 + 4: tl_neon_##KIND(a, i0, j0, WT, R, 4); return; \
    case (R - 1) * 8 + 5: tl_neon_##KIND(a, i0, j0, WT, R, 5); return; \
    case (R - 1) * 8 + 6: tl_neon_##KIND(a, i0, j0, WT, R, 6); return;
#define TL_NEON_Q4(KIND, WT, R)                                       \
    case (R - 1) * 8 + 1: tl_neon_##KIND(a, i0, j0, WT, R, 1); return; \
    case (R - 1) * 8 + 2: tl_neon_##KIND(a, i0, j0, WT, R, 2); return; \
    case (R - 1) * 8 + 3: tl_neon_##KIND(a, i0, j0, WT, R, 3); return; \
    case (R - 1) * 8 + 4: tl_neon_##KIND(a, i0, j0, WT, R, 4); return;

#define TL_NEON_FLOAT_KERNEL(NAME, WT)                                                                 \
    static void tl_neon_tile_##NAME(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {   \
        switch ((rm - 1) * 8 + rn) {                                                                   \
            TL_NEON_F6(ftile, WT, 1) TL_NEON_F6(ftile, WT, 2) TL_NEON_F6(ftile, WT, 3)                 \
            TL_NEON_F6(ftile, WT, 4)                                                                   \
        default: break;                                                                                \
        }                                                                                              \
    }                                                                                                  \
    static void tl_neon_gemv_##NAME(const tl_gemm_args *a, int64_t i0, int64_t i1) {                   \
        const int64_t j0 = 0;                                                                          \
        int64_t i = i0;                                                                                \
        for (; i + 8 <= i1; i += 8) tl_neon_ftile(a, i, j0, WT, 8, 1);                                 \
        for (; i < i1; i++) tl_neon_ftile(a, i, j0, WT, 1, 1);                                         \
    }                                                                                                  \
    static const tl_ukernel tl_neon_uk_##NAME = {4, 6, tl_neon_tile_##NAME, 8, tl_neon_gemv_##NAME, \
                                                 NULL, NULL, NULL};

#define TL_NEON_QUANT_KERNEL(NAME, WT)                                                                 \
    static void tl_neon_tile_##NAME(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {   \
        switch ((rm - 1) * 8 + rn) {                                                                   \
            TL_NEON_Q4(qtile, WT, 1) TL_NEON_Q4(qtile, WT, 2) TL_NEON_Q4(qtile, WT, 3)                 \
            TL_NEON_Q4(qtile, WT, 4)                                                                   \
        default: break;                                                                                \
        }                                                                                              \
    }                                                                                                  \
    static void tl_neon_gemv_##NAME(const tl_gemm_args *a, int64_t i0, int64_t i1) {                   \
        const int64_t j0 = 0;                                                                          \
        int64_t i = i0;                                                                                \
        for (; i + 8 <= i1; i += 8) tl_neon_qtile(a, i, j0, WT, 8, 1);                                 \
        for (; i + 4 <= i1; i += 4) tl_neon_qtile(a, i, j0, WT, 4, 1);                                 \
        for (; i < i1; i++) tl_neon_qtile(a, i, j0, WT, 1, 1);                                         \
    }                                                                                                  \
    static const tl_ukernel tl_neon_uk_##NAME = {4, 4, tl_neon_tile_##NAME, 8, tl_neon_gemv_##NAME, \
                                                 NULL, NULL, NULL};

TL_NEON_FLOAT_KERNEL(f32, TL_F32)
TL_NEON_FLOAT_KERNEL(f16, TL_F16)
TL_NEON_FLOAT_KERNEL(bf16, TL_BF16)
TL_NEON_QUANT_KERNEL(q8_0, TL_Q8_0)
TL_NEON_QUANT_KERNEL(q4_0, TL_Q4_0)
TL_NEON_QUANT_KERNEL(q4_1, TL_Q4_1)

#include "kquants_neon.h" /* q5_0, q4_K, q5_K, q6_K */

/* The NEON kernel for a weight type, NULL if none. */
static inline const tl_ukernel *tl_neon_lookup(int wtype) {
    switch (wtype) {
    case TL_F32: return &tl_neon_uk_f32;
    case TL_F16: return &tl_neon_uk_f16;
    case TL_BF16: return &tl_neon_uk_bf16;
    case TL_Q8_0: return &tl_neon_uk_q8_0;
    case TL_Q4_0: return &tl_neon_uk_q4_0;
    case TL_Q4_1: return &tl_neon_uk_q4_1;
    default: return tl_kq_neon_lookup(wtype);
    }
}

#endif
