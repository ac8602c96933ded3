/* attention.c — causal grouped-query attention, the non-linear-layer hot spot of a prefill.
 *
 * Flash-attention style: for each (kv head, block of queries) the scores against one block of
 * keys are computed, folded into a running (max, sum) per query row with an online softmax, and
 * the value rows accumulated, so the [T x S] score matrix never exists in memory. Plain C written
 * for auto-vectorisation: each variant compiles it with its own ISA flags.
 *
 * Layouts: q token t, head h at q[t*ldq + h*D] (floats); out like q with ldo. K and V are KV cache rows of
 * any cache type (kv.h: f32, f16, bf16, q8_0): key s, kv head c at byte s*ldk + c*bytes(D) of k (v alike).
 * They are read straight from the cache: each key block is converted to floats while it is transposed into
 * the tile (the copy f32 keys take anyway), each value block once per task into a float tile, and the
 * arithmetic after that is the f32 kernel's. Query t sits at absolute position n_past + t and sees keys
 * 0..n_past+t. Query head h reads kv head h / (H / Hkv).
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"
#include "threadpool.h"
#include "tilellm.h"
#include "vmath.h"


/* vf / vi (the variant's native width), vload, vsplat, vexp: vmath.h. The register tiles below are RT
 * rows x NV vectors of accumulators. */
/* vectors per key block: RT x NV accumulators + NV key vectors + a broadcast must fit the
 * register file (32 vector registers on AVX-512 and AArch64, 16 on AVX2 and SSE) */
#if defined(__AVX512F__) || defined(__aarch64__)
#define NV 4
#else
#define NV 2
#endif
#define KB (NV * VW)  /* keys per block */
#define RT 4          /* query rows per register tile (row groups are padded to RT) */
#define QB 16         /* query tokens per task */

/* exp(x) for x <= 0 (scores minus their row max; -inf and very negative give 0). */
static inline vf vexp_neg(vf x) {
    const vi below = x < vsplat(-87.0f); /* -1 where x < -87 (and for -inf) */
    return vexp((vf)(((vi)x & ~below) | ((vi)vsplat(-87.0f) & below)));
}

static inline float hmax(vf v) {
    float m = v[0];
    for (int i = 1; i < VW; i++) m = v[i] > m ? v[i] : m;
    return m;
}
static inline float hsum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < VW; i++) s += v[i];
    return s;
}

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

/* scores of RT rows (qs, row stride D) against the KB keys of kt ([D][KB]) */
static inline void qk_tile(const float *qs, int64_t D, const float *kt, vf acc[RT][NV]) {
    for (int i = 0; i < RT; i++)
        for (int c = 0; c < NV; c++) acc[i][c] = vsplat(0.0f);
    for (int64_t d = 0; d < D; d++) {
        const float *kr = kt + d * KB;
        vf kv[NV];
        for (int c = 0; c < NV; c++) kv[c] = vload(kr + c * VW);
        for (int i = 0; i < RT; i++) {
            const vf b = vsplat(qs[i * D + d]);
            for (int c = 0; c < NV; c++) acc[i][c] += b * kv[c];
        }
    }
}

/* o[i][d0 .. d0 + NV*VW) += sum_j p[i][j] * v_j[d0 ..], RT rows, keys j < nk */
static inline void pv_tile(const float *p, const float *v, int64_t ldv, int nk, float *o, int64_t D, int64_t d0) {
    vf acc[RT][NV];
    for (int i = 0; i < RT; i++)
        for (int c = 0; c < NV; c++) acc[i][c] = vload(o + i * D + d0 + c * VW);
    for (int j = 0; j < nk; j++) {
        const float *vr = v + j * ldv + d0;
        vf vv[NV];
        for (int c = 0; c < NV; c++) vv[c] = vload(vr + c * VW);
        for (int i = 0; i < RT; i++) {
            const vf b = vsplat(p[i * KB + j]);
            for (int c = 0; c < NV; c++) acc[i][c] += b * vv[c];
        }
    }
    for (int i = 0; i < RT; i++)
        for (int c = 0; c < NV; c++) vstore(o + i * D + d0 + c * VW, acc[i][c]);
}

/* One task: kv head c, query tokens [t0, t1), all H/Hkv query heads of that kv head. Rows
 * r = head * nt + token, padded with zero rows to a multiple of RT (their results are dropped). */
static void attn_task(const attn_args *a, int64_t c, int64_t t0, int64_t t1, float *scratch) {
    const int64_t D = a->D, g = a->H / a->Hkv, nt = t1 - t0, M = g * nt, Mp = (M + RT - 1) / RT * RT;
    float *kt = scratch;                 /* [D][KB] transposed key block */
    float *o = kt + D * KB;              /* [Mp][D] output accumulators */
    float *mx = o + Mp * D;              /* [Mp] running max */
    float *sum = mx + Mp;                /* [Mp] running sum of exp */
    float *s = sum + Mp;                 /* [RT][KB] probabilities of a row group */
    float *qs = s + RT * KB;             /* [Mp][D] scaled queries */
    float *vt = qs + Mp * D;             /* [KB][D] a value block as floats (types other than f32) */
    float *kr1 = vt + KB * D;            /* [D] one key as floats (types other than f32) */
    const int64_t hk = tl_kv_bytes_of(a->ktype, D), hv = tl_kv_bytes_of(a->vtype, D); /* bytes of a head */
    memset(o, 0, sizeof(float) * (size_t)(Mp * D));
    for (int64_t r = 0; r < Mp; r++) {
        mx[r] = -INFINITY;
        sum[r] = 0.0f;
        if (r >= M) {
            memset(qs + r * D, 0, sizeof(float) * (size_t)D);
            continue;
        }
        const int64_t h = c * g + r / nt, t = t0 + r % nt;
        const float *src = a->q + t * a->ldq + h * D;
        for (int64_t d = 0; d < D; d++) qs[r * D + d] = src[d] * a->scale;
    }
    vi lane;
    for (int i = 0; i < VW; i++) lane[i] = i;
    const int64_t s_end = a->n_past + t1; /* keys visible to the last query of the block */
    /* oldest key any query of the block sees (sliding window), rounded down to a key block */
    const int64_t s_beg = a->window > 0 && a->n_past + t0 - a->window + 1 > 0 ? a->n_past + t0 - a->window + 1 : 0;
    for (int64_t s0 = s_beg / KB * KB; s0 < s_end; s0 += KB) {
        const int nk = (int)(s_end - s0 < KB ? s_end - s0 : KB);
        for (int j = 0; j < nk; j++) {
            const uint8_t *src = a->k + (s0 + j) * a->ldk + c * hk;
            const float *kr = (const float *)src;
            if (a->ktype != TL_F32) tl_kv_load(src, a->ktype, D, kr1), kr = kr1;
            for (int64_t d = 0; d < D; d++) kt[d * KB + j] = kr[d];
        }
        /* the block's values as float rows ldvf apart: the cache itself (f32) or converted once into vt */
        const float *vb = (const float *)(a->v + s0 * a->ldv + c * hv);
        int64_t ldvf = a->ldv / 4;
        if (a->vtype != TL_F32) {
            for (int j = 0; j < nk; j++) tl_kv_load(a->v + (s0 + j) * a->ldv + c * hv, a->vtype, D, vt + j * D);
            vb = vt, ldvf = D;
        }
        for (int j = nk; j < KB; j++)
            for (int64_t d = 0; d < D; d++) kt[d * KB + j] = 0.0f;
        for (int64_t r0 = 0; r0 < M; r0 += RT) {
            /* rows of a group are consecutive tokens of one head (r % nt), so their limits differ */
            int any = 0;
            for (int i = 0; i < RT && r0 + i < M; i++) {
                const int64_t pos = a->n_past + t0 + (r0 + i) % nt;
                any |= pos - s0 >= 0 && (a->window <= 0 || pos - a->window + 1 < s0 + nk);
            }
            if (!any) continue; /* the whole block lies in these queries' future */
            vf sc[RT][NV];
            qk_tile(qs + r0 * D, D, kt, sc);
            for (int i = 0; i < RT; i++) {
                const int64_t r = r0 + i;
                /* visible keys of this row: [j0, nv) of the block (none for a padding row) */
                int nv = 0, j0 = 0;
                if (r < M) {
                    const int64_t pos = a->n_past + t0 + r % nt;
                    const int64_t lim = pos - s0 + 1; /* keys s0 .. s0+lim-1 are not in the future */
                    nv = (int)(lim < nk ? (lim > 0 ? lim : 0) : nk);
                    const int64_t lo = a->window > 0 ? pos - a->window + 1 - s0 : 0; /* older keys left the window */
                    j0 = (int)(lo > 0 ? (lo < nv ? lo : nv) : 0);
                }
                float *si = s + i * KB;
                if (nv - j0 <= 0) {
                    for (int cc = 0; cc < NV; cc++) vstore(si + cc * VW, vsplat(0.0f));
                    continue;
                }
                vi keep[NV];
                vf vm = vsplat(-INFINITY);
                for (int cc = 0; cc < NV; cc++) {
                    const vi j = lane + cc * VW;
                    keep[cc] = (j >= j0) & (j < nv);
                    sc[i][cc] = (vf)(((vi)sc[i][cc] & keep[cc]) | ((vi)vsplat(-INFINITY) & ~keep[cc]));
                    vm = (vf)(((vi)vm & (vi)(vm >= sc[i][cc])) | ((vi)sc[i][cc] & ~(vi)(vm >= sc[i][cc])));
                }
                const float m = mx[r] > hmax(vm) ? mx[r] : hmax(vm);
                const float corr = mx[r] == -INFINITY ? 0.0f : vexp_neg(vsplat(mx[r] - m))[0];
                vf tot = vsplat(0.0f);
                for (int cc = 0; cc < NV; cc++) {
                    const vf e = (vf)((vi)vexp_neg(sc[i][cc] - m) & keep[cc]);
                    vstore(si + cc * VW, e);
                    tot += e;
                }
                sum[r] = sum[r] * corr + hsum(tot);
                mx[r] = m;
                if (corr != 1.0f)
                    for (int64_t d = 0; d < D; d++) o[r * D + d] *= corr;
            }
            int64_t d0 = 0;
            for (; d0 + KB <= D; d0 += KB) pv_tile(s, vb, ldvf, nk, o + r0 * D, D, d0);
            for (int64_t d = d0; d < D; d++) /* a head size that is not a multiple of NV * VW */
                for (int i = 0; i < RT; i++) {
                    float acc = o[(r0 + i) * D + d];
                    for (int j = 0; j < nk; j++) acc += s[i * KB + j] * vb[j * ldvf + d];
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
    const int64_t M = ((a->H / a->Hkv) * QB + RT - 1) / RT * RT;
    return ((size_t)(a->D * KB + M * a->D * 2 + 2 * M + RT * KB + KB * a->D + a->D) + 15) & ~(size_t)15; /* 64 B */
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
        !tl_kv_type_ok(ktype) || !tl_kv_type_ok(vtype) || D % tl_kv_granule(ktype) || D % tl_kv_granule(vtype) ||
        (vtype == TL_F32 && ldv % 4))
        return TL_EINVAL;
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
