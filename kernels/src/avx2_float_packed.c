/* avx2_float_packed.c — AVX2 prompt GEMM for float weights (f32, f16, bf16) on packed weight panels
 * (avx2.h's float loads; avx2_float.c's 3 x 4 tiles for the contract's tile() and as the fallback
 * without scratch memory).
 *
 * Why: the 3 x 4 dot-product tile loads 7 vectors per 12 FMAs from rows that do not stay in L1
 * for k >= ~1k. This is the BLIS arrangement for 16 ymm registers instead, weights in lanes and
 * tokens broadcast:
 *   - per K chunk of PK_KC values and per group of up to PK_GROUP panels, the job's weight rows are
 *     converted to f32 (F16C / shift) and packed k-major in panels of 16 rows (panel[p][r]) by 8 x 8
 *     transposes; each packed value then serves every token of the job;
 *   - micro-kernel: 16 rows (2 ymm) x PK_NR = 6 tokens = 12 accumulators; per k 2 panel loads and 6
 *     broadcasts of x[j][p] feed 12 FMAs (15 registers), unrolled by 4;
 *   - the 6 tokens' chunk (6 KB) stays in L1 while the group's panels (<= 128 KB) stream from L2,
 *     which fits a 512 KB L2 (Zen 2/3) with room for the activations and the prefetched weights;
 *   - a job of more than one group copies each token tile's chunk next to the others on its first
 *     group (the prepared rows are 4k bytes apart: for k = 2048 every token's chunk falls in the same
 *     L1 sets and in 1/8 of the L2 sets, so the old broadcasts straight from the rows missed), and the
 *     later groups broadcast from the copy. A single-group job (e.g. 256-row k / v) reads the rows.
 *   Both (copy, unroll) measured together against the previous kernel, in one process alternating
 *   call by call, 1 thread, CPU time, n = 512, f32: 2048x2048 +16 %, 5632x2048 +17 %, 2048x5632 +15 %,
 *   256x2048 +11 %; 2 threads +5 to +15 %, f16 / bf16 alike; a prefetch of y before the RMW +0-1 %
 *   (not kept), unrolling by 8 as by 4.
 * Output (i, j) is, per chunk, one FMA chain over its values in order, and the chunk sums are added in
 * order (blocked summation: chains of at most 256 terms, not k), so it depends only on k:
 * bit-identical for any thread count, tile, group or chunk position — and to avx512's packed kernel
 * (same chunk size and order; exact bf16 there). It is a different order from the tiles and the
 * gemv (lanes p % 8, then a tree), so a prompt row and a decoded token differ in the last bits, as
 * they do in llama.cpp.
 */
#include <immintrin.h>

#include "avx2.h"
#include "threadpool.h"

#define PK_MR 16    /* rows per packed panel: two ymm */
#define PK_NR 6     /* tokens per micro-kernel: 12 accumulators + 2 weights + 1 broadcast */
#define PK_KC 256   /* values per chunk: 6 tokens x 256 x 4 B = 6 KB of L1; avx512's chunk (same bits) */
#define PK_GROUP 8  /* panels packed and streamed together: 8 x 16 KB = 128 KB of L2 */
#define PK_XB 516   /* tokens whose chunks are copied side by side at once (86 tiles): 516 KB */

/* 8 x 8 transpose of r[0..7] in place (r[i] lane j -> r[j] lane i). */
TL_INLINE void pk_transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);     /* per 128-bit half: a0 b0 a1 b1 */
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]); /*                  a2 b2 a3 b3 */
    }
    for (int h = 0; h < 2; h++) { /* rows 4h .. 4h + 3: u[4h + c] = column c (| c + 4) of them */
        u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0x44);
        u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0xEE);
        u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
        u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

/* Pack rows [i0, i0 + rows) (rows <= 16) x values [q0, q0 + nv) into dst[q][16] (q < round_up(nv, 8))
 * as f32; rows past `rows` and values past nv are zero. */
TL_INLINE void pk_pack(const int WT, const tl_gemm_args *a, int64_t i0, int rows, int64_t q0, int64_t nv, float *dst) {
    const __m256 z = _mm256_setzero_ps();
    for (int h = 0; h < 2; h++) {
        const int r0 = 8 * h;
        for (int64_t q = 0; q < nv; q += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) {
                const uint8_t *w = a->w + (i0 + r0 + i) * a->ldw;
                if (r0 + i >= rows) r[i] = z;
                else if (nv - q >= 8) r[i] = avx2_f_load(WT, w, q0 + q);
                else r[i] = avx2_f_load_part(WT, w, q0 + q, q0 + nv);
            }
            pk_transpose8(r);
            for (int t = 0; t < 8; t++) _mm256_store_ps(dst + (q + t) * PK_MR + r0, r[t]);
        }
    }
}

/* y[j][0 .. rows) (+)= panel . x[j] over kw values, for NR tokens ldx floats apart at x (rows <= 16: masked
 * stores). */
TL_INLINE void pk_micro(const int NR, int64_t kw, const float *pw, const float *x, int64_t ldx, float *y, int64_t ldy,
                        int first, int rows) {
    __m256 c0[PK_NR], c1[PK_NR];
    for (int j = 0; j < NR; j++) {
        c0[j] = _mm256_setzero_ps();
        c1[j] = _mm256_setzero_ps();
    }
    /* unrolled: the loop's pointer steps and branch would otherwise take FMA-port slots from one step in four */
#pragma GCC unroll 4
    for (int64_t p = 0; p < kw; p++) {
        const __m256 w0 = _mm256_load_ps(pw + p * PK_MR), w1 = _mm256_load_ps(pw + p * PK_MR + 8);
        for (int j = 0; j < NR; j++) {
            const __m256 b = _mm256_broadcast_ss(x + j * ldx + p);
            c0[j] = _mm256_fmadd_ps(w0, b, c0[j]);
            c1[j] = _mm256_fmadd_ps(w1, b, c1[j]);
        }
    }
    if (rows == PK_MR) {
        for (int j = 0; j < NR; j++) {
            float *yj = y + j * ldy;
            if (!first) { /* the chunk's sum is added to the earlier chunks' (blocked summation) */
                c0[j] = _mm256_add_ps(_mm256_loadu_ps(yj), c0[j]);
                c1[j] = _mm256_add_ps(_mm256_loadu_ps(yj + 8), c1[j]);
            }
            _mm256_storeu_ps(yj, c0[j]);
            _mm256_storeu_ps(yj + 8, c1[j]);
        }
        return;
    }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(rows), lane);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(rows - 8), lane);
    for (int j = 0; j < NR; j++) {
        float *yj = y + j * ldy;
        if (!first) {
            c0[j] = _mm256_add_ps(_mm256_maskload_ps(yj, m0), c0[j]);
            c1[j] = _mm256_add_ps(_mm256_maskload_ps(yj + 8, m1), c1[j]);
        }
        _mm256_maskstore_ps(yj, m0, c0[j]);
        _mm256_maskstore_ps(yj + 8, m1, c1[j]);
    }
}

TL_INLINE void pk_micro_n(int nr, int64_t kw, const float *pw, const float *x, int64_t ldx, float *y, int64_t ldy,
                          int first, int rows) {
    switch (nr) {
#define C_(N) case N: pk_micro(N, kw, pw, x, ldx, y, ldy, first, rows); break;
    C_(1) C_(2) C_(3) C_(4) C_(5) C_(6)
#undef C_
    default: break;
    }
}

/* Values [q0, q0 + nv) of token rows [j0, j1) into xp[(j - j0) * PK_KC ..]: the chunk's rows side by side, so
 * a token tile's 6 KB is contiguous (the prepared rows are 4k bytes apart, rounded up to 64: for k a multiple of
 * 1024 every row's chunk falls in the same L1 and L2 sets). Rows are zero-padded to 16 values, so whole vectors
 * up to nv rounded up to 8 stay inside them. */
TL_INLINE void pk_pack_x(const tl_gemm_args *a, int64_t j0, int64_t j1, int64_t q0, int64_t nv, float *xp) {
    for (int64_t j = j0; j < j1; j++) {
        const float *src = (const float *)(a->act + j * a->ldact) + q0;
        float *dst = xp + (j - j0) * PK_KC;
        for (int64_t q = 0; q < nv; q += 8) _mm256_store_ps(dst + q, _mm256_load_ps(src + q));
    }
}

typedef void (*pk_tile_fn)(const tl_gemm_args *, int64_t, int64_t, int, int);

/* The 3 x 4 tiles over a block (the contract's tile(), or no scratch memory). */
static void pk_tiles(pk_tile_fn tile, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const int64_t n = j1 - j0, nt = (n + AVX2_F_RN - 1) / AVX2_F_RN; /* balanced token tiles, as the driver's */
    for (int64_t i = i0; i < i1; i += AVX2_F_RM)
        for (int64_t c = 0; c < nt; c++)
            tile(a, i, j0 + n * c / nt, (int)TL_MIN((int64_t)AVX2_F_RM, i1 - i), (int)(n * (c + 1) / nt - n * c / nt));
}

/* Software prefetch of a rows x bytes region (row stride ld), a slice per step over `steps` steps. */
typedef struct {
    const char *row;
    int64_t ld, lines, rows_left, line, per;
} pk_prefetch;

static pk_prefetch pk_prefetch_plan(const uint8_t *base, int64_t ld, int64_t rows, int64_t bytes, int64_t steps) {
    pk_prefetch f = {(const char *)base, ld, 0, 0, 0, 0};
    if (rows <= 0 || bytes <= 0 || steps <= 0) return f;
    f.lines = (bytes + 63) / 64 + 1; /* + 1: a row need not start on a line */
    f.rows_left = rows;
    f.per = (rows * f.lines + steps - 1) / steps;
    return f;
}

TL_INLINE void pk_prefetch_some(pk_prefetch *f) {
    for (int64_t c = 0; c < f->per && f->rows_left > 0; c++) {
        _mm_prefetch(f->row + f->line * 64, _MM_HINT_T0);
        if (++f->line == f->lines) {
            f->line = 0;
            f->row += f->ld;
            f->rows_left--;
        }
    }
}

TL_INLINE void pk_block_impl(const int WT, pk_tile_fn tile, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0,
                             int64_t j1) {
    const int64_t k = a->k, rows = i1 - i0, panels = (rows + PK_MR - 1) / PK_MR;
    const int64_t gp = TL_MIN((int64_t)PK_GROUP, panels);
    const int64_t xb = TL_MIN(j1 - j0, (int64_t)PK_XB); /* tokens per sub-block */
    float *pk = (float *)tl_scratch((size_t)((gp * PK_MR + (panels > gp ? xb : 0)) * PK_KC * 4));
    if (!pk) { /* no memory for the panels: the dot-product tiles need none */
        pk_tiles(tile, a, i0, i1, j0, j1);
        return;
    }
    float *xp = pk + gp * PK_MR * PK_KC;
    const int64_t vb = WT == TL_F32 ? 4 : 2;
    for (int64_t jb0 = j0; jb0 < j1; jb0 += xb) {
        const int64_t jb1 = TL_MIN(j1, jb0 + xb), tiles = (jb1 - jb0 + PK_NR - 1) / PK_NR;
        for (int64_t q0 = 0; q0 < k; q0 += PK_KC) {
            const int64_t nv = TL_MIN((int64_t)PK_KC, k - q0), kwp = (nv + 7) / 8 * 8;
            for (int64_t g0 = 0; g0 < panels; g0 += gp) {
                const int64_t ng = TL_MIN(gp, panels - g0), gi0 = i0 + g0 * PK_MR;
                const int64_t grows = TL_MIN(ng * PK_MR, i1 - gi0);
                for (int64_t r = 0; r < ng; r++)
                    pk_pack(WT, a, gi0 + r * PK_MR, (int)TL_MIN((int64_t)PK_MR, grows - r * PK_MR), q0, nv,
                            pk + r * PK_MR * kwp);
                /* the next group's (or the next chunk's first group's) weights are prefetched a slice per
                 * micro-kernel call, so packing reads cache, not DRAM / L3 */
                const int last_group = g0 + gp >= panels;
                const int64_t nq0 = last_group ? q0 + PK_KC : q0, nr0 = last_group ? i0 : gi0 + grows;
                const int64_t nrows = last_group ? TL_MIN(gp * PK_MR, rows) : TL_MIN(gp * PK_MR, i1 - nr0);
                pk_prefetch pw = pk_prefetch_plan(a->w + nr0 * a->ldw + nq0 * vb, a->ldw, nq0 < k ? nrows : 0,
                                                  TL_MIN((int64_t)PK_KC, k - nq0) * vb, tiles * ng);
                /* tokens outer: the 6 tokens' chunk stays in L1, the group's panels come from L2. With more than one
                 * group per chunk, the first copies each token tile's chunk next to the others and the later ones
                 * read the copy (a constant stride, no set conflicts); the next tile's rows are prefetched a slice
                 * per micro-kernel call. */
                const int copy = panels > gp;
                const int64_t ldx = copy ? PK_KC : a->ldact / 4;
                for (int64_t j = jb0; j < jb1; j += PK_NR) {
                    const int nr = (int)TL_MIN((int64_t)PK_NR, jb1 - j);
                    float *xc = xp + (j - jb0) * PK_KC;
                    const float *x = copy ? xc : (const float *)(a->act + j * a->ldact) + q0;
                    pk_prefetch px = pk_prefetch_plan(a->act + (j + PK_NR) * a->ldact + q0 * 4, a->ldact,
                                                      g0 == 0 ? TL_MIN((int64_t)PK_NR, jb1 - j - PK_NR) : 0, nv * 4,
                                                      ng);
                    if (copy && g0 == 0) pk_pack_x(a, j, j + nr, q0, nv, xc);
                    for (int64_t r = 0; r < ng; r++) {
                        pk_prefetch_some(&pw);
                        pk_prefetch_some(&px);
                        pk_micro_n(nr, nv, pk + r * PK_MR * kwp, x, ldx, a->y + j * a->ldy + gi0 + r * PK_MR, a->ldy,
                                   q0 == 0, (int)TL_MIN((int64_t)PK_MR, grows - r * PK_MR));
                    }
                }
            }
        }
    }
}

static void f32_block_16x6(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    pk_block_impl(TL_F32, tl_avx2_f32_tile_3x4, a, i0, i1, j0, j1);
}
static void f16_block_16x6(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    pk_block_impl(TL_F16, tl_avx2_f16_tile_3x4, a, i0, i1, j0, j1);
}
static void bf16_block_16x6(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    pk_block_impl(TL_BF16, tl_avx2_bf16_tile_3x4, a, i0, i1, j0, j1);
}

/* ---- table entries: tile() covers any rm <= 16, rn <= 6 with 3 x 4 tiles (for the contract; the driver
 * only calls block()) -------------------------------------------------------------------------------- */
#define PACKED(NAME)                                                                                      \
    static void NAME##_tile_any(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {         \
        pk_tiles(tl_avx2_##NAME##_tile_3x4, a, i0, i0 + rm, j0, j0 + rn);                                 \
    }                                                                                                     \
    const tl_ukernel tl_avx2_##NAME##_packed_16x6 = {                                                     \
        .rm = PK_MR, .rn = PK_NR, .tile = NAME##_tile_any, .block = NAME##_block_16x6, .kc = PK_KC};
PACKED(f32)
PACKED(f16)
PACKED(bf16)
