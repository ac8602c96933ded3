/* fma_peak.c — tl_fma_peak(): measured FP32 FMA throughput of this variant's widest vector ISA.
 *
 * Every pool thread runs independent FMA chains (16 accumulators for AVX-512 / NEON / scalar,
 * 12 for AVX2: more than latency x throughput on current cores) for about 0.2 s of its own CPU
 * time; the result is the sum over threads of flops / that thread's CPU time, in GFLOP/s. CPU
 * time, not wall time, so that other processes on a shared machine do not lower the peak (they
 * only delay it). The reference line for "% of peak". */
#include <time.h>

#include "threadpool.h"
#include "tl_internal.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#define TL_PEAK_MAX_THREADS 256
#define TL_PEAK_SECONDS 0.2
#define TL_PEAK_CHUNK 4096 /* iterations between clock reads */

typedef struct {
    double flops[TL_PEAK_MAX_THREADS];
    double secs[TL_PEAK_MAX_THREADS];
    volatile float sink;
} peak_ctx;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Runs chunks of FMA iterations until TL_PEAK_SECONDS have passed; returns flops done. */
static double fma_loop(double *secs, volatile float *sink) {
    const double t0 = now_s();
    double t = t0, flops = 0.0;
#if defined(__AVX512F__)
#define NACC 16
    __m512 acc[NACC];
    for (int i = 0; i < NACC; i++) acc[i] = _mm512_set1_ps((float)i * 1e-3f);
    const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    while (t - t0 < TL_PEAK_SECONDS) {
        for (int it = 0; it < TL_PEAK_CHUNK; it++)
            for (int i = 0; i < NACC; i++) acc[i] = _mm512_fmadd_ps(acc[i], m, c);
        flops += (double)TL_PEAK_CHUNK * NACC * 16 * 2;
        t = now_s();
    }
    __m512 s = acc[0];
    for (int i = 1; i < NACC; i++) s = _mm512_add_ps(s, acc[i]);
    *sink = _mm512_reduce_add_ps(s);
#elif defined(__AVX2__) && defined(__FMA__)
#define NACC 12
    __m256 acc[NACC];
    for (int i = 0; i < NACC; i++) acc[i] = _mm256_set1_ps((float)i * 1e-3f);
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    while (t - t0 < TL_PEAK_SECONDS) {
        for (int it = 0; it < TL_PEAK_CHUNK; it++)
            for (int i = 0; i < NACC; i++) acc[i] = _mm256_fmadd_ps(acc[i], m, c);
        flops += (double)TL_PEAK_CHUNK * NACC * 8 * 2;
        t = now_s();
    }
    __m256 s = acc[0];
    for (int i = 1; i < NACC; i++) s = _mm256_add_ps(s, acc[i]);
    float v[8];
    _mm256_storeu_ps(v, s);
    *sink = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
#elif defined(__ARM_NEON)
#define NACC 16
    float32x4_t acc[NACC];
    for (int i = 0; i < NACC; i++) acc[i] = vdupq_n_f32((float)i * 1e-3f);
    const float32x4_t m = vdupq_n_f32(0.999999f), c = vdupq_n_f32(1e-7f);
    while (t - t0 < TL_PEAK_SECONDS) {
        for (int it = 0; it < TL_PEAK_CHUNK; it++)
            for (int i = 0; i < NACC; i++) acc[i] = vfmaq_f32(c, acc[i], m);
        flops += (double)TL_PEAK_CHUNK * NACC * 4 * 2;
        t = now_s();
    }
    float32x4_t s = acc[0];
    for (int i = 1; i < NACC; i++) s = vaddq_f32(s, acc[i]);
    *sink = vaddvq_f32(s);
#else
#define NACC 16
    float acc[NACC];
    for (int i = 0; i < NACC; i++) acc[i] = (float)i * 1e-3f;
    while (t - t0 < TL_PEAK_SECONDS) {
        for (int it = 0; it < TL_PEAK_CHUNK; it++)
            for (int i = 0; i < NACC; i++) acc[i] = acc[i] * 0.999999f + 1e-7f; /* fused where the ISA can */
        flops += (double)TL_PEAK_CHUNK * NACC * 2;
        t = now_s();
    }
    float s = 0.0f;
    for (int i = 0; i < NACC; i++) s += acc[i];
    *sink = s;
#endif
    *secs = t - t0;
    return flops;
}

static void peak_task(void *vctx, int ith, int nth) {
    (void)nth;
    peak_ctx *c = (peak_ctx *)vctx;
    c->flops[ith] = fma_loop(&c->secs[ith], &c->sink);
}

double tl_fma_peak(int nthreads) {
    static peak_ctx c; /* large; calls are rare (serialised by the caller, see tilellm.h) */
    if (nthreads < 1) nthreads = 1;
    if (nthreads > TL_PEAK_MAX_THREADS) nthreads = TL_PEAK_MAX_THREADS;
    for (int i = 0; i < TL_PEAK_MAX_THREADS; i++) c.flops[i] = c.secs[i] = 0.0;
    tl_parallel_for_all(nthreads, peak_task, &c); /* every thread measures */
    double rate = 0.0; /* threads the pool could not create report 0 flops */
    for (int i = 0; i < nthreads; i++)
        if (c.secs[i] > 0.0) rate += c.flops[i] / c.secs[i];
    return rate / 1e9;
}
