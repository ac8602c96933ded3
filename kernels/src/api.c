/* api.c — the exported C ABI of tilellm.h, identical in every variant; the variant-specific
 * part is only the micro-kernel table behind tl_uk_lookup (see ukernel.h). */
#include <stdatomic.h>

#include "tl_internal.h"
#include "ukernel.h"

int64_t tl_act_ldact(const tl_ukernel *uk, int wtype, int64_t k);
void tl_act_run(const tl_ukernel *uk, int wtype, const float *x, int64_t ldx, int64_t n, int64_t k,
                void *act, int nthreads);
void tl_act_run_swiglu(const tl_ukernel *uk, int wtype, const float *g, const float *u, int64_t n, int64_t k,
                       float *xn, void *act, int nthreads);
void tl_act_run_rms(const tl_ukernel *uk, int wtype, const float *x, int64_t ldx, const float *w, float eps,
                    int64_t n, int64_t k, float *xn, void *act, int nthreads);

static _Atomic int initialized; /* 1 once tl_init succeeded: no kernel runs before the check */

const char *tl_variant(void) { return tl_uk_name; }

int tl_init(void) {
    if ((tl_cpu_features() & tl_uk_required) != tl_uk_required) return TL_UNSUPPORTED;
    int rc = tl_uk_init();
    if (rc == TL_OK) atomic_store(&initialized, 1);
    return rc;
}

/* Kernel for wtype, only for types with a layout the shared code knows. */
static const tl_ukernel *lookup(int wtype) {
    if (tl_block_size(wtype) == 0) return NULL;
    return tl_uk_lookup(wtype);
}

int tl_supports(int wtype) { return lookup(wtype) != NULL; }

int tl_act_type(int wtype) {
    const tl_ukernel *uk = lookup(wtype);
    if (!uk) return -1;
    return uk->act_type ? uk->act_type : tl_default_act_type(wtype);
}

size_t tl_act_bytes(int wtype, int64_t n, int64_t k) {
    const tl_ukernel *uk = lookup(wtype);
    if (!uk || n < 1 || k < 1 || k % tl_block_size(wtype) != 0) return 0;
    return (size_t)(n * tl_act_ldact(uk, wtype, k));
}

int tl_act_prepare(int wtype, const float *x, int64_t ldx, int64_t n, int64_t k, void *act, int nthreads) {
    const tl_ukernel *uk = lookup(wtype);
    if (!uk || !atomic_load(&initialized)) return TL_UNSUPPORTED;
    if (!x || !act || n < 1 || k < 1 || k % tl_block_size(wtype) != 0 || (n > 1 && ldx < k) || nthreads < 1 ||
        ((uintptr_t)act & (TL_ACT_ALIGN - 1)) != 0)
        return TL_EINVAL;
    tl_act_run(uk, wtype, x, ldx, n, k, act, nthreads);
    return TL_OK;
}

/* Checks one product's arguments and fills its kernel and driver arguments. */
static int gemm_setup(int wtype, const void *w, int64_t ldw, int64_t m, int64_t k, const void *act, int64_t n,
                      float *y, int64_t ldy, int nthreads, const tl_ukernel **ukp, tl_gemm_args *a) {
    const tl_ukernel *uk = lookup(wtype);
    if (!uk || !atomic_load(&initialized)) return TL_UNSUPPORTED;
    if (!w || !act || !y || m < 1 || n < 1 || k < 1 || k % tl_block_size(wtype) != 0 || nthreads < 1 ||
        ((uintptr_t)act & (TL_ACT_ALIGN - 1)) != 0 ||
        (m > 1 && ldw < tl_row_bytes(wtype, k)) || (n > 1 && ldy < m))
        return TL_EINVAL;
    /* f32 weights are read as floats: rows must be 4-byte aligned (GGUF aligns tensor data) */
    if (wtype == TL_F32 && (((uintptr_t)w & 3) != 0 || (m > 1 && (ldw & 3) != 0))) return TL_EINVAL;
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

int tl_act_prepare_rms(int wtype, const float *x, int64_t ldx, const float *w, float eps, int64_t n, int64_t k,
                       float *xn, void *act, int nthreads) {
    const tl_ukernel *uk = lookup(wtype);
    if (!uk || !atomic_load(&initialized)) return TL_UNSUPPORTED;
    if (!x || !w || !xn || !act || n < 1 || k < 1 || k % tl_block_size(wtype) != 0 || (n > 1 && ldx < k) ||
        nthreads < 1 || ((uintptr_t)act & (TL_ACT_ALIGN - 1)) != 0)
        return TL_EINVAL;
    tl_act_run_rms(uk, wtype, x, ldx, w, eps, n, k, xn, act, nthreads);
    return TL_OK;
}

int tl_act_prepare_swiglu(int wtype, const float *g, const float *u, int64_t n, int64_t k, float *xn, void *act,
                          int nthreads) {
    const tl_ukernel *uk = lookup(wtype);
    if (!uk || !atomic_load(&initialized)) return TL_UNSUPPORTED;
    if (!g || !u || !xn || !act || n < 1 || k < 1 || k % tl_block_size(wtype) != 0 || nthreads < 1 ||
        ((uintptr_t)act & (TL_ACT_ALIGN - 1)) != 0)
        return TL_EINVAL;
    tl_act_run_swiglu(uk, wtype, g, u, n, k, xn, act, nthreads);
    return TL_OK;
}

int tl_gemm(int wtype, const void *w, int64_t ldw, int64_t m, int64_t k, const void *act, int64_t n, float *y,
            int64_t ldy, int nthreads) {
    const tl_ukernel *uk;
    tl_gemm_args a;
    int rc = gemm_setup(wtype, w, ldw, m, k, act, n, y, ldy, nthreads, &uk, &a);
    if (rc != TL_OK) return rc;
    tl_gemm_drive(uk, &a, nthreads);
    return TL_OK;
}

int tl_gemm_many(int count, const int *wtype, const void *const *w, const int64_t *ldw, const int64_t *m,
                 int64_t k, const void *act, int64_t n, float *const *y, const int64_t *ldy, int nthreads) {
    if (count < 1 || count > TL_GEMM_MANY_MAX || !wtype || !w || !ldw || !m || !y || !ldy) return TL_EINVAL;
    const tl_ukernel *uk[TL_GEMM_MANY_MAX];
    tl_gemm_args a[TL_GEMM_MANY_MAX];
    for (int i = 0; i < count; i++) {
        int rc = gemm_setup(wtype[i], w[i], ldw[i], m[i], k, act, n, y[i], ldy[i], nthreads, &uk[i], &a[i]);
        if (rc != TL_OK) return rc;
        if (tl_act_type(wtype[i]) != tl_act_type(wtype[0])) return TL_EINVAL; /* one prepared activation */
    }
    tl_gemm_drive_many(count, uk, a, nthreads);
    return TL_OK;
}
