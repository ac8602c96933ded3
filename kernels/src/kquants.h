/* kquants.h — q5_0 and K-quant (q4_K, q5_K, q6_K) weights: block decoding and plain-C
 * micro-kernels (portable_kquants.c, a shared source compiled into every variant).
 *
 * Activations: the shared q8 act layout of tl_internal.h (int8, one f32 scale d per 16 values,
 * s = d * sum of the 16 quants, int16 isum), the same for every quantized weight type.
 *
 * Numerics of every K-quant kernel (portable and SIMD): per super-block and token, with g the
 * 16-value activation groups (q4_K/q5_K sub-blocks of 32 = two groups sharing sc and m; q6_K
 * sub-blocks of 16 = one group), exact int32 per group, then f32:
 *     fsum = sum over g of d_x[g] * (sc_g * sum(q_w * q_x))   (q_w unsigned 0..15 / 0..31)
 *     msum = sum over g of m_g * s_x[g]
 *     y += d_w * fsum - dmin_w * msum                             (q4_K, q5_K)
 *     y += d_w * fsum with q_w - 32 signed (or the -32 offset removed exactly with isum)  (q6_K)
 * super-blocks in order. q5_0: per 32-block, exact dots of (q - 16) and each 16-value half of
 * the activation quants, y += d_w * (d_x0 * dot0 + d_x1 * dot1), as q4_0.
 */
#ifndef TL_KQUANTS_H
#define TL_KQUANTS_H

#include "tl_internal.h"
#include "ukernel.h"

/* Plain-C kernels (tile only) for TL_Q5_0, TL_Q4_K, TL_Q5_K, TL_Q6_K; NULL for other types. */
const tl_ukernel *tl_kq_portable_lookup(int wtype);

/* ---- block decoding (portable, shared by the SIMD files for their scale fields) ----------- */
/* q4_K / q5_K 12-byte scale field -> 8 scales and 8 mins (6 bits each). */
TL_INLINE void tl_kq_scales_mins(const uint8_t *s, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (uint8_t)((s[j + 8] & 15) | ((s[j] >> 6) << 4));
        mn[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
    }
}

/* ==== q5_1, iq4_nl, iq4_xs, q2_K, q3_K (portable_qx.c, avx2_qx.c, neon_qx.c) ====================
 *
 * One scheme for the five: a block (32 values, or a 256-value super-block) decodes to int8 quants
 * q in element order and, per 16-value group g, an f32 scale fs_g and offset mo_g (both exact in
 * f32: an f16 times a small integer) with weight = fs_g * q + mo_g. Per group and token, in group
 * order (so results depend only on k):
 *     y += (fs_g * d_x,g) * float(sum(q * q_x))    (exact int32 dot)
 *     y += mo_g * s_x,g                            (types with mo; s_x,g = d_x,g * sum of q_x)
 * Per type:
 *     q5_1   fs = d, q = 0..31, mo = m                       (d*q + m)
 *     iq4_nl fs = d, q = tl_iq4_values[nibble] (-127..113)   (no mo)
 *     iq4_xs fs = d*(ls - 32) per sub-block of 32, q as iq4_nl
 *     q2_K   fs = d*(sc & 15), q = 0..3, mo = -dmin*(sc >> 4)
 *     q3_K   fs = d*(ls - 32), q = q3 + 4 = 0..7 (unsigned), mo = -4*fs (the -4 offset, as a min)
 * Only the iq4 types have signed quants (SIMD kernels use the sign trick there); the others are
 * unsigned, at most 31.
 */
__attribute__((unused)) static const int8_t tl_iq4_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* Plain-C kernels for TL_Q5_1, TL_IQ4_NL, TL_IQ4_XS, TL_Q2_K, TL_Q3_K; NULL for other types. */
const tl_ukernel *tl_qx_portable_lookup(int wtype);
/* avx2_qx.c, built into avx2 (8-row ymm panels x 4 tokens) and avx512 (16-row zmm panels x 8 tokens, VNNI) */
#if defined(__AVX512F__)
extern const tl_ukernel tl_avx512_q5_1_16x8, tl_avx512_iq4_nl_16x8, tl_avx512_iq4_xs_16x8, tl_avx512_q2_k_16x8,
    tl_avx512_q3_k_16x8;
const tl_ukernel *tl_avx512_qx_lookup(int wtype); /* one of these five, or NULL */
#elif defined(__AVX2__)
extern const tl_ukernel tl_avx2_q5_1_8x4, tl_avx2_iq4_nl_8x4, tl_avx2_iq4_xs_8x4, tl_avx2_q2_k_8x4, tl_avx2_q3_k_8x4;
const tl_ukernel *tl_avx2_qx_lookup(int wtype); /* one of these five, or NULL */
#endif
/* neon_qx.c (4-row panels x 4 tokens), in the neon, sme and sme2 variants */
#if defined(__ARM_FEATURE_DOTPROD)
extern const tl_ukernel tl_neon_q5_1_4x4, tl_neon_iq4_nl_4x4, tl_neon_iq4_xs_4x4, tl_neon_q2_k_4x4, tl_neon_q3_k_4x4;
#endif

TL_INLINE int tl_qx_bytes(const int WT) {
    return WT == TL_Q5_1 ? TL_Q5_1_BYTES : WT == TL_IQ4_NL ? TL_IQ4_NL_BYTES : WT == TL_IQ4_XS ? TL_IQ4_XS_BYTES
           : WT == TL_Q2_K ? TL_Q2_K_BYTES : TL_Q3_K_BYTES;
}
TL_INLINE int tl_qx_values(const int WT) { return WT == TL_Q5_1 || WT == TL_IQ4_NL ? TL_QK : TL_QK_K; }
TL_INLINE int tl_qx_has_min(const int WT) { return WT == TL_Q5_1 || WT == TL_Q2_K || WT == TL_Q3_K; }
TL_INLINE int tl_qx_signed(const int WT) { return WT == TL_IQ4_NL || WT == TL_IQ4_XS; }

/* q3_K's 16 6-bit scales (stored + 32) from its 12-byte field, as signed ints. */
TL_INLINE int tl_q3k_scale(const uint8_t *s, int j) {
    const int lo = j < 8 ? (s[j] & 15) : (s[j - 8] >> 4);
    const int hi = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
    return (lo | (hi << 4)) - 32;
}
/* iq4_xs sub-block scale ib (0..7), signed. */
TL_INLINE int tl_iq4xs_scale(const uint8_t *blk, int ib) {
    const int lo = (blk[4 + ib / 2] >> (4 * (ib & 1))) & 15;
    const int hi = (tl_load_u16(blk + 2) >> (2 * ib)) & 3;
    return (lo | (hi << 4)) - 32;
}

/* The per-group fs and mo of one block (tl_qx_values / 16 groups); mo is left alone for types without it. */
TL_INLINE void tl_qx_scales(const int WT, const uint8_t *blk, float *fs, float *mo) {
    if (WT == TL_Q5_1) {
        fs[0] = fs[1] = tl_f16_to_f32(tl_load_u16(blk));
        mo[0] = mo[1] = tl_f16_to_f32(tl_load_u16(blk + 2));
    } else if (WT == TL_IQ4_NL) {
        fs[0] = fs[1] = tl_f16_to_f32(tl_load_u16(blk));
    } else if (WT == TL_IQ4_XS) {
        const float d = tl_f16_to_f32(tl_load_u16(blk));
        for (int ib = 0; ib < 8; ib++) fs[2 * ib] = fs[2 * ib + 1] = d * (float)tl_iq4xs_scale(blk, ib);
    } else if (WT == TL_Q2_K) {
        const float d = tl_f16_to_f32(tl_load_u16(blk + 80)), dmin = tl_f16_to_f32(tl_load_u16(blk + 82));
        for (int g = 0; g < 16; g++) {
            fs[g] = d * (float)(blk[g] & 15);
            mo[g] = -(dmin * (float)(blk[g] >> 4));
        }
    } else {
        const float d = tl_f16_to_f32(tl_load_u16(blk + 108));
        for (int g = 0; g < 16; g++) {
            fs[g] = d * (float)tl_q3k_scale(blk + 96, g);
            mo[g] = -4.0f * fs[g];
        }
    }
}

/* Quants of 32-value unit u of a block (u < tl_qx_values / 32), in element order. */
TL_INLINE void tl_qx_unit(const int WT, const uint8_t *blk, int u, int8_t q[32]) {
    if (WT == TL_Q5_1) {
        const uint32_t qh = tl_load_u32(blk + 4);
        const uint8_t *qs = blk + 8;
        for (int t = 0; t < 16; t++) {
            q[t] = (int8_t)((qs[t] & 15) | (((qh >> t) & 1) << 4));
            q[t + 16] = (int8_t)((qs[t] >> 4) | (((qh >> (t + 16)) & 1) << 4));
        }
    } else if (WT == TL_IQ4_NL || WT == TL_IQ4_XS) {
        const uint8_t *qs = WT == TL_IQ4_NL ? blk + 2 : blk + 8 + 16 * u;
        for (int t = 0; t < 16; t++) {
            q[t] = tl_iq4_values[qs[t] & 15];
            q[t + 16] = tl_iq4_values[qs[t] >> 4];
        }
    } else {
        /* element 32u + l = 128h + 32s + l: bits 2s of qs[32h + l]; q3_K: + 4 if bit u of hmask[l] */
        const uint8_t *qs = blk + (WT == TL_Q2_K ? 16 : 32) + 32 * (u >> 2);
        const int sh = 2 * (u & 3);
        for (int l = 0; l < 32; l++) {
            int v = (qs[l] >> sh) & 3;
            if (WT == TL_Q3_K) v |= ((blk[l] >> u) & 1) << 2;
            q[l] = (int8_t)v;
        }
    }
}

#endif
