/*
 * isa.c -- which build of the optimized kernels (kernels.h) this CPU runs.
 *
 * The Makefile links one build of the optimized kernels per ISA the target architecture has (c/fast/,
 * a file each; x86-64: AMX-INT8, AVX-512 VNNI, AVX-VNNI, AVX2, C99; aarch64: NEON with the dot product,
 * C99), each compiled with its own
 * target flags, and compiles everything else for the plain architecture, so that one binary runs
 * on any CPU of it: at start the engine takes the first ISA in the table below that the CPU
 * supports, or the one --isa names; --isa-table lists them.
 * FPGAI_C99_ONLY (make portable) links the C99 build alone, for compilers without the
 * intrinsics.
 */
#define _DEFAULT_SOURCE             /* syscall */
#include "host.h"
#include "kernels.h"

#include <stdio.h>
#include <string.h>

#if defined(__x86_64__) && !defined(FPGAI_C99_ONLY)
#define X86_ISAS 1
#else
#define X86_ISAS 0
#endif
#if defined(__aarch64__) && !defined(FPGAI_C99_ONLY)
#define ARM_ISAS 1
#include <sys/auxv.h>
#else
#define ARM_ISAS 0
#endif

#if X86_ISAS
#include <sys/syscall.h>
#include <unistd.h>
/* Everything c/fast/avx512.c uses (its ISA_avx512 flags in c/Makefile); libgcc also checks
 * that the OS saves the vector registers (XCR0) */
static int cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
           && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")
           && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi");
}

/* The AVX-512 build's set and AMX-INT8, whose tile state Linux lets a process use once it asks
 * (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, 18: a kernel without it, or one that refuses, means
 * no AMX here) */
static int cpu_has_amx(void)
{
    return cpu_has_avx512() && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-int8")
           && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18) == 0;
}

static int cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}

/* AVX-VNNI: vpdpbusd on ymm, VEX encoded (Alder Lake and later, with or without AVX-512); the
 * avx2 check includes libgcc's that the OS saves the ymm registers */
static int cpu_has_avxvnni(void)
{
    return cpu_has_avx2() && __builtin_cpu_supports("avxvnni");
}

/* The avxvnni test twin's EVEX vpdpbusd on ymm */
static int cpu_has_avx512vl_vnni(void)
{
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
           && __builtin_cpu_supports("avx512vnni");
}
#endif

#if ARM_ISAS
static int cpu_has_dotprod(void)
{
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
}
#endif

static int always(void)
{
    return 1;
}

typedef struct {
    const char *name, *needs;       /* --isa NAME; what the CPU must have, for the error */
    const KernelSet *kernels;
    int (*supported)(void);
    const char *twin;               /* NULL, or what test twin it is (c/Makefile): only --isa picks it */
} Isa;

#define TWIN "test twin"
#define EMULATED_TWIN "emulated test twin"     /* its speed means nothing */

/* best first */
static const Isa ISAS[] = {
#if X86_ISAS
    {"amx", "AMX-INT8 with AVX-512 F/BW/DQ/VL/VNNI/VBMI, and the kernel's permission", &FAST_KERNELS_AMX, cpu_has_amx, NULL},
    {"avx512", "AVX-512 F/BW/DQ/VL/VNNI/VBMI", &FAST_KERNELS_AVX512, cpu_has_avx512, NULL},
    {"avxvnni", "AVX2 and AVX-VNNI", &FAST_KERNELS_AVXVNNI, cpu_has_avxvnni, NULL},
    {"avx2", "AVX2", &FAST_KERNELS_AVX2, cpu_has_avx2, NULL},
#endif
#if ARM_ISAS
    {"neon", "the NEON dot product (asimddp)", &FAST_KERNELS_NEON, cpu_has_dotprod, NULL},
#endif
    {"c99", "", &FAST_KERNELS_C99, always, NULL},
#if X86_ISAS
    /* the test twins of avxvnni and amx */
    {"avxvnni-evex", "AVX2 and AVX-512 F/VL/VNNI", &FAST_KERNELS_AVXVNNI_EVEX, cpu_has_avx512vl_vnni, TWIN},
    {"amx-emu", "AVX-512 F/BW/DQ/VL/VNNI/VBMI", &FAST_KERNELS_AMX_EMU, cpu_has_avx512, EMULATED_TWIN},
#endif
};

#define N_ISAS (sizeof ISAS / sizeof ISAS[0])

const KernelSet *fast_kernels(const char **isa)
{
    for (size_t i = 0; i < N_ISAS; i++) {
        const Isa *a = &ISAS[i];
        if (*isa ? strcmp(*isa, a->name) != 0 : a->twin != NULL)
            continue;
        if (!a->supported()) {
            if (*isa)
                fail("--isa %s: this CPU lacks %s", a->name, a->needs);
            continue;
        }
        *isa = a->name;
        return a->kernels;
    }
    char names[128] = "";       /* every ISA name, comma-separated (52 bytes on x86-64) */
    for (size_t i = 0; i < N_ISAS; i++)
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", ISAS[i].name);
    fail("--isa %s: unknown, this binary has %s", *isa, names);
}

void print_isa_table(void)
{
    for (size_t i = 0; i < N_ISAS; i++)
        printf("{\"isa\": \"%s\", \"runs_here\": %s, \"role\": \"%s\", \"needs\": \"%s\"}\n", ISAS[i].name,
               ISAS[i].supported() ? "true" : "false", ISAS[i].twin ? ISAS[i].twin : "build", ISAS[i].needs);
}
