/* sme_kernels.h — SME / SME2 prompt-batch GEMM after MpGEMM (see docs/mpgemm.md), shared by
 * ukernel_sme.c (TL_SME2 = 0) and ukernel_sme2.c (TL_SME2 = 1).
 *
 * Problem: Y[j][i] = sum_k X[j][k] W[i][k], tokens j, features i, y row-major over tokens
 * (features contiguous). With L = SVL/32 (32-bit lanes per streaming vector: 4 … 64; 16 on
 * an Apple M4), the micro-kernel keeps an L-token x 4L-feature block of Y in the four 32-bit ZA
 * tiles side by side (za0..za3 = features [0,L), [L,2L), [2L,3L), [3L,4L): MpGEMM's 16x64 on
 * M4) and, per k, does ONE A-vector load (L tokens' activations at k), ONE four-register B
 * load (4L features' weights at k; SME2 `ld1w {z0.s-z3.s}`, SME1 four `ld1w`) and FOUR FMOPAs.
 *
 * Both operands are k-contiguous in memory, so both are transposed into per-k vectors:
 *   - activation strips (L tokens x KC) once per K-chunk of the block, through ZA tile 0
 *     (rows written as horizontal slices, read back as vertical slices), q8 activations
 *     dequantized (d * q with the scale of each 16-value group, exact products of the
 *     prepared values) on the way;
 *   - weight panels (4L features x KC) on their first use inside the block, through all four
 *     tiles, dequantized on the way to f32: f16 widened, bf16 shifted, q8_0 d*q, q4_0 d*(q-8),
 *     q4_1 d*q + m (block scale and min folded in; no re-quantization). The packed panel is
 *     then reused by every token strip of the block (L2-resident, KC = 1024).
 * Everything is fp32 FMOPA with fp32 accumulation in ZA over the whole K (C is written after
 * the first K-chunk and reloaded into ZA for the next, as MpGEMM does when K > KC).
 *
 * Streaming rules: the only streaming function is tl_sme_block_run, a leaf declared
 * __arm_locally_streaming __arm_new("za") (the compiler emits smstart/smstop, the lazy-ZA
 * commit via __arm_tpidr2_save, and keeps d8-d15); its helpers are always-inline streaming
 * functions; no NEON, no calls out, no malloc inside it (scratch comes from the non-streaming
 * caller). Vector-length agnostic: every stride is in units of L read with svcntsw().
 *
 * Small batches: n < TL_SME_MIN_N and n == 1 (gemv) run the NEON kernels (neon_kernels.h,
 * compiled into this variant), so the SME unit is only started for prompt batches.
 */
#ifndef TL_SME_KERNELS_H
#define TL_SME_KERNELS_H

#include <arm_sme.h>
#include <stdlib.h>

#include "neon_kernels.h"

#ifndef TL_SME2
#error "define TL_SME2 (0 or 1) before including sme_kernels.h"
#endif
#if TL_SME2 && !defined(__ARM_FEATURE_SME2)
#error "the sme2 variant needs SME2 compiler flags"
#endif

#define TL_SME_KC 1024  /* k per packed chunk: 4L x KC f32 panel = 256 KiB at SVL 512 */
#define TL_SME_RN 128   /* tokens per driver token tile: the block a packed panel serves */
#define TL_SME_MIN_N 8  /* batches below this run the NEON kernels */

#define TL_SME_INLINE static inline __attribute__((always_inline))

static int64_t tl_sme_L; /* 32-bit lanes per streaming vector, set by tl_uk_init */

typedef struct {
    const tl_gemm_args *a;
    int64_t i0, i1, j0, j1;
    float *at; /* transposed activations, strip s: at[(s*KC + kk)*L + token] */
    float *bp; /* packed weight panel: bp[kk*4L + feature] */
    int act_f32; /* activations are f32 rows (else the q8 layout) */
    int wbytes;  /* bytes per 32-block of quantized weights */
} tl_sme_job;

/* Activations of token row `tok` at k in [k0, k0+L), lanes beyond kend zero. */
TL_SME_INLINE svfloat32_t tl_sme_act_vec(const tl_sme_job *J, int64_t tok, int64_t k0, int64_t kend)
    __arm_streaming {
    const svbool_t pk = svwhilelt_b32(k0, kend);
    const uint8_t *row = J->a->act + tok * J->a->ldact;
    if (J->act_f32) return svld1_f32(pk, (const float *)(const void *)row + k0);
    const float *d = (const float *)(const void *)(row + J->a->k); /* the q8 layout's scales, one per 16 */
    svfloat32_t v = svcvt_f32_s32_z(pk, svld1sb_s32(pk, (const int8_t *)row + k0));
    svfloat32_t sc = svdup_n_f32(d[k0 / TL_QG]);
    /* L = 32 / 64: two / four groups per vector (k0 is a multiple of L, so groups start at lane 16g) */
    for (int64_t g = 1; g < (int64_t)svcntw() / TL_QG && k0 + TL_QG * g < kend; g++)
        sc = svsel_f32(svwhilelt_b32((int64_t)0, TL_QG * g), sc, svdup_n_f32(d[k0 / TL_QG + g]));
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

/* Rows of tile T (features p0 + T*L + r, r < nf) at k chunk [kb, kb+L) into ZA tile T. */
#define TL_SME_PACK_ROWS(T)                                                                     \
    do {                                                                                        \
        const int64_t f0 = p0 + (T) * L;                                                        \
        for (int64_t r = 0; r < L && f0 + r < pend; r++)                                        \
            svwrite_hor_za32_f32_m(T, (uint32_t)r, pall,                                        \
                                   tl_sme_w_vec(wt, J->wbytes, a->w + (f0 + r) * a->ldw, pc + kb, pc + kc)); \
    } while (0)

/* The micro-kernel: ZA += A-strip x B-panel over kc values of k. */
#if TL_SME2
#define TL_SME_LOAD_B(ptr)                                                   \
    svfloat32x4_t b4 = svld1_f32_x4(pnall, (ptr));                           \
    const svfloat32_t b0 = svget4_f32(b4, 0), b1 = svget4_f32(b4, 1),        \
                      b2 = svget4_f32(b4, 2), b3 = svget4_f32(b4, 3)
#else
#define TL_SME_LOAD_B(ptr)                                                   \
    const svfloat32_t b0 = svld1_f32(pall, (ptr)), b1 = svld1_f32(pall, (ptr) + L), \
                      b2 = svld1_f32(pall, (ptr) + 2 * L), b3 = svld1_f32(pall, (ptr) + 3 * L)
#endif

__arm_locally_streaming __arm_new("za") static void tl_sme_block_run(const tl_sme_job *J) {
    const tl_gemm_args *a = J->a;
    const int wt = a->wtype;
    const int64_t L = (int64_t)svcntsw(), L4 = 4 * L;
    const int64_t k = a->k, i1 = J->i1, j0 = J->j0, j1 = J->j1;
    const int64_t nstrips = (j1 - j0 + L - 1) / L;
    const svbool_t pall = svptrue_b32();
#if TL_SME2
    const svcount_t pnall = svptrue_c32();
#endif
    for (int64_t pc = 0; pc < k; pc += TL_SME_KC) {
        const int64_t kc = TL_MIN((int64_t)TL_SME_KC, k - pc);
        /* 1. activation strips -> at: per L x L square, rows in as horizontal slices of za0,
         *    out as vertical slices (one per k: L tokens) */
        for (int64_t s = 0; s < nstrips; s++) {
            const int64_t t0 = j0 + s * L, nt = TL_MIN(L, j1 - t0);
            float *ats = J->at + s * TL_SME_KC * L;
            for (int64_t kb = 0; kb < kc; kb += L) {
                svzero_za();
                for (int64_t r = 0; r < nt; r++)
                    svwrite_hor_za32_f32_m(0, (uint32_t)r, pall, tl_sme_act_vec(J, t0 + r, pc + kb, pc + kc));
                const int64_t nk = TL_MIN(L, kc - kb);
                for (int64_t c = 0; c < nk; c++) svst1_ver_za32(0, (uint32_t)c, pall, ats + (kb + c) * L);
            }
        }
        /* 2. weight panels of 4L features */
        for (int64_t p0 = J->i0; p0 < i1; p0 += L4) {
            const int64_t pend = TL_MIN(p0 + L4, i1);
            /* 2a. pack on first use: 4L rows x L k at a time through all four tiles */
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
            /* 2b. every token strip against the packed panel */
            const svbool_t pc0 = svwhilelt_b32(p0, pend), pc1 = svwhilelt_b32(p0 + L, pend),
                           pc2 = svwhilelt_b32(p0 + 2 * L, pend), pc3 = svwhilelt_b32(p0 + 3 * L, pend);
            for (int64_t s = 0; s < nstrips; s++) {
                const int64_t t0 = j0 + s * L, nt = TL_MIN(L, j1 - t0);
                const svbool_t pa = svwhilelt_b32((int64_t)0, nt);
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
                const float *ap = J->at + s * TL_SME_KC * L;
                const float *bq = J->bp;
                for (int64_t kk = 0; kk < kc; kk++) {
                    const svfloat32_t av = svld1_f32(pall, ap + kk * L);
                    TL_SME_LOAD_B(bq + kk * L4);
                    svmopa_za32_f32_m(0, pa, pall, av, b0);
                    svmopa_za32_f32_m(1, pa, pall, av, b1);
                    svmopa_za32_f32_m(2, pa, pall, av, b2);
                    svmopa_za32_f32_m(3, pa, pall, av, b3);
                }
                for (int64_t r = 0; r < nt; r++) {
                    float *yr = a->y + (t0 + r) * a->ldy + p0;
                    svst1_hor_za32(0, (uint32_t)r, pc0, yr);
                    svst1_hor_za32(1, (uint32_t)r, pc1, yr + L);
                    svst1_hor_za32(2, (uint32_t)r, pc2, yr + 2 * L);
                    svst1_hor_za32(3, (uint32_t)r, pc3, yr + 3 * L);
                }
            }
        }
    }
}

/* ---- the non-streaming side: scratch, small-batch routing, the ukernel table --------------- */

static __thread float *tl_sme_scratch;
static __thread size_t tl_sme_scratch_floats;

static void tl_sme_neon_block(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const tl_ukernel *nk = tl_neon_lookup(a->wtype);
    for (int64_t i = i0; i < i1; i += nk->rm)
        for (int64_t j = j0; j < j1; j += nk->rn)
            nk->tile(a, i, j, (int)TL_MIN((int64_t)nk->rm, i1 - i), (int)TL_MIN((int64_t)nk->rn, j1 - j));
}

static void tl_sme_block(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    if (a->n < TL_SME_MIN_N) {
        tl_sme_neon_block(a, i0, i1, j0, j1);
        return;
    }
    const int64_t L = tl_sme_L;
    const int64_t nstrips = (j1 - j0 + L - 1) / L;
    const size_t at_n = (size_t)(nstrips * L * TL_SME_KC), bp_n = (size_t)(4 * L * TL_SME_KC);
    if (tl_sme_scratch_floats < at_n + bp_n) {
        free(tl_sme_scratch);
        void *p = NULL;
        if (posix_memalign(&p, 256, (at_n + bp_n) * sizeof(float)) != 0) p = NULL;
        tl_sme_scratch = (float *)p;
        tl_sme_scratch_floats = p ? at_n + bp_n : 0;
        if (!p) { /* out of memory: still compute, with NEON */
            tl_sme_neon_block(a, i0, i1, j0, j1);
            return;
        }
    }
    tl_sme_job J = {a, i0, i1, j0, j1, tl_sme_scratch, tl_sme_scratch + at_n,
                    tl_default_act_type(a->wtype) == TL_F32, tl_type_size(a->wtype)};
    tl_sme_block_run(&J);
}

/* tile(): required by the contract but never reached through the driver (block and gemv are
 * set); covers any rm x rn with NEON tiles. */
static void tl_sme_tile(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {
    tl_sme_neon_block(a, i0, i0 + rm, j0, j0 + rn);
}

static tl_ukernel tl_sme_uk[6];
static const int tl_sme_types[6] = {TL_F32, TL_F16, TL_BF16, TL_Q8_0, TL_Q4_0, TL_Q4_1};

int tl_uk_init(void) {
    /* only reached after tl_init saw HWCAP2_SME (and SME2 for sme2): rdsvl is legal here */
    const int64_t L = (int64_t)svcntsw();
    for (int t = 0; t < 6; t++) {
        const tl_ukernel *nk = tl_neon_lookup(tl_sme_types[t]);
        tl_ukernel u = {(int)(4 * L), TL_SME_RN, tl_sme_tile, nk->gemv_rows, nk->gemv, tl_sme_block, NULL, NULL};
        tl_sme_uk[t] = u;
    }
    tl_sme_L = L;
    return TL_OK;
}

const tl_ukernel *tl_uk_lookup(int wtype) {
    if (tl_sme_L == 0) return NULL; /* not initialised */
    for (int t = 0; t < 6; t++)
        if (tl_sme_types[t] == wtype) return &tl_sme_uk[t];
    return NULL;
}

#endif
