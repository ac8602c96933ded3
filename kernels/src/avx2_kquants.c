/* avx2_kquants.c — AVX2 (+FMA +F16C) kernels for q5_0, q4_K, q5_K and q6_K weights.
 *
 * Same scheme as avx512_kquants.c with 8-row panels in ymm lanes and vpmaddubsw instead of VNNI:
 * per 4 consecutive k-values one ymm whose lane r holds row r's 4 unsigned quants (q5_0: q, 0..31;
 * q4_K 0..15; q5_K 0..31; q6_K 0..63). A token's 16-value group dot is 4 vpmaddubsw against
 * 4-byte broadcasts of its int8 activations, summed in int16, then vpmaddwd with ones -> 8 rows'
 * exact int32 dots in the 8 lanes. int16 bounds (|x| <= 127): a pair is at most 2*63*127 = 16002
 * (no saturation in vpmaddubsw); the sum of a group's 4 steps is at most 4*2*31*127 = 31496 for
 * q5_0 / q5_K (15240 for q4_K), < 32767, so it stays in int16; q6_K (4*16002 would not) is widened
 * after every 2 steps (32004).
 *
 * Numerics, identical to avx512_kquants.c (so the two variants agree bit for bit):
 *   q5_0: per 32-block, int32 dot_g - 16 * isum_g per 16-group (exact offset),
 *     y += d_w * (d_x0 * float(acc0) + d_x1 * float(acc1)).
 *   K-quants: per 16-group an exact int32 dot, then f32: f += sc * (d_x,g * dot_g) (q4_K/q5_K: the
 *     sub-block's two groups share sc: g = d_x1*dot1 + d_x0*dot0), q6_K: f += sc * (d_x,g * dot_g
 *     - 32 * s_x,g); per super-block y += d_w * f (- dmin_w * sum_j m_j * (s_x,2j + s_x,2j+1) for
 *     q4_K/q5_K). Groups and super-blocks in order: results depend only on k.
 *
 * n > 1 (block hook): the panel's rows are decoded once per driver block into thread-local
 * scratch and reused for every token tile (4 tokens per register tile).
 * n == 1 (gemv): streams the weights. q5_0 decodes 8 rows per block straight into registers; the
 * K-quants decode one super-block of 8 rows at a time into a 2.9 KB stack buffer (L1) and run the
 * same super-block kernel with one token. Both prefetch the next 8-row panel linearly (8 row
 * streams ldw apart are not followed by the hardware prefetchers from DRAM).
 */
#include <immintrin.h>

#include "avx2.h"
#include "kquants.h"
#include "x86_common.h"

/* Built twice: as the avx2 kernels, and #included by avxvnni_kquants.c (compiled with -mavxvnni) as
 * the avxvnni ones, where KQ_VNNI makes a group dot 4 vpdpbusd (int32 accumulation) instead of
 * vpmaddubsw + vpaddw + vpmaddwd. The int32 group dots are exact either way: the same bits. */
#ifndef KQ_VNNI
#define KQ_VNNI 0
#endif
#if KQ_VNNI
#define KQ_NAME(n) tl_avxvnni_##n
#else
#define KQ_NAME(n) tl_avx2_##n
#endif

#define KQ_R 8   /* rows per panel (ymm lanes) */
#define KQ_RN 4  /* tokens per register tile */
#define KQ_Q50_BLK (256 + 32)                /* q5_0 panel block: 8 ymm quants + 8 d */
#define KQ_SC 2048                           /* K super-block: W 64 ymm, */
#define KQ_MN (KQ_SC + 512)                 /*   SC 16 x 8 f32, */
#define KQ_D (KQ_MN + 256)                  /*   MN 8 x 8 f32, */
#define KQ_DM (KQ_D + 32)                   /*   D, DM 8 f32 each */
#define KQ_KSB (KQ_DM + 32)
#define KQ_PF_PARTS 4 /* the gemv's prefetch of a super-block's slice, spread over pack and dot */

TL_INLINE int kq_bytes(const int WT) {
    return WT == TL_Q5_0 ? TL_Q5_0_BYTES : WT == TL_Q4_K ? TL_Q4_K_BYTES : WT == TL_Q5_K ? TL_Q5_K_BYTES
                                                                                           : TL_Q6_K_BYTES;
}

/* ---- 8-row register loads (row in lane) -------------------------------------------------------- */
/* 8 rows' 16-byte chunks at rp[r] + off -> out[t] lane r = dword t of that chunk of row r. A[q]
 * holds rows q and q+4 in its 128-bit lanes, so after the 32- and 64-bit unpacks lane 4l + q is
 * row 4l + q. */
TL_INLINE void kq_t8(const uint8_t *const *rp, int64_t off, __m256i out[4]) {
    __m256i A[4];
    for (int q = 0; q < 4; q++)
        A[q] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(rp[q] + off))),
                                       _mm_loadu_si128((const __m128i *)(rp[q + 4] + off)), 1);
    const __m256i a = _mm256_unpacklo_epi32(A[0], A[1]), b = _mm256_unpackhi_epi32(A[0], A[1]);
    const __m256i c = _mm256_unpacklo_epi32(A[2], A[3]), d = _mm256_unpackhi_epi32(A[2], A[3]);
    out[0] = _mm256_unpacklo_epi64(a, c);
    out[1] = _mm256_unpackhi_epi64(a, c);
    out[2] = _mm256_unpacklo_epi64(b, d);
    out[3] = _mm256_unpackhi_epi64(b, d);
}

/* The f16 in the low half of each dword -> 8 f32. */
TL_INLINE __m256 kq_f16lo(__m256i v) {
    const __m256i p = _mm256_packus_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0xffff)), _mm256_setzero_si256());
    return _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(p, 0x08)));
}

/* Row pointers of rows [r0, r0 + nr); dead rows repeat row r0 so every load stays in bounds. */
TL_INLINE void kq_rows(const tl_gemm_args *a, int64_t r0, int nr, const uint8_t *rp[KQ_R]) {
    for (int r = 0; r < KQ_R; r++) rp[r] = a->w + (r0 + (r < nr ? r : 0)) * a->ldw;
}
/* All-ones in lanes r < nr (scales of dead lanes are zeroed with it). */
TL_INLINE __m256 kq_live(int nr) {
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nr), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

/* q5_0 block b of 8 rows: w[t] lane r = row r's quants 4t..4t+3 (unsigned 0..31), d per lane (0 in
 * dead lanes). The head (d, qh) comes from a transpose of each row's first 16 bytes. Bit 4 of quant
 * v is qh bit v: vpshufb copies qh byte v/8 into the 4 bytes of step t = v/4 (steps 2q, 2q+1 share
 * byte q); byte i of step 2q+1 needs bit 4+i, of step 2q bit i (shifted up by 4 first): masked with
 * 0x10 << i, vpminub with 0x10 makes it exactly 0x10 or 0. */
TL_INLINE void kq_q5_0_load8(const uint8_t *const *rp, __m256 live, int64_t b, __m256i w[8], __m256 *d) {
    const int64_t o = b * TL_Q5_0_BYTES;
    __m256i hd[4], u[4];
    kq_t8(rp, o, hd);     /* dword 0 = d | qh[0..1] << 16, dword 1 = qh[2..3] | qs[0..1] << 16 */
    kq_t8(rp, o + 6, u);  /* the 16 quant bytes */
    *d = _mm256_and_ps(live, kq_f16lo(hd[0]));
    const __m256i qh = _mm256_or_si256(_mm256_srli_epi32(hd[0], 16), _mm256_slli_epi32(hd[1], 16));
    const __m256i m4 = _mm256_set1_epi8(0x0f), b4 = _mm256_set1_epi8(0x10);
    const __m256i bm = _mm256_set1_epi32((int)0x80402010);
    for (int t = 0; t < 4; t++) {
        w[t] = _mm256_and_si256(u[t], m4);
        w[t + 4] = _mm256_and_si256(_mm256_srli_epi16(u[t], 4), m4);
    }
    const __m256i dw = _mm256_setr_epi32(0, 0x04040404, 0x08080808, 0x0c0c0c0c, 0, 0x04040404, 0x08080808, 0x0c0c0c0c);
    for (int q = 0; q < 4; q++) {
        const __m256i sel = _mm256_shuffle_epi8(qh, _mm256_add_epi8(dw, _mm256_set1_epi8((char)q)));
        const __m256i sel4 = _mm256_slli_epi16(sel, 4); /* bits 0..3 of each byte to 4..7 */
        w[2 * q] = _mm256_or_si256(w[2 * q], _mm256_min_epu8(_mm256_and_si256(sel4, bm), b4));
        w[2 * q + 1] = _mm256_or_si256(w[2 * q + 1], _mm256_min_epu8(_mm256_and_si256(sel, bm), b4));
    }
}

/* ---- panel packing ------------------------------------------------------------------------------ */
static void kq_pack_q5_0(const tl_gemm_args *a, int64_t r0, int nr, uint8_t *buf) {
    const int64_t nb = a->k / TL_QK;
    const uint8_t *rp[KQ_R];
    kq_rows(a, r0, nr, rp);
    const __m256 live = kq_live(nr);
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *o = buf + b * KQ_Q50_BLK;
        __m256i w[8];
        __m256 d;
        kq_q5_0_load8(rp, live, b, w, &d);
        for (int t = 0; t < 8; t++) _mm256_store_si256((__m256i *)(o + 32 * t), w[t]);
        _mm256_store_ps((float *)(o + 256), d);
    }
}

/* Part h of KQ_PF_PARTS of x86_pf_block's slice b (NULL f: none). */
TL_INLINE void kq_pf_part(const x86_pf *f, int64_t b, int h) {
    if (!f) return;
    const int64_t lines = f->step / 64, s0 = b * f->step + 64 * (lines * h / KQ_PF_PARTS);
    const int64_t e = TL_MIN(b * f->step + 64 * (lines * (h + 1) / KQ_PF_PARTS), f->len);
    for (int64_t q = s0; q < e; q += 64) __builtin_prefetch(f->p + q, 0, 3);
}

/* One K super-block (at byte o of every row) of 8 rows -> out (KQ_KSB bytes, 32-B aligned):
 * register transposes of the quants and of the block heads (d, dmin, scale fields), decoded in
 * lanes; dead lanes get d = dmin = 0. */
TL_INLINE void kq_pack_sb(const int WT, const uint8_t *const *rp, __m256 live, int64_t o, uint8_t *out, const x86_pf *pf,
                          int64_t pb) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x03), m1 = _mm256_set1_epi8(0x01);
    __m256i *W = (__m256i *)out;
    float *SC = (float *)(out + KQ_SC), *MN = (float *)(out + KQ_MN);
    __m256i S[4];
    if (WT == TL_Q6_K) {
        __m256i E[4];
        kq_t8(rp, o + 192, S); /* int8 scales: dword t = sc[4t..4t+3] */
        kq_t8(rp, o + 194, E); /* dword 3 = sc[14], sc[15], d */
        for (int s = 0; s < 16; s++)
            _mm256_store_ps(SC + 8 * s,
                            _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(S[s / 4], 24 - 8 * (s % 4)), 24)));
        _mm256_store_ps((float *)(out + KQ_D), _mm256_and_ps(live, kq_f16lo(_mm256_srli_epi32(E[3], 16))));
    } else {
        const __m256i b6 = _mm256_set1_epi32(63), b4 = _mm256_set1_epi32(15), b2 = _mm256_set1_epi32(3);
        kq_t8(rp, o, S); /* dword 0 = d | dmin << 16; 1, 2, 3 = the 12 scale bytes */
        _mm256_store_ps((float *)(out + KQ_D), _mm256_and_ps(live, kq_f16lo(S[0])));
        _mm256_store_ps((float *)(out + KQ_DM), _mm256_and_ps(live, kq_f16lo(_mm256_srli_epi32(S[0], 16))));
        for (int j = 0; j < 4; j++) {
            const __m256i s0 = _mm256_srli_epi32(S[1], 8 * j), s1 = _mm256_srli_epi32(S[2], 8 * j),
                          s2 = _mm256_srli_epi32(S[3], 8 * j);
            const __m256i sc_lo = _mm256_and_si256(s0, b6), mn_lo = _mm256_and_si256(s1, b6);
            const __m256i sc_hi = _mm256_or_si256(_mm256_and_si256(s2, b4),
                                                  _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(s0, 6), b2), 4));
            const __m256i mn_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(s2, 4), b4),
                                                  _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(s1, 6), b2), 4));
            _mm256_store_ps(SC + 8 * j, _mm256_cvtepi32_ps(sc_lo));
            _mm256_store_ps(SC + 8 * (j + 4), _mm256_cvtepi32_ps(sc_hi));
            _mm256_store_ps(MN + 8 * j, _mm256_cvtepi32_ps(mn_lo));
            _mm256_store_ps(MN + 8 * (j + 4), _mm256_cvtepi32_ps(mn_hi));
        }
    }
    if (WT == TL_Q6_K) {
        for (int h = 0; h < 2; h++) {
            kq_pf_part(pf, pb, h);
            __m256i L[16], H[8];
            for (int c = 0; c < 4; c++) kq_t8(rp, o + 64 * h + 16 * c, L + 4 * c);
            for (int c = 0; c < 2; c++) kq_t8(rp, o + 128 + 32 * h + 16 * c, H + 4 * c);
            for (int t = 0; t < 8; t++) {
                const __m256i h0 = _mm256_and_si256(H[t], m2), h1 = _mm256_and_si256(_mm256_srli_epi16(H[t], 2), m2);
                const __m256i h2 = _mm256_and_si256(_mm256_srli_epi16(H[t], 4), m2);
                const __m256i h3 = _mm256_and_si256(_mm256_srli_epi16(H[t], 6), m2);
                _mm256_store_si256(W + 32 * h + t, _mm256_or_si256(_mm256_and_si256(L[t], m4), _mm256_slli_epi16(h0, 4)));
                _mm256_store_si256(W + 32 * h + 8 + t,
                                   _mm256_or_si256(_mm256_and_si256(L[8 + t], m4), _mm256_slli_epi16(h1, 4)));
                _mm256_store_si256(W + 32 * h + 16 + t, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L[t], 4), m4),
                                                                        _mm256_slli_epi16(h2, 4)));
                _mm256_store_si256(W + 32 * h + 24 + t,
                                   _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L[8 + t], 4), m4),
                                                   _mm256_slli_epi16(h3, 4)));
            }
        }
    } else {
        const int64_t qo = o + (WT == TL_Q4_K ? 16 : 48);
        __m256i H[8];
        if (WT == TL_Q5_K) {
            kq_t8(rp, o + 16, H);
            kq_t8(rp, o + 32, H + 4);
        }
        for (int c = 0; c < 4; c++) {
            if (c % 2 == 0) kq_pf_part(pf, pb, c / 2);
            __m256i U[8];
            kq_t8(rp, qo + 32 * c, U);
            kq_t8(rp, qo + 32 * c + 16, U + 4);
            for (int u = 0; u < 8; u++) {
                __m256i lo = _mm256_and_si256(U[u], m4), hi = _mm256_and_si256(_mm256_srli_epi16(U[u], 4), m4);
                if (WT == TL_Q5_K) {
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(H[u], 2 * c), m1), 4));
                    hi = _mm256_or_si256(hi,
                                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(H[u], 2 * c + 1), m1), 4));
                }
                _mm256_store_si256(W + 16 * c + u, lo);
                _mm256_store_si256(W + 16 * c + 8 + u, hi);
            }
        }
    }
}

static void kq_pack_k(const int WT, const tl_gemm_args *a, int64_t r0, int nr, uint8_t *buf) {
    const int64_t nb = a->k / TL_QK_K;
    const uint8_t *rp[KQ_R];
    kq_rows(a, r0, nr, rp);
    const __m256 live = kq_live(nr);
    for (int64_t b = 0; b < nb; b++) kq_pack_sb(WT, rp, live, b * kq_bytes(WT), buf + b * KQ_KSB, NULL, 0);
}

/* ---- panel x tokens --------------------------------------------------------------------------- */
TL_INLINE void kq_store(const int RN, const tl_gemm_args *a, const __m256 *y, int64_t i0, int nr, int64_t j0) {
    for (int j = 0; j < RN; j++) {
        float *yp = a->y + (j0 + j) * a->ldy + i0;
        if (nr == KQ_R) {
            _mm256_storeu_ps(yp, y[j]);
        } else {
            float s[KQ_R];
            _mm256_storeu_ps(s, y[j]);
            for (int i = 0; i < nr; i++) yp[i] = s[i];
        }
    }
}

/* Sum of 4 vpmaddubsw steps (w[0..3] x the 4 dwords at xq) as 8 int32 lanes; NW = 2 widens after
 * every 2 steps (q6_K's 0..63 quants), NW = 4 once (quants <= 31). */
TL_INLINE __m256i kq_dot16(const int NW, const __m256i *w, const int32_t *xq) {
#if KQ_VNNI
    (void)NW;
    __m256i acc = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w[0], _mm256_set1_epi32(xq[0]));
    for (int t = 1; t < 4; t++) acc = _mm256_dpbusd_avx_epi32(acc, w[t], _mm256_set1_epi32(xq[t]));
    return acc;
#endif
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i p0 = _mm256_add_epi16(_mm256_maddubs_epi16(w[0], _mm256_set1_epi32(xq[0])),
                                  _mm256_maddubs_epi16(w[1], _mm256_set1_epi32(xq[1])));
    __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(w[2], _mm256_set1_epi32(xq[2])),
                                  _mm256_maddubs_epi16(w[3], _mm256_set1_epi32(xq[3])));
    if (NW == 4) return _mm256_madd_epi16(_mm256_add_epi16(p0, p1), ones);
    return _mm256_add_epi32(_mm256_madd_epi16(p0, ones), _mm256_madd_epi16(p1, ones));
}

/* q5_0 block (8 decoded quant vectors w, scales d) x one token: y += d * (dx0 * acc0 + dx1 * acc1),
 * o0, o1 = the exact offsets -16 * isum of the block's two activation groups. */
TL_INLINE __m256 kq_q5_0_blockdot(const __m256i *w, __m256 d, const int32_t *xq, const float *dx, __m256i o0,
                                   __m256i o1, __m256 y) {
    const __m256i a0 = _mm256_add_epi32(kq_dot16(4, w, xq), o0);
    const __m256i a1 = _mm256_add_epi32(kq_dot16(4, w + 4, xq + 4), o1);
    const __m256 f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), _mm256_set1_ps(dx[1]),
                                     _mm256_mul_ps(_mm256_cvtepi32_ps(a0), _mm256_set1_ps(dx[0])));
    return _mm256_fmadd_ps(f, d, y);
}

TL_INLINE void kq_q5_0_tile(const int RN, const tl_gemm_args *a, const uint8_t *panel, int64_t i0, int nr,
                             int64_t j0) {
    const int64_t k = a->k, nb = k / TL_QK;
    __m256 y[KQ_RN];
    const uint8_t *xr[KQ_RN];
    for (int j = 0; j < RN; j++) {
        y[j] = _mm256_setzero_ps();
        xr[j] = a->act + (j0 + j) * a->ldact;
    }
    const uint8_t *P = panel;
    for (int64_t b = 0; b < nb; b++, P += KQ_Q50_BLK) {
        __m256i w[8];
        for (int t = 0; t < 8; t++) w[t] = _mm256_load_si256((const __m256i *)(P + 32 * t));
        const __m256 d = _mm256_load_ps((const float *)(P + 256));
        for (int j = 0; j < RN; j++) {
            const int16_t *is = tl_q8a_isum(xr[j], k) + 2 * b;
            y[j] = kq_q5_0_blockdot(w, d, (const int32_t *)(xr[j] + 32 * b), tl_q8a_d(xr[j], k) + 2 * b,
                                     _mm256_set1_epi32(-16 * (int32_t)is[0]), _mm256_set1_epi32(-16 * (int32_t)is[1]),
                                     y[j]);
        }
    }
    kq_store(RN, a, y, i0, nr, j0);
}

/* One decoded K super-block P (index b of k) x RN tokens, accumulated into y. */
TL_INLINE void kq_k_sb(const int WT, const int RN, const uint8_t *P, const uint8_t *const *xr, int64_t k, int64_t b,
                        __m256 *y, const x86_pf *pf) {
    const int NS = WT == TL_Q6_K ? 16 : 8; /* sub-blocks (runs with their own scale) */
    const int TS = 64 / NS;                /* ymm steps per sub-block: 4 per activation group */
    const __m256i *W = (const __m256i *)P;
    __m256 f[KQ_RN];
    for (int j = 0; j < RN; j++) f[j] = _mm256_setzero_ps();
    for (int s = 0; s < NS; s++) {
        if (s % (NS / 2) == 0) kq_pf_part(pf, b, 2 + s / (NS / 2));
        const __m256 sc = _mm256_load_ps((const float *)(P + KQ_SC) + 8 * s);
        for (int j = 0; j < RN; j++) {
            const int32_t *xq = (const int32_t *)(xr[j] + TL_QK_K * b) + TS * s;
            const float *dx = tl_q8a_d(xr[j], k) + 16 * b + (TS / 4) * s;
            __m256 g;
            if (WT == TL_Q6_K) { /* one group: dx * (dot - 32 * isum) = dx * dot - 32 * s */
                const __m256i d0 = kq_dot16(2, W + TS * s, xq);
                const float sx = tl_q8a_s(xr[j], k)[16 * b + s];
                g = _mm256_fmsub_ps(_mm256_cvtepi32_ps(d0), _mm256_set1_ps(dx[0]), _mm256_set1_ps(32.0f * sx));
            } else { /* two groups share sc */
                const __m256i d0 = kq_dot16(4, W + TS * s, xq), d1 = kq_dot16(4, W + TS * s + 4, xq + 4);
                g = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), _mm256_set1_ps(dx[1]),
                                    _mm256_mul_ps(_mm256_cvtepi32_ps(d0), _mm256_set1_ps(dx[0])));
            }
            f[j] = _mm256_fmadd_ps(g, sc, f[j]);
        }
    }
    const __m256 d = _mm256_load_ps((const float *)(P + KQ_D));
    if (WT == TL_Q6_K) {
        for (int j = 0; j < RN; j++) y[j] = _mm256_fmadd_ps(f[j], d, y[j]);
    } else {
        const __m256 dm = _mm256_load_ps((const float *)(P + KQ_DM));
        /* the 8 sums s_x,2j + s_x,2j+1 by one vhaddps (lanes j = 0 1 4 5 | 2 3 6 7), then broadcast by vpermps */
        static const int lane[8] = {0, 1, 4, 5, 2, 3, 6, 7};
        for (int j = 0; j < RN; j++) {
            const float *sx = tl_q8a_s(xr[j], k) + 16 * b;
            const __m256 ps = _mm256_hadd_ps(_mm256_loadu_ps(sx), _mm256_loadu_ps(sx + 8));
            __m256 mn = _mm256_setzero_ps();
            for (int s = 0; s < 8; s++)
                mn = _mm256_fmadd_ps(_mm256_load_ps((const float *)(P + KQ_MN) + 8 * s),
                                     _mm256_permutevar8x32_ps(ps, _mm256_set1_epi32(lane[s])), mn);
            y[j] = _mm256_fnmadd_ps(mn, dm, _mm256_fmadd_ps(f[j], d, y[j]));
        }
    }
}

TL_INLINE void kq_k_tile(const int WT, const int RN, const tl_gemm_args *a, const uint8_t *panel, int64_t i0,
                          int nr, int64_t j0) {
    const int64_t k = a->k, nb = k / TL_QK_K;
    __m256 y[KQ_RN];
    const uint8_t *xr[KQ_RN];
    for (int j = 0; j < RN; j++) {
        y[j] = _mm256_setzero_ps();
        xr[j] = a->act + (j0 + j) * a->ldact;
    }
    for (int64_t b = 0; b < nb; b++) kq_k_sb(WT, RN, panel + b * KQ_KSB, xr, k, b, y, NULL);
    kq_store(RN, a, y, i0, nr, j0);
}

#define KQ_TOKENS(CALL)                                                                             \
    do {                                                                                             \
        int64_t j = j0;                                                                              \
        for (; j + KQ_RN <= j1; j += KQ_RN) CALL(KQ_RN);                                          \
        switch ((int)(j1 - j)) {                                                                     \
        case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break;                      \
        default: break;                                                                              \
        }                                                                                            \
    } while (0)

/* No scratch (allocation failed): the plain-C kernels (same integers, f32 order of portable_kquants.c). */
static void kq_portable(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const tl_ukernel *uk = tl_kq_portable_lookup(WT);
    for (int64_t i = i0; i < i1; i += uk->rm)
        for (int64_t j = j0; j < j1; j += uk->rn)
            uk->tile(a, i, j, (int)TL_MIN((int64_t)uk->rm, i1 - i), (int)TL_MIN((int64_t)uk->rn, j1 - j));
}

TL_INLINE void kq_block_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const size_t need = WT == TL_Q5_0 ? (size_t)(a->k / TL_QK) * KQ_Q50_BLK : (size_t)(a->k / TL_QK_K) * KQ_KSB;
    uint8_t *buf = x86_scratch(need);
    if (!buf) {
        kq_portable(WT, a, i0, i1, j0, j1);
        return;
    }
    for (int64_t i = i0; i < i1; i += KQ_R) {
        const int nr = (int)TL_MIN((int64_t)KQ_R, i1 - i);
        if (WT == TL_Q5_0) {
            kq_pack_q5_0(a, i, nr, buf);
#define C_(N) kq_q5_0_tile(N, a, buf, i, nr, j)
            KQ_TOKENS(C_);
#undef C_
        } else {
            kq_pack_k(WT, a, i, nr, buf);
#define C_(N) kq_k_tile(WT, N, a, buf, i, nr, j)
            KQ_TOKENS(C_);
#undef C_
        }
    }
}

/* ---- n == 1: stream the rows ------------------------------------------------------------------- */

/* 8 rows at a time, decoded straight into registers (same arithmetic as the panel). */
static void kq_gemv_q5_0(const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t k = a->k, nb = k / TL_QK;
    const int32_t *xq = (const int32_t *)a->act;
    const float *dx = tl_q8a_d(a->act, k);
    /* the offsets -16 * isum once per call (one broadcast load per group in the loop instead of a
     * sign-extend, shift, move and broadcast: -5% instructions) */
    int32_t *off = (int32_t *)x86_scratch((size_t)(k / X86_QG) * 4);
    if (!off) {
        kq_portable(TL_Q5_0, a, i0, i1, 0, 1);
        return;
    }
    const int16_t *is = tl_q8a_isum(a->act, k);
    for (int64_t g = 0; g < k / X86_QG; g++) off[g] = -16 * (int32_t)is[g];
    for (int64_t i = i0; i < i1; i += KQ_R) {
        const int nr = (int)TL_MIN((int64_t)KQ_R, i1 - i);
        const uint8_t *rp[KQ_R];
        kq_rows(a, i, nr, rp);
        const __m256 live = kq_live(nr);
        const x86_pf pf = x86_pf_next(a, i, i1, KQ_R, nb); /* the next panel, from DRAM */
        __m256 y = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            x86_pf_block(&pf, b);
            __m256i w[8];
            __m256 d;
            kq_q5_0_load8(rp, live, b, w, &d);
            y = kq_q5_0_blockdot(w, d, xq + 8 * b, dx + 2 * b, _mm256_set1_epi32(off[2 * b]),
                                  _mm256_set1_epi32(off[2 * b + 1]), y);
        }
        kq_store(1, a, &y, i, nr, 0);
    }
}

/* K-quants: one super-block of 8 rows at a time through an L1 buffer, then the panel kernel. The next panel's
 * prefetch slice of a super-block (18 lines for q4_K, 27 for q6_K) is issued in KQ_PF_PARTS parts spread over
 * the pack and the dot, not as one burst before them (more lines than the core has L1 fill buffers): measured
 * +5-12 % q4_K, +4 % q6_K (5632 x 2048, one thread, from DRAM, CPU time, interleaved A/B, same bits). */
TL_INLINE void kq_gemv_k(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t k = a->k, nb = k / TL_QK_K;
    const int bytes = kq_bytes(WT);
    _Alignas(32) uint8_t sb[KQ_KSB];
    const uint8_t *xr[1] = {a->act};
    for (int64_t i = i0; i < i1; i += KQ_R) {
        const int nr = (int)TL_MIN((int64_t)KQ_R, i1 - i);
        const uint8_t *rp[KQ_R];
        kq_rows(a, i, nr, rp);
        const __m256 live = kq_live(nr);
        const x86_pf pf = x86_pf_next(a, i, i1, KQ_R, nb); /* the next panel, from DRAM */
        __m256 y = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            kq_pack_sb(WT, rp, live, b * bytes, sb, &pf, b);
            kq_k_sb(WT, 1, sb, xr, k, b, &y, &pf);
        }
        kq_store(1, a, &y, i, nr, 0);
    }
}

/* ---- table entries ------------------------------------------------------------------------- */
#define KQ_FUNCS(NAME, WT)                                                                           \
    static void kq_##NAME##_block(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) { \
        kq_block_impl(WT, a, i0, i1, j0, j1);                                                        \
    }                                                                                                 \
    static void kq_##NAME##_tilefn(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {  \
        kq_block_impl(WT, a, i0, i0 + rm, j0, j0 + rn);                                              \
    }
KQ_FUNCS(q5_0, TL_Q5_0)
KQ_FUNCS(q4_k, TL_Q4_K)
KQ_FUNCS(q5_k, TL_Q5_K)
KQ_FUNCS(q6_k, TL_Q6_K)
static void kq_gemv_q4_k(const tl_gemm_args *a, int64_t i0, int64_t i1) { kq_gemv_k(TL_Q4_K, a, i0, i1); }
static void kq_gemv_q5_k(const tl_gemm_args *a, int64_t i0, int64_t i1) { kq_gemv_k(TL_Q5_K, a, i0, i1); }
static void kq_gemv_q6_k(const tl_gemm_args *a, int64_t i0, int64_t i1) { kq_gemv_k(TL_Q6_K, a, i0, i1); }

#define KQ_TABLE(NAME)                                                                                  \
    const tl_ukernel KQ_NAME(NAME##_8x4) = {.rm = KQ_R, .rn = KQ_RN, .tile = kq_##NAME##_tilefn, .gemv_rows = KQ_R, \
                                             .gemv = kq_gemv_##NAME, .block = kq_##NAME##_block,                \
                                             .act_row_bytes = x86_qa_row_bytes,                                 \
                                             .act_prepare = tl_avx2_q8_act_prepare};
KQ_TABLE(q5_0)
KQ_TABLE(q4_k)
KQ_TABLE(q5_k)
KQ_TABLE(q6_k)
