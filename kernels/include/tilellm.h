/* tilellm.h — the one C ABI that every compiled kernel variant exports.
 *
 * Each variant (portable, avx2, avx512, neon, sme, sme2) is a separate cffi extension module
 * built from the shared sources plus its own kernel files, with its own compiler flags; all
 * export exactly these functions. Python validates every argument before calling in (see
 * tilellm.kernels), so the C side may assume: pointers non-NULL, sizes in range, k a multiple of
 * the weight type's block size, buffers at least as large as stated.
 *
 * No process-global arithmetic: everything that chooses how a result is computed (activation
 * rounding, 16-bit activations, kernel paths) is an option of a tl_ctx, and every entry point
 * that computes with weights takes one. Environment variables are not read here (Python reads
 * them once and passes them in as options).
 *
 * Layouts (tinyBLAS contract): weights W are m rows of k values, k contiguous, rows ldw bytes
 * apart, read straight from the mmap'd GGUF. Activations X are n rows (tokens) of k floats.
 * Output Y[j*ldy + i] = sum_k X[j,k] * W[i,k]  for token j < n, feature i < m.
 */
#ifndef TILELLM_H
#define TILELLM_H
#include <stddef.h>
#include <stdint.h>

/* GGML type ids (same numbers as the GGUF file format). */
enum tl_type {
    TL_F32 = 0, TL_F16 = 1, TL_Q4_0 = 2, TL_Q4_1 = 3, TL_Q5_0 = 6, TL_Q5_1 = 7,
    TL_Q8_0 = 8, TL_Q8_1 = 9, TL_Q2_K = 10, TL_Q3_K = 11, TL_Q4_K = 12, TL_Q5_K = 13,
    TL_Q6_K = 14, TL_Q8_K = 15, TL_IQ4_NL = 20, TL_IQ4_XS = 23, TL_BF16 = 30
};

enum tl_status {
    TL_OK = 0,
    TL_UNSUPPORTED = 1, /* "not handled": this variant has no kernel for it; caller falls back */
    TL_EINVAL = 2,      /* defensive check failed (Python should have caught it) */
    TL_ENOMEM = 3,
    TL_ENONFINITE = 4   /* a NaN or inf reached activations quantized to int8, which cannot hold it: the
                         * act buffer is written all the same, the groups concerned with scale NaN (so
                         * products with them are NaN, never a silent 0), but the caller should stop */
};

/* Name of this variant: "portable", "avx2", "avxvnni", "avx512", "neon", "sme", "sme2". */
const char *tl_variant(void);

/* CPU features of the running machine as a bitmask of TL_CPU_* (only meaningful when called
 * from the portable variant, which is compiled for the baseline ISA). */
enum tl_cpu_feature {
    TL_CPU_AVX2 = 1 << 0, TL_CPU_FMA = 1 << 1, TL_CPU_F16C = 1 << 2,
    TL_CPU_AVX512F = 1 << 3, TL_CPU_AVX512BW = 1 << 4, TL_CPU_AVX512VL = 1 << 5,
    TL_CPU_AVX512DQ = 1 << 6, TL_CPU_AVX512VNNI = 1 << 7, TL_CPU_AVX512BF16 = 1 << 8,
    TL_CPU_AMX_TILE = 1 << 9, TL_CPU_AMX_INT8 = 1 << 10, TL_CPU_AMX_BF16 = 1 << 11,
    TL_CPU_AVX_VNNI = 1 << 12,
    TL_CPU_NEON = 1 << 16, TL_CPU_DOTPROD = 1 << 17, TL_CPU_FP16 = 1 << 18,
    TL_CPU_SME = 1 << 19, TL_CPU_SME2 = 1 << 20, TL_CPU_I8MM = 1 << 21, TL_CPU_BF16 = 1 << 22
};
uint64_t tl_cpu_features(void);

/* One-time per-process setup this variant needs before its first kernel call (e.g. the SME
 * vector length). Returns TL_OK, or TL_UNSUPPORTED if the variant cannot run here. */
int tl_init(void);

/* ---- per-instance context -----------------------------------------------------------------------
 * A tl_ctx holds the options below and the state a kernel keeps between calls (the avx512 q8_0
 * gemv's speed measurements). Contexts never affect each other: two models in one process may
 * compute with different options. One context may be used by several threads at once. */
enum { TL_ACT_ROUND_FINE = 0, TL_ACT_ROUND_GGML = 1 };
enum { TL_Q8_GEMV_AUTO = 0, TL_Q8_GEMV_PANEL = 1, TL_Q8_GEMV_ROWS = 2 };
enum { TL_SME_TILE_AUTO = 0, TL_SME_TILE_WIDE = 1, TL_SME_TILE_TALL = 2 };
typedef struct {
    /* Activations of the quantized weight types: TL_ACT_ROUND_FINE one f32 scale per 16 values;
     * TL_ACT_ROUND_GGML one per 32 (q8_0 / q8_1 activations, scale rounded to fp16) or per 256
     * (q8_K, for the K-quants), ggml's granularity, to reproduce llama.cpp's rounding. */
    int act_rounding;
    /* avx512, bf16 weights: 0 vdpbf16ps on activations rounded to bf16 (llama.cpp's numerics);
     * 1 f32 activations and widened weights (exact products). */
    int bf16_exact;
    /* avx512, q8_0 with one token: TL_Q8_GEMV_AUTO picks the faster of two bit-identical paths
     * by measured speed (state in the context); PANEL / ROWS force one. */
    int q8_gemv;
    /* sme / sme2 micro-kernel shape: TL_SME_TILE_AUTO per weight panel; WIDE 16x64, TALL 64x16
     * (same bits). */
    int sme_tile;
    /* sme / sme2, bf16 weights: 0 f32 FMOPA on f32 activations; 1 BFMOPA on activations
     * rounded to bf16. */
    int sme_bf16;
    /* avx512, q8_0 / q4_0 prompts (n >= 96): 0 AMX int8 tiles where the CPU and OS have
     * them (same bits as the VNNI kernels), 1 never (the loader sets it under TILELLM_CPU_CAP). */
    int amx_off;
} tl_options;

typedef struct tl_ctx tl_ctx;

/* A context with these options (NULL: all 0), or NULL if an option is out of range, tl_init has
 * not succeeded, or memory is short. Free it with tl_ctx_free once no call uses it. */
tl_ctx *tl_ctx_new(const tl_options *opt);
void tl_ctx_free(tl_ctx *ctx);

/* 1 if tl_gemm handles weights of this type. */
int tl_supports(const tl_ctx *ctx, int wtype);
/* 1 if tl_gemm of n tokens with weights of this type runs on AMX tiles (tests, benchmarks). */
int tl_uses_amx(const tl_ctx *ctx, int wtype, int64_t n);

/* Type the activations are converted to for this weight type (e.g. Q8_0 for Q4_0, Q8_1 for
 * Q4_1, F32 for F32) and the bytes needed to hold n rows of k activations in it. */
int tl_act_type(const tl_ctx *ctx, int wtype);
size_t tl_act_bytes(const tl_ctx *ctx, int wtype, int64_t n, int64_t k);

/* Convert n rows of k floats (rows ldx floats apart) into the activation type for wtype,
 * written densely to act (tl_act_bytes bytes; act must be 64-byte aligned, kernels use aligned
 * vector loads on it). Done once, reusable for every weight of the
 * same type and k (q/k/v, gate/up). Returns TL_ENONFINITE if x holds a NaN or inf and wtype is
 * quantized (float activation types keep the values; their products are non-finite as in numpy).
 * The _rms and _swiglu forms below check their computed rows the same way. */
int tl_act_prepare(tl_ctx *ctx, int wtype, const float *x, int64_t ldx, int64_t n, int64_t k,
                   void *act, int nthreads);

/* tl_act_prepare of the RMS-normalised rows: xn[j] = x[j] / sqrt(mean(x[j]^2) + eps) * w (f32 rows of k,
 * written densely to xn, which the caller keeps for any weight type it later needs them as floats),
 * then xn prepared into act for wtype. The mean is the sum of squares accumulated in double, divided
 * by k; the rest in f32 in the order of the formula. One call for what decode does before q/k/v and
 * gate/up. */
int tl_act_prepare_rms(tl_ctx *ctx, int wtype, const float *x, int64_t ldx, const float *w, float eps, int64_t n,
                       int64_t k, float *xn, void *act, int nthreads);

/* tl_act_prepare of SwiGLU rows: xn = silu(g) * u = g / (1 + exp(-g)) * u elementwise ([n, k] dense
 * rows of g and u; exp by a polynomial good to ~2 ulp), written to xn, then prepared into act for
 * wtype: what decode does before the down projection, in one call. */
int tl_act_prepare_swiglu(tl_ctx *ctx, int wtype, const float *g, const float *u, int64_t n, int64_t k, float *xn,
                          void *act, int nthreads);

/* Y = X * W^T using activations from tl_act_prepare. */
int tl_gemm(tl_ctx *ctx, int wtype, const void *w, int64_t ldw, int64_t m, int64_t k,
            const void *act, int64_t n, float *y, int64_t ldy, int nthreads);

/* Several products sharing one prepared activation (q/k/v, gate/up): Y_i = X * W_i^T for
 * i < count (count <= TL_GEMM_MANY_MAX), every weight with the same activation type as wtype[0]
 * and the same k. Arguments per i as tl_gemm's. For one token (n == 1) the rows of all weights
 * are handed out to the threads as one job: one dispatch instead of count, and no thread idles
 * at the ragged end of a small matrix. Results equal count separate tl_gemm calls bit for bit. */
enum { TL_GEMM_MANY_MAX = 8 };
int tl_gemm_many(tl_ctx *ctx, int count, const int *wtype, const void *const *w, const int64_t *ldw,
                 const int64_t *m, int64_t k, const void *act, int64_t n, float *const *y, const int64_t *ldy,
                 int nthreads);

/* ---- one decoder layer for a few tokens: a layer program -----------------------------------------
 * Any decoder architecture (llama, qwen2, gemma3, deepseek2's dense and MoE layers) describes one layer
 * as a short list of steps (tl_step) over a scratch row of `row` floats per token, whose first n_embd
 * floats are the token's residual stream h. tl_layer_run runs n tokens through it in one call, each at
 * its own position and in its own cache slot (one sequence's decode step, or one step of several
 * sequences). The steps are the library's own entry points (tl_act_prepare*, tl_gemm_many, tl_attention)
 * plus small f32 loops; a token's result does not depend on the other tokens of the call while n is
 * below the kernels' packed-panel threshold (96 rows). */

/* One weight matrix: m rows of its k values, rows ldw bytes apart. */
typedef struct {
    int wtype;
    const void *w;
    int64_t ldw, m;
} tl_weight;

enum tl_op {
    TL_OP_RMS_NORM = 1,     /* row r of dst = rms_norm(row r of src) * vec (rows rows of n; in place allowed) */
    TL_OP_MATMUL = 2,       /* src (k floats, `pre` applied) times count weights; outputs one after another at dst */
    TL_OP_MATMUL_HEADS = 3, /* for r < rows: dst row r = W_r * src row r (W_r: w[0] + r * w_stride bytes) */
    TL_OP_ADD = 4,          /* dst rows += vec (if set) or src rows (n floats each) */
    TL_OP_COPY = 5,         /* dst rows = src rows */
    TL_OP_ROPE = 6,         /* rotate the first n (= n_rot) floats of each src row, in place (mode 1: NEOX) */
    TL_OP_STORE = 7,        /* src rows into cache `cache` at the token's position, c_off + r * c_ld */
    TL_OP_ATTENTION = 8,    /* causal attention of q (src, n_head rows) over caches `cache` (k) and `cache2` (v) */
    TL_OP_MOE = 9           /* dst (n floats) = sum over the chosen experts of weight * expert(src) */
};
enum tl_pre { TL_PRE_NONE = 0, TL_PRE_RMS = 1, TL_PRE_SWIGLU = 2, TL_PRE_GEGLU = 3 };
enum tl_gating { TL_GATING_SOFTMAX = 1, TL_GATING_SIGMOID = 2 };

/* A mixture-of-experts FFN (DeepSeek routing): scores = softmax or sigmoid of router * x; experts chosen on
 * scores + bias (bias may be NULL), within the n_group_used best groups (a group's score: its two best);
 * weights = the chosen scores (divided by their sum if norm) times scale; expert e is
 * down_e(silu(gate_e x) * up_e x), its matrices `stride` bytes after expert e - 1's. */
typedef struct {
    tl_weight router;
    const float *bias;
    int n_expert, n_used, gating, n_group, n_group_used, norm;
    float scale;
    tl_weight gate, up, down; /* expert 0 */
    int64_t gate_stride, up_stride, down_stride;
} tl_moe;

/* One step. Offsets (dst, src, src2) are floats into the token's scratch row; a step over heads has
 * `rows` rows ld_dst / ld_src floats apart (ld_src 0: the same row every time). */
typedef struct {
    int op, mode;            /* mode: MATMUL tl_pre; ROPE 0 adjacent pairs, 1 NEOX halves */
    int64_t dst, src, src2;  /* src2: the up half of a PRE_SWIGLU / PRE_GEGLU */
    int64_t rows, ld_dst, ld_src;
    int64_t n;               /* floats per row; MATMUL / MATMUL_HEADS: k */
    int count;               /* MATMUL: weights (1..TL_GEMM_MANY_MAX) */
    const tl_weight *w;      /* MATMUL: count weights; MATMUL_HEADS: head 0's */
    int64_t w_stride;        /* MATMUL_HEADS: bytes between heads' matrices */
    const float *vec;        /* RMS_NORM, PRE_RMS: norm weights [n]; ADD: added vector [n] or NULL */
    float eps, scale;        /* RMS eps; ATTENTION scale */
    int cache, cache2;       /* STORE: cache; ATTENTION: k and v caches */
    int64_t c_off, c_ld;     /* STORE: where row 0 goes in a cache position, values between rows */
    int64_t n_head, n_head_kv, dk, dv, window; /* ATTENTION: heads (rows), head sizes, sliding window (0: none) */
    const tl_moe *moe;
} tl_step;

/* A layer: its steps and the caches they write and read. Cache c holds n_slots slots slot_stride[c]
 * values apart, each n_ctx positions of cache_ld[c] values, stored as cache_type[c] (TL_F32, TL_F16, TL_BF16,
 * TL_Q8_0; cache_type NULL: all f32). A q8_0 cache is stored in whole blocks of 32: its strides, the offsets and
 * lengths of the rows stored into it and the head sizes read from it are multiples of 32. A store rounds the
 * token's floats to the cache's type; attention reads the stored type directly. */
typedef struct {
    int64_t n_embd, row, n_rot, n_ctx, n_slots;
    int n_steps;
    const tl_step *steps;
    int n_caches;
    void *const *caches;
    const int64_t *cache_ld, *slot_stride;
    const int *cache_type;
    int64_t max_k; /* set by tl_layer_check */
    int checked;   /* set by tl_layer_check */
} tl_program;

/* Checks every step of p (ops, sizes, every offset inside the row, weights' shapes, caches) once, and
 * marks p runnable: TL_OK, TL_EINVAL, or TL_UNSUPPORTED (a weight type this variant lacks). */
int tl_layer_check(const tl_ctx *ctx, tl_program *p);

/* n tokens through layer p: h [n, n_embd] (updated in place), rope angles cosv / sinv [n, n_rot / 2], token j
 * at position pos[j] of cache slot slot[j] (its keys and values are written there first; it attends to
 * positions 0..pos[j] of that slot). TL_ENOMEM if its scratch (allocated per call) cannot be had;
 * TL_ENONFINITE (from a step's activation preparation) if a value on the way to a quantized product was NaN
 * or inf: h and the caches are then partly updated. */
int tl_layer_run(tl_ctx *ctx, const tl_program *p, int64_t n, float *h, const float *cosv, const float *sinv,
                 const int64_t *pos, const int64_t *slot, int nthreads);

/* Measured FP32 FMA throughput (GFLOP/s) of this variant's widest vector unit on nthreads pool
 * threads: independent FMA chains for ~0.2 s (the "peak" that GEMM efficiency is quoted against). */
double tl_fma_peak(int nthreads);

/* Causal grouped-query attention in f32 (online softmax, no [T x S] score matrix):
 * q [T, H, D] (token rows ldq floats apart), k and v [S, Hkv, D] (rows ldk / ldv apart),
 * out [T, H, D] (rows ldo apart). Query t is at position n_past + t and sees keys
 * 0..n_past+t (window > 0: only the last `window` of those, a sliding window); S must equal
 * n_past + T; H a multiple of Hkv. */
int tl_attention(const float *q, int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv,
                 float *out, int64_t ldo, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t D,
                 int64_t n_past, int64_t window, float scale, int nthreads);

/* tl_attention over K and V stored as KV cache types (ktype / vtype: TL_F32, TL_F16, TL_BF16, or TL_Q8_0 in
 * ggml's blocks of 32, D then a multiple of 32), read directly: key s, kv head c at byte s * ldk + c * bytes(D)
 * of k (values alike, ldv bytes; a multiple of 4 for f32). The scores and sums are the f32 kernel's on the
 * stored values. */
int tl_attention_kv(const float *q, int64_t ldq, const void *k, int ktype, int64_t ldk, const void *v, int vtype,
                    int64_t ldv, float *out, int64_t ldo, int64_t T, int64_t S, int64_t H, int64_t Hkv, int64_t D,
                    int64_t n_past, int64_t window, float scale, int nthreads);

/* Bytes of n values of KV cache type t, or -1 if t is not one (or n is not whole q8_0 blocks). */
int64_t tl_kv_bytes(int type, int64_t n);

#endif
