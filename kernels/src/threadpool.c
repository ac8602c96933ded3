/* threadpool.c — persistent worker pool: workers spin briefly after a job (back-to-back
 * matmuls of one forward pass arrive microseconds apart), then sleep on a condvar, so an idle
 * process costs no CPU. One dispatch at a time (dispatch_mu): cffi drops the GIL, so two Python
 * threads may call in concurrently.
 *
 * Joining is optional: a worker takes part in a job only if it arrives while the job is open.
 * The caller runs its share, then closes the job and waits only for the workers that joined, so
 * a worker the OS has descheduled (a busy machine) costs nothing instead of a time slice per
 * matmul. Tasks must therefore hand out their work dynamically (every task in tilellm does);
 * tl_parallel_for_all keeps "every thread runs fn" for the FMA peak measurement. */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define TL_MAX_THREADS 256
/* Workers poll for the next job this long before sleeping on the condvar. The matmuls of one
 * decode step arrive 20-300 us apart (Python runs norms, rope, attention in between), and a
 * condvar wake-up costs more than a whole small gemv on a VM (measured: 2 threads were slower
 * than 1 on a 2048x2048 q4_0 gemv with a 30 us spin, and 1.8x faster with a 1 ms one). */
#define TL_SPIN_NS 2000000LL
#define TL_SPIN_CHECK 64 /* pause iterations between clock reads */

#if defined(__x86_64__) || defined(__i386__)
#define TL_CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define TL_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define TL_CPU_RELAX() ((void)0)
#endif

static pthread_mutex_t dispatch_mu = PTHREAD_MUTEX_INITIALIZER; /* one dispatch at a time */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;          /* guards sleeping */
static pthread_cond_t cv_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t cv_done = PTHREAD_COND_INITIALIZER;

static int n_workers; /* threads created so far (under dispatch_mu) */
/* The job slot: generation << 16 | number of workers that joined it; the count CLOSED means no
 * more may join. Job fields are written before a new generation is published (release) and are
 * not rewritten before every joined worker has finished. */
#define CLOSED 0xFFFFu
static _Atomic uint64_t slot;
static _Atomic int finished; /* joined workers done with the current job */
static tl_task_fn job_fn;
static void *job_ctx;
static int job_nth;

static _Thread_local int in_pool_task; /* nested call guard */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *worker_main(void *arg) {
    uint64_t seen = (uint64_t)(uintptr_t)arg; /* the generation at creation: join the next one */
    in_pool_task = 1;
    for (;;) {
        uint64_t s;
        const int64_t t0 = now_ns();
        for (int spins = 1; ((s = atomic_load_explicit(&slot, memory_order_acquire)) >> 16) == seen; spins++) {
            TL_CPU_RELAX();
            if (spins % TL_SPIN_CHECK == 0 && now_ns() - t0 > TL_SPIN_NS) break;
        }
        if ((s >> 16) == seen) {
            pthread_mutex_lock(&mu);
            while (((s = atomic_load_explicit(&slot, memory_order_acquire)) >> 16) == seen)
                pthread_cond_wait(&cv_work, &mu);
            pthread_mutex_unlock(&mu);
        }
        seen = s >> 16;
        /* join if the job is still open: a successful CAS proves it was, and the dispatcher does
         * not touch the job fields again before every joined worker has finished, so they are
         * read only after joining (a joiner beyond nth - 1 just reports back) */
        for (;;) {
            const uint64_t c = s & 0xFFFF;
            if (c == CLOSED || c + 1 >= CLOSED) break;
            if (atomic_compare_exchange_weak_explicit(&slot, &s, s + 1, memory_order_acq_rel, memory_order_acquire)) {
                if ((int)c + 1 < job_nth) job_fn(job_ctx, (int)c + 1, job_nth);
                pthread_mutex_lock(&mu); /* lock so the dispatcher cannot miss the signal */
                atomic_fetch_add_explicit(&finished, 1, memory_order_release);
                pthread_cond_signal(&cv_done);
                pthread_mutex_unlock(&mu);
                break;
            }
            if ((s >> 16) != seen) break; /* a newer job: handled by the next round of the loop */
        }
    }
    return NULL;
}

/* After fork() only the forking thread exists in the child: forget the workers. */
static void atfork_child(void) {
    pthread_mutex_t m0 = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c0 = PTHREAD_COND_INITIALIZER;
    dispatch_mu = m0;
    mu = m0;
    cv_work = c0;
    cv_done = c0;
    n_workers = 0;
}
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { pthread_atfork(NULL, NULL, atfork_child); }

/* Wait (spin, then sleep) until cond(): the finished count, or all workers joined. */
static int all_finished(int joined) { return atomic_load_explicit(&finished, memory_order_acquire) >= joined; }
static int all_joined(int want) {
    const uint64_t c = atomic_load_explicit(&slot, memory_order_acquire) & 0xFFFF;
    return (int)c >= want;
}

static void run(int nthreads, tl_task_fn fn, void *ctx, int everyone) {
    if (nthreads > TL_MAX_THREADS) nthreads = TL_MAX_THREADS;
    if (nthreads <= 1 || in_pool_task) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&dispatch_mu);
    const uint64_t gen = (atomic_load_explicit(&slot, memory_order_relaxed) >> 16) + 1;
    while (n_workers < nthreads - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, worker_main, (void *)(uintptr_t)(gen - 1));
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        n_workers++;
    }
    int nth = n_workers + 1 < nthreads ? n_workers + 1 : nthreads;
    if (nth <= 1) {
        pthread_mutex_unlock(&dispatch_mu);
        fn(ctx, 0, 1);
        return;
    }
    job_fn = fn;
    job_ctx = ctx;
    job_nth = nth;
    atomic_store_explicit(&finished, 0, memory_order_relaxed);
    pthread_mutex_lock(&mu);
    atomic_store_explicit(&slot, gen << 16, memory_order_release); /* publish: open, nobody joined */
    pthread_cond_broadcast(&cv_work);
    pthread_mutex_unlock(&mu);

    in_pool_task = 1;
    fn(ctx, 0, nth);
    in_pool_task = 0;

    if (everyone) { /* wait until nth - 1 workers have joined before closing */
        const int64_t t0 = now_ns();
        for (int spins = 1; !all_joined(nth - 1); spins++) {
            TL_CPU_RELAX();
            if (spins % TL_SPIN_CHECK == 0 && now_ns() - t0 > TL_SPIN_NS) {
                struct timespec ts = {0, 100000}; /* workers join by themselves; poll gently */
                nanosleep(&ts, NULL);
            }
        }
    }
    /* close: no worker joins from now on; wait for the ones that did */
    const int joined = (int)(atomic_exchange_explicit(&slot, (gen << 16) | CLOSED, memory_order_acq_rel) & 0xFFFF);
    const int64_t t0 = now_ns();
    for (int spins = 1; !all_finished(joined); spins++) {
        TL_CPU_RELAX();
        if (spins % TL_SPIN_CHECK == 0 && now_ns() - t0 > TL_SPIN_NS) break;
    }
    if (!all_finished(joined)) {
        pthread_mutex_lock(&mu);
        while (!all_finished(joined)) pthread_cond_wait(&cv_done, &mu);
        pthread_mutex_unlock(&mu);
    }
    pthread_mutex_unlock(&dispatch_mu);
}

void tl_parallel_for(int nthreads, tl_task_fn fn, void *ctx) { run(nthreads, fn, ctx, 0); }
void tl_parallel_for_all(int nthreads, tl_task_fn fn, void *ctx) { run(nthreads, fn, ctx, 1); }
/* ---- per-thread scratch ---------------------------------------------------------------------
 * A pthread key (not only _Thread_local) so the buffer is freed when a thread exits: Python
 * threads that call in come and go. */
typedef struct {
    void *p;
    size_t cap;
} scratch_t;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static _Thread_local scratch_t *scratch_tls;

static void scratch_free(void *v) {
    scratch_t *s = (scratch_t *)v;
    free(s->p);
    free(s);
}
static void scratch_key_init(void) { pthread_key_create(&scratch_key, scratch_free); }

void *tl_scratch(size_t bytes) {
    scratch_t *s = scratch_tls;
    if (!s) {
        pthread_once(&scratch_once, scratch_key_init);
        s = (scratch_t *)calloc(1, sizeof *s);
        if (!s) return NULL;
        if (pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
        scratch_tls = s;
    }
    if (bytes > s->cap) {
        size_t cap = (bytes + 63) / 64 * 64;
        free(s->p);
        s->cap = 0;
        s->p = aligned_alloc(64, cap);
        if (!s->p) return NULL;
        s->cap = cap;
    }
    return s->p;
}
