/* ukernel_sme2.c — the `sme2` variant: as sme, plus SME2 four-register B loads
 * (ld1w {z.s-z.s} with a predicate-as-counter) in the micro-kernel; see sme_kernels.h. */
#define TL_SME2 1
#include "sme_kernels.h"

const char tl_uk_name[] = "sme2";
const uint64_t tl_uk_required = TL_CPU_SME | TL_CPU_SME2 | TL_CPU_NEON | TL_CPU_DOTPROD | TL_CPU_FP16;
