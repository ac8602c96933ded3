/* act.c — activation preparation in the shared layouts of tl_internal.h.
 *
 * Activations are converted once per matmul input and reused for every weight of the same
 * type family and k (q/k/v, gate/up): f32 copy for float weights, int8 with one f32 scale per
 * 16 values for every quantized weight type. Parallel over token rows.
 */
#include <float.h>
#include <math.h>
#include <stdatomic.h>

#include "threadpool.h"
#include "tl_internal.h"
#include "ukernel.h"
#include "vmath.h"

/* One row of k floats -> the q8 act layout (tl_internal.h): int8 qs[k] | f32 d[ng] | f32 s[ng] |
 * int16 isum[ng] | zero pad, ng = k/16. The scale d = amax/127 is taken over `span` values (16 by
 * default; 32 or 256 in the ggml rounding mode, tl_options.act_rounding) and repeated for each
 * 16-value group of the span, so the kernels read every mode the same way. Span 32 stores the
 * scale rounded to fp16 as ggml's q8_0 / q8_1 blocks do.
 * Non-finite input (issue #14): int8 cannot hold nan or inf, so a span holding one gets d = NaN (and
 * q = 0, keeping the float->int conversion defined): a product with it is NaN, never a quiet 0, and
 * act_rows finds it among the row's scales (q8a_row_finite) to report TL_ENONFINITE. Every
 * vectorised writer of this layout (x86 act_prepare) does the same. */
/* fp16 rounding of a finite non-negative float (round to nearest even), for ggml's q8_0 / q8_1
 * scales, which it stores as fp16 (the quants are computed with the f32 scale, as ggml does). */
static float round_to_f16(float f) {
    if (!(f > 0.0f) || f > 65504.0f) return f;
    if (f < 6.103515625e-05f) { /* subnormal fp16: a multiple of 2^-24 */
        const float q = 5.9604644775390625e-08f;
        return nearbyintf(f / q) * q;
    }
    int e;
    const float m = frexpf(f, &e);              /* f = m 2^e, m in [0.5, 1) */
    return ldexpf(nearbyintf(ldexpf(m, 11)), e - 11); /* 11 significant bits */
}

static void q8a_quant_row_span(const float *TL_RESTRICT x, int64_t k, uint8_t *TL_RESTRICT row, int64_t ldact,
                               int span) {
    const int64_t ng = k / TL_QG;
    int8_t *qs = (int8_t *)row;
    float *dd = (float *)(row + k);
    float *ss = dd + ng;
    int16_t *is = (int16_t *)(ss + ng);
    for (int64_t s0 = 0; s0 < k; s0 += span) {
        float amax = 0.0f;
        int bad = 0;
        for (int t = 0; t < span; t++) {
            float a = fabsf(x[s0 + t]);
            amax = a > amax ? a : amax;
            bad |= !(a <= FLT_MAX); /* nan or inf */
        }
        const float d = bad ? NAN : amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f; /* NaN when d is: every v below is then nan -> q = 0 */
        for (int64_t g = s0 / TL_QG; g < (s0 + span) / TL_QG; g++) {
            const float *xg = x + g * TL_QG;
            int sum = 0;
            for (int t = 0; t < TL_QG; t++) {
                float v = xg[t] * id;
                v = v != v ? 0.0f : v; /* a non-finite group (id NaN): keep the conversion defined */
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
            const float ds = span == TL_QK ? round_to_f16(d) : d; /* ggml: q8_0/q8_1 d in fp16, q8_K in f32 */
            dd[g] = ds;
            ss[g] = ds * (float)sum;
            is[g] = (int16_t)sum;
        }
    }
    int64_t used = k + 10 * ng;
    if (ldact > used) memset(row + used, 0, (size_t)(ldact - used));
}

void tl_q8a_quant_row(const float *TL_RESTRICT x, int64_t k, uint8_t *TL_RESTRICT row, int64_t ldact) {
    q8a_quant_row_span(x, k, row, ldact, TL_QG);
}

/* 1 if every scale of a prepared q8 row is finite, i.e. its k inputs were (see above): k/16 floats, next to
 * nothing beside the quantisation that just wrote them. */
static int q8a_row_finite(const uint8_t *row, int64_t k) {
    const float *d = tl_q8a_d(row, k);
    int bad = 0;
    for (int64_t g = 0; g < k / TL_QG; g++) bad |= (tl_f32_bits(d[g]) & 0x7f800000u) == 0x7f800000u;
    return !bad;
}

static void copy_row_f32(const float *x, int64_t k, uint8_t *row, int64_t ldact) {
    memcpy(row, x, (size_t)k * 4);
    if (ldact > 4 * k) memset(row + 4 * k, 0, (size_t)(ldact - 4 * k));
}

typedef struct {
    int wtype;
    int rounding; /* TL_ACT_ROUND_* of the caller's context */
    const tl_ukernel *uk;
    const float *x;
    int64_t ldx, n, k;
    uint8_t *act;
    int64_t ldact;
    _Atomic int64_t next; /* next row to hand out */
    _Atomic int nonfinite; /* set when a q8 row got a non-finite input (its scale is NaN) */
    /* tl_act_prepare_rms: rows normalised from src (rows ldsrc apart) into x (= xn, dense) first;
     * tl_act_prepare_swiglu (src2 set): x = silu(src) * src2, dense rows */
    const float *src, *w, *src2;
    int64_t ldsrc;
    float eps;
} act_ctx;

/* y = x / sqrt(mean(x^2) + eps) * w for one row: the sum of squares in double (exact enough that the
 * order does not matter), mean rounded to f32, then f32 operations as written (layers.rms_norm's).
 * x and y may be the same row (decode.c normalises in place): no restrict. */
void tl_rms_row(const float *x, const float *w, float eps, int64_t k, float *y) {
    double ss0 = 0.0, ss1 = 0.0, ss2 = 0.0, ss3 = 0.0;
    int64_t p = 0;
    for (; p + 4 <= k; p += 4) {
        ss0 += (double)x[p] * x[p];
        ss1 += (double)x[p + 1] * x[p + 1];
        ss2 += (double)x[p + 2] * x[p + 2];
        ss3 += (double)x[p + 3] * x[p + 3];
    }
    for (; p < k; p++) ss0 += (double)x[p] * x[p];
    const float m = (float)((ss0 + ss1 + ss2 + ss3) / (double)k);
    const float v = m + eps;
    const float r = 1.0f / sqrtf(v);
    for (p = 0; p < k; p++) y[p] = (x[p] * r) * w[p];
}

/* silu(g) * u = g / (1 + exp(-g)) * u, VW lanes at a time (vmath.h; the last k % VW through a zero-padded
 * vector). exp's argument is clamped to [-87, 88]: for g < -88 silu is below 1e-36 in magnitude and comes out
 * as g / 1.6e38 instead of numpy's -0 or denormal; nan stays nan (it is kept out of the conversions). */
static inline vf swiglu_v(vf g, vf u) { return g / (vsplat(1.0f) + vexp(vclamp(-g, -87.0f, 88.0f))) * u; }

static void swiglu_row(const float *TL_RESTRICT g, const float *TL_RESTRICT u, int64_t k, float *TL_RESTRICT y) {
    int64_t p = 0;
    for (; p + VW <= k; p += VW) vstore(y + p, swiglu_v(vload(g + p), vload(u + p)));
    if (p < k) {
        float gt[VW] = {0}, ut[VW] = {0}, yt[VW];
        memcpy(gt, g + p, (size_t)(k - p) * 4);
        memcpy(ut, u + p, (size_t)(k - p) * 4);
        vstore(yt, swiglu_v(vload(gt), vload(ut)));
        memcpy(y + p, yt, (size_t)(k - p) * 4);
    }
}

static void act_rows(act_ctx *c, int64_t j0, int64_t j1) {
    if (c->src2)
        for (int64_t j = j0; j < j1; j++) swiglu_row(c->src + j * c->k, c->src2 + j * c->k, c->k, (float *)c->x + j * c->k);
    else if (c->src)
        for (int64_t j = j0; j < j1; j++) tl_rms_row(c->src + j * c->ldsrc, c->w, c->eps, c->k, (float *)c->x + j * c->k);
    const int at0 = tl_default_act_type(c->wtype);
    /* the shared q8 layout, whoever writes it */
    const int q8 = c->uk->act_type == 0 && (at0 == TL_Q8_0 || at0 == TL_Q8_1 || at0 == TL_Q8_K);
    if (c->rounding == TL_ACT_ROUND_GGML && q8) {
        /* the variant's own quantizer (if any) writes this same layout with span 16 */
        const int span = at0 == TL_Q8_K ? TL_QK_K : TL_QK;
        for (int64_t j = j0; j < j1; j++) q8a_quant_row_span(c->x + j * c->ldx, c->k, c->act + j * c->ldact, c->ldact, span);
    } else if (c->uk->act_prepare) {
        c->uk->act_prepare(c->x, c->ldx, j0, j1, c->k, c->act, c->ldact);
    } else {
        for (int64_t j = j0; j < j1; j++) {
            const float *xr = c->x + j * c->ldx;
            uint8_t *row = c->act + j * c->ldact;
            if (at0 == TL_F32) copy_row_f32(xr, c->k, row, c->ldact);
            else tl_q8a_quant_row(xr, c->k, row, c->ldact); /* every quantized weight type */
        }
    }
    /* Float layouts keep nan / inf (the products are then non-finite, as in numpy); q8 rows cannot,
     * so a non-finite input is reported. */
    if (q8)
        for (int64_t j = j0; j < j1; j++)
            if (!q8a_row_finite(c->act + j * c->ldact, c->k)) {
                atomic_store_explicit(&c->nonfinite, 1, memory_order_relaxed);
                break;
            }
}

/* Rows handed out dynamically in chunks (a pool worker may not take part: threadpool.c). */
static void act_task(void *vctx, int ith, int nth) {
    (void)ith;
    act_ctx *c = (act_ctx *)vctx;
    const int64_t chunk = TL_MAX(c->n / (4 * (int64_t)nth), 1);
    for (;;) {
        const int64_t j0 = atomic_fetch_add_explicit(&c->next, chunk, memory_order_relaxed);
        if (j0 >= c->n) break;
        act_rows(c, j0, TL_MIN(j0 + chunk, c->n));
    }
}

int64_t tl_act_ldact(const tl_ukernel *uk, int wtype, int64_t k) {
    return uk->act_row_bytes ? uk->act_row_bytes(k) : tl_act_row_bytes_default(wtype, k);
}

/* TL_OK, or TL_ENONFINITE if a quantized row had a nan or inf input (act is written all the same). */
static int act_go(act_ctx *c, int nthreads) {
    /* ~16k values per thread at least: below that the wake-up costs more than it saves */
    int64_t useful = (c->n * c->k) / 16384;
    int nth = (int)TL_MIN((int64_t)nthreads, TL_MIN(c->n, TL_MAX(useful, 1)));
    tl_parallel_for(nth, act_task, c);
    return atomic_load_explicit(&c->nonfinite, memory_order_relaxed) ? TL_ENONFINITE : TL_OK;
}

int tl_act_run_rms(const tl_ctx *ctx, const tl_ukernel *uk, int wtype, const float *x, int64_t ldx, const float *w,
                    float eps, int64_t n, int64_t k, float *xn, void *act, int nthreads) {
    act_ctx c = {.wtype = wtype, .rounding = ctx->opt.act_rounding, .uk = uk, .x = xn, .ldx = k, .n = n, .k = k,
                 .act = (uint8_t *)act, .ldact = tl_act_ldact(uk, wtype, k), .src = x, .w = w,
                 .ldsrc = n > 1 ? ldx : k, .eps = eps};
    return act_go(&c, nthreads);
}

int tl_act_run_swiglu(const tl_ctx *ctx, const tl_ukernel *uk, int wtype, const float *g, const float *u, int64_t n,
                       int64_t k, float *xn, void *act, int nthreads) {
    act_ctx c = {.wtype = wtype, .rounding = ctx->opt.act_rounding, .uk = uk, .x = xn, .ldx = k, .n = n, .k = k,
                 .act = (uint8_t *)act, .ldact = tl_act_ldact(uk, wtype, k), .src = g, .src2 = u, .ldsrc = k};
    return act_go(&c, nthreads);
}

int tl_act_run(const tl_ctx *ctx, const tl_ukernel *uk, int wtype, const float *x, int64_t ldx, int64_t n,
                int64_t k, void *act, int nthreads) {
    act_ctx c = {.wtype = wtype, .rounding = ctx->opt.act_rounding, .uk = uk, .x = x, .ldx = ldx, .n = n, .k = k,
                 .act = (uint8_t *)act, .ldact = tl_act_ldact(uk, wtype, k)};
    return act_go(&c, nthreads);
}
