/* neon_float.c — ARMv8.2 NEON micro-kernels for float weights (f32, f16, bf16), tinyBLAS-style
 * register tiles. Plain Advanced SIMD: never run in streaming mode (the SME variants call these for
 * small batches from non-streaming code).
 *
 * Float weights (f32, f16, bf16) x f32 activations: both operands are k-contiguous, so the
 * vectors run along k: acc[r][c] (float32x4) gathers lane l = sum over k = l (mod 4), reduced
 * at the end with vaddvq_f32, then the k % 4 tail in scalar. f16/bf16 are widened to f32 on
 * load (vcvt_f32_f16 / shift-left-16), products and sums are f32 — never fp16 accumulation.
 * Tile 4 rows x 6 tokens: 24 accumulators + 4 weight vectors + 1 activation vector = 29 of
 * the 32 vector registers.
 *
 * Bit-reproducibility: the operations applied to one output depend only on k (not on the tile
 * size or position), so tile, gemv and any thread count give identical bits.
 */
#include <arm_neon.h>

#include "neon.h"

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

/* ---- instances: a switch over (rm, rn) of fully specialised tiles -------------------------- */
#define TL_NEON_F6(WT, R)                                            \
    case (R - 1) * 8 + 1: tl_neon_ftile(a, i0, j0, WT, R, 1); return; \
    case (R - 1) * 8 + 2: tl_neon_ftile(a, i0, j0, WT, R, 2); return; \
    case (R - 1) * 8 + 3: tl_neon_ftile(a, i0, j0, WT, R, 3); return; \
    case (R - 1) * 8 + 4: tl_neon_ftile(a, i0, j0, WT, R, 4); return; \
    case (R - 1) * 8 + 5: tl_neon_ftile(a, i0, j0, WT, R, 5); return; \
    case (R - 1) * 8 + 6: tl_neon_ftile(a, i0, j0, WT, R, 6); return;

#define TL_NEON_FLOAT_KERNEL(NAME, WT)                                                                 \
    static void NAME##_tile_4x6(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {       \
        switch ((rm - 1) * 8 + rn) {                                                                   \
            TL_NEON_F6(WT, 1) TL_NEON_F6(WT, 2) TL_NEON_F6(WT, 3) TL_NEON_F6(WT, 4)                    \
        default: break;                                                                                \
        }                                                                                              \
    }                                                                                                  \
    static void NAME##_gemv_8(const tl_gemm_args *a, int64_t i0, int64_t i1) {                         \
        const int64_t j0 = 0;                                                                          \
        int64_t i = i0;                                                                                \
        for (; i + 8 <= i1; i += 8) tl_neon_ftile(a, i, j0, WT, 8, 1);                                 \
        for (; i < i1; i++) tl_neon_ftile(a, i, j0, WT, 1, 1);                                         \
    }                                                                                                  \
    const tl_ukernel tl_neon_##NAME##_4x6 = {.rm = 4, .rn = 6, .tile = NAME##_tile_4x6, .gemv_rows = 8, \
                                             .gemv = NAME##_gemv_8};

TL_NEON_FLOAT_KERNEL(f32, TL_F32)
TL_NEON_FLOAT_KERNEL(f16, TL_F16)
TL_NEON_FLOAT_KERNEL(bf16, TL_BF16)
