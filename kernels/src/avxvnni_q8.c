/* avxvnni_q8.c — the avxvnni variant's q8_0 / q4_0 / q4_1 kernels (and the q8 activation writer): avx2_q8.c
 * compiled with -mavxvnni and Q_VNNI, so each group dot is vpdpbusd into int32 (avx2_q8.c, "Built twice"). */
#include "avxvnni.h"

#ifndef __AVXVNNI__
#error "avxvnni_q8.c needs -mavxvnni"
#endif
#define Q_VNNI 1
#include "avx2_q8.c"
