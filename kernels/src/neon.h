/* neon.h — the NEON kernels (neon_float.c, neon_q8.c, neon_kquants.c) and their table (neon_table.c),
 * shared by the neon variant and the SME variants, which hand small batches to them. Built with at
 * least -march=armv8.2-a+dotprod+fp16. */
#ifndef TL_NEON_H
#define TL_NEON_H

#include "tl_internal.h"
#include "ukernel.h"

#if !defined(__ARM_FEATURE_DOTPROD) || !defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
#error "the NEON kernels need -march=armv8.2-a+dotprod+fp16 (or later)"
#endif

extern const tl_ukernel tl_neon_f32_4x6, tl_neon_f16_4x6, tl_neon_bf16_4x6;     /* n == 1: 8 rows at a time */
extern const tl_ukernel tl_neon_q8_0_4x4, tl_neon_q4_0_4x4, tl_neon_q4_1_4x4;   /* n == 1: 8 rows at a time */
extern const tl_ukernel tl_neon_q5_0_4x6, tl_neon_q4_k_4x6, tl_neon_q5_k_4x6, tl_neon_q6_k_4x6;

/* The NEON kernel for a weight type, NULL if none (neon_table.c). */
const tl_ukernel *tl_neon_lookup(int wtype);

#endif
