/* avx512_q8_amx.h — the prompt GEMM (n >= Q_AMX_MIN_N tokens) of q8_0 and q4_0 on AMX int8 tiles,
 * #included by avx512_q8.c (it reuses the 16-row panels of q_pack). Not q4_1: its extra min term per
 * token and block made this path slower than the VNNI panel (0.84-0.97x, 1 thread, n = 512).
 *
 * Why tiles of K = 16: the activations carry one scale per 16 values, so every int32 group dot must
 * be separate before it is scaled. A TDPBSSD over 16 bytes of K costs ~0.45 of one over 64 here
 * (measured 5.9 vs 13.4 ns), so K = 16 tiles still do ~9x the MACs per second of vpdpbusd (693 vs
 * 78 GMAC/s per core); the f32 scaling after them is what bounds this path.
 *
 * Layout: C tile = 16 tokens (rows) x 16 weight rows (int32 lanes), as the VNNI panel tile keeps
 * them; A = the tokens' int8 activations of one group, loaded straight from the prepared rows
 * (stride ldact); B = one group of the packed panel (4 rows of 16 weight rows x 4 bytes: exactly
 * q_pack's "row in lane" layout), packed signed (q8_0: q, q4_0: nibble - 8) so no
 * offset correction is needed. Each block's two dots are stored, reloaded as 16 zmm and scaled with
 * the very operations of q_panel_tile: f = dot0 dx0, fma(dot1, dx1, f), y = fma(f, d, y), blocks in
 * order. The int32 dots are exact in both, so this path gives the VNNI path's
 * bits for every output: which path a row takes never changes its result.
 *
 * Availability: Linux grants the tile data state per process (arch_prctl ARCH_REQ_XCOMP_PERM),
 * requested once by tl_uk_init; the context's amx_off option (set by the loader under
 * TILELLM_CPU_CAP) turns it off. Functions carry the AMX target attribute, so the variant's
 * flags stay those of every AVX-512 VNNI CPU. */
#if defined(__x86_64__) && defined(__linux__) &&                                                              \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define Q_AMX 1
#include <sys/syscall.h>
#include <unistd.h>

#define Q_AMX_FN __attribute__((target("amx-tile,amx-int8")))
#define Q_AMX_T 16               /* tokens per tile */
#define Q_AMX_ARCH_REQ_XCOMP_PERM 0x1023
#define Q_AMX_XFEATURE_XTILEDATA 18

static int q_amx_granted; /* set once by tl_avx512_amx_init (a hardware constant, as ukernel.h allows) */

int tl_avx512_amx_init(void) {
    const uint64_t need = TL_CPU_AMX_TILE | TL_CPU_AMX_INT8;
    if ((tl_cpu_features() & need) != need) return 0;
    if (syscall(SYS_arch_prctl, Q_AMX_ARCH_REQ_XCOMP_PERM, Q_AMX_XFEATURE_XTILEDATA) != 0) return 0;
    q_amx_granted = 1;
    return 1;
}

int tl_avx512_amx_usable(const tl_ctx *ctx) { return q_amx_granted && !ctx->opt.amx_off; }

/* tiles 0, 1 and 6, 7: C of a block's groups 0, 1; 2, 3: A (tokens x 16 bytes); 4, 5: B (4 x 64 bytes). The
 * 64-byte config (palette, start row, 14 reserved, 16 colsb words, 16 row counts) is loaded by our own
 * asm with a 64-byte operand: gcc 12's _tile_loadconfig declares an 8-byte one, so gcc dropped the
 * stores of the colsb / rows fields as dead (seen in the disassembly; the ldtilecfg then faulted). */
typedef struct {
    uint8_t b[64];
} q_amx_cfgbytes;

/* Another library in the process (llama.cpp's ggml does) may keep its own tile config loaded on this
 * thread between its calls: q_amx_config saves it, q_amx_restore puts it back (or releases the tiles
 * if none was loaded), so a call here never leaves another's tile instructions unconfigured (#UD). */
Q_AMX_FN static void q_amx_save(q_amx_cfgbytes *old) { __asm__ volatile("sttilecfg %0" : "=m"(*old)); }

Q_AMX_FN static void q_amx_restore(const q_amx_cfgbytes *old) {
    if (old->b[0] == 0) _tile_release(); /* palette 0: nothing was configured */
    else __asm__ volatile("ldtilecfg %0" ::"m"(*old));
}

Q_AMX_FN static void q_amx_config(void) {
    uint8_t c[64] __attribute__((aligned(64)));
    memset(c, 0, sizeof c);
    c[0] = 1;
    for (int t = 0; t < 8; t++) {
        const int colsb = t == 2 || t == 3 ? 16 : 64, rows = t == 4 || t == 5 ? 4 : Q_AMX_T;
        c[16 + 2 * t] = (uint8_t)colsb; /* little-endian words */
        c[48 + t] = (uint8_t)rows;
    }
    __asm__ volatile("ldtilecfg %0" ::"m"(*(const q_amx_cfgbytes *)c));
}

/* Per-job table of the activation scales, tokens in lanes: for token tile t and block b, 16 dx0 and 16
 * dx1 at sc + (t nb + b) Q_AMX_SB. Dead tokens: 0. */
#define Q_AMX_SB 32

static void q_amx_scales(const tl_gemm_args *a, int64_t j0, int64_t j1, float *sc) {
    const int64_t k = a->k, nb = k / TL_QK, nt = (j1 - j0 + Q_AMX_T - 1) / Q_AMX_T;
    memset(sc, 0, (size_t)(nt * nb * Q_AMX_SB) * sizeof(float));
    for (int64_t j = j0; j < j1; j++) {
        const uint8_t *xr = a->act + j * a->ldact;
        const float *dx = x86_qa_d(xr, k);
        float *o = sc + (j - j0) / Q_AMX_T * nb * Q_AMX_SB + (j - j0) % Q_AMX_T;
        for (int64_t b = 0; b < nb; b++, o += Q_AMX_SB) {
            o[0] = dx[2 * b];
            o[16] = dx[2 * b + 1];
        }
    }
}

/* One block's tile work: C0 / C1 = its group 0 / 1 dots (A tiles 2, 3 and B tiles 4, 5 reloaded). */
#define Q_AMX_ISSUE(C0, C1, b)                                                                                \
    do {                                                                                                      \
        const uint8_t *P_ = panel + (b) * Q_BLK_BYTES;                                                        \
        _tile_zero(C0);                                                                                       \
        _tile_zero(C1);                                                                                       \
        _tile_loadd(2, x + 32 * (b), ldx);                                                                    \
        _tile_loadd(4, P_, 64);                                                                               \
        _tile_dpbssd(C0, 2, 4);                                                                               \
        _tile_loadd(3, x + 32 * (b) + 16, ldx);                                                               \
        _tile_loadd(5, P_ + 256, 64);                                                                         \
        _tile_dpbssd(C1, 3, 5);                                                                               \
    } while (0)

/* y[j] += block b's terms from its stored dots (c: 16 tokens x 16 rows of group 0, then of group 1), in
 * q_panel_tile's operations and order. */
Q_AMX_FN TL_INLINE void q_amx_scale(const uint8_t *panel, const float *sc, int64_t b, const int32_t *c,
                                    __m512 y[Q_AMX_T]) {
    const float *s = sc + b * Q_AMX_SB;
    const __m512 d = _mm512_load_ps((const float *)(panel + b * Q_BLK_BYTES + 512));
    for (int j = 0; j < Q_AMX_T; j++) {
        const __m512 c0 = _mm512_cvtepi32_ps(_mm512_load_si512((const void *)(c + 16 * j)));
        const __m512 c1 = _mm512_cvtepi32_ps(_mm512_load_si512((const void *)(c + 256 + 16 * j)));
        const __m512 f = _mm512_fmadd_ps(c1, _mm512_set1_ps(s[16 + j]), _mm512_mul_ps(c0, _mm512_set1_ps(s[j])));
        y[j] = _mm512_fmadd_ps(f, d, y[j]);
    }
}

/* 16 weight rows (panel, nr live) x the 16 tokens whose int8 rows start at x (stride ldx; nv live,
 * the rest zero rows with zero scales), over all blocks; y rows j0... Two pairs of C tiles (0, 1 for
 * even blocks, 6, 7 for odd ones): the next block's tile products run while this one's dots are stored
 * and scaled (tiles are not renamed: with one pair each block waited for the last; 45 -> 34 ns per
 * block of 16 x 16 outputs, measured in isolation). */
Q_AMX_FN TL_INLINE void q_amx_tile(const tl_gemm_args *a, const uint8_t *panel, const float *sc,
                                   const uint8_t *x, int64_t ldx, int64_t i0, int nr, int64_t j0, int nv) {
    const int64_t nb = a->k / TL_QK;
    int32_t cbuf[4 * Q_AMX_T * 16] __attribute__((aligned(64)));
    __m512 y[Q_AMX_T];
    for (int j = 0; j < Q_AMX_T; j++) y[j] = _mm512_setzero_ps();
    Q_AMX_ISSUE(0, 1, 0);
    for (int64_t b = 0; b < nb; b += 2) {
        if (b + 1 < nb) Q_AMX_ISSUE(6, 7, b + 1);
        _tile_stored(0, cbuf, 64);
        _tile_stored(1, cbuf + 256, 64);
        q_amx_scale(panel, sc, b, cbuf, y);
        if (b + 1 >= nb) break;
        if (b + 2 < nb) Q_AMX_ISSUE(0, 1, b + 2);
        _tile_stored(6, cbuf + 512, 64);
        _tile_stored(7, cbuf + 768, 64);
        q_amx_scale(panel, sc, b + 1, cbuf + 512, y);
    }
    const __mmask16 rmask = (__mmask16)((1u << nr) - 1);
    for (int j = 0; j < nv; j++) _mm512_mask_storeu_ps(a->y + (j0 + j) * a->ldy + i0, rmask, y[j]);
}

/* The driver's block: rows [i0, i1) x tokens [j0, j1). One scratch buffer: the panel, the scale table
 * and (for a ragged last token tile) its activations copied with zero rows below. */
Q_AMX_FN TL_INLINE void q_amx_block(const int WT, const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0,
                                    int64_t j1) {
    const int64_t k = a->k, nb = k / TL_QK, nt = (j1 - j0 + Q_AMX_T - 1) / Q_AMX_T;
    const int64_t rag = (j1 - j0) % Q_AMX_T, ldp = tl_round_up(k, 64);
    const size_t panel_bytes = (size_t)(nb * Q_BLK_BYTES), sc_bytes = (size_t)(nt * nb * Q_AMX_SB) * sizeof(float);
    uint8_t *buf = a->ldw > INT32_MAX / Q_R ? NULL : x86_scratch(panel_bytes + sc_bytes + (size_t)(Q_AMX_T * ldp));
    if (!buf) {
        q_block_impl(WT, a, i0, i1, j0, j1);
        return;
    }
    float *sc = (float *)(buf + panel_bytes);
    uint8_t *pad = buf + panel_bytes + sc_bytes;
    q_amx_scales(a, j0, j1, sc);
    if (rag) {
        memset(pad, 0, (size_t)(Q_AMX_T * ldp));
        for (int64_t j = 0; j < rag; j++) memcpy(pad + j * ldp, a->act + (j1 - rag + j) * a->ldact, (size_t)k);
    }
    q_amx_cfgbytes old;
    q_amx_save(&old);
    q_amx_config();
    for (int64_t i = i0; i < i1; i += Q_R) {
        const int nr = (int)TL_MIN((int64_t)Q_R, i1 - i);
        q_pack(WT, 1, a, i, nr, buf);
        __asm__ volatile("" ::: "memory"); /* gcc's tileloadd asm declares no memory input: keep the packing before it */
        for (int64_t t = 0; t < nt; t++) {
            const int64_t jt = j0 + t * Q_AMX_T;
            const int nv = (int)TL_MIN((int64_t)Q_AMX_T, j1 - jt);
            const float *sct = sc + t * nb * Q_AMX_SB;
            if (nv == Q_AMX_T) q_amx_tile(a, buf, sct, a->act + jt * a->ldact, a->ldact, i, nr, jt, nv);
            else q_amx_tile(a, buf, sct, pad, ldp, i, nr, jt, nv);
        }
    }
    q_amx_restore(&old);
}

#define Q_AMX_FUNCS(NAME, WT)                                                                                 \
    Q_AMX_FN static void NAME##_amx_block_16x16(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0,    \
                                                 int64_t j1) {                                                \
        q_amx_block(WT, a, i0, i1, j0, j1);                                                                   \
    }                                                                                                         \
    Q_AMX_FN static void NAME##_amx_tile_16x16(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn) { \
        q_amx_block(WT, a, i0, i0 + rm, j0, j0 + rn);                                                         \
    }                                                                                                         \
    static const tl_ukernel NAME##_amx_16x16 = {.rm = Q_R, .rn = Q_AMX_T, .tile = NAME##_amx_tile_16x16,      \
                                                .block = NAME##_amx_block_16x16, .amx = 1,                    \
                                                .act_row_bytes = x86_qa_row_bytes,                            \
                                                .act_prepare = tl_avx512_q8_act_prepare};
Q_AMX_FUNCS(q8_0, TL_Q8_0)
Q_AMX_FUNCS(q4_0, TL_Q4_0)

#else /* no AMX here (not x86-64 Linux, or a compiler without the intrinsics) */
int tl_avx512_amx_init(void) { return 0; }
int tl_avx512_amx_usable(const tl_ctx *ctx) {
    (void)ctx;
    return 0;
}
#endif
