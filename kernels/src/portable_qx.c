/* portable_qx.c — plain-C micro-kernels for q5_1, iq4_nl, iq4_xs, q2_K and q3_K weights (the scheme
 * and numerics are in kquants.h: per block, int8 quants with an f32 scale and offset per 16-value
 * group; activations in the shared q8 act layout of tl_internal.h). No intrinsics: each block of RM
 * rows is decoded into small arrays, then fixed-width integer dots the compiler vectorises. Compiled
 * into every variant (shared source): the portable variant's table hands these types here, and the
 * SIMD kernels fall back to them when their scratch cannot be had.
 */
#include "kquants.h"
#include "portable.h"

#define QX_MAXT 4

TL_INLINE int32_t qx_dot16(const int8_t *TL_RESTRICT a, const int8_t *TL_RESTRICT b) {
    int32_t s = 0;
    for (int t = 0; t < 16; t++) s += (int32_t)a[t] * (int32_t)b[t];
    return s;
}

/* WT constant after inlining; RM x RN tile over the whole k. */
TL_INLINE void qx_tile_impl(const tl_gemm_args *a, int64_t i0, int64_t j0, const int RM, const int RN, const int WT) {
    const int bytes = tl_qx_bytes(WT), nv = tl_qx_values(WT), ng = nv / 16, mn = tl_qx_has_min(WT);
    const int64_t k = a->k, nb = k / nv;
    const uint8_t *w[QX_MAXT], *xr[QX_MAXT];
    float acc[QX_MAXT][QX_MAXT] = {{0}};
    for (int i = 0; i < RM; i++) w[i] = a->w + (i0 + i) * a->ldw;
    for (int j = 0; j < RN; j++) xr[j] = a->act + (j0 + j) * a->ldact;
    for (int64_t b = 0; b < nb; b++) {
        int8_t q[QX_MAXT][TL_QK_K];
        float fs[QX_MAXT][16], mo[QX_MAXT][16];
        for (int i = 0; i < RM; i++) {
            const uint8_t *blk = w[i] + b * bytes;
            tl_qx_scales(WT, blk, fs[i], mo[i]);
            for (int u = 0; u < nv / 32; u++) tl_qx_unit(WT, blk, u, q[i] + 32 * u);
        }
        for (int j = 0; j < RN; j++) {
            const int8_t *xq = tl_q8a_qs(xr[j]) + b * nv;
            const float *dx = tl_q8a_d(xr[j], k) + b * ng, *sx = tl_q8a_s(xr[j], k) + b * ng;
            for (int i = 0; i < RM; i++) {
                float y = acc[i][j];
                for (int g = 0; g < ng; g++) {
                    y += (fs[i][g] * dx[g]) * (float)qx_dot16(q[i] + 16 * g, xq + 16 * g);
                    if (mn) y += mo[i][g] * sx[g];
                }
                acc[i][j] = y;
            }
        }
    }
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) a->y[(j0 + j) * a->ldy + i0 + i] = acc[i][j];
}

#define QX_TILE(name, WT)                                                                              \
    TL_INLINE void name##_impl(const tl_gemm_args *a, int64_t i0, int64_t j0, const int RM, const int RN) { \
        qx_tile_impl(a, i0, j0, RM, RN, WT);                                                           \
    }                                                                                                  \
    static void name##_tile_4x4(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {       \
        TL_DISPATCH(name##_impl, a, i0, j0, rm, rn)                                                    \
    }                                                                                                  \
    static const tl_ukernel uk_##name = {.rm = 4, .rn = 4, .tile = name##_tile_4x4};
QX_TILE(q5_1, TL_Q5_1)
QX_TILE(iq4_nl, TL_IQ4_NL)
QX_TILE(iq4_xs, TL_IQ4_XS)
QX_TILE(q2_k, TL_Q2_K)
QX_TILE(q3_k, TL_Q3_K)

const tl_ukernel *tl_qx_portable_lookup(int wtype) {
    switch (wtype) {
    case TL_Q5_1: return &uk_q5_1;
    case TL_IQ4_NL: return &uk_iq4_nl;
    case TL_IQ4_XS: return &uk_iq4_xs;
    case TL_Q2_K: return &uk_q2_k;
    case TL_Q3_K: return &uk_q3_k;
    default: return NULL;
    }
}
