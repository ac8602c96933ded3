/* sme_mopa.c — SME / SME2 prompt-batch GEMM after MpGEMM (see docs/mpgemm.md), compiled into the sme
 * variant (TL_SME2 = 0) and the sme2 variant (TL_SME2 = 1: its flags define __ARM_FEATURE_SME2).
 *
 * Problem: Y[j][i] = sum_k X[j][k] W[i][k], tokens j, features i, y row-major over tokens
 * (features contiguous). With L = SVL/32 (32-bit lanes per streaming vector: 4 … 64; 16 on
 * an Apple M4) the four 32-bit ZA tiles hold one output block, in one of two shapes:
 *   16x64 ("wide"): L tokens x 4L features, za0..za3 = features [0,L) … [3L,4L) side by side;
 *          per k step ONE A-vector load (L tokens), ONE four-register B load (4L features;
 *          SME2 `ld1w {z.s-z.s}`, SME1 four `ld1w`), FOUR MOPAs sharing the A vector;
 *   64x16 ("tall"): 4L tokens x L features, za0..za3 = tokens [0,L) … [3L,4L) stacked;
 *          per k step ONE four-register A load, ONE B-vector load, FOUR MOPAs sharing B.
 * The shape is chosen per weight panel (fewer micro-kernel passes wins, ties go wide): tall
 * for the m-edge panel (<= 3L features left) or small m with many tokens. The context's
 * sme_tile option forces one (test hook).
 *
 * A "k step" is one 32-bit lane per operand: one k value (f32 FMOPA) or a PAIR of k values
 * (f16 widening FMOPA / BFMOPA: ZA[i][j] += a[2i]b[2j] + a[2i+1]b[2j+1], accumulated in f32).
 *   f32, q8_0, q4_0, q4_1 weights: f32 FMOPA; weights dequantized to f32 while packing (f16
 *       never, q8_0 d*q, q4_0 d*(q-8), q4_1 d*q + m: block scale and min folded in), q8
 *       activations dequantized (d * q per scale group) on their way into the strip;
 *   f16 weights: widening FMOPA (f16 pairs -> f32). Activations are prepared as f16 with a
 *       per-row power-of-two scale (act type TL_F16): x ~ s * h, max |h| in [2^14, 2^15), so
 *       nothing overflows fp16 (max 65504) and few values go subnormal; s is applied to the
 *       row when its result leaves ZA (exact: a power of two);
 *   bf16 weights: f32 FMOPA (weights widened while packing, f32 activations) by default; with
 *       the context's sme_bf16 option, BFMOPA with activations rounded
 *       to bf16 (act type TL_BF16, round to nearest even). Not the default: bf16 activations put
 *       llama2-micro-bf16 at mean |dlogit| 6.60e-3, just above llama.cpp's 6.59e-3, and on an M4
 *       BFMOPA has no more compute than f32 FMOPA (docs/mpgemm.md).
 * The 16-bit operands need no conversion: both are copied as pairs (one 32-bit lane = two
 * adjacent k values), transposed through ZA like f32. ZA is always f32: ZA is zeroed for the
 * first K-chunk, y written after each chunk and reloaded for the next (sequential over K).
 *
 * Both operands are k-contiguous in memory, so both are transposed into per-k-step vectors:
 *   - activation strips (L tokens x KC steps) once per K-chunk of the block, through ZA tile 0
 *     (rows written as horizontal slices, read back as vertical slices), stored in groups of
 *     four strips ("super-strips" of 4L tokens) so that the tall kernel's A operand is one
 *     four-register load: at[(S*KC + kk)*4L + u], token u of super-strip S;
 *   - weight panels (4L features x KC steps) on their first use inside the block, through all
 *     four tiles: bp[kk*4L + feature]; reused by every token strip of the block (KC = 1024).
 *
 * Streaming rules: the only streaming function is tl_sme_block_run, a leaf declared
 * __arm_locally_streaming __arm_new("za") (the compiler emits smstart/smstop, the lazy-ZA
 * commit via __arm_tpidr2_save, and keeps d8-d15); its helpers are always-inline streaming
 * functions or macros; no NEON, no calls out, no malloc inside it (scratch comes from the
 * non-streaming caller). Vector-length agnostic: every stride is in units of L (svcntsw()).
 *
 * Small batches: n < TL_SME_MIN_N and n == 1 (gemv) run the NEON kernels (neon.h,
 * compiled into this variant), so the SME unit is only started for prompt batches. For f16 /
 * bf16 weights they get f32 rows of the SAME rounded activations (s * h, bf16 widened), so a
 * token's result does not depend on the batch size's path.
 */
#include <arm_sme.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "neon.h"
#include "sme.h"
#include "threadpool.h"

#if defined(__ARM_FEATURE_SME2)
#define TL_SME2 1 /* four-register loads in the micro-kernel */
#else
#define TL_SME2 0
#endif

#define TL_SME_KC 1024  /* k steps per packed chunk: 4L x KC x 4 B panel = 256 KiB at SVL 512 */
#define TL_SME_RN 128   /* tokens per driver token tile: the block a packed panel serves */
#define TL_SME_MIN_N 8  /* batches below this run the NEON kernels */

#define TL_SME_INLINE static inline __attribute__((always_inline))

enum { TL_SME_MOPA_F32, TL_SME_MOPA_F16, TL_SME_MOPA_BF16 };  /* MOPA flavour = weight family */
enum { TL_SME_ACT_F32, TL_SME_ACT_Q8, TL_SME_ACT_H16 };      /* prepared activation rows */
enum { TL_SME_SHAPE_AUTO, TL_SME_SHAPE_WIDE, TL_SME_SHAPE_TALL };

static int64_t tl_sme_L; /* 32-bit lanes per streaming vector (hardware), set by tl_sme_init */

typedef struct {
    const tl_gemm_args *a;
    int64_t i0, i1, j0, j1;
    float *at;    /* transposed activations: at[(S*KC + kk)*4L + u] (super-strip S, token u) */
    float *bp;    /* packed weight panel: bp[kk*4L + feature] */
    int mopa;     /* TL_SME_MOPA_* */
    int act;      /* TL_SME_ACT_* */
    int shape;    /* TL_SME_SHAPE_*: AUTO picks per panel */
    int wbytes;   /* bytes per 32-block of quantized weights */
    int64_t kw;   /* k steps per row: k, or ceil(k/2) pairs for f16 / bf16 */
    int64_t soff; /* f16 activations: byte offset of the row's f32 scale in its row, else 0 */
} tl_sme_job;

/* ---- the f16 / bf16 activation layouts (act types TL_F16 / TL_BF16 of these variants) --------
 * TL_F16:  bytes [0, 2k) f16 h[k], zero pad to S = round_up(2k, 4), f32 s at S, zero pad;
 *          ldact = round_up(S + 4, 64). Value x ~ s * h: s = 2^e with e = clamp(E - 15, -126, ..)
 *          where max |x| over the row's finite values is in [2^(E-1), 2^E) (s = 1 if all zero),
 *          h = f16(x / s) rounded to nearest even, so max |h| in [2^14, 2^15).
 * TL_BF16: bytes [0, 2k) bf16 b[k] (round to nearest even, nan stays nan), zero pad;
 *          ldact = round_up(2k, 64). */
TL_INLINE int64_t tl_sme_f16_soff(int64_t k) { return tl_round_up(2 * k, 4); }
static int64_t tl_sme_act_bytes_f16(int64_t k) { return tl_round_up(tl_sme_f16_soff(k) + 4, TL_ACT_ALIGN); }
static int64_t tl_sme_act_bytes_bf16(int64_t k) { return tl_round_up(2 * k, TL_ACT_ALIGN); }

static void tl_sme_prep_f16(const float *x, int64_t ldx, int64_t j0, int64_t j1, int64_t k, uint8_t *act,
                            int64_t ldact) {
    const int64_t soff = tl_sme_f16_soff(k);
    for (int64_t j = j0; j < j1; j++) {
        const float *xr = x + j * ldx;
        uint8_t *row = act + j * ldact;
        float amax = 0.0f;
        for (int64_t i = 0; i < k; i++) {
            const float v = fabsf(xr[i]);
            amax = v <= FLT_MAX && v > amax ? v : amax; /* finite values only */
        }
        int e = 0;
        if (amax > 0.0f) {
            (void)frexpf(amax, &e); /* amax in [2^(e-1), 2^e) */
            e = TL_MAX(e - 15, -126);
        }
        const float inv = ldexpf(1.0f, -e), s = ldexpf(1.0f, e);
        __fp16 *h = (__fp16 *)(void *)row;
        for (int64_t i = 0; i < k; i++) h[i] = (__fp16)(xr[i] * inv); /* exact scaling, one rounding */
        memset(row + 2 * k, 0, (size_t)(ldact - 2 * k));
        memcpy(row + soff, &s, 4);
    }
}

static void tl_sme_prep_bf16(const float *x, int64_t ldx, int64_t j0, int64_t j1, int64_t k, uint8_t *act,
                             int64_t ldact) {
    for (int64_t j = j0; j < j1; j++) {
        const float *xr = x + j * ldx;
        uint8_t *row = act + j * ldact;
        uint16_t *b = (uint16_t *)(void *)row;
        for (int64_t i = 0; i < k; i++) {
            const uint32_t u = tl_f32_bits(xr[i]);
            b[i] = (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((u >> 16) | 0x40u)  /* quiet nan */
                                                   : (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
        memset(row + 2 * k, 0, (size_t)(ldact - 2 * k));
    }
}

/* ---- streaming helpers ------------------------------------------------------------------------ */

/* 32-bit lanes [w0, wend) of a row of 16-bit values as pairs (lane = values 2w, 2w+1); values
 * past k (odd k) and lanes past wend zero. */
TL_SME_INLINE svfloat32_t tl_sme_pair_vec(const uint8_t *row, int64_t w0, int64_t wend, int64_t k) __arm_streaming {
    const svbool_t ph = svwhilelt_b16(2 * w0, TL_MIN(2 * wend, k));
    return svreinterpret_f32_u16(svld1_u16(ph, (const uint16_t *)(const void *)row + 2 * w0));
}

/* Activations of token row `tok`, k steps [k0, k0+L) (lanes beyond kend zero). */
TL_SME_INLINE svfloat32_t tl_sme_act_vec(const tl_sme_job *J, int64_t tok, int64_t k0, int64_t kend)
    __arm_streaming {
    const uint8_t *row = J->a->act + tok * J->a->ldact;
    if (J->act == TL_SME_ACT_H16) return tl_sme_pair_vec(row, k0, kend, J->a->k);
    const svbool_t pk = svwhilelt_b32(k0, kend);
    if (J->act == TL_SME_ACT_F32) return svld1_f32(pk, (const float *)(const void *)row + k0);
    /* q8 layout: int8 qs[k], then one f32 scale per TL_QG values (k0 is a multiple of L,
     * so a vector spans whole groups when L >= TL_QG and lies in one group otherwise) */
    const float *d = (const float *)(const void *)(row + J->a->k); /* tl_q8a_d (not streaming-inlinable) */
    const svfloat32_t v = svcvt_f32_s32_z(pk, svld1sb_s32(pk, (const int8_t *)row + k0));
    svfloat32_t sc = svdup_n_f32(d[k0 / TL_QG]);
    for (int64_t l0 = TL_QG; l0 < (int64_t)svcntw() && k0 + l0 < kend; l0 += TL_QG)
        sc = svsel_f32(svwhilelt_b32((int64_t)0, l0), sc, svdup_n_f32(d[(k0 + l0) / TL_QG]));
    return svmul_f32_z(pk, v, sc);
}

/* f16 bits (low half of each 32-bit lane) -> f32. */
TL_SME_INLINE svfloat32_t tl_sme_h2f(svbool_t pg, svuint32_t h) __arm_streaming {
    return svcvt_f32_f16_z(pg, svreinterpret_f16_u32(h));
}

/* Weights of row wrow at k in [k0, k0+L) dequantized to f32, lanes beyond kend zero. */
TL_SME_INLINE svfloat32_t tl_sme_w_vec(const int wt, const int bb, const uint8_t *wrow, int64_t k0, int64_t kend)
    __arm_streaming {
    const svbool_t pk = svwhilelt_b32(k0, kend);
    if (wt == TL_F32) return svld1_f32(pk, (const float *)(const void *)wrow + k0);
    if (wt == TL_F16) return tl_sme_h2f(pk, svld1uh_u32(pk, (const uint16_t *)(const void *)wrow + k0));
    if (wt == TL_BF16)
        return svreinterpret_f32_u32(svlsl_n_u32_z(pk, svld1uh_u32(pk, (const uint16_t *)(const void *)wrow + k0), 16));
    /* q8_0 / q4_0 / q4_1: groups of up to 16 lanes that lie in one half of one 32-block */
    const int64_t L = (int64_t)svcntw();
    const int64_t step = L < 16 ? L : 16;
    svfloat32_t out = svdup_n_f32(0.0f);
    for (int64_t l0 = 0; l0 < L && k0 + l0 < kend; l0 += step) {
        const int64_t e = k0 + l0, t = e % TL_QK;
        const uint8_t *blk = wrow + (e / TL_QK) * bb;
        const svbool_t pg = svand_b_z(pk, svwhilelt_b32((int64_t)0, l0 + step), svnot_b_z(svptrue_b32(), svwhilelt_b32((int64_t)0, l0)));
        const svfloat32_t d = tl_sme_h2f(pg, svdup_n_u32(blk[0] | (uint32_t)blk[1] << 8));
        svfloat32_t v;
        if (wt == TL_Q8_0) {
            v = svmul_f32_z(pg, svcvt_f32_s32_z(pg, svld1sb_s32(pg, (const int8_t *)(blk + 2) + t - l0)), d);
        } else {
            const uint8_t *qs = blk + (wt == TL_Q4_1 ? 4 : 2);
            svuint32_t u = svld1ub_u32(pg, qs + (t & 15) - l0);
            if (t >= 16) u = svlsr_n_u32_z(pg, u, 4);
            u = svand_n_u32_z(pg, u, 15);
            svfloat32_t q = svcvt_f32_s32_z(pg, svreinterpret_s32_u32(u));
            if (wt == TL_Q4_0) {
                v = svmul_f32_z(pg, svsub_n_f32_z(pg, q, 8.0f), d);
            } else {
                const svfloat32_t m = tl_sme_h2f(pg, svdup_n_u32(blk[2] | (uint32_t)blk[3] << 8));
                v = svadd_f32_z(pg, svmul_f32_z(pg, q, d), m);
            }
        }
        out = svsel_f32(pg, v, out);
    }
    return out;
}

/* One k-step vector of weight row wrow: f16 / bf16 as pairs, everything else as f32. */
TL_SME_INLINE svfloat32_t tl_sme_w_step(const tl_sme_job *J, const uint8_t *wrow, int64_t k0, int64_t kend)
    __arm_streaming {
    if (J->mopa != TL_SME_MOPA_F32) return tl_sme_pair_vec(wrow, k0, kend, J->a->k);
    return tl_sme_w_vec(J->a->wtype, J->wbytes, wrow, k0, kend);
}

/* MOPA rows predicate for n valid rows (pairs of 16-bit elements for the widening flavours). */
TL_SME_INLINE svbool_t tl_sme_prows(const int mopa, int64_t n) __arm_streaming {
    n = TL_MAX(n, (int64_t)0);
    return mopa == TL_SME_MOPA_F32 ? svwhilelt_b32((int64_t)0, n) : svwhilelt_b16((int64_t)0, 2 * n);
}

/* Rows of tile T (features p0 + T*L + r, r < nf) at k chunk [kb, kb+L) into ZA tile T. */
#define TL_SME_PACK_ROWS(T)                                                                     \
    do {                                                                                        \
        const int64_t f0 = p0 + (T) * L;                                                        \
        for (int64_t r = 0; r < L && f0 + r < pend; r++)                                        \
            svwrite_hor_za32_f32_m(T, (uint32_t)r, pall,                                        \
                                   tl_sme_w_step(J, a->w + (f0 + r) * a->ldw, pc + kb, pc + kc)); \
    } while (0)

/* Four consecutive vectors at ptr: SME2 one `ld1w {z.s-z.s}`, SME1 four `ld1w`. */
#if TL_SME2
#define TL_SME_LOAD4(v, ptr)                                                 \
    svfloat32x4_t v##4 = svld1_f32_x4(pnall, (ptr));                         \
    const svfloat32_t v##0 = svget4_f32(v##4, 0), v##1 = svget4_f32(v##4, 1), \
                      v##2 = svget4_f32(v##4, 2), v##3 = svget4_f32(v##4, 3)
#else
#define TL_SME_LOAD4(v, ptr)                                                 \
    const svfloat32_t v##0 = svld1_f32(pall, (ptr)), v##1 = svld1_f32(pall, (ptr) + L), \
                      v##2 = svld1_f32(pall, (ptr) + 2 * L), v##3 = svld1_f32(pall, (ptr) + 3 * L)
#endif

/* ZA tile T += outer product of A and B in flavour M (the 16-bit ones read each lane as a pair). */
#define TL_SME_MOPA(M, T, PA, A, B)                                                                       \
    do {                                                                                                  \
        if ((M) == TL_SME_MOPA_F32) svmopa_za32_f32_m(T, PA, pall, A, B);                                 \
        else if ((M) == TL_SME_MOPA_F16)                                                                  \
            svmopa_za32_f16_m(T, PA, pall, svreinterpret_f16_f32(A), svreinterpret_f16_f32(B));          \
        else svmopa_za32_bf16_m(T, PA, pall, svreinterpret_bf16_f32(A), svreinterpret_bf16_f32(B));     \
    } while (0)

/* The wide micro-kernel (L tokens x 4L features): per k step one A vector (stride 4L: strips
 * sit in super-strips), one 4-vector B row, four MOPAs sharing A. */
#define TL_SME_KERNEL_WIDE(M)                                            \
    for (int64_t kk = 0; kk < kc; kk++) {                                \
        const svfloat32_t av = svld1_f32(pall, ap + kk * L4);            \
        TL_SME_LOAD4(b, bq + kk * L4);                                   \
        TL_SME_MOPA(M, 0, pa, av, b0);                                   \
        TL_SME_MOPA(M, 1, pa, av, b1);                                   \
        TL_SME_MOPA(M, 2, pa, av, b2);                                   \
        TL_SME_MOPA(M, 3, pa, av, b3);                                   \
    }

/* The tall micro-kernel (4L tokens x L features): per k step one 4-vector A column (a whole
 * super-strip), one B vector, four MOPAs sharing B. */
#define TL_SME_KERNEL_TALL(M)                                            \
    for (int64_t kk = 0; kk < kc; kk++) {                                \
        TL_SME_LOAD4(a, ap + kk * L4);                                   \
        const svfloat32_t bv = svld1_f32(pall, bq + kk * L4);            \
        TL_SME_MOPA(M, 0, pa0, a0, bv);                                  \
        TL_SME_MOPA(M, 1, pa1, a1, bv);                                  \
        TL_SME_MOPA(M, 2, pa2, a2, bv);                                  \
        TL_SME_MOPA(M, 3, pa3, a3, bv);                                  \
    }

#define TL_SME_RUN(KERNEL)                                     \
    do {                                                       \
        if (mopa == TL_SME_MOPA_F32) { KERNEL(TL_SME_MOPA_F32) } \
        else if (mopa == TL_SME_MOPA_F16) { KERNEL(TL_SME_MOPA_F16) } \
        else { KERNEL(TL_SME_MOPA_BF16) }                      \
    } while (0)

/* ZA row r of tile T -> y row yr (columns under PC); f16 activations: times the token's scale
 * after the last K-chunk (earlier chunks keep the raw sums in y and reload them). */
#define TL_SME_STORE(T, r, PC, yr, tok)                                                            \
    do {                                                                                           \
        if (scaled) {                                                                              \
            const float s_ = *(const float *)(const void *)(a->act + (tok) * a->ldact + J->soff);  \
            const svfloat32_t z_ = svread_hor_za32_f32_m(svdup_n_f32(0.0f), pall, T, (uint32_t)(r)); \
            svst1_f32(PC, yr, svmul_n_f32_x(pall, z_, s_));                                        \
        } else {                                                                                   \
            svst1_hor_za32(T, (uint32_t)(r), PC, yr);                                              \
        }                                                                                          \
    } while (0)

__arm_locally_streaming __arm_new("za") static void tl_sme_block_run(const tl_sme_job *J) {
    const tl_gemm_args *a = J->a;
    const int mopa = J->mopa;
    const int64_t L = (int64_t)svcntsw(), L4 = 4 * L;
    const int64_t kw = J->kw, i1 = J->i1, j0 = J->j0, j1 = J->j1;
    const int64_t nstrips = (j1 - j0 + L - 1) / L, nsuper = (j1 - j0 + L4 - 1) / L4;
    const svbool_t pall = svptrue_b8(); /* every element of every size */
#if TL_SME2
    const svcount_t pnall = svptrue_c32();
#endif
    for (int64_t pc = 0; pc < kw; pc += TL_SME_KC) {
        const int64_t kc = TL_MIN((int64_t)TL_SME_KC, kw - pc);
        const int scaled = J->soff != 0 && pc + kc >= kw;
        /* 1. activation strips -> at: per L x L square, rows in as horizontal slices of za0,
         *    out as vertical slices (one per k step: L tokens) */
        for (int64_t s = 0; s < nstrips; s++) {
            const int64_t t0 = j0 + s * L, nt = TL_MIN(L, j1 - t0);
            float *ats = J->at + (s / 4) * TL_SME_KC * L4 + (s % 4) * L;
            for (int64_t kb = 0; kb < kc; kb += L) {
                svzero_za();
                for (int64_t r = 0; r < nt; r++)
                    svwrite_hor_za32_f32_m(0, (uint32_t)r, pall, tl_sme_act_vec(J, t0 + r, pc + kb, pc + kc));
                const int64_t nk = TL_MIN(L, kc - kb);
                for (int64_t c = 0; c < nk; c++) svst1_ver_za32(0, (uint32_t)c, pall, ats + (kb + c) * L4);
            }
        }
        /* 2. weight panels of 4L features */
        for (int64_t p0 = J->i0; p0 < i1; p0 += L4) {
            const int64_t pend = TL_MIN(p0 + L4, i1);
            /* 2a. pack on first use: 4L rows x L k steps at a time through all four tiles */
            for (int64_t kb = 0; kb < kc; kb += L) {
                svzero_za();
                TL_SME_PACK_ROWS(0);
                TL_SME_PACK_ROWS(1);
                TL_SME_PACK_ROWS(2);
                TL_SME_PACK_ROWS(3);
                const int64_t nk = TL_MIN(L, kc - kb);
                for (int64_t c = 0; c < nk; c++) {
                    float *dst = J->bp + (kb + c) * L4;
                    svst1_ver_za32(0, (uint32_t)c, pall, dst);
                    svst1_ver_za32(1, (uint32_t)c, pall, dst + L);
                    svst1_ver_za32(2, (uint32_t)c, pall, dst + 2 * L);
                    svst1_ver_za32(3, (uint32_t)c, pall, dst + 3 * L);
                }
            }
            /* 2b. the micro-kernel over the block's tokens, in the cheaper shape */
            const int64_t ng = (pend - p0 + L - 1) / L; /* feature groups of L in this panel */
            const int tall = J->shape == TL_SME_SHAPE_TALL || (J->shape == TL_SME_SHAPE_AUTO && nsuper * ng < nstrips);
            if (!tall) {
                const svbool_t pc0 = svwhilelt_b32(p0, pend), pc1 = svwhilelt_b32(p0 + L, pend),
                               pc2 = svwhilelt_b32(p0 + 2 * L, pend), pc3 = svwhilelt_b32(p0 + 3 * L, pend);
                for (int64_t s = 0; s < nstrips; s++) {
                    const int64_t t0 = j0 + s * L, nt = TL_MIN(L, j1 - t0);
                    const svbool_t pa = tl_sme_prows(mopa, nt);
                    if (pc == 0) {
                        svzero_za();
                    } else {
                        for (int64_t r = 0; r < nt; r++) {
                            const float *yr = a->y + (t0 + r) * a->ldy + p0;
                            svld1_hor_za32(0, (uint32_t)r, pc0, yr);
                            svld1_hor_za32(1, (uint32_t)r, pc1, yr + L);
                            svld1_hor_za32(2, (uint32_t)r, pc2, yr + 2 * L);
                            svld1_hor_za32(3, (uint32_t)r, pc3, yr + 3 * L);
                        }
                    }
                    const float *ap = J->at + (s / 4) * TL_SME_KC * L4 + (s % 4) * L;
                    const float *bq = J->bp;
                    TL_SME_RUN(TL_SME_KERNEL_WIDE);
                    for (int64_t r = 0; r < nt; r++) {
                        float *yr = a->y + (t0 + r) * a->ldy + p0;
                        TL_SME_STORE(0, r, pc0, yr, t0 + r);
                        TL_SME_STORE(1, r, pc1, yr + L, t0 + r);
                        TL_SME_STORE(2, r, pc2, yr + 2 * L, t0 + r);
                        TL_SME_STORE(3, r, pc3, yr + 3 * L, t0 + r);
                    }
                }
            } else {
                for (int64_t S = 0; S < nsuper; S++) {
                    const int64_t T0 = j0 + S * L4, ntS = TL_MIN(L4, j1 - T0);
                    const int64_t n0 = TL_MIN(L, ntS), n1 = TL_MIN(L, ntS - L), n2 = TL_MIN(L, ntS - 2 * L),
                                  n3 = TL_MIN(L, ntS - 3 * L);
                    const svbool_t pa0 = tl_sme_prows(mopa, n0), pa1 = tl_sme_prows(mopa, n1),
                                   pa2 = tl_sme_prows(mopa, n2), pa3 = tl_sme_prows(mopa, n3);
                    const float *ap = J->at + S * TL_SME_KC * L4;
                    for (int64_t g = 0; g < ng; g++) {
                        const int64_t f0 = p0 + g * L;
                        const svbool_t pcg = svwhilelt_b32(f0, pend);
                        float *y0 = a->y + T0 * a->ldy + f0;
                        const int64_t ldy = a->ldy;
                        if (pc == 0) {
                            svzero_za();
                        } else {
                            for (int64_t r = 0; r < n0; r++) svld1_hor_za32(0, (uint32_t)r, pcg, y0 + r * ldy);
                            for (int64_t r = 0; r < n1; r++) svld1_hor_za32(1, (uint32_t)r, pcg, y0 + (L + r) * ldy);
                            for (int64_t r = 0; r < n2; r++) svld1_hor_za32(2, (uint32_t)r, pcg, y0 + (2 * L + r) * ldy);
                            for (int64_t r = 0; r < n3; r++) svld1_hor_za32(3, (uint32_t)r, pcg, y0 + (3 * L + r) * ldy);
                        }
                        const float *bq = J->bp + g * L;
                        TL_SME_RUN(TL_SME_KERNEL_TALL);
                        for (int64_t r = 0; r < n0; r++) TL_SME_STORE(0, r, pcg, y0 + r * ldy, T0 + r);
                        for (int64_t r = 0; r < n1; r++) TL_SME_STORE(1, r, pcg, y0 + (L + r) * ldy, T0 + L + r);
                        for (int64_t r = 0; r < n2; r++) TL_SME_STORE(2, r, pcg, y0 + (2 * L + r) * ldy, T0 + 2 * L + r);
                        for (int64_t r = 0; r < n3; r++) TL_SME_STORE(3, r, pcg, y0 + (3 * L + r) * ldy, T0 + 3 * L + r);
                    }
                }
            }
        }
    }
}

/* ---- the non-streaming side: scratch, small-batch routing, the ukernel table --------------- */

static int tl_sme_mopa_of(const tl_ctx *ctx, int wtype) {
    if (wtype == TL_F16) return TL_SME_MOPA_F16;
    if (wtype == TL_BF16 && ctx->opt.sme_bf16) return TL_SME_MOPA_BF16;
    return TL_SME_MOPA_F32;
}

/* NEON over a block. For f16 / bf16 weights the prepared rows are 16-bit: the NEON kernels get
 * f32 rows [0, j1) of the values they stand for (s*h exactly, bf16 widened) in scratch. */
static void tl_sme_neon_block(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1, int gemv) {
    const tl_ukernel *nk = tl_neon_lookup(a->wtype);
    tl_gemm_args a2 = *a;
    const int mopa = tl_sme_mopa_of(a->ctx, a->wtype);
    if (mopa != TL_SME_MOPA_F32) {
        const int64_t k = a->k, ld = tl_round_up(4 * k, TL_ACT_ALIGN);
        uint8_t *buf = (uint8_t *)tl_scratch((size_t)(j1 * ld));
        if (!buf) return; /* out of memory: nothing sensible to compute with */
        for (int64_t j = 0; j < j1; j++) {
            const uint8_t *row = a->act + j * a->ldact;
            const uint16_t *h = (const uint16_t *)(const void *)row;
            float *f = (float *)(void *)(buf + j * ld);
            if (mopa == TL_SME_MOPA_F16) {
                float s;
                memcpy(&s, row + tl_sme_f16_soff(k), 4);
                for (int64_t i = 0; i < k; i++) f[i] = tl_f16_to_f32(h[i]) * s;
            } else {
                for (int64_t i = 0; i < k; i++) f[i] = tl_bf16_to_f32(h[i]);
            }
            memset(f + k, 0, (size_t)(ld - 4 * k));
        }
        a2.act = buf;
        a2.ldact = ld;
    }
    if (gemv) {
        nk->gemv(&a2, i0, i1);
        return;
    }
    for (int64_t i = i0; i < i1; i += nk->rm)
        for (int64_t j = j0; j < j1; j += nk->rn)
            nk->tile(&a2, i, j, (int)TL_MIN((int64_t)nk->rm, i1 - i), (int)TL_MIN((int64_t)nk->rn, j1 - j));
}

static void tl_sme_gemv(const tl_gemm_args *a, int64_t i0, int64_t i1) { tl_sme_neon_block(a, i0, i1, 0, 1, 1); }

/* The context's sme_tile option forces the micro-kernel shape (tests); otherwise per panel. */
static int tl_sme_shape(const tl_ctx *ctx) {
    return ctx->opt.sme_tile == TL_SME_TILE_WIDE ? TL_SME_SHAPE_WIDE
           : ctx->opt.sme_tile == TL_SME_TILE_TALL ? TL_SME_SHAPE_TALL : TL_SME_SHAPE_AUTO;
}

static void tl_sme_block(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    if (a->n < TL_SME_MIN_N) {
        tl_sme_neon_block(a, i0, i1, j0, j1, 0);
        return;
    }
    const int64_t L = tl_sme_L;
    const int64_t nsuper = (j1 - j0 + 4 * L - 1) / (4 * L);
    const size_t at_n = (size_t)(nsuper * 4 * L * TL_SME_KC), bp_n = (size_t)(4 * L * TL_SME_KC);
    float *scratch = (float *)tl_scratch((at_n + bp_n) * sizeof(float));
    if (!scratch) { /* out of memory: still compute, with NEON */
        tl_sme_neon_block(a, i0, i1, j0, j1, 0);
        return;
    }
    const int mopa = tl_sme_mopa_of(a->ctx, a->wtype);
    const int at = tl_default_act_type(a->wtype);
    tl_sme_job J = {a, i0, i1, j0, j1, scratch, scratch + at_n, mopa,
                    mopa != TL_SME_MOPA_F32 ? TL_SME_ACT_H16 : at == TL_F32 ? TL_SME_ACT_F32 : TL_SME_ACT_Q8,
                    tl_sme_shape(a->ctx), tl_type_size(a->wtype),
                    mopa != TL_SME_MOPA_F32 ? (a->k + 1) / 2 : a->k,
                    mopa == TL_SME_MOPA_F16 ? tl_sme_f16_soff(a->k) : 0};
    tl_sme_block_run(&J);
}

/* tile(): required by the contract but never reached through the driver (block and gemv are
 * set); covers any rm x rn with NEON tiles. */
static void tl_sme_tile(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {
    tl_sme_neon_block(a, i0, i0 + rm, j0, j0 + rn, 0);
}

/* Kernel tables, filled once by tl_sme_init (they depend on the vector length): [1] with bf16
 * weights on BFMOPA (the sme_bf16 option), [0] on f32 FMOPA. */
static tl_ukernel tl_sme_uk[2][6];
static const int tl_sme_types[6] = {TL_F32, TL_F16, TL_BF16, TL_Q8_0, TL_Q4_0, TL_Q4_1};

int tl_sme_init(void) {
    /* only reached after tl_init saw HWCAP2_SME (and SME2 for sme2): rdsvl is legal here */
    const int64_t L = (int64_t)svcntsw();
    for (int bf = 0; bf < 2; bf++) {
        const tl_ctx c = {.opt = {.sme_bf16 = bf}};
        for (int t = 0; t < 6; t++) {
            const int wt = tl_sme_types[t];
            const tl_ukernel *nk = tl_neon_lookup(wt);
            tl_ukernel u = {.rm = (int)(4 * L), .rn = TL_SME_RN, .tile = tl_sme_tile, .gemv_rows = nk->gemv_rows,
                            .gemv = nk->gemv, .block = tl_sme_block};
            if (tl_sme_mopa_of(&c, wt) != TL_SME_MOPA_F32) { /* 16-bit activations: widening FMOPA / BFMOPA */
                u.gemv = tl_sme_gemv;
                u.act_row_bytes = wt == TL_F16 ? tl_sme_act_bytes_f16 : tl_sme_act_bytes_bf16;
                u.act_prepare = wt == TL_F16 ? tl_sme_prep_f16 : tl_sme_prep_bf16;
                u.act_type = wt;
            }
            tl_sme_uk[bf][t] = u;
        }
    }
    tl_sme_L = L;
    return TL_OK;
}

/* The six MOPA types, then the NEON kernels linked into this variant for the rest (q5_0, the K-quants, q5_1,
 * iq4_nl, iq4_xs, q2_K, q3_K): one library holds every type a model file mixes (a Q4_K_M file has q4_K and q6_K),
 * so its layers stay one C call (plan_layer needs all of a layer's weights native). */
const tl_ukernel *tl_sme_lookup(const tl_ctx *ctx, int wtype) {
    if (tl_sme_L == 0) return NULL; /* not initialised */
    for (int t = 0; t < 6; t++)
        if (tl_sme_types[t] == wtype) return &tl_sme_uk[ctx->opt.sme_bf16 != 0][t];
    return tl_neon_lookup(wtype);
}
