/* threadpool.h — one persistent pthread pool per loaded variant module. */
#ifndef TL_THREADPOOL_H
#define TL_THREADPOOL_H

#include <stddef.h>

/* fn(ctx, ith, nth) runs on the calling thread (ith 0) and on those pool workers that arrive
 * while the job is open (each with a distinct ith in [1, nth)) — possibly none of them, e.g. on
 * a busy machine: fn must hand out its work dynamically (an atomic counter) and may use ith only
 * to index per-thread resources. nth may come out smaller than nthreads if threads cannot be
 * created. Safe to call from several threads at once (calls are serialised); a call from inside
 * fn runs serially on the caller (no deadlock). */
typedef void (*tl_task_fn)(void *ctx, int ith, int nth);
void tl_parallel_for(int nthreads, tl_task_fn fn, void *ctx);
/* Same, but every ith in [0, nth) runs (waits for the workers): only for measurements. */
void tl_parallel_for_all(int nthreads, tl_task_fn fn, void *ctx);

/* Per-thread scratch for micro-kernels (e.g. a repacked weight panel): 64-byte aligned, at
 * least `bytes` long, reused across calls on the same thread (contents not preserved when it
 * grows), freed when the thread exits. NULL if out of memory. */
void *tl_scratch(size_t bytes);

#endif
