/* avx512_kquants_small.h — q5_0 and the K-quants, a few tokens (2 <= n <= KQ_SMALL_N): batched decode.
 *
 * Included by avx512_kquants.c, after its gemv and panel code (it uses their inline loads).
 *   q5_0: each block of 16 rows decoded into registers as the gemv does it (kq_q5_0_load16, the next
 *     panel prefetched), then every token of the call against those registers (avx512_q8_small.h's
 *     scheme): one weight stream, no panel stored and reloaded.
 *   q4_K / q5_K / q6_K: their gemv already decodes a panel into scratch and runs the panel tiles, so the
 *     small path is that gemv for all n tokens: the driver splits only the rows, as for n == 1.
 * Per (row, token) the arithmetic is the gemv's and the tiles' (bit-identical; tests/test_kernels_small_n.py).
 */
#ifndef TL_AVX512_KQUANTS_SMALL_H
#define TL_AVX512_KQUANTS_SMALL_H

#define KQ_SMALL_N 16


TL_INLINE void kq_q5_0_small_panel(const int RN, const tl_gemm_args *a, const uint8_t *const *rp, __mmask16 live,
                                   const x86_pf *pf, int64_t i, int nr, int64_t j0) {
    const int64_t k = a->k, nb = k / TL_QK;
    const uint8_t *x0 = a->act + j0 * a->ldact;
    const int64_t ld = a->ldact;
    __m512 y[KQ_RN];
    for (int j = 0; j < RN; j++) y[j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        x86_pf_block(pf, b);
        __m512i w[8];
        __m512 d;
        kq_q5_0_load16(rp, live, b, w, &d);
        for (int j = 0; j < RN; j++) {
            const uint8_t *xr = x0 + j * ld;
            const int32_t *xq = (const int32_t *)(xr + 32 * b);
            const float *dx = tl_q8a_d(xr, k) + 2 * b;
            const int16_t *is = tl_q8a_isum(xr, k) + 2 * b;
            __m512i a0 = _mm512_set1_epi32(-16 * is[0]), a1 = _mm512_set1_epi32(-16 * is[1]);
            for (int t = 0; t < 4; t++) {
                a0 = dpbusd_bcst(a0, w[t], xq + t);
                a1 = dpbusd_bcst(a1, w[t + 4], xq + t + 4);
            }
            __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), _mm512_set1_ps(dx[1]),
                                       _mm512_mul_ps(_mm512_cvtepi32_ps(a0), _mm512_set1_ps(dx[0])));
            y[j] = _mm512_fmadd_ps(f, d, y[j]);
        }
    }
    kq_store(RN, a, y, i, nr, j0);
}

static void kq_q5_0_small(const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t nb = a->k / TL_QK;
    for (int64_t i = i0; i < i1; i += KQ_R) {
        const int nr = (int)TL_MIN((int64_t)KQ_R, i1 - i);
        const uint8_t *rp[16];
        kq_rows(a, i, nr, rp);
        const __mmask16 live = (__mmask16)((1u << nr) - 1);
        const x86_pf pf = x86_pf_next(a, i, i1, KQ_R, nb);
        for (int64_t j = 0; j < a->n; j += KQ_RN) {
            switch ((int)TL_MIN((int64_t)KQ_RN, a->n - j)) {
            case 1: kq_q5_0_small_panel(1, a, rp, live, &pf, i, nr, j); break;
            case 2: kq_q5_0_small_panel(2, a, rp, live, &pf, i, nr, j); break;
            case 3: kq_q5_0_small_panel(3, a, rp, live, &pf, i, nr, j); break;
            case 4: kq_q5_0_small_panel(4, a, rp, live, &pf, i, nr, j); break;
            case 5: kq_q5_0_small_panel(5, a, rp, live, &pf, i, nr, j); break;
            case 6: kq_q5_0_small_panel(6, a, rp, live, &pf, i, nr, j); break;
            case 7: kq_q5_0_small_panel(7, a, rp, live, &pf, i, nr, j); break;
            default: kq_q5_0_small_panel(KQ_RN, a, rp, live, &pf, i, nr, j); break;
            }
        }
    }
}

/* K-quants: the gemv (a panel decoded once into scratch, prefetching) for every token of the call. */
TL_INLINE void kq_small_k(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1) {
    x86_pf_rows(a, i0, TL_MIN(i0 + KQ_R, i1));
    kq_block_impl(WT, a, i0, i1, 0, a->n);
}
static void kq_q4_k_small(const tl_gemm_args *a, int64_t i0, int64_t i1) { kq_small_k(TL_Q4_K, a, i0, i1); }
static void kq_q5_k_small(const tl_gemm_args *a, int64_t i0, int64_t i1) { kq_small_k(TL_Q5_K, a, i0, i1); }
static void kq_q6_k_small(const tl_gemm_args *a, int64_t i0, int64_t i1) { kq_small_k(TL_Q6_K, a, i0, i1); }

#endif
