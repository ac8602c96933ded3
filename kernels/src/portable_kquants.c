/* portable_kquants.c — plain-C micro-kernels for q5_0, q4_K, q5_K and q6_K weights (see kquants.h
 * for the numerics; activations in the shared q8 act layout of tl_internal.h, one scale per 16). No
 * intrinsics: weights are decoded per block into small int8 arrays, then fixed-width integer dots
 * the compiler vectorises. Compiled into every variant (shared source): the portable variant's
 * table hands these types here, the SIMD K-quant kernels (<isa>_kquants.c) fall back to them when
 * their scratch cannot be had.
 */
#include "kquants.h"
#include "portable.h"

/* ---- weight decoding --------------------------------------------------------------------------- */
/* q5_0 block -> 32 signed values q - 16 and d. */
TL_INLINE void kq_unpack_q5_0(const uint8_t *blk, int8_t *q, float *d) {
    *d = tl_f16_to_f32(tl_load_u16(blk));
    uint32_t qh;
    memcpy(&qh, blk + 2, 4);
    const uint8_t *qs = blk + 6;
    for (int t = 0; t < 16; t++) {
        q[t] = (int8_t)(((qs[t] & 15) | (((qh >> t) & 1) << 4)) - 16);
        q[t + 16] = (int8_t)(((qs[t] >> 4) | (((qh >> (t + 16)) & 1) << 4)) - 16);
    }
}

/* A decoded K-quant super-block: values in natural order, one scale and min per run of 16. */
typedef struct {
    int8_t q[TL_QK_K];
    int16_t sc[16], mn[16];
    float d, dmin;
} kq_sb;

/* q4_K (WT = TL_Q4_K) or q5_K: q unsigned 0..15 / 0..31, sc/mn of sub-block j on runs 2j, 2j+1. */
TL_INLINE void kq_unpack_q45k(const int WT, const uint8_t *blk, kq_sb *o) {
    o->d = tl_f16_to_f32(tl_load_u16(blk));
    o->dmin = tl_f16_to_f32(tl_load_u16(blk + 2));
    uint8_t sc[8], mn[8];
    tl_kq_scales_mins(blk + 4, sc, mn);
    for (int j = 0; j < 8; j++) {
        o->sc[2 * j] = o->sc[2 * j + 1] = sc[j];
        o->mn[2 * j] = o->mn[2 * j + 1] = mn[j];
    }
    const uint8_t *qh = blk + 16;
    const uint8_t *qs = blk + (WT == TL_Q4_K ? 16 : 48);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            int lo = qs[32 * c + l] & 15, hi = qs[32 * c + l] >> 4;
            if (WT == TL_Q5_K) {
                lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
            }
            o->q[64 * c + l] = (int8_t)lo;
            o->q[64 * c + 32 + l] = (int8_t)hi;
        }
}

/* q6_K: q - 32 signed (so no offset term), scales int8 per run of 16. */
TL_INLINE void kq_unpack_q6k(const uint8_t *blk, kq_sb *o) {
    const uint8_t *ql = blk, *qh = blk + 128;
    const int8_t *sc = (const int8_t *)(blk + 192);
    o->d = tl_f16_to_f32(tl_load_u16(blk + 208));
    o->dmin = 0.0f;
    for (int r = 0; r < 16; r++) {
        o->sc[r] = sc[r];
        o->mn[r] = 0;
    }
    for (int h = 0; h < 2; h++) {
        const uint8_t *l8 = ql + 64 * h, *h8 = qh + 32 * h;
        int8_t *q = o->q + 128 * h;
        for (int l = 0; l < 32; l++) {
            q[l] = (int8_t)(((l8[l] & 15) | ((h8[l] & 3) << 4)) - 32);
            q[l + 32] = (int8_t)(((l8[l + 32] & 15) | (((h8[l] >> 2) & 3) << 4)) - 32);
            q[l + 64] = (int8_t)(((l8[l] >> 4) | (((h8[l] >> 4) & 3) << 4)) - 32);
            q[l + 96] = (int8_t)(((l8[l + 32] >> 4) | (((h8[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

/* ---- kernels ----------------------------------------------------------------------------------- */
#define KQ_MAXT 4

TL_INLINE int32_t kq_dot16(const int8_t *TL_RESTRICT a, const int8_t *TL_RESTRICT b) {
    int32_t s = 0;
    for (int t = 0; t < 16; t++) s += (int32_t)a[t] * (int32_t)b[t];
    return s;
}

TL_INLINE void q5_0_tile_impl(const tl_gemm_args *a, int64_t i0, int64_t j0, const int RM, const int RN) {
    const int64_t k = a->k, nb = k / TL_QK;
    const uint8_t *w[KQ_MAXT], *xr[KQ_MAXT];
    float acc[KQ_MAXT][KQ_MAXT] = {{0}};
    for (int i = 0; i < RM; i++) w[i] = a->w + (i0 + i) * a->ldw;
    for (int j = 0; j < RN; j++) xr[j] = a->act + (j0 + j) * a->ldact;
    for (int64_t b = 0; b < nb; b++) {
        int8_t wq[KQ_MAXT][TL_QK];
        float dw[KQ_MAXT];
        for (int i = 0; i < RM; i++) kq_unpack_q5_0(w[i] + b * TL_Q5_0_BYTES, wq[i], &dw[i]);
        for (int j = 0; j < RN; j++) {
            const int8_t *xq = tl_q8a_qs(xr[j]) + b * TL_QK;
            const float dx0 = tl_q8a_d(xr[j], k)[2 * b], dx1 = tl_q8a_d(xr[j], k)[2 * b + 1];
            for (int i = 0; i < RM; i++)
                acc[i][j] += dw[i] * (dx0 * (float)kq_dot16(wq[i], xq) + dx1 * (float)kq_dot16(wq[i] + 16, xq + 16));
        }
    }
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) a->y[(j0 + j) * a->ldy + i0 + i] = acc[i][j];
}

/* WT: TL_Q4_K, TL_Q5_K or TL_Q6_K (constant after inlining). */
TL_INLINE void kq_tile_impl(const tl_gemm_args *a, int64_t i0, int64_t j0, const int RM, const int RN, const int WT) {
    const int bytes = WT == TL_Q4_K ? TL_Q4_K_BYTES : WT == TL_Q5_K ? TL_Q5_K_BYTES : TL_Q6_K_BYTES;
    const int64_t k = a->k, nb = k / TL_QK_K;
    const uint8_t *w[KQ_MAXT], *xr[KQ_MAXT];
    float acc[KQ_MAXT][KQ_MAXT] = {{0}};
    for (int i = 0; i < RM; i++) w[i] = a->w + (i0 + i) * a->ldw;
    for (int j = 0; j < RN; j++) xr[j] = a->act + (j0 + j) * a->ldact;
    for (int64_t b = 0; b < nb; b++) {
        kq_sb sb[KQ_MAXT];
        for (int i = 0; i < RM; i++) {
            const uint8_t *blk = w[i] + b * bytes;
            if (WT == TL_Q6_K) kq_unpack_q6k(blk, &sb[i]);
            else kq_unpack_q45k(WT, blk, &sb[i]);
        }
        for (int j = 0; j < RN; j++) {
            const int8_t *xq = tl_q8a_qs(xr[j]) + b * TL_QK_K;
            const float *dx = tl_q8a_d(xr[j], k) + 16 * b, *sx = tl_q8a_s(xr[j], k) + 16 * b;
            for (int i = 0; i < RM; i++) {
                float fsum = 0.0f, msum = 0.0f;
                for (int r = 0; r < 16; r++)
                    fsum += dx[r] * (float)(sb[i].sc[r] * kq_dot16(sb[i].q + 16 * r, xq + 16 * r));
                if (WT != TL_Q6_K) {
                    for (int r = 0; r < 16; r++) msum += (float)sb[i].mn[r] * sx[r];
                    acc[i][j] += sb[i].d * fsum - sb[i].dmin * msum;
                } else {
                    acc[i][j] += sb[i].d * fsum;
                }
            }
        }
    }
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) a->y[(j0 + j) * a->ldy + i0 + i] = acc[i][j];
}
#define q4_k_tile_impl(a, i0, j0, RM, RN) kq_tile_impl(a, i0, j0, RM, RN, TL_Q4_K)
#define q5_k_tile_impl(a, i0, j0, RM, RN) kq_tile_impl(a, i0, j0, RM, RN, TL_Q5_K)
#define q6_k_tile_impl(a, i0, j0, RM, RN) kq_tile_impl(a, i0, j0, RM, RN, TL_Q6_K)

#define TILE_4X4(name)                                                                             \
    static void name##_tile_4x4(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {  \
        TL_DISPATCH(name##_tile_impl, a, i0, j0, rm, rn)                                          \
    }
TILE_4X4(q5_0)
TILE_4X4(q4_k)
TILE_4X4(q5_k)
TILE_4X4(q6_k)

static const tl_ukernel uk_q5_0 = {.rm = 4, .rn = 4, .tile = q5_0_tile_4x4};
static const tl_ukernel uk_q4_k = {.rm = 4, .rn = 4, .tile = q4_k_tile_4x4};
static const tl_ukernel uk_q5_k = {.rm = 4, .rn = 4, .tile = q5_k_tile_4x4};
static const tl_ukernel uk_q6_k = {.rm = 4, .rn = 4, .tile = q6_k_tile_4x4};

const tl_ukernel *tl_kq_portable_lookup(int wtype) {
    switch (wtype) {
    case TL_Q5_0: return &uk_q5_0;
    case TL_Q4_K: return &uk_q4_k;
    case TL_Q5_K: return &uk_q5_k;
    case TL_Q6_K: return &uk_q6_k;
    default: return NULL;
    }
}
