/* decode.c — one decoder layer for one token (tl_decode_layer): the LLaMA block (optional q/k/v biases,
 * adjacent-pair or NEOX rope) as a sequence of the library's own entry points, so a decode step costs
 * one call per layer instead of ~15 Python-level calls.
 *
 * Nothing here computes differently from the separate calls (tl_act_prepare_rms, tl_gemm_many,
 * tl_attention, tl_act_prepare, tl_gemm, tl_act_prepare_swiglu); the only arithmetic of its own is
 * the bias and residual adds and the rope (x0 c - x1 s, x0 s + x1 c in f32), which match numpy's to
 * the last bit or two (numpy may fuse the rope's products into FMAs). */
#include <stdlib.h>

#include "tl_internal.h"

static void add_to(float *TL_RESTRICT y, const float *TL_RESTRICT x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

/* Rotate the first n_rot dims of each of nh heads of x [nh, D] by angles with cos c / sin s [n_rot / 2]. */
static void rope(float *x, int64_t nh, int64_t D, int64_t n_rot, int neox, const float *c, const float *s) {
    const int64_t half = n_rot / 2;
    for (int64_t h = 0; h < nh; h++) {
        float *xh = x + h * D;
        for (int64_t i = 0; i < half; i++) {
            float *p0 = neox ? xh + i : xh + 2 * i, *p1 = neox ? xh + half + i : xh + 2 * i + 1;
            const float a = *p0, b = *p1;
            *p0 = a * c[i] - b * s[i];
            *p1 = a * s[i] + b * c[i];
        }
    }
}

int tl_decode_layer(tl_ctx *ctx, const tl_layer *L, float *h, const float *cosv, const float *sinv, float *kc, float *vc,
                    int64_t n_past, float scale, int nthreads) {
    if (!ctx || !L || !h || !cosv || !sinv || !kc || !vc || n_past < 0 || nthreads < 1) return TL_EINVAL;
    const int64_t E = L->n_embd, H = L->n_head, Hkv = L->n_head_kv, D = L->head_dim, F = L->n_ff;
    const int64_t qd = H * D, kvd = Hkv * D;
    if (E < 1 || H < 1 || Hkv < 1 || D < 1 || F < 1 || H % Hkv || L->n_rot < 0 || L->n_rot > D || L->n_rot % 2 ||
        L->kv_stride < kvd)
        return TL_EINVAL;
    /* f32 scratch: xn, q, k, v, att, o (all <= max(E, qd)), g, u, d */
    const int64_t W = TL_MAX(E, qd);
    const size_t act_a = tl_act_bytes(ctx, L->wq.wtype, 1, E), act_o = tl_act_bytes(ctx, L->wo.wtype, 1, qd);
    const size_t act_g = tl_act_bytes(ctx, L->gate.wtype, 1, E), act_d = tl_act_bytes(ctx, L->down.wtype, 1, F);
    if (!act_a || !act_o || !act_g || !act_d) return TL_UNSUPPORTED;
    const size_t nf = (size_t)(6 * W + 3 * F);
    const size_t acts = TL_MAX(TL_MAX(act_a, act_o), TL_MAX(act_g, act_d));
    uint8_t *mem = (uint8_t *)aligned_alloc(TL_ACT_ALIGN, tl_round_up((int64_t)(nf * 4 + acts), TL_ACT_ALIGN));
    if (!mem) return TL_ENOMEM;
    uint8_t *act = mem;
    float *xn = (float *)(mem + tl_round_up((int64_t)acts, TL_ACT_ALIGN));
    float *q = xn + W, *k = q + W, *v = k + W, *att = v + W, *o = att + W, *g = o + W, *u = g + F, *d = u + F;
    int rc;
    /* attention */
    if ((rc = tl_act_prepare_rms(ctx, L->wq.wtype, h, E, L->attn_norm, L->eps, 1, E, xn, act, nthreads))) goto out;
    {
        const int wt[3] = {L->wq.wtype, L->wk.wtype, L->wv.wtype};
        const void *const w[3] = {L->wq.w, L->wk.w, L->wv.w};
        const int64_t ldw[3] = {L->wq.ldw, L->wk.ldw, L->wv.ldw}, m[3] = {qd, kvd, kvd};
        float *const y[3] = {q, k, v};
        if (L->wq.m != qd || L->wk.m != kvd || L->wv.m != kvd) { rc = TL_EINVAL; goto out; }
        if ((rc = tl_gemm_many(ctx, 3, wt, w, ldw, m, E, act, 1, y, m, nthreads))) goto out;
    }
    if (L->bq) add_to(q, L->bq, qd);
    if (L->bk) add_to(k, L->bk, kvd);
    if (L->bv) add_to(v, L->bv, kvd);
    rope(q, H, D, L->n_rot, L->rope_neox, cosv, sinv);
    rope(k, Hkv, D, L->n_rot, L->rope_neox, cosv, sinv);
    memcpy(kc + n_past * L->kv_stride, k, (size_t)kvd * 4);
    memcpy(vc + n_past * L->kv_stride, v, (size_t)kvd * 4);
    if ((rc = tl_attention(q, qd, kc, L->kv_stride, vc, L->kv_stride, att, qd, 1, n_past + 1, H, Hkv, D, n_past, 0,
                           scale, nthreads)))
        goto out;
    if ((rc = tl_act_prepare(ctx, L->wo.wtype, att, qd, 1, qd, act, nthreads))) goto out;
    if (L->wo.m != E) { rc = TL_EINVAL; goto out; }
    if ((rc = tl_gemm(ctx, L->wo.wtype, L->wo.w, L->wo.ldw, E, qd, act, 1, o, E, nthreads))) goto out;
    add_to(h, o, E);
    /* feed-forward */
    if ((rc = tl_act_prepare_rms(ctx, L->gate.wtype, h, E, L->ffn_norm, L->eps, 1, E, xn, act, nthreads))) goto out;
    {
        const int wt[2] = {L->gate.wtype, L->up.wtype};
        const void *const w[2] = {L->gate.w, L->up.w};
        const int64_t ldw[2] = {L->gate.ldw, L->up.ldw}, m[2] = {F, F};
        float *const y[2] = {g, u};
        if (L->gate.m != F || L->up.m != F) { rc = TL_EINVAL; goto out; }
        if ((rc = tl_gemm_many(ctx, 2, wt, w, ldw, m, E, act, 1, y, m, nthreads))) goto out;
    }
    if ((rc = tl_act_prepare_swiglu(ctx, L->down.wtype, g, u, 1, F, xn, act, nthreads))) goto out;
    if (L->down.m != E) { rc = TL_EINVAL; goto out; }
    if ((rc = tl_gemm(ctx, L->down.wtype, L->down.w, L->down.ldw, E, F, act, 1, d, E, nthreads))) goto out;
    add_to(h, d, E);
out:
    free(mem);
    return rc;
}
