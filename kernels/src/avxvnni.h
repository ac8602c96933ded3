/* avxvnni.h — the integer kernels of the avxvnni variant (its table is variant_avxvnni.c): avx2_q8.c's and
 * avx2_kquants.c's kernels with every u8 x s8 group dot on vpdpbusd (AVX-VNNI, VEX-encoded ymm). */
#ifndef TL_AVXVNNI_H
#define TL_AVXVNNI_H

#include "avx2.h"

/* avxvnni_q8.c: 8-row panels x 4 tokens, n == 1 by 8 rows */
extern const tl_ukernel tl_avxvnni_q8_0_8x4, tl_avxvnni_q4_0_8x4, tl_avxvnni_q4_1_8x4;
/* avxvnni_kquants.c: 8-row panels x 4 tokens */
extern const tl_ukernel tl_avxvnni_q5_0_8x4, tl_avxvnni_q4_k_8x4, tl_avxvnni_q5_k_8x4, tl_avxvnni_q6_k_8x4;

#endif
