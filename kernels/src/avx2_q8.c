/* avx2_q8.c — AVX2 + FMA + F16C micro-kernels for the 32-block weights q8_0, q4_0 and q4_1, and the
 * vectorised preparation of the shared q8 activations (used by avx2_kquants.c's kernels too).
 *
 * 8-row panels packed into thread-local scratch, row in lane: per 32-block 8 ymm of 8 rows x 4
 * bytes. A token's block dot is 8 vpmaddubsw against 4-byte broadcasts of its int8 activations,
 * then vpmaddwd with ones -> 8 rows' int32 dots in 8 lanes.
 *   q4_0 / q4_1: weights as the raw nibble (unsigned 0..15): every 16-bit pair sum is at most
 *     2*15*127 and the 4 steps of a 16-value activation group at most 15240, so the int16 sums are
 *     accumulated over the group and widened once; q4_0's -8 offset is removed exactly as -8 * isum_x,
 *     added to those int16 sums before the widening (q_dot_u4n: at most 31496 < 32767).
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

/* Built twice: as the avx2 kernels, and #included by avxvnni_q8.c (compiled with -mavxvnni) as the
 * avxvnni ones, where Q_VNNI makes every u8 x s8 dot one vpdpbusd (int32 accumulation) instead of
 * vpmaddubsw + vpmaddwd. The int32 group dots are exact either way, so both give the same bits. */
#ifndef Q_VNNI
#define Q_VNNI 0
#endif
#if Q_VNNI
#define Q_NAME(n) tl_avxvnni_##n
#else
#define Q_NAME(n) tl_avx2_##n
#endif

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
#if Q_VNNI /* w + 128, unsigned (q_dot_s8) */
                    _mm256_store_si256((__m256i *)(out + 32 * (4 * h + t)), _mm256_xor_si256(u[t], _mm256_set1_epi8((char)0x80)));
#else
                    _mm256_store_si256((__m256i *)(out + 32 * (4 * h + t)), _mm256_abs_epi8(u[t]));
                    _mm256_store_si256((__m256i *)(out + 256 + 32 * (4 * h + t)), u[t]);
#endif
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

/* Lane r = the dword at rp[r] + off (the 16 bytes from there must be in the row): one column of
 * q_transpose8, for the block heads (f16 scales) of 8 rows without 8 scalar loads and inserts. */
TL_INLINE __m256i q_dw8(const uint8_t *const *rp, int64_t off) {
    __m256i A[4];
    for (int q = 0; q < 4; q++)
        A[q] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(rp[q] + off))),
                                       _mm_loadu_si128((const __m128i *)(rp[q + 4] + off)), 1);
    return _mm256_unpacklo_epi64(_mm256_unpacklo_epi32(A[0], A[1]), _mm256_unpacklo_epi32(A[2], A[3]));
}

/* The f16 in the low half of each lane of lo and in the high half of each lane of hi, as f32 (F16C:
 * exact, like tl_f16_to_f32). */
TL_INLINE void q_f16_halves(__m256i lo, __m256i hi, __m256 *flo, __m256 *fhi) {
    __m256i p = _mm256_packus_epi32(_mm256_and_si256(lo, _mm256_set1_epi32(0xffff)), _mm256_srli_epi32(hi, 16));
    p = _mm256_permute4x64_epi64(p, 0xD8); /* lo's 8 halves | hi's 8 halves, rows in order */
    *flo = _mm256_cvtph_ps(_mm256_castsi256_si128(p));
    *fhi = _mm256_cvtph_ps(_mm256_extracti128_si256(p, 1));
}

/* Exact offsets of the offset tricks (q4_0's -8 and avxvnni q8_0's +128) enter a group dot as its start
 * value s0: avx2 (q_dot_u4n) adds it to the int16 sums of the low halves of the dwords, so s0 is the
 * int16 offset zero-extended in every dword; avxvnni starts the int32 accumulator there, s0 = the int32
 * offset in every dword. Made either from the token's isum pair or loaded from q_offsets' array. */
#if Q_VNNI
TL_INLINE int32_t q_off_word(int32_t off) { return off; }
#else
TL_INLINE int32_t q_off_word(int32_t off) { return (int32_t)(uint16_t)(int16_t)off; }
#endif

/* The isum pair of 16-value groups 2b, 2b + 1 (isum_0 | isum_1 << 16) in every dword. */
TL_INLINE __m256i q_isum_pair(const int16_t *is, int64_t b) { return _mm256_set1_epi32((int32_t)tl_load_u32(is + 2 * b)); }

/* s0 of group h of a block from its isum pair ip: mul * isum_h (mul -8 or -128). */
TL_INLINE __m256i q_off_ip(__m256i ip, int h, int mul) {
    const __m256i c = _mm256_set1_epi32(h ? (int32_t)((uint32_t)(uint16_t)mul << 16) : (int32_t)(uint16_t)mul);
#if Q_VNNI
    return _mm256_madd_epi16(ip, c);
#else
    /* (mul * isum_h in half h; the halves are added by vpmaddwd, so either half will do) */
    return _mm256_mullo_epi16(ip, c);
#endif
}

/* One 16-value group of unsigned 4-bit weights (w[0..NS-1], rows in lanes, 4 values each) against a
 * token's activation dwords xq[0..NS-1], exact in int32, plus the start value s0 if OFF. avx2: NS
 * vpmaddubsw steps summed in int16, s0 added, then vpmaddwd with ones adds each dword's two halves.
 * int16 bound: each half of a dword sums 8 products (NS = 5 only where one dword's weights are zero
 * bytes) of at most 15 * 127, plus |s0| <= 8 * 16 * 127: 31496 < 32767; int16 adds wrap, so their
 * order does not matter. avxvnni: NS vpdpbusd from s0. */
TL_INLINE __m256i q_dot_u4n(const int OFF, const int NS, const __m256i *w, const int32_t *xq, __m256i s0) {
#if Q_VNNI
    __m256i acc = OFF ? s0 : _mm256_setzero_si256();
    for (int t = 0; t < NS; t++) acc = _mm256_dpbusd_avx_epi32(acc, w[t], _mm256_set1_epi32(xq[t]));
    return acc;
#else
    __m256i p0 = _mm256_add_epi16(_mm256_maddubs_epi16(w[0], _mm256_set1_epi32(xq[0])),
                                  _mm256_maddubs_epi16(w[1], _mm256_set1_epi32(xq[1])));
    __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(w[2], _mm256_set1_epi32(xq[2])),
                                  _mm256_maddubs_epi16(w[3], _mm256_set1_epi32(xq[3])));
    if (NS == 5) p1 = _mm256_add_epi16(p1, _mm256_maddubs_epi16(w[4], _mm256_set1_epi32(xq[4])));
    if (OFF) p0 = _mm256_add_epi16(p0, s0);
    return _mm256_madd_epi16(_mm256_add_epi16(p0, p1), _mm256_set1_epi16(1));
#endif
}
#define q_dot_u4(OFF, w, xq, s0) q_dot_u4n(OFF, 4, w, xq, s0)

/* q8_0: one 16-value group (4 steps) of signed weights against a token's 4 activation dwords, exact
 * int32. avx2: w holds |w| and ws the signed weights: vpmaddubsw(|w|, x with w's sign) (sign trick: pair
 * sums <= 2 * 128 * 127, no saturation), widened every step (s0 unused). avxvnni: w holds w + 128
 * (unsigned; ws unused), and s0 = -128 * isum_h removes that offset exactly. */
TL_INLINE __m256i q_dot_s8(const __m256i *w, const __m256i *ws, const int32_t *xq, __m256i s0) {
#if Q_VNNI
    (void)ws;
    __m256i acc = s0;
    for (int t = 0; t < 4; t++) acc = _mm256_dpbusd_avx_epi32(acc, w[t], _mm256_set1_epi32(xq[t]));
    return acc;
#else
    (void)s0;
    __m256i acc = _mm256_setzero_si256();
    for (int t = 0; t < 4; t++) {
        const __m256i p = _mm256_maddubs_epi16(w[t], _mm256_sign_epi8(_mm256_set1_epi32(xq[t]), ws[t]));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
    }
    return acc;
#endif
}

/* The offset of each weight type's trick per activation value sum (0: none). */
TL_INLINE int q_off_mul(const int WT) { return WT == TL_Q4_0 ? -8 : (Q_VNNI && WT == TL_Q8_0) ? -128 : 0; }

/* Prompt path: the start values of tokens [j0, j1), once per block call (one broadcast load per group in
 * the tile instead of making them there): off[(j - j0) * ng + g] = q_off_word(mul * isum_g). */
static void q_offsets(const tl_gemm_args *a, int mul, int64_t j0, int64_t j1, int32_t *off) {
    const int64_t ng = a->k / X86_QG;
    for (int64_t j = j0; j < j1; j++) {
        const int16_t *is = x86_qa_isum(a->act + j * a->ldact, a->k);
        for (int64_t g = 0; g < ng; g++) off[(j - j0) * ng + g] = q_off_word(mul * (int32_t)is[g]);
    }
}

TL_INLINE void q_panel_tile(const int WT, const int RN, const tl_gemm_args *a, const uint8_t *panel, int64_t i0,
                            int nr, int64_t j0, const int32_t *off) {
    const int64_t k = a->k, nb = k / TL_QK;
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
        const __m256i *W = (const __m256i *)P;
        for (int j = 0; j < RN; j++) {
            const int32_t *xq = (const int32_t *)(xr[j] + 32 * b);
            __m256i s0 = _mm256_setzero_si256(), s1 = s0;
            if (q_off_mul(WT)) {
                s0 = _mm256_set1_epi32(off[j * (k / X86_QG) + 2 * b]);
                s1 = _mm256_set1_epi32(off[j * (k / X86_QG) + 2 * b + 1]);
            }
            if (WT == TL_Q8_0) {
                acc[0][j] = q_dot_s8(W, W + 8, xq, s0);
                acc[1][j] = q_dot_s8(W + 4, W + 12, xq + 4, s1);
            } else {
                acc[0][j] = q_dot_u4(WT == TL_Q4_0, W, xq, s0);
                acc[1][j] = q_dot_u4(WT == TL_Q4_0, W + 4, xq + 4, s1);
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
    const size_t panel = (size_t)(a->k / TL_QK) * Q_BLK_BYTES;
    const size_t offs = q_off_mul(WT) ? (size_t)((j1 - j0) * (a->k / X86_QG)) * 4 : 0;
    uint8_t *buf = x86_scratch(panel + offs);
    if (!buf) {
        x86_q_block_scalar(WT, a, i0, i1, j0, j1);
        return;
    }
    int32_t *off = (int32_t *)(buf + panel);
    if (offs) q_offsets(a, q_off_mul(WT), j0, j1, off);
    for (int64_t i = i0; i < i1; i += Q_R) {
        int nr = (int)TL_MIN((int64_t)Q_R, i1 - i);
        if (j1 - j0 == 1 && i + Q_R < a->m) /* gemv: the next panel from DRAM (x86_common.h) */
            x86_pf_rows(a, i + Q_R, TL_MIN(i + 2 * Q_R, a->m));
        q_pack(WT, a, i, nr, buf);
        int64_t j = j0;
        const int64_t ng = offs ? a->k / X86_QG : 0; /* (off is only read with offsets) */
        for (; j + Q_RN <= j1; j += Q_RN) q_panel_tile(WT, Q_RN, a, buf, i, nr, j, off + (j - j0) * ng);
        const int32_t *o = off + (j - j0) * ng;
        switch ((int)(j1 - j)) {
        case 1: q_panel_tile(WT, 1, a, buf, i, nr, j, o); break;
        case 2: q_panel_tile(WT, 2, a, buf, i, nr, j, o); break;
        case 3: q_panel_tile(WT, 3, a, buf, i, nr, j, o); break;
        default: break;
        }
    }
}

/* ---- n == 1: straight from the transposed registers ----------------------------------------------
 * The panel path packs each 8-row panel into scratch and reads it back. For one token the gemv does
 * q_panel_tile's arithmetic (RN = 1) on the transposed registers directly, the scales converted by
 * F16C from a transposed column of the block heads (q_dw8; exact, like the software conversion), so
 * a token's outputs are the same bits alone and in a batch. Full 8-row panels; a ragged last panel
 * goes the panel way. The next panel is prefetched linearly, a slice per block (q_pf_slice). */

/* The gemv's DRAM prefetch of the next panel (the 8 rows after the current one, contiguous when the rows
 * are): per block of the current panel the lines of the next 8 * bs bytes, so the prefetch runs at exactly
 * the rate the panel is read and covers the next panel by the current panel's end (then runs on into the
 * following rows: prefetches never fault). Whole lines per block (ceil(8 * bs / 64), as before) ran ahead
 * of the reads by up to 33 % (q4_0: 192 bytes per 144) and re-fetched the overshoot at the next panel's
 * start: the exact rate measured +2-24 %, most shapes +5-15 % (q4_0, q8_0, q4_1 at 2048 and 5632 x 2048, 2048 x
 * 5632, 32000 x 2048; one thread, from DRAM, CPU time, interleaved A/B at load ~2, same bits). No bounds or per-block arithmetic beyond one add: x86_pf's
 * general slices cost ~15 instructions per block here, 15 % of a q4_0 block. */
TL_INLINE const char *q_pf_start(const tl_gemm_args *a, int64_t i) { return (const char *)(a->w + (i + Q_R) * a->ldw); }
/* 0: no next panel (the last one); else the cache level it goes to: L1 while it fits beside the current one
 * (x86_pf_to_l1), L2 beyond. Into L1 regardless, 25 KiB panels (q4_0, k = 5632) on a 32 KiB L1d were evicted
 * before use: AMD Zen 4, 2 threads from DRAM, alternated in one process (session 11), L2 instead of L1: k = 5632
 * +30 % q4_0, +60 % q8_0; q8_0 at k = 2048 (17 KiB panels) +8 to +11 %; q4_0 at k = 2048 (9 KiB) stays in L1
 * (L1 measured +10 % there, 32000 x 2048). */
TL_INLINE int q_pf_more(const tl_gemm_args *a, int64_t i) {
    return i + Q_R >= a->m ? 0 : x86_pf_to_l1(Q_R * a->ldw) ? 1 : 2;
}
TL_INLINE const char *q_pf_slice(const int WT, const char *p, int level) {
    const int bytes = 8 * x86_q_bytes(WT); /* 144, 160, 272: the lines at p, p + 64, ... and p + bytes - 1 */
    if (level == 1) {
        for (int l = 0; l < bytes / 64; l++) __builtin_prefetch(p + 64 * l, 0, 3);
        __builtin_prefetch(p + bytes - 1, 0, 3);
    } else if (level == 2) {
        for (int l = 0; l < bytes / 64; l++) __builtin_prefetch(p + 64 * l, 0, 2);
        __builtin_prefetch(p + bytes - 1, 0, 2);
    }
    return p + bytes;
}

/* q8_0: half h of the block at byte o of the 8 rows, transposed (u) and as the unsigned operand of the group dot (wa:
 * w + 128 for vpdpbusd, |w| for the sign trick). */
TL_INLINE void q_q8_half(const uint8_t *const *rp, int64_t o, int h, __m256i u[4], __m256i wa[4]) {
    q_transpose8(rp, o + 2 + 16 * h, u);
    for (int t = 0; t < 4; t++)
        wa[t] = Q_VNNI ? _mm256_xor_si256(u[t], _mm256_set1_epi8((char)0x80)) : _mm256_abs_epi8(u[t]);
}

/* q4_0 / q4_1: the block's nibbles at byte o of the 8 rows, transposed: low (values 4t..) in w[t], high
 * (16 + 4t..) in w[4 + t]. */
TL_INLINE void q_q4_nibbles(const int WT, const uint8_t *const *rp, int64_t o, __m256i w[8]) {
    const __m256i lo4 = _mm256_set1_epi8(0x0f);
    __m256i u[4];
    q_transpose8(rp, o + (WT == TL_Q4_0 ? 2 : 4), u);
    for (int t = 0; t < 4; t++) {
        w[t] = _mm256_and_si256(u[t], lo4);
        w[t + 4] = _mm256_and_si256(_mm256_srli_epi16(u[t], 4), lo4);
    }
}

/* Block b (at byte o of each row) of 8 rows x the token: y += its contribution. */
TL_INLINE __m256 q_gemv_block(const int WT, const uint8_t *const *rp, int64_t o, int64_t b, const int32_t *xq,
                              const float *dx, const float *sx, const int16_t *is, __m256 y) {
    const __m256i head = q_dw8(rp, o); /* d (| m for q4_1, | the first quants otherwise) */
    __m256 d, m;
    q_f16_halves(head, head, &d, &m);
    __m256i acc[2];
    const __m256i ip = q_off_mul(WT) ? q_isum_pair(is, b) : _mm256_setzero_si256();
    if (WT == TL_Q8_0) {
        for (int h = 0; h < 2; h++) {
            __m256i u[4], wa[4];
            q_q8_half(rp, o, h, u, wa);
            acc[h] = q_dot_s8(wa, u, xq + 8 * b + 4 * h, Q_VNNI ? q_off_ip(ip, h, -128) : ip);
        }
    } else {
        __m256i w[8];
        q_q4_nibbles(WT, rp, o, w);
        const int OFF = WT == TL_Q4_0;
        acc[0] = q_dot_u4(OFF, w, xq + 8 * b, OFF ? q_off_ip(ip, 0, -8) : ip);
        acc[1] = q_dot_u4(OFF, w + 4, xq + 8 * b + 4, OFF ? q_off_ip(ip, 1, -8) : ip);
    }
    y = _mm256_fmadd_ps(q_scale_dots(acc[0], acc[1], dx[2 * b], dx[2 * b + 1]), d, y);
    if (WT == TL_Q4_1) y = _mm256_fmadd_ps(m, _mm256_set1_ps(sx[2 * b] + sx[2 * b + 1]), y);
    return y;
}

TL_INLINE void q_gemv_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t k = a->k, nb = k / TL_QK;
    const int bs = x86_q_bytes(WT);
    const uint8_t *xr = a->act;
    const int32_t *xq = (const int32_t *)xr;
    const float *dx = x86_qa_d(xr, k), *sx = x86_qa_s(xr, k);
    const int16_t *is = x86_qa_isum(xr, k);
    int64_t i = i0;
    for (; i + Q_R <= i1; i += Q_R) {
        const uint8_t *rp[8];
        for (int r = 0; r < 8; r++) rp[r] = a->w + (i + r) * a->ldw;
        const char *pf = q_pf_start(a, i); /* the next panel, from DRAM */
        const int more = q_pf_more(a, i);
        __m256 y = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            pf = q_pf_slice(WT, pf, more);
            y = q_gemv_block(WT, rp, b * bs, b, xq, dx, sx, is, y);
        }
        _mm256_storeu_ps(a->y + i, y);
    }
    if (i < i1) q_block_impl(WT, a, i, i1, 0, 1); /* a ragged last panel */
}

/* ---- q4_0, n == 1: blocks in pairs, the scales from the transposed quants --------------------------
 * Two q4_0 blocks are 36 bytes, a whole number of dwords: dword 0 = (d0, qa0, qa1), 1..3 = qa2..13,
 * 4 = (qa14, qa15, d1), 5..8 = qb0..15. Transposing the 16-byte chunks at 0 and 20 and the dword at 16
 * gives both blocks' quants and both scales (d0 = low halves of dword 0, d1 = high halves of dword 4),
 * no separate loads of the heads. Block a's quants sit 2 bytes off the activation's dword grid, so its
 * activations are shifted once per call to match (sa: 2 zero bytes, the 16 int8 values, 2 zero bytes,
 * for the low and the high nibbles); the scale bytes meet those zeros, and a group takes 5 steps (each
 * int16 half still sums 8 products: within q_dot_u4n's bound). Every int32 group dot and every float
 * operation is q_gemv_block's: the same bits. */
#define Q4_0_SA_BYTES 40 /* per pair: 5 dwords for the low nibbles, 5 for the high */

static void q4_0_gemv_8(const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t k = a->k, nb = k / TL_QK, pairs = nb / 2;
    uint8_t *sa = pairs > 0 && i1 - i0 >= Q_R ? (uint8_t *)x86_scratch((size_t)(pairs * Q4_0_SA_BYTES)) : NULL;
    if (!sa) {
        q_gemv_impl(TL_Q4_0, a, i0, i1);
        return;
    }
    const uint8_t *xr = a->act;
    const int32_t *xq = (const int32_t *)xr;
    const float *dx = x86_qa_d(xr, k), *sx = x86_qa_s(xr, k);
    const int16_t *is = x86_qa_isum(xr, k);
    for (int64_t p = 0; p < pairs; p++) {
        uint8_t *o = sa + Q4_0_SA_BYTES * p;
        memset(o, 0, Q4_0_SA_BYTES);
        memcpy(o + 2, xr + 64 * p, 16);
        memcpy(o + 22, xr + 64 * p + 16, 16);
    }
    const __m256i lo4 = _mm256_set1_epi8(0x0f);
    int64_t i = i0;
    for (; i + Q_R <= i1; i += Q_R) {
        const uint8_t *rp[8];
        for (int r = 0; r < 8; r++) rp[r] = a->w + (i + r) * a->ldw;
        const char *pf = q_pf_start(a, i); /* the next panel, from DRAM */
        const int more = q_pf_more(a, i);
        __m256 y = _mm256_setzero_ps();
        for (int64_t p = 0; p < pairs; p++) {
            const int64_t b = 2 * p, o = 36 * p;
            pf = q_pf_slice(TL_Q4_0, q_pf_slice(TL_Q4_0, pf, more), more);
            __m256i W[5], U[4], wl[5], wh[5];
            q_transpose8(rp, o, W);     /* dwords 0..3 */
            W[4] = q_dw8(rp, o + 16);   /* dword 4 */
            __m256 d0, d1;
            q_f16_halves(W[0], W[4], &d0, &d1);
            for (int t = 0; t < 5; t++) {
                wl[t] = _mm256_and_si256(W[t], lo4);
                wh[t] = _mm256_and_si256(_mm256_srli_epi16(W[t], 4), lo4);
            }
            const int32_t *s = (const int32_t *)(sa + Q4_0_SA_BYTES * p);
            __m256i ip = q_isum_pair(is, b);
            __m256i acc0 = q_dot_u4n(1, 5, wl, s, q_off_ip(ip, 0, -8)), acc1 = q_dot_u4n(1, 5, wh, s + 5, q_off_ip(ip, 1, -8));
            y = _mm256_fmadd_ps(q_scale_dots(acc0, acc1, dx[2 * b], dx[2 * b + 1]), d0, y);
            q_transpose8(rp, o + 20, U); /* dwords 5..8 (after block a: fewer live registers) */
            for (int t = 0; t < 4; t++) {
                wl[t] = _mm256_and_si256(U[t], lo4);
                wh[t] = _mm256_and_si256(_mm256_srli_epi16(U[t], 4), lo4);
            }
            ip = q_isum_pair(is, b + 1);
            acc0 = q_dot_u4(1, wl, xq + 8 * (b + 1), q_off_ip(ip, 0, -8));
            acc1 = q_dot_u4(1, wh, xq + 8 * (b + 1) + 4, q_off_ip(ip, 1, -8));
            y = _mm256_fmadd_ps(q_scale_dots(acc0, acc1, dx[2 * b + 2], dx[2 * b + 3]), d1, y);
        }
        if (nb % 2) { /* the last block alone */
            q_pf_slice(TL_Q4_0, pf, more);
            y = q_gemv_block(TL_Q4_0, rp, (nb - 1) * TL_Q4_0_BYTES, nb - 1, xq, dx, sx, is, y);
        }
        _mm256_storeu_ps(a->y + i, y);
    }
    if (i < i1) q_block_impl(TL_Q4_0, a, i, i1, 0, 1); /* a ragged last panel (the scratch is reused there) */
}

static void q8_0_gemv_8(const tl_gemm_args *a, int64_t i0, int64_t i1) { q_gemv_impl(TL_Q8_0, a, i0, i1); }
static void q4_1_gemv_8(const tl_gemm_args *a, int64_t i0, int64_t i1) { q_gemv_impl(TL_Q4_1, a, i0, i1); }

#include "avx2_q8_small.h" /* 2 <= n <= 16: each block decoded once for every token (batched decode) */

#define Q_FUNCS(NAME, WT)                                                                                   \
    static void NAME##_block_8x4(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {   \
        q_block_impl(WT, a, i0, i1, j0, j1);                                                                \
    }                                                                                                       \
    static void NAME##_tile_8x4(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {            \
        q_block_impl(WT, a, i0, i0 + rm, j0, j0 + rn);                                                      \
    }                                                                                                       \
    const tl_ukernel Q_NAME(NAME##_8x4) = {.rm = Q_R, .rn = Q_RN, .tile = NAME##_tile_8x4, .gemv_rows = Q_R,  \
                                             .gemv = NAME##_gemv_8, .block = NAME##_block_8x4,                  \
                                             .act_row_bytes = x86_qa_row_bytes,                                \
                                             .act_prepare = tl_avx2_q8_act_prepare,                            \
                                             .small = NAME##_small_8, .small_n = Q_SMALL_N};
Q_FUNCS(q8_0, TL_Q8_0)
Q_FUNCS(q4_0, TL_Q4_0)
Q_FUNCS(q4_1, TL_Q4_1)
