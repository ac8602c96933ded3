/* ukernel.h — the contract between the shared gemm driver (gemm.c) and a per-ISA micro-kernel.
 *
 * BLIS-style split: everything except the innermost register-tiled loop is written once
 * (threading, tiling of m x n, ragged edges, activation preparation, the C ABI in api.c).
 * An ISA adds itself with its kernel files (kernels/src/<isa>_<what>.c, e.g. avx512_q8.c) and one
 * variant file, kernels/src/variant_<name>.c, listed with its compiler flags and CPU features in
 * kernels/variants.py; setup.py then builds it (kernels/build_variants.py).
 *
 * What the variant file must define (exactly these five symbols):
 *
 *   const char tl_uk_name[] = "avx2";                 // the variant name (tl_variant())
 *   const uint64_t tl_uk_required = TL_CPU_AVX2 | TL_CPU_FMA | TL_CPU_F16C;
 *                                                     // tl_init() refuses to run without these
 *   const tl_config tl_uk_config = {TL_CONFIG_DEFAULTS};
 *                                                     // the driver's block sizes and cache budgets
 *   int tl_uk_init(void);                             // per-process setup (e.g. the SME vector
 *                                                     // length); TL_OK or TL_UNSUPPORTED
 *   const tl_ukernel *tl_uk_lookup(const tl_ctx *ctx, int wtype);
 *                                                     // kernel for a weight type, NULL = "not
 *                                                     // handled" (tl_gemm returns TL_UNSUPPORTED
 *                                                     // and Python falls back to a lower variant);
 *                                                     // ctx->opt may choose between kernels
 *
 * Kernel tables are tl_ukernel objects with designated initializers, named tl_<isa>_<type>_<RMxRN>
 * (e.g. tl_avx512_q4_k_16x8), declared in the ISA's header (avx512.h, ...).
 *
 * The driver calls, for a matmul Y[n x m] = X[n x k] * W[m x k]^T (see tl_gemm_args):
 *
 *   tile(a, i0, j0, rm, rn)   REQUIRED. Compute, over the whole k, the rm x rn block
 *       y[(j0+j)*ldy + i0+i] = dot(weight row i0+i, prepared act row j0+j),  i < rm, j < rn,
 *       overwriting y (no accumulate). 1 <= rm <= uk->rm and 1 <= rn <= uk->rn: full tiles are
 *       the common case, but edges hand in smaller ones and the kernel must handle every size
 *       (typically a switch over specialised inline instances). Weights are read straight from
 *       the (mmap'd, read-only, possibly only 2-byte aligned) rows: w + i*ldw, k contiguous.
 *       Row tiles start at multiples of uk->rm (only the last one is short); token tiles are
 *       balanced (widths differ by at most 1).
 *   gemv(a, i0, i1)            OPTIONAL, used when n == 1: rows [i0, i1) of the single output
 *       row. i0 is a multiple of uk->gemv_rows (set it >= 1 when gemv is given). If NULL the
 *       driver uses tile(.., rn = 1).
 *   block(a, i0, i1, j0, j1)   OPTIONAL, replaces the per-tile loop for n > 1: the driver hands
 *       whole blocks (i0 a multiple of uk->rm, i1 = a multiple of uk->rm or m, j-range any) so a
 *       kernel may unpack/repack a panel of weights once into a thread-local buffer and reuse
 *       it for every token tile (the x86 quantized panels, SME). Must compute exactly those outputs.
 *   act_row_bytes / act_prepare  OPTIONAL pair: a variant that wants its own activation layout
 *       (e.g. SME's 16-bit rows) provides both, or a vectorised writer of a shared layout (x86);
 *       otherwise the shared layouts of tl_internal.h are used (q8 rows: int8 qs[k] | f32
 *       d[k/16] | f32 s[k/16] | int16 isum[k/16], 64-B aligned rows). act_prepare converts
 *       tokens [j0, j1) and is called from several threads with disjoint ranges.
 *       act_type names the prepared type when it is not the default (e.g. TL_F16 / TL_BF16
 *       for SME's widening MOPAs): prepared buffers are shared only between weight types whose
 *       act type is equal.
 *
 *   kc                         OPTIONAL: block walks k in chunks of kc values, so the driver
 *       sizes token and row blocks for one chunk rather than whole rows.
 *   big, big_n                 OPTIONAL: for n >= big_n the driver runs `big` instead (same weight
 *       type and activation layout; e.g. avx512's packed float panels, avx512_float_packed.c).
 *   small(a, i0, i1), small_n  OPTIONAL, for 2 <= n <= small_n: like gemv (the driver splits only m,
 *       in chunks of gemv_rows multiples) but for every token of the call; it must give each token's
 *       outputs the same bits as gemv would (e.g. avx512_q8_small.h). Needs gemv.
 *
 * Rules:
 *   - Thread safety: every function may run concurrently on disjoint outputs; no globals
 *     except thread-local scratch and hardware constants set by tl_uk_init. Options and
 *     state between calls live in the caller's context (a->ctx: tl_options, tl_path_pick).
 *     The driver's split never changes which tile computes a given output, so if a kernel's
 *     summation order depends only on k (not on rm, rn, or the position), results are
 *     bit-identical for any thread count — please keep it that way.
 *   - Numerics: accumulate in f32 or wider (never f16/bf16); quantized types: exact integer
 *     dot inside each 16-value activation group (one f32 scale per 16), then scale and
 *     accumulate in f32. q4_1 block: d_w*(d_x0*dot0 + d_x1*dot1) + m_w*(s_x0 + s_x1).
 *   - Arguments are validated by Python and api.c (k a multiple of the block size, m, n, k
 *     >= 1, strides in range); kernels need no checks.
 *   - No malloc in tile/gemv: use the stack or tl_scratch(bytes) (threadpool.h: per-thread,
 *     64-byte aligned, reused across calls, freed at thread exit). The driver owns threading:
 *     never call tl_parallel_for from a kernel.
 */
#ifndef TL_UKERNEL_H
#define TL_UKERNEL_H

#include <stdatomic.h>
#include <stdint.h>
#include <stddef.h>

#include "tilellm.h"

/* A choice between two bit-identical kernel paths by their measured speed (ns per 16 KiB of
 * weights, smoothed; 0 = not measured yet), kept per context. */
typedef struct {
    _Atomic uint32_t rate[2];
    _Atomic uint32_t tick;
} tl_path_pick;

/* The context of tilellm.h: options, and the state kernels keep between calls. */
struct tl_ctx {
    tl_options opt;
    tl_path_pick q8_gemv; /* avx512 q8_0 n == 1: panel (0) or rows (1) */
};

typedef struct tl_gemm_args {
    tl_ctx *ctx;            /* the caller's context: options, per-context kernel state */
    int wtype;              /* enum tl_type of the weights */
    const uint8_t *w;       /* weight row i at w + i*ldw (bytes), row_bytes(wtype, k) long */
    int64_t ldw;
    const uint8_t *act;     /* prepared token row j at act + j*ldact (bytes) */
    int64_t ldact;
    float *y;               /* output: y[j*ldy + i] (floats) */
    int64_t ldy;
    int64_t m, n, k;        /* m weight rows, n tokens, k values per row */
} tl_gemm_args;

typedef struct tl_ukernel {
    int rm, rn;             /* register tile: rm weight rows x rn tokens (>= 1 each) */
    void (*tile)(const tl_gemm_args *a, int64_t i0, int64_t j0, int rm, int rn);
    int gemv_rows;          /* row granularity of gemv (>= 1 if gemv != NULL) */
    void (*gemv)(const tl_gemm_args *a, int64_t i0, int64_t i1);
    void (*block)(const tl_gemm_args *a, int64_t i0, int64_t i1, int64_t j0, int64_t j1);
    int64_t (*act_row_bytes)(int64_t k);
    void (*act_prepare)(const float *x, int64_t ldx, int64_t j0, int64_t j1, int64_t k,
                        uint8_t *act, int64_t ldact);
    int act_type;           /* 0: the shared default (tl_default_act_type); else the enum
                             * tl_type that tl_act_type reports for act_prepare's rows */
    int kc;                 /* 0, or: block walks k in chunks of kc values (packing per chunk),
                             * so the driver sizes its token and row blocks for one chunk */
    const struct tl_ukernel *big; /* NULL, or a kernel the driver runs instead when n >= big_n */
    int big_n;              /* (e.g. packed panels that only pay for themselves on prompts) */
    void (*small)(const tl_gemm_args *a, int64_t i0, int64_t i1);
                            /* NULL, or for 2 <= n <= small_n: rows [i0, i1) (i0 a multiple of
                             * gemv_rows) x all n tokens, the gemv's per-row arithmetic (batched
                             * decode: one weight stream for a few tokens) */
    int small_n;
    int amx;                /* 1: runs on AMX tiles (tl_uses_amx) */
} tl_ukernel;

/* Block sizes and cache budgets of the shared driver (gemm.c) for one ISA, as BLIS's per-CPU config. */
typedef struct tl_config {
    int64_t act_block_bytes;     /* prepared activations per job: ~L2-resident */
    int64_t w_block_bytes;       /* weight rows per job: stay in L2 across token blocks */
    int jobs_per_thread;         /* enough jobs to balance, few enough to amortise */
    int64_t serial_macs;         /* below this, one thread: dispatch costs more */
    int kc_act_factor;           /* kernels with kc: x the activation budget per job (one chunk is live) */
    int kc_jobs_per_thread;      /*   and this many jobs per thread: tall, wide jobs, each panel serving more */
    int gemv_chunks_per_thread;  /* n == 1: row chunks per thread (small enough to rebalance) */
} tl_config;

/* The budgets every variant has used so far (a 1-2 MiB L2 per core). The kc pair: avx512 f32, 2
 * threads, n = 512: +3.5 to +4.5 % on 2048x2048 .. 4096x4096, bf16 +3 % (A/B in one process). */
#define TL_CONFIG_DEFAULTS                                                                            \
    .act_block_bytes = 512 * 1024, .w_block_bytes = 512 * 1024, .jobs_per_thread = 6,                 \
    .serial_macs = 1 << 17, .kc_act_factor = 4, .kc_jobs_per_thread = 2, .gemv_chunks_per_thread = 8

/* Defined by the variant's variant_<name>.c. */
extern const char tl_uk_name[];
extern const uint64_t tl_uk_required;
extern const tl_config tl_uk_config;
int tl_uk_init(void);
const tl_ukernel *tl_uk_lookup(const tl_ctx *ctx, int wtype);

#endif
