/* tl_internal.h — helpers shared by every kernel source (not part of the public ABI).
 *
 * Portable C only: nothing here depends on ISA flags, so the same code is compiled into
 * every variant (the compiler may vectorise it with whatever the variant's flags allow).
 */
#ifndef TL_INTERNAL_H
#define TL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tilellm.h"

#if defined(__GNUC__) || defined(__clang__)
#define TL_INLINE static inline __attribute__((always_inline))
#define TL_NOINLINE __attribute__((noinline))
#define TL_RESTRICT __restrict__
#else
#define TL_INLINE static inline
#define TL_NOINLINE
#define TL_RESTRICT
#endif

#define TL_MIN(a, b) ((a) < (b) ? (a) : (b))
#define TL_MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---- block formats of the weight types (GGUF layouts, little-endian) ---------------------- */
#define TL_QK 32          /* elements per block of q4_0 / q4_1 / q8_0 */
#define TL_Q8_0_BYTES 34  /* d f16, qs i8[32] */
#define TL_Q4_0_BYTES 18  /* d f16, qs u8[16]: byte t = element t (low nibble), t+16 (high) */
#define TL_Q4_1_BYTES 20  /* d f16, m f16, qs u8[16], same nibble order, value d*q + m */
#define TL_Q5_0_BYTES 22  /* d f16, qh u8[4] (bit t = bit 4 of element t), qs u8[16] as q4_0; d*(q-16) */
#define TL_QK_K 256       /* elements per super-block of the K-quants */
#define TL_Q4_K_BYTES 144 /* d f16, dmin f16, scales u8[12] (6-bit sc/m x 8), qs u8[128] */
#define TL_Q5_K_BYTES 176 /* d f16, dmin f16, scales u8[12], qh u8[32], qs u8[128] */
#define TL_Q6_K_BYTES 210 /* ql u8[128], qh u8[64], scales i8[16], d f16 */
/* the types of kquants.h's second part (portable_qx.c, <isa>_qx.c) */
#define TL_Q5_1_BYTES 24   /* d f16, m f16, qh u8[4], qs u8[16] as q5_0; d*q + m */
#define TL_IQ4_NL_BYTES 18 /* d f16, qs u8[16] as q4_0; d * tl_iq4_values[nibble] */
#define TL_Q2_K_BYTES 84   /* scales u8[16] (sc | m << 4), qs u8[64] (2 bits), d f16, dmin f16 */
#define TL_Q3_K_BYTES 110  /* hmask u8[32], qs u8[64] (2 bits), scales u8[12] (6-bit, +32), d f16 */
#define TL_IQ4_XS_BYTES 136 /* d f16, scales_h u16, scales_l u8[4], qs u8[128] */

/* Elements per block and bytes per block; 0/0 for types this library has no layout for. */
TL_INLINE int tl_block_size(int t) {
    switch (t) {
    case TL_F32: case TL_F16: case TL_BF16: return 1;
    case TL_Q4_0: case TL_Q4_1: case TL_Q8_0: case TL_Q5_0: case TL_Q5_1: case TL_IQ4_NL: return TL_QK;
    case TL_Q4_K: case TL_Q5_K: case TL_Q6_K: case TL_Q2_K: case TL_Q3_K: case TL_IQ4_XS: return TL_QK_K;
    default: return 0;
    }
}
TL_INLINE int tl_type_size(int t) {
    switch (t) {
    case TL_F32: return 4;
    case TL_F16: case TL_BF16: return 2;
    case TL_Q4_0: return TL_Q4_0_BYTES;
    case TL_Q4_1: return TL_Q4_1_BYTES;
    case TL_Q8_0: return TL_Q8_0_BYTES;
    case TL_Q5_0: return TL_Q5_0_BYTES;
    case TL_Q4_K: return TL_Q4_K_BYTES;
    case TL_Q5_K: return TL_Q5_K_BYTES;
    case TL_Q6_K: return TL_Q6_K_BYTES;
    case TL_Q5_1: return TL_Q5_1_BYTES;
    case TL_IQ4_NL: return TL_IQ4_NL_BYTES;
    case TL_Q2_K: return TL_Q2_K_BYTES;
    case TL_Q3_K: return TL_Q3_K_BYTES;
    case TL_IQ4_XS: return TL_IQ4_XS_BYTES;
    default: return 0;
    }
}
TL_INLINE int64_t tl_row_bytes(int t, int64_t k) {
    int bs = tl_block_size(t);
    return bs ? (k / bs) * tl_type_size(t) : 0;
}

/* ---- activation layouts (the output of tl_act_prepare) ------------------------------------
 *
 * Every prepared row starts on a 64-byte boundary relative to the buffer start (Python aligns
 * the buffer itself to 64 bytes), so SIMD kernels may use aligned loads on it.
 *
 * TL_F32 act (for f32 / f16 / bf16 weights): row j = k floats, then zero padding;
 *     ldact = round_up(4k, 64).
 * Quantized weights (q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, q2_K..q6_K, iq4_xs) all take ONE activation layout,
 * "q8 act, scales per 16" (not ggml's block_q8_0 / q8_1 / q8_K): per row, structure-of-arrays,
 * ng = k/16 groups of 16 values each with its own f32 scale:
 *     bytes [0, k)              int8  qs[k]     group g = qs[16g .. 16g+15]
 *     bytes [k, k+4ng)          float d[ng]     group scale, d = amax/127 (x ~ d*q)
 *     bytes [k+4ng, k+8ng)      float s[ng]     d * (sum of the group's 16 quants)
 *     bytes [k+8ng, k+10ng)     int16 isum[ng]  sum of the group's 16 quants (|isum| <= 2032)
 *     then zero padding;        ldact = round_up(k + 10ng, 64).
 * Quantisation (ggml's reference rounding, f32 scale): amax = max |x| of the group,
 * d = amax/127, id = 1/d (0 if d == 0), q = roundf(x*id) (half away from zero, clamped
 * to +-127); an all-zero group has d = 0, q = 0; a group holding a nan or inf has d = NaN, q = 0
 * (int8 cannot hold it: tl_act_prepare reports TL_ENONFINITE, act.c). One scale per 16 (llama.cpp: per 32, per 256
 * for K-quants) lowers the activation rounding error (measured: docs/kernels.md). The act type ids (Q8_0 for
 * q8_0/q4_0/q5_0/iq4_nl, Q8_1 for q4_1/q5_1, Q8_K for the K-quants and iq4_xs) name which weight families may share
 * a prepared buffer; the bytes are this layout.
 * Block math (exact int32 dot inside each 16-group, then f32): a 32-value weight block b with
 * scale d_w adds d_w * (d[2b] * dot(0..15) + d[2b+1] * dot(16..31)) (+ m_w * (s[2b] + s[2b+1])
 * for q4_1); K-quant sub-blocks fold the group scale into their sub-block sums and take their
 * min / -32 offset terms from s (or isum, exactly in int32).
 */
#define TL_ACT_ALIGN 64
#define TL_QG 16 /* values per activation scale group */
TL_INLINE int64_t tl_round_up(int64_t v, int64_t a) { return (v + a - 1) / a * a; }
TL_INLINE int tl_default_act_type(int wtype) {
    switch (wtype) {
    case TL_F32: case TL_F16: case TL_BF16: return TL_F32;
    case TL_Q8_0: case TL_Q4_0: case TL_Q5_0: case TL_IQ4_NL: return TL_Q8_0;
    case TL_Q4_1: case TL_Q5_1: return TL_Q8_1;
    case TL_Q4_K: case TL_Q5_K: case TL_Q6_K: case TL_Q2_K: case TL_Q3_K: case TL_IQ4_XS: return TL_Q8_K;
    default: return -1;
    }
}
TL_INLINE int64_t tl_act_row_bytes_default(int wtype, int64_t k) {
    switch (tl_default_act_type(wtype)) {
    case TL_F32: return tl_round_up(4 * k, TL_ACT_ALIGN);
    case TL_Q8_0: case TL_Q8_1: case TL_Q8_K: return tl_round_up(k + 10 * (k / TL_QG), TL_ACT_ALIGN);
    default: return 0;
    }
}
/* Accessors for the q8 act layout: row pointer r, row length k. */
TL_INLINE const int8_t *tl_q8a_qs(const uint8_t *r) { return (const int8_t *)r; }
TL_INLINE const float *tl_q8a_d(const uint8_t *r, int64_t k) { return (const float *)(r + k); }
TL_INLINE const float *tl_q8a_s(const uint8_t *r, int64_t k) { return (const float *)(r + k + 4 * (k / TL_QG)); }
TL_INLINE const int16_t *tl_q8a_isum(const uint8_t *r, int64_t k) {
    return (const int16_t *)(r + k + 8 * (k / TL_QG));
}
/* One row of k floats (k a multiple of 16) -> the q8 act layout (ldact bytes, zero padded). The
 * plain-C reference of the layout (act.c); SIMD variants may vectorise it (same bytes). */
void tl_q8a_quant_row(const float *x, int64_t k, uint8_t *row, int64_t ldact);

/* ---- scalar conversions (portable, bit-exact, no ISA instructions) ------------------------ */
TL_INLINE uint16_t tl_load_u16(const void *p) { uint16_t v; memcpy(&v, p, 2); return v; }
TL_INLINE uint32_t tl_load_u32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
TL_INLINE float tl_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
TL_INLINE uint32_t tl_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* IEEE binary16 -> binary32, exact for every input: normals re-biased, subnormals normalised
 * by a float subtraction (so no denormal arithmetic, which is slow and broken under FTZ/DAZ),
 * inf/nan keep their payload. Branch-free on the common path so loops over it vectorise. */
TL_INLINE float tl_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = (uint32_t)(h & 0x7fffu) << 13;      /* exponent+mantissa in f32 position */
    uint32_t e = em & 0x0f800000u;                    /* the 5-bit exponent field, shifted */
    uint32_t norm = em + ((uint32_t)(127 - 15) << 23); /* re-biased normal number */
    uint32_t special = em | 0x7f800000u;              /* inf / nan, payload kept */
    /* subnormal (or zero): 2^-14 * 0.m == (1.m * 2^-14) - 2^-14, both normal floats */
    uint32_t sub = tl_f32_bits(tl_bits_f32(em + (113u << 23)) - tl_bits_f32(113u << 23));
    /* all three computed, then selected with masks: no branches, so loops over it vectorise
     * (gcc will not if-convert a ?: around a float op under -ftrapping-math) */
    uint32_t m_special = 0u - (uint32_t)(e == 0x0f800000u), m_sub = 0u - (uint32_t)(e == 0);
    uint32_t bits = (special & m_special) | (sub & m_sub) | (norm & ~(m_special | m_sub));
    return tl_bits_f32(sign | bits);
}
/* bfloat16 is the top half of a binary32: exact by construction (nan, inf, subnormals). */
TL_INLINE float tl_bf16_to_f32(uint16_t h) { return tl_bits_f32((uint32_t)h << 16); }

/* ---- shared internals ---------------------------------------------------------------------- */
struct tl_ukernel;
struct tl_gemm_args;
/* gemm.c: run one whole matmul through a micro-kernel on nthreads threads. */
void tl_gemm_drive(const struct tl_ukernel *uk, const struct tl_gemm_args *a, int nthreads);
/* count products sharing one activation; n == 1: one parallel job over all their rows. */
void tl_gemm_drive_many(int count, const struct tl_ukernel *const *uk, const struct tl_gemm_args *a, int nthreads);
/* act.c: y = x / sqrt(mean(x^2) + eps) * w for one row of k (in place allowed); the one RMS norm of the C side. */
void tl_rms_row(const float *x, const float *w, float eps, int64_t k, float *y);

#endif
