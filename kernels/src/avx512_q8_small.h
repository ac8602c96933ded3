/* avx512_q8_small.h — q8_0 / q4_0 / q4_1, a few tokens (2 <= n <= Q_SMALL_N): every weight read once.
 *
 * Included by avx512_q8.c (it uses that file's inline panel loads), after its gemv and panel code.
 *
 * Why: batched decode (llm-server, one row per sequence) multiplies a few tokens by every weight. The
 * panel path (q_block_impl) repacks each 16-row panel into a thread-local buffer (512-640 B per block,
 * stores then reloads, no DRAM prefetch) and only then runs the tokens: at n = 8 it cost 3.6x the gemv's
 * time for 16 rows of q4_0, although the weights are read once either way. Here each block of a panel is
 * transposed into registers exactly as the gemv does it (q_load_block, prefetching the next panel),
 * and every token of the call is run against those registers before the next block: one weight stream,
 * n accumulators in registers (at most Q_RN tokens per pass; a second pass re-reads the panel from cache).
 *
 * Bit-identical to the gemv and the panel tiles: per (row, token) the same exact int32 group dots and
 * the same f32 chain, block after block (q_scale_dots, then fma with d; q4_1's min term after it). So
 * a row's result does not depend on how many rows are multiplied with it (the batch invariance
 * llm-server relies on; tests/test_kernels_small_n.py).
 */
#ifndef TL_AVX512_Q8_SMALL_H
#define TL_AVX512_Q8_SMALL_H

#define Q_SMALL_N 16 /* the driver takes this path for 2 <= n <= Q_SMALL_N (ukernel.h: small, small_n) */

/* Panel rows [i, i + 16) (live ones: `live`) x tokens [j0, j0 + RN), all blocks. S4: a full panel. */
TL_INLINE void q_small_panel(const int WT, const int S4, const int RN, const tl_gemm_args *a, q_src src,
                             __mmask16 live, __m512i idx, const x86_pf *pf, const int32_t *otab, int64_t i,
                             int64_t j0) {
    const int64_t k = a->k, nb = k / TL_QK, bs = x86_q_bytes(WT);
    const uint8_t *x0 = a->act + j0 * a->ldact;
    const int64_t ld = a->ldact;
    __m512 y[Q_RN];
    for (int j = 0; j < RN; j++) y[j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        x86_pf_block(pf, b);
        __m512i w[8];
        __m512 d, m = _mm512_setzero_ps();
        q_load_block(WT, S4, &src, S4 ? 0 : b * bs, live, idx, w, &d, &m);
        if (S4) q_src_advance(&src, bs);
        for (int j = 0; j < RN; j++) {
            const uint8_t *xr = x0 + j * ld;
            const int32_t *xq = (const int32_t *)(xr + 32 * b);
            const float *dx = x86_qa_d(xr, k);
            __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
            if (WT != TL_Q4_1) { /* the offset's int32 start, broadcast from memory (no shuffle-port work) */
                const int32_t *o = otab + (j0 + j) * 2 * nb + 2 * b;
                acc0 = _mm512_set1_epi32(o[0]);
                acc1 = _mm512_set1_epi32(o[1]);
            }
            for (int t = 0; t < 4; t++) acc0 = _mm512_dpbusd_epi32(acc0, w[t], _mm512_set1_epi32(xq[t]));
            for (int t = 4; t < 8; t++) acc1 = _mm512_dpbusd_epi32(acc1, w[t], _mm512_set1_epi32(xq[t]));
            y[j] = _mm512_fmadd_ps(q_scale_dots(acc0, acc1, dx[2 * b], dx[2 * b + 1]), d, y[j]);
            if (WT == TL_Q4_1) {
                const float *sx = x86_qa_s(xr, k);
                y[j] = _mm512_fmadd_ps(m, _mm512_set1_ps(sx[2 * b] + sx[2 * b + 1]), y[j]);
            }
        }
    }
    for (int j = 0; j < RN; j++) {
        float *yp = a->y + (j0 + j) * a->ldy + i;
        if (S4) _mm512_storeu_ps(yp, y[j]);
        else _mm512_mask_storeu_ps(yp, live, y[j]);
    }
}

/* One panel, tokens [j0, j1) in passes of at most Q_RN (the RN are compile-time constants). */
TL_INLINE void q_small_tokens(const int WT, const int S4, const tl_gemm_args *a, q_src src, __mmask16 live,
                              __m512i idx, const x86_pf *pf, const int32_t *otab, int64_t i, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; j += Q_RN) {
        switch ((int)TL_MIN((int64_t)Q_RN, j1 - j)) {
        case 1: q_small_panel(WT, S4, 1, a, src, live, idx, pf, otab, i, j); break;
        case 2: q_small_panel(WT, S4, 2, a, src, live, idx, pf, otab, i, j); break;
        case 3: q_small_panel(WT, S4, 3, a, src, live, idx, pf, otab, i, j); break;
        case 4: q_small_panel(WT, S4, 4, a, src, live, idx, pf, otab, i, j); break;
        case 5: q_small_panel(WT, S4, 5, a, src, live, idx, pf, otab, i, j); break;
        case 6: q_small_panel(WT, S4, 6, a, src, live, idx, pf, otab, i, j); break;
        case 7: q_small_panel(WT, S4, 7, a, src, live, idx, pf, otab, i, j); break;
        default: q_small_panel(WT, S4, Q_RN, a, src, live, idx, pf, otab, i, j); break;
        }
    }
}

/* Rows [i0, i1) (i0 a multiple of 16) x all n tokens. */
TL_INLINE void q_small_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t k = a->k, nb = k / TL_QK;
    /* q8_0 / q4_0: every token's per-group accumulator start -off * isum (the weights' unsigned offset
     * removed exactly in int32), once per call */
    int32_t *otab = WT == TL_Q4_1 ? NULL : (int32_t *)x86_scratch((size_t)(a->n * 2 * nb) * sizeof(int32_t));
    if (a->ldw > INT32_MAX / Q_R || (WT != TL_Q4_1 && !otab)) { /* gather offsets are int32; no scratch */
        x86_q_block_scalar(WT, a, i0, i1, 0, a->n);
        return;
    }
    if (otab) {
        const int32_t off = WT == TL_Q8_0 ? 128 : 8;
        for (int64_t j = 0; j < a->n; j++) {
            const int16_t *is = x86_qa_isum(a->act + j * a->ldact, k);
            for (int64_t g = 0; g < 2 * nb; g++) otab[j * 2 * nb + g] = -(int32_t)is[g] * off;
        }
    }
    for (int64_t i = i0; i < i1; i += Q_R) {
        const int nr = (int)TL_MIN((int64_t)Q_R, i1 - i);
        const uint8_t *rp[16];
        const __m512i idx = q_rows(a, i, nr, rp);
        const __mmask16 live = (__mmask16)((1u << nr) - 1);
        const x86_pf pf = x86_pf_next(a, i, i1, Q_R, nb); /* the next panel, from DRAM */
        if (nr == Q_R) {
            q_small_tokens(WT, 1, a, q_src4(a, i), live, idx, &pf, otab, i, 0, a->n);
        } else {
            const q_src src = {rp, {NULL, NULL, NULL, NULL}, 0, 0};
            q_small_tokens(WT, 0, a, src, live, idx, &pf, otab, i, 0, a->n);
        }
    }
}

static void q8_0_small_16(const tl_gemm_args *a, int64_t i0, int64_t i1) { q_small_impl(TL_Q8_0, a, i0, i1); }
static void q4_0_small_16(const tl_gemm_args *a, int64_t i0, int64_t i1) { q_small_impl(TL_Q4_0, a, i0, i1); }
static void q4_1_small_16(const tl_gemm_args *a, int64_t i0, int64_t i1) { q_small_impl(TL_Q4_1, a, i0, i1); }

#endif
