/* attention.c — causal grouped-query attention, the non-linear-layer hot spot of a prefill.
 *
 * Flash-attention style: for each (kv head, block of queries) the scores against one block of keys are computed,
 * folded into a running (max, sum) per query row with an online softmax, and the value rows accumulated, so the
 * [T x S] score matrix never exists in memory. Plain C with vector extensions (vmath.h): each variant compiles it
 * with its own ISA flags.
 *
 * Query rows in lanes. A task holds the H/Hkv query heads of one kv head for a block of tokens: row r = head * nt +
 * token. Its scaled queries are kept transposed (qT [D][rows], stored per group of SW rows: [group][D][SW], so a
 * group's tile is contiguous, not D lines a power of two apart), so one vector holds one dimension of VW rows and
 * the two products are register-tiled outer products with a broadcast from a key or value row:
 *   scores  sT[j][rows] = sum_d K[j][d] * qT[d][rows]        (keys j of the block)
 *   output  oT[d][rows] = oT[d][rows] * corr + sum_j V[j][d] * pT[j][rows]
 * and the online softmax (max, correction, exp, sum) is lane-wise: no horizontal reductions, one correction exp
 * per VW rows. The 8 query heads of a kv head (and the tokens of the block) reuse each key and value block, which
 * is converted to floats once per task (f16, bf16, q8_0; an f32 cache is read in place).
 *
 * Bits: a row's result depends only on its own query, position and the keys: key blocks start at multiples of KB
 * (absolute), the products run over d and over keys in order, and a block a row cannot see (or skips) changes
 * nothing in its lane. So the same row gives the same bits for any T, query block, row group or thread count (the
 * server's batch invariance; a prompt split into chunks).
 *
 * Layouts: q token t, head h at q[t*ldq + h*D] (floats); out like q with ldo. K and V are KV cache rows of any
 * cache type (kv.h: f32, f16, bf16, q8_0): key s, kv head c at byte s*ldk + c*bytes(D) of k (v alike). Query t
 * sits at absolute position n_past + t and sees keys 0..n_past+t (a window: the last `window` of them). Query head
 * h reads kv head h / (H / Hkv).
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"
#include "threadpool.h"
#include "tilellm.h"
#include "vmath.h"
#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

/* NI row vectors per register tile; the score tile is RJ keys x NI, the output tile RD dims x NI (ni < NI at the
 * end of a task's rows: more keys / dims per tile so the FMA chains stay independent). 32 vector registers on
 * AVX-512 and AArch64, 16 on AVX2 and SSE. */
#if defined(__AVX512F__) || defined(__aarch64__)
#define NI 4
#else
#define NI 2
#endif
#define KB 64 /* keys per block (blocks start at multiples of KB) */
#define QB 32 /* query tokens per task (x H/Hkv heads: the rows a converted key / value block serves) */
#define SW (NI * VW) /* floats per key in the score tile */
#define ALWAYS static inline __attribute__((always_inline))

#if defined(__AVX512F__)
ALWAYS vf vmaxf(vf a, vf b) { return (vf)_mm512_max_ps((__m512)a, (__m512)b); }
#else
ALWAYS vf vmaxf(vf a, vf b) { return (vf)(((vi)a & (vi)(a >= b)) | ((vi)b & ~(vi)(a >= b))); }
#endif

/* exp(x) for x <= 0 (scores minus their row max; -inf and very negative give exp(-87) ~ 0): vmath.h's vexp, on
 * AVX-512 with its rounding and 2^n as single instructions (the same values: both round n to nearest even and
 * scale p by 2^n exactly) */
ALWAYS vf vexp_neg(vf x) {
#if defined(__AVX512F__)
    x = vmaxf(vsplat(-87.0f), x); /* max_ps returns its second operand if either is nan: a nan score stays nan */
    const vf n = (vf)_mm512_roundscale_ps((__m512)(x * 1.44269504089f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return (vf)_mm512_scalef_ps((__m512)vexp_poly(x, n), (__m512)n);
#else
    const vi below = x < vsplat(-87.0f); /* -1 where x < -87 (and for -inf) */
    return vexp((vf)(((vi)x & ~below) | ((vi)vsplat(-87.0f) & below)));
#endif
}

ALWAYS vf vsel(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }

typedef struct {
    const float *q;
    const uint8_t *k, *v;
    float *out;
    int ktype, vtype;
    int64_t ldq, ldk, ldv, ldo; /* ldk, ldv: bytes */
    int64_t T, S, H, Hkv, D, n_past, window; /* window 0 = unlimited */
    float scale;
    int64_t n_tasks;
    float *scratch; /* scratch_floats() per worker */
    _Atomic int64_t next; /* next task to hand out (tasks differ in cost: causal) */
} attn_args;

/* sT[i][..] for keys i < rj (rows kb[i*ldk ..]) and ni row vectors of qT (D rows ldq apart). */
ALWAYS void qk_tile(const float *qT, int64_t ldq, const float *kb, int64_t ldk, int64_t D, float *sT, int rj,
                    int ni) {
    vf acc[16][NI];
    for (int i = 0; i < rj; i++)
        for (int n = 0; n < ni; n++) acc[i][n] = vsplat(0.0f);
    for (int64_t d = 0; d < D; d++) {
        vf qv[NI];
        for (int n = 0; n < ni; n++) qv[n] = vload(qT + d * ldq + n * VW);
        for (int i = 0; i < rj; i++) {
            const vf b = vsplat(kb[i * ldk + d]);
            for (int n = 0; n < ni; n++) acc[i][n] += b * qv[n];
        }
    }
    for (int i = 0; i < rj; i++)
        for (int n = 0; n < ni; n++) vstore(sT + i * SW + n * VW, acc[i][n]);
}

/* oT[dd][..] = oT[dd][..] * corr + sum_{j < nk} vb[j*ldv + dd] * pT[j][..] for dims dd < rd, ni row vectors. */
ALWAYS void pv_tile(const float *pT, const float *vb, int64_t ldv, int nk, float *oT, int64_t ldo, const vf *corr,
                    int rd, int ni) {
    vf acc[16][NI];
    for (int dd = 0; dd < rd; dd++)
        for (int n = 0; n < ni; n++) acc[dd][n] = vload(oT + dd * ldo + n * VW) * corr[n];
    for (int j = 0; j < nk; j++) {
        vf pv[NI];
        for (int n = 0; n < ni; n++) pv[n] = vload(pT + j * SW + n * VW);
        for (int dd = 0; dd < rd; dd++) {
            const vf b = vsplat(vb[j * ldv + dd]);
            for (int n = 0; n < ni; n++) acc[dd][n] += b * pv[n];
        }
    }
    for (int dd = 0; dd < rd; dd++)
        for (int n = 0; n < ni; n++) vstore(oT + dd * ldo + n * VW, acc[dd][n]);
}

/* scores of ni row vectors against nk keys, and values into the output: fewer row vectors take more keys / dims
 * per tile (independent FMA chains; 4*NI accumulators at most) */
ALWAYS void qk_rows(const float *qT, int64_t ldq, const float *kb, int64_t ldk, int64_t D, int nk, float *sT, int ni) {
    const int rj = ni == 1 ? 4 * NI : ni == 2 ? 2 * NI : 4;
    int j = 0;
    for (; j + rj <= nk; j += rj) qk_tile(qT, ldq, kb + j * ldk, ldk, D, sT + j * SW, rj, ni);
    for (; j < nk; j++) qk_tile(qT, ldq, kb + j * ldk, ldk, D, sT + j * SW, 1, ni);
}

ALWAYS void pv_rows(const float *pT, const float *vb, int64_t ldv, int nk, float *oT, int64_t ldo, int64_t D,
                    const vf *corr, int ni) {
    const int rd = ni == 1 ? 4 * NI : ni == 2 ? 2 * NI : 4;
    int64_t d = 0;
    for (; d + rd <= D; d += rd) pv_tile(pT, vb + d, ldv, nk, oT + d * ldo, ldo, corr, rd, ni);
    for (; d < D; d++) pv_tile(pT, vb + d, ldv, nk, oT + d * ldo, ldo, corr, 1, ni);
}

/* The online softmax of one block for ni row vectors (positions pos, running max mx and sum l): scores in sT
 * become probabilities, corr the factor the older output is scaled by. mask: some key is hidden from some row. */
ALWAYS void softmax_rows(float *sT, int nk, int64_t s0, const int32_t *pos, int64_t window, int mask, float *mx,
                         float *l, vf *corr, int ni) {
    for (int n = 0; n < ni; n++) {
        vi hi, lo;
        memcpy(&hi, pos + n * VW, sizeof hi); /* a row sees keys lo .. hi (positions relative to s0) */
        hi -= visplat((int32_t)s0);
        lo = window > 0 ? hi - visplat((int32_t)(window - 1)) : visplat(INT32_MIN);
        const vf m0 = vload(mx + n * VW);
        vf m = m0;
        if (mask) {
            for (int j = 0; j < nk; j++) {
                const vi see = (visplat(j) <= hi) & (visplat(j) >= lo);
                const vf s = vsel(see, vload(sT + j * SW + n * VW), vsplat(-INFINITY));
                vstore(sT + j * SW + n * VW, s);
                m = vmaxf(m, s);
            }
        } else {
            for (int j = 0; j < nk; j++) m = vmaxf(m, vload(sT + j * SW + n * VW));
        }
        const vi none = m == vsplat(-INFINITY);          /* no key seen yet: nothing to scale or add */
        const vf ms = vsel(none, vsplat(0.0f), m);
        corr[n] = vsel(m0 == vsplat(-INFINITY), vsplat(0.0f), vexp_neg(m0 - ms));
        vf sum = vsplat(0.0f);
        for (int j = 0; j < nk; j++) {
            const vf s = vload(sT + j * SW + n * VW);
            vf p = vexp_neg(s - ms);
            if (mask) p = vsel(s == vsplat(-INFINITY), vsplat(0.0f), p);
            vstore(sT + j * SW + n * VW, p);
            sum += p;
        }
        vstore(l + n * VW, vload(l + n * VW) * corr[n] + sum);
        vstore(mx + n * VW, m);
    }
}

/* One row group (ni vectors at column r0 of the task's tiles) against one key block. */
ALWAYS void group_block(const attn_args *a, const float *qT, float *oT, int64_t ldr, const float *kb, int64_t ldkf,
                        const float *vb, int64_t ldvf, int nk, int64_t s0, const int32_t *pos, int mask, float *mx,
                        float *l, float *sT, int ni) {
    vf corr[NI];
    qk_rows(qT, ldr, kb, ldkf, a->D, nk, sT, ni);
    softmax_rows(sT, nk, s0, pos, a->window, mask, mx, l, corr, ni);
    pv_rows(sT, vb, ldvf, nk, oT, ldr, a->D, corr, ni);
}

static void group_block_any(const attn_args *a, const float *qT, float *oT, int64_t ldr, const float *kb,
                            int64_t ldkf, const float *vb, int64_t ldvf, int nk, int64_t s0, const int32_t *pos,
                            int mask, float *mx, float *l, float *sT, int ni) {
    switch (ni) {
#if NI == 4
    case 4: group_block(a, qT, oT, ldr, kb, ldkf, vb, ldvf, nk, s0, pos, mask, mx, l, sT, 4); break;
    case 3: group_block(a, qT, oT, ldr, kb, ldkf, vb, ldvf, nk, s0, pos, mask, mx, l, sT, 3); break;
#endif
    case 2: group_block(a, qT, oT, ldr, kb, ldkf, vb, ldvf, nk, s0, pos, mask, mx, l, sT, 2); break;
    default: group_block(a, qT, oT, ldr, kb, ldkf, vb, ldvf, nk, s0, pos, mask, mx, l, sT, 1); break;
    }
}

/* nk cache rows (ld bytes apart) of D values of type t as float rows D apart: the f16 -> f32 instruction where the
 * ISA has one (exact, as tl_f16_to_f32), kv.h's loop otherwise */
static void rows_as_floats(const uint8_t *src, int64_t ld, int t, int64_t D, int nk, float *dst) {
#if defined(__F16C__)
    if (t == TL_F16 && D % 8 == 0) {
        for (int j = 0; j < nk; j++)
            for (int64_t d = 0; d < D; d += 8)
                _mm256_storeu_ps(dst + j * D + d,
                                 _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + j * ld + 2 * d))));
        return;
    }
#endif
    for (int j = 0; j < nk; j++) tl_kv_load(src + j * ld, t, D, dst + j * D);
}

/* rows of a task: g heads x QB tokens, padded to whole vectors */
static int64_t task_rows(const attn_args *a) { return ((a->H / a->Hkv) * QB + SW - 1) / SW * SW; }

static size_t scratch_floats(const attn_args *a) {
    const int64_t R = task_rows(a), D = a->D;
    return ((size_t)(2 * D * R + 3 * R + KB * SW + 2 * KB * D) + 15) & ~(size_t)15; /* 64 B */
}

/* One task: kv head c, query tokens [t0, t1), all H/Hkv query heads of that kv head. */
static void attn_task(const attn_args *a, int64_t c, int64_t t0, int64_t t1, float *scratch) {
    const int64_t D = a->D, g = a->H / a->Hkv, nt = t1 - t0, M = g * nt, R = (M + VW - 1) / VW * VW;
    const int64_t RP = (R + SW - 1) / SW * SW; /* rows in memory: whole groups */
    float *qT = scratch;       /* [RP / SW][D][SW] scaled queries */
    float *oT = qT + D * RP;   /* [RP / SW][D][SW] output accumulators */
#define TR(d, r) ((r) / SW * D * SW + (d) * SW + (r) % SW) /* element (d, row r) of qT / oT */
    float *mx = oT + D * RP;   /* [R] running max */
    float *l = mx + R;         /* [R] running sum of exp */
    int32_t *pos = (int32_t *)(l + R); /* [R] absolute position of each row */
    float *sT = (float *)(pos + R);    /* [KB][SW] scores / probabilities of a row group */
    float *kf = sT + KB * SW;  /* [KB][D] a key block as floats (types other than f32) */
    float *vfl = kf + KB * D;  /* [KB][D] a value block as floats */
    const int64_t hk = tl_kv_bytes_of(a->ktype, D), hv = tl_kv_bytes_of(a->vtype, D); /* bytes of a head */
    memset(oT, 0, sizeof(float) * (size_t)(D * RP));
    for (int64_t r = 0; r < R; r++) {
        mx[r] = -INFINITY;
        l[r] = 0.0f;
        /* padding rows: a zero query at the task's last position (finite, dropped at the end) */
        pos[r] = (int32_t)(a->n_past + (r < M ? t0 + r % nt : t1 - 1));
        if (r >= M) {
            for (int64_t d = 0; d < D; d++) qT[TR(d, r)] = 0.0f;
            continue;
        }
        const int64_t h = c * g + r / nt, t = t0 + r % nt;
        const float *src = a->q + t * a->ldq + h * D;
        for (int64_t d = 0; d < D; d++) qT[TR(d, r)] = src[d] * a->scale;
    }
    const int64_t p_lo = a->n_past + t0, p_hi = a->n_past + t1 - 1; /* positions of the task's first, last row */
    const int64_t s_end = p_hi + 1;
    const int64_t s_beg = a->window > 0 && p_lo - a->window + 1 > 0 ? p_lo - a->window + 1 : 0;
    for (int64_t s0 = s_beg / KB * KB; s0 < s_end; s0 += KB) {
        const int nk = (int)(s_end - s0 < KB ? s_end - s0 : KB);
        const float *kb = (const float *)(a->k + s0 * a->ldk + c * hk), *vb = (const float *)(a->v + s0 * a->ldv + c * hv);
        int64_t ldkf = a->ldk / 4, ldvf = a->ldv / 4;
        if (a->ktype != TL_F32) rows_as_floats(a->k + s0 * a->ldk + c * hk, a->ldk, a->ktype, D, nk, kf), kb = kf, ldkf = D;
        if (a->vtype != TL_F32) rows_as_floats(a->v + s0 * a->ldv + c * hv, a->ldv, a->vtype, D, nk, vfl), vb = vfl, ldvf = D;
        for (int64_t r0 = 0; r0 < R; r0 += SW) {
            const int ni = (int)((R - r0) / VW < NI ? (R - r0) / VW : NI);
            int32_t lo = INT32_MAX, hi = INT32_MIN;
            for (int64_t r = r0; r < r0 + ni * VW; r++) lo = pos[r] < lo ? pos[r] : lo, hi = pos[r] > hi ? pos[r] : hi;
            if (s0 > hi) continue; /* the whole block lies in these rows' future */
            if (a->window > 0 && s0 + nk - 1 < lo - a->window + 1) continue; /* and left all their windows */
            const int mask = s0 + nk - 1 > lo || (a->window > 0 && s0 < hi - a->window + 1);
            group_block_any(a, qT + r0 * D, oT + r0 * D, SW, kb, ldkf, vb, ldvf, nk, s0, pos + r0, mask, mx + r0, l + r0,
                            sT, ni);
        }
    }
    for (int64_t r = 0; r < M; r++) {
        const int64_t h = c * g + r / nt, t = t0 + r % nt;
        float *dst = a->out + t * a->ldo + h * D;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        for (int64_t d = 0; d < D; d++) dst[d] = oT[TR(d, r)] * inv;
    }
#undef TR
}

static void attn_worker(void *ctx, int ith, int nth) {
    const attn_args *a = (const attn_args *)ctx;
    float *scratch = a->scratch + (size_t)ith * scratch_floats(a);
    (void)nth;
    for (;;) {
        const int64_t task = atomic_fetch_add_explicit(&((attn_args *)a)->next, 1, memory_order_relaxed);
        if (task >= a->n_tasks) break;
        /* the last query blocks see the most keys: hand them out first */
        const int64_t nqb = (a->T + QB - 1) / QB;
        const int64_t c = task % a->Hkv, qb = nqb - 1 - task / a->Hkv;
        const int64_t t0 = qb * QB, t1 = t0 + QB < a->T ? t0 + QB : a->T;
        attn_task(a, c, t0, t1, scratch);
    }
}

int64_t tl_kv_bytes(int type, int64_t n) {
    if (!tl_kv_type_ok(type) || n < 0 || n % tl_kv_granule(type)) return -1;
    return tl_kv_bytes_of(type, n);
}

int tl_attention(const float *q, int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv,
                 float *out, int64_t ldo, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t D,
                 int64_t n_past, int64_t window, float scale, int nthreads) {
    return tl_attention_kv(q, ldq, k, TL_F32, ldk * 4, v, TL_F32, ldv * 4, out, ldo, T, S, H, Hkv, D, n_past, window,
                           scale, nthreads);
}

int tl_attention_kv(const float *q, int64_t ldq, const void *k, int ktype, int64_t ldk, const void *v, int vtype,
                    int64_t ldv, float *out, int64_t ldo, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t D,
                    int64_t n_past, int64_t window, float scale, int nthreads) {
    if (T < 1 || H < 1 || Hkv < 1 || D < 1 || H % Hkv || n_past < 0 || S != n_past + T || window < 0 ||
        S > INT32_MAX / 2 || !tl_kv_type_ok(ktype) || !tl_kv_type_ok(vtype) || D % tl_kv_granule(ktype) ||
        D % tl_kv_granule(vtype) || (ktype == TL_F32 && ldk % 4) || (vtype == TL_F32 && ldv % 4))
        return TL_EINVAL;
    if (window > S) window = 0; /* a window longer than the context hides nothing */
    attn_args a = {q, (const uint8_t *)k, (const uint8_t *)v, out, ktype, vtype, ldq, ldk, ldv, ldo,
                   T, S, H, Hkv, D, n_past, window, scale, 0, NULL, 0};
    a.n_tasks = ((T + QB - 1) / QB) * Hkv;
    int nth = nthreads < 1 ? 1 : nthreads;
    if (nth > a.n_tasks) nth = (int)a.n_tasks;
    /* scratch for every worker up front: tl_parallel_for may run fewer, never more */
    a.scratch = (float *)aligned_alloc(64, scratch_floats(&a) * sizeof(float) * (size_t)nth);
    if (!a.scratch) return TL_ENOMEM;
    tl_parallel_for(nth, attn_worker, &a);
    free(a.scratch);
    return TL_OK;
}
