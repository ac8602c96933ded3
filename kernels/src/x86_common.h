/* x86_common.h — plain-C pieces shared by the x86 micro-kernel files (avx2, avx512).
 *
 * Quantized activation layout: the shared "q8 act, scales per 16" of tl_internal.h, byte for
 * byte (one layout for q8_0, q4_0, q4_1 and the other quantized types, so a prepared buffer is
 * valid for any of them), ng = k / 16 groups:
 *     [int8 qs k][f32 d ng][f32 s ng][int16 isum ng] | zero pad to 64
 * d = amax/127 (nan skipped), q = roundf(x/d) (half away, nan -> 0, clamped to +-127), isum = sum
 * of the group's 16 quants, s = d * isum. isum lets kernels that make weights unsigned (offset
 * trick) remove the offset exactly in int32. x86_qa_prepare is the plain-C reference of the
 * layout; the variants use their vectorised versions (same bytes). Defined here (not taken
 * from tl_internal.h) so the x86 kernels are self-consistent on their own.
 */
#ifndef TL_X86_COMMON_H
#define TL_X86_COMMON_H

#include <stdlib.h>

#include "threadpool.h"
#include "tl_internal.h"
#include "ukernel.h"

#define X86_QG 16
static inline int64_t x86_qa_row_bytes(int64_t k) { return tl_round_up(k + 10 * (k / X86_QG), 64); }
TL_INLINE const float *x86_qa_d(const uint8_t *r, int64_t k) { return (const float *)(r + k); }
TL_INLINE const float *x86_qa_s(const uint8_t *r, int64_t k) { return (const float *)(r + k + 4 * (k / X86_QG)); }
TL_INLINE const int16_t *x86_qa_isum(const uint8_t *r, int64_t k) {
    return (const int16_t *)(r + k + 8 * (k / X86_QG));
}

__attribute__((unused)) static void x86_qa_prepare(const float *x, int64_t ldx, int64_t j0, int64_t j1, int64_t k,
                                                   uint8_t *act, int64_t ldact) {
    const int64_t ng = k / X86_QG;
    for (int64_t j = j0; j < j1; j++) {
        const float *xr = x + j * ldx;
        uint8_t *row = act + j * ldact;
        int8_t *qs = (int8_t *)row;
        float *dd = (float *)(row + k);
        float *ss = dd + ng;
        int16_t *is = (int16_t *)(ss + ng);
        for (int64_t g = 0; g < ng; g++) {
            const float *xb = xr + g * X86_QG;
            float amax = 0.0f;
            int bad = 0;
            for (int t = 0; t < X86_QG; t++) {
                float v = xb[t] < 0 ? -xb[t] : xb[t];
                amax = v > amax ? v : amax;
                bad |= !(v <= 3.40282347e+38f); /* nan or inf: d = NaN, q = 0 (act.c) */
            }
            const float d = bad ? __builtin_nanf("") : amax / 127.0f;
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            int sum = 0;
            for (int t = 0; t < X86_QG; t++) {
                float v = xb[t] * id;
                v = v != v ? 0.0f : v;
                v = v > 127.0f ? 127.0f : v;
                v = v < -127.0f ? -127.0f : v;
                int ti = (int)v; /* round half away from zero, as roundf */
                float fr = v - (float)ti;
                int q = ti + (fr >= 0.5f) - (fr <= -0.5f);
                qs[g * X86_QG + t] = (int8_t)q;
                sum += q;
            }
            dd[g] = d;
            ss[g] = d * (float)sum;
            is[g] = (int16_t)sum;
        }
        int64_t used = k + 10 * ng;
        if (ldact > used) memset(row + used, 0, (size_t)(ldact - used));
    }
}

/* ---- DRAM prefetch of row panels ----------------------------------------------------------------
 * The panel kernels read R rows at once (R streams ldw apart), which the hardware prefetchers do not
 * follow from DRAM; a gemv streams every weight once, so it would run at a fraction of the DRAM rate.
 * While the panel at row i of the chunk [i0, i1) runs, prefetch the next panel (rows in this chunk
 * or the first panel after it) as one linear range, contiguous when the rows are, spread over the
 * current panel's nb blocks (x86_pf_block per block). x86_pf_rows asks for whole rows at once. */

/* L1d bytes (cpu_detect.c, set at tl_init). A gemv prefetches the next weight panel into L1 only while the two
 * panels fit in 3/4 of it, else into L2: beyond that the prefetched lines were evicted before use (AMD Zen 4,
 * 32 KiB L1d: 16-row q4_0 panels at k = 2048, 18 KiB, read 19 -> 28 GB/s from DRAM with L2 prefetch, q8_0 19 ->
 * 30, 2 threads, session 11). A Sapphire Rapids L1d (48 KiB) keeps the 18 KiB panels' L1 prefetch it was tuned with. */
extern int64_t tl_x86_l1d;
void tl_x86_caches_init(void);
TL_INLINE int x86_pf_to_l1(int64_t panel_bytes) { return 8 * panel_bytes <= 3 * tl_x86_l1d; }

typedef struct {
    const char *p;
    int64_t step, len; /* bytes per block (whole cache lines), total */
    int to_l1;         /* x86_pf_to_l1(len), decided once per panel */
} x86_pf;

TL_INLINE x86_pf x86_pf_next(const tl_gemm_args *a, int64_t i, int64_t i1, int rows, int64_t nb) {
    const int64_t r0 = i + rows, r1 = TL_MIN(TL_MIN(r0 + rows, i1 + rows), a->m);
    x86_pf f = {(const char *)a->w, 0, 0, 1};
    if (r1 > r0) {
        f.p = (const char *)(a->w + r0 * a->ldw);
        f.len = (r1 - r0) * a->ldw;
        f.step = ((f.len + nb - 1) / nb + 63) & ~(int64_t)63;
        f.to_l1 = x86_pf_to_l1(f.len);
    }
    return f;
}

/* to_l1: prefetcht0 into L1, else prefetcht1 into L2 only: for loops that spend long on each block (the small-n
 * kernels), where the next panel in L1 would evict the current one and the activations first, and for panels too
 * big for L1 (x86_pf_to_l1). */
TL_INLINE void x86_pf_block_to(const x86_pf *f, int64_t b, const int to_l1) {
    const int64_t e = TL_MIN((b + 1) * f->step, f->len);
    for (int64_t q = b * f->step; q < e; q += 64) {
        if (to_l1) __builtin_prefetch(f->p + q, 0, 3);
        else __builtin_prefetch(f->p + q, 0, 2);
    }
}

/* Into L1 while the next panel fits there beside the current one (x86_pf_to_l1), else into L2. */
TL_INLINE void x86_pf_block(const x86_pf *f, int64_t b) { x86_pf_block_to(f, b, f->to_l1); }

TL_INLINE void x86_pf_rows(const tl_gemm_args *a, int64_t r0, int64_t r1) {
    const char *p = (const char *)(a->w + r0 * a->ldw);
    for (int64_t q = 0; q < (r1 - r0) * a->ldw; q += 64) __builtin_prefetch(p + q, 0, 3);
}

/* Per-thread panel scratch: the shared tl_scratch (freed at thread exit; a plain
 * _Thread_local malloc leaked once per Python thread that called in — LSan in the fuzz test). */
static inline uint8_t *x86_scratch(size_t need) { return (uint8_t *)tl_scratch(need); }

TL_INLINE int x86_q_bytes(const int WT) {
    return WT == TL_Q8_0 ? TL_Q8_0_BYTES : WT == TL_Q4_0 ? TL_Q4_0_BYTES : TL_Q4_1_BYTES;
}

/* Scalar fallback (only if the scratch allocation fails): exact block dots, same formula. */
__attribute__((unused)) static void x86_q_block_scalar(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0,
                               int64_t j1) {
    const int64_t k = a->k, nb = k / TL_QK;
    const int bs = x86_q_bytes(WT);
    for (int64_t i = i0; i < i1; i++)
        for (int64_t j = j0; j < j1; j++) {
            const uint8_t *wr = a->w + i * a->ldw, *xr = a->act + j * a->ldact;
            const float *dx = x86_qa_d(xr, k), *sx = x86_qa_s(xr, k);
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = wr + b * bs;
                const int8_t *xq = (const int8_t *)xr + 32 * b;
                int32_t dot0 = 0, dot1 = 0;
                float dw = tl_f16_to_f32(tl_load_u16(blk)), m = 0.0f;
                if (WT == TL_Q8_0) {
                    for (int t = 0; t < 16; t++) {
                        dot0 += (int32_t)(int8_t)blk[2 + t] * xq[t];
                        dot1 += (int32_t)(int8_t)blk[18 + t] * xq[16 + t];
                    }
                } else {
                    const uint8_t *q = blk + (WT == TL_Q4_0 ? 2 : 4);
                    int sub = WT == TL_Q4_0 ? 8 : 0;
                    for (int t = 0; t < 16; t++) {
                        dot0 += ((q[t] & 15) - sub) * xq[t];
                        dot1 += ((q[t] >> 4) - sub) * xq[t + 16];
                    }
                    if (WT == TL_Q4_1) m = tl_f16_to_f32(tl_load_u16(blk + 2));
                }
                float f = __builtin_fmaf((float)dot1, dx[2 * b + 1], (float)dot0 * dx[2 * b]);
                acc = __builtin_fmaf(f, dw, acc);
                if (WT == TL_Q4_1) acc = __builtin_fmaf(m, sx[2 * b] + sx[2 * b + 1], acc);
            }
            a->y[j * a->ldy + i] = acc;
        }
}

#endif
