/* sme.h — the SME kernels (sme_mopa.c) the sme and sme2 variants' tables are made of. */
#ifndef TL_SME_H
#define TL_SME_H

#include "tl_internal.h"
#include "ukernel.h"

/* Reads the streaming vector length and fills the tables; after tl_init saw SME. TL_OK. */
int tl_sme_init(void);
/* f32, f16, bf16, q8_0, q4_0, q4_1 (the context's sme_bf16 picks the bf16 kernel); NULL otherwise. */
const tl_ukernel *tl_sme_lookup(const tl_ctx *ctx, int wtype);

#endif
