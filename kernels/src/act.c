/* act.c — activation preparation in the shared layouts of tl_internal.h.
 *
 * Activations are converted once per matmul input and reused for every weight of the same
 * type family and k (q/k/v, gate/up): f32 copy for float weights, int8 with one f32 scale per
 * 16 values for every quantized weight type. Parallel over token rows.
 */
#include <math.h>

#include "threadpool.h"
#include "tl_internal.h"
#include "ukernel.h"

/* One row of k floats -> the q8 act layout (tl_internal.h): int8 qs[k] | f32 d[ng] | f32 s[ng] |
 * int16 isum[ng] | zero pad, ng = k/16. */
void tl_q8a_quant_row(const float *TL_RESTRICT x, int64_t k, uint8_t *TL_RESTRICT row, int64_t ldact) {
    const int64_t ng = k / TL_QG;
    int8_t *qs = (int8_t *)row;
    float *dd = (float *)(row + k);
    float *ss = dd + ng;
    int16_t *is = (int16_t *)(ss + ng);
    for (int64_t g = 0; g < ng; g++) {
        const float *xg = x + g * TL_QG;
        float amax = 0.0f;
        for (int t = 0; t < TL_QG; t++) {
            float a = fabsf(xg[t]);
            amax = a > amax ? a : amax;
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int t = 0; t < TL_QG; t++) {
            float v = xg[t] * id;
            v = v != v ? 0.0f : v; /* nan/inf inputs: keep the conversion defined */
            v = v > 127.0f ? 127.0f : v;
            v = v < -127.0f ? -127.0f : v;
            /* roundf (half away from zero) without libm so the loop vectorises: v - trunc(v)
             * is exact for |v| < 2^23. */
            int ti = (int)v;
            float fr = v - (float)ti;
            int q = ti + (fr >= 0.5f) - (fr <= -0.5f);
            qs[g * TL_QG + t] = (int8_t)q;
            sum += q;
        }
        dd[g] = d;
        ss[g] = d * (float)sum;
        is[g] = (int16_t)sum;
    }
    int64_t used = k + 10 * ng;
    if (ldact > used) memset(row + used, 0, (size_t)(ldact - used));
}

static void copy_row_f32(const float *x, int64_t k, uint8_t *row, int64_t ldact) {
    memcpy(row, x, (size_t)k * 4);
    if (ldact > 4 * k) memset(row + 4 * k, 0, (size_t)(ldact - 4 * k));
}

typedef struct {
    int wtype;
    const tl_ukernel *uk;
    const float *x;
    int64_t ldx, n, k;
    uint8_t *act;
    int64_t ldact;
} act_ctx;

static void act_rows(const act_ctx *c, int64_t j0, int64_t j1) {
    if (c->uk->act_prepare) {
        c->uk->act_prepare(c->x, c->ldx, j0, j1, c->k, c->act, c->ldact);
        return;
    }
    int at = tl_default_act_type(c->wtype);
    for (int64_t j = j0; j < j1; j++) {
        const float *xr = c->x + j * c->ldx;
        uint8_t *row = c->act + j * c->ldact;
        if (at == TL_F32) copy_row_f32(xr, c->k, row, c->ldact);
        else tl_q8a_quant_row(xr, c->k, row, c->ldact); /* every quantized weight type */
    }
}

static void act_task(void *vctx, int ith, int nth) {
    const act_ctx *c = (const act_ctx *)vctx;
    act_rows(c, c->n * ith / nth, c->n * (ith + 1) / nth);
}

int64_t tl_act_ldact(const tl_ukernel *uk, int wtype, int64_t k) {
    return uk->act_row_bytes ? uk->act_row_bytes(k) : tl_act_row_bytes_default(wtype, k);
}

void tl_act_run(const tl_ukernel *uk, int wtype, const float *x, int64_t ldx, int64_t n, int64_t k,
                void *act, int nthreads) {
    act_ctx c = {wtype, uk, x, ldx, n, k, (uint8_t *)act, tl_act_ldact(uk, wtype, k)};
    /* ~16k values per thread at least: below that the wake-up costs more than it saves */
    int64_t useful = (n * k) / 16384;
    int nth = (int)TL_MIN((int64_t)nthreads, TL_MIN(n, TL_MAX(useful, 1)));
    tl_parallel_for(nth, act_task, &c);
}
