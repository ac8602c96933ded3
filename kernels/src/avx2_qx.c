/* avx2_qx.c — x86 kernels for q5_1, iq4_nl, iq4_xs, q2_K and q3_K weights (kquants.h's second
 * scheme: int8 quants with an f32 scale fs and offset mo per 16-value group). One source, built into
 * two variants: avx2 (8-row ymm panels x 4 tokens, vpmaddubsw + vpmaddwd) and avx512 (16-row zmm
 * panels x 8 tokens, VNNI's vpdpbusd). The integer dots are exact either way and every lane (row) sees
 * the same f32 operations in the same order, so the two variants give the same bits.
 *
 * Rows in vector lanes, as avx2_kquants.c: per 32-value unit of a block, each row's quants are decoded
 * in SIMD into one ymm in element order (iq4: vpshufb on the 16-entry table; q5_1: nibbles + qh bits
 * expanded to bytes; q2_K / q3_K: 2-bit fields shifted out, q3_K's high bit from hmask), then 8 rows
 * are transposed in dwords, so lane r of dword-vector t holds row r's quants 4t..4t+3 (t 0..3: group 0
 * of the unit, 4..7: group 1; avx512 stores two 8-row halves side by side, one zmm). Scales and offsets
 * are decoded in lanes from a transpose of the block heads. A token's group dot is 4 steps of a 4-byte
 * broadcast of its activation quants against these:
 *   avx2: unsigned quants (q5_1 0..31, q2_K 0..3, q3_K 0..7) by vpmaddubsw, summed in int16 (at most
 *     4*2*31*127 = 31496: no saturation), then vpmaddwd; the signed iq4 quants by the sign trick (|w|
 *     against sign(x, w): a pair is at most 2*127*127 = 32258, widened after every step);
 *   avx512: vpdpbusd (no intermediate saturation); iq4 quants go in as q + 128 and 128 * isum_x comes off.
 * Then per group and token, in f32:
 *     y = fma(fs_g * d_x,g, float(dot_g), y);  y = fma(mo_g, s_x,g, y)  (types with mo)
 * groups and blocks in order: results depend only on k (any thread count, gemv = batch).
 *
 * n > 1 (block hook): a panel's blocks are decoded once per driver block into thread-local scratch
 * (48 B per row and 32 values) and reused by every token tile. n == 1 (gemv): one block of a panel at
 * a time into a stack record, the next panel prefetched linearly (x86_common.h).
 */
#include <immintrin.h>

#include "kquants.h"
#include "x86_common.h"

#if defined(__AVX512F__)
#include "avx512.h"
#define QX_ACT_PREPARE tl_avx512_q8_act_prepare
#define QX_UK(name) tl_avx512_##name##_16x8
#define QX_LOOKUP tl_avx512_qx_lookup
#else
#include "avx2.h"
#define QX_ACT_PREPARE tl_avx2_q8_act_prepare
#define QX_UK(name) tl_avx2_##name##_8x4
#define QX_LOOKUP tl_avx2_qx_lookup
#endif

#if defined(__AVX512F__)
#define QX_R 16  /* rows per panel: zmm lanes (two 8-row halves decoded like avx2's) */
#define QX_RN 8  /* tokens per register tile */
#else
#define QX_R 8   /* rows per panel: ymm lanes */
#define QX_RN 4
#endif
#define QX_LD (4 * QX_R)      /* bytes of one dword-vector of the panel (one dword per row) */
#define QX_UNIT (48 * QX_R)   /* record bytes per 32 values: 8 dword-vectors, fs and mo of 2 groups */

/* Record of one block of a panel: dword-vector t of unit u at 8u + t (QX_LD bytes each), then FS[g][QX_R] and
 * MO[g][QX_R] per group g. */
TL_INLINE const uint8_t *qx_w(const uint8_t *rec, int u, int t) { return rec + (8 * u + t) * QX_LD; }
TL_INLINE float *qx_fs(const int WT, uint8_t *rec) { return (float *)(rec + 8 * QX_LD * (tl_qx_values(WT) / 32)); }
TL_INLINE float *qx_mo(const int WT, uint8_t *rec) { return qx_fs(WT, rec) + QX_R * (tl_qx_values(WT) / 16); }

/* ---- decoding ---------------------------------------------------------------------------------- */
/* Unit u of one row's block, 32 quants in element order. */
TL_INLINE __m256i qx_unit8(const int WT, const uint8_t *blk, int u) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    if (WT == TL_Q5_1 || WT == TL_IQ4_NL || WT == TL_IQ4_XS) {
        const uint8_t *qs = WT == TL_Q5_1 ? blk + 8 : WT == TL_IQ4_NL ? blk + 2 : blk + 8 + 16 * u;
        const __m128i b = _mm_loadu_si128((const __m128i *)qs);
        const __m256i n = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), m4);
        if (WT != TL_Q5_1)
            return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)tl_iq4_values)), n);
        /* bit t of qh -> byte t: byte t gets qh byte t/8, then its bit t%8 is tested */
        const __m256i qh = _mm256_shuffle_epi8(_mm256_set1_epi32((int)tl_load_u32(blk + 4)),
                                               _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202,
                                                                  0x0303030303030303));
        const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
        const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
        return _mm256_or_si256(n, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
    }
    const uint8_t *qs = blk + (WT == TL_Q2_K ? 16 : 32) + 32 * (u >> 2);
    __m256i v = _mm256_and_si256(_mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)qs), _mm_cvtsi32_si128(2 * (u & 3))),
                                 _mm256_set1_epi8(3));
    if (WT == TL_Q3_K) {
        const __m256i bit = _mm256_set1_epi8((char)(1 << u));
        const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)blk), bit), bit);
        v = _mm256_or_si256(v, _mm256_and_si256(set, _mm256_set1_epi8(4)));
    }
    return v;
}

/* 8 rows (element order) -> dword t of every row in lane r of the ymm at out + t * ld bytes. */
TL_INLINE void qx_t8x8(const __m256i v[8], uint8_t *out, int ld) {
    __m256i t[8], s[8];
    for (int p = 0; p < 4; p++) {
        t[2 * p] = _mm256_unpacklo_epi32(v[2 * p], v[2 * p + 1]);
        t[2 * p + 1] = _mm256_unpackhi_epi32(v[2 * p], v[2 * p + 1]);
    }
    for (int h = 0; h < 2; h++) { /* rows 4h..4h+3 */
        s[4 * h + 0] = _mm256_unpacklo_epi64(t[4 * h], t[4 * h + 2]);     /* dwords 0 | 4 */
        s[4 * h + 1] = _mm256_unpackhi_epi64(t[4 * h], t[4 * h + 2]);     /* 1 | 5 */
        s[4 * h + 2] = _mm256_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]); /* 2 | 6 */
        s[4 * h + 3] = _mm256_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]); /* 3 | 7 */
    }
    for (int q = 0; q < 4; q++) {
        _mm256_store_si256((__m256i *)(out + q * ld), _mm256_permute2x128_si256(s[q], s[4 + q], 0x20));
        _mm256_store_si256((__m256i *)(out + (4 + q) * ld), _mm256_permute2x128_si256(s[q], s[4 + q], 0x31));
    }
}

/* ---- scales in lanes: fs and mo of every group, the f32 operations of tl_qx_scales ------------------- */
/* The dword at rp[r] + off of the 8 rows, row r in lane r. */
TL_INLINE __m256i qx_d8(const uint8_t *const *rp, int64_t off) {
    return _mm256_setr_epi32((int)tl_load_u32(rp[0] + off), (int)tl_load_u32(rp[1] + off), (int)tl_load_u32(rp[2] + off),
                             (int)tl_load_u32(rp[3] + off), (int)tl_load_u32(rp[4] + off), (int)tl_load_u32(rp[5] + off),
                             (int)tl_load_u32(rp[6] + off), (int)tl_load_u32(rp[7] + off));
}
/* The f16 in the low (hi = 0) or high half of each dword -> 8 f32 (exact). */
TL_INLINE __m256 qx_h2f(__m256i v, int hi) {
    if (hi) v = _mm256_srli_epi32(v, 16);
    v = _mm256_and_si256(v, _mm256_set1_epi32(0xffff));
    return _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(v, v), 0x08)));
}
/* The 16 bytes at rp[r] + off of the 8 rows: lane r of T[t] = row r's bytes 4t..4t+3. */
TL_INLINE void qx_t8x4(const uint8_t *const *rp, int64_t off, __m256i T[4]) {
    __m256i A[4];
    for (int q = 0; q < 4; q++)
        A[q] = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)(rp[q + 4] + off)),
                                _mm_loadu_si128((const __m128i *)(rp[q] + off)));
    const __m256i a = _mm256_unpacklo_epi32(A[0], A[1]), b = _mm256_unpackhi_epi32(A[0], A[1]);
    const __m256i c = _mm256_unpacklo_epi32(A[2], A[3]), d = _mm256_unpackhi_epi32(A[2], A[3]);
    T[0] = _mm256_unpacklo_epi64(a, c);
    T[1] = _mm256_unpackhi_epi64(a, c);
    T[2] = _mm256_unpacklo_epi64(b, d);
    T[3] = _mm256_unpackhi_epi64(b, d);
}
/* Byte n (0..15) of the transposed chunk, per lane. */
TL_INLINE __m256i qx_byte(const __m256i T[4], int n) {
    return _mm256_and_si256(_mm256_srli_epi32(T[n >> 2], 8 * (n & 3)), _mm256_set1_epi32(0xff));
}

/* FS / MO of block `off` (byte offset in every row) of the 8 rows rp (rows >= nr: rp repeats a live row, and
 * their lanes are zeroed). */
TL_INLINE void qx_scales8(const int WT, const uint8_t *const *rp, int nr, int64_t off, float *FS, float *MO, const int L) {
    const __m256 live =
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nr), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    const __m256i m4 = _mm256_set1_epi32(15), m2 = _mm256_set1_epi32(3), k32 = _mm256_set1_epi32(32);
    const __m256 zero = _mm256_setzero_ps();
    if (WT == TL_Q5_1 || WT == TL_IQ4_NL) {
        const __m256i h = qx_d8(rp, off);
        const __m256 d = _mm256_and_ps(live, qx_h2f(h, 0));
        const __m256 m = WT == TL_Q5_1 ? _mm256_and_ps(live, qx_h2f(h, 1)) : zero;
        _mm256_store_ps(FS, d);
        _mm256_store_ps(FS + L, d);
        _mm256_store_ps(MO, m);
        _mm256_store_ps(MO + L, m);
    } else if (WT == TL_IQ4_XS) {
        const __m256i h = qx_d8(rp, off), sl = qx_d8(rp, off + 4), sh = _mm256_srli_epi32(h, 16);
        const __m256 d = _mm256_and_ps(live, qx_h2f(h, 0));
        for (int ib = 0; ib < 8; ib++) {
            const __m256i lo = _mm256_and_si256(_mm256_srli_epi32(sl, 4 * ib), m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi32(sh, 2 * ib), m2);
            const __m256 f = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), k32)));
            _mm256_store_ps(FS + L * 2 * ib, f);
            _mm256_store_ps(FS + L * (2 * ib + 1), f);
            _mm256_store_ps(MO + L * 2 * ib, zero);
            _mm256_store_ps(MO + L * (2 * ib + 1), zero);
        }
    } else if (WT == TL_Q2_K) {
        __m256i T[4];
        qx_t8x4(rp, off, T);
        const __m256i h = qx_d8(rp, off + 80);
        const __m256 d = _mm256_and_ps(live, qx_h2f(h, 0));
        const __m256 nd = _mm256_xor_ps(_mm256_and_ps(live, qx_h2f(h, 1)), _mm256_set1_ps(-0.0f)); /* -dmin */
        for (int g = 0; g < 16; g++) {
            const __m256i v = qx_byte(T, g);
            _mm256_store_ps(FS + L * g, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_and_si256(v, m4))));
            _mm256_store_ps(MO + L * g, _mm256_mul_ps(nd, _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4))));
        }
    } else { /* q3_K: the 16 bytes at 94..109 hold the scale field (chunk bytes 2..13) and d (14, 15) */
        __m256i T[4];
        qx_t8x4(rp, off + 94, T);
        const __m256 d = _mm256_and_ps(live, qx_h2f(T[3], 1));
        for (int j = 0; j < 16; j++) {
            const __m256i lo = j < 8 ? _mm256_and_si256(qx_byte(T, 2 + j), m4) : _mm256_srli_epi32(qx_byte(T, 2 + j - 8), 4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi32(qx_byte(T, 10 + (j & 3)), 2 * (j >> 2)), m2);
            const __m256 f = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), k32)));
            _mm256_store_ps(FS + L * j, f);
            _mm256_store_ps(MO + L * j, _mm256_mul_ps(f, _mm256_set1_ps(-4.0f)));
        }
    }
}

/* Block b of rows rp[0..nr) -> one record (rows >= nr are zero), in halves of 8 rows. */
TL_INLINE void qx_pack_block(const int WT, const uint8_t *const *rp, int nr, int64_t b, uint8_t *rec) {
    const int nu = tl_qx_values(WT) / 32, bytes = tl_qx_bytes(WT);
    float *FS = qx_fs(WT, rec), *MO = qx_mo(WT, rec);
    for (int h = 0; h < QX_R / 8; h++) {
        const int nh = TL_MAX(TL_MIN(nr - 8 * h, 8), 0);
        qx_scales8(WT, rp + 8 * h, nh, b * bytes, FS + 8 * h, MO + 8 * h, QX_R);
        for (int u = 0; u < nu; u++) {
            __m256i v[8];
            for (int r = 0; r < 8; r++) v[r] = r < nh ? qx_unit8(WT, rp[8 * h + r] + b * bytes, u) : _mm256_setzero_si256();
            qx_t8x8(v, rec + 8 * u * QX_LD + 32 * h, QX_LD);
        }
    }
}

/* ---- one record x RN tokens ------------------------------------------------------------------ */
#if defined(__AVX512F__)
typedef __m512 qx_acc;
TL_INLINE qx_acc qx_zero(void) { return _mm512_setzero_ps(); }

/* acc[j] += record (block b) . token j, j < RN; xr[j] the prepared rows. The iq4 quants go in as q + 128
 * (unsigned) and 128 * isum comes off the int32 dot: the same exact integer as the sign trick of the avx2 build. */
TL_INLINE void qx_rec(const int WT, const int RN, const uint8_t *rec, const uint8_t *const *xr, int64_t k, int64_t b,
                      qx_acc *acc) {
    const int nv = tl_qx_values(WT), nu = nv / 32, ng = nv / 16;
    const float *FS = qx_fs(WT, (uint8_t *)rec), *MO = qx_mo(WT, (uint8_t *)rec);
    for (int u = 0; u < nu; u++)
        for (int h = 0; h < 2; h++) {
            const int g = 2 * u + h;
            __m512i w[4];
            for (int s = 0; s < 4; s++) {
                w[s] = _mm512_load_si512((const void *)qx_w(rec, u, 4 * h + s));
                if (tl_qx_signed(WT)) w[s] = _mm512_xor_si512(w[s], _mm512_set1_epi8((char)0x80));
            }
            const __m512 fs = _mm512_load_ps(FS + QX_R * g);
            for (int j = 0; j < RN; j++) {
                const int32_t *x = (const int32_t *)(xr[j] + b * nv + 16 * g);
                __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], _mm512_set1_epi32(x[0]));
                for (int s = 1; s < 4; s++) d = _mm512_dpbusd_epi32(d, w[s], _mm512_set1_epi32(x[s]));
                if (tl_qx_signed(WT)) d = _mm512_sub_epi32(d, _mm512_set1_epi32(128 * tl_q8a_isum(xr[j], k)[b * ng + g]));
                const float dx = tl_q8a_d(xr[j], k)[b * ng + g];
                acc[j] = _mm512_fmadd_ps(_mm512_mul_ps(fs, _mm512_set1_ps(dx)), _mm512_cvtepi32_ps(d), acc[j]);
                if (tl_qx_has_min(WT))
                    acc[j] = _mm512_fmadd_ps(_mm512_load_ps(MO + QX_R * g), _mm512_set1_ps(tl_q8a_s(xr[j], k)[b * ng + g]),
                                             acc[j]);
            }
        }
}

TL_INLINE void qx_store(const tl_gemm_args *a, const qx_acc *acc, int rn, int64_t i, int nr, int64_t j0) {
    for (int j = 0; j < rn; j++) _mm512_mask_storeu_ps(a->y + (j0 + j) * a->ldy + i, (__mmask16)((1u << nr) - 1), acc[j]);
}
#else
typedef __m256 qx_acc;
TL_INLINE qx_acc qx_zero(void) { return _mm256_setzero_ps(); }

/* A token's exact int32 dots of one group with the 8 rows: w[s] lane r = row r's quants 4s..4s+3, x[s] the
 * activation quants 4s..4s+3. */
TL_INLINE __m256i qx_dot(const int WT, const __m256i w[4], const __m256i aw[4], const int32_t *x) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (tl_qx_signed(WT)) {
        __m256i d = _mm256_setzero_si256();
        for (int s = 0; s < 4; s++)
            d = _mm256_add_epi32(d, _mm256_madd_epi16(_mm256_maddubs_epi16(aw[s], _mm256_sign_epi8(_mm256_set1_epi32(x[s]), w[s])),
                                                      ones));
        return d;
    }
    __m256i p = _mm256_maddubs_epi16(w[0], _mm256_set1_epi32(x[0]));
    for (int s = 1; s < 4; s++) p = _mm256_add_epi16(p, _mm256_maddubs_epi16(w[s], _mm256_set1_epi32(x[s])));
    return _mm256_madd_epi16(p, ones);
}

/* acc[j] += record (block b) . token j, j < RN; xr[j] the prepared rows. */
TL_INLINE void qx_rec(const int WT, const int RN, const uint8_t *rec, const uint8_t *const *xr, int64_t k, int64_t b,
                      qx_acc *acc) {
    const int nv = tl_qx_values(WT), nu = nv / 32, ng = nv / 16;
    const float *FS = qx_fs(WT, (uint8_t *)rec), *MO = qx_mo(WT, (uint8_t *)rec);
    for (int u = 0; u < nu; u++)
        for (int h = 0; h < 2; h++) {
            const int g = 2 * u + h;
            __m256i w[4], aw[4];
            for (int s = 0; s < 4; s++) {
                w[s] = _mm256_load_si256((const __m256i *)qx_w(rec, u, 4 * h + s));
                aw[s] = tl_qx_signed(WT) ? _mm256_abs_epi8(w[s]) : w[s];
            }
            const __m256 fs = _mm256_load_ps(FS + QX_R * g);
            for (int j = 0; j < RN; j++) {
                const __m256i d = qx_dot(WT, w, aw, (const int32_t *)(xr[j] + b * nv + 16 * g));
                const float dx = tl_q8a_d(xr[j], k)[b * ng + g];
                acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(fs, _mm256_set1_ps(dx)), _mm256_cvtepi32_ps(d), acc[j]);
                if (tl_qx_has_min(WT))
                    acc[j] = _mm256_fmadd_ps(_mm256_load_ps(MO + QX_R * g), _mm256_set1_ps(tl_q8a_s(xr[j], k)[b * ng + g]),
                                             acc[j]);
            }
        }
}

TL_INLINE void qx_store(const tl_gemm_args *a, const qx_acc *acc, int rn, int64_t i, int nr, int64_t j0) {
    for (int j = 0; j < rn; j++) {
        float *y = a->y + (j0 + j) * a->ldy + i;
        if (nr == QX_R) {
            _mm256_storeu_ps(y, acc[j]);
        } else {
            _Alignas(32) float t[QX_R];
            _mm256_store_ps(t, acc[j]);
            memcpy(y, t, (size_t)nr * 4);
        }
    }
}
#endif

TL_INLINE void qx_rows(const tl_gemm_args *a, int64_t r0, int nr, const uint8_t *rp[QX_R]) {
    for (int r = 0; r < QX_R; r++) rp[r] = a->w + (r0 + (r < nr ? r : 0)) * a->ldw;
}

/* RN tokens from j against a packed panel (nb records). */
TL_INLINE void qx_panel_tile(const int WT, const int RN, const tl_gemm_args *a, const uint8_t *buf, int64_t i, int nr,
                             int64_t j) {
    const int64_t nb = a->k / tl_qx_values(WT), rb = (int64_t)QX_UNIT * (tl_qx_values(WT) / 32);
    const uint8_t *xr[QX_RN];
    qx_acc acc[QX_RN];
    for (int t = 0; t < RN; t++) {
        xr[t] = a->act + (j + t) * a->ldact;
        acc[t] = qx_zero();
    }
    for (int64_t b = 0; b < nb; b++) qx_rec(WT, RN, buf + b * rb, xr, a->k, b, acc);
    qx_store(a, acc, RN, i, nr, j);
}

/* No scratch (allocation failed): the plain-C kernels. */
static void qx_portable(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const tl_ukernel *uk = tl_qx_portable_lookup(WT);
    for (int64_t i = i0; i < i1; i += uk->rm)
        for (int64_t j = j0; j < j1; j += uk->rn)
            uk->tile(a, i, j, (int)TL_MIN((int64_t)uk->rm, i1 - i), (int)TL_MIN((int64_t)uk->rn, j1 - j));
}

TL_INLINE void qx_block_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const int64_t nb = a->k / tl_qx_values(WT), rb = (int64_t)QX_UNIT * (tl_qx_values(WT) / 32);
    uint8_t *buf = x86_scratch((size_t)(nb * rb));
    if (!buf) {
        qx_portable(WT, a, i0, i1, j0, j1);
        return;
    }
    for (int64_t i = i0; i < i1; i += QX_R) {
        const int nr = (int)TL_MIN((int64_t)QX_R, i1 - i);
        const uint8_t *rp[QX_R];
        qx_rows(a, i, nr, rp);
        for (int64_t b = 0; b < nb; b++) qx_pack_block(WT, rp, nr, b, buf + b * rb);
        int64_t j = j0;
        for (; j + QX_RN <= j1; j += QX_RN) qx_panel_tile(WT, QX_RN, a, buf, i, nr, j);
        switch ((int)(j1 - j)) {
        case 1: qx_panel_tile(WT, 1, a, buf, i, nr, j); break;
        case 2: qx_panel_tile(WT, 2, a, buf, i, nr, j); break;
        case 3: qx_panel_tile(WT, 3, a, buf, i, nr, j); break;
#if QX_RN > 4
        case 4: qx_panel_tile(WT, 4, a, buf, i, nr, j); break;
        case 5: qx_panel_tile(WT, 5, a, buf, i, nr, j); break;
        case 6: qx_panel_tile(WT, 6, a, buf, i, nr, j); break;
        case 7: qx_panel_tile(WT, 7, a, buf, i, nr, j); break;
#endif
        default: break;
        }
    }
}

/* n == 1: one block of a panel at a time through a stack record (L1), the same arithmetic. */
TL_INLINE void qx_gemv_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t nb = a->k / tl_qx_values(WT);
    _Alignas(64) uint8_t rec[QX_UNIT * 8];
    const uint8_t *xr[1] = {a->act};
    for (int64_t i = i0; i < i1; i += QX_R) {
        const int nr = (int)TL_MIN((int64_t)QX_R, i1 - i);
        const uint8_t *rp[QX_R];
        qx_rows(a, i, nr, rp);
        const x86_pf pf = x86_pf_next(a, i, i1, QX_R, nb); /* the next panel, from DRAM */
        qx_acc y = qx_zero();
        for (int64_t b = 0; b < nb; b++) {
            x86_pf_block(&pf, b);
            qx_pack_block(WT, rp, nr, b, rec);
            qx_rec(WT, 1, rec, xr, a->k, b, &y);
        }
        qx_store(a, &y, 1, i, nr, 0);
    }
}

/* ---- table entries ------------------------------------------------------------------------- */
#define QX_FUNCS(NAME, WT)                                                                               \
    static void qx_##NAME##_block(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) { \
        qx_block_impl(WT, a, i0, i1, j0, j1);                                                            \
    }                                                                                                     \
    static void qx_##NAME##_tile(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {        \
        qx_block_impl(WT, a, i0, i0 + rm, j0, j0 + rn);                                                  \
    }                                                                                                     \
    static void qx_##NAME##_gemv(const tl_gemm_args *a, int64_t i0, int64_t i1) { qx_gemv_impl(WT, a, i0, i1); } \
    const tl_ukernel QX_UK(NAME) = {.rm = QX_R, .rn = QX_RN, .tile = qx_##NAME##_tile, .gemv_rows = QX_R,   \
                                    .gemv = qx_##NAME##_gemv, .block = qx_##NAME##_block,                  \
                                    .act_row_bytes = x86_qa_row_bytes, .act_prepare = QX_ACT_PREPARE};
QX_FUNCS(q5_1, TL_Q5_1)
QX_FUNCS(iq4_nl, TL_IQ4_NL)
QX_FUNCS(iq4_xs, TL_IQ4_XS)
QX_FUNCS(q2_k, TL_Q2_K)
QX_FUNCS(q3_k, TL_Q3_K)

/* This file's kernel of a type, or NULL: the tail of the avx2, avxvnni and avx512 tables. */
const tl_ukernel *QX_LOOKUP(int wtype) {
    switch (wtype) {
    case TL_Q5_1: return &QX_UK(q5_1);
    case TL_IQ4_NL: return &QX_UK(iq4_nl);
    case TL_IQ4_XS: return &QX_UK(iq4_xs);
    case TL_Q2_K: return &QX_UK(q2_k);
    case TL_Q3_K: return &QX_UK(q3_k);
    default: return NULL;
    }
}
