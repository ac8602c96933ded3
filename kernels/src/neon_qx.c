/* neon_qx.c — ARMv8.2 NEON (dotprod) kernels for q5_1, iq4_nl, iq4_xs, q2_K and q3_K weights (kquants.h's
 * second scheme: int8 quants with an f32 scale fs and offset mo per 16-value group). Compiled into the neon
 * variant and into sme / sme2, whose tables do not list these types (the fallback chain sends them here).
 *
 * As avx2_qx.c with 4 rows in the 32-bit lanes: per 32-value unit of a block, each row's quants are decoded
 * in SIMD in element order (iq4: vqtbl1q on the 16-entry table; q5_1: nibbles + qh bits by table lookup and
 * vtst; q2_K / q3_K: 2-bit fields shifted out, q3_K's high bit from hmask), then the 4 rows are transposed in
 * 32-bit words, so lane l of vector s of a group holds row l's quants 4s..4s+3. The by-element sdot
 * `vdotq_laneq_s32(acc, w[s], x, s)` (signed x signed: no offset tricks) gives the 4 rows' exact int32 group
 * dots. Then per group and token, in f32:
 *     y = fma(y, fs_g * d_x,g, float(dot_g));  y = fma(y, mo_g, s_x,g)  (types with mo)
 * groups and blocks in order: results depend only on k (any thread count, gemv = batch).
 *
 * n > 1 (block): a panel's blocks are decoded once per driver block into thread-local scratch (192 B per 32
 * values) and reused by every tile of 4 tokens; n == 1 (gemv): one block of 4 rows at a time into a stack
 * record.
 */
#include <arm_neon.h>

#include "kquants.h"
#include "neon.h"
#include "threadpool.h"

#define QX_R 4      /* rows per panel: one per 32-bit lane */
#define QX_RN 4     /* tokens per register tile */
#define QX_UNIT 192 /* record bytes per 32 values: 8 vectors of quants, then fs and mo of the 2 groups (4 f32 each) */

TL_INLINE const int8x16_t *qx_w(const uint8_t *rec) { return (const int8x16_t *)rec; }
TL_INLINE float *qx_fs(const int WT, uint8_t *rec) { return (float *)(rec + 128 * (tl_qx_values(WT) / 32)); }
TL_INLINE float *qx_mo(const int WT, uint8_t *rec) { return qx_fs(WT, rec) + 4 * (tl_qx_values(WT) / 16); }

/* ---- decoding ---------------------------------------------------------------------------------- */
/* Unit u of one row's block: its 32 quants in element order, as two halves (v[0]: 0..15, v[1]: 16..31). */
TL_INLINE void qx_unit16(const int WT, const uint8_t *blk, int u, int8x16_t v[2]) {
    if (WT == TL_Q5_1 || WT == TL_IQ4_NL || WT == TL_IQ4_XS) {
        const uint8_t *qs = WT == TL_Q5_1 ? blk + 8 : WT == TL_IQ4_NL ? blk + 2 : blk + 8 + 16 * u;
        const uint8x16_t b = vld1q_u8(qs);
        const uint8x16_t lo = vandq_u8(b, vdupq_n_u8(15)), hi = vshrq_n_u8(b, 4);
        if (WT != TL_Q5_1) {
            const int8x16_t tbl = vld1q_s8(tl_iq4_values);
            v[0] = vqtbl1q_s8(tbl, lo);
            v[1] = vqtbl1q_s8(tbl, hi);
            return;
        }
        /* bit t of qh -> byte t: byte t takes qh byte t/8, then bit t%8 is tested */
        const uint8x16_t qh = vreinterpretq_u8_u32(vdupq_n_u32(tl_load_u32(blk + 4)));
        static const uint8_t sel0[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
        static const uint8_t sel1[16] = {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
        static const uint8_t bits[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
        const uint8x16_t bm = vld1q_u8(bits), b4 = vdupq_n_u8(0x10);
        const uint8x16_t h0 = vandq_u8(vtstq_u8(vqtbl1q_u8(qh, vld1q_u8(sel0)), bm), b4);
        const uint8x16_t h1 = vandq_u8(vtstq_u8(vqtbl1q_u8(qh, vld1q_u8(sel1)), bm), b4);
        v[0] = vreinterpretq_s8_u8(vorrq_u8(lo, h0));
        v[1] = vreinterpretq_s8_u8(vorrq_u8(hi, h1));
        return;
    }
    const uint8_t *qs = blk + (WT == TL_Q2_K ? 16 : 32) + 32 * (u >> 2);
    const int8x16_t sh = vdupq_n_s8((int8_t)(-2 * (u & 3)));
    const uint8x16_t m3 = vdupq_n_u8(3);
    uint8x16_t a = vandq_u8(vshlq_u8(vld1q_u8(qs), sh), m3), b = vandq_u8(vshlq_u8(vld1q_u8(qs + 16), sh), m3);
    if (WT == TL_Q3_K) {
        const uint8x16_t bit = vdupq_n_u8((uint8_t)(1 << u)), b4 = vdupq_n_u8(4);
        a = vorrq_u8(a, vandq_u8(vtstq_u8(vld1q_u8(blk), bit), b4));
        b = vorrq_u8(b, vandq_u8(vtstq_u8(vld1q_u8(blk + 16), bit), b4));
    }
    v[0] = vreinterpretq_s8_u8(a);
    v[1] = vreinterpretq_s8_u8(b);
}

/* 4 rows' 16 values -> out[s] lane l = row l's values 4s..4s+3. */
TL_INLINE void qx_t4x4(const int8x16_t r[4], int8x16_t *out) {
    const int32x4_t r0 = vreinterpretq_s32_s8(r[0]), r1 = vreinterpretq_s32_s8(r[1]);
    const int32x4_t r2 = vreinterpretq_s32_s8(r[2]), r3 = vreinterpretq_s32_s8(r[3]);
    const int64x2_t a = vreinterpretq_s64_s32(vtrn1q_s32(r0, r1)), b = vreinterpretq_s64_s32(vtrn2q_s32(r0, r1));
    const int64x2_t c = vreinterpretq_s64_s32(vtrn1q_s32(r2, r3)), d = vreinterpretq_s64_s32(vtrn2q_s32(r2, r3));
    out[0] = vreinterpretq_s8_s64(vtrn1q_s64(a, c));
    out[1] = vreinterpretq_s8_s64(vtrn1q_s64(b, d));
    out[2] = vreinterpretq_s8_s64(vtrn2q_s64(a, c));
    out[3] = vreinterpretq_s8_s64(vtrn2q_s64(b, d));
}

/* Block b of rows rp[0..nr) -> one record (rows >= nr are zero). */
TL_INLINE void qx_pack_block(const int WT, const uint8_t *const *rp, int nr, int64_t b, uint8_t *rec) {
    const int nu = tl_qx_values(WT) / 32, ng = 2 * nu, bytes = tl_qx_bytes(WT);
    float fs[QX_R][16], mo[QX_R][16];
    for (int r = 0; r < QX_R; r++) {
        for (int g = 0; g < ng; g++) fs[r][g] = mo[r][g] = 0.0f;
        if (r < nr) tl_qx_scales(WT, rp[r] + b * bytes, fs[r], mo[r]);
    }
    float *FS = qx_fs(WT, rec), *MO = qx_mo(WT, rec);
    for (int g = 0; g < ng; g++)
        for (int r = 0; r < QX_R; r++) {
            FS[4 * g + r] = fs[r][g];
            MO[4 * g + r] = tl_qx_has_min(WT) ? mo[r][g] : 0.0f;
        }
    int8x16_t *W = (int8x16_t *)rec;
    for (int u = 0; u < nu; u++) {
        int8x16_t v[QX_R][2], h0[QX_R], h1[QX_R];
        for (int r = 0; r < QX_R; r++) {
            if (r < nr) {
                qx_unit16(WT, rp[r] + b * bytes, u, v[r]);
            } else {
                v[r][0] = v[r][1] = vdupq_n_s8(0);
            }
            h0[r] = v[r][0];
            h1[r] = v[r][1];
        }
        qx_t4x4(h0, W + 8 * u);
        qx_t4x4(h1, W + 8 * u + 4);
    }
}

/* acc[j] += record (block b) . token j, j < RN. */
TL_INLINE void qx_rec(const int WT, const int RN, const uint8_t *rec, const uint8_t *const *xr, int64_t k, int64_t b,
                      float32x4_t *acc) {
    const int nv = tl_qx_values(WT), nu = nv / 32, ng = nv / 16;
    const int8x16_t *W = qx_w(rec);
    const float *FS = qx_fs(WT, (uint8_t *)rec), *MO = qx_mo(WT, (uint8_t *)rec);
    for (int g = 0; g < 2 * nu; g++) {
        const int8x16_t w0 = W[4 * g], w1 = W[4 * g + 1], w2 = W[4 * g + 2], w3 = W[4 * g + 3];
        const float32x4_t fs = vld1q_f32(FS + 4 * g);
        for (int j = 0; j < RN; j++) {
            const int8x16_t x = vld1q_s8((const int8_t *)xr[j] + b * nv + 16 * g);
            int32x4_t d = vdotq_laneq_s32(vdupq_n_s32(0), w0, x, 0);
            d = vdotq_laneq_s32(d, w1, x, 1);
            d = vdotq_laneq_s32(d, w2, x, 2);
            d = vdotq_laneq_s32(d, w3, x, 3);
            const float dx = tl_q8a_d(xr[j], k)[b * ng + g];
            acc[j] = vfmaq_f32(acc[j], vmulq_n_f32(fs, dx), vcvtq_f32_s32(d));
            if (tl_qx_has_min(WT)) acc[j] = vfmaq_n_f32(acc[j], vld1q_f32(MO + 4 * g), tl_q8a_s(xr[j], k)[b * ng + g]);
        }
    }
}

TL_INLINE void qx_store(const tl_gemm_args *a, const float32x4_t *acc, int rn, int64_t i, int nr, int64_t j0) {
    for (int j = 0; j < rn; j++) {
        float *y = a->y + (j0 + j) * a->ldy + i;
        if (nr == QX_R) {
            vst1q_f32(y, acc[j]);
        } else {
            float t[QX_R];
            vst1q_f32(t, acc[j]);
            memcpy(y, t, (size_t)nr * 4);
        }
    }
}

TL_INLINE void qx_rows(const tl_gemm_args *a, int64_t r0, int nr, const uint8_t *rp[QX_R]) {
    for (int r = 0; r < QX_R; r++) rp[r] = a->w + (r0 + (r < nr ? r : 0)) * a->ldw;
}

TL_INLINE void qx_panel_tile(const int WT, const int RN, const tl_gemm_args *a, const uint8_t *buf, int64_t i, int nr,
                             int64_t j) {
    const int64_t nb = a->k / tl_qx_values(WT), rb = (int64_t)QX_UNIT * (tl_qx_values(WT) / 32);
    const uint8_t *xr[QX_RN];
    float32x4_t acc[QX_RN];
    for (int t = 0; t < RN; t++) {
        xr[t] = a->act + (j + t) * a->ldact;
        acc[t] = vdupq_n_f32(0.0f);
    }
    for (int64_t b = 0; b < nb; b++) qx_rec(WT, RN, buf + b * rb, xr, a->k, b, acc);
    qx_store(a, acc, RN, i, nr, j);
}

static void qx_portable(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const tl_ukernel *uk = tl_qx_portable_lookup(WT);
    for (int64_t i = i0; i < i1; i += uk->rm)
        for (int64_t j = j0; j < j1; j += uk->rn)
            uk->tile(a, i, j, (int)TL_MIN((int64_t)uk->rm, i1 - i), (int)TL_MIN((int64_t)uk->rn, j1 - j));
}

TL_INLINE void qx_block_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const int64_t nb = a->k / tl_qx_values(WT), rb = (int64_t)QX_UNIT * (tl_qx_values(WT) / 32);
    uint8_t *buf = (uint8_t *)tl_scratch((size_t)(nb * rb));
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
        default: break;
        }
    }
}

TL_INLINE void qx_gemv_impl(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1) {
    const int64_t nb = a->k / tl_qx_values(WT);
    _Alignas(16) uint8_t rec[QX_UNIT * 8];
    const uint8_t *xr[1] = {a->act};
    for (int64_t i = i0; i < i1; i += QX_R) {
        const int nr = (int)TL_MIN((int64_t)QX_R, i1 - i);
        const uint8_t *rp[QX_R];
        qx_rows(a, i, nr, rp);
        float32x4_t y = vdupq_n_f32(0.0f);
        for (int64_t b = 0; b < nb; b++) {
            qx_pack_block(WT, rp, nr, b, rec);
            qx_rec(WT, 1, rec, xr, a->k, b, &y);
        }
        qx_store(a, &y, 1, i, nr, 0);
    }
}

#define QX_FUNCS(NAME, WT)                                                                               \
    static void qx_##NAME##_block(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1) { \
        qx_block_impl(WT, a, i0, i1, j0, j1);                                                            \
    }                                                                                                     \
    static void qx_##NAME##_tile(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) {        \
        qx_block_impl(WT, a, i0, i0 + rm, j0, j0 + rn);                                                  \
    }                                                                                                     \
    static void qx_##NAME##_gemv(const tl_gemm_args *a, int64_t i0, int64_t i1) { qx_gemv_impl(WT, a, i0, i1); } \
    const tl_ukernel tl_neon_##NAME##_4x4 = {.rm = QX_R, .rn = QX_RN, .tile = qx_##NAME##_tile, .gemv_rows = QX_R, \
                                             .gemv = qx_##NAME##_gemv, .block = qx_##NAME##_block};
QX_FUNCS(q5_1, TL_Q5_1)
QX_FUNCS(iq4_nl, TL_IQ4_NL)
QX_FUNCS(iq4_xs, TL_IQ4_XS)
QX_FUNCS(q2_k, TL_Q2_K)
QX_FUNCS(q3_k, TL_Q3_K)
