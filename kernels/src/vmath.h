/* vmath.h — a float vector of the variant's native width (GCC/clang vector extensions, so one source
 * serves every ISA) and the vector maths the non-matmul kernels share (attention.c, act.c).
 * Portable C only: nothing here depends on ISA flags beyond the width. */
#ifndef TL_VMATH_H
#define TL_VMATH_H

#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX__) || defined(__AVX2__)
#define VW 8
#else
#define VW 4
#endif
typedef float vf __attribute__((vector_size(VW * 4)));   /* natural alignment: locals only; memory goes through memcpy */
typedef int32_t vi __attribute__((vector_size(VW * 4)));

static inline vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }
/* x - (+0) is x for every x (0 + x would turn -0 into +0), so the compiler broadcasts straight from memory
 * (one load, folded into an FMA) instead of adding zero first */
static inline vf vsplat(float x) { return x - (vf){0}; }
static inline vi visplat(int32_t x) { return (vi){0} + x; }

/* Lanes of x below lo (and nan) replaced by lo, above hi by hi. */
static inline vf vclamp(vf x, float lo, float hi) {
    const vi below = ~(x >= vsplat(lo)), above = x > vsplat(hi); /* nan compares false: goes to lo */
    x = (vf)(((vi)x & ~below) | ((vi)vsplat(lo) & below));
    return (vf)(((vi)x & ~above) | ((vi)vsplat(hi) & above));
}

/* exp(x) for x in [-87, 88] (callers clamp), relative error ~2e-7: n = round(x log2 e) by the
 * 1.5 * 2^23 trick, a degree-6 polynomial on the remainder, 2^n through the exponent bits. */
static inline vf vexp_poly(vf x, vf n) { /* e^(x - n ln 2) for |x - n ln 2| <= ln 2 / 2: the remainder's polynomial */
    const vf r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    vf p = vsplat(1.0f / 720.0f);
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    return p * r + 1.0f;
}
static inline vf vexp(vf x) {
    const vf magic = vsplat(12582912.0f);        /* 1.5 * 2^23 */
    const vf n = (x * 1.44269504089f + magic) - magic;
    const vf p = vexp_poly(x, n);
    const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)e;
}

/* tanh(x) as sign(x) (1 - 2 / (e^(2|x|) + 1)), absolute error ~2e-7 (relative near 0 is worse: callers add 1, as
 * GELU's 1 + tanh does); |x| >= 9 gives +-1 (tanh(9) rounds to 1 in float), -0 stays -0, nan stays nan. */
static inline vf vtanh(vf x) {
    const vi sign = (vi)x & visplat((int32_t)0x80000000u);
    const vf a = (vf)((vi)x & visplat(0x7fffffff));
    const vf e = vexp(vclamp(a + a, 0.0f, 18.0f));
    const vf r = (vf)((vi)(1.0f - 2.0f / (e + 1.0f)) | sign);
    const vi nan = ~(x == x);
    return (vf)(((vi)r & ~nan) | ((vi)x & nan));
}

#endif
