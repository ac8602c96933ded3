/* avx512_kquants.c — AVX-512 VNNI kernels for q5_0, q4_K, q5_K and q6_K weights.
 *
 * n > 1 (block): weights are decoded per 16-row panel into thread-local scratch, "row in lane":
 * per 4 consecutive k-values one zmm whose lane r holds row r's 4 unsigned quants (q5_0: q,
 * 0..31; q4_K 0..15; q5_K 0..31; q6_K 0..63), plus per-row scales. A token's run dot is then
 * vpdpbusd against 4-byte broadcasts of its int8 activations: 16 rows' exact int32 dots in the 16
 * lanes. The panel is decoded once per driver block and reused for every token (8 per register
 * tile).
 * Activations: the shared q8 act layout (one f32 scale d_x and sum s_x per 16 values, int16 isum).
 *   q5_0: per 32-block two int32 accumulators (one per 16-value group) starting at -16 * isum_g
 *     (exact offset), 4 vpdpbusd each; y += d_w * (d_x0 * float(acc0) + d_x1 * float(acc1)).
 *   K-quants: per 16-value group an exact int32 dot (4 vpdpbusd), then f32:
 *     f += sc * (d_x,g * dot_g) (q4_K/q5_K: the sub-block's two groups share sc), q6_K:
 *     f += sc * (d_x,g * dot_g - 32 * s_x,g); per super-block y += d_w * f (- dmin_w * sum_j
 *     m_j * (s_x,2j + s_x,2j+1) for q4_K/q5_K). sc, m are exact small integers held as f32.
 * n == 1 (gemv): q5_0 decodes 16 rows per block straight into registers (register transposes of
 * the GGUF rows) and runs the same lane arithmetic; K-quants decode each 16-row panel into
 * scratch (same vector decoder) and run the panel kernel with one token. Both prefetch the next
 * panel from DRAM (the 16 row streams defeat the hardware prefetchers).
 * Exact integers per group, then f32 in group / super-block order: results depend only on k, not
 * on the thread count.
 */
#include <immintrin.h>

#include "avx512.h"
#include "kquants.h"
#include "x86_common.h"

#define KQ_R 16  /* rows per panel */
#define KQ_RN 8  /* tokens per register tile */
#define KQ_Q50_BLK (512 + 64)                 /* q5_0 panel block: 8 zmm quants + 16 d */
#define KQ_KSB (4096 + 1024 + 512 + 64 + 64)  /* K panel super-block: W 64 zmm, SC 16, MN 8 (f32), D, DM */

TL_INLINE int kq_bytes(const int WT) {
    return WT == TL_Q5_0 ? TL_Q5_0_BYTES : WT == TL_Q4_K ? TL_Q4_K_BYTES : WT == TL_Q5_K ? TL_Q5_K_BYTES
                                                                                           : TL_Q6_K_BYTES;
}

/* Activations: the shared q8 act layout (tl_internal.h; x86_common.h's x86_qa_* is the same bytes),
 * converted by avx512_q8.c's tl_avx512_q8_act_prepare, so one Prepared serves q8_0 / q4_0 / q5_0 and
 * the K-quants alike. */

/* ---- 16-row register loads (row in lane) -------------------------------------------------------- */
/* 16 rows' 16-byte chunks at rp[r] + off -> out[t] lane r = dword t of that chunk of row r. V[q]
 * holds rows q, q+4, q+8, q+12 in its 128-bit lanes, so after the 32- and 64-bit unpacks lane
 * 4L + q is row 4L + q. */
TL_INLINE void kq_t16(const uint8_t *const *rp, int64_t off, __m512i out[4]) {
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
TL_INLINE void kq_rows(const tl_gemm_args *a, int64_t r0, int nr, const uint8_t *rp[16]) {
    for (int r = 0; r < 16; r++) rp[r] = a->w + (r0 + (r < nr ? r : 0)) * a->ldw;
}

/* q5_0 block b of 16 rows: w[t] lane r = row r's quants 4t..4t+3 (unsigned 0..31), d per lane
 * (0 in dead lanes). The block head (d, qh) comes from a transpose of each row's first 16 bytes;
 * the high bits 4t..4t+3 of qh become bit 4 of 4 bytes through a 16-entry vpermd table (vpermd
 * reads only the low 4 bits of each index lane, so qh >> 4t needs no mask). */
TL_INLINE void kq_q5_0_load16(const uint8_t *const *rp, __mmask16 live, int64_t b, __m512i w[8], __m512 *d) {
    const int64_t o = b * TL_Q5_0_BYTES;
    __m512i hd[4], u[4];
    kq_t16(rp, o, hd);     /* dword 0 = d | qh[0..1] << 16, dword 1 = qh[2..3] | qs[0..1] << 16 */
    kq_t16(rp, o + 6, u);  /* the 16 quant bytes */
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

/* DRAM prefetch of the next panel: x86_common.h (x86_pf_*), KQ_R rows ahead. */

/* ---- panel packing ------------------------------------------------------------------------------ */
static void kq_pack_q5_0(const tl_gemm_args *a, int64_t r0, int nr, uint8_t *buf, const x86_pf *pf) {
    const int64_t nb = a->k / TL_QK;
    const uint8_t *rp[16];
    kq_rows(a, r0, nr, rp);
    const __mmask16 live = (__mmask16)((1u << nr) - 1);
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *o = buf + b * KQ_Q50_BLK;
        x86_pf_block(pf, b);
        __m512i w[8];
        __m512 d;
        kq_q5_0_load16(rp, live, b, w, &d);
        for (int t = 0; t < 8; t++) _mm512_store_si512((void *)(o + 64 * t), w[t]);
        _mm512_store_ps((float *)(o + 512), d);
    }
}
/* K panel: 16-row register transposes of the quants and of the block heads (d, dmin, scale
 * fields), decoded in lanes; dead rows repeat a live row and get d = dmin = 0. */
static void kq_pack_k(const int WT, const tl_gemm_args *a, int64_t r0, int nr, uint8_t *buf, const x86_pf *pf) {
    const int64_t nb = a->k / TL_QK_K;
    const int bytes = kq_bytes(WT);
    const uint8_t *rp[16];
    kq_rows(a, r0, nr, rp);
    const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(0x03), m1 = _mm512_set1_epi8(0x01);
    const __mmask16 live = (__mmask16)((1u << nr) - 1);
    const __m512i b6 = _mm512_set1_epi32(63), b4 = _mm512_set1_epi32(15),
                  b2 = _mm512_set1_epi32(3);
    for (int64_t b = 0; b < nb; b++) {
        __m512i *W = (__m512i *)(buf + b * KQ_KSB);
        __m512 *SC = (__m512 *)(W + 64), *MN = (__m512 *)(W + 80);
        float *D = (float *)(W + 88), *DM = (float *)(W + 89);
        const int64_t o = b * bytes;
        x86_pf_block(pf, b);
        __m512i S[4];
        if (WT == TL_Q6_K) {
            __m512i E[4];
            kq_t16(rp, o + 192, S);  /* int8 scales: dword t = sc[4t..4t+3] */
            kq_t16(rp, o + 194, E);  /* dword 3 = sc[14], sc[15], d */
            for (int s = 0; s < 16; s++)
                SC[s] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(S[s / 4], 24 - 8 * (s % 4)), 24));
            _mm512_store_ps(D, _mm512_maskz_mov_ps(live, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(E[3], 16)))));
        } else {
            kq_t16(rp, o, S);  /* dword 0 = d | dmin << 16; 1, 2, 3 = the 12 scale bytes */
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
                SC[j] = _mm512_cvtepi32_ps(sc_lo);
                SC[j + 4] = _mm512_cvtepi32_ps(sc_hi);
                MN[j] = _mm512_cvtepi32_ps(mn_lo);
                MN[j + 4] = _mm512_cvtepi32_ps(mn_hi);
            }
        }
        if (WT == TL_Q6_K) {
            for (int h = 0; h < 2; h++) {
                __m512i L[16], H[8];
                for (int c = 0; c < 4; c++) kq_t16(rp, o + 64 * h + 16 * c, L + 4 * c);
                for (int c = 0; c < 2; c++) kq_t16(rp, o + 128 + 32 * h + 16 * c, H + 4 * c);
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
                kq_t16(rp, o + 16, H);
                kq_t16(rp, o + 32, H + 4);
            }
            for (int c = 0; c < 4; c++) {
                __m512i U[8];
                kq_t16(rp, qo + 32 * c, U);
                kq_t16(rp, qo + 32 * c + 16, U + 4);
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
TL_INLINE void kq_store(const int RN, const tl_gemm_args *a, const __m512 *y, int64_t i0, int nr, int64_t j0) {
    const __mmask16 rmask = (__mmask16)((1u << nr) - 1);
    for (int j = 0; j < RN; j++) {
        float *yp = a->y + (j0 + j) * a->ldy + i0;
        if (nr == KQ_R) _mm512_storeu_ps(yp, y[j]);
        else _mm512_mask_storeu_ps(yp, rmask, y[j]);
    }
}

TL_INLINE void kq_q5_0_tile(const int RN, const tl_gemm_args *a, const uint8_t *panel, int64_t i0, int nr,
                             int64_t j0) {
    const int64_t k = a->k, nb = k / TL_QK;
    __m512 y[KQ_RN];
    const uint8_t *xr[KQ_RN];
    for (int j = 0; j < RN; j++) {
        y[j] = _mm512_setzero_ps();
        xr[j] = a->act + (j0 + j) * a->ldact;
    }
    const uint8_t *P = panel;
    for (int64_t b = 0; b < nb; b++, P += KQ_Q50_BLK) {
        __m512i w[8];
        for (int t = 0; t < 8; t++) w[t] = _mm512_load_si512((const void *)(P + 64 * t));
        const __m512 d = _mm512_load_ps((const float *)(P + 512));
        for (int j = 0; j < RN; j++) {
            const int32_t *xq = (const int32_t *)(xr[j] + 32 * b);
            const float *dx = tl_q8a_d(xr[j], k) + 2 * b;
            const int16_t *is = tl_q8a_isum(xr[j], k) + 2 * b;
            __m512i a0 = _mm512_set1_epi32(-16 * is[0]), a1 = _mm512_set1_epi32(-16 * is[1]);
            for (int t = 0; t < 4; t++) {
                a0 = _mm512_dpbusd_epi32(a0, w[t], _mm512_set1_epi32(xq[t]));
                a1 = _mm512_dpbusd_epi32(a1, w[t + 4], _mm512_set1_epi32(xq[t + 4]));
            }
            __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), _mm512_set1_ps(dx[1]),
                                       _mm512_mul_ps(_mm512_cvtepi32_ps(a0), _mm512_set1_ps(dx[0])));
            y[j] = _mm512_fmadd_ps(f, d, y[j]);
        }
    }
    kq_store(RN, a, y, i0, nr, j0);
}

TL_INLINE void kq_k_tile(const int WT, const int RN, const tl_gemm_args *a, const uint8_t *panel, int64_t i0,
                          int nr, int64_t j0) {
    const int64_t k = a->k, nb = k / TL_QK_K;
    const int NS = WT == TL_Q6_K ? 16 : 8; /* sub-blocks (runs with their own scale) */
    const int TS = 64 / NS;                /* zmm steps per sub-block: 4 per activation group */
    __m512 y[KQ_RN];
    const uint8_t *xr[KQ_RN];
    for (int j = 0; j < RN; j++) {
        y[j] = _mm512_setzero_ps();
        xr[j] = a->act + (j0 + j) * a->ldact;
    }
    const uint8_t *P = panel;
    for (int64_t b = 0; b < nb; b++, P += KQ_KSB) {
        __m512 f[KQ_RN];
        for (int j = 0; j < RN; j++) f[j] = _mm512_setzero_ps();
        for (int s = 0; s < NS; s++) {
            __m512i w[8];
            for (int t = 0; t < TS; t++) w[t] = _mm512_load_si512((const void *)(P + 64 * (TS * s + t)));
            const __m512 sc = _mm512_load_ps((const float *)(P + 4096 + 64 * s));
            for (int j = 0; j < RN; j++) {
                const int32_t *xq = (const int32_t *)(xr[j] + TL_QK_K * b) + TS * s;
                const float *dx = tl_q8a_d(xr[j], k) + 16 * b + (TS / 4) * s;
                __m512i d0 = _mm512_setzero_si512();
                for (int t = 0; t < 4; t++) d0 = _mm512_dpbusd_epi32(d0, w[t], _mm512_set1_epi32(xq[t]));
                __m512 g;
                if (WT == TL_Q6_K) { /* one group: dx * (dot - 32 * isum) = dx * dot - 32 * s */
                    const float sx = tl_q8a_s(xr[j], k)[16 * b + s];
                    g = _mm512_fmsub_ps(_mm512_cvtepi32_ps(d0), _mm512_set1_ps(dx[0]), _mm512_set1_ps(32.0f * sx));
                } else {                /* two groups share sc */
                    __m512i d1 = _mm512_setzero_si512();
                    for (int t = 4; t < 8; t++) d1 = _mm512_dpbusd_epi32(d1, w[t], _mm512_set1_epi32(xq[t]));
                    g = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_set1_ps(dx[1]),
                                        _mm512_mul_ps(_mm512_cvtepi32_ps(d0), _mm512_set1_ps(dx[0])));
                }
                f[j] = _mm512_fmadd_ps(g, sc, f[j]);
            }
        }
        const __m512 d = _mm512_load_ps((const float *)(P + 5632));
        if (WT == TL_Q6_K) {
            for (int j = 0; j < RN; j++) y[j] = _mm512_fmadd_ps(f[j], d, y[j]);
        } else {
            const __m512 dm = _mm512_load_ps((const float *)(P + 5696));
            for (int j = 0; j < RN; j++) {
                const float *sx = tl_q8a_s(xr[j], k) + 16 * b;
                __m512 mn = _mm512_setzero_ps();
                for (int s = 0; s < 8; s++)
                    mn = _mm512_fmadd_ps(_mm512_load_ps((const float *)(P + 5120 + 64 * s)),
                                         _mm512_set1_ps(sx[2 * s] + sx[2 * s + 1]), mn);
                y[j] = _mm512_fnmadd_ps(mn, dm, _mm512_fmadd_ps(f[j], d, y[j]));
            }
        }
    }
    kq_store(RN, a, y, i0, nr, j0);
}

#define KQ_TOKENS(CALL)                                                                             \
    do {                                                                                             \
        int64_t j = j0;                                                                              \
        for (; j + KQ_RN <= j1; j += KQ_RN) CALL(KQ_RN);                                          \
        switch ((int)(j1 - j)) {                                                                     \
        case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break;                      \
        case 4: CALL(4); break; case 5: CALL(5); break; case 6: CALL(6); break;                      \
        case 7: CALL(7); break; default: break;                                                      \
        }                                                                                            \
    } while (0)

TL_INLINE void kq_block_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const size_t need = WT == TL_Q5_0 ? (size_t)(a->k / TL_QK) * KQ_Q50_BLK : (size_t)(a->k / TL_QK_K) * KQ_KSB;
    uint8_t *buf = x86_scratch(need);
    if (!buf) { /* no scratch: the plain-C kernels (same arithmetic; q5_0 reads only qs and d) */
        const tl_ukernel *uk = tl_kq_portable_lookup(WT);
        for (int64_t i = i0; i < i1; i += uk->rm)
            for (int64_t j = j0; j < j1; j += uk->rn)
                uk->tile(a, i, j, (int)TL_MIN((int64_t)uk->rm, i1 - i), (int)TL_MIN((int64_t)uk->rn, j1 - j));
        return;
    }
    for (int64_t i = i0; i < i1; i += KQ_R) {
        const int nr = (int)TL_MIN((int64_t)KQ_R, i1 - i);
        const x86_pf pf = x86_pf_next(a, i, i1, KQ_R, WT == TL_Q5_0 ? a->k / TL_QK : a->k / TL_QK_K);
        if (WT == TL_Q5_0) {
            kq_pack_q5_0(a, i, nr, buf, &pf);
#define C_(N) kq_q5_0_tile(N, a, buf, i, nr, j)
            KQ_TOKENS(C_);
#undef C_
        } else {
            kq_pack_k(WT, a, i, nr, buf, &pf);
#define C_(N) kq_k_tile(WT, N, a, buf, i, nr, j)
            KQ_TOKENS(C_);
#undef C_
        }
    }
}

/* ---- n == 1: row by row --------------------------------------------------------------------- */
/* 32 q5_0 quants of one block (unsigned 0..31) in natural order. */
TL_INLINE __m256i kq_q5_0_w(const uint8_t *blk) {
    uint32_t qh;
    memcpy(&qh, blk + 2, 4);
    const __m128i qs = _mm_loadu_si128((const __m128i *)(blk + 6));
    const __m128i m4 = _mm_set1_epi8(0x0f);
    __m256i w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(qs, 4), m4), _mm_and_si128(qs, m4));
    return _mm256_or_si256(w, _mm256_maskz_mov_epi8((__mmask32)qh, _mm256_set1_epi8(0x10)));
}

/* 16 rows at a time, straight from the GGUF rows into registers (same arithmetic as the panel). */
static void kq_gemv_q5_0(const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t k = a->k, nb = k / TL_QK;
    const int32_t *xq = (const int32_t *)a->act;
    const float *dx = tl_q8a_d(a->act, k);
    const int16_t *is = tl_q8a_isum(a->act, k);
    for (int64_t i = i0; i < i1; i += KQ_R) {
        const int nr = (int)TL_MIN((int64_t)KQ_R, i1 - i);
        const uint8_t *rp[16];
        kq_rows(a, i, nr, rp);
        const __mmask16 live = (__mmask16)((1u << nr) - 1);
        const x86_pf pf = x86_pf_next(a, i, i1, KQ_R, nb);
        __m512 y = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            x86_pf_block(&pf, b);
            __m512i w[8];
            __m512 d;
            kq_q5_0_load16(rp, live, b, w, &d);
            __m512i a0 = _mm512_set1_epi32(-16 * is[2 * b]), a1 = _mm512_set1_epi32(-16 * is[2 * b + 1]);
            for (int t = 0; t < 4; t++) {
                a0 = _mm512_dpbusd_epi32(a0, w[t], _mm512_set1_epi32(xq[8 * b + t]));
                a1 = _mm512_dpbusd_epi32(a1, w[t + 4], _mm512_set1_epi32(xq[8 * b + t + 4]));
            }
            __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), _mm512_set1_ps(dx[2 * b + 1]),
                                       _mm512_mul_ps(_mm512_cvtepi32_ps(a0), _mm512_set1_ps(dx[2 * b])));
            y = _mm512_fmadd_ps(f, d, y);
        }
        if (nr == KQ_R) _mm512_storeu_ps(a->y + i, y);
        else _mm512_mask_storeu_ps(a->y + i, live, y);
    }
}

/* K-quants, n == 1: each 16-row panel is decoded into scratch (vector code above) and run
 * through the panel kernel with one token: the same arithmetic as n > 1. */
TL_INLINE void kq_gemv_k(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1) {
    /* the chunk's first panel was prefetched by nobody: all its lines at once (more misses in flight
     * than the 16 row streams' demand loads make; measured to pay for the K-quant gemv) */
    x86_pf_rows(a, i0, TL_MIN(i0 + KQ_R, i1));
    kq_block_impl(WT, a, i0, i1, 0, 1);
}

/* ---- table entries ------------------------------------------------------------------------- */
static void kq_q5_0_block(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    kq_block_impl(TL_Q5_0, a, i0, i1, j0, j1);
}
static void kq_q5_0_tilefn(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {
    kq_block_impl(TL_Q5_0, a, i0, i0 + rm, j0, j0 + rn);
}
#define KQ_FUNCS(NAME, WT)                                                                           \
    static void kq_##NAME##_block(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) { \
        kq_block_impl(WT, a, i0, i1, j0, j1);                                                        \
    }                                                                                                 \
    static void kq_##NAME##_tilefn(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {  \
        kq_block_impl(WT, a, i0, i0 + rm, j0, j0 + rn);                                              \
    }
KQ_FUNCS(q4_k, TL_Q4_K)
KQ_FUNCS(q5_k, TL_Q5_K)
KQ_FUNCS(q6_k, TL_Q6_K)
static void kq_gemv_q4_k(const tl_gemm_args *a, int64_t i0, int64_t i1) { kq_gemv_k(TL_Q4_K, a, i0, i1); }
static void kq_gemv_q5_k(const tl_gemm_args *a, int64_t i0, int64_t i1) { kq_gemv_k(TL_Q5_K, a, i0, i1); }
static void kq_gemv_q6_k(const tl_gemm_args *a, int64_t i0, int64_t i1) { kq_gemv_k(TL_Q6_K, a, i0, i1); }

#include "avx512_kquants_small.h" /* 2 <= n <= 16: the gemv's scheme for every token */

#define KQ_TABLE(NAME)                                                                                   \
    const tl_ukernel tl_avx512_##NAME##_16x8 = {.rm = KQ_R, .rn = KQ_RN, .tile = kq_##NAME##_tilefn, .gemv_rows = KQ_R, \
                                                .gemv = kq_gemv_##NAME, .block = kq_##NAME##_block,                \
                                                .small = kq_##NAME##_small, .small_n = KQ_SMALL_N,                 \
                                                .act_row_bytes = x86_qa_row_bytes,                                 \
                                                .act_prepare = tl_avx512_q8_act_prepare};
KQ_TABLE(q5_0)
KQ_TABLE(q4_k)
KQ_TABLE(q5_k)
KQ_TABLE(q6_k)
