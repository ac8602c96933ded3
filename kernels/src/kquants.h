/* kquants.h — q5_0 and K-quant (q4_K, q5_K, q6_K) weights: block decoding, the q8_K activation
 * layout, and plain-C micro-kernels (kquants.c, a shared source compiled into every variant).
 *
 * Activation partners (as llama.cpp's vec_dot_type): q5_0 -> the q8 layouts of q8_0/q4_0
 * (32-blocks, f32 scale); q4_K / q5_K / q6_K -> TL_Q8_K (tl_internal.h: 256-value super-blocks,
 * f32 scale, int16 sums per 16 quants so the -dmin*m (q4_K/q5_K) and -32 (q6_K) offsets cost one
 * multiply-add per run of 16 instead of touching every value).
 *
 * Numerics of every K-quant kernel (portable and SIMD): per super-block and token, exact int32
 *     isum = sum over runs r of sc_r * sum(q_w * q_x)      (q_w unsigned 0..15 / 0..31 / 0..63)
 *     msum = sum over runs r of m_r * bsum_r               (q6_K: m_r = 32 * sc_r)
 * then y += (d_w*d_x) * isum - (dmin_w*d_x) * msum in f32, super-blocks in order (q6_K folds
 * msum into isum in int32 and has no second term). q5_0: per 32-block exact dot of (q - 16) and
 * the activation quants, y += (d_w*d_x) * dot, as q4_0.
 */
#ifndef TL_KQUANTS_H
#define TL_KQUANTS_H

#include "tl_internal.h"
#include "ukernel.h"

/* One row of k floats (k a multiple of 256) -> the TL_Q8_K act layout (ldact bytes, zero pad). */
void tl_q8k_quant_row(const float *x, int64_t k, uint8_t *row, int64_t ldact);

/* Plain-C kernels (tile only) for TL_Q5_0, TL_Q4_K, TL_Q5_K, TL_Q6_K; NULL for other types.
 * q5_0 uses the shared q8 act layout of tl_internal.h (not x86_common.h's). */
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

#endif
