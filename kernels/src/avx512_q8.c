/* avx512_q8.c — AVX-512 VNNI micro-kernels for the 32-block weights q8_0, q4_0 and q4_1, and the
 * vectorised preparation of the shared q8 activations (used by avx512_kquants.c's kernels too).
 *
 * weights are repacked per 16-row panel into a
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
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "avx512.h"
#include "x86_common.h"

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

void tl_avx512_q8_act_prepare(const float *x, int64_t ldx, int64_t j0, int64_t j1, int64_t k, uint8_t *act,
                              int64_t ldact) {
    const int64_t ng = k / X86_QG;
    const __m512 lim = _mm512_set1_ps(127.0f), nlim = _mm512_set1_ps(-127.0f);
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    const __m512 fmax = _mm512_set1_ps(FLT_MAX);
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
            /* nan or inf in the group: d = NaN, q = 0 (act.c's rule; it reports TL_ENONFINITE) */
            const float d = _mm512_cmp_ps_mask(a0, fmax, _CMP_NLE_UQ) ? NAN : amax / 127.0f;
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

/* Where a panel's 16 rows are: a table of pointers (any rows; dead rows repeat a live one), or, for a
 * full panel, 4 bases (rows 0..3) and 2 strides: row q + 4j is B[q] + j L4 (L12 = 3 L4), 6 registers
 * instead of a table of 16 that the compiler spills (24 stack reloads per block, measured in the asm).
 * S4 (a compile-time constant at every call) says which; callers of the bases advance them along
 * the row and pass small offsets. */
typedef struct {
    const uint8_t *const *rp;
    const uint8_t *B[4];
    int64_t L4, L12;
} q_src;

TL_INLINE const uint8_t *q_ptr(const int S4, const q_src *s, int r, int64_t off) {
    if (!S4) return s->rp[r] + off;
    const int j = r >> 2;
    return s->B[r & 3] + (j == 0 ? 0 : j == 1 ? s->L4 : j == 2 ? 2 * s->L4 : s->L12) + off;
}

TL_INLINE q_src q_src4(const tl_gemm_args *a, int64_t r0) {
    q_src s = {NULL, {NULL, NULL, NULL, NULL}, 4 * a->ldw, 12 * a->ldw};
    for (int q = 0; q < 4; q++) s.B[q] = a->w + (r0 + q) * a->ldw;
    return s;
}

TL_INLINE void q_src_advance(q_src *s, int64_t bytes) {
    for (int q = 0; q < 4; q++) s->B[q] += bytes;
}

/* 16 rows' 16-byte chunks at off transposed to 4 zmm: out[t] lane r = dword t of row r (DW: only
 * out[0], from 4-byte loads). A_q holds rows q, q+4, q+8, q+12 in its 128-bit lanes, so after the
 * 32- and 64-bit unpacks lane 4l + q of out[t] is row 4l + q: natural order, no permute needed. */
TL_INLINE __m128i q_chunk(const int S4, const int DW, const q_src *s, int r, int64_t off) {
    const uint8_t *p = q_ptr(S4, s, r, off);
    return DW ? _mm_cvtsi32_si128((int)tl_load_u32(p)) : _mm_loadu_si128((const __m128i *)p);
}

TL_INLINE void q_transpose16(const int S4, const int DW, const q_src *s, int64_t off, __m512i out[4]) {
    __m512i A[4];
    for (int q = 0; q < 4; q++) {
        __m512i v = _mm512_castsi128_si512(q_chunk(S4, DW, s, q, off));
        v = _mm512_inserti32x4(v, q_chunk(S4, DW, s, q + 4, off), 1);
        v = _mm512_inserti32x4(v, q_chunk(S4, DW, s, q + 8, off), 2);
        A[q] = _mm512_inserti32x4(v, q_chunk(S4, DW, s, q + 12, off), 3);
    }
    __m512i T0 = _mm512_unpacklo_epi32(A[0], A[1]), T2 = _mm512_unpacklo_epi32(A[2], A[3]);
    out[0] = _mm512_unpacklo_epi64(T0, T2);
    if (DW) return;
    __m512i T1 = _mm512_unpackhi_epi32(A[0], A[1]), T3 = _mm512_unpackhi_epi32(A[2], A[3]);
    out[1] = _mm512_unpackhi_epi64(T0, T2);
    out[2] = _mm512_unpacklo_epi64(T1, T3);
    out[3] = _mm512_unpackhi_epi64(T1, T3);
}

/* Block b of a 16-row panel in registers: w[t] lane r = 4 unsigned quants 4t..4t+3 of row r
 * (q8_0: q + 128, q4: nibble), d (and m for q4_1) per lane; dead lanes (r >= nr) get d = m = 0
 * (their row pointers repeat a live row, so every load is in bounds). */
TL_INLINE void q_load_block(const int WT, const int S4, const q_src *s, int64_t o, __mmask16 live, __m512i idx,
                            __m512i w[8], __m512 *d, __m512 *m) {
    /* scales: for q4 the 16 scalar loads beat vpgatherdd (1 thread from DRAM: q4_0 +15 %, q4_1
     * +12 %); for q8_0 the gather measured equal or 5 % faster */
    if (WT == TL_Q4_1) {
        __m128i s4[4];
        for (int q = 0; q < 4; q++) {
            __m128i v = _mm_cvtsi32_si128((int)tl_load_u32(q_ptr(S4, s, 4 * q, o)));
            v = _mm_insert_epi32(v, (int)tl_load_u32(q_ptr(S4, s, 4 * q + 1, o)), 1);
            v = _mm_insert_epi32(v, (int)tl_load_u32(q_ptr(S4, s, 4 * q + 2, o)), 2);
            s4[q] = _mm_insert_epi32(v, (int)tl_load_u32(q_ptr(S4, s, 4 * q + 3, o)), 3);
        }
        __m512i sc = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set_m128i(s4[1], s4[0])), _mm256_set_m128i(s4[3], s4[2]), 1);
        sc = _mm512_maskz_mov_epi32(live, sc);
        *d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(sc));
        *m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(sc, 16)));
    } else if (WT == TL_Q4_0) {
        /* lane numbers must be constants (unoptimised builds do not unroll a loop) */
#define Q_H8(B)                                                                                             \
    _mm_set_epi16((short)tl_load_u16(q_ptr(S4, s, B + 7, o)), (short)tl_load_u16(q_ptr(S4, s, B + 6, o)),                  \
                  (short)tl_load_u16(q_ptr(S4, s, B + 5, o)), (short)tl_load_u16(q_ptr(S4, s, B + 4, o)),                  \
                  (short)tl_load_u16(q_ptr(S4, s, B + 3, o)), (short)tl_load_u16(q_ptr(S4, s, B + 2, o)),                  \
                  (short)tl_load_u16(q_ptr(S4, s, B + 1, o)), (short)tl_load_u16(q_ptr(S4, s, B, o)))
        *d = _mm512_maskz_mov_ps(live, _mm512_cvtph_ps(_mm256_set_m128i(Q_H8(8), Q_H8(0))));
#undef Q_H8
    } else {
        __m512i sc = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, idx, (const void *)q_ptr(S4, s, 0, o), 1);
        *d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(sc));
    }
    __m512i u[4];
    if (WT == TL_Q8_0) {
        const __m512i flip = _mm512_set1_epi8((char)0x80);
        q_transpose16(S4, 0, s, o + 2, u);
        for (int t = 0; t < 4; t++) w[t] = _mm512_xor_si512(u[t], flip);
        q_transpose16(S4, 0, s, o + 18, u);
        for (int t = 0; t < 4; t++) w[t + 4] = _mm512_xor_si512(u[t], flip);
    } else {
        const __m512i lo4 = _mm512_set1_epi8(0x0f);
        q_transpose16(S4, 0, s, o + (WT == TL_Q4_0 ? 2 : 4), u);
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

/* Pack rows [r0, r0 + nr) (nr <= 16; missing rows get zero scales) of all k into buf; SGN: the quants
 * signed (q8_0 q, q4_0 nibble - 8, q4_1 nibble: the AMX tiles') instead of vpdpbusd's unsigned. */
TL_INLINE void q_pack(const int WT, const int SGN, const tl_gemm_args *a, int64_t r0, int nr, uint8_t *buf) {
    const int64_t nb = a->k / TL_QK;
    const uint8_t *rp[16];
    const __m512i idx = q_rows(a, r0, nr, rp);
    const q_src src = {rp, {NULL, NULL, NULL, NULL}, 0, 0};
    const __mmask16 live = (__mmask16)((1u << nr) - 1);
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *o = buf + b * Q_BLK_BYTES;
        __m512i w[8];
        __m512 d, m = _mm512_setzero_ps();
        q_load_block(WT, 0, &src, b * x86_q_bytes(WT), live, idx, w, &d, &m);
        for (int t = 0; t < 8; t++) {
            if (SGN && WT == TL_Q8_0) w[t] = _mm512_xor_si512(w[t], _mm512_set1_epi8((char)0x80));
            if (SGN && WT == TL_Q4_0) w[t] = _mm512_sub_epi8(w[t], _mm512_set1_epi8(8));
            _mm512_store_si512((void *)(o + 64 * t), w[t]);
        }
        _mm512_store_ps((float *)(o + 512), d);
        if (WT == TL_Q4_1) _mm512_store_ps((float *)(o + 576), m);
    }
}

/* A block's two int32 group dots scaled by the activation's group scales: f = dot0 dx0, then
 * fma(dot1, dx1, f) -- the one order every quantized path here uses, so their results are the same bits. */
TL_INLINE __m512 q_scale_dots(__m512i acc0, __m512i acc1, float dx0, float dx1) {
    const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(acc0), _mm512_set1_ps(dx0));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc1), _mm512_set1_ps(dx1), f);
}

/* One panel, one token, blocks [b0, b1): y0 + the blocks' terms in block order. S4: a full panel whose
 * rows come from bases (at block b0, advanced block by block); else a table (offsets b * bytes). */
TL_INLINE __m512 q_gemv_blocks(const int WT, const int S4, const tl_gemm_args *a, q_src src, int64_t b0, int64_t b1,
                               __mmask16 live, __m512i idx, const x86_pf *pf, __m512 y0) {
    const int64_t k = a->k, bs = x86_q_bytes(WT);
    const int32_t off = WT == TL_Q8_0 ? 128 : 8;
    const uint8_t *xr = a->act;
    const int32_t *xq = (const int32_t *)xr;
    const float *dx = x86_qa_d(xr, k), *sx = x86_qa_s(xr, k);
    const int16_t *is = x86_qa_isum(xr, k);
    for (int64_t b = b0; b < b1; b++) {
        x86_pf_block(pf, b);
        __m512i w[8];
        __m512 d, m = _mm512_setzero_ps();
        q_load_block(WT, S4, &src, S4 ? 0 : b * bs, live, idx, w, &d, &m);
        if (S4) q_src_advance(&src, bs);
        __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
        if (WT != TL_Q4_1) {
            acc0 = _mm512_set1_epi32(-(int32_t)is[2 * b] * off);
            acc1 = _mm512_set1_epi32(-(int32_t)is[2 * b + 1] * off);
        }
        for (int t = 0; t < 4; t++) acc0 = _mm512_dpbusd_epi32(acc0, w[t], _mm512_set1_epi32(xq[8 * b + t]));
        for (int t = 4; t < 8; t++) acc1 = _mm512_dpbusd_epi32(acc1, w[t], _mm512_set1_epi32(xq[8 * b + t]));
        y0 = _mm512_fmadd_ps(q_scale_dots(acc0, acc1, dx[2 * b], dx[2 * b + 1]), d, y0);
        if (WT == TL_Q4_1) y0 = _mm512_fmadd_ps(m, _mm512_set1_ps(sx[2 * b] + sx[2 * b + 1]), y0);
    }
    return y0;
}

/* n == 1: the same arithmetic as q_panel_tile with RN = 1, straight from the transposed
 * registers (no store / reload of the panel). */
TL_INLINE void q_gemv_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t nb = a->k / TL_QK;
    if (a->ldw > INT32_MAX / Q_R) { /* gather offsets are int32 */
        x86_q_block_scalar(WT, a, i0, i1, 0, 1);
        return;
    }
    for (int64_t i = i0; i < i1; i += Q_R) {
        const int nr = (int)TL_MIN((int64_t)Q_R, i1 - i);
        const uint8_t *rp[16];
        const __m512i idx = q_rows(a, i, nr, rp);
        const __mmask16 live = (__mmask16)((1u << nr) - 1);
        const x86_pf pf = x86_pf_next(a, i, i1, Q_R, nb); /* the next panel, from DRAM */
        const __m512 z = _mm512_setzero_ps();
        if (nr == Q_R) {
            _mm512_storeu_ps(a->y + i, q_gemv_blocks(WT, 1, a, q_src4(a, i), 0, nb, live, idx, &pf, z));
        } else {
            const q_src src = {rp, {NULL, NULL, NULL, NULL}, 0, 0};
            _mm512_mask_storeu_ps(a->y + i, live, q_gemv_blocks(WT, 0, a, src, 0, nb, live, idx, &pf, z));
        }
    }
}

/* ---- q4_0, n == 1: full panels, blocks in pairs, scales taken from the transposed bytes -----------
 * Two q4_0 blocks are 36 bytes, a whole number of dwords: dword 0 = (d0, qa0, qa1), 1..3 = qa2..13,
 * 4 = (qa14, qa15, d1), 5..8 = qb0..15. Transposing the pair's dwords (16-byte chunks at 0, 20 and
 * the dword at 16) hands over both scales in place of the 16 scalar loads per block of q_load_block:
 * d0 = low halves of dword 0, d1 = high halves of dword 4. Block a's quants then sit 2 bytes off the
 * activation's dword grid, so its activations are shifted to match (sa: 2 zero bytes, the 16 int8
 * values, 2 zero bytes, for the low and the high nibbles); the scale bytes meet those zeros. Every
 * int32 group dot, and every float operation after it, is the panel's: bit-identical to q_gemv_impl. */
#define Q4_0_PAIRS_SA_BYTES 40 /* per pair: 5 dwords for the low nibbles, 5 for the high */

/* The shifted activations of every even block: sa[40 p ..] for blocks 2p. */
static void q4_0_pairs_shift_acts(const uint8_t *xr, int64_t pairs, uint8_t *sa) {
    for (int64_t p = 0; p < pairs; p++) {
        const uint8_t *x = xr + 64 * p;
        uint8_t *o = sa + Q4_0_PAIRS_SA_BYTES * p;
        memset(o, 0, Q4_0_PAIRS_SA_BYTES);
        memcpy(o + 2, x, 16);
        memcpy(o + 22, x + 16, 16);
    }
}

/* One block's two int32 group dots (offset removed), scaled by q_scale_dots. */
TL_INLINE __m512 q4_0_pairs_block(const __m512i *w, int nw, const int32_t *xlo, const int32_t *xhi, int32_t is0,
                           int32_t is1, float dx0, float dx1) {
    const __m512i lo4 = _mm512_set1_epi8(0x0f);
    __m512i acc0 = _mm512_set1_epi32(-is0 * 8), acc1 = _mm512_set1_epi32(-is1 * 8);
    for (int t = 0; t < nw; t++) {
        acc0 = _mm512_dpbusd_epi32(acc0, _mm512_and_si512(w[t], lo4), _mm512_set1_epi32(xlo[t]));
        acc1 = _mm512_dpbusd_epi32(acc1, _mm512_and_si512(_mm512_srli_epi16(w[t], 4), lo4), _mm512_set1_epi32(xhi[t]));
    }
    return q_scale_dots(acc0, acc1, dx0, dx1);
}

/* Rows [i, i + 16) over blocks [0, 2 pairs): y0 += ... exactly as q_gemv_impl's loop. */
TL_INLINE __m512 q4_0_pairs_panel(const tl_gemm_args *a, int64_t i, int64_t pairs, const uint8_t *sa, const x86_pf *pf,
                           __m512 y0) {
    const int64_t k = a->k;
    const uint8_t *xr = a->act;
    const int32_t *xq = (const int32_t *)xr;
    const float *dx = x86_qa_d(xr, k);
    const int16_t *is = x86_qa_isum(xr, k);
    q_src R = q_src4(a, i);
    for (int64_t p = 0; p < pairs; p++) {
        x86_pf_block(pf, 2 * p);
        x86_pf_block(pf, 2 * p + 1);
        __m512i w[5], u[4], t4[4];
        q_transpose16(1, 0, &R, 0, w);  /* dwords 0..3 */
        q_transpose16(1, 1, &R, 16, t4); /* dword 4 */
        w[4] = t4[0];
        q_transpose16(1, 0, &R, 20, u); /* dwords 5..8 */
        q_src_advance(&R, 36);
        const __m512 d0 = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(w[0]));
        const __m512 d1 = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(w[4], 16)));
        const int32_t *s = (const int32_t *)(sa + Q4_0_PAIRS_SA_BYTES * p);
        const int64_t b = 2 * p;
        y0 = _mm512_fmadd_ps(q4_0_pairs_block(w, 5, s, s + 5, is[2 * b], is[2 * b + 1], dx[2 * b], dx[2 * b + 1]), d0, y0);
        y0 = _mm512_fmadd_ps(q4_0_pairs_block(u, 4, xq + 8 * (b + 1), xq + 8 * (b + 1) + 4, is[2 * b + 2], is[2 * b + 3],
                                       dx[2 * b + 2], dx[2 * b + 3]),
                             d1, y0);
    }
    return y0;
}

static void q4_0_gemv_16(const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t nb = a->k / TL_QK, pairs = nb / 2;
    uint8_t *sa = pairs > 0 && i1 - i0 >= Q_R ? (uint8_t *)tl_scratch((size_t)(pairs * Q4_0_PAIRS_SA_BYTES)) : NULL;
    if (!sa || a->ldw > INT32_MAX / Q_R) {
        q_gemv_impl(TL_Q4_0, a, i0, i1);
        return;
    }
    q4_0_pairs_shift_acts(a->act, pairs, sa);
    int64_t i = i0;
    for (; i + Q_R <= i1; i += Q_R) {
        const uint8_t *rp[16];
        const __m512i idx = q_rows(a, i, Q_R, rp);
        const x86_pf pf = x86_pf_next(a, i, i1, Q_R, nb);
        __m512 y0 = q4_0_pairs_panel(a, i, pairs, sa, &pf, _mm512_setzero_ps());
        if (nb % 2) { /* the last block alone, as q_gemv_impl does it */
            const q_src src = {rp, {NULL, NULL, NULL, NULL}, 0, 0};
            y0 = q_gemv_blocks(TL_Q4_0, 0, a, src, nb - 1, nb, (__mmask16)0xffff, idx, &pf, y0);
        }
        _mm512_storeu_ps(a->y + i, y0);
    }
    if (i < i1) q_gemv_impl(TL_Q4_0, a, i, i1); /* a ragged last panel */
}

/* ---- q8_0, n == 1: row by row, the panels' arithmetic, chosen by measured speed ---------------------
 * How fast DRAM serves decode depends on the access pattern, and on this VM the best pattern changes
 * with the host's memory load: one stream per thread (each row front to back) beat the 16-row panel by
 * 5-18 % in slow-memory periods and lost by 5-15 % in fast ones (2 threads, q8_0 5632x2048, measured).
 * q8_0_gemv_by_rows computes exactly what the panel computes for a row -- per block the exact int32 group dots
 * (two levels of pairwise lane sums after one vpdpbusd per 2 blocks), f = dot0 dx0 then fma(dot1, dx1, f),
 * and y = fma(f, d, y) block after block as a scalar chain, Q8_0_ROWS rows' chains interleaved -- so the two
 * are bit-identical and q8_0_gemv_16 may pick either per chunk: the one with the lower recent ns per
 * byte, trying the other every 16th chunk. Results never depend on the choice. */
#define Q8_0_ROWS 4

TL_INLINE __m512i q8_0_hadd_pairs(__m512i a, __m512i b) { /* pairwise lane sums: a's in lanes 0..7, b's in 8..15 */
    const __m512i ev = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i od = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_add_epi32(_mm512_permutex2var_epi32(a, ev, b), _mm512_permutex2var_epi32(a, od, b));
}

TL_INLINE __m512i q8_0_dots_2blocks(const uint8_t *w, int64_t b, const uint8_t *xq) { /* blocks b, b+1: lane dots */
    __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(w + b * TL_Q8_0_BYTES + 2)));
    v = _mm512_inserti64x4(v, _mm256_loadu_si256((const __m256i *)(w + (b + 1) * TL_Q8_0_BYTES + 2)), 1);
    v = _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), v, _mm512_load_si512((const void *)(xq + 32 * b)));
}

/* The panel's per-block f and the block scales d of row w into fb[nb], db[nb]. */
static void q8_0_row_terms(const uint8_t *w, const uint8_t *xr, int64_t k, float *fb, float *db) {
    const int64_t nb = k / TL_QK, ng8 = nb / 8;
    const float *dx = x86_qa_d(xr, k);
    const int16_t *is = x86_qa_isum(xr, k);
    for (int64_t g = 0; g < ng8; g++) {
        const int64_t b = 8 * g;
        const __m512i c0 = q8_0_hadd_pairs(q8_0_dots_2blocks(w, b, xr), q8_0_dots_2blocks(w, b + 2, xr));
        const __m512i c1 = q8_0_hadd_pairs(q8_0_dots_2blocks(w, b + 4, xr), q8_0_dots_2blocks(w, b + 6, xr));
        __m512i dot = q8_0_hadd_pairs(c0, c1); /* lane 2i + h: group h of block b + i; then the offset removed */
        dot = _mm512_sub_epi32(dot, _mm512_slli_epi32(_mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(is + 2 * b))), 7));
        const __m512 cf = _mm512_cvtepi32_ps(dot), dd = _mm512_loadu_ps(dx + 2 * b);
        const __m512 f = _mm512_fmadd_ps(_mm512_movehdup_ps(cf), _mm512_movehdup_ps(dd), _mm512_mul_ps(cf, dd));
        _mm256_storeu_ps(fb + b, _mm512_castps512_ps256(_mm512_maskz_compress_ps(0x5555, f)));
        /* the 8 fp16 scales sit 17 words apart in the group's first 256 bytes: two word permutes */
        const uint8_t *wg = w + b * TL_Q8_0_BYTES;
        const __m512i v0 = _mm512_loadu_si512((const void *)wg), v1 = _mm512_loadu_si512((const void *)(wg + 64));
        const __m512i v2 = _mm512_loadu_si512((const void *)(wg + 128)), v3 = _mm512_loadu_si512((const void *)(wg + 192));
        const __m512i lo = _mm512_permutex2var_epi16(v0, _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, 0x0033002200110000), v1);
        const __m512i hi = _mm512_permutex2var_epi16(v2, _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, 0x0037002600150004), v3);
        _mm256_storeu_ps(db + b, _mm256_cvtph_ps(_mm_unpacklo_epi64(_mm512_castsi512_si128(lo), _mm512_castsi512_si128(hi))));
    }
    for (int64_t b = 8 * ng8; b < nb; b++) { /* the last nb % 8 blocks, scalar, the same operations */
        const int8_t *q = (const int8_t *)(w + b * TL_Q8_0_BYTES + 2), *x = (const int8_t *)xr + 32 * b;
        int32_t d0 = 0, d1 = 0;
        for (int t = 0; t < 16; t++) {
            d0 += (int32_t)q[t] * x[t];
            d1 += (int32_t)q[16 + t] * x[16 + t];
        }
        const float f0 = (float)d0 * dx[2 * b];
        fb[b] = fmaf((float)d1, dx[2 * b + 1], f0);
        db[b] = tl_f16_to_f32(tl_load_u16(w + b * TL_Q8_0_BYTES));
    }
}

/* Rows [i0, i1), or 0 if the scratch cannot be had. */
static int q8_0_gemv_by_rows(const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t k = a->k, nb = k / TL_QK;
    float *buf = (float *)x86_scratch((size_t)(2 * Q8_0_ROWS * nb) * sizeof(float));
    if (!buf) return 0;
    for (int64_t i = i0; i < i1; i += Q8_0_ROWS) {
        const int nr = (int)TL_MIN((int64_t)Q8_0_ROWS, i1 - i);
        for (int r = 0; r < nr; r++) q8_0_row_terms(a->w + (i + r) * a->ldw, a->act, k, buf + 2 * r * nb, buf + (2 * r + 1) * nb);
        float y[Q8_0_ROWS] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (nr == Q8_0_ROWS) {
            const float *f0 = buf, *d0 = buf + nb, *f1 = buf + 2 * nb, *d1 = buf + 3 * nb;
            const float *f2 = buf + 4 * nb, *d2 = buf + 5 * nb, *f3 = buf + 6 * nb, *d3 = buf + 7 * nb;
            for (int64_t b = 0; b < nb; b++) { /* four independent chains */
                y[0] = fmaf(f0[b], d0[b], y[0]);
                y[1] = fmaf(f1[b], d1[b], y[1]);
                y[2] = fmaf(f2[b], d2[b], y[2]);
                y[3] = fmaf(f3[b], d3[b], y[3]);
            }
        } else {
            for (int r = 0; r < nr; r++)
                for (int64_t b = 0; b < nb; b++) y[r] = fmaf(buf[2 * r * nb + b], buf[(2 * r + 1) * nb + b], y[r]);
        }
        for (int r = 0; r < nr; r++) a->y[i + r] = y[r];
    }
    return 1;
}

static uint64_t q8_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The context's q8_gemv option forces one path (tests compare them); AUTO picks by the context's
 * measurements. */
static void q8_0_gemv_16(const tl_gemm_args *a, int64_t i0, int64_t i1) {
    tl_path_pick *pick = &a->ctx->q8_gemv;
    const int mode = a->ctx->opt.q8_gemv;
    int v = mode == TL_Q8_GEMV_ROWS;
    if (mode == TL_Q8_GEMV_AUTO) {
        const uint32_t t = atomic_fetch_add_explicit(&pick->tick, 1, memory_order_relaxed) % 16;
        const uint32_t r0 = atomic_load_explicit(&pick->rate[0], memory_order_relaxed);
        const uint32_t r1 = atomic_load_explicit(&pick->rate[1], memory_order_relaxed);
        v = t == 0 ? 0 : t == 8 ? 1 : (r1 != 0 && r1 < r0) ? 1 : 0;
    }
    const uint64_t t0 = q8_now_ns();
    if (!(v == 1 && q8_0_gemv_by_rows(a, i0, i1))) {
        v = 0;
        q_gemv_impl(TL_Q8_0, a, i0, i1);
    }
    const uint64_t ns = q8_now_ns() - t0, bytes = (uint64_t)(i1 - i0) * (uint64_t)a->ldw;
    if (bytes >= 16384) {
        const uint64_t x = TL_MIN(ns * 16384 / bytes, (uint64_t)UINT32_MAX);
        const uint32_t old = atomic_load_explicit(&pick->rate[v], memory_order_relaxed);
        atomic_store_explicit(&pick->rate[v], old ? (uint32_t)((7 * (uint64_t)old + x) / 8) : (uint32_t)x, memory_order_relaxed);
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
            y[j] = _mm512_fmadd_ps(q_scale_dots(acc0, acc1, dx[2 * b], dx[2 * b + 1]), d, y[j]);
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
        q_pack(WT, 0, a, i, nr, buf);
        q_panel_tokens(WT, a, buf, i, nr, j0, j1);
    }
}

#define Q_FUNCS(NAME, WT)                                                                                   \
    static void NAME##_block_16x8(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {  \
        q_block_impl(WT, a, i0, i1, j0, j1);                                                                \
    }                                                                                                       \
    static void NAME##_tile_16x8(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {           \
        q_block_impl(WT, a, i0, i0 + rm, j0, j0 + rn);                                                      \
    }
Q_FUNCS(q8_0, TL_Q8_0)
Q_FUNCS(q4_0, TL_Q4_0)
Q_FUNCS(q4_1, TL_Q4_1)
static void q4_1_gemv_16(const tl_gemm_args *a, int64_t i0, int64_t i1) { q_gemv_impl(TL_Q4_1, a, i0, i1); }

#include "avx512_q8_small.h" /* 2 <= n <= 16: the weights streamed once, tokens in registers */
#include "avx512_q8_amx.h"   /* n >= Q_AMX_MIN_N on AMX int8 tiles, where the CPU and the context allow */

/* ---- table entries: q8_0 and q4_0 have their own n == 1 paths (above); their _amx twins hand prompts
 * (n >= Q_AMX_MIN_N) to the AMX tiles (same bits) ------------------------------------------------- */
#ifdef Q_AMX
#define Q_BIG(NAME) .big = &NAME##_amx_16x16, .big_n = Q_AMX_MIN_N
#else
#define Q_BIG(NAME) .big = NULL
#endif
#define Q_TABLE(NAME, SUFFIX, ...)                                                                           \
    const tl_ukernel tl_avx512_##NAME##_16x8##SUFFIX = {.rm = Q_R, .rn = Q_RN, .tile = NAME##_tile_16x8,      \
                                                .gemv_rows = Q_R, .gemv = NAME##_gemv_16,                     \
                                                .block = NAME##_block_16x8,                                   \
                                                .small = NAME##_small_16, .small_n = Q_SMALL_N,               \
                                                .act_row_bytes = x86_qa_row_bytes,                            \
                                                .act_prepare = tl_avx512_q8_act_prepare, __VA_ARGS__};
Q_TABLE(q8_0, , .big = NULL)
Q_TABLE(q4_0, , .big = NULL)
Q_TABLE(q4_1, , .big = NULL)
Q_TABLE(q8_0, _amx, Q_BIG(q8_0))
Q_TABLE(q4_0, _amx, Q_BIG(q4_0))
