/* avx512_float_packed.c — AVX-512 prompt GEMM for float weights (f32, f16, exact bf16) with
 * packed weight panels (it uses avx512.h's f_load / f_load_mask and avx512_float.c's 4 x 6 tiles
 * for edges).
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
 * Output (i, j) is, per chunk, one FMA chain over its words in order, and the chunk sums are
 * added in order (blocked summation: chains of at most 256 terms, not k), so it depends only on
 * k: bit-identical for any thread count, tile or chunk position. It is a different order from
 * the n = 1 path (lanes p % 16, then a tree), so a prompt row and a decoded token differ in the
 * last bits, as they do in llama.cpp.
 * Small batches (fewer than F_PACKED_MIN_N tokens, avx512.h) don't repay the packing: the driver keeps them on
 * the 4 x 6 (vdpbf16ps: 4 x 6 x 32) tiles' kernel, whose `big` this one is. bf16 weights x bf16 activations (the default for bf16) run the
 * same kernel on 32-bit words holding k pairs: vdpbf16ps adds both products in one lane.
 */
#include <immintrin.h>

#include "avx512.h"
#include "threadpool.h"

#define PK_MR 32    /* rows per packed panel: two zmm */
#define PK_NR 12    /* tokens per micro-kernel */
#define PK_KC 256   /* words (f32 values, bf16 pairs) per chunk: 12 tokens x 256 x 4 B = 12 KB of L1
                     * (f32 128: -8 %, 512: -3 %) */

/* 16 x 16 transpose of r[0..15] in place (r[i] lane j -> r[j] lane i). */
TL_INLINE void packed_transpose16(__m512 r[16]) {
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

/* The packing and the micro-kernel work on 32-bit words of k: one f32 value, or for DP (bf16
 * weights x bf16 activations, vdpbf16ps) a pair of bf16 values (k = 2q, 2q + 1), which vdpbf16ps
 * multiplies and adds in one lane. WT is the weight type; DP implies bf16 weights. */
#define PK_VALS(DP) ((DP) ? 2 : 1) /* k values per word */

/* Pack rows [i0, i0 + rows) (rows <= 32) x words [q0, q0 + kw) into dst[q][32] (q < round_up(kw,
 * 16)) as f32 (or bf16 pairs); rows past `rows` and values past the chunk's nv values are zero. */
TL_INLINE void packed_pack(const int WT, const int DP, const tl_gemm_args *a, int64_t i0, int rows, int64_t q0, int64_t nv,
                       float *dst) {
    const __m512 z = _mm512_setzero_ps();
    const int64_t kw = (nv + PK_VALS(DP) - 1) / PK_VALS(DP);
    for (int h = 0; h < 2; h++) {
        const int r0 = 16 * h;
        for (int64_t q = 0; q < kw; q += 16) {
            const int64_t left = nv - q * PK_VALS(DP); /* values left in the chunk */
            __m512 r[16];
            for (int i = 0; i < 16; i++) {
                const uint8_t *w = a->w + (i0 + r0 + i) * a->ldw;
                if (r0 + i >= rows) r[i] = z;
                else if (DP) {
                    const __mmask32 mk = left >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1ull << left) - 1);
                    r[i] = _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(mk, (const uint16_t *)w + 2 * (q0 + q)));
                } else if (left >= 16) r[i] = f_load(WT, w, q0 + q);
                else r[i] = f_load_mask(WT, w, q0 + q, (__mmask16)((1u << left) - 1));
            }
            packed_transpose16(r);
            for (int t = 0; t < 16; t++) _mm512_store_ps(dst + (q + t) * PK_MR + r0, r[t]);
        }
    }
}

/* y[j][i0 .. i0+32) (+)= panel . x[j] over kw words, for NR tokens; m0/m1 mask the valid rows. */
TL_INLINE void packed_micro(const int DP, const int NR, int64_t kw, const float *pw, const float *x, int64_t ldx, float *y,
                        int64_t ldy, int first, __mmask16 m0, __mmask16 m1) {
    __m512 c0[PK_NR], c1[PK_NR];
    const float *xj[PK_NR];
    for (int j = 0; j < NR; j++) {
        xj[j] = x + j * ldx;
        c0[j] = _mm512_setzero_ps();
        c1[j] = _mm512_setzero_ps();
    }
    for (int64_t p = 0; p < kw; p++) {
        const __m512 w0 = _mm512_load_ps(pw + p * PK_MR), w1 = _mm512_load_ps(pw + p * PK_MR + 16);
        for (int j = 0; j < NR; j++) {
            const __m512 b = _mm512_set1_ps(xj[j][p]); /* a bit copy: for DP two bf16 values */
            if (DP) {
                c0[j] = _mm512_dpbf16_ps(c0[j], (__m512bh)w0, (__m512bh)b);
                c1[j] = _mm512_dpbf16_ps(c1[j], (__m512bh)w1, (__m512bh)b);
            } else {
                c0[j] = _mm512_fmadd_ps(w0, b, c0[j]);
                c1[j] = _mm512_fmadd_ps(w1, b, c1[j]);
            }
        }
    }
    for (int j = 0; j < NR; j++) {
        if (!first) { /* the chunk's sum is added to the earlier chunks' (blocked summation) */
            c0[j] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, y + j * ldy), c0[j]);
            c1[j] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, y + j * ldy + 16), c1[j]);
        }
        _mm512_mask_storeu_ps(y + j * ldy, m0, c0[j]);
        _mm512_mask_storeu_ps(y + j * ldy + 16, m1, c1[j]);
    }
}

TL_INLINE void packed_micro_n(const int DP, int nr, int64_t kw, const float *pw, const float *x, int64_t ldx, float *y,
                          int64_t ldy, int first, __mmask16 m0, __mmask16 m1) {
    switch (nr) {
#define C_(N) case N: packed_micro(DP, N, kw, pw, x, ldx, y, ldy, first, m0, m1); break;
    C_(1) C_(2) C_(3) C_(4) C_(5) C_(6) C_(7) C_(8) C_(9) C_(10) C_(11) C_(12)
#undef C_
    default: break;
    }
}

/* The 4 x 6 tiles over a block (small token counts, or no scratch memory). */
static void packed_tiles(void (*tile)(const tl_gemm_args *, int64_t, int64_t, int, int), const tl_gemm_args *a,
                     int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const int64_t n = j1 - j0, nt = (n + F_RN - 1) / F_RN; /* balanced token tiles, as the driver's */
    for (int64_t i = i0; i < i1; i += F_RM)
        for (int64_t c = 0; c < nt; c++)
            tile(a, i, j0 + n * c / nt, (int)TL_MIN((int64_t)F_RM, i1 - i), (int)(n * (c + 1) / nt - n * c / nt));
}

/* Software prefetch of a rows x bytes region (row stride ld), a slice per step over `steps` steps;
 * the cursor is (row, line), no division per line. */
typedef struct {
    const uint8_t *row;
    int64_t ld, lpr, rows_left, line, per;
} packed_prefetch;

static packed_prefetch packed_prefetch_plan(const uint8_t *base, int64_t ld, int64_t rows, int64_t bytes, int64_t steps) {
    packed_prefetch f = {base, ld, 0, 0, 0, 0};
    if (rows <= 0 || bytes <= 0) return f;
    f.lpr = (bytes + 63) / 64 + 1; /* + 1: the rows need not start on a line */
    f.rows_left = rows;
    f.per = (rows * f.lpr + steps - 1) / steps;
    return f;
}

TL_INLINE void packed_prefetch_some(packed_prefetch *f) {
    for (int64_t c = 0; c < f->per && f->rows_left > 0; c++) {
        _mm_prefetch((const char *)(f->row + f->line * 64), _MM_HINT_T0);
        if (++f->line == f->lpr) {
            f->line = 0;
            f->row += f->ld;
            f->rows_left--;
        }
    }
}

TL_INLINE void packed_block_impl(const int WT, const int DP, void (*tile)(const tl_gemm_args *, int64_t, int64_t, int, int),
                             const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const int64_t k = a->k, rows = i1 - i0, panels = (rows + PK_MR - 1) / PK_MR;
    float *pk = (float *)tl_scratch((size_t)(panels * PK_MR * PK_KC * 4));
    if (!pk) { /* no memory for the panels: the dot-product tiles need none */
        packed_tiles(tile, a, i0, i1, j0, j1);
        return;
    }
    const int64_t ldx = a->ldact / 4; /* words */
    for (int64_t q0 = 0; q0 * PK_VALS(DP) < k; q0 += PK_KC) {
        const int64_t nv = TL_MIN((int64_t)PK_KC * PK_VALS(DP), k - q0 * PK_VALS(DP)); /* values in the chunk */
        const int64_t kw = (nv + PK_VALS(DP) - 1) / PK_VALS(DP), kwp = (kw + 15) / 16 * 16;
        for (int64_t r = 0; r < panels; r++)
            packed_pack(WT, DP, a, i0 + r * PK_MR, (int)TL_MIN((int64_t)PK_MR, rows - r * PK_MR), q0, nv, pk + r * PK_MR * kwp);
        /* the next chunk's weights and the next token tile's chunk of activations are prefetched a
         * slice per micro-kernel call, so packing and the first panel read cache, not DRAM / L3 */
        const int vb = WT == TL_F32 ? 4 : 2, v1 = q0 * PK_VALS(DP) + nv;
        packed_prefetch pw = packed_prefetch_plan(a->w + i0 * a->ldw + v1 * vb, a->ldw, rows,
                                          TL_MIN((int64_t)PK_KC * PK_VALS(DP), k - v1) * vb,
                                          ((j1 - j0 + PK_NR - 1) / PK_NR) * panels);
        /* tokens outer: the 12 tokens' chunk stays in L1, panels come from L2 (rows outer: -4 to -8 %) */
        for (int64_t j = j0; j < j1; j += PK_NR) {
            packed_prefetch px = packed_prefetch_plan(a->act + (j + PK_NR) * a->ldact + q0 * 4, a->ldact,
                                              TL_MIN((int64_t)PK_NR, j1 - j - PK_NR), kw * 4, panels);
            for (int64_t r = 0; r < panels; r++) {
                packed_prefetch_some(&pw);
                packed_prefetch_some(&px);
                const int nr = (int)TL_MIN((int64_t)PK_NR, j1 - j);
                const float *x = (const float *)(a->act + j * a->ldact) + q0;
                const int64_t left = rows - r * PK_MR;
                const __mmask16 m0 = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
                const __mmask16 m1 = left >= 32 ? (__mmask16)0xffff : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
                packed_micro_n(DP, nr, kw, pk + r * PK_MR * kwp, x, ldx, a->y + j * a->ldy + i0 + r * PK_MR, a->ldy, q0 == 0,
                           m0, m1);
            }
        }
    }
}

static void f32_block_32x12(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    packed_block_impl(TL_F32, 0, tl_avx512_f32_tile_4x6, a, i0, i1, j0, j1);
}
static void f16_block_32x12(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    packed_block_impl(TL_F16, 0, tl_avx512_f16_tile_4x6, a, i0, i1, j0, j1);
}
static void bf16_block_32x12(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    packed_block_impl(TL_BF16, 0, tl_avx512_bf16_tile_4x6, a, i0, i1, j0, j1);
}

static void bf16dp_block_32x12(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    packed_block_impl(TL_BF16, 1, tl_avx512_bf16dp_tile_4x6, a, i0, i1, j0, j1);
}

/* ---- table entries: tile() covers any rm <= 32, rn <= 12 with 4 x 6 tiles (for the contract; the
 * driver only calls block()) ------------------------------------------------------------------- */
#define PACKED(NAME, ROW_BYTES, PREPARE, ACT, KC)                                                       \
    static void NAME##_tile_any(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {       \
        packed_tiles(tl_avx512_##NAME##_tile_4x6, a, i0, i0 + rm, j0, j0 + rn);                          \
    }                                                                                                   \
    const tl_ukernel tl_avx512_##NAME##_packed_32x12 = {                                                \
        .rm = PK_MR, .rn = PK_NR, .tile = NAME##_tile_any, .block = NAME##_block_32x12,                 \
        .act_row_bytes = ROW_BYTES, .act_prepare = PREPARE, .act_type = ACT, .kc = KC};
PACKED(f32, tl_avx512_f32_act_row_bytes, tl_avx512_f32_act_prepare, 0, PK_KC)
PACKED(f16, tl_avx512_f32_act_row_bytes, tl_avx512_f32_act_prepare, 0, PK_KC)
PACKED(bf16, tl_avx512_f32_act_row_bytes, tl_avx512_f32_act_prepare, 0, PK_KC)
PACKED(bf16dp, tl_avx512_bf16_act_row_bytes, tl_avx512_bf16_act_prepare, TL_BF16, 2 * PK_KC)
