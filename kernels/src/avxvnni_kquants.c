/* avxvnni_kquants.c — the avxvnni variant's q5_0 / K-quant kernels: avx2_kquants.c compiled with -mavxvnni
 * and KQ_VNNI, so each 16-value group dot is 4 vpdpbusd into int32 (avx2_kquants.c, "Built twice"). */
#include "avxvnni.h"

#ifndef __AVXVNNI__
#error "avxvnni_kquants.c needs -mavxvnni"
#endif
#define KQ_VNNI 1
#include "avx2_kquants.c"
