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

#define KB 64   /* keys per block: the vector-friendly inner dimension of the score rows */
#define QB 16   /* query tokens per task */

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

typedef struct {
    const float *q, *k, *v;
    float *out;
    int64_t ldq, ldk, ldv, ldo;
    int64_t T, S, H, Hkv, D, n_past;
    float scale;
    int64_t n_tasks;
    float *scratch; /* scratch_floats() per worker */
} attn_args;

/* One task: kv head c, query tokens [t0, t1), all H/Hkv query heads of that kv head. */
static void attn_task(const attn_args *a, int64_t c, int64_t t0, int64_t t1, float *scratch) {
    const int64_t D = a->D, g = a->H / a->Hkv, nt = t1 - t0, M = g * nt;
    float *kt = scratch;                 /* [D][KB] transposed key block */
    float *o = kt + D * KB;              /* [M][D] output accumulators */
    float *mx = o + M * D;               /* [M] running max */
    float *sum = mx + M;                 /* [M] running sum of exp */
    float *s = sum + M;                  /* [4][KB] scores of a row group */
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
    for (int64_t s0 = 0; s0 < s_end; s0 += KB) {
        const int64_t nk = s_end - s0 < KB ? s_end - s0 : KB;
        for (int64_t j = 0; j < KB; j++)
            for (int64_t d = 0; d < D; d++)
                kt[d * KB + j] = j < nk ? a->k[(s0 + j) * a->ldk + c * D + d] : 0.0f;
        for (int64_t r0 = 0; r0 < M; r0 += 4) {
            const int64_t rn = M - r0 < 4 ? M - r0 : 4;
            float acc[4][KB];
            memset(acc, 0, sizeof acc);
            for (int64_t d = 0; d < D; d++) {
                const float *kr = kt + d * KB;
                for (int64_t i = 0; i < rn; i++) {
                    const float b = qs[(r0 + i) * D + d];
                    for (int j = 0; j < KB; j++) acc[i][j] += b * kr[j];
                }
            }
            for (int64_t i = 0; i < rn; i++) {
                const int64_t r = r0 + i, t = t0 + r % nt;
                const int64_t lim = a->n_past + t - s0 + 1; /* keys s0 .. s0+lim-1 are visible */
                const int64_t nv = lim < nk ? lim : nk;
                if (nv <= 0) { for (int j = 0; j < KB; j++) s[i * KB + j] = 0.0f; continue; }
                float m = mx[r];
                for (int64_t j = 0; j < nv; j++) m = acc[i][j] > m ? acc[i][j] : m;
                const float corr = exp_neg(mx[r] - m); /* rescale what was accumulated so far */
                float tot = 0.0f;
                for (int j = 0; j < KB; j++) {
                    const float e = j < nv ? exp_neg(acc[i][j] - m) : 0.0f;
                    s[i * KB + j] = e;
                    tot += e;
                }
                sum[r] = sum[r] * corr + tot;
                mx[r] = m;
                if (corr != 1.0f)
                    for (int64_t d = 0; d < D; d++) o[r * D + d] *= corr;
            }
            for (int64_t j = 0; j < nk; j++) {
                const float *vr = a->v + (s0 + j) * a->ldv + c * D;
                for (int64_t i = 0; i < rn; i++) {
                    const float p = s[i * KB + j];
                    if (p == 0.0f) continue;
                    float *orow = o + (r0 + i) * D;
                    for (int64_t d = 0; d < D; d++) orow[d] += p * vr[d];
                }
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
                 int64_t n_past, float scale, int nthreads) {
    if (T < 1 || H < 1 || Hkv < 1 || D < 1 || H % Hkv || n_past < 0 || S != n_past + T) return TL_EINVAL;
    attn_args a = {q, k, v, out, ldq, ldk, ldv, ldo, T, S, H, Hkv, D, n_past, scale, 0, NULL};
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
