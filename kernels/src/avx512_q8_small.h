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
 * The tokens' activations are first copied into a per-call interleaved buffer (q_small_acts) so the
 * token loop addresses them from one pointer. 1 thread, q4_0 5632 x 2048, CPU time per call on a loaded
 * machine: n = 8 costs ~2.5x the gemv (the panel path: ~3.2x), n = 2 ~1.2x (1.8x).
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

static void q_small_acts(const int WT, const tl_gemm_args *a, uint8_t *buf) {
    const int64_t k = a->k, nb = k / TL_QK, n = a->n;
    const int32_t off = WT == TL_Q8_0 ? 128 : 8;
    for (int64_t j = 0; j < n; j++) {
        const int64_t j0 = j / Q_RN * Q_RN, rn = TL_MIN((int64_t)Q_RN, n - j0);
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

/* Panel rows [i, i + 16) (live ones: `live`) x the RN tokens of the pass at tb, all blocks, into outputs
 * of tokens j0... S4: a full panel. */
TL_INLINE void q_small_panel(const int WT, const int S4, const int RN, const tl_gemm_args *a, q_src src,
                             __mmask16 live, __m512i idx, const x86_pf *pf, const uint8_t *tb, int64_t i,
                             int64_t j0) {
    const int64_t nb = a->k / TL_QK, bs = x86_q_bytes(WT);
    __m512 y[Q_RN];
    for (int j = 0; j < RN; j++) y[j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++, tb += RN * QS_TB) {
        x86_pf_block(pf, b);
        __m512i w[8];
        __m512 d, m = _mm512_setzero_ps();
        q_load_block(WT, S4, &src, S4 ? 0 : b * bs, live, idx, w, &d, &m);
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
            for (int q = 0; q < 4; q++) acc0 = _mm512_dpbusd_epi32(acc0, w[q], _mm512_set1_epi32(xq[q]));
            for (int q = 4; q < 8; q++) acc1 = _mm512_dpbusd_epi32(acc1, w[q], _mm512_set1_epi32(xq[q]));
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
    for (int64_t j = 0; j < a->n; j += Q_RN) {
        const uint8_t *tb = buf + QS_TB * j * nb;
        switch ((int)TL_MIN((int64_t)Q_RN, a->n - j)) {
        case 1: q_small_panel(WT, S4, 1, a, src, live, idx, pf, tb, i, j); break;
        case 2: q_small_panel(WT, S4, 2, a, src, live, idx, pf, tb, i, j); break;
        case 3: q_small_panel(WT, S4, 3, a, src, live, idx, pf, tb, i, j); break;
        case 4: q_small_panel(WT, S4, 4, a, src, live, idx, pf, tb, i, j); break;
        case 5: q_small_panel(WT, S4, 5, a, src, live, idx, pf, tb, i, j); break;
        case 6: q_small_panel(WT, S4, 6, a, src, live, idx, pf, tb, i, j); break;
        case 7: q_small_panel(WT, S4, 7, a, src, live, idx, pf, tb, i, j); break;
        default: q_small_panel(WT, S4, Q_RN, a, src, live, idx, pf, tb, i, j); break;
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
