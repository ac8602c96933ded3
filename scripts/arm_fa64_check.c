/* arm_fa64_check.c — FA64 negative check for .ci/arm.sh (recipe: /work/shared/arm/README.md §8).
 * Executes one Advanced SIMD (NEON) instruction inside streaming mode. On a CPU without
 * FEAT_SME_FA64 (Apple M4, and the M4-like qemu profile) that must trap (SIGILL, exit 132); with
 * FA64 (qemu -cpu max) it runs and exits 0. The CI expects both, so a profile that silently
 * accepts NEON in streaming mode (and would hide such code in tl_sme_block_run) is caught.
 * argv[1] = "stream": NEON in streaming mode; anything else: the same NEON outside it (control). */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    float v[4] = {1, 2, 3, 4};
    if (argc > 1 && strcmp(argv[1], "stream") == 0) {
        __asm__ volatile("smstart sm\n\tldr q0, [%0]\n\tfadd v0.4s, v0.4s, v0.4s\n\tstr q0, [%0]\n\tsmstop sm"
                         : : "r"(v) : "v0", "memory");
    } else {
        __asm__ volatile("ldr q0, [%0]\n\tfadd v0.4s, v0.4s, v0.4s\n\tstr q0, [%0]" : : "r"(v) : "v0", "memory");
    }
    printf("%g %g %g %g\n", v[0], v[1], v[2], v[3]);
    return v[3] == 8.0f ? 0 : 1;
}
