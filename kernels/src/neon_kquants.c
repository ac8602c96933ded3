/* neon_kquants.c — ARMv8.2 NEON (dotprod + fp16) kernels for q5_0, q4_K, q5_K and q6_K weights.
 * Compiled into the neon variant and into sme / sme2 (whose tables do not list these types: the
 * backend's fallback chain sends them to the neon library); plain Advanced SIMD, never run in
 * streaming mode.
 *
 * Rows in lanes: 4 weight rows are decoded together into int8 vectors whose 32-bit lane l holds
 * 4 consecutive quants of row l (a 4x4 transpose of 32-bit words of the raw bytes, done before
 * the nibble / high-bit decoding, so one transpose serves both nibbles of a byte). A 16-value
 * group is then 4 vectors w[q] (lane l = row l's values 4q..4q+3), and the by-element sdot
 * `vdotq_laneq_s32(acc, w[q], x, q)` adds row l's dot with activation bytes 4q..4q+3 to lane l:
 * four of them give the 4 rows' exact int32 group dots in one int32x4, with no horizontal
 * reductions. Quants are made signed where they carry an offset (q5_0: q - 16, q6_K: q - 32;
 * q4_K / q5_K stay 0..15 / 0..31), so every group dot is the exact int32 of kquants.h.
 *
 * Activations: the shared q8 layout (tl_internal.h; int8, one f32 scale d_x and s_x = d_x * sum
 * per 16 values). Per token, f32 (rows in lanes, per-row scales as float32x4):
 *   q5_0, per 32-block:   y += d_w * (d_x0 * dot0 + d_x1 * dot1)                (as q4_0)
 *   q4_K / q5_K, per super-block: y -= dmin_w * sum_j m_j * (s_x,2j + s_x,2j+1); then
 *       f = sum over sub-blocks j of sc_j * (d_x,2j * dot_2j + d_x,2j+1 * dot_2j+1); y += d_w * f
 *   q6_K, per super-block: f = sum over groups g of sc_g * (d_x,g * dot_g); y += d_w * f
 * groups / sub-blocks / super-blocks in order. The operations on one output depend only on k,
 * so tile, gemv, token-tile width and thread count all give the same bits.
 *
 * Prompt path (block): each 4-row panel (all of k) is decoded once into
 * thread-local scratch (kq_ksb / kq_q50 records) when the block has more tokens than one
 * register tile; token tiles of up to KQ_RN tokens then read it from L1/L2 (two f32
 * accumulators per token: y, and f inside a super-block). With one tile's worth of tokens (and for n == 1,
 * gemv) each super-block / block is decoded on the fly into a stack record and used at once.
 */
#include <arm_neon.h>

#include "kquants.h"
#include "neon.h"
#include "threadpool.h"

#define KQ_R 4  /* rows per panel: one per 32-bit lane */
#define KQ_RN 6 /* tokens per register tile: 12 f32 accumulators + 8 weight vectors (8 tokens spill) */

/* A decoded K-quant super-block of 4 rows. */
typedef struct {
    int8x16_t w[16][4];  /* group g, w[g][q] lane l = row l's quants 16g + 4q .. 16g + 4q + 3 */
    float32x4_t sc[16];  /* scale per run: q4_K / q5_K sub-block j (groups 2j, 2j+1); q6_K group g */
    float32x4_t mn[8];   /* q4_K / q5_K mins per sub-block */
    float32x4_t d, dm;   /* super-block scale, min scale */
} kq_ksb;

/* A decoded q5_0 block of 4 rows: w[h] = the 16-value half h (signed q - 16). */
typedef struct {
    int8x16_t w[2][4];
    float32x4_t d;
} kq_q50;

/* ---- decoding ---------------------------------------------------------------------------------- */
/* The 16 bytes at rp[l] + off of 4 rows, transposed: T[q] lane l = row l's bytes 4q..4q+3. */
TL_INLINE void kq_ld4t(const uint8_t *const *rp, int64_t off, uint8x16_t T[4]) {
    const uint32x4_t r0 = vreinterpretq_u32_u8(vld1q_u8(rp[0] + off)), r1 = vreinterpretq_u32_u8(vld1q_u8(rp[1] + off));
    const uint32x4_t r2 = vreinterpretq_u32_u8(vld1q_u8(rp[2] + off)), r3 = vreinterpretq_u32_u8(vld1q_u8(rp[3] + off));
    const uint64x2_t a = vreinterpretq_u64_u32(vtrn1q_u32(r0, r1)), b = vreinterpretq_u64_u32(vtrn2q_u32(r0, r1));
    const uint64x2_t c = vreinterpretq_u64_u32(vtrn1q_u32(r2, r3)), d = vreinterpretq_u64_u32(vtrn2q_u32(r2, r3));
    T[0] = vreinterpretq_u8_u64(vtrn1q_u64(a, c));
    T[1] = vreinterpretq_u8_u64(vtrn1q_u64(b, d));
    T[2] = vreinterpretq_u8_u64(vtrn2q_u64(a, c));
    T[3] = vreinterpretq_u8_u64(vtrn2q_u64(b, d));
}

/* 4 f16 fields at rp[l] + off -> f32 lanes. */
TL_INLINE float32x4_t kq_f16x4(const uint8_t *const *rp, int64_t off) {
    uint16_t h[4];
    for (int l = 0; l < 4; l++) h[l] = tl_load_u16(rp[l] + off);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}

/* q5_0 block b of 4 rows. Bit t of qh is bit 4 of value t: the qh byte holding bits 4q..4q+3
 * (values 16h + 4q..) is copied to the 4 bytes of each lane by a table lookup, tested against
 * that nibble's bit masks, and the value made q - 16 = nibble - (bit clear ? 16 : 0). */
TL_INLINE void kq_dec_q50(const uint8_t *const *rp, int64_t b, kq_q50 *o) {
    const int64_t off = b * TL_Q5_0_BYTES;
    uint32_t qh[4];
    for (int l = 0; l < 4; l++) memcpy(&qh[l], rp[l] + off + 2, 4);
    const uint8x16_t qhv = vreinterpretq_u8_u32(vld1q_u32(qh));
    uint8x16_t T[4];
    kq_ld4t(rp, off + 6, T);
    static const uint8_t lane_byte[16] = {0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12};
    static const uint8_t bits_lo[16] = {1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8};
    const uint8x16_t idx = vld1q_u8(lane_byte), mlo = vld1q_u8(bits_lo), mhi = vshlq_n_u8(mlo, 4);
    const uint8x16_t m4 = vdupq_n_u8(0x0f), m16 = vdupq_n_u8(0xf0);
    for (int h = 0; h < 2; h++)
        for (int q = 0; q < 4; q++) {
            const uint8x16_t nib = h ? vshrq_n_u8(T[q], 4) : vandq_u8(T[q], m4);
            const int bit = 16 * h + 4 * q; /* first value's qh bit */
            const uint8x16_t hb = vqtbl1q_u8(qhv, vaddq_u8(idx, vdupq_n_u8((uint8_t)(bit / 8))));
            const uint8x16_t set = vtstq_u8(hb, (bit % 8) ? mhi : mlo);
            o->w[h][q] = vreinterpretq_s8_u8(vaddq_u8(nib, vbicq_u8(m16, set)));
        }
    o->d = kq_f16x4(rp, off);
}

/* K-quant super-block b of 4 rows (WT constant after inlining). */
TL_INLINE void kq_dec_k(const int WT, const uint8_t *const *rp, int64_t b, kq_ksb *o) {
    const int64_t off = b * (WT == TL_Q4_K ? TL_Q4_K_BYTES : WT == TL_Q5_K ? TL_Q5_K_BYTES : TL_Q6_K_BYTES);
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    if (WT == TL_Q6_K) {
        /* int8 scales: S[q] lane l = row l's scales 4q..4q+3; scale 4q+p sign-extended from byte p */
        uint8x16_t S[4];
        kq_ld4t(rp, off + 192, S);
        for (int g = 0; g < 16; g++) {
            const int32x4_t s = vshlq_s32(vreinterpretq_s32_u8(S[g / 4]), vdupq_n_s32(24 - 8 * (g % 4)));
            o->sc[g] = vcvtq_f32_s32(vshrq_n_s32(s, 24));
        }
        o->d = kq_f16x4(rp, off + 208);
        o->dm = vdupq_n_f32(0.0f);
        /* half hh, 16-value chunk u: ql bytes feed groups 8hh+u (low nibble of L0), +2 (low of
         * L1), +4 (high of L0), +6 (high of L1); qh bits 0-1, 2-3, 4-5, 6-7 give bits 4-5 */
        const uint8x16_t m30 = vdupq_n_u8(0x30);
        const int8x16_t c32 = vdupq_n_s8(32);
        for (int hh = 0; hh < 2; hh++)
            for (int u = 0; u < 2; u++) {
                uint8x16_t L0[4], L1[4], H[4];
                kq_ld4t(rp, off + 64 * hh + 16 * u, L0);
                kq_ld4t(rp, off + 64 * hh + 32 + 16 * u, L1);
                kq_ld4t(rp, off + 128 + 32 * hh + 16 * u, H);
                const int g = 8 * hh + u;
                for (int q = 0; q < 4; q++) {
                    const uint8x16_t v0 = vorrq_u8(vandq_u8(L0[q], m4), vandq_u8(vshlq_n_u8(H[q], 4), m30));
                    const uint8x16_t v1 = vorrq_u8(vandq_u8(L1[q], m4), vandq_u8(vshlq_n_u8(H[q], 2), m30));
                    const uint8x16_t v2 = vorrq_u8(vshrq_n_u8(L0[q], 4), vandq_u8(H[q], m30));
                    const uint8x16_t v3 = vorrq_u8(vshrq_n_u8(L1[q], 4), vandq_u8(vshrq_n_u8(H[q], 2), m30));
                    o->w[g][q] = vsubq_s8(vreinterpretq_s8_u8(v0), c32);
                    o->w[g + 2][q] = vsubq_s8(vreinterpretq_s8_u8(v1), c32);
                    o->w[g + 4][q] = vsubq_s8(vreinterpretq_s8_u8(v2), c32);
                    o->w[g + 6][q] = vsubq_s8(vreinterpretq_s8_u8(v3), c32);
                }
            }
        return;
    }
    /* q4_K / q5_K head: S[0] lane l = d | dmin << 16, S[1..3] = the 12 scale bytes (6-bit
     * scales and mins, tl_kq_scales_mins done in lanes) */
    uint8x16_t Sb[4];
    kq_ld4t(rp, off, Sb);
    const uint32x4_t S0 = vreinterpretq_u32_u8(Sb[0]), S1 = vreinterpretq_u32_u8(Sb[1]),
                     S2 = vreinterpretq_u32_u8(Sb[2]), S3 = vreinterpretq_u32_u8(Sb[3]);
    o->d = vcvt_f32_f16(vreinterpret_f16_u16(vmovn_u32(S0)));
    o->dm = vcvt_f32_f16(vreinterpret_f16_u16(vshrn_n_u32(S0, 16)));
    const uint32x4_t b6 = vdupq_n_u32(63), b4 = vdupq_n_u32(15), b2 = vdupq_n_u32(3);
    for (int j = 0; j < 4; j++) {
        const int32x4_t sh = vdupq_n_s32(-8 * j);
        const uint32x4_t s0 = vshlq_u32(S1, sh), s1 = vshlq_u32(S2, sh), s2 = vshlq_u32(S3, sh);
        o->sc[j] = vcvtq_f32_u32(vandq_u32(s0, b6));
        o->mn[j] = vcvtq_f32_u32(vandq_u32(s1, b6));
        o->sc[j + 4] = vcvtq_f32_u32(vorrq_u32(vandq_u32(s2, b4), vshlq_n_u32(vandq_u32(vshrq_n_u32(s0, 6), b2), 4)));
        o->mn[j + 4] = vcvtq_f32_u32(vorrq_u32(vandq_u32(vshrq_n_u32(s2, 4), b4), vshlq_n_u32(vandq_u32(vshrq_n_u32(s1, 6), b2), 4)));
    }
    for (int j = 8; j < 16; j++) o->sc[j] = vdupq_n_f32(0.0f); /* unused by q4_K / q5_K */
    /* chunk c of 64 values reads qs[32c .. 32c+31]: low nibbles = groups 4c, 4c+1 (sub-block 2c),
     * high = 4c+2, 4c+3; q5_K: bit 2c (low) / 2c+1 (high) of qh[l] is bit 4 */
    const int64_t qo = off + (WT == TL_Q4_K ? 16 : 48);
    uint8x16_t QH[2][4];
    if (WT == TL_Q5_K) {
        kq_ld4t(rp, off + 16, QH[0]);
        kq_ld4t(rp, off + 32, QH[1]);
    }
    const uint8x16_t m10 = vdupq_n_u8(0x10);
    for (int c = 0; c < 4; c++)
        for (int h = 0; h < 2; h++) {
            uint8x16_t U[4];
            kq_ld4t(rp, qo + 32 * c + 16 * h, U);
            for (int q = 0; q < 4; q++) {
                uint8x16_t lo = vandq_u8(U[q], m4), hi = vshrq_n_u8(U[q], 4);
                if (WT == TL_Q5_K) {
                    lo = vorrq_u8(lo, vandq_u8(vtstq_u8(QH[h][q], vdupq_n_u8((uint8_t)(1u << (2 * c)))), m10));
                    hi = vorrq_u8(hi, vandq_u8(vtstq_u8(QH[h][q], vdupq_n_u8((uint8_t)(2u << (2 * c)))), m10));
                }
                o->w[4 * c + h][q] = vreinterpretq_s8_u8(lo);
                o->w[4 * c + 2 + h][q] = vreinterpretq_s8_u8(hi);
            }
        }
}

/* ---- arithmetic -------------------------------------------------------------------------------- */
/* acc + the 4 rows' exact dots of one 16-value group with the activation quants x. */
TL_INLINE int32x4_t kq_dot16(int32x4_t acc, const int8x16_t w[4], const int8x16_t x) {
    acc = vdotq_laneq_s32(acc, w[0], x, 0);
    acc = vdotq_laneq_s32(acc, w[1], x, 1);
    acc = vdotq_laneq_s32(acc, w[2], x, 2);
    return vdotq_laneq_s32(acc, w[3], x, 3);
}

/* One K-quant super-block P against RN tokens: xq / dx / sx at the super-block's start. */
TL_INLINE void kq_k_sb(const int WT, const int RN, const kq_ksb *P, const int8_t *const *xq,
                        const float *const *dx, const float *const *sx, float32x4_t *y) {
    float32x4_t f[KQ_RN];
    if (WT != TL_Q6_K)
        for (int j = 0; j < RN; j++) {
            float32x4_t ms = vmulq_n_f32(P->mn[0], sx[j][0] + sx[j][1]);
            for (int s = 1; s < 8; s++) ms = vfmaq_n_f32(ms, P->mn[s], sx[j][2 * s] + sx[j][2 * s + 1]);
            y[j] = vfmsq_f32(y[j], ms, P->dm);
        }
    for (int j = 0; j < RN; j++) f[j] = vdupq_n_f32(0.0f);
    if (WT == TL_Q6_K) {
        for (int g = 0; g < 16; g++)
            for (int j = 0; j < RN; j++) {
                const int32x4_t d0 = kq_dot16(vdupq_n_s32(0), P->w[g], vld1q_s8(xq[j] + 16 * g));
                f[j] = vfmaq_f32(f[j], vmulq_n_f32(vcvtq_f32_s32(d0), dx[j][g]), P->sc[g]);
            }
    } else {
        for (int s = 0; s < 8; s++)
            for (int j = 0; j < RN; j++) {
                const int32x4_t d0 = kq_dot16(vdupq_n_s32(0), P->w[2 * s], vld1q_s8(xq[j] + 32 * s));
                const int32x4_t d1 = kq_dot16(vdupq_n_s32(0), P->w[2 * s + 1], vld1q_s8(xq[j] + 32 * s + 16));
                float32x4_t g = vmulq_n_f32(vcvtq_f32_s32(d0), dx[j][2 * s]);
                g = vfmaq_n_f32(g, vcvtq_f32_s32(d1), dx[j][2 * s + 1]);
                f[j] = vfmaq_f32(f[j], g, P->sc[s]);
            }
    }
    for (int j = 0; j < RN; j++) y[j] = vfmaq_f32(y[j], f[j], P->d);
}

/* One q5_0 block P against RN tokens: xq / dx at the block's start. */
TL_INLINE void kq_q50_blk(const int RN, const kq_q50 *P, const int8_t *const *xq, const float *const *dx,
                           float32x4_t *y) {
    for (int j = 0; j < RN; j++) {
        const int32x4_t d0 = kq_dot16(vdupq_n_s32(0), P->w[0], vld1q_s8(xq[j]));
        const int32x4_t d1 = kq_dot16(vdupq_n_s32(0), P->w[1], vld1q_s8(xq[j] + 16));
        float32x4_t f = vmulq_n_f32(vcvtq_f32_s32(d0), dx[j][0]);
        f = vfmaq_n_f32(f, vcvtq_f32_s32(d1), dx[j][1]);
        y[j] = vfmaq_f32(y[j], f, P->d);
    }
}

/* ---- tiles: 4 rows (nr live) x RN tokens over the whole k ---------------------------------------- */
/* panel: the decoded records of these rows (all of k), or NULL to decode each one on the fly. */
TL_INLINE void kq_tile(const int WT, const int RN, const tl_gemm_args *a, const uint8_t *const *rp,
                        const void *panel, int64_t i0, int nr, int64_t j0) {
    const int64_t k = a->k;
    float32x4_t y[KQ_RN];
    const uint8_t *xr[KQ_RN];
    const int8_t *xq[KQ_RN];
    const float *dx[KQ_RN], *sx[KQ_RN];
    for (int j = 0; j < RN; j++) {
        y[j] = vdupq_n_f32(0.0f);
        xr[j] = a->act + (j0 + j) * a->ldact;
    }
    if (WT == TL_Q5_0) {
        const kq_q50 *pan = (const kq_q50 *)panel;
        for (int64_t b = 0; b < k / TL_QK; b++) {
            kq_q50 tmp;
            const kq_q50 *P = pan ? pan + b : &tmp;
            if (!pan) kq_dec_q50(rp, b, &tmp);
            for (int j = 0; j < RN; j++) {
                xq[j] = tl_q8a_qs(xr[j]) + TL_QK * b;
                dx[j] = tl_q8a_d(xr[j], k) + 2 * b;
            }
            kq_q50_blk(RN, P, xq, dx, y);
        }
    } else {
        const kq_ksb *pan = (const kq_ksb *)panel;
        for (int64_t b = 0; b < k / TL_QK_K; b++) {
            kq_ksb tmp;
            const kq_ksb *P = pan ? pan + b : &tmp;
            if (!pan) kq_dec_k(WT, rp, b, &tmp);
            for (int j = 0; j < RN; j++) {
                xq[j] = tl_q8a_qs(xr[j]) + TL_QK_K * b;
                dx[j] = tl_q8a_d(xr[j], k) + 16 * b;
                sx[j] = tl_q8a_s(xr[j], k) + 16 * b;
            }
            kq_k_sb(WT, RN, P, xq, dx, sx, y);
        }
    }
    for (int j = 0; j < RN; j++) {
        float *yp = a->y + (j0 + j) * a->ldy + i0;
        if (nr == KQ_R) {
            vst1q_f32(yp, y[j]);
        } else {
            float t[4];
            vst1q_f32(t, y[j]);
            for (int r = 0; r < nr; r++) yp[r] = t[r];
        }
    }
}

/* Rows [i0, i1) x tokens [j0, j1), i0 a multiple of 4. Dead rows of the last panel repeat its
 * first row (in bounds, never stored). */
TL_INLINE void kq_block_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const int64_t nrec = WT == TL_Q5_0 ? a->k / TL_QK : a->k / TL_QK_K;
    const size_t rec = WT == TL_Q5_0 ? sizeof(kq_q50) : sizeof(kq_ksb);
    /* decode once into scratch only if more than one token tile reuses it (no scratch: on the fly) */
    uint8_t *buf = j1 - j0 > KQ_RN ? (uint8_t *)tl_scratch((size_t)nrec * rec) : NULL;
    for (int64_t i = i0; i < i1; i += KQ_R) {
        const int nr = (int)TL_MIN((int64_t)KQ_R, i1 - i);
        const uint8_t *rp[4];
        for (int l = 0; l < 4; l++) rp[l] = a->w + (i + (l < nr ? l : 0)) * a->ldw;
        if (buf)
            for (int64_t b = 0; b < nrec; b++) {
                if (WT == TL_Q5_0) kq_dec_q50(rp, b, (kq_q50 *)(void *)buf + b);
                else kq_dec_k(WT, rp, b, (kq_ksb *)(void *)buf + b);
            }
        int64_t j = j0;
        for (; j + KQ_RN <= j1; j += KQ_RN) kq_tile(WT, KQ_RN, a, rp, buf, i, nr, j);
        switch ((int)(j1 - j)) {
        case 1: kq_tile(WT, 1, a, rp, buf, i, nr, j); break;
        case 2: kq_tile(WT, 2, a, rp, buf, i, nr, j); break;
        case 3: kq_tile(WT, 3, a, rp, buf, i, nr, j); break;
        case 4: kq_tile(WT, 4, a, rp, buf, i, nr, j); break;
        case 5: kq_tile(WT, 5, a, rp, buf, i, nr, j); break;
        default: break;
        }
    }
}

#define KQ_FUNCS(NAME, WT)                                                                             \
    static void kq_block_##NAME(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) { \
        kq_block_impl(WT, a, i0, i1, j0, j1);                                                          \
    }                                                                                                   \
    static void kq_tile_##NAME(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {        \
        kq_block_impl(WT, a, i0, i0 + rm, j0, j0 + rn);                                                \
    }                                                                                                   \
    static void kq_gemv_##NAME(const tl_gemm_args *a, int64_t i0, int64_t i1) {                        \
        kq_block_impl(WT, a, i0, i1, 0, 1);                                                            \
    }                                                                                                   \
    const tl_ukernel tl_neon_##NAME##_4x6 = {.rm = KQ_R, .rn = KQ_RN, .tile = kq_tile_##NAME,         \
                                             .gemv_rows = KQ_R, .gemv = kq_gemv_##NAME,                \
                                             .block = kq_block_##NAME};
KQ_FUNCS(q5_0, TL_Q5_0)
KQ_FUNCS(q4_k, TL_Q4_K)
KQ_FUNCS(q5_k, TL_Q5_K)
KQ_FUNCS(q6_k, TL_Q6_K)
