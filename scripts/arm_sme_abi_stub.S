// arm_sme_abi_stub.S — TEST-ONLY SME ABI support routines for the emulated Debian 12 arm64 userland,
// whose libgcc-12 lacks them (REFERENCE 3.6.9). NEVER linked into release builds: macOS ships them,
// Linux release builds get them from compiler-rt >= 18 or libgcc >= 14. Linked into the arm64 test
// build of the sme/sme2 variants by scripts/arm_build.py only. Semantics per /work/shared/arm/README.md
// step 6 (AAPCS64 SME support routines); hidden so each module binds to its own copy.
        .arch armv9-a+sme

        .bss
        .p2align 3
tl_stub_has_sme: .quad 0
tl_stub_has_sve: .quad 0

        .section .init_array,"aw"
        .p2align 3
        .quad tl_stub_init

        .text
        .p2align 2
tl_stub_init:
        stp     x29, x30, [sp, #-16]!
        mov     x29, sp
        mov     x0, #16                 // AT_HWCAP
        bl      getauxval
        ubfx    x1, x0, #22, #1         // HWCAP_SVE
        adrp    x2, tl_stub_has_sve
        str     x1, [x2, :lo12:tl_stub_has_sve]
        mov     x0, #26                 // AT_HWCAP2
        bl      getauxval
        ubfx    x1, x0, #23, #1         // HWCAP2_SME
        adrp    x2, tl_stub_has_sme
        str     x1, [x2, :lo12:tl_stub_has_sme]
        ldp     x29, x30, [sp], #16
        ret

        .globl  __arm_sme_state
        .hidden __arm_sme_state
        .type   __arm_sme_state, %function
__arm_sme_state:
        adrp    x16, tl_stub_has_sme
        ldr     x16, [x16, :lo12:tl_stub_has_sme]
        cbz     x16, 1f
        mrs     x16, SVCR
        and     x0, x16, #3             // PSTATE.SM, PSTATE.ZA
        orr     x0, x0, #0xc000000000000000  // SME available, TPIDR2_EL0 accessible
        mrs     x1, TPIDR2_EL0
        ret
1:      mov     x0, #0
        mov     x1, #0
        ret
        .size   __arm_sme_state, . - __arm_sme_state

// The body both share: check the block at \blk (reserved fields zero, else abort), then move its
// num_za_slices ZA rows with \op (str: save, ldr: restore) to or from its buffer, one SVL row at a time.
        .macro  za_slices op, blk
        ldrh    w14, [\blk, #10]
        cbnz    w14, 8f
        ldr     w14, [\blk, #12]
        cbnz    w14, 8f
        ldrh    w14, [\blk, #8]
        ldr     x16, [\blk]
        mov     w15, #0
        cbz     w14, 9f
1:      \op     za[w15, 0], [x16]
        addsvl  x16, x16, #1
        add     w15, w15, #1
        cmp     w15, w14
        b.lo    1b
9:      ret
8:      smstop
        b       abort
        .endm

// Commit a pending lazy save: TPIDR2_EL0 -> {u64 buffer, u16 num_za_slices, u8 reserved[6]}.
// Uses only x14-x16 (callers assume a preserve-most convention).
        .globl  __arm_tpidr2_save
        .hidden __arm_tpidr2_save
        .type   __arm_tpidr2_save, %function
__arm_tpidr2_save:
        mrs     x16, TPIDR2_EL0
        cbz     x16, 9f
        za_slices str, x16
        .size   __arm_tpidr2_save, . - __arm_tpidr2_save

        .globl  __arm_tpidr2_restore
        .hidden __arm_tpidr2_restore
        .type   __arm_tpidr2_restore, %function
__arm_tpidr2_restore:
        mrs     x16, TPIDR2_EL0
        cbnz    x16, 8f
        za_slices ldr, x0
        .size   __arm_tpidr2_restore, . - __arm_tpidr2_restore

        .globl  __arm_za_disable
        .hidden __arm_za_disable
        .type   __arm_za_disable, %function
__arm_za_disable:
        adrp    x16, tl_stub_has_sme
        ldr     x16, [x16, :lo12:tl_stub_has_sme]
        cbz     x16, 9f
        mov     x17, x30
        bl      __arm_tpidr2_save
        mov     x30, x17
        msr     TPIDR2_EL0, xzr
        smstop  za
9:      ret
        .size   __arm_za_disable, . - __arm_za_disable

        .globl  __arm_get_current_vg
        .hidden __arm_get_current_vg
        .type   __arm_get_current_vg, %function
__arm_get_current_vg:
        adrp    x16, tl_stub_has_sve
        ldr     x16, [x16, :lo12:tl_stub_has_sve]
        cbnz    x16, 1f
        adrp    x16, tl_stub_has_sme
        ldr     x16, [x16, :lo12:tl_stub_has_sme]
        cbz     x16, 2f
        mrs     x16, SVCR
        tbz     x16, #0, 2f
1:      cntd    x0
        ret
2:      mov     x0, #0
        ret
        .size   __arm_get_current_vg, . - __arm_get_current_vg

        .section .note.GNU-stack,"",%progbits
