/* avx2_q8_small.h — q8_0 / q4_0 / q4_1, a few tokens (2 <= n <= Q_SMALL_N): every weight decoded once.
 *
 * Included by avx2_q8.c after its gemv (and so by avxvnni_q8.c, with Q_VNNI), like avx512_q8_small.h.
 *
 * Why: batched decode (llm-server, one row per sequence) multiplies a few tokens by every weight. The panel
 * path (q_block_impl) repacks every 8-row panel into scratch and reads it back per token block; at n = 8 it
 * cost 6-12x the gemv for q4_0 (profile_batch_step.py, 1 thread, loaded machine), so 8 sequences decoded
 * together gave under 2x the tokens/s of one. Here each block of a full 8-row panel is transposed and
 * unpacked into registers once, exactly as the gemv's q_gemv_block does it, and every token of the call runs
 * its group dots against them before the next block (the next panel prefetched as the gemv does).
 *
 * Bit-identical to the gemv and the panel tiles: per (row, token) the same exact int32 group dots (the same
 * q_dot_u4 / q_dot_s8 with the same start values) and the same f32 chain, block after block (q_scale_dots,
 * then fma with d; q4_1's min term after it): q_gemv_block's arithmetic, split into the weights' half and
 * the token's half. So a row's result does not depend on how many tokens are multiplied with it
 * (tests/test_kernels_small_n.py). A ragged last panel goes the panel way, as the gemv's does.
 */
#ifndef TL_AVX2_Q8_SMALL_H
#define TL_AVX2_Q8_SMALL_H

#define Q_SMALL_N 16 /* the driver takes this path for 2 <= n <= Q_SMALL_N (ukernel.h: small, small_n) */

/* A token's prepared activation row (x86_common.h layout): quants, group scales, group sums, isums. */
typedef struct {
    const int32_t *xq;
    const float *dx, *sx;
    const int16_t *is;
} q_small_tok;

/* Block b (at byte o of each row) of 8 rows x the n tokens: y[j] += token j's contribution. */
TL_INLINE void q_small_block(const int WT, const uint8_t *const *rp, int64_t o, int64_t b, const q_small_tok *tk,
                             int n, __m256 *y) {
    const __m256i head = q_dw8(rp, o); /* d (| m for q4_1, | the first quants otherwise) */
    __m256 d, m;
    q_f16_halves(head, head, &d, &m);
    if (WT == TL_Q8_0) {
        __m256i u[2][4], wa[2][4];
        for (int h = 0; h < 2; h++) q_q8_half(rp, o, h, u[h], wa[h]);
        for (int j = 0; j < n; j++) {
            const __m256i ip = q_off_mul(WT) ? q_isum_pair(tk[j].is, b) : _mm256_setzero_si256();
            const __m256i acc0 = q_dot_s8(wa[0], u[0], tk[j].xq + 8 * b, Q_VNNI ? q_off_ip(ip, 0, -128) : ip);
            const __m256i acc1 = q_dot_s8(wa[1], u[1], tk[j].xq + 8 * b + 4, Q_VNNI ? q_off_ip(ip, 1, -128) : ip);
            y[j] = _mm256_fmadd_ps(q_scale_dots(acc0, acc1, tk[j].dx[2 * b], tk[j].dx[2 * b + 1]), d, y[j]);
        }
    } else {
        __m256i w[8];
        q_q4_nibbles(WT, rp, o, w);
        const int OFF = WT == TL_Q4_0;
        for (int j = 0; j < n; j++) {
            const __m256i ip = q_off_mul(WT) ? q_isum_pair(tk[j].is, b) : _mm256_setzero_si256();
            const __m256i acc0 = q_dot_u4(OFF, w, tk[j].xq + 8 * b, OFF ? q_off_ip(ip, 0, -8) : ip);
            const __m256i acc1 = q_dot_u4(OFF, w + 4, tk[j].xq + 8 * b + 4, OFF ? q_off_ip(ip, 1, -8) : ip);
            __m256 yj = _mm256_fmadd_ps(q_scale_dots(acc0, acc1, tk[j].dx[2 * b], tk[j].dx[2 * b + 1]), d, y[j]);
            if (WT == TL_Q4_1) yj = _mm256_fmadd_ps(m, _mm256_set1_ps(tk[j].sx[2 * b] + tk[j].sx[2 * b + 1]), yj);
            y[j] = yj;
        }
    }
}

/* Rows [i0, i1) (i0 a multiple of 8) x all n tokens. */
TL_INLINE void q_small_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t k = a->k, nb = k / TL_QK;
    const int bs = x86_q_bytes(WT), n = (int)a->n;
    q_small_tok tk[Q_SMALL_N];
    for (int j = 0; j < n; j++) {
        const uint8_t *xr = a->act + j * a->ldact;
        tk[j] = (q_small_tok){(const int32_t *)xr, x86_qa_d(xr, k), x86_qa_s(xr, k), x86_qa_isum(xr, k)};
    }
    int64_t i = i0;
    for (; i + Q_R <= i1; i += Q_R) {
        const uint8_t *rp[8];
        for (int r = 0; r < 8; r++) rp[r] = a->w + (i + r) * a->ldw;
        const char *pf = q_pf_start(a, i); /* the next panel, from DRAM */
        const int more = q_pf_more(a, i);
        __m256 y[Q_SMALL_N];
        for (int j = 0; j < n; j++) y[j] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            pf = q_pf_slice(WT, pf, more);
            q_small_block(WT, rp, b * bs, b, tk, n, y);
        }
        for (int j = 0; j < n; j++) _mm256_storeu_ps(a->y + j * a->ldy + i, y[j]);
    }
    if (i < i1) q_block_impl(WT, a, i, i1, 0, a->n); /* a ragged last panel: the tiles, as the gemv's */
}

static void q8_0_small_8(const tl_gemm_args *a, int64_t i0, int64_t i1) { q_small_impl(TL_Q8_0, a, i0, i1); }
static void q4_0_small_8(const tl_gemm_args *a, int64_t i0, int64_t i1) { q_small_impl(TL_Q4_0, a, i0, i1); }
static void q4_1_small_8(const tl_gemm_args *a, int64_t i0, int64_t i1) { q_small_impl(TL_Q4_1, a, i0, i1); }

#endif
