/* variant_sme.c — the `sme` variant (SME1: FMOPA into four ZA tiles, single-register loads): the
 * MOPA kernels of sme_mopa.c for prompt batches, NEON (neon.h) for small ones. */
#include "sme.h"

const char tl_uk_name[] = "sme";
const uint64_t tl_uk_required = TL_CPU_SME | TL_CPU_NEON | TL_CPU_DOTPROD | TL_CPU_FP16;
const tl_config tl_uk_config = {TL_CONFIG_DEFAULTS};
int tl_uk_init(void) { return tl_sme_init(); }
const tl_ukernel *tl_uk_lookup(const tl_ctx *ctx, int wtype) { return tl_sme_lookup(ctx, wtype); }
