/* x86_common.h — plain-C pieces shared by the x86 micro-kernel files (avx2, avx512, amx).
 *
 * Quantized activation layout of the x86 variants (one layout for q8_0, q4_0 and q4_1, so a
 * prepared buffer is valid for any of them):
 *     [int8 qs k][f32 d nb][f32 s nb][int32 isum nb] | zero pad to 64,   nb = k / 32
 * d = amax/127, q = roundf(x/d) (ggml's reference quantiser, f32 scale), isum = sum of the
 * block's 32 quants, s = d * isum. isum lets kernels that make weights unsigned (offset
 * trick) remove the offset exactly in int32. x86_qa_prepare is the plain-C reference of the
 * layout; the variants use their vectorised versions (same results).
 */
#ifndef TL_X86_COMMON_H
#define TL_X86_COMMON_H

#include <stdlib.h>

#include "threadpool.h"
#include "tl_internal.h"
#include "ukernel.h"

static int64_t x86_qa_row_bytes(int64_t k) { return tl_round_up(k + 12 * (k / TL_QK), 64); }

__attribute__((unused)) static void x86_qa_prepare(const float *x, int64_t ldx, int64_t j0, int64_t j1, int64_t k, uint8_t *act, int64_t ldact) {
    const int64_t nb = k / TL_QK;
    for (int64_t j = j0; j < j1; j++) {
        const float *xr = x + j * ldx;
        uint8_t *row = act + j * ldact;
        int8_t *qs = (int8_t *)row;
        float *dd = (float *)(row + k);
        float *ss = dd + nb;
        int32_t *is = (int32_t *)(ss + nb);
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = xr + b * TL_QK;
            float amax = 0.0f;
            for (int t = 0; t < TL_QK; t++) {
                float v = xb[t] < 0 ? -xb[t] : xb[t];
                amax = v > amax ? v : amax;
            }
            const float d = amax / 127.0f;
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            int sum = 0;
            for (int t = 0; t < TL_QK; t++) {
                float v = xb[t] * id;
                v = v != v ? 0.0f : v;
                v = v > 127.0f ? 127.0f : v;
                v = v < -127.0f ? -127.0f : v;
                int ti = (int)v; /* round half away from zero, as roundf */
                float fr = v - (float)ti;
                int q = ti + (fr >= 0.5f) - (fr <= -0.5f);
                qs[b * TL_QK + t] = (int8_t)q;
                sum += q;
            }
            dd[b] = d;
            ss[b] = d * (float)sum;
            is[b] = sum;
        }
        int64_t used = k + 12 * nb;
        if (ldact > used) memset(row + used, 0, (size_t)(ldact - used));
    }
}


/* Thread-local scratch (packed weight panels); NULL if the allocation fails. Never freed
 * before thread exit: one buffer per worker, grown to the largest panel seen. */
/* Per-thread panel scratch: the shared tl_scratch (freed at thread exit; a plain
 * _Thread_local malloc leaked once per Python thread that called in — LSan in the fuzz test). */
static uint8_t *x86_scratch(size_t need) { return (uint8_t *)tl_scratch(need); }

TL_INLINE int x86_q_bytes(const int WT) {
    return WT == TL_Q8_0 ? TL_Q8_0_BYTES : WT == TL_Q4_0 ? TL_Q4_0_BYTES : TL_Q4_1_BYTES;
}

/* Scalar fallback (only if the scratch allocation fails): exact block dots, same formula. */
static void x86_q_block_scalar(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const int64_t k = a->k, nb = k / TL_QK;
    const int bs = x86_q_bytes(WT);
    for (int64_t i = i0; i < i1; i++)
        for (int64_t j = j0; j < j1; j++) {
            const uint8_t *wr = a->w + i * a->ldw, *xr = a->act + j * a->ldact;
            const float *dx = (const float *)(xr + k);
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = wr + b * bs;
                const int8_t *xq = (const int8_t *)xr + 32 * b;
                int32_t dot = 0;
                float dw = tl_f16_to_f32(tl_load_u16(blk)), m = 0.0f;
                if (WT == TL_Q8_0) {
                    for (int t = 0; t < 32; t++) dot += (int32_t)(int8_t)blk[2 + t] * xq[t];
                } else {
                    const uint8_t *q = blk + (WT == TL_Q4_0 ? 2 : 4);
                    int sub = WT == TL_Q4_0 ? 8 : 0;
                    for (int t = 0; t < 16; t++)
                        dot += ((q[t] & 15) - sub) * xq[t] + ((q[t] >> 4) - sub) * xq[t + 16];
                    if (WT == TL_Q4_1) m = tl_f16_to_f32(tl_load_u16(blk + 2));
                }
                acc = __builtin_fmaf((float)dot, dw * dx[b], acc);
                if (WT == TL_Q4_1) acc = __builtin_fmaf(m, dx[nb + b], acc);
            }
            a->y[j * a->ldy + i] = acc;
        }
}

#endif
