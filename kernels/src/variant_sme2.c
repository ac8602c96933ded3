/* variant_sme2.c — the `sme2` variant: as sme, plus SME2 four-register B loads (ld1w {z.s-z.s} with a
 * predicate-as-counter) in the micro-kernel of sme_mopa.c. */
#include "sme.h"

#if !defined(__ARM_FEATURE_SME2)
#error "the sme2 variant needs SME2 compiler flags"
#endif

const char tl_uk_name[] = "sme2";
const uint64_t tl_uk_required = TL_CPU_SME | TL_CPU_SME2 | TL_CPU_NEON | TL_CPU_DOTPROD | TL_CPU_FP16;
const tl_config tl_uk_config = {TL_CONFIG_DEFAULTS};
int tl_uk_init(void) { return tl_sme_init(); }
const tl_ukernel *tl_uk_lookup(const tl_ctx *ctx, int wtype) { return tl_sme_lookup(ctx, wtype); }
