/* attention.c — causal grouped-query attention in f32, the non-linear-layer hot spot of a prefill.
 *
 * Flash-attention style: for each (kv head, block of queries) the scores against one block of
 * keys are computed, folded into a running (max, sum) per query row with an online softmax, and
 * the value rows accumulated, so the [T x S] score matrix never exists in memory. Plain C written
 * for auto-vectorisation: each variant compiles it with its own ISA flags.
 *
 * Layouts (floats): q token t, head h at q[t*ldq + h*D]; k, v key s, kv head c at k[s*ldk + c*D];
 * out like q with ldo. Query t sits at absolute position n_past + t and sees keys 0..n_past+t.
 * Query head h reads kv head h / (H / Hkv).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "threadpool.h"
#include "tilellm.h"


/* exp(x) for x <= 0 (scores minus their row max), relative error ~2e-7, vectorisable. */
static inline float exp_neg(float x) {
    if (x < -87.0f) x = -87.0f;
    const float n = floorf(x * 1.44269504089f + 0.5f);
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { float f; int32_t i; } s;
    s.i = ((int32_t)n + 127) << 23;
    return p * s.f;
}

/* Vector type of the variant's native width (GCC/clang vector extensions, so one source serves
 * every ISA): the register tiles below are 4 rows x 4 vectors = 16 accumulators. */
#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX__) || defined(__AVX2__)
#define VW 8
#else
#define VW 4
#endif
typedef float vf __attribute__((vector_size(VW * 4)));  /* natural alignment: locals only; memory goes through memcpy */
#define KB (4 * VW)   /* keys per block = 4 vectors */
#define QB 16         /* query tokens per task */

static inline vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vsplat(float x) { vf v; for (int i = 0; i < VW; i++) v[i] = x; return v; }

typedef struct {
    const float *q, *k, *v;
    float *out;
    int64_t ldq, ldk, ldv, ldo;
    int64_t T, S, H, Hkv, D, n_past, window; /* window 0 = unlimited */
    float scale;
    int64_t n_tasks;
    float *scratch; /* scratch_floats() per worker */
} attn_args;

/* scores of rows r0..r0+rn-1 (rn <= 4) against the KB keys of kt ([D][KB]) into s[i*KB + j] */
static void qk_tile(const float *qs, int64_t D, const float *kt, int rn, float *s) {
    vf acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int c = 0; c < 4; c++) acc[i][c] = vsplat(0.0f);
    for (int64_t d = 0; d < D; d++) {
        const float *kr = kt + d * KB;
        const vf k0 = vload(kr), k1 = vload(kr + VW), k2 = vload(kr + 2 * VW), k3 = vload(kr + 3 * VW);
        for (int i = 0; i < 4; i++) {
            if (i >= rn) break;
            const vf b = vsplat(qs[i * D + d]);
            acc[i][0] += b * k0; acc[i][1] += b * k1; acc[i][2] += b * k2; acc[i][3] += b * k3;
        }
    }
    for (int i = 0; i < rn; i++)
        for (int c = 0; c < 4; c++) vstore(s + i * KB + c * VW, acc[i][c]);
}

/* o[i][d0..d0+4VW) += sum_j p[i*KB + j] * v_j[d0..], rows i < rn, keys j < nk */
static void pv_tile(const float *p, const float *v, int64_t ldv, int nk, int rn, float *o, int64_t D, int64_t d0) {
    vf acc[4][4];
    const int nc = (int)((D - d0) / VW) < 4 ? (int)((D - d0) / VW) : 4;
    for (int i = 0; i < rn; i++)
        for (int c = 0; c < nc; c++) acc[i][c] = vload(o + i * D + d0 + c * VW);
    for (int j = 0; j < nk; j++) {
        const float *vr = v + j * ldv + d0;
        vf vv[4];
        for (int c = 0; c < nc; c++) vv[c] = vload(vr + c * VW);
        for (int i = 0; i < rn; i++) {
            const vf b = vsplat(p[i * KB + j]);
            for (int c = 0; c < nc; c++) acc[i][c] += b * vv[c];
        }
    }
    for (int i = 0; i < rn; i++)
        for (int c = 0; c < nc; c++) vstore(o + i * D + d0 + c * VW, acc[i][c]);
}

/* One task: kv head c, query tokens [t0, t1), all H/Hkv query heads of that kv head. */
static void attn_task(const attn_args *a, int64_t c, int64_t t0, int64_t t1, float *scratch) {
    const int64_t D = a->D, g = a->H / a->Hkv, nt = t1 - t0, M = g * nt;
    float *kt = scratch;                 /* [D][KB] transposed key block */
    float *o = kt + D * KB;              /* [M][D] output accumulators */
    float *mx = o + M * D;               /* [M] running max */
    float *sum = mx + M;                 /* [M] running sum of exp */
    float *s = sum + M;                  /* [4][KB] scores, then probabilities, of a row group */
    float *qs = s + 4 * KB;              /* [M][D] scaled queries */
    memset(o, 0, sizeof(float) * (size_t)(M * D));
    for (int64_t r = 0; r < M; r++) {
        mx[r] = -INFINITY;
        sum[r] = 0.0f;
        const int64_t h = c * g + r / nt, t = t0 + r % nt;
        const float *src = a->q + t * a->ldq + h * D;
        for (int64_t d = 0; d < D; d++) qs[r * D + d] = src[d] * a->scale;
    }
    const int64_t s_end = a->n_past + t1; /* keys visible to the last query of the block */
    /* oldest key any query of the block sees (sliding window), rounded down to a key block */
    const int64_t s_beg = a->window > 0 && a->n_past + t0 - a->window + 1 > 0 ? a->n_past + t0 - a->window + 1 : 0;
    for (int64_t s0 = s_beg / KB * KB; s0 < s_end; s0 += KB) {
        const int nk = (int)(s_end - s0 < KB ? s_end - s0 : KB);
        for (int64_t d = 0; d < D; d++)
            for (int j = 0; j < KB; j++)
                kt[d * KB + j] = j < nk ? a->k[(s0 + j) * a->ldk + c * D + d] : 0.0f;
        for (int64_t r0 = 0; r0 < M; r0 += 4) {
            const int rn = (int)(M - r0 < 4 ? M - r0 : 4);
            /* rows of a group are consecutive tokens of one head (r % nt), so their limits differ */
            int any = 0;
            for (int i = 0; i < rn; i++) {
                const int64_t pos = a->n_past + t0 + (r0 + i) % nt;
                any |= pos - s0 >= 0 && (a->window <= 0 || pos - a->window + 1 < s0 + nk);
            }
            if (!any) continue; /* the whole block lies in these queries' future */
            qk_tile(qs + r0 * D, D, kt, rn, s);
            for (int i = 0; i < rn; i++) {
                const int64_t r = r0 + i, t = t0 + r % nt;
                const int64_t pos = a->n_past + t;
                const int64_t lim = pos - s0 + 1; /* keys s0 .. s0+lim-1 are not in the future */
                const int nv = (int)(lim < nk ? (lim > 0 ? lim : 0) : nk);
                int64_t lo = a->window > 0 ? pos - a->window + 1 - s0 : 0; /* older keys left the window */
                const int j0 = (int)(lo > 0 ? (lo < nv ? lo : nv) : 0);
                float *si = s + i * KB;
                if (nv - j0 <= 0) { for (int j = 0; j < KB; j++) si[j] = 0.0f; continue; }
                float m = mx[r];
                for (int j = j0; j < nv; j++) m = si[j] > m ? si[j] : m;
                const float corr = exp_neg(mx[r] - m); /* rescale what was accumulated so far */
                float tot = 0.0f;
                for (int j = 0; j < KB; j++) {
                    const float e = j >= j0 && j < nv ? exp_neg(si[j] - m) : 0.0f;
                    si[j] = e;
                    tot += e;
                }
                sum[r] = sum[r] * corr + tot;
                mx[r] = m;
                if (corr != 1.0f)
                    for (int64_t d = 0; d < D; d++) o[r * D + d] *= corr;
            }
            const float *vb = a->v + s0 * a->ldv + c * D;
            int64_t d0 = 0;
            for (; d0 + VW <= D; d0 += 4 * VW) pv_tile(s, vb, a->ldv, nk, rn, o + r0 * D, D, d0);
            for (int64_t d = d0; d < D; d++) /* a head size that is not a multiple of VW */
                for (int i = 0; i < rn; i++) {
                    float acc = o[(r0 + i) * D + d];
                    for (int j = 0; j < nk; j++) acc += s[i * KB + j] * vb[j * a->ldv + d];
                    o[(r0 + i) * D + d] = acc;
                }
        }
    }
    for (int64_t r = 0; r < M; r++) {
        const int64_t h = c * g + r / nt, t = t0 + r % nt;
        float *dst = a->out + t * a->ldo + h * D;
        const float inv = sum[r] > 0.0f ? 1.0f / sum[r] : 0.0f;
        for (int64_t d = 0; d < D; d++) dst[d] = o[r * D + d] * inv;
    }
}

static size_t scratch_floats(const attn_args *a) {
    const int64_t M = (a->H / a->Hkv) * QB;
    return ((size_t)(a->D * KB + M * a->D * 2 + 2 * M + 4 * KB) + 15) & ~(size_t)15; /* 64-B multiples */
}

static void attn_worker(void *ctx, int ith, int nth) {
    const attn_args *a = (const attn_args *)ctx;
    float *scratch = a->scratch + (size_t)ith * scratch_floats(a);
    for (int64_t task = ith; task < a->n_tasks; task += nth) {
        const int64_t c = task % a->Hkv, qb = task / a->Hkv;
        const int64_t t0 = qb * QB, t1 = t0 + QB < a->T ? t0 + QB : a->T;
        attn_task(a, c, t0, t1, scratch);
    }
}

int tl_attention(const float *q, int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv,
                 float *out, int64_t ldo, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t D,
                 int64_t n_past, int64_t window, float scale, int nthreads) {
    if (T < 1 || H < 1 || Hkv < 1 || D < 1 || H % Hkv || n_past < 0 || S != n_past + T || window < 0)
        return TL_EINVAL;
    attn_args a = {q, k, v, out, ldq, ldk, ldv, ldo, T, S, H, Hkv, D, n_past, window, scale, 0, NULL};
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
