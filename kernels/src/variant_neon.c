/* variant_neon.c — the `neon` variant: ARMv8.2-A Advanced SIMD with dotprod (sdot) and fp16
 * conversions (-march=armv8.2-a+dotprod+fp16), every weight type; the kernels are in neon.h. */
#include "neon.h"

const char tl_uk_name[] = "neon";
const uint64_t tl_uk_required = TL_CPU_NEON | TL_CPU_DOTPROD | TL_CPU_FP16;
const tl_config tl_uk_config = {TL_CONFIG_DEFAULTS};
int tl_uk_init(void) { return TL_OK; }

const tl_ukernel *tl_uk_lookup(const tl_ctx *ctx, int wtype) {
    (void)ctx;
    return tl_neon_lookup(wtype);
}
