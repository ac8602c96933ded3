/* ukernel_sme.c — the `sme` variant (SME1: FMOPA into four ZA tiles, single-register loads);
 * the kernels are in sme_kernels.h, shared with the sme2 variant. NEON handles small batches. */
#define TL_SME2 0
#include "sme_kernels.h"

const char tl_uk_name[] = "sme";
const uint64_t tl_uk_required = TL_CPU_SME | TL_CPU_NEON | TL_CPU_DOTPROD | TL_CPU_FP16;
