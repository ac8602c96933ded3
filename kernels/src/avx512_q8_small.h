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
 * n accumulators in registers (all n <= Q_SMALL_N in one pass: QS_RN).
 * The tokens' activations are first copied into a per-call interleaved buffer (q_small_acts) so the
 * token loop addresses them from one pointer. 1 thread, q4_0 5632 x 2048, CPU time per call on a loaded
 * machine: n = 8 costs ~2.5x the gemv (the panel path: ~3.2x), n = 2 ~1.2x (1.8x).
 * The next panel is prefetched into L2 only (the gemv's prefetch goes to L1): each block here runs long
 * enough for L2 to serve it, and the next panel in L1 evicted the current one and the activations (all
 * the model's weights at n = 8 / 4 / 16 through two contexts alternately in one process, 30 paired
 * passes: 1.1 / 2.4 / 0.3 % less time, 2 threads).
 *
 * Bit-identical to the gemv and the panel tiles: per (row, token) the same exact int32 group dots and
 * the same f32 chain, block after block (q_scale_dots, then fma with d; q4_1's min term after it). So
 * a row's result does not depend on how many rows are multiplied with it (the batch invariance
 * llm-server relies on; tests/test_kernels_small_n.py).
 */
#ifndef TL_AVX512_Q8_SMALL_H
#define TL_AVX512_Q8_SMALL_H

#define Q_SMALL_N 16 /* the driver takes this path for 2 <= n <= Q_SMALL_N (ukernel.h: small, small_n) */

/* What the token loop reads of token j and block b, interleaved per pass of RN tokens so that one pointer
 * reaches them all at constant offsets (the 8 tokens' own row pointers, scales and offsets spilled 44
 * general registers per block to the stack, measured in the asm): 32 int8 quants, d_x0, d_x1 (f32),
 * then the int32 accumulator starts -off * isum_0, -off * isum_1 (q8_0 / q4_0) or s_x0 + s_x1 (q4_1, the
 * same f32 sum the other paths form). A pass starting at token j0 holds blocks [0, nb) of its RN tokens:
 * block b of token j0 + j at QS_TB * (j0 nb + b RN + j). */
#define QS_TB 48
/* Tokens per pass over a panel: y[16], the block's w[8] and a few temporaries fit the 32 zmm (no spills in the
 * asm), so every n <= Q_SMALL_N is one pass: one transpose per block (two passes of 8 redid it; n = 16: ~20 %
 * less CPU time). */
#define QS_RN 16

static void q_small_acts(const int WT, const tl_gemm_args *a, uint8_t *buf) {
    const int64_t k = a->k, nb = k / TL_QK, n = a->n;
    const int32_t off = WT == TL_Q8_0 ? 128 : 8;
    for (int64_t j = 0; j < n; j++) {
        const int64_t j0 = j / QS_RN * QS_RN, rn = TL_MIN((int64_t)QS_RN, n - j0);
        const uint8_t *xr = a->act + j * a->ldact;
        const float *dx = x86_qa_d(xr, k), *sx = x86_qa_s(xr, k);
        const int16_t *is = x86_qa_isum(xr, k);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *o = buf + QS_TB * (j0 * nb + b * rn + (j - j0));
            _mm256_storeu_si256((__m256i *)o, _mm256_loadu_si256((const __m256i *)(xr + 32 * b)));
            memcpy(o + 32, dx + 2 * b, 8);
            if (WT == TL_Q4_1) {
                const float sb = sx[2 * b] + sx[2 * b + 1];
                memcpy(o + 40, &sb, 4);
            } else {
                const int32_t st[2] = {-(int32_t)is[2 * b] * off, -(int32_t)is[2 * b + 1] * off};
                memcpy(o + 40, st, 8);
            }
        }
    }
}


/* Block b of a panel in registers: q_load_block's w, d and m, but q4_0's and q4_1's scales by one
 * vpgatherdd (as q8_0's) instead of 16 scalar loads and vpinsrw/vpinsrd: the gemv streams from memory and
 * is faster with the scalar loads, this loop is bound by the vector ports (~24 of their uops per block
 * saved; q4_0 5632 x 2048, n = 2..8: 3-7 % less CPU time, measured in one session). */
TL_INLINE void q_small_block(const int WT, const int S4, const q_src *s, int64_t o, __mmask16 live, __m512i idx,
                             __m512i w[8], __m512 *d, __m512 *m) {
    if (WT == TL_Q8_0) {
        q_load_block(WT, S4, s, o, live, idx, w, d, m);
        return;
    }
    const __m512i sc = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, idx, (const void *)q_ptr(S4, s, 0, o), 1);
    *d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(sc)); /* dead lanes: 0 */
    if (WT == TL_Q4_1) *m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(sc, 16)));
    __m512i u[4];
    const __m512i lo4 = _mm512_set1_epi8(0x0f);
    q_transpose16(S4, 0, s, o + (WT == TL_Q4_0 ? 2 : 4), u);
    for (int t = 0; t < 4; t++) {
        w[t] = _mm512_and_si512(u[t], lo4);
        w[t + 4] = _mm512_and_si512(_mm512_srli_epi16(u[t], 4), lo4);
    }
}

/* Panel rows [i, i + 16) (live ones: `live`) x the RN tokens of the pass at tb, all blocks, into outputs
 * of tokens j0... S4: a full panel. */
TL_INLINE void q_small_panel(const int WT, const int S4, const int RN, const tl_gemm_args *a, q_src src,
                             __mmask16 live, __m512i idx, const x86_pf *pf, const uint8_t *tb, int64_t i,
                             int64_t j0) {
    const int64_t nb = a->k / TL_QK, bs = x86_q_bytes(WT);
    __m512 y[QS_RN];
    for (int j = 0; j < RN; j++) y[j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++, tb += RN * QS_TB) {
        x86_pf_block_to(pf, b, 0);
        __m512i w[8];
        __m512 d, m = _mm512_setzero_ps();
        q_small_block(WT, S4, &src, S4 ? 0 : b * bs, live, idx, w, &d, &m);
        if (S4) q_src_advance(&src, bs);
        for (int j = 0; j < RN; j++) {
            const uint8_t *t = tb + j * QS_TB;
            const int32_t *xq = (const int32_t *)t;
            const float *dx = (const float *)(t + 32);
            __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
            if (WT != TL_Q4_1) { /* the offset's int32 start, broadcast from memory */
                acc0 = _mm512_set1_epi32(*(const int32_t *)(t + 40));
                acc1 = _mm512_set1_epi32(*(const int32_t *)(t + 44));
            }
            for (int q = 0; q < 4; q++) acc0 = dpbusd_bcst(acc0, w[q], xq + q);
            for (int q = 4; q < 8; q++) acc1 = dpbusd_bcst(acc1, w[q], xq + q);
            y[j] = _mm512_fmadd_ps(q_scale_dots(acc0, acc1, dx[0], dx[1]), d, y[j]);
            if (WT == TL_Q4_1) y[j] = _mm512_fmadd_ps(m, _mm512_set1_ps(*(const float *)(t + 40)), y[j]);
        }
    }
    for (int j = 0; j < RN; j++) {
        float *yp = a->y + (j0 + j) * a->ldy + i;
        if (S4) _mm512_storeu_ps(yp, y[j]);
        else _mm512_mask_storeu_ps(yp, live, y[j]);
    }
}

/* One panel, all n tokens in passes of at most Q_RN (the RN are compile-time constants). */
TL_INLINE void q_small_tokens(const int WT, const int S4, const tl_gemm_args *a, q_src src, __mmask16 live,
                              __m512i idx, const x86_pf *pf, const uint8_t *buf, int64_t i) {
    const int64_t nb = a->k / TL_QK;
    for (int64_t j = 0; j < a->n; j += QS_RN) {
        const uint8_t *tb = buf + QS_TB * j * nb;
        switch ((int)TL_MIN((int64_t)QS_RN, a->n - j)) {
#define QS_CASE(R) case R: q_small_panel(WT, S4, R, a, src, live, idx, pf, tb, i, j); break;
        QS_CASE(1) QS_CASE(2) QS_CASE(3) QS_CASE(4) QS_CASE(5) QS_CASE(6) QS_CASE(7)
        QS_CASE(8) QS_CASE(9) QS_CASE(10) QS_CASE(11) QS_CASE(12) QS_CASE(13) QS_CASE(14) QS_CASE(15)
#undef QS_CASE
        default: q_small_panel(WT, S4, QS_RN, a, src, live, idx, pf, tb, i, j); break;
        }
    }
}

/* Rows [i0, i1) (i0 a multiple of 16) x all n tokens. */
TL_INLINE void q_small_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t nb = a->k / TL_QK;
    uint8_t *buf = x86_scratch((size_t)(a->n * nb * QS_TB));
    if (!buf || a->ldw > INT32_MAX / Q_R) { /* no scratch; gather offsets are int32 */
        x86_q_block_scalar(WT, a, i0, i1, 0, a->n);
        return;
    }
    q_small_acts(WT, a, buf);
    for (int64_t i = i0; i < i1; i += Q_R) {
        const int nr = (int)TL_MIN((int64_t)Q_R, i1 - i);
        const uint8_t *rp[16];
        const __m512i idx = q_rows(a, i, nr, rp);
        const __mmask16 live = (__mmask16)((1u << nr) - 1);
        const x86_pf pf = x86_pf_next(a, i, i1, Q_R, nb); /* the next panel, from DRAM */
        if (nr == Q_R) {
            q_small_tokens(WT, 1, a, q_src4(a, i), live, idx, &pf, buf, i);
        } else {
            const q_src src = {rp, {NULL, NULL, NULL, NULL}, 0, 0};
            q_small_tokens(WT, 0, a, src, live, idx, &pf, buf, i);
        }
    }
}

static void q8_0_small_16(const tl_gemm_args *a, int64_t i0, int64_t i1) { q_small_impl(TL_Q8_0, a, i0, i1); }
static void q4_0_small_16(const tl_gemm_args *a, int64_t i0, int64_t i1) { q_small_impl(TL_Q4_0, a, i0, i1); }
static void q4_1_small_16(const tl_gemm_args *a, int64_t i0, int64_t i1) { q_small_impl(TL_Q4_1, a, i0, i1); }

#endif
