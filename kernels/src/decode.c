/* decode.c — the layer program (tl_layer_check, tl_layer_run): one decoder layer of any architecture for a few
 * tokens in one call, as the short list of steps the model described (tilellm.h, "a layer program").
 *
 * The matrix steps are the library's own entry points (tl_act_prepare / _rms / _swiglu, tl_gemm, tl_gemm_many,
 * tl_attention), so they compute exactly what the separate calls compute. The rest is small f32 loops: RMS norm
 * (act.c's formula: the sum of squares in double), rope (x0 c - x1 s, x0 s + x1 c), GELU(tanh) gating, residual
 * adds, cache stores, attention for head sizes tl_attention does not take (k and v heads of different sizes) and
 * the DeepSeek expert routing. Every per-token loop reads only that token's row, so a token's result does not
 * depend on the others in the call (the GEMMs give a row the same bits for any n below their packed-panel
 * threshold). */
#include <math.h>
#include <stdlib.h>

#include "kv.h"
#include "tl_internal.h"
#include "vmath.h"

#define CHECKED 0x4c415952 /* tl_program.checked once tl_layer_check accepted it ("LAYR") */

/* ---- the f32 loops ---------------------------------------------------------------------------------- */

static void add_to(float *TL_RESTRICT y, const float *TL_RESTRICT x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

/* Rotate the first n_rot dims of each of nh heads of x (heads ld floats apart) by angles with cos c / sin s
 * [n_rot / 2]: adjacent pairs, or the two halves (neox). */
static void rope(float *x, int64_t nh, int64_t ld, int64_t n_rot, int neox, const float *c, const float *s) {
    const int64_t half = n_rot / 2;
    for (int64_t h = 0; h < nh; h++) {
        float *xh = x + h * ld;
        for (int64_t i = 0; i < half; i++) {
            float *p0 = neox ? xh + i : xh + 2 * i, *p1 = neox ? xh + half + i : xh + 2 * i + 1;
            const float a = *p0, b = *p1;
            *p0 = a * c[i] - b * s[i];
            *p1 = a * s[i] + b * c[i];
        }
    }
}

/* y = gelu_tanh(g) * u in the order of llm/models/layers.gelu_tanh_mul, tanh by vmath.h's vtanh (libm's tanhf
 * cost 53 us per 2048 values: a millisecond per Gemma 3 270M token, alone on one thread). */
static inline vf geglu_v(vf x, vf u) {
    vf t = x * x;
    t *= x;
    t *= 0.044715f;
    t += x;
    t *= 0.797884560802865355879892f; /* sqrt(2 / pi) */
    t = vtanh(t);
    t += 1.0f;
    t *= x * 0.5f;
    return t * u;
}

static void geglu_row(const float *g, const float *u, int64_t k, float *y) {
    int64_t p = 0;
    for (; p + VW <= k; p += VW) vstore(y + p, geglu_v(vload(g + p), vload(u + p)));
    if (p < k) { /* the tail through a zero-padded vector */
        float gt[VW] = {0}, ut[VW] = {0}, yt[VW];
        memcpy(gt, g + p, (size_t)(k - p) * sizeof(float));
        memcpy(ut, u + p, (size_t)(k - p) * sizeof(float));
        vstore(yt, geglu_v(vload(gt), vload(ut)));
        memcpy(y + p, yt, (size_t)(k - p) * sizeof(float));
    }
}

/* Causal attention of one token at position S - 1 over keys k0..S-1, any head sizes: q [H] rows ldq apart,
 * keys [S, Hkv, dk] (positions ldk bytes apart, of cache type kt), values [S, Hkv, dv] (ldv bytes, type vt), out
 * [H] rows ldo apart. Each cached row is read as floats (kv.h) into a small buffer first. */
static int attention_plain(const float *q, int64_t ldq, const uint8_t *kc, int kt, int64_t ldk, const uint8_t *vc,
                           int vt, int64_t ldv, float *out, int64_t ldo, int64_t H, int64_t Hkv, int64_t dk,
                           int64_t dv, int64_t k0, int64_t S, float scale) {
    float *sc = (float *)malloc(sizeof(float) * (size_t)(S - k0 + dk + dv));
    if (!sc) return TL_ENOMEM;
    float *kr = sc + (S - k0), *vr = kr + dk;
    const int64_t g = H / Hkv, hk = tl_kv_bytes_of(kt, dk), hv = tl_kv_bytes_of(vt, dv);
    for (int64_t h = 0; h < H; h++) {
        const float *qh = q + h * ldq;
        const uint8_t *kh = kc + (h / g) * hk, *vh = vc + (h / g) * hv;
        float mx = -INFINITY, sum = 0.0f;
        for (int64_t s = k0; s < S; s++) {
            float d = 0.0f;
            tl_kv_load(kh + s * ldk, kt, dk, kr);
            for (int64_t i = 0; i < dk; i++) d += qh[i] * kr[i];
            sc[s - k0] = d * scale;
            mx = sc[s - k0] > mx ? sc[s - k0] : mx;
        }
        for (int64_t s = k0; s < S; s++) sum += (sc[s - k0] = expf(sc[s - k0] - mx));
        float *o = out + h * ldo;
        for (int64_t i = 0; i < dv; i++) o[i] = 0.0f;
        for (int64_t s = k0; s < S; s++) {
            tl_kv_load(vh + s * ldv, vt, dv, vr);
            for (int64_t i = 0; i < dv; i++) o[i] += sc[s - k0] * vr[i];
        }
        const float inv = 1.0f / sum;
        for (int64_t i = 0; i < dv; i++) o[i] *= inv;
    }
    free(sc);
    return TL_OK;
}

/* ---- products ----------------------------------------------------------------------------------------- */

/* y_i = x * W_i^T for count weights (n rows of k, ldx apart; outputs ldy[i] apart): the activations are
 * prepared once per run of weights that take the same type, one tl_gemm (or tl_gemm_many) per run. `have` is
 * the activation type `act` already holds for x (-1: none). */
static int products(tl_ctx *ctx, int count, const tl_weight *w, const float *x, int64_t ldx, int64_t n, int64_t k,
                    float *const *y, const int64_t *ldy, void *act, int have, int nth) {
    for (int i = 0; i < count;) {
        const int at = tl_act_type(ctx, w[i].wtype);
        int j = i + 1;
        while (j < count && tl_act_type(ctx, w[j].wtype) == at) j++;
        int rc;
        if (at != have && (rc = tl_act_prepare(ctx, w[i].wtype, x, ldx, n, k, act, nth))) return rc;
        have = at;
        if (j - i == 1) {
            rc = tl_gemm(ctx, w[i].wtype, w[i].w, w[i].ldw, w[i].m, k, act, n, y[i], ldy[i], nth);
        } else {
            int wt[TL_GEMM_MANY_MAX];
            const void *wp[TL_GEMM_MANY_MAX];
            int64_t ldw[TL_GEMM_MANY_MAX], m[TL_GEMM_MANY_MAX];
            for (int t = i; t < j; t++) wt[t - i] = w[t].wtype, wp[t - i] = w[t].w, ldw[t - i] = w[t].ldw, m[t - i] = w[t].m;
            rc = tl_gemm_many(ctx, j - i, wt, wp, ldw, m, k, act, n, y + i, ldy + i, nth);
        }
        if (rc) return rc;
        i = j;
    }
    return TL_OK;
}

/* Scratch of one call: the tokens' rows and what the product steps need, in one allocation. */
typedef struct {
    float *rows;   /* [n, row] */
    float *xn;     /* [n, max_k]: prepared inputs as floats (norm, gating) */
    float *g, *u;  /* [n, max_k]: dense copies of gate / up halves for tl_act_prepare_swiglu */
    void *act;     /* activations, 64-byte aligned */
} scratch;

static int step_matmul(tl_ctx *ctx, const tl_program *p, const tl_step *st, int64_t n, scratch *S, int nth) {
    const int64_t k = st->n, row = p->row;
    const float *x = S->rows + st->src;
    int64_t ldx = row;
    int have = -1, rc = TL_OK;
    if (st->mode == TL_PRE_RMS) {
        if ((rc = tl_act_prepare_rms(ctx, st->w[0].wtype, x, row, st->vec, st->eps, n, k, S->xn, S->act, nth))) return rc;
        have = tl_act_type(ctx, st->w[0].wtype);
        x = S->xn, ldx = k;
    } else if (st->mode == TL_PRE_SWIGLU || st->mode == TL_PRE_GEGLU) {
        const float *g = x, *u = S->rows + st->src2;
        if (n > 1) { /* tl_act_prepare_swiglu takes dense rows */
            for (int64_t j = 0; j < n; j++) {
                memcpy(S->g + j * k, g + j * row, (size_t)k * 4);
                memcpy(S->u + j * k, u + j * row, (size_t)k * 4);
            }
            g = S->g, u = S->u;
        }
        if (st->mode == TL_PRE_SWIGLU) {
            if ((rc = tl_act_prepare_swiglu(ctx, st->w[0].wtype, g, u, n, k, S->xn, S->act, nth))) return rc;
            have = tl_act_type(ctx, st->w[0].wtype);
        } else {
            for (int64_t j = 0; j < n; j++) geglu_row(g + j * k, u + j * k, k, S->xn + j * k);
        }
        x = S->xn, ldx = k;
    }
    float *y[TL_GEMM_MANY_MAX];
    int64_t ldy[TL_GEMM_MANY_MAX], off = st->dst;
    for (int i = 0; i < st->count; i++) y[i] = S->rows + off, ldy[i] = row, off += st->w[i].m;
    return products(ctx, st->count, st->w, x, ldx, n, k, y, ldy, S->act, have, nth);
}

static int step_heads(tl_ctx *ctx, const tl_program *p, const tl_step *st, int64_t n, scratch *S, int nth) {
    tl_weight w = st->w[0];
    for (int64_t r = 0; r < st->rows; r++) {
        w.w = (const uint8_t *)st->w[0].w + r * st->w_stride;
        float *y = S->rows + st->dst + r * st->ld_dst;
        const int64_t ldy = p->row;
        const int rc = products(ctx, 1, &w, S->rows + st->src + r * st->ld_src, p->row, n, st->n, &y, &ldy, S->act, -1,
                                nth);
        if (rc) return rc;
    }
    return TL_OK;
}

/* ---- mixture of experts ------------------------------------------------------------------------------ */

/* The n_used experts of one token (ids ascending in selection order) and their weights, from router logits lg.
 * gs, keep: scratch of n_group values each (on the heap: gcc zeroes a 256-byte stack array with aligned
 * 64-byte stores, which fault on ASan's fake stack frames when this is inlined into tl_layer_run). */
static void moe_route(const tl_moe *m, const float *lg, float *probs, float *sel, int *ids, float *wts, float *gs,
                      int *keep) {
    const int E = m->n_expert;
    if (m->gating == TL_GATING_SOFTMAX) {
        float mx = -INFINITY, sum = 0.0f;
        for (int e = 0; e < E; e++) mx = lg[e] > mx ? lg[e] : mx;
        for (int e = 0; e < E; e++) sum += (probs[e] = expf(lg[e] - mx));
        for (int e = 0; e < E; e++) probs[e] /= sum;
    } else {
        for (int e = 0; e < E; e++) probs[e] = 1.0f / (1.0f + expf(-lg[e]));
    }
    for (int e = 0; e < E; e++) sel[e] = m->bias ? probs[e] + m->bias[e] : probs[e];
    if (m->n_group > 1 && m->n_group_used < m->n_group) {
        /* keep the n_group_used groups with the best two-expert sums (ties: the lower group) */
        const int per = E / m->n_group;
        for (int g = 0; g < m->n_group; g++) keep[g] = 0;
        for (int g = 0; g < m->n_group; g++) {
            float b1 = -INFINITY, b2 = -INFINITY;
            for (int e = g * per; e < (g + 1) * per; e++) {
                if (sel[e] > b1) b2 = b1, b1 = sel[e];
                else if (sel[e] > b2) b2 = sel[e];
            }
            gs[g] = b1 + b2;
        }
        for (int t = 0; t < m->n_group_used; t++) {
            int best = -1;
            for (int g = 0; g < m->n_group; g++)
                if (!keep[g] && (best < 0 || gs[g] > gs[best])) best = g;
            keep[best] = 1;
        }
        for (int e = 0; e < E; e++)
            if (!keep[e / per]) sel[e] = -INFINITY;
    }
    /* the n_used best (ties: the lower expert), as a stable sort of -sel would pick them */
    for (int t = 0; t < m->n_used; t++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int u = 0; u < t; u++) taken |= ids[u] == e;
            if (!taken && (best < 0 || sel[e] > sel[best])) best = e;
        }
        ids[t] = best;
        wts[t] = probs[best];
    }
    if (m->norm) {
        float s = 0.0f;
        for (int t = 0; t < m->n_used; t++) s += wts[t];
        for (int t = 0; t < m->n_used; t++) wts[t] /= s;
    }
    for (int t = 0; t < m->n_used; t++) wts[t] *= m->scale;
}

/* dst = sum over each token's chosen experts, in ascending expert order, of weight * expert(src). Each expert
 * runs once on the tokens that chose it (gathered rows: the same bits as each token alone). */
static int step_moe(tl_ctx *ctx, const tl_program *p, const tl_step *st, int64_t n, scratch *S, int nth) {
    const tl_moe *m = st->moe;
    const int64_t k = st->n, E = m->n_expert, f = m->gate.m, row = p->row, U = m->n_used;
    const size_t nf = (size_t)(n * E * 3 + n * U + n * k + 2 * n * f + n * k + m->n_group);
    float *mem = (float *)malloc(sizeof(float) * nf + sizeof(int) * (size_t)(n * U + n + m->n_group));
    if (!mem) return TL_ENOMEM;
    float *lg = mem, *probs = lg + n * E, *sel = probs + n * E, *wts = sel + n * E, *xs = wts + n * U;
    float *g = xs + n * k, *u = g + n * f, *y = u + n * f, *gs = y + n * k;
    int *ids = (int *)(gs + m->n_group), *tok = ids + n * U, *keep = tok + n;
    int rc;
    {
        float *lgp = lg;
        const int64_t ldl = E;
        if ((rc = products(ctx, 1, &m->router, S->rows + st->src, row, n, k, &lgp, &ldl, S->act, -1, nth))) goto out;
    }
    for (int64_t j = 0; j < n; j++) {
        moe_route(m, lg + j * E, probs + j * E, sel + j * E, ids + j * U, wts + j * U, gs, keep);
        float *d = S->rows + st->dst + j * row;
        for (int64_t i = 0; i < k; i++) d[i] = 0.0f;
    }
    for (int e = 0; e < E; e++) {
        int64_t ne = 0;
        for (int64_t j = 0; j < n; j++)
            for (int64_t t = 0; t < U; t++)
                if (ids[j * U + t] == e) tok[ne++] = (int)(j * U + t);
        if (!ne) continue;
        for (int64_t r = 0; r < ne; r++) memcpy(xs + r * k, S->rows + st->src + (tok[r] / U) * row, (size_t)k * 4);
        tl_weight gu[2] = {m->gate, m->up}, dn = m->down;
        gu[0].w = (const uint8_t *)m->gate.w + e * m->gate_stride;
        gu[1].w = (const uint8_t *)m->up.w + e * m->up_stride;
        dn.w = (const uint8_t *)m->down.w + e * m->down_stride;
        float *gy[2] = {g, u};
        const int64_t ldg[2] = {f, f}, ldd = k;
        if ((rc = products(ctx, 2, gu, xs, k, ne, k, gy, ldg, S->act, -1, nth))) goto out;
        if ((rc = tl_act_prepare_swiglu(ctx, dn.wtype, g, u, ne, f, S->xn, S->act, nth))) goto out;
        if ((rc = products(ctx, 1, &dn, S->xn, f, ne, f, &y, &ldd, S->act, tl_act_type(ctx, dn.wtype), nth))) goto out;
        for (int64_t r = 0; r < ne; r++) {
            float *yr = y + r * k, *d = S->rows + st->dst + (tok[r] / U) * row;
            const float wgt = wts[tok[r]];
            for (int64_t i = 0; i < k; i++) yr[i] *= wgt; /* rounded product, then the add (numpy's order) */
            add_to(d, yr, k);
        }
    }
out:
    free(mem);
    return rc;
}

/* ---- the program ------------------------------------------------------------------------------------- */

static int span_ok(const tl_program *p, int64_t off, int64_t rows, int64_t ld, int64_t n) {
    return off >= 0 && rows >= 1 && ld >= 0 && n >= 1 && off + (rows - 1) * ld + n <= p->row;
}

static int weight_ok(const tl_ctx *ctx, const tl_weight *w, int64_t k) {
    if (!w->w || w->m < 1 || k < 1 || !tl_supports(ctx, w->wtype)) return 0;
    const int bs = tl_block_size(w->wtype);
    return bs > 0 && k % bs == 0 && w->ldw >= k / bs * tl_type_size(w->wtype);
}

static int cache_ok(const tl_program *p, int c) { return c >= 0 && c < p->n_caches && p->caches[c]; }

static int cache_type(const tl_program *p, int c) { return p->cache_type ? p->cache_type[c] : TL_F32; }

/* bytes of n values of cache c (n a multiple of its granule: checked by tl_layer_check) */
static int64_t cache_bytes(const tl_program *p, int c, int64_t n) { return tl_kv_bytes_of(cache_type(p, c), n); }

/* n, a value count or offset into cache c, covers whole units of its type */
static int cache_whole(const tl_program *p, int c, int64_t n) { return n % tl_kv_granule(cache_type(p, c)) == 0; }

static int moe_ok(const tl_ctx *ctx, const tl_moe *m, int64_t k) {
    const int E = m->n_expert;
    if (E < 1 || E > 1024 || m->n_used < 1 || m->n_used > E || m->n_group < 1 || m->n_group > 256 || E % m->n_group ||
        m->n_group_used < 1 || m->n_group_used > m->n_group || (m->gating != TL_GATING_SOFTMAX && m->gating != TL_GATING_SIGMOID))
        return 0;
    if (m->n_group > 1 && (E / m->n_group < 2 || m->n_group_used * (E / m->n_group) < m->n_used)) return 0;
    const int64_t f = m->gate.m;
    return weight_ok(ctx, &m->router, k) && m->router.m == E && weight_ok(ctx, &m->gate, k) &&
           weight_ok(ctx, &m->up, k) && m->up.m == f && weight_ok(ctx, &m->down, f) && m->down.m == k &&
           m->gate_stride >= 0 && m->up_stride >= 0 && m->down_stride >= 0;
}

int tl_layer_check(const tl_ctx *ctx, tl_program *p) {
    if (!ctx || !p) return TL_EINVAL;
    p->checked = 0;
    if (p->n_embd < 1 || p->row < p->n_embd || p->n_rot < 0 || p->n_rot % 2 || p->n_ctx < 1 || p->n_slots < 1 ||
        p->n_steps < 1 || !p->steps || p->n_caches < 0 || (p->n_caches && (!p->caches || !p->cache_ld || !p->slot_stride)))
        return TL_EINVAL;
    int64_t max_k = 1;
    for (int c = 0; c < p->n_caches; c++)
        if (p->cache_ld[c] < 1 || p->slot_stride[c] < 0 || !tl_kv_type_ok(cache_type(p, c)) ||
            !cache_whole(p, c, p->cache_ld[c]) || !cache_whole(p, c, p->slot_stride[c]))
            return TL_EINVAL;
    for (int i = 0; i < p->n_steps; i++) {
        const tl_step *st = &p->steps[i];
        int ok = 0;
        switch (st->op) {
        case TL_OP_RMS_NORM:
            ok = st->vec && span_ok(p, st->dst, st->rows, st->ld_dst, st->n) && span_ok(p, st->src, st->rows, st->ld_src, st->n);
            break;
        case TL_OP_ADD:
        case TL_OP_COPY:
            ok = span_ok(p, st->dst, st->rows, st->ld_dst, st->n) &&
                 ((st->op == TL_OP_ADD && st->vec) || span_ok(p, st->src, st->rows, st->ld_src, st->n));
            break;
        case TL_OP_ROPE:
            ok = (st->mode == 0 || st->mode == 1) && st->n == p->n_rot && span_ok(p, st->src, st->rows, st->ld_src, st->n);
            break;
        case TL_OP_STORE:
            ok = cache_ok(p, st->cache) && span_ok(p, st->src, st->rows, st->ld_src, st->n) && st->c_off >= 0 &&
                 st->c_ld >= 0 && st->c_off + (st->rows - 1) * st->c_ld + st->n <= p->cache_ld[st->cache] &&
                 cache_whole(p, st->cache, st->c_off) && cache_whole(p, st->cache, st->c_ld) &&
                 cache_whole(p, st->cache, st->n);
            break;
        case TL_OP_ATTENTION:
            ok = st->n_head >= 1 && st->n_head_kv >= 1 && st->n_head % st->n_head_kv == 0 && st->dk >= 1 &&
                 st->dv >= 1 && st->window >= 0 && cache_ok(p, st->cache) && cache_ok(p, st->cache2) &&
                 st->n_head_kv * st->dk <= p->cache_ld[st->cache] && st->n_head_kv * st->dv <= p->cache_ld[st->cache2] &&
                 cache_whole(p, st->cache, st->dk) && cache_whole(p, st->cache2, st->dv) &&
                 span_ok(p, st->src, st->n_head, st->ld_src, st->dk) && span_ok(p, st->dst, st->n_head, st->ld_dst, st->dv);
            break;
        case TL_OP_MATMUL: {
            ok = st->count >= 1 && st->count <= TL_GEMM_MANY_MAX && st->w && st->mode >= TL_PRE_NONE &&
                 st->mode <= TL_PRE_GEGLU && (st->mode != TL_PRE_RMS || st->vec) && span_ok(p, st->src, 1, 0, st->n) &&
                 (st->mode < TL_PRE_SWIGLU || span_ok(p, st->src2, 1, 0, st->n));
            int64_t m = 0;
            for (int j = 0; ok && j < st->count; j++) ok = weight_ok(ctx, &st->w[j], st->n), m += st->w[j].m;
            ok = ok && span_ok(p, st->dst, 1, 0, m);
            max_k = TL_MAX(max_k, st->n);
            break;
        }
        case TL_OP_MATMUL_HEADS:
            ok = st->w && weight_ok(ctx, &st->w[0], st->n) && st->w_stride >= 0 &&
                 span_ok(p, st->src, st->rows, st->ld_src, st->n) && span_ok(p, st->dst, st->rows, st->ld_dst, st->w[0].m);
            break;
        case TL_OP_MOE:
            ok = st->moe && moe_ok(ctx, st->moe, st->n) && span_ok(p, st->src, 1, 0, st->n) && span_ok(p, st->dst, 1, 0, st->n);
            if (ok) max_k = TL_MAX(max_k, TL_MAX(st->n, st->moe->gate.m));
            break;
        default:
            ok = 0;
        }
        if (!ok) return TL_EINVAL;
    }
    p->max_k = max_k;
    p->checked = CHECKED;
    return TL_OK;
}

/* Bytes of activations the largest product step needs for n rows. */
static size_t act_need(const tl_ctx *ctx, const tl_program *p, int64_t n) {
    size_t need = 64;
    for (int i = 0; i < p->n_steps; i++) {
        const tl_step *st = &p->steps[i];
        if (st->op == TL_OP_MATMUL || st->op == TL_OP_MATMUL_HEADS)
            for (int j = 0; j < (st->op == TL_OP_MATMUL ? st->count : 1); j++)
                need = TL_MAX(need, tl_act_bytes(ctx, st->w[j].wtype, n, st->n));
        if (st->op == TL_OP_MOE) {
            const tl_moe *m = st->moe;
            need = TL_MAX(need, tl_act_bytes(ctx, m->router.wtype, n, st->n));
            need = TL_MAX(need, tl_act_bytes(ctx, m->gate.wtype, n, st->n));
            need = TL_MAX(need, tl_act_bytes(ctx, m->up.wtype, n, st->n));
            need = TL_MAX(need, tl_act_bytes(ctx, m->down.wtype, n, m->gate.m));
        }
    }
    return need;
}

static int run_step(tl_ctx *ctx, const tl_program *p, const tl_step *st, int64_t n, scratch *S, const float *cosv,
                    const float *sinv, const int64_t *pos, const int64_t *slot, int nth) {
    const int64_t row = p->row;
    switch (st->op) {
    case TL_OP_MATMUL: return step_matmul(ctx, p, st, n, S, nth);
    case TL_OP_MATMUL_HEADS: return step_heads(ctx, p, st, n, S, nth);
    case TL_OP_MOE: return step_moe(ctx, p, st, n, S, nth);
    default: break;
    }
    for (int64_t j = 0; j < n; j++) {
        float *t = S->rows + j * row;
        switch (st->op) {
        case TL_OP_RMS_NORM:
            for (int64_t r = 0; r < st->rows; r++)
                tl_rms_row(t + st->src + r * st->ld_src, st->vec, st->eps, st->n, t + st->dst + r * st->ld_dst);
            break;
        case TL_OP_ADD:
            for (int64_t r = 0; r < st->rows; r++) add_to(t + st->dst + r * st->ld_dst, st->vec ? st->vec : t + st->src + r * st->ld_src, st->n);
            break;
        case TL_OP_COPY:
            for (int64_t r = 0; r < st->rows; r++) memmove(t + st->dst + r * st->ld_dst, t + st->src + r * st->ld_src, (size_t)st->n * 4);
            break;
        case TL_OP_ROPE: {
            const int64_t half = p->n_rot / 2;
            rope(t + st->src, st->rows, st->ld_src, st->n, st->mode, cosv + j * half, sinv + j * half);
            break;
        }
        case TL_OP_STORE: { /* rounded to the cache's type */
            const int ct = cache_type(p, st->cache);
            uint8_t *c = (uint8_t *)p->caches[st->cache] + cache_bytes(p, st->cache, slot[j] * p->slot_stride[st->cache]) +
                         cache_bytes(p, st->cache, pos[j] * p->cache_ld[st->cache]);
            for (int64_t r = 0; r < st->rows; r++)
                tl_kv_store(t + st->src + r * st->ld_src, ct, st->n, c + cache_bytes(p, st->cache, st->c_off + r * st->c_ld));
            break;
        }
        case TL_OP_ATTENTION: {
            const int kt = cache_type(p, st->cache), vt = cache_type(p, st->cache2);
            const int64_t ldk = cache_bytes(p, st->cache, p->cache_ld[st->cache]);
            const int64_t ldv = cache_bytes(p, st->cache2, p->cache_ld[st->cache2]);
            const uint8_t *kc = (const uint8_t *)p->caches[st->cache] + cache_bytes(p, st->cache, slot[j] * p->slot_stride[st->cache]);
            const uint8_t *vc = (const uint8_t *)p->caches[st->cache2] + cache_bytes(p, st->cache2, slot[j] * p->slot_stride[st->cache2]);
            /* a sliding window starts the keys at its oldest visible position (relative positions from there) */
            const int64_t k0 = st->window > 0 && pos[j] - st->window + 1 > 0 ? pos[j] - st->window + 1 : 0;
            int rc;
            if (st->dk == st->dv && st->ld_src == st->dk && st->ld_dst == st->dv)
                rc = tl_attention_kv(t + st->src, st->n_head * st->dk, kc + k0 * ldk, kt, ldk, vc + k0 * ldv, vt, ldv,
                                     t + st->dst, st->n_head * st->dv, 1, pos[j] - k0 + 1, st->n_head, st->n_head_kv,
                                     st->dk, pos[j] - k0, st->window, st->scale, nth);
            else
                rc = attention_plain(t + st->src, st->ld_src, kc, kt, ldk, vc, vt, ldv, t + st->dst, st->ld_dst,
                                     st->n_head, st->n_head_kv, st->dk, st->dv, k0, pos[j] + 1, st->scale);
            if (rc) return rc;
            break;
        }
        default: return TL_EINVAL;
        }
    }
    return TL_OK;
}

int tl_layer_run(tl_ctx *ctx, const tl_program *p, int64_t n, float *h, const float *cosv, const float *sinv,
                 const int64_t *pos, const int64_t *slot, int nthreads) {
    if (!ctx || !p || p->checked != CHECKED || n < 1 || !h || !pos || !slot || nthreads < 1 ||
        (p->n_rot && (!cosv || !sinv)))
        return TL_EINVAL;
    for (int64_t j = 0; j < n; j++)
        if (pos[j] < 0 || pos[j] >= p->n_ctx || slot[j] < 0 || slot[j] >= p->n_slots) return TL_EINVAL;
    const size_t act = (size_t)tl_round_up((int64_t)act_need(ctx, p, n), TL_ACT_ALIGN);
    const size_t nf = (size_t)(n * p->row + 3 * n * p->max_k);
    uint8_t *mem = (uint8_t *)aligned_alloc(TL_ACT_ALIGN, (size_t)tl_round_up((int64_t)(act + nf * 4), TL_ACT_ALIGN));
    if (!mem) return TL_ENOMEM;
    scratch S = {.act = mem, .rows = (float *)(mem + act)};
    S.xn = S.rows + n * p->row;
    S.g = S.xn + n * p->max_k;
    S.u = S.g + n * p->max_k;
    memset(S.rows, 0, sizeof(float) * (size_t)(n * p->row));
    for (int64_t j = 0; j < n; j++) memcpy(S.rows + j * p->row, h + j * p->n_embd, (size_t)p->n_embd * 4);
    int rc = TL_OK;
    for (int i = 0; i < p->n_steps && !rc; i++) rc = run_step(ctx, p, &p->steps[i], n, &S, cosv, sinv, pos, slot, nthreads);
    if (!rc)
        for (int64_t j = 0; j < n; j++) memcpy(h + j * p->n_embd, S.rows + j * p->row, (size_t)p->n_embd * 4);
    free(mem);
    return rc;
}
