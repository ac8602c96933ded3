/* fuzz_gemm.c — C-level stress test of one variant, meant for sanitizer builds
 * (tests/test_kernels.py::test_sanitizers compiles it with ASan+UBSan and with TSan).
 *
 * Random types, shapes (ragged everywhere), padded strides and thread counts; buffers are
 * allocated to the exact byte so any over-read/over-write is caught, output row padding is
 * checked untouched, and results are compared with a double-precision reference. Several
 * threads call in concurrently to exercise the pool's dispatch lock.
 *
 *   cc -O1 -g -fsanitize=address,undefined -Ikernels/include -Ikernels/src \
 *      $(every file of the variant: kernels/build_variants.py sources()) \
 *      kernels/tests/fuzz_gemm.c -lm -pthread && ./a.out 300
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tilellm.h"
#include "threadpool.h"
#include "tl_internal.h"

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}
static int rnd(uint64_t *s, int lo, int hi) { return lo + (int)(rng_next(s) % (uint64_t)(hi - lo + 1)); }

/* f32 -> f16 bits for values exactly representable as normal f16 (all we generate) */
static uint16_t f16_bits(float f) {
    uint32_t u = tl_f32_bits(f);
    if ((u & 0x7fffffffu) == 0) return (uint16_t)(u >> 16);
    uint32_t sign = (u >> 16) & 0x8000u;
    int e = (int)((u >> 23) & 0xff) - 127 + 15;
    return (uint16_t)(sign | ((uint32_t)e << 10) | ((u >> 13) & 0x3ffu));
}

/* Fill one weight row of type t with k values; write its exact values to ref. */
static void make_row(int t, int64_t k, uint8_t *row, double *ref, uint64_t *s) {
    switch (t) {
    case TL_F32:
        for (int64_t p = 0; p < k; p++) {
            float v = (float)rnd(s, -2000, 2000) / 997.0f;
            memcpy(row + 4 * p, &v, 4);
            ref[p] = v;
        }
        break;
    case TL_F16: case TL_BF16:
        for (int64_t p = 0; p < k; p++) {
            float v = (float)rnd(s, -128, 128) / 64.0f; /* exact in both */
            uint16_t h = t == TL_F16 ? f16_bits(v) : (uint16_t)(tl_f32_bits(v) >> 16);
            memcpy(row + 2 * p, &h, 2);
            ref[p] = v;
        }
        break;
    default: {
        int bytes = tl_type_size(t);
        for (int64_t b = 0; b < k / 32; b++) {
            uint8_t *blk = row + b * bytes;
            float d = (float)rnd(s, 1, 64) / 256.0f, mn = (float)rnd(s, -64, 64) / 64.0f;
            uint16_t hd = f16_bits(d), hm = f16_bits(mn);
            memcpy(blk, &hd, 2);
            double *r = ref + b * 32;
            if (t == TL_Q8_0) {
                for (int q = 0; q < 32; q++) {
                    int8_t v = (int8_t)rnd(s, -127, 127);
                    blk[2 + q] = (uint8_t)v;
                    r[q] = (double)d * v;
                }
            } else {
                const uint8_t *qs = blk + (t == TL_Q4_1 ? 4 : 2);
                if (t == TL_Q4_1) memcpy(blk + 2, &hm, 2);
                for (int q = 0; q < 16; q++) ((uint8_t *)qs)[q] = (uint8_t)rnd(s, 0, 255);
                for (int q = 0; q < 16; q++) {
                    int lo = qs[q] & 15, hi = qs[q] >> 4;
                    if (t == TL_Q4_0) {
                        r[q] = (double)d * (lo - 8);
                        r[q + 16] = (double)d * (hi - 8);
                    } else {
                        r[q] = (double)d * lo + mn;
                        r[q + 16] = (double)d * hi + mn;
                    }
                }
            }
        }
    }
    }
}

/* The activation values the kernels use: x itself, its bf16 rounding (act type TL_BF16: round
 * to nearest even, e.g. avx512's vdpbf16ps path for bf16 weights), or its q8 quantisation (one
 * f32 scale per TL_QG values, tl_internal.h). */
static void act_ref(const tl_ctx *ctx, int t, const float *x, int64_t k, double *out) {
    if (tl_act_type(ctx, t) == TL_BF16) {
        for (int64_t p = 0; p < k; p++) {
            uint32_t u = tl_f32_bits(x[p]);
            out[p] = tl_bits_f32((u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u);
        }
        return;
    }
    if (t == TL_F32 || t == TL_F16 || t == TL_BF16) {
        for (int64_t p = 0; p < k; p++) out[p] = x[p];
        return;
    }
    for (int64_t g = 0; g < k / TL_QG; g++) {
        const float *xg = x + g * TL_QG;
        float amax = 0;
        for (int q = 0; q < TL_QG; q++) amax = fmaxf(amax, fabsf(xg[q]));
        float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
        for (int q = 0; q < TL_QG; q++) out[g * TL_QG + q] = (double)d * roundf(xg[q] * id);
    }
}

static const int TYPES[] = {TL_F32, TL_F16, TL_BF16, TL_Q8_0, TL_Q4_0, TL_Q4_1};
static int iterations = 200;
static _Atomic int failures;
static tl_ctx *ctx; /* one context shared by every caller */

static void *run(void *arg) {
    uint64_t s = 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)arg * 0x100000001b3ull;
    for (int it = 0; it < iterations; it++) {
        /* the shared per-thread scratch: aligned, usable to the byte, freed at thread exit (LSan) */
        size_t sb = (size_t)rnd(&s, 1, 5000);
        uint8_t *sc = tl_scratch(sb);
        if (!sc || ((uintptr_t)sc & 63)) failures++;
        else memset(sc, it, sb);
        int t = TYPES[rnd(&s, 0, 5)];
        if (!tl_supports(ctx, t)) continue;
        int bs = tl_block_size(t);
        int64_t m = rnd(&s, 1, 70), n = rnd(&s, 1, rnd(&s, 0, 3) ? 12 : 40);
        int64_t k = bs == 1 ? rnd(&s, 1, 300) : 32 * rnd(&s, 1, 12);
        if (rnd(&s, 0, 9) == 0) n = 1;
        if (rnd(&s, 0, 15) == 0) n = rnd(&s, 96, 130); /* prompt paths (packed float panels, avx512 AMX) */
        int64_t rb = tl_row_bytes(t, k), ldw = rb + (t == TL_F32 ? 4 : 1) * rnd(&s, 0, 5), ldx = k + rnd(&s, 0, 3), ldy = m + rnd(&s, 0, 3);
        size_t wbytes = (size_t)((m - 1) * ldw + rb);
        uint8_t *w = malloc(wbytes);
        double *wr = malloc(sizeof(double) * (size_t)(m * k));
        for (int64_t i = 0; i < m; i++) make_row(t, k, w + i * ldw, wr + i * k, &s);
        float *x = malloc(sizeof(float) * (size_t)((n - 1) * ldx + k));
        double *xr = malloc(sizeof(double) * (size_t)(n * k));
        for (int64_t j = 0; j < n; j++) {
            for (int64_t p = 0; p < k; p++) x[j * ldx + p] = (float)rnd(&s, -30000, 30000) / 7919.0f;
            act_ref(ctx, t, x + j * ldx, k, xr + j * k);
        }
        size_t abytes = tl_act_bytes(ctx, t, n, k);
        void *act = aligned_alloc(64, (abytes + 63) / 64 * 64); /* the ABI wants 64-byte aligned act */
        float *y = malloc(sizeof(float) * (size_t)((n - 1) * ldy + m));
        for (int64_t q = 0; q < (n - 1) * ldy + m; q++) y[q] = -12345.0f;
        int rc1 = tl_act_prepare(ctx, t, x, ldx, n, k, act, rnd(&s, 1, 3));
        int rc2 = tl_gemm(ctx, t, w, ldw, m, k, act, n, y, ldy, rnd(&s, 1, 4));
        int bad = rc1 != TL_OK || rc2 != TL_OK;
        for (int64_t j = 0; j < n && !bad; j++) {
            for (int64_t i = 0; i < m; i++) {
                double ref = 0, scale = 0;
                for (int64_t p = 0; p < k; p++) {
                    ref += wr[i * k + p] * xr[j * k + p];
                    scale += fabs(wr[i * k + p] * xr[j * k + p]);
                }
                if (!(fabs(y[j * ldy + i] - ref) <= 1e-5 * scale + 1e-6)) {
                    fprintf(stderr, "type %d m=%lld n=%lld k=%lld: y[%lld,%lld] = %.9g, want %.9g\n", t, (long long)m,
                            (long long)n, (long long)k, (long long)j, (long long)i, y[j * ldy + i], ref);
                    bad = 1;
                    break;
                }
            }
            for (int64_t i = m; i < ldy && j + 1 < n; i++)
                if (y[j * ldy + i] != -12345.0f) {
                    fprintf(stderr, "type %d: output padding overwritten\n", t);
                    bad = 1;
                }
        }
        if (bad) failures++;
        free(w);
        free(wr);
        free(x);
        free(xr);
        free(act);
        free(y);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) iterations = atoi(argv[1]);
    int nthreads = argc > 2 ? atoi(argv[2]) : 3;
    if (tl_init() != TL_OK) {
        printf("SKIP: variant %s cannot run here\n", tl_variant());
        return 0;
    }
    ctx = tl_ctx_new(NULL);
    if (!ctx) return 1;
    pthread_t th[16];
    if (nthreads > 16) nthreads = 16;
    for (int i = 0; i < nthreads; i++) pthread_create(&th[i], NULL, run, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
    tl_ctx_free(ctx);
    printf("%s: %d callers x %d iterations, %d failures\n", tl_variant(), nthreads, iterations, (int)failures);
    return failures != 0;
}
