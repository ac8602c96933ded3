/* api.c — the exported C ABI of tilellm.h, identical in every variant; the variant-specific
 * part is only the micro-kernel table behind tl_uk_lookup (see ukernel.h). */
#include <stdatomic.h>
#include <stdlib.h>

#include "tl_internal.h"
#include "ukernel.h"

int64_t tl_act_ldact(const tl_ukernel *uk, int wtype, int64_t k);
int tl_act_run(const tl_ctx *ctx, const tl_ukernel *uk, int wtype, const float *x, int64_t ldx, int64_t n,
                int64_t k, void *act, int nthreads);
int tl_act_run_swiglu(const tl_ctx *ctx, const tl_ukernel *uk, int wtype, const float *g, const float *u, int64_t n,
                       int64_t k, float *xn, void *act, int nthreads);
int tl_act_run_rms(const tl_ctx *ctx, const tl_ukernel *uk, int wtype, const float *x, int64_t ldx, const float *w,
                    float eps, int64_t n, int64_t k, float *xn, void *act, int nthreads);

/* 1 once tl_init succeeded (per-process setup, not arithmetic): no context exists before it. */
static _Atomic int initialized;

const char *tl_variant(void) { return tl_uk_name; }

int tl_init(void) {
    if ((tl_cpu_features() & tl_uk_required) != tl_uk_required) return TL_UNSUPPORTED;
    int rc = tl_uk_init();
    if (rc == TL_OK) atomic_store(&initialized, 1);
    return rc;
}

tl_ctx *tl_ctx_new(const tl_options *opt) {
    static const tl_options defaults;
    if (!opt) opt = &defaults;
    if (!atomic_load(&initialized) || (unsigned)opt->act_rounding > TL_ACT_ROUND_GGML ||
        (unsigned)opt->bf16_exact > 1 || (unsigned)opt->q8_gemv > TL_Q8_GEMV_ROWS ||
        (unsigned)opt->sme_tile > TL_SME_TILE_TALL || (unsigned)opt->sme_bf16 > 1 ||
        (unsigned)opt->amx_off > 1)
        return NULL;
    tl_ctx *ctx = (tl_ctx *)calloc(1, sizeof *ctx);
    if (ctx) ctx->opt = *opt;
    return ctx;
}

void tl_ctx_free(tl_ctx *ctx) { free(ctx); }

/* Kernel for wtype, only for types with a layout the shared code knows. */
static const tl_ukernel *lookup(const tl_ctx *ctx, int wtype) {
    if (!ctx || tl_block_size(wtype) == 0) return NULL;
    return tl_uk_lookup(ctx, wtype);
}

int tl_supports(const tl_ctx *ctx, int wtype) { return lookup(ctx, wtype) != NULL; }

int tl_uses_amx(const tl_ctx *ctx, int wtype, int64_t n) {
    const tl_ukernel *uk = lookup(ctx, wtype);
    if (uk && uk->big && n >= uk->big_n) uk = uk->big;
    return uk ? uk->amx : 0;
}

int tl_act_type(const tl_ctx *ctx, int wtype) {
    const tl_ukernel *uk = lookup(ctx, wtype);
    if (!uk) return -1;
    return uk->act_type ? uk->act_type : tl_default_act_type(wtype);
}

size_t tl_act_bytes(const tl_ctx *ctx, int wtype, int64_t n, int64_t k) {
    const tl_ukernel *uk = lookup(ctx, wtype);
    if (!uk || n < 1 || k < 1 || k % tl_block_size(wtype) != 0) return 0;
    return (size_t)(n * tl_act_ldact(uk, wtype, k));
}

int tl_act_prepare(tl_ctx *ctx, int wtype, const float *x, int64_t ldx, int64_t n, int64_t k, void *act,
                   int nthreads) {
    const tl_ukernel *uk = lookup(ctx, wtype);
    if (!uk) return TL_UNSUPPORTED;
    if (!x || !act || n < 1 || k < 1 || k % tl_block_size(wtype) != 0 || (n > 1 && ldx < k) || nthreads < 1 ||
        ((uintptr_t)act & (TL_ACT_ALIGN - 1)) != 0)
        return TL_EINVAL;
    return tl_act_run(ctx, uk, wtype, x, ldx, n, k, act, nthreads); /* TL_OK or TL_ENONFINITE */
}

/* Checks one product's arguments and fills its kernel and driver arguments. */
static int gemm_setup(tl_ctx *ctx, int wtype, const void *w, int64_t ldw, int64_t m, int64_t k, const void *act,
                      int64_t n, float *y, int64_t ldy, int nthreads, const tl_ukernel **ukp, tl_gemm_args *a) {
    const tl_ukernel *uk = lookup(ctx, wtype);
    if (!uk) return TL_UNSUPPORTED;
    if (!w || !act || !y || m < 1 || n < 1 || k < 1 || k % tl_block_size(wtype) != 0 || nthreads < 1 ||
        ((uintptr_t)act & (TL_ACT_ALIGN - 1)) != 0 ||
        (m > 1 && ldw < tl_row_bytes(wtype, k)) || (n > 1 && ldy < m))
        return TL_EINVAL;
    /* f32 weights are read as floats: rows must be 4-byte aligned (GGUF aligns tensor data) */
    if (wtype == TL_F32 && (((uintptr_t)w & 3) != 0 || (m > 1 && (ldw & 3) != 0))) return TL_EINVAL;
    a->ctx = ctx;
    a->wtype = wtype;
    a->w = (const uint8_t *)w;
    a->ldw = m > 1 ? ldw : tl_row_bytes(wtype, k);
    a->act = (const uint8_t *)act;
    a->ldact = tl_act_ldact(uk, wtype, k);
    a->y = y;
    a->ldy = n > 1 ? ldy : m;
    a->m = m;
    a->n = n;
    a->k = k;
    *ukp = uk;
    return TL_OK;
}

int tl_act_prepare_rms(tl_ctx *ctx, int wtype, const float *x, int64_t ldx, const float *w, float eps, int64_t n,
                       int64_t k, float *xn, void *act, int nthreads) {
    const tl_ukernel *uk = lookup(ctx, wtype);
    if (!uk) return TL_UNSUPPORTED;
    if (!x || !w || !xn || !act || n < 1 || k < 1 || k % tl_block_size(wtype) != 0 || (n > 1 && ldx < k) ||
        nthreads < 1 || ((uintptr_t)act & (TL_ACT_ALIGN - 1)) != 0)
        return TL_EINVAL;
    return tl_act_run_rms(ctx, uk, wtype, x, ldx, w, eps, n, k, xn, act, nthreads);
}

int tl_act_prepare_swiglu(tl_ctx *ctx, int wtype, const float *g, const float *u, int64_t n, int64_t k, float *xn,
                          void *act, int nthreads) {
    const tl_ukernel *uk = lookup(ctx, wtype);
    if (!uk) return TL_UNSUPPORTED;
    if (!g || !u || !xn || !act || n < 1 || k < 1 || k % tl_block_size(wtype) != 0 || nthreads < 1 ||
        ((uintptr_t)act & (TL_ACT_ALIGN - 1)) != 0)
        return TL_EINVAL;
    return tl_act_run_swiglu(ctx, uk, wtype, g, u, n, k, xn, act, nthreads);
}

int tl_gemm(tl_ctx *ctx, int wtype, const void *w, int64_t ldw, int64_t m, int64_t k, const void *act, int64_t n,
            float *y, int64_t ldy, int nthreads) {
    const tl_ukernel *uk;
    tl_gemm_args a;
    int rc = gemm_setup(ctx, wtype, w, ldw, m, k, act, n, y, ldy, nthreads, &uk, &a);
    if (rc != TL_OK) return rc;
    tl_gemm_drive(uk, &a, nthreads);
    return TL_OK;
}

int tl_gemm_many(tl_ctx *ctx, int count, const int *wtype, const void *const *w, const int64_t *ldw,
                 const int64_t *m, int64_t k, const void *act, int64_t n, float *const *y, const int64_t *ldy,
                 int nthreads) {
    if (count < 1 || count > TL_GEMM_MANY_MAX || !wtype || !w || !ldw || !m || !y || !ldy) return TL_EINVAL;
    const tl_ukernel *uk[TL_GEMM_MANY_MAX];
    tl_gemm_args a[TL_GEMM_MANY_MAX];
    for (int i = 0; i < count; i++) {
        int rc = gemm_setup(ctx, wtype[i], w[i], ldw[i], m[i], k, act, n, y[i], ldy[i], nthreads, &uk[i], &a[i]);
        if (rc != TL_OK) return rc;
        if (tl_act_type(ctx, wtype[i]) != tl_act_type(ctx, wtype[0])) return TL_EINVAL; /* one prepared activation */
    }
    tl_gemm_drive_many(count, uk, a, nthreads);
    return TL_OK;
}
