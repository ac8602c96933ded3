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

#endif
