/* float_block_avx512.h — AVX-512 prompt GEMM for float weights (f32, f16, exact bf16) with
 * packed weight panels, included by float_avx512.h (it uses f_load / f_load_mask and the 4 x 6
 * tiles from there).
 *
 * Why: the 4 x 6 dot-product tile loads 10 vectors per 24 FMAs, and for k >= ~1k neither its 4
 * weight rows nor its 6 activation rows stay in L1, so it streams ~50 bytes per cycle from L2
 * and reaches ~78 % of the FMA peak at k = 2048 (95 % when everything is in L1, measured).
 * This block kernel is the BLIS arrangement instead: weights in lanes, tokens broadcast.
 *   - per K chunk of FB_KC values, the job's weight rows are converted to f32 and packed k-major
 *     in panels of 32 rows (panel[p][r]); each packed value then serves every token of the job;
 *   - micro-kernel: 32 rows (2 zmm) x FB_NR = 12 tokens = 24 accumulators; per k 2 panel loads
 *     and 12 broadcasts of x[j][p] straight from the prepared rows feed 24 FMAs;
 *   - the 12 tokens' K chunk (12 KB) stays in L1 while the panels stream from L2.
 * Output (i, j) is one FMA chain over p = 0 .. k-1 in order (chunks continue from y), so it
 * depends only on k: bit-identical for any thread count, tile or chunk position. It is a
 * different order from the n = 1 path (lanes p % 16, then a tree), so a prompt row and a decoded
 * token differ in the last bits, as they do in llama.cpp.
 * Small token blocks (fewer than FB_MIN_N tokens) don't repay the packing: they take the 4 x 6
 * tiles.
 */
#ifndef TL_FLOAT_BLOCK_AVX512_H
#define TL_FLOAT_BLOCK_AVX512_H

#define FB_MR 32    /* rows per packed panel: two zmm */
#define FB_NR 12    /* tokens per micro-kernel */
#define FB_KC 256   /* k values per chunk: 12 tokens x 256 x 4 B = 12 KB of L1 (128: -8 %, 512: -3 %) */
#define FB_MIN_N 96 /* fewer tokens in a block: the 4 x 6 tiles (n = 24, 32: -28 %, 64: even, 128: +5 %) */

/* 16 x 16 transpose of r[0..15] in place (r[i] lane j -> r[j] lane i). */
TL_INLINE void fb_transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        for (int h = 0; h < 2; h++) {
            u[4 * i + 2 * h] = _mm512_shuffle_ps(t[4 * i + h], t[4 * i + 2 + h], 0x44);
            u[4 * i + 2 * h + 1] = _mm512_shuffle_ps(t[4 * i + h], t[4 * i + 2 + h], 0xEE);
        }
    }
    /* u[4i + c] holds, per 128-bit lane L, column c of rows 4i..4i+3 for the 4 columns 4L..4L+3 */
    for (int i = 0; i < 2; i++) {
        for (int c = 0; c < 4; c++) {
            t[8 * i + c] = _mm512_shuffle_f32x4(u[8 * i + c], u[8 * i + 4 + c], 0x88);
            t[8 * i + 4 + c] = _mm512_shuffle_f32x4(u[8 * i + c], u[8 * i + 4 + c], 0xDD);
        }
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0xDD);
        r[4 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0xDD);
    }
}

/* Pack rows [i0, i0 + rows) (rows <= 32) x k values [p0, p0 + kc) as f32 into dst[p][32]
 * (p < round_up(kc, 16)); rows past `rows` and values past k are zero. */
TL_INLINE void fb_pack(const int WT, const tl_gemm_args *a, int64_t i0, int rows, int64_t p0, int64_t kc, float *dst) {
    const __m512 z = _mm512_setzero_ps();
    for (int h = 0; h < 2; h++) {
        const int r0 = 16 * h;
        for (int64_t q = 0; q < kc; q += 16) {
            const int64_t left = kc - q;
            const __mmask16 mk = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
            __m512 r[16];
            for (int i = 0; i < 16; i++) {
                if (r0 + i >= rows) r[i] = z;
                else {
                    const uint8_t *w = a->w + (i0 + r0 + i) * a->ldw;
                    r[i] = left >= 16 ? f_load(WT, w, p0 + q) : f_load_mask(WT, w, p0 + q, mk);
                }
            }
            fb_transpose16(r);
            for (int t = 0; t < 16; t++) _mm512_store_ps(dst + (q + t) * FB_MR + r0, r[t]);
        }
    }
}

/* y[j][i0 .. i0+32) (+)= panel . x[j] over kc values, for NR tokens; m0/m1 mask the valid rows. */
TL_INLINE void fb_micro(const int NR, int64_t kc, const float *pw, const float *x, int64_t ldx, float *y, int64_t ldy,
                        int first, __mmask16 m0, __mmask16 m1) {
    __m512 c0[FB_NR], c1[FB_NR];
    const float *xj[FB_NR];
    for (int j = 0; j < NR; j++) {
        xj[j] = x + j * ldx;
        if (first) {
            c0[j] = _mm512_setzero_ps();
            c1[j] = _mm512_setzero_ps();
        } else {
            c0[j] = _mm512_maskz_loadu_ps(m0, y + j * ldy);
            c1[j] = _mm512_maskz_loadu_ps(m1, y + j * ldy + 16);
        }
    }
    for (int64_t p = 0; p < kc; p++) {
        const __m512 w0 = _mm512_load_ps(pw + p * FB_MR), w1 = _mm512_load_ps(pw + p * FB_MR + 16);
        for (int j = 0; j < NR; j++) {
            const __m512 b = _mm512_set1_ps(xj[j][p]);
            c0[j] = _mm512_fmadd_ps(w0, b, c0[j]);
            c1[j] = _mm512_fmadd_ps(w1, b, c1[j]);
        }
    }
    for (int j = 0; j < NR; j++) {
        _mm512_mask_storeu_ps(y + j * ldy, m0, c0[j]);
        _mm512_mask_storeu_ps(y + j * ldy + 16, m1, c1[j]);
    }
}

static void fb_micro_n(int nr, int64_t kc, const float *pw, const float *x, int64_t ldx, float *y, int64_t ldy,
                       int first, __mmask16 m0, __mmask16 m1) {
    switch (nr) {
#define C_(N) case N: fb_micro(N, kc, pw, x, ldx, y, ldy, first, m0, m1); break;
    C_(1) C_(2) C_(3) C_(4) C_(5) C_(6) C_(7) C_(8) C_(9) C_(10) C_(11) C_(12)
#undef C_
    default: break;
    }
}

/* The 4 x 6 tiles over a block (small token counts, or no scratch memory). */
static void fb_tiles(void (*tile)(const tl_gemm_args *, int64_t, int64_t, int, int), const tl_gemm_args *a,
                     int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const int64_t n = j1 - j0, nt = (n + F_RN - 1) / F_RN; /* balanced token tiles, as the driver's */
    for (int64_t i = i0; i < i1; i += F_RM)
        for (int64_t c = 0; c < nt; c++)
            tile(a, i, j0 + n * c / nt, (int)TL_MIN((int64_t)F_RM, i1 - i), (int)(n * (c + 1) / nt - n * c / nt));
}

TL_INLINE void fb_block_impl(const int WT, void (*tile)(const tl_gemm_args *, int64_t, int64_t, int, int),
                             const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const int64_t k = a->k, rows = i1 - i0, panels = (rows + FB_MR - 1) / FB_MR;
    float *pk = j1 - j0 >= FB_MIN_N ? (float *)tl_scratch((size_t)(panels * FB_MR * FB_KC * 4)) : NULL;
    if (!pk) {
        fb_tiles(tile, a, i0, i1, j0, j1);
        return;
    }
    const int64_t ldx = a->ldact / 4;
    for (int64_t p0 = 0; p0 < k; p0 += FB_KC) {
        const int64_t kc = TL_MIN((int64_t)FB_KC, k - p0);
        const int64_t kcp = (kc + 15) / 16 * 16;
        for (int64_t r = 0; r < panels; r++)
            fb_pack(WT, a, i0 + r * FB_MR, (int)TL_MIN((int64_t)FB_MR, rows - r * FB_MR), p0, kc, pk + r * FB_MR * kcp);
        /* tokens outer: the 12 tokens' chunk stays in L1, panels come from L2 (rows outer: -4 to -8 %) */
        for (int64_t j = j0; j < j1; j += FB_NR) {
            for (int64_t r = 0; r < panels; r++) {
                const int nr = (int)TL_MIN((int64_t)FB_NR, j1 - j);
                const float *x = (const float *)(a->act + j * a->ldact) + p0;
                const int64_t left = rows - r * FB_MR;
                const __mmask16 m0 = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
                const __mmask16 m1 = left >= 32 ? (__mmask16)0xffff : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
                fb_micro_n(nr, kc, pk + r * FB_MR * kcp, x, ldx, a->y + j * a->ldy + i0 + r * FB_MR, a->ldy, p0 == 0,
                           m0, m1);
            }
        }
    }
}

static void f32_block(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    fb_block_impl(TL_F32, f32_tile, a, i0, i1, j0, j1);
}
static void f16_block(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    fb_block_impl(TL_F16, f16_tile, a, i0, i1, j0, j1);
}
static void bf16_block(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    fb_block_impl(TL_BF16, bf16_tile, a, i0, i1, j0, j1);
}

/* n == 1 for f32 (which has no streaming gemv of its own): the 4-row tiles with rn = 1, exactly
 * what the driver did before this kernel's 32-row granularity. */
static void f32_gemv(const tl_gemm_args *a, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i += F_RM) f32_tile(a, i, 0, (int)TL_MIN((int64_t)F_RM, i1 - i), 1);
}

#endif
