/* cpu_detect.c — what the running CPU (and OS) can execute, as TL_CPU_* bits.
 *
 * Plain C plus cpuid/xgetbv (x86) or auxv/sysctl (ARM): no ISA-specific code paths, so the
 * portable module answers correctly on any machine. A feature counts only if the OS also
 * saves its register state (XCR0 for AVX / AVX-512 / AMX).
 */
#include <stdint.h>

#include "tilellm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <unistd.h>

/* L1 data cache bytes, for the x86 gemvs' prefetch (x86_common.h: x86_pf_to_l1); 32 KiB unless sysconf
 * knows better. Set by the x86 variants' tl_uk_init, before any context exists; read-only afterwards. */
int64_t tl_x86_l1d = 32 * 1024;

void tl_x86_caches_init(void) {
#ifdef _SC_LEVEL1_DCACHE_SIZE
    const long v = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    if (v >= 16 * 1024 && v <= 1024 * 1024 && v != tl_x86_l1d) tl_x86_l1d = v;
#endif
}

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    /* xgetbv with ecx = 0 (XCR0); encoded as bytes so no -mxsave flag is needed */
    __asm__ __volatile__(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static uint64_t detect(void) {
    uint32_t a, b, c, d;
    uint64_t f = 0;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
    uint32_t max_leaf = a;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    uint64_t xcr0 = osxsave ? xgetbv0() : 0;
    int ymm_ok = avx && (xcr0 & 0x6) == 0x6;            /* SSE + AVX state */
    int zmm_ok = ymm_ok && (xcr0 & 0xe0) == 0xe0;       /* opmask, ZMM_Hi256, Hi16_ZMM */
    int amx_ok = (xcr0 & 0x60000) == 0x60000;           /* XTILECFG, XTILEDATA */
    if (ymm_ok && fma) f |= TL_CPU_FMA;
    if (ymm_ok && f16c) f |= TL_CPU_F16C;
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        uint32_t max_sub = a;
        if (ymm_ok && ((b >> 5) & 1)) f |= TL_CPU_AVX2;
        if (zmm_ok) {
            if ((b >> 16) & 1) f |= TL_CPU_AVX512F;
            if ((b >> 17) & 1) f |= TL_CPU_AVX512DQ;
            if ((b >> 30) & 1) f |= TL_CPU_AVX512BW;
            if ((b >> 31) & 1) f |= TL_CPU_AVX512VL;
            if ((c >> 11) & 1) f |= TL_CPU_AVX512VNNI;
        }
        if (amx_ok) {
            if ((d >> 24) & 1) f |= TL_CPU_AMX_TILE;
            if ((d >> 25) & 1) f |= TL_CPU_AMX_INT8;
            if ((d >> 22) & 1) f |= TL_CPU_AMX_BF16;
        }
        if (max_sub >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            if (zmm_ok && ((a >> 5) & 1)) f |= TL_CPU_AVX512BF16;
            if (ymm_ok && ((a >> 4) & 1)) f |= TL_CPU_AVX_VNNI; /* vpdpbusd on ymm without EVEX */
        }
    }
    return f;
}

#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
/* Bits from arch/arm64/include/uapi/asm/hwcap.h (older libc headers lack the newer ones). */
#define TL_HWCAP_ASIMD (1UL << 1)
#define TL_HWCAP_FPHP (1UL << 9)
#define TL_HWCAP_ASIMDHP (1UL << 10)
#define TL_HWCAP_ASIMDDP (1UL << 20)
#define TL_HWCAP2_I8MM (1UL << 13)
#define TL_HWCAP2_BF16 (1UL << 14)
#define TL_HWCAP2_SME (1UL << 23)
#define TL_HWCAP2_SME2 (1UL << 37)

static uint64_t detect(void) {
    unsigned long h1 = getauxval(AT_HWCAP), h2 = getauxval(AT_HWCAP2);
    uint64_t f = 0;
    if (h1 & TL_HWCAP_ASIMD) f |= TL_CPU_NEON;
    if (h1 & TL_HWCAP_ASIMDDP) f |= TL_CPU_DOTPROD;
    if ((h1 & TL_HWCAP_FPHP) && (h1 & TL_HWCAP_ASIMDHP)) f |= TL_CPU_FP16;
    if (h2 & TL_HWCAP2_I8MM) f |= TL_CPU_I8MM;
    if (h2 & TL_HWCAP2_BF16) f |= TL_CPU_BF16;
    if (h2 & TL_HWCAP2_SME) f |= TL_CPU_SME;
    if (h2 & TL_HWCAP2_SME2) f |= TL_CPU_SME2;
    return f;
}

#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#include <sys/types.h>

static int has(const char *name) {
    int v = 0;
    size_t len = sizeof v;
    return sysctlbyname(name, &v, &len, NULL, 0) == 0 && v != 0;
}
static uint64_t detect(void) {
    uint64_t f = TL_CPU_NEON; /* Advanced SIMD is mandatory on arm64 macOS */
    if (has("hw.optional.arm.FEAT_DotProd")) f |= TL_CPU_DOTPROD;
    if (has("hw.optional.arm.FEAT_FP16")) f |= TL_CPU_FP16;
    if (has("hw.optional.arm.FEAT_I8MM")) f |= TL_CPU_I8MM;
    if (has("hw.optional.arm.FEAT_BF16")) f |= TL_CPU_BF16;
    if (has("hw.optional.arm.FEAT_SME")) f |= TL_CPU_SME;
    if (has("hw.optional.arm.FEAT_SME2")) f |= TL_CPU_SME2;
    return f;
}

#else
static uint64_t detect(void) { return 0; }
#endif

uint64_t tl_cpu_features(void) {
    /* cheap enough to recompute; caching would need atomics for no measurable gain */
    return detect();
}
