/* threadpool.h — one persistent pthread pool per loaded variant module. */
#ifndef TL_THREADPOOL_H
#define TL_THREADPOOL_H

#include <stddef.h>

/* fn(ctx, ith, nth) is called once for every ith in [0, nth); ith 0 runs on the calling
 * thread. nth may come out smaller than nthreads if threads cannot be created, so fn must
 * split work by the nth it is given. Safe to call from several threads at once (calls are
 * serialised); a call from inside fn runs serially on the caller (no deadlock). */
typedef void (*tl_task_fn)(void *ctx, int ith, int nth);
void tl_parallel_for(int nthreads, tl_task_fn fn, void *ctx);

/* Per-thread scratch for micro-kernels (e.g. a repacked weight panel): 64-byte aligned, at
 * least `bytes` long, reused across calls on the same thread (contents not preserved when it
 * grows), freed when the thread exits. NULL if out of memory. */
void *tl_scratch(size_t bytes);

#endif
