/* ukernel_avx512.c — AVX-512 (F/BW/VL/DQ + VNNI + BF16) micro-kernels for f32, f16, bf16,
 * q8_0, q4_0 and q4_1 weights.
 *
 * Float weights (f32, f16, bf16): float_avx512.h.
 *
 * Quantized weights (q8_0, q4_0, q4_1): weights are repacked per 16-row panel into a
 * thread-local buffer, "row in lane" layout: for each 32-block, 8 zmm of 16 rows x 4 bytes
 * (unsigned: q8_0 as q + 128, q4 as the raw nibble 0..15), then 16 f32 scales d and (q4_1)
 * 16 f32 mins m. One token's block is then 8 vpdpbusd against 4-byte broadcasts of its int8
 * activations, giving the 16 rows' exact int32 block dots in the 16 lanes; the offset is
 * removed exactly in int32 (the accumulator starts at -offset * sum(q_x)); activations carry one
 * scale per 16 values (x86_common.h), so each block is two int32 dots (4 vpdpbusd each) and
 * y += d_w * (d_x0 * dot0 + d_x1 * dot1) (+ m_w * (s_x0 + s_x1) for q4_1) in f32, blocks in order. No
 * saturation is possible (vpdpbusd accumulates u8*s8 products in int32). A panel is packed
 * once and reused for every token of the driver's block (and for n == 1, gemv).
 */
#include <immintrin.h>
#include <stdlib.h>

#include "tl_internal.h"
#include "ukernel.h"
#include "x86_common.h"
#include "kquants_avx512.h" /* q5_0, q4_K, q5_K, q6_K */
#include "float_avx512.h"   /* f32, f16, bf16 */

const char tl_uk_name[] = "avx512";
const uint64_t tl_uk_required = TL_CPU_AVX2 | TL_CPU_FMA | TL_CPU_F16C | TL_CPU_AVX512F | TL_CPU_AVX512BW |
                                TL_CPU_AVX512VL | TL_CPU_AVX512DQ | TL_CPU_AVX512VNNI | TL_CPU_AVX512BF16;
int tl_uk_init(void) {
    fa_init();
    return TL_OK;
}

/* ---- quantized activations (x86_common.h layout), vectorised: one 32-block = 2 zmm ------------- */
/* q = roundf(v) for |v| <= 127 (half away from zero), exactly: t = trunc(v), v - t is exact. */
TL_INLINE __m512i round_half_away(__m512 v) {
    __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m512 fr = _mm512_sub_ps(v, t);
    __m512i q = _mm512_cvttps_epi32(t);
    q = _mm512_mask_add_epi32(q, _mm512_cmp_ps_mask(fr, _mm512_set1_ps(0.5f), _CMP_GE_OQ), q, _mm512_set1_epi32(1));
    q = _mm512_mask_sub_epi32(q, _mm512_cmp_ps_mask(fr, _mm512_set1_ps(-0.5f), _CMP_LE_OQ), q, _mm512_set1_epi32(1));
    return q;
}

static void qa_prepare_avx512(const float *x, int64_t ldx, int64_t j0, int64_t j1, int64_t k, uint8_t *act,
                              int64_t ldact) {
    const int64_t ng = k / X86_QG;
    const __m512 lim = _mm512_set1_ps(127.0f), nlim = _mm512_set1_ps(-127.0f);
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    for (int64_t j = j0; j < j1; j++) {
        const float *xr = x + j * ldx;
        uint8_t *row = act + j * ldact;
        float *dd = (float *)(row + k);
        float *ss = dd + ng;
        int16_t *is = (int16_t *)(ss + ng);
        for (int64_t g = 0; g < ng; g++) {
            __m512 x0 = _mm512_loadu_ps(xr + 16 * g);
            /* max_ps(a, b) returns b when a is nan: nan inputs are skipped, as in the scalar code */
            __m512 a0 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x0), absmask));
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, _mm512_setzero_ps()));
            const float d = amax / 127.0f;
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            __m512 v0 = _mm512_mul_ps(x0, _mm512_set1_ps(id));
            v0 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v0, v0, _CMP_ORD_Q), v0); /* nan -> 0 */
            v0 = _mm512_max_ps(_mm512_min_ps(v0, lim), nlim);
            __m512i q0 = round_half_away(v0);
            _mm_storeu_si128((__m128i *)(row + 16 * g), _mm512_cvtepi32_epi8(q0));
            const int sum = _mm512_reduce_add_epi32(q0);
            dd[g] = d;
            ss[g] = d * (float)sum;
            is[g] = (int16_t)sum;
        }
        int64_t used = k + 10 * ng;
        if (ldact > used) memset(row + used, 0, (size_t)(ldact - used));
    }
}

/* ---- quantized weights: 16-row panels, row in lane --------------------------------------------- */
#define Q_R 16                     /* rows per panel (zmm lanes) */
#define Q_RN 8                     /* tokens per register tile */
#define Q_BLK_BYTES (512 + 64 + 64) /* per 32-block: 8 x 64 B quants, 16 d, 16 m */

/* 16 rows' 16-byte chunks (row r at rp[r] + off) transposed to 4 zmm: out[t] lane r = dword t of
 * row r. A_q holds rows q, q+4, q+8, q+12 in its 128-bit lanes, so after the 32- and 64-bit
 * unpacks lane 4l + q of out[t] is row 4l + q: natural order, no permute needed. */
TL_INLINE void q_transpose16(const uint8_t *const *rp, int off, __m512i out[4]) {
    __m512i A[4];
    for (int q = 0; q < 4; q++) {
        __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(rp[q] + off)));
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rp[q + 4] + off)), 1);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rp[q + 8] + off)), 2);
        A[q] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rp[q + 12] + off)), 3);
    }
    __m512i T0 = _mm512_unpacklo_epi32(A[0], A[1]), T1 = _mm512_unpackhi_epi32(A[0], A[1]);
    __m512i T2 = _mm512_unpacklo_epi32(A[2], A[3]), T3 = _mm512_unpackhi_epi32(A[2], A[3]);
    out[0] = _mm512_unpacklo_epi64(T0, T2);
    out[1] = _mm512_unpackhi_epi64(T0, T2);
    out[2] = _mm512_unpacklo_epi64(T1, T3);
    out[3] = _mm512_unpackhi_epi64(T1, T3);
}

/* Block b of a 16-row panel in registers: w[t] lane r = 4 unsigned quants 4t..4t+3 of row r
 * (q8_0: q + 128, q4: nibble), d (and m for q4_1) per lane; dead lanes (r >= nr) get d = m = 0
 * (their row pointers repeat a live row, so every load is in bounds). */
TL_INLINE void q_load_block(const int WT, const uint8_t *const *rp, int64_t b, __mmask16 live, __m512i idx,
                            __m512i w[8], __m512 *d, __m512 *m) {
    const int bs = x86_q_bytes(WT);
    const int64_t o = b * bs;
    /* scales: for q4 the 16 scalar loads beat vpgatherdd (1 thread from DRAM: q4_0 +15 %, q4_1
     * +12 %); for q8_0 the gather measured equal or 5 % faster */
    if (WT == TL_Q4_1) {
        __m128i s4[4];
        for (int q = 0; q < 4; q++) {
            __m128i v = _mm_cvtsi32_si128((int)tl_load_u32(rp[4 * q] + o));
            v = _mm_insert_epi32(v, (int)tl_load_u32(rp[4 * q + 1] + o), 1);
            v = _mm_insert_epi32(v, (int)tl_load_u32(rp[4 * q + 2] + o), 2);
            s4[q] = _mm_insert_epi32(v, (int)tl_load_u32(rp[4 * q + 3] + o), 3);
        }
        __m512i sc = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set_m128i(s4[1], s4[0])), _mm256_set_m128i(s4[3], s4[2]), 1);
        sc = _mm512_maskz_mov_epi32(live, sc);
        *d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(sc));
        *m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(sc, 16)));
    } else if (WT == TL_Q4_0) {
        /* lane numbers must be constants (unoptimised builds do not unroll a loop) */
#define Q_H8(B)                                                                                             \
    _mm_set_epi16((short)tl_load_u16(rp[B + 7] + o), (short)tl_load_u16(rp[B + 6] + o),                  \
                  (short)tl_load_u16(rp[B + 5] + o), (short)tl_load_u16(rp[B + 4] + o),                  \
                  (short)tl_load_u16(rp[B + 3] + o), (short)tl_load_u16(rp[B + 2] + o),                  \
                  (short)tl_load_u16(rp[B + 1] + o), (short)tl_load_u16(rp[B] + o))
        *d = _mm512_maskz_mov_ps(live, _mm512_cvtph_ps(_mm256_set_m128i(Q_H8(8), Q_H8(0))));
#undef Q_H8
    } else {
        __m512i sc = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, idx, (const void *)(rp[0] + o), 1);
        *d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(sc));
    }
    const uint8_t *const *r = rp;
    __m512i u[4];
    if (WT == TL_Q8_0) {
        const __m512i flip = _mm512_set1_epi8((char)0x80);
        q_transpose16(r, (int)o + 2, u);
        for (int t = 0; t < 4; t++) w[t] = _mm512_xor_si512(u[t], flip);
        q_transpose16(r, (int)o + 18, u);
        for (int t = 0; t < 4; t++) w[t + 4] = _mm512_xor_si512(u[t], flip);
    } else {
        const __m512i lo4 = _mm512_set1_epi8(0x0f);
        q_transpose16(r, (int)o + (WT == TL_Q4_0 ? 2 : 4), u);
        for (int t = 0; t < 4; t++) {
            w[t] = _mm512_and_si512(u[t], lo4);
            w[t + 4] = _mm512_and_si512(_mm512_srli_epi16(u[t], 4), lo4);
        }
    }
}

/* Row pointers of panel rows [r0, r0 + nr) (dead rows repeat row r0) and the gather index of
 * their offsets from row r0. */
TL_INLINE __m512i q_rows(const tl_gemm_args *a, int64_t r0, int nr, const uint8_t *rp[16]) {
    int32_t off[16];
    for (int r = 0; r < 16; r++) {
        off[r] = r < nr ? (int32_t)(r * a->ldw) : 0;
        rp[r] = a->w + r0 * a->ldw + off[r];
    }
    return _mm512_loadu_si512((const void *)off);
}

/* Pack rows [r0, r0 + nr) (nr <= 16; missing rows get zero scales) of all k into buf. */
TL_INLINE void q_pack(const int WT, const tl_gemm_args *a, int64_t r0, int nr, uint8_t *buf) {
    const int64_t nb = a->k / TL_QK;
    const uint8_t *rp[16];
    const __m512i idx = q_rows(a, r0, nr, rp);
    const __mmask16 live = (__mmask16)((1u << nr) - 1);
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *o = buf + b * Q_BLK_BYTES;
        __m512i w[8];
        __m512 d, m = _mm512_setzero_ps();
        q_load_block(WT, rp, b, live, idx, w, &d, &m);
        for (int t = 0; t < 8; t++) _mm512_store_si512((void *)(o + 64 * t), w[t]);
        _mm512_store_ps((float *)(o + 512), d);
        if (WT == TL_Q4_1) _mm512_store_ps((float *)(o + 576), m);
    }
}

/* n == 1: the same arithmetic as q_panel_tile with RN = 1, straight from the transposed
 * registers (no store / reload of the panel). */
TL_INLINE void q_gemv_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t k = a->k, nb = k / TL_QK;
    const int32_t off = WT == TL_Q8_0 ? 128 : 8;
    const uint8_t *xr = a->act;
    const int32_t *xq = (const int32_t *)xr;
    const float *dx = x86_qa_d(xr, k), *sx = x86_qa_s(xr, k);
    const int16_t *is = x86_qa_isum(xr, k);
    if (a->ldw > INT32_MAX / Q_R) { /* gather offsets are int32 */
        x86_q_block_scalar(WT, a, i0, i1, 0, 1);
        return;
    }
    for (int64_t i = i0; i < i1; i += Q_R) {
        const int nr = (int)TL_MIN((int64_t)Q_R, i1 - i);
        const uint8_t *rp[16];
        const __m512i idx = q_rows(a, i, nr, rp);
        const __mmask16 live = (__mmask16)((1u << nr) - 1);
        __m512 y0 = _mm512_setzero_ps();
        const x86_pf pf = x86_pf_next(a, i, i1, Q_R, nb); /* the next panel, from DRAM */
        for (int64_t b = 0; b < nb; b++) {
            x86_pf_block(&pf, b);
            __m512i w[8];
            __m512 d, m = _mm512_setzero_ps();
            q_load_block(WT, rp, b, live, idx, w, &d, &m);
            __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
            if (WT != TL_Q4_1) {
                acc0 = _mm512_set1_epi32(-(int32_t)is[2 * b] * off);
                acc1 = _mm512_set1_epi32(-(int32_t)is[2 * b + 1] * off);
            }
            for (int t = 0; t < 4; t++) acc0 = _mm512_dpbusd_epi32(acc0, w[t], _mm512_set1_epi32(xq[8 * b + t]));
            for (int t = 4; t < 8; t++) acc1 = _mm512_dpbusd_epi32(acc1, w[t], _mm512_set1_epi32(xq[8 * b + t]));
            __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(acc0), _mm512_set1_ps(dx[2 * b]));
            f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc1), _mm512_set1_ps(dx[2 * b + 1]), f);
            y0 = _mm512_fmadd_ps(f, d, y0);
            if (WT == TL_Q4_1) y0 = _mm512_fmadd_ps(m, _mm512_set1_ps(sx[2 * b] + sx[2 * b + 1]), y0);
        }
        if (nr == Q_R) _mm512_storeu_ps(a->y + i, y0);
        else _mm512_mask_storeu_ps(a->y + i, live, y0);
    }
}

/* Rows of the packed panel (nr valid, starting at i0) x tokens [j0, j0 + RN). */
TL_INLINE void q_panel_tile(const int WT, const int RN, const tl_gemm_args *a, const uint8_t *panel, int64_t i0,
                            int nr, int64_t j0) {
    const int64_t k = a->k, nb = k / TL_QK;
    const int32_t off = WT == TL_Q8_0 ? 128 : 8;
    __m512 y[Q_RN];
    const uint8_t *xr[Q_RN];
    for (int j = 0; j < RN; j++) {
        y[j] = _mm512_setzero_ps();
        xr[j] = a->act + (j0 + j) * a->ldact;
    }
    const uint8_t *P = panel;
    for (int64_t b = 0; b < nb; b++, P += Q_BLK_BYTES) {
        __m512i w[8];
        for (int t = 0; t < 8; t++) w[t] = _mm512_load_si512((const void *)(P + 64 * t));
        const __m512 d = _mm512_load_ps((const float *)(P + 512));
        __m512 m = _mm512_setzero_ps();
        if (WT == TL_Q4_1) m = _mm512_load_ps((const float *)(P + 576));
        for (int j = 0; j < RN; j++) {
            const int32_t *xq = (const int32_t *)(xr[j] + 32 * b);
            const float *dx = x86_qa_d(xr[j], k);
            __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
            if (WT != TL_Q4_1) {
                const int16_t *is = x86_qa_isum(xr[j], k);
                acc0 = _mm512_set1_epi32(-(int32_t)is[2 * b] * off);
                acc1 = _mm512_set1_epi32(-(int32_t)is[2 * b + 1] * off);
            }
            for (int t = 0; t < 4; t++) acc0 = _mm512_dpbusd_epi32(acc0, w[t], _mm512_set1_epi32(xq[t]));
            for (int t = 4; t < 8; t++) acc1 = _mm512_dpbusd_epi32(acc1, w[t], _mm512_set1_epi32(xq[t]));
            __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(acc0), _mm512_set1_ps(dx[2 * b]));
            f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc1), _mm512_set1_ps(dx[2 * b + 1]), f);
            y[j] = _mm512_fmadd_ps(f, d, y[j]);
            if (WT == TL_Q4_1) {
                const float *sx = x86_qa_s(xr[j], k);
                y[j] = _mm512_fmadd_ps(m, _mm512_set1_ps(sx[2 * b] + sx[2 * b + 1]), y[j]);
            }
        }
    }
    const __mmask16 rmask = (__mmask16)((1u << nr) - 1);
    for (int j = 0; j < RN; j++) {
        float *yp = a->y + (j0 + j) * a->ldy + i0;
        if (nr == Q_R) _mm512_storeu_ps(yp, y[j]);
        else _mm512_mask_storeu_ps(yp, rmask, y[j]);
    }
}

TL_INLINE void q_panel_tokens(const int WT, const tl_gemm_args *a, const uint8_t *panel, int64_t i0, int nr,
                              int64_t j0, int64_t j1) {
    int64_t j = j0;
    for (; j + Q_RN <= j1; j += Q_RN) q_panel_tile(WT, Q_RN, a, panel, i0, nr, j);
    switch ((int)(j1 - j)) {
    case 1: q_panel_tile(WT, 1, a, panel, i0, nr, j); break;
    case 2: q_panel_tile(WT, 2, a, panel, i0, nr, j); break;
    case 3: q_panel_tile(WT, 3, a, panel, i0, nr, j); break;
    case 4: q_panel_tile(WT, 4, a, panel, i0, nr, j); break;
    case 5: q_panel_tile(WT, 5, a, panel, i0, nr, j); break;
    case 6: q_panel_tile(WT, 6, a, panel, i0, nr, j); break;
    case 7: q_panel_tile(WT, 7, a, panel, i0, nr, j); break;
    default: break;
    }
}

TL_INLINE void q_block_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    uint8_t *buf = x86_scratch((size_t)(a->k / TL_QK) * Q_BLK_BYTES);
    if (!buf || a->ldw > INT32_MAX / Q_R) {
        x86_q_block_scalar(WT, a, i0, i1, j0, j1);
        return;
    }
    for (int64_t i = i0; i < i1; i += Q_R) {
        int nr = (int)TL_MIN((int64_t)Q_R, i1 - i);
        q_pack(WT, a, i, nr, buf);
        q_panel_tokens(WT, a, buf, i, nr, j0, j1);
    }
}

#define Q_FUNCS(NAME, WT)                                                                                   \
    static void NAME##_block(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {       \
        q_block_impl(WT, a, i0, i1, j0, j1);                                                                \
    }                                                                                                       \
    static void NAME##_tile(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {                \
        q_block_impl(WT, a, i0, i0 + rm, j0, j0 + rn);                                                      \
    }                                                                                                       \
    static void NAME##_gemv(const tl_gemm_args *a, int64_t i0, int64_t i1) { q_gemv_impl(WT, a, i0, i1); }
Q_FUNCS(q8_0, TL_Q8_0)
Q_FUNCS(q4_0, TL_Q4_0)
Q_FUNCS(q4_1, TL_Q4_1)

/* ---- table -------------------------------------------------------------------------------------- */
static const tl_ukernel uk_q8_0 = {Q_R, Q_RN, q8_0_tile, Q_R, q8_0_gemv, q8_0_block, x86_qa_row_bytes, qa_prepare_avx512};
static const tl_ukernel uk_q4_0 = {Q_R, Q_RN, q4_0_tile, Q_R, q4_0_gemv, q4_0_block, x86_qa_row_bytes, qa_prepare_avx512};
static const tl_ukernel uk_q4_1 = {Q_R, Q_RN, q4_1_tile, Q_R, q4_1_gemv, q4_1_block, x86_qa_row_bytes, qa_prepare_avx512};

const tl_ukernel *tl_uk_lookup(int wtype) {
    const tl_ukernel *f = fa_lookup(wtype); /* f32 / f16 / bf16 (float_avx512.h) */
    if (f) return f;
    switch (wtype) {
    case TL_Q8_0: return &uk_q8_0;
    case TL_Q4_0: return &uk_q4_0;
    case TL_Q4_1: return &uk_q4_1;
    default: return tl_kq_avx512_lookup(wtype); /* q5_0 / K-quants (kquants_avx512.h) */
    }
}
