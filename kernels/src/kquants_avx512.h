/* kquants_avx512.h — AVX-512 VNNI kernels for q5_0, q4_K, q5_K and q6_K weights (included by
 * ukernel_avx512.c; self-contained apart from x86_common.h and kquants.h).
 *
 * n > 1 (block): weights are decoded per 16-row panel into thread-local scratch, "row in lane":
 * per 4 consecutive k-values one zmm whose lane r holds row r's 4 unsigned quants (q5_0: q,
 * 0..31; q4_K 0..15; q5_K 0..31; q6_K 0..63), plus per-row scales. A token's run dot is then
 * vpdpbusd against 4-byte broadcasts of its int8 activations: 16 rows' exact int32 dots in the 16
 * lanes. The panel is decoded once per driver block and reused for every token (8 per register
 * tile).
 *   q5_0 (x86 q8 act layout): acc starts at -16 * isum_x (exact offset), 8 vpdpbusd per 32-block,
 *     y += float(acc) * (d_w * d_x).
 *   K-quants (q8_K act layout, tl_internal.h): per sub-block isum += dot * sc (vpmulld, exact),
 *     msum = sum of vpmaddwd(min / scale pairs, bsum pairs); q4_K/q5_K: y += float(isum) * d_w d_x
 *     - float(msum) * dmin_w d_x; q6_K: isum -= 32 * msum, y += float(isum) * d_w d_x.
 * n == 1 (gemv): q5_0 decodes 16 rows per block straight into registers (register transposes of the
 * GGUF rows) and runs the same lane arithmetic; K-quants decode each 16-row panel into scratch
 * (same vector decoder) and run the panel kernel with one token; q6_K goes row by row.
 * The arithmetic is that of kquants.h (exact integers per super-block / block, then f32 in block
 * order), so results depend only on k, not on the thread count.
 */
#ifndef TL_KQUANTS_AVX512_H
#define TL_KQUANTS_AVX512_H

#include <immintrin.h>

#include "kquants.h"
#include "x86_common.h"

#define KQ5_R 16  /* rows per panel */
#define KQ5_RN 8  /* tokens per register tile */
#define KQ5_Q50_BLK (512 + 64)                 /* q5_0 panel block: 8 zmm quants + 16 d */
#define KQ5_KSB (4096 + 1024 + 512 + 64 + 64)  /* K panel super-block: W 64 zmm, SC 16, MP 8, D, DM */

TL_INLINE int kq5_bytes(const int WT) {
    return WT == TL_Q5_0 ? TL_Q5_0_BYTES : WT == TL_Q4_K ? TL_Q4_K_BYTES : WT == TL_Q5_K ? TL_Q5_K_BYTES
                                                                                           : TL_Q6_K_BYTES;
}

/* ---- 16-row register loads (row in lane) -------------------------------------------------------- */
/* 16 rows' 16-byte chunks at rp[r] + off -> out[t] lane r = dword t of that chunk of row r. V[q]
 * holds rows q, q+4, q+8, q+12 in its 128-bit lanes, so after the 32- and 64-bit unpacks lane
 * 4L + q is row 4L + q. */
TL_INLINE void kq5_t16(const uint8_t *const *rp, int64_t off, __m512i out[4]) {
    __m512i V[4];
    for (int q = 0; q < 4; q++) {
        __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(rp[q] + off)));
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rp[q + 4] + off)), 1);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rp[q + 8] + off)), 2);
        V[q] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rp[q + 12] + off)), 3);
    }
    const __m512i a = _mm512_unpacklo_epi32(V[0], V[1]), b = _mm512_unpackhi_epi32(V[0], V[1]);
    const __m512i c = _mm512_unpacklo_epi32(V[2], V[3]), d = _mm512_unpackhi_epi32(V[2], V[3]);
    out[0] = _mm512_unpacklo_epi64(a, c);
    out[1] = _mm512_unpackhi_epi64(a, c);
    out[2] = _mm512_unpacklo_epi64(b, d);
    out[3] = _mm512_unpackhi_epi64(b, d);
}

/* Row pointers of rows [r0, r0 + nr); dead rows repeat row r0 so every load stays in bounds. */
TL_INLINE void kq5_rows(const tl_gemm_args *a, int64_t r0, int nr, const uint8_t *rp[16]) {
    for (int r = 0; r < 16; r++) rp[r] = a->w + (r0 + (r < nr ? r : 0)) * a->ldw;
}

/* q5_0 block b of 16 rows: w[t] lane r = row r's quants 4t..4t+3 (unsigned 0..31), d per lane
 * (0 in dead lanes). The block head (d, qh) comes from a transpose of each row's first 16 bytes;
 * the high bits 4t..4t+3 of qh become bit 4 of 4 bytes through a 16-entry vpermd table (vpermd
 * reads only the low 4 bits of each index lane, so qh >> 4t needs no mask). */
TL_INLINE void kq5_q5_0_load16(const uint8_t *const *rp, __mmask16 live, int64_t b, __m512i w[8], __m512 *d) {
    const int64_t o = b * TL_Q5_0_BYTES;
    __m512i hd[4], u[4];
    kq5_t16(rp, o, hd);     /* dword 0 = d | qh[0..1] << 16, dword 1 = qh[2..3] | qs[0..1] << 16 */
    kq5_t16(rp, o + 6, u);  /* the 16 quant bytes */
    *d = _mm512_maskz_mov_ps(live, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(hd[0])));
    const __m512i qh = _mm512_or_si512(_mm512_srli_epi32(hd[0], 16), _mm512_slli_epi32(hd[1], 16));
    const __m512i lut = _mm512_setr_epi32(0x00000000, 0x00000010, 0x00001000, 0x00001010, 0x00100000, 0x00100010,
                                          0x00101000, 0x00101010, 0x10000000, 0x10000010, 0x10001000, 0x10001010,
                                          0x10100000, 0x10100010, 0x10101000, 0x10101010);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int t = 0; t < 4; t++) {
        w[t] = _mm512_and_si512(u[t], m4);
        w[t + 4] = _mm512_and_si512(_mm512_srli_epi16(u[t], 4), m4);
    }
    for (int t = 0; t < 8; t++)
        w[t] = _mm512_or_si512(w[t], _mm512_permutexvar_epi32(_mm512_srli_epi32(qh, 4 * t), lut));
}

/* ---- panel packing ------------------------------------------------------------------------------ */
static void kq5_pack_q5_0(const tl_gemm_args *a, int64_t r0, int nr, uint8_t *buf) {
    const int64_t nb = a->k / TL_QK;
    const uint8_t *rp[16];
    kq5_rows(a, r0, nr, rp);
    const __mmask16 live = (__mmask16)((1u << nr) - 1);
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *o = buf + b * KQ5_Q50_BLK;
        __m512i w[8];
        __m512 d;
        kq5_q5_0_load16(rp, live, b, w, &d);
        for (int t = 0; t < 8; t++) _mm512_store_si512((void *)(o + 64 * t), w[t]);
        _mm512_store_ps((float *)(o + 512), d);
    }
}
/* K panel: 16-row register transposes of the quants and of the block heads (d, dmin, scale
 * fields), decoded in lanes; dead rows repeat a live row and get d = dmin = 0. */
static void kq5_pack_k(const int WT, const tl_gemm_args *a, int64_t r0, int nr, uint8_t *buf) {
    const int64_t nb = a->k / TL_QK_K;
    const int bytes = kq5_bytes(WT);
    const uint8_t *rp[16];
    kq5_rows(a, r0, nr, rp);
    const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(0x03), m1 = _mm512_set1_epi8(0x01);
    const __mmask16 live = (__mmask16)((1u << nr) - 1);
    const __m512i lo16 = _mm512_set1_epi32(0xffff), b6 = _mm512_set1_epi32(63), b4 = _mm512_set1_epi32(15),
                  b2 = _mm512_set1_epi32(3);
    for (int64_t b = 0; b < nb; b++) {
        __m512i *W = (__m512i *)(buf + b * KQ5_KSB);
        __m512i *SC = W + 64, *MP = W + 80;
        float *D = (float *)(W + 88), *DM = (float *)(W + 89);
        const int64_t o = b * bytes;
        __m512i S[4];
        if (WT == TL_Q6_K) {
            __m512i E[4];
            kq5_t16(rp, o + 192, S);  /* int8 scales: dword t = sc[4t..4t+3] */
            kq5_t16(rp, o + 194, E);  /* dword 3 = sc[14], sc[15], d */
            for (int s = 0; s < 16; s++)
                SC[s] = _mm512_srai_epi32(_mm512_slli_epi32(S[s / 4], 24 - 8 * (s % 4)), 24);
            for (int p = 0; p < 8; p++)
                MP[p] = _mm512_or_si512(_mm512_and_si512(SC[2 * p], lo16), _mm512_slli_epi32(SC[2 * p + 1], 16));
            _mm512_store_ps(D, _mm512_maskz_mov_ps(live, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(E[3], 16)))));
        } else {
            kq5_t16(rp, o, S);  /* dword 0 = d | dmin << 16; 1, 2, 3 = the 12 scale bytes */
            _mm512_store_ps(D, _mm512_maskz_mov_ps(live, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(S[0]))));
            _mm512_store_ps(DM, _mm512_maskz_mov_ps(live, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(S[0], 16)))));
            for (int j = 0; j < 4; j++) {
                const __m512i s0 = _mm512_srli_epi32(S[1], 8 * j), s1 = _mm512_srli_epi32(S[2], 8 * j),
                              s2 = _mm512_srli_epi32(S[3], 8 * j);
                const __m512i sc_lo = _mm512_and_si512(s0, b6), mn_lo = _mm512_and_si512(s1, b6);
                const __m512i sc_hi = _mm512_or_si512(_mm512_and_si512(s2, b4),
                                                      _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(s0, 6), b2), 4));
                const __m512i mn_hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(s2, 4), b4),
                                                      _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(s1, 6), b2), 4));
                SC[j] = sc_lo;
                SC[j + 4] = sc_hi;
                MP[j] = _mm512_or_si512(mn_lo, _mm512_slli_epi32(mn_lo, 16));
                MP[j + 4] = _mm512_or_si512(mn_hi, _mm512_slli_epi32(mn_hi, 16));
            }
        }
        if (WT == TL_Q6_K) {
            for (int h = 0; h < 2; h++) {
                __m512i L[16], H[8];
                for (int c = 0; c < 4; c++) kq5_t16(rp, o + 64 * h + 16 * c, L + 4 * c);
                for (int c = 0; c < 2; c++) kq5_t16(rp, o + 128 + 32 * h + 16 * c, H + 4 * c);
                for (int t = 0; t < 8; t++) {
                    const __m512i h0 = _mm512_and_si512(H[t], m2), h1 = _mm512_and_si512(_mm512_srli_epi16(H[t], 2), m2);
                    const __m512i h2 = _mm512_and_si512(_mm512_srli_epi16(H[t], 4), m2);
                    const __m512i h3 = _mm512_and_si512(_mm512_srli_epi16(H[t], 6), m2);
                    W[32 * h + t] = _mm512_or_si512(_mm512_and_si512(L[t], m4), _mm512_slli_epi16(h0, 4));
                    W[32 * h + 8 + t] = _mm512_or_si512(_mm512_and_si512(L[8 + t], m4), _mm512_slli_epi16(h1, 4));
                    W[32 * h + 16 + t] =
                        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(L[t], 4), m4), _mm512_slli_epi16(h2, 4));
                    W[32 * h + 24 + t] =
                        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(L[8 + t], 4), m4), _mm512_slli_epi16(h3, 4));
                }
            }
        } else {
            const int64_t qo = o + (WT == TL_Q4_K ? 16 : 48);
            __m512i H[8];
            if (WT == TL_Q5_K) {
                kq5_t16(rp, o + 16, H);
                kq5_t16(rp, o + 32, H + 4);
            }
            for (int c = 0; c < 4; c++) {
                __m512i U[8];
                kq5_t16(rp, qo + 32 * c, U);
                kq5_t16(rp, qo + 32 * c + 16, U + 4);
                for (int u = 0; u < 8; u++) {
                    __m512i lo = _mm512_and_si512(U[u], m4), hi = _mm512_and_si512(_mm512_srli_epi16(U[u], 4), m4);
                    if (WT == TL_Q5_K) {
                        lo = _mm512_or_si512(lo, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(H[u], 2 * c), m1), 4));
                        hi = _mm512_or_si512(hi, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(H[u], 2 * c + 1), m1), 4));
                    }
                    W[16 * c + u] = lo;
                    W[16 * c + 8 + u] = hi;
                }
            }
        }
    }
}

/* ---- panel x tokens --------------------------------------------------------------------------- */
TL_INLINE void kq5_store(const int RN, const tl_gemm_args *a, const __m512 *y, int64_t i0, int nr, int64_t j0) {
    const __mmask16 rmask = (__mmask16)((1u << nr) - 1);
    for (int j = 0; j < RN; j++) {
        float *yp = a->y + (j0 + j) * a->ldy + i0;
        if (nr == KQ5_R) _mm512_storeu_ps(yp, y[j]);
        else _mm512_mask_storeu_ps(yp, rmask, y[j]);
    }
}

TL_INLINE void kq5_q5_0_tile(const int RN, const tl_gemm_args *a, const uint8_t *panel, int64_t i0, int nr,
                             int64_t j0) {
    const int64_t k = a->k, nb = k / TL_QK;
    __m512 y[KQ5_RN];
    const uint8_t *xr[KQ5_RN];
    for (int j = 0; j < RN; j++) {
        y[j] = _mm512_setzero_ps();
        xr[j] = a->act + (j0 + j) * a->ldact;
    }
    const uint8_t *P = panel;
    for (int64_t b = 0; b < nb; b++, P += KQ5_Q50_BLK) {
        __m512i w[8];
        for (int t = 0; t < 8; t++) w[t] = _mm512_load_si512((const void *)(P + 64 * t));
        const __m512 d = _mm512_load_ps((const float *)(P + 512));
        for (int j = 0; j < RN; j++) {
            const int32_t *xq = (const int32_t *)(xr[j] + 32 * b);
            const float *dx = (const float *)(xr[j] + k);
            __m512i acc = _mm512_set1_epi32(-16 * ((const int32_t *)(dx + 2 * nb))[b]);
            for (int t = 0; t < 8; t++) acc = _mm512_dpbusd_epi32(acc, w[t], _mm512_set1_epi32(xq[t]));
            y[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(d, _mm512_set1_ps(dx[b])), y[j]);
        }
    }
    kq5_store(RN, a, y, i0, nr, j0);
}

TL_INLINE void kq5_k_tile(const int WT, const int RN, const tl_gemm_args *a, const uint8_t *panel, int64_t i0,
                          int nr, int64_t j0) {
    const int64_t k = a->k, nb = k / TL_QK_K;
    const int NS = WT == TL_Q6_K ? 16 : 8; /* sub-blocks (runs with their own scale) */
    const int TS = 64 / NS;                /* zmm steps per sub-block */
    __m512 y[KQ5_RN];
    const uint8_t *xr[KQ5_RN];
    for (int j = 0; j < RN; j++) {
        y[j] = _mm512_setzero_ps();
        xr[j] = a->act + (j0 + j) * a->ldact;
    }
    const uint8_t *P = panel;
    for (int64_t b = 0; b < nb; b++, P += KQ5_KSB) {
        __m512i isum[KQ5_RN];
        for (int j = 0; j < RN; j++) isum[j] = _mm512_setzero_si512();
        for (int s = 0; s < NS; s++) {
            __m512i w[8];
            for (int t = 0; t < TS; t++) w[t] = _mm512_load_si512((const void *)(P + 64 * (TS * s + t)));
            const __m512i sc = _mm512_load_si512((const void *)(P + 4096 + 64 * s));
            for (int j = 0; j < RN; j++) {
                const int32_t *xq = (const int32_t *)(xr[j] + TL_QK_K * b) + TS * s;
                __m512i dot = _mm512_setzero_si512();
                for (int t = 0; t < TS; t++) dot = _mm512_dpbusd_epi32(dot, w[t], _mm512_set1_epi32(xq[t]));
                isum[j] = _mm512_add_epi32(isum[j], _mm512_mullo_epi32(dot, sc));
            }
        }
        const __m512 d = _mm512_load_ps((const float *)(P + 5632));
        const __m512 dm = _mm512_load_ps((const float *)(P + 5696));
        for (int j = 0; j < RN; j++) {
            const int32_t *bs = (const int32_t *)(tl_q8ka_bsum(xr[j], k) + 16 * b); /* int16 pairs */
            const float dx = tl_q8ka_d(xr[j], k)[b];
            __m512i msum = _mm512_setzero_si512();
            for (int p = 0; p < 8; p++)
                msum = _mm512_add_epi32(msum, _mm512_madd_epi16(_mm512_load_si512((const void *)(P + 5120 + 64 * p)),
                                                                _mm512_set1_epi32(bs[p])));
            const __m512 vdx = _mm512_set1_ps(dx);
            if (WT == TL_Q6_K) {
                __m512i t = _mm512_sub_epi32(isum[j], _mm512_slli_epi32(msum, 5));
                y[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(d, vdx), y[j]);
            } else {
                y[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[j]), _mm512_mul_ps(d, vdx), y[j]);
                y[j] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(dm, vdx), y[j]);
            }
        }
    }
    kq5_store(RN, a, y, i0, nr, j0);
}

#define KQ5_TOKENS(CALL)                                                                             \
    do {                                                                                             \
        int64_t j = j0;                                                                              \
        for (; j + KQ5_RN <= j1; j += KQ5_RN) CALL(KQ5_RN);                                          \
        switch ((int)(j1 - j)) {                                                                     \
        case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break;                      \
        case 4: CALL(4); break; case 5: CALL(5); break; case 6: CALL(6); break;                      \
        case 7: CALL(7); break; default: break;                                                      \
        }                                                                                            \
    } while (0)

TL_INLINE void kq5_block_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const size_t need = WT == TL_Q5_0 ? (size_t)(a->k / TL_QK) * KQ5_Q50_BLK : (size_t)(a->k / TL_QK_K) * KQ5_KSB;
    uint8_t *buf = x86_scratch(need);
    if (!buf) { /* no scratch: the plain-C kernels (same arithmetic; q5_0 reads only qs and d) */
        const tl_ukernel *uk = tl_kq_portable_lookup(WT);
        for (int64_t i = i0; i < i1; i += uk->rm)
            for (int64_t j = j0; j < j1; j += uk->rn)
                uk->tile(a, i, j, (int)TL_MIN((int64_t)uk->rm, i1 - i), (int)TL_MIN((int64_t)uk->rn, j1 - j));
        return;
    }
    for (int64_t i = i0; i < i1; i += KQ5_R) {
        const int nr = (int)TL_MIN((int64_t)KQ5_R, i1 - i);
        if (WT == TL_Q5_0) {
            kq5_pack_q5_0(a, i, nr, buf);
#define C_(N) kq5_q5_0_tile(N, a, buf, i, nr, j)
            KQ5_TOKENS(C_);
#undef C_
        } else {
            kq5_pack_k(WT, a, i, nr, buf);
#define C_(N) kq5_k_tile(WT, N, a, buf, i, nr, j)
            KQ5_TOKENS(C_);
#undef C_
        }
    }
}

/* ---- n == 1: row by row --------------------------------------------------------------------- */
/* 32 q5_0 quants of one block (unsigned 0..31) in natural order. */
TL_INLINE __m256i kq5_q5_0_w(const uint8_t *blk) {
    uint32_t qh;
    memcpy(&qh, blk + 2, 4);
    const __m128i qs = _mm_loadu_si128((const __m128i *)(blk + 6));
    const __m128i m4 = _mm_set1_epi8(0x0f);
    __m256i w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(qs, 4), m4), _mm_and_si128(qs, m4));
    return _mm256_or_si256(w, _mm256_maskz_mov_epi8((__mmask32)qh, _mm256_set1_epi8(0x10)));
}

/* 16 rows at a time, straight from the GGUF rows into registers (same arithmetic as the panel). */
static void kq5_gemv_q5_0(const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t k = a->k, nb = k / TL_QK;
    const int32_t *xq = (const int32_t *)a->act;
    const float *dx = (const float *)(a->act + k);
    const int32_t *is = (const int32_t *)(dx + 2 * nb);
    for (int64_t i = i0; i < i1; i += KQ5_R) {
        const int nr = (int)TL_MIN((int64_t)KQ5_R, i1 - i);
        const uint8_t *rp[16];
        kq5_rows(a, i, nr, rp);
        const __mmask16 live = (__mmask16)((1u << nr) - 1);
        __m512 y = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            __m512i w[8];
            __m512 d;
            kq5_q5_0_load16(rp, live, b, w, &d);
            __m512i acc = _mm512_set1_epi32(-16 * is[b]);
            for (int t = 0; t < 8; t++) acc = _mm512_dpbusd_epi32(acc, w[t], _mm512_set1_epi32(xq[8 * b + t]));
            y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(d, _mm512_set1_ps(dx[b])), y);
        }
        if (nr == KQ5_R) _mm512_storeu_ps(a->y + i, y);
        else _mm512_mask_storeu_ps(a->y + i, live, y);
    }
}

/* K-quants, n == 1: each 16-row panel is decoded into scratch (vector code above) and run
 * through the panel kernel with one token: the same arithmetic as n > 1. */
TL_INLINE void kq5_gemv_k(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1) {
    kq5_block_impl(WT, a, i0, i1, 0, 1);
}

/* q6_K, n == 1: row by row (measured faster than the panel path for q6_K: 94 vs 54 GFLOP/s per
 * CPU at 640x2048), 64 values per vpdpbusd, per-lane f32 accumulator reduced once per row. */
static void kq5_gemv_q6k(const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t k = a->k, nb = k / TL_QK_K;
    const int8_t *xq = (const int8_t *)a->act;
    const float *dx = tl_q8ka_d(a->act, k);
    const int16_t *bsum = tl_q8ka_bsum(a->act, k);
    const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(0x03);
    const __m128i g0 = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m128i g1 = _mm_add_epi8(g0, _mm_set1_epi8(4)), g2 = _mm_add_epi8(g0, _mm_set1_epi8(8)),
                  g3 = _mm_add_epi8(g0, _mm_set1_epi8(12));
    for (int64_t i = i0; i < i1; i++) {
        const uint8_t *row = a->w + i * a->ldw;
        __m512 facc = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * TL_Q6_K_BYTES;
            const __m128i sc = _mm_loadu_si128((const __m128i *)(blk + 192));
            const __m512i sg[4] = {_mm512_cvtepi8_epi32(_mm_shuffle_epi8(sc, g0)), _mm512_cvtepi8_epi32(_mm_shuffle_epi8(sc, g1)),
                                   _mm512_cvtepi8_epi32(_mm_shuffle_epi8(sc, g2)), _mm512_cvtepi8_epi32(_mm_shuffle_epi8(sc, g3))};
            const int8_t *x = xq + TL_QK_K * b;
            __m512i isum = _mm512_setzero_si512();
            for (int h = 0; h < 2; h++) {
                __m512i ql = _mm512_loadu_si512((const void *)(blk + 64 * h));
                __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h));
                __m512i qh2 = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
                __m512i A = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16(_mm512_and_si512(qh2, m2), 4));
                __m512i B = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                            _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh2, 4), m2), 4));
                __m512i dA = _mm512_dpbusd_epi32(_mm512_setzero_si512(), A, _mm512_loadu_si512((const void *)(x + 128 * h)));
                __m512i dB = _mm512_dpbusd_epi32(_mm512_setzero_si512(), B, _mm512_loadu_si512((const void *)(x + 128 * h + 64)));
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dA, sg[2 * h]));
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dB, sg[2 * h + 1]));
            }
            /* -32 * sum_r sc_r * bsum_r, in lanes 0..7 */
            __m256i ms = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), _mm256_loadu_si256((const __m256i *)(bsum + 16 * b)));
            isum = _mm512_sub_epi32(isum, _mm512_zextsi256_si512(_mm256_slli_epi32(ms, 5)));
            facc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(tl_f16_to_f32(tl_load_u16(blk + 208)) * dx[b]), facc);
        }
        a->y[i] = _mm512_reduce_add_ps(facc);
    }
}

/* ---- table entries ------------------------------------------------------------------------- */
static void kq5_q5_0_block(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    kq5_block_impl(TL_Q5_0, a, i0, i1, j0, j1);
}
static void kq5_q5_0_tilefn(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {
    kq5_block_impl(TL_Q5_0, a, i0, i0 + rm, j0, j0 + rn);
}
#define KQ5_FUNCS(NAME, WT)                                                                           \
    static void kq5_##NAME##_block(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) { \
        kq5_block_impl(WT, a, i0, i1, j0, j1);                                                        \
    }                                                                                                 \
    static void kq5_##NAME##_tilefn(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {  \
        kq5_block_impl(WT, a, i0, i0 + rm, j0, j0 + rn);                                              \
    }
KQ5_FUNCS(q4_k, TL_Q4_K)
KQ5_FUNCS(q5_k, TL_Q5_K)
KQ5_FUNCS(q6_k, TL_Q6_K)
static void kq5_gemv_q4_k(const tl_gemm_args *a, int64_t i0, int64_t i1) { kq5_gemv_k(TL_Q4_K, a, i0, i1); }
static void kq5_gemv_q5_k(const tl_gemm_args *a, int64_t i0, int64_t i1) { kq5_gemv_k(TL_Q5_K, a, i0, i1); }

/* q5_0 shares the x86 q8 activation layout (and so a Prepared) with q8_0 / q4_0 / q4_1. */
static const tl_ukernel kq5_uk_q5_0 = {KQ5_R, KQ5_RN, kq5_q5_0_tilefn, KQ5_R, kq5_gemv_q5_0, kq5_q5_0_block,
                                      x86_qa_row_bytes, x86_qa_prepare};
static const tl_ukernel kq5_uk_q4_k = {KQ5_R, KQ5_RN, kq5_q4_k_tilefn, KQ5_R, kq5_gemv_q4_k, kq5_q4_k_block, NULL, NULL};
static const tl_ukernel kq5_uk_q5_k = {KQ5_R, KQ5_RN, kq5_q5_k_tilefn, KQ5_R, kq5_gemv_q5_k, kq5_q5_k_block, NULL, NULL};
static const tl_ukernel kq5_uk_q6_k = {KQ5_R, KQ5_RN, kq5_q6_k_tilefn, 1, kq5_gemv_q6k, kq5_q6_k_block, NULL, NULL};

/* Kernel for q5_0 / q4_K / q5_K / q6_K, NULL for every other type. */
static inline const tl_ukernel *tl_kq_avx512_lookup(int wtype) {
    switch (wtype) {
    case TL_Q5_0: return &kq5_uk_q5_0;
    case TL_Q4_K: return &kq5_uk_q4_k;
    case TL_Q5_K: return &kq5_uk_q5_k;
    case TL_Q6_K: return &kq5_uk_q6_k;
    default: return NULL;
    }
}

#endif
