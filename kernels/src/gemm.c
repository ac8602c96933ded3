/* gemm.c — the shared driver: splits Y[n x m] into register tiles of the variant's
 * micro-kernel and runs them on the thread pool (tinyBLAS-style, no packing by default).
 *
 * Decomposition (independent of the thread count, so results are too):
 *   row tiles    [r*RM, min(m, r*RM + RM))        last one ragged
 *   token tiles  balanced: nt = ceil(n/RN) tiles of width floor/ceil(n/nt)
 *   jobs         blocks of MB row tiles x NB token tiles; a job's token block is sized to stay
 *                in L2 while its weight rows stream past, jobs ordered row-block-major so
 *                neighbouring jobs share weight rows; handed out dynamically (atomic counter).
 *   n == 1       matrix-vector: memory bound, so only m is split, in chunks handed out
 *                dynamically; the kernel's gemv if it has one, else tiles of rn = 1. Each thread
 *                owns a contiguous run of the chunks and takes them in order, so the next panel a
 *                kernel prefetches past the end of a chunk is the one it reads next; a thread out
 *                of chunks steals from the back of another's run (balance, a descheduled worker).
 *   2..small_n   the kernel's `small` if it has one (batched decode): split like n == 1, every
 *                chunk for all n tokens, so each weight is read once.
 *   several    tl_gemm_many: products sharing one activation; for n == 1 their row chunks form one
 *                list, so q/k/v (gate/up) cost one dispatch and share the ragged end.
 */
#include <stdatomic.h>
#include <string.h>

#include "threadpool.h"
#include "tl_internal.h"
#include "ukernel.h"

/* Block sizes and budgets come from the variant's tl_uk_config (ukernel.h). */

typedef struct {
    const tl_ukernel *uk;
    const tl_gemm_args *a;
    int64_t mt, nt;       /* row tiles, token tiles */
    int64_t nrb, nb;      /* row blocks (balanced: row tiles mt*b/nrb ..), token tiles per job */
    int64_t jobs_n;       /* token blocks */
    int64_t njobs;
    _Atomic int64_t next; /* next job to hand out */
} gemm_ctx;

/* First token of balanced token tile c (c in [0, nt]). */
static inline int64_t tok_start(const gemm_ctx *g, int64_t c) { return g->a->n * c / g->nt; }

static void run_job(const gemm_ctx *g, int64_t job) {
    const tl_ukernel *uk = g->uk;
    const tl_gemm_args *a = g->a;
    int64_t rb = job / g->jobs_n, cb = job % g->jobs_n;
    int64_t r0 = g->mt * rb / g->nrb, r1 = g->mt * (rb + 1) / g->nrb;
    int64_t c0 = cb * g->nb, c1 = TL_MIN(c0 + g->nb, g->nt);
    if (uk->block) {
        uk->block(a, r0 * uk->rm, TL_MIN(r1 * uk->rm, a->m), tok_start(g, c0), tok_start(g, c1));
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        int64_t i0 = r * uk->rm;
        int rm = (int)TL_MIN((int64_t)uk->rm, a->m - i0);
        for (int64_t c = c0; c < c1; c++) {
            int64_t j0 = tok_start(g, c);
            uk->tile(a, i0, j0, rm, (int)(tok_start(g, c + 1) - j0));
        }
    }
}

static void gemm_task(void *vctx, int ith, int nth) {
    (void)ith;
    (void)nth;
    gemm_ctx *g = (gemm_ctx *)vctx;
    for (;;) {
        int64_t job = atomic_fetch_add_explicit(&g->next, 1, memory_order_relaxed);
        if (job >= g->njobs) break;
        run_job(g, job);
    }
}

static int threads_for(int nthreads, int64_t macs, int64_t max_parallel) {
    if (macs < tl_uk_config.serial_macs) return 1;
    int64_t t = TL_MIN((int64_t)nthreads, max_parallel);
    return (int)TL_MAX(t, 1);
}

/* n == 1 over one or more products (tl_gemm_many): product p's rows are cut into chunks of
 * unit[p] rows; the chunks of all products form one list, first[p] the index of p's first.
 * Thread t of nth owns the list's items [first[count] t / nth, first[count] (t + 1) / nth): run[t]
 * packs the items it has not started as (end << 32 | next). */
#define GEMV_MAX_RUNS 256 /* the pool's thread limit (threadpool.c), so no two threads share a run */
typedef struct {
    int count;
    const tl_ukernel *const *uk;
    const tl_gemm_args *a;
    int64_t unit[TL_GEMM_MANY_MAX];  /* rows per chunk, a multiple of the kernel's granularity */
    int64_t first[TL_GEMM_MANY_MAX + 1];
    int nruns;
    _Atomic uint64_t run[GEMV_MAX_RUNS];
} gemv_ctx;

/* Item i of a list of several products' items (first[p]: p's first item): its index within product *p, *p
 * moved there from the caller's last product (a thread's items mostly go up, so it moves a step or none). */
static inline int64_t item_of(const int64_t *first, int64_t i, int *p) {
    while (i < first[*p]) (*p)--;
    while (i >= first[*p + 1]) (*p)++;
    return i - first[*p];
}

/* The next item of such a list handed out in increasing order, or -1 when the list is done. */
static inline int64_t next_item(_Atomic int64_t *next, const int64_t *first, int count, int *p) {
    const int64_t i = atomic_fetch_add_explicit(next, 1, memory_order_relaxed);
    return i >= first[count] ? -1 : item_of(first, i, p);
}

/* The next chunk for thread ith: the front of its own run; when that is empty, the back half of another's run
 * becomes its own (so a thread that runs alone still walks its chunks in order); -1 when none is left. */
static int64_t gemv_take(gemv_ctx *g, int ith) {
    const int own = ith % g->nruns;
    _Atomic uint64_t *mine = &g->run[own];
    uint64_t v = atomic_load_explicit(mine, memory_order_relaxed);
    while ((uint32_t)v < (uint32_t)(v >> 32))
        if (atomic_compare_exchange_weak_explicit(mine, &v, v + 1, memory_order_relaxed, memory_order_relaxed))
            return (int64_t)(uint32_t)v;
    for (int d = 1; d < g->nruns; d++) {
        _Atomic uint64_t *r = &g->run[(own + d) % g->nruns];
        uint64_t w = atomic_load_explicit(r, memory_order_relaxed);
        while ((uint32_t)w < (uint32_t)(w >> 32)) {
            const uint64_t lo = (uint32_t)w, hi = w >> 32, mid = lo + (hi - lo) / 2;
            if (atomic_compare_exchange_weak_explicit(r, &w, mid << 32 | lo, memory_order_relaxed, memory_order_relaxed)) {
                /* mine is empty, so no thief touches it: [mid + 1, hi) is this thread's run now */
                atomic_store_explicit(mine, hi << 32 | (mid + 1), memory_order_relaxed);
                return (int64_t)mid;
            }
        }
    }
    return -1;
}

static void gemv_task(void *vctx, int ith, int nth) {
    (void)nth;
    gemv_ctx *g = (gemv_ctx *)vctx;
    int p = 0;
    for (int64_t item; (item = gemv_take(g, ith)) >= 0;) {
        const int64_t ch = item_of(g->first, item, &p);
        const tl_ukernel *uk = g->uk[p];
        const tl_gemm_args *a = &g->a[p];
        int64_t i0 = ch * g->unit[p], i1 = TL_MIN(i0 + g->unit[p], a->m);
        if (a->n > 1) {
            uk->small(a, i0, i1); /* only planned when every product has it (small_path) */
        } else if (uk->gemv) {
            uk->gemv(a, i0, i1);
        } else {
            for (int64_t i = i0; i < i1; i += uk->rm) uk->tile(a, i, 0, (int)TL_MIN((int64_t)uk->rm, i1 - i), 1);
        }
    }
}

/* Chunking of n == 1 products: each gets ~gemv_chunks_per_thread chunks per thread (small enough to rebalance around
 * a preempted thread), in whole kernel granules (the gemv's, else register tiles); returns the
 * thread count for all of them. */
static int gemv_plan(int count, const tl_ukernel *const *uk, const tl_gemm_args *a, int nthreads, gemv_ctx *g) {
    int64_t gran[TL_GEMM_MANY_MAX], units[TL_GEMM_MANY_MAX], macs = 0, all = 0;
    for (int p = 0; p < count; p++) {
        gran[p] = uk[p]->gemv ? TL_MAX(uk[p]->gemv_rows, 1) : uk[p]->rm;
        units[p] = (a[p].m + gran[p] - 1) / gran[p];
        macs += a[p].m * a[p].k * a[p].n;
        all += units[p];
    }
    int nth = threads_for(nthreads, macs, all);
    g->count = count;
    g->uk = uk;
    g->a = a;
    g->first[0] = 0;
    for (int p = 0; p < count; p++) {
        int64_t chunks = TL_MIN(units[p], (int64_t)nth * tl_uk_config.gemv_chunks_per_thread);
        g->unit[p] = (units[p] + chunks - 1) / chunks * gran[p];
        g->first[p + 1] = g->first[p] + (a[p].m + g->unit[p] - 1) / g->unit[p];
    }
    const int64_t items = g->first[count];
    g->nruns = TL_MIN(nth, GEMV_MAX_RUNS);
    for (int t = 0; t < g->nruns; t++) {
        const uint64_t lo = (uint64_t)(items * t / g->nruns), hi = (uint64_t)(items * (t + 1) / g->nruns);
        atomic_init(&g->run[t], hi << 32 | lo);
    }
    return nth;
}

/* Sizing of one product's jobs (n > 1) for nth threads; *nth_out: the threads it can use. */
static void gemm_plan(const tl_ukernel *uk, const tl_gemm_args *a, int nthreads, gemm_ctx *g, int *nth_out) {
    const int64_t macs = a->m * a->n * a->k;
    memset(g, 0, sizeof *g);
    g->uk = uk;
    g->a = a;
    atomic_init(&g->next, 0);
    g->mt = (a->m + uk->rm - 1) / uk->rm;
    g->nt = (a->n + uk->rn - 1) / uk->rn;
    /* a block kernel that walks k in chunks keeps one chunk of its blocks in cache, not whole rows */
    const int64_t kc = uk->block && uk->kc > 0 ? TL_MIN((int64_t)uk->kc, a->k) : a->k;
    /* token block: as many token tiles as fit the activation budget (at least one) */
    int64_t tile_bytes = (int64_t)uk->rn * a->ldact * kc / a->k;
    int64_t nb = TL_MAX(tl_uk_config.act_block_bytes * (uk->kc ? tl_uk_config.kc_act_factor : 1) / TL_MAX(tile_bytes, 1), 1);
    g->jobs_n = (g->nt + nb - 1) / nb;
    g->nb = (g->nt + g->jobs_n - 1) / g->jobs_n; /* rebalance the blocks */
    g->jobs_n = (g->nt + g->nb - 1) / g->nb;
    int nth = threads_for(nthreads, macs, g->mt * g->jobs_n);
    /* row blocks: at least jobs_per_thread jobs per thread, small enough that a block's weight
     * rows stay in L2 while the job order (row-block-major) walks them past every token block, and
     * a job count that divides among the threads; blocks balanced to within one row tile */
    int64_t want = (int64_t)nth * (uk->kc ? tl_uk_config.kc_jobs_per_thread : tl_uk_config.jobs_per_thread);
    int64_t mb_cap = TL_MAX(tl_uk_config.w_block_bytes / TL_MAX((int64_t)uk->rm * tl_row_bytes(a->wtype, a->k) * kc / a->k, 1), 1);
    int64_t nrb = TL_MAX((g->mt + mb_cap - 1) / mb_cap, (want + g->jobs_n - 1) / g->jobs_n);
    while ((nrb * g->jobs_n) % nth != 0 && nrb < g->mt) nrb++;
    g->nrb = TL_MIN(nrb, g->mt);
    g->njobs = g->nrb * g->jobs_n;
    *nth_out = nth;
}

/* Several products (n > 1) as one job list: q/k/v or gate/up cost one dispatch and one ragged end. */
typedef struct {
    int count;
    gemm_ctx g[TL_GEMM_MANY_MAX];
    int64_t first[TL_GEMM_MANY_MAX + 1];
    _Atomic int64_t next;
} gemm_many_ctx;

static void gemm_many_task(void *vctx, int ith, int nth) {
    (void)ith;
    (void)nth;
    gemm_many_ctx *c = (gemm_many_ctx *)vctx;
    int p = 0;
    for (int64_t job; (job = next_item(&c->next, c->first, c->count, &p)) >= 0;) run_job(&c->g[p], job);
}

/* Whether n tokens of all count products take the kernels' small-n path (gemv-like split). */
static int small_path(int count, const tl_ukernel *const *uk, const tl_gemm_args *a) {
    for (int p = 0; p < count; p++)
        if (!uk[p]->small || !uk[p]->gemv || a[p].n < 2 || a[p].n > uk[p]->small_n) return 0;
    return 1;
}

void tl_gemm_drive_many(int count, const tl_ukernel *const *uk, const tl_gemm_args *a, int nthreads) {
    if (a[0].n != 1 && !small_path(count, uk, a)) {
        gemm_many_ctx c;
        int nth = 1;
        c.count = count;
        c.first[0] = 0;
        for (int p = 0; p < count; p++) { /* the threads any of them can use, then every plan for that many */
            const tl_ukernel *u = uk[p]->big && a[p].n >= uk[p]->big_n ? uk[p]->big : uk[p];
            int t;
            gemm_plan(u, &a[p], nthreads, &c.g[p], &t);
            nth = TL_MAX(nth, t);
        }
        for (int p = 0; p < count; p++) {
            int t;
            gemm_plan(c.g[p].uk, &a[p], nth, &c.g[p], &t);
            c.first[p + 1] = c.first[p] + c.g[p].njobs;
        }
        atomic_init(&c.next, 0);
        tl_parallel_for(nth, gemm_many_task, &c);
        return;
    }
    gemv_ctx g;
    int nth = gemv_plan(count, uk, a, nthreads, &g);
    tl_parallel_for(nth, gemv_task, &g);
}

void tl_gemm_drive(const tl_ukernel *uk, const tl_gemm_args *a, int nthreads) {
    if (uk->big && a->n >= uk->big_n) uk = uk->big;
    if (a->n == 1 || small_path(1, &uk, a)) {
        gemv_ctx g;
        int nth = gemv_plan(1, &uk, a, nthreads, &g);
        tl_parallel_for(nth, gemv_task, &g);
        return;
    }
    gemm_ctx g;
    int nth;
    gemm_plan(uk, a, nthreads, &g, &nth);
    tl_parallel_for(nth, gemm_task, &g);
}
