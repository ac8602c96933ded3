/* kv.h — the KV cache types (f32, f16, bf16, q8_0): bytes of a row, reading a row as floats, writing floats into
 * a row. Shared by attention.c (which reads K and V of any type straight from the cache) and decode.c (whose cache
 * stores write them). The rounding is numpy's (tilellm/quant/kv.py): f16 and bf16 to nearest even, q8_0 as
 * ggml's reference quantizer (d = amax / 127 stored as f16, q = roundf(x / d)). Portable C. */
#ifndef TL_KV_H
#define TL_KV_H

#include <math.h>

#include "tl_internal.h"

TL_INLINE int tl_kv_type_ok(int t) { return t == TL_F32 || t == TL_F16 || t == TL_BF16 || t == TL_Q8_0; }

/* values per unit of storage: a row of a q8_0 cache must hold whole blocks */
TL_INLINE int64_t tl_kv_granule(int t) { return t == TL_Q8_0 ? TL_QK : 1; }

/* bytes of n values of type t (n a multiple of tl_kv_granule(t)) */
TL_INLINE int64_t tl_kv_bytes_of(int t, int64_t n) {
    return t == TL_Q8_0 ? n / TL_QK * TL_Q8_0_BYTES : t == TL_F32 ? n * 4 : n * 2;
}

/* binary32 -> binary16, round to nearest even (overflow to inf, subnormals and nan as IEEE). */
TL_INLINE uint16_t tl_f32_to_f16(float f) {
    const uint32_t x = tl_f32_bits(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) { /* below 2^-14: a subnormal half (or zero) */
        if (ax < 0x33000000u) return (uint16_t)sign; /* below half the smallest subnormal (2^-25): zero */
        const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e; /* 14..24: m * 2^(e-150) in units of 2^-24 is m >> (126 - e) */
        uint32_t h = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        h += rem > half || (rem == half && (h & 1u));
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((ax >> 13) - ((uint32_t)(127 - 15) << 10));
    const uint32_t rem = ax & 0x1fffu;
    h += rem > 0x1000u || (rem == 0x1000u && (h & 1u)); /* a carry into the exponent is the right result */
    return (uint16_t)(sign | h);
}

/* binary32 -> bfloat16, round to nearest even; nan stays nan (quiet). */
TL_INLINE uint16_t tl_f32_to_bf16(float f) {
    const uint32_t x = tl_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* n values of a row of type t at src as floats (n a multiple of the granule). */
TL_INLINE void tl_kv_load(const void *src, int t, int64_t n, float *TL_RESTRICT dst) {
    const uint8_t *s = (const uint8_t *)src;
    if (t == TL_F32) {
        memcpy(dst, s, (size_t)n * 4);
    } else if (t == TL_F16) {
        for (int64_t i = 0; i < n; i++) dst[i] = tl_f16_to_f32(tl_load_u16(s + 2 * i));
    } else if (t == TL_BF16) {
        for (int64_t i = 0; i < n; i++) dst[i] = tl_bf16_to_f32(tl_load_u16(s + 2 * i));
    } else { /* q8_0 */
        for (int64_t b = 0; b < n / TL_QK; b++) {
            const uint8_t *blk = s + b * TL_Q8_0_BYTES;
            const float d = tl_f16_to_f32(tl_load_u16(blk));
            const int8_t *q = (const int8_t *)(blk + 2);
            for (int i = 0; i < TL_QK; i++) dst[b * TL_QK + i] = d * (float)q[i];
        }
    }
}

/* n floats into a row of type t at dst (n a multiple of the granule). */
TL_INLINE void tl_kv_store(const float *TL_RESTRICT src, int t, int64_t n, void *dst) {
    uint8_t *o = (uint8_t *)dst;
    if (t == TL_F32) {
        memcpy(o, src, (size_t)n * 4);
    } else if (t == TL_F16 || t == TL_BF16) {
        for (int64_t i = 0; i < n; i++) {
            const uint16_t h = t == TL_F16 ? tl_f32_to_f16(src[i]) : tl_f32_to_bf16(src[i]);
            memcpy(o + 2 * i, &h, 2);
        }
    } else { /* q8_0: ggml's quantize_row_q8_0_ref */
        for (int64_t b = 0; b < n / TL_QK; b++) {
            const float *x = src + b * TL_QK;
            uint8_t *blk = o + b * TL_Q8_0_BYTES;
            float amax = 0.0f;
            for (int i = 0; i < TL_QK; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
            const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            const uint16_t dh = tl_f32_to_f16(d);
            memcpy(blk, &dh, 2);
            for (int i = 0; i < TL_QK; i++) {
                const float r = roundf(x[i] * id);
                blk[2 + i] = (uint8_t)(int8_t)(r == r ? r : 0.0f); /* nan (a non-finite row): 0, never UB */
            }
        }
    }
}

#endif
