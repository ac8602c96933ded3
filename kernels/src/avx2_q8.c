/* avx2_q8.c — AVX2 + FMA + F16C micro-kernels for the 32-block weights q8_0, q4_0 and q4_1, and the
 * vectorised preparation of the shared q8 activations (used by avx2_kquants.c's kernels too).
 *
 * 8-row panels packed into thread-local scratch, row in lane: per 32-block 8 ymm of 8 rows x 4
 * bytes. A token's block dot is 8 vpmaddubsw against 4-byte broadcasts of its int8 activations,
 * then vpmaddwd with ones -> 8 rows' int32 dots in 8 lanes.
 *   q4_0 / q4_1: weights as the raw nibble (unsigned 0..15): every 16-bit pair sum is at most
 *     2*15*127 and the 4 steps of a 16-value activation group at most 15240 < 32767, so the
 *     int16 sums are accumulated over the group and widened once; q4_0's -8 offset is removed
 *     exactly as 8 * isum_x in int32.
 *   q8_0: sign trick (|w| unsigned, x with w's sign; pair sums <= 2*128*127 = 32512, no
 *     saturation), widened every step.
 * Activations carry one scale per 16 values (x86_common.h), so a 32-block contributes
 * d_w * (d_x0 * dot(0..15) + d_x1 * dot(16..31)) (+ m_w * (s_x0 + s_x1) for q4_1) in f32,
 * blocks in order.
 */
#include <float.h>
#include <immintrin.h>
#include <math.h>

#include "avx2.h"
#include "x86_common.h"

/* ---- quantized activations (x86_common.h layout), vectorised: one 32-block = 4 ymm ------------- */
/* q = roundf(v) for |v| <= 127 (half away from zero), exactly: t = trunc(v), v - t is exact. */
TL_INLINE __m256i round_half_away(__m256 v) {
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 fr = _mm256_sub_ps(v, t);
    __m256i q = _mm256_cvttps_epi32(t);
    /* compare masks are all-ones (-1) where true */
    q = _mm256_sub_epi32(q, _mm256_castps_si256(_mm256_cmp_ps(fr, _mm256_set1_ps(0.5f), _CMP_GE_OQ)));
    q = _mm256_add_epi32(q, _mm256_castps_si256(_mm256_cmp_ps(fr, _mm256_set1_ps(-0.5f), _CMP_LE_OQ)));
    return q;
}

void tl_avx2_q8_act_prepare(const float *x, int64_t ldx, int64_t j0, int64_t j1, int64_t k, uint8_t *act,
                            int64_t ldact) {
    const int64_t ng = k / X86_QG;
    const __m256 lim = _mm256_set1_ps(127.0f), nlim = _mm256_set1_ps(-127.0f);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 fmax = _mm256_set1_ps(FLT_MAX);
    for (int64_t j = j0; j < j1; j++) {
        const float *xr = x + j * ldx;
        uint8_t *row = act + j * ldact;
        float *dd = (float *)(row + k);
        float *ss = dd + ng;
        int16_t *is = (int16_t *)(ss + ng);
        for (int64_t g = 0; g < ng; g++) {
            __m256 xv[2], am = _mm256_setzero_ps(), nf = _mm256_setzero_ps();
            for (int u = 0; u < 2; u++) {
                xv[u] = _mm256_loadu_ps(xr + 16 * g + 8 * u);
                const __m256 a = _mm256_and_ps(xv[u], absmask);
                am = _mm256_max_ps(a, am);                                /* nan skipped here... */
                nf = _mm256_or_ps(nf, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ)); /* ...and flagged (inf too) */
            }
            __m128 h = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1));
            h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            h = _mm_max_ss(h, _mm_movehdup_ps(h));
            const float amax = _mm_cvtss_f32(h);
            /* a non-finite group: d = NaN, q = 0 (act.c's rule; it reports TL_ENONFINITE) */
            const float d = _mm256_testz_ps(nf, nf) ? amax / 127.0f : NAN;
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            const __m256 vid = _mm256_set1_ps(id);
            __m256i q[2];
            for (int u = 0; u < 2; u++) {
                __m256 v = _mm256_mul_ps(xv[u], vid);
                v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q)); /* nan -> 0 */
                v = _mm256_max_ps(_mm256_min_ps(v, lim), nlim);
                q[u] = round_half_away(v);
            }
            __m256i sum = _mm256_add_epi32(q[0], q[1]);
            /* 16 int32 -> 16 int8 in order */
            __m256i p16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xD8);
            __m128i p8 = _mm_packs_epi16(_mm256_castsi256_si128(p16), _mm256_extracti128_si256(p16, 1));
            _mm_storeu_si128((__m128i *)(row + 16 * g), p8);
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
            const int isum = _mm_cvtsi128_si32(s4);
            dd[g] = d;
            ss[g] = d * (float)isum;
            is[g] = (int16_t)isum;
        }
        int64_t used = k + 10 * ng;
        if (ldact > used) memset(row + used, 0, (size_t)(ldact - used));
    }
}

/* ---- quantized weights: 8-row panels, row in lane --------------------------------------------- */
#define Q_R 8
#define Q_RN 4
#define Q_BLK_BYTES (256 + 256 + 32 + 32) /* 8 x 32 B quants, (q8_0: 8 x 32 B signed), 8 d, 8 m */

/* 8 rows' 16-byte chunks (row r at rp[r] + off) transposed to 4 ymm: out[t] lane r = dword t of
 * row r. A_q holds rows q and q+4 in its 128-bit lanes, so after the 32- and 64-bit unpacks
 * lane 4l + q of out[t] is row 4l + q (natural order). */
TL_INLINE void q_transpose8(const uint8_t *const *rp, int64_t off, __m256i out[4]) {
    __m256i A[4];
    for (int q = 0; q < 4; q++)
        A[q] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(rp[q] + off))),
                                       _mm_loadu_si128((const __m128i *)(rp[q + 4] + off)), 1);
    __m256i T0 = _mm256_unpacklo_epi32(A[0], A[1]), T1 = _mm256_unpackhi_epi32(A[0], A[1]);
    __m256i T2 = _mm256_unpacklo_epi32(A[2], A[3]), T3 = _mm256_unpackhi_epi32(A[2], A[3]);
    out[0] = _mm256_unpacklo_epi64(T0, T2);
    out[1] = _mm256_unpackhi_epi64(T0, T2);
    out[2] = _mm256_unpacklo_epi64(T1, T3);
    out[3] = _mm256_unpackhi_epi64(T1, T3);
}

/* Pack rows [r0, r0 + nr) (nr <= 8; dead rows repeat row r0 with zero scales) into buf. */
TL_INLINE void q_pack(const int WT, const tl_gemm_args *a, int64_t r0, int nr, uint8_t *buf) {
    const int64_t nb = a->k / TL_QK;
    const int bs = x86_q_bytes(WT);
    const uint8_t *rp[8];
    for (int r = 0; r < 8; r++) rp[r] = a->w + (r0 + (r < nr ? r : 0)) * a->ldw;
    const __m256i lo4 = _mm256_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; b++) {
        const int64_t o = b * bs;
        uint8_t *out = buf + b * Q_BLK_BYTES;
        float d[8], m[8];
        for (int r = 0; r < 8; r++) {
            d[r] = r < nr ? tl_f16_to_f32(tl_load_u16(rp[r] + o)) : 0.0f;
            m[r] = (WT == TL_Q4_1 && r < nr) ? tl_f16_to_f32(tl_load_u16(rp[r] + o + 2)) : 0.0f;
        }
        _mm256_store_ps((float *)(out + 512), _mm256_loadu_ps(d));
        if (WT == TL_Q4_1) _mm256_store_ps((float *)(out + 544), _mm256_loadu_ps(m));
        __m256i u[4];
        if (WT == TL_Q8_0) {
            for (int h = 0; h < 2; h++) {
                q_transpose8(rp, o + 2 + 16 * h, u);
                for (int t = 0; t < 4; t++) {
                    _mm256_store_si256((__m256i *)(out + 32 * (4 * h + t)), _mm256_abs_epi8(u[t]));
                    _mm256_store_si256((__m256i *)(out + 256 + 32 * (4 * h + t)), u[t]);
                }
            }
        } else {
            q_transpose8(rp, o + (WT == TL_Q4_0 ? 2 : 4), u);
            for (int t = 0; t < 4; t++) {
                _mm256_store_si256((__m256i *)(out + 32 * t), _mm256_and_si256(u[t], lo4));
                _mm256_store_si256((__m256i *)(out + 32 * (t + 4)), _mm256_and_si256(_mm256_srli_epi16(u[t], 4), lo4));
            }
        }
    }
}

/* A block's two int32 group dots scaled by the activation's group scales: f = dot0 dx0, then
 * fma(dot1, dx1, f) -- one order for the panel tiles and the gemv, so their results are the same bits. */
TL_INLINE __m256 q_scale_dots(__m256i acc0, __m256i acc1, float dx0, float dx1) {
    const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(acc0), _mm256_set1_ps(dx0));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc1), _mm256_set1_ps(dx1), f);
}

/* The 8 rows' f16 values at rp[r] + off as f32 (F16C: exact, like tl_f16_to_f32). */
TL_INLINE __m256 q_f16x8(const uint8_t *const *rp, int64_t off) {
    return _mm256_cvtph_ps(_mm_set_epi16((short)tl_load_u16(rp[7] + off), (short)tl_load_u16(rp[6] + off),
                                         (short)tl_load_u16(rp[5] + off), (short)tl_load_u16(rp[4] + off),
                                         (short)tl_load_u16(rp[3] + off), (short)tl_load_u16(rp[2] + off),
                                         (short)tl_load_u16(rp[1] + off), (short)tl_load_u16(rp[0] + off)));
}

TL_INLINE void q_panel_tile(const int WT, const int RN, const tl_gemm_args *a, const uint8_t *panel, int64_t i0,
                            int nr, int64_t j0) {
    const int64_t k = a->k, nb = k / TL_QK;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 y[Q_RN];
    const uint8_t *xr[Q_RN];
    for (int j = 0; j < RN; j++) {
        y[j] = _mm256_setzero_ps();
        xr[j] = a->act + (j0 + j) * a->ldact;
    }
    const uint8_t *P = panel;
    for (int64_t b = 0; b < nb; b++, P += Q_BLK_BYTES) {
        /* two 16-value activation groups per 32-block: acc[0] = elements 0..15 (steps 0..3),
         * acc[1] = 16..31 (steps 4..7) */
        __m256i acc[2][Q_RN];
        if (WT == TL_Q8_0) {
            for (int h = 0; h < 2; h++)
                for (int j = 0; j < RN; j++) acc[h][j] = _mm256_setzero_si256();
            for (int t = 0; t < 8; t++) {
                const __m256i wa = _mm256_load_si256((const __m256i *)(P + 32 * t));
                const __m256i ws = _mm256_load_si256((const __m256i *)(P + 256 + 32 * t));
                for (int j = 0; j < RN; j++) {
                    __m256i xb = _mm256_set1_epi32(((const int32_t *)(xr[j] + 32 * b))[t]);
                    __m256i p16 = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(xb, ws));
                    acc[t >> 2][j] = _mm256_add_epi32(acc[t >> 2][j], _mm256_madd_epi16(p16, ones));
                }
            }
        } else {
            __m256i a16[2][Q_RN];
            for (int h = 0; h < 2; h++)
                for (int j = 0; j < RN; j++) a16[h][j] = _mm256_setzero_si256();
            for (int t = 0; t < 8; t++) {
                const __m256i wv = _mm256_load_si256((const __m256i *)(P + 32 * t));
                for (int j = 0; j < RN; j++) {
                    __m256i xb = _mm256_set1_epi32(((const int32_t *)(xr[j] + 32 * b))[t]);
                    a16[t >> 2][j] = _mm256_add_epi16(a16[t >> 2][j], _mm256_maddubs_epi16(wv, xb));
                }
            }
            for (int h = 0; h < 2; h++)
                for (int j = 0; j < RN; j++) {
                    acc[h][j] = _mm256_madd_epi16(a16[h][j], ones);
                    if (WT == TL_Q4_0) {
                        const int16_t *is = x86_qa_isum(xr[j], k);
                        acc[h][j] = _mm256_sub_epi32(acc[h][j], _mm256_set1_epi32((int32_t)is[2 * b + h] * 8));
                    }
                }
        }
        const __m256 d = _mm256_load_ps((const float *)(P + 512));
        for (int j = 0; j < RN; j++) {
            const float *dx = x86_qa_d(xr[j], k);
            y[j] = _mm256_fmadd_ps(q_scale_dots(acc[0][j], acc[1][j], dx[2 * b], dx[2 * b + 1]), d, y[j]);
            if (WT == TL_Q4_1) {
                const float *sx = x86_qa_s(xr[j], k);
                y[j] = _mm256_fmadd_ps(_mm256_load_ps((const float *)(P + 544)), _mm256_set1_ps(sx[2 * b] + sx[2 * b + 1]),
                                       y[j]);
            }
        }
    }
    for (int j = 0; j < RN; j++) {
        float *yp = a->y + (j0 + j) * a->ldy + i0;
        if (nr == Q_R) {
            _mm256_storeu_ps(yp, y[j]);
        } else {
            float s[8];
            _mm256_storeu_ps(s, y[j]);
            for (int i = 0; i < nr; i++) yp[i] = s[i];
        }
    }
}

TL_INLINE void q_block_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    uint8_t *buf = x86_scratch((size_t)(a->k / TL_QK) * Q_BLK_BYTES);
    if (!buf) {
        x86_q_block_scalar(WT, a, i0, i1, j0, j1);
        return;
    }
    for (int64_t i = i0; i < i1; i += Q_R) {
        int nr = (int)TL_MIN((int64_t)Q_R, i1 - i);
        if (j1 - j0 == 1 && i + Q_R < a->m) /* gemv: the next panel from DRAM (x86_common.h) */
            x86_pf_rows(a, i + Q_R, TL_MIN(i + 2 * Q_R, a->m));
        q_pack(WT, a, i, nr, buf);
        int64_t j = j0;
        for (; j + Q_RN <= j1; j += Q_RN) q_panel_tile(WT, Q_RN, a, buf, i, nr, j);
        switch ((int)(j1 - j)) {
        case 1: q_panel_tile(WT, 1, a, buf, i, nr, j); break;
        case 2: q_panel_tile(WT, 2, a, buf, i, nr, j); break;
        case 3: q_panel_tile(WT, 3, a, buf, i, nr, j); break;
        default: break;
        }
    }
}

/* ---- n == 1: straight from the transposed registers ----------------------------------------------
 * The panel path packs each 8-row panel into scratch (scales converted in software, one row at a
 * time) and reads it back for one token. For one token the gemv does q_panel_tile's arithmetic with
 * RN = 1 on the transposed registers directly, scales by F16C (exact, like the software conversion),
 * so a token's outputs are the same bits alone and in a batch. Full 8-row panels only; a ragged last
 * panel goes the panel way. */
TL_INLINE void q_gemv_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t k = a->k, nb = k / TL_QK;
    const int bs = x86_q_bytes(WT);
    const __m256i ones = _mm256_set1_epi16(1), lo4 = _mm256_set1_epi8(0x0f);
    const uint8_t *xr = a->act;
    const int32_t *xq = (const int32_t *)xr;
    const float *dx = x86_qa_d(xr, k), *sx = x86_qa_s(xr, k);
    const int16_t *is = x86_qa_isum(xr, k);
    int64_t i = i0;
    for (; i + Q_R <= i1; i += Q_R) {
        const uint8_t *rp[8];
        for (int r = 0; r < 8; r++) rp[r] = a->w + (i + r) * a->ldw;
        if (i + Q_R < a->m) x86_pf_rows(a, i + Q_R, TL_MIN(i + 2 * Q_R, a->m)); /* the next panel, from DRAM */
        __m256 y = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const int64_t o = b * bs;
            const __m256 d = q_f16x8(rp, o);
            __m256i acc[2];
            if (WT == TL_Q8_0) {
                acc[0] = acc[1] = _mm256_setzero_si256();
                __m256i u[4];
                for (int h = 0; h < 2; h++) {
                    q_transpose8(rp, o + 2 + 16 * h, u);
                    for (int t = 0; t < 4; t++) {
                        const __m256i xb = _mm256_set1_epi32(xq[8 * b + 4 * h + t]);
                        const __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(u[t]), _mm256_sign_epi8(xb, u[t]));
                        acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(p16, ones));
                    }
                }
            } else {
                __m256i u[4], a16[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
                q_transpose8(rp, o + (WT == TL_Q4_0 ? 2 : 4), u);
                for (int t = 0; t < 8; t++) { /* t < 4: low nibbles (values 4t..), else high (16 + 4(t-4)..) */
                    const __m256i wv = t < 4 ? _mm256_and_si256(u[t], lo4) : _mm256_and_si256(_mm256_srli_epi16(u[t - 4], 4), lo4);
                    a16[t >> 2] = _mm256_add_epi16(a16[t >> 2], _mm256_maddubs_epi16(wv, _mm256_set1_epi32(xq[8 * b + t])));
                }
                for (int h = 0; h < 2; h++) {
                    acc[h] = _mm256_madd_epi16(a16[h], ones);
                    if (WT == TL_Q4_0) acc[h] = _mm256_sub_epi32(acc[h], _mm256_set1_epi32((int32_t)is[2 * b + h] * 8));
                }
            }
            y = _mm256_fmadd_ps(q_scale_dots(acc[0], acc[1], dx[2 * b], dx[2 * b + 1]), d, y);
            if (WT == TL_Q4_1) {
                y = _mm256_fmadd_ps(q_f16x8(rp, o + 2), _mm256_set1_ps(sx[2 * b] + sx[2 * b + 1]), y);
            }
        }
        _mm256_storeu_ps(a->y + i, y);
    }
    if (i < i1) q_block_impl(WT, a, i, i1, 0, 1); /* a ragged last panel */
}

#define Q_FUNCS(NAME, WT)                                                                                   \
    static void NAME##_block_8x4(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {   \
        q_block_impl(WT, a, i0, i1, j0, j1);                                                                \
    }                                                                                                       \
    static void NAME##_tile_8x4(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {            \
        q_block_impl(WT, a, i0, i0 + rm, j0, j0 + rn);                                                      \
    }                                                                                                       \
    static void NAME##_gemv_8(const tl_gemm_args *a, int64_t i0, int64_t i1) { q_gemv_impl(WT, a, i0, i1); } \
    const tl_ukernel tl_avx2_##NAME##_8x4 = {.rm = Q_R, .rn = Q_RN, .tile = NAME##_tile_8x4, .gemv_rows = Q_R,  \
                                             .gemv = NAME##_gemv_8, .block = NAME##_block_8x4,                  \
                                             .act_row_bytes = x86_qa_row_bytes,                                \
                                             .act_prepare = tl_avx2_q8_act_prepare};
Q_FUNCS(q8_0, TL_Q8_0)
Q_FUNCS(q4_0, TL_Q4_0)
Q_FUNCS(q4_1, TL_Q4_1)
