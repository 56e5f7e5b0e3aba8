/*
 * kernels.h -- the two kernel sets, with identical integer results (tests/test_c_kernels.py):
 *
 *   REFERENCE_KERNELS  host/kernels_ref.c  the core's (ops/KIND.c, KindSpec.reference): CHW
 *                                      activations, direct loops over the contract, the plain
 *                                      code an FPGA engineer reads (--reference)
 *   FAST_KERNELS_*     c/fast/         HWC activations, every conv and linear layer an int8
 *                                      GEMM, depthwise convs vectorized over channels; one file
 *                                      per ISA, each its own build (c/Makefile): _AMX (amx.c,
 *                                      AMX-INT8 tiles, and its test twin _AMX_EMU), _AVX512
 *                                      (avx512.c, VNNI), _AVXVNNI (avxvnni.c, and its test twin
 *                                      _AVXVNNI_EVEX), _AVX2 (avx2.c), _NEON (neon.c, aarch64,
 *                                      sdot), _C99 (c99.c, any CPU); isa.c picks the best one
 *                                      this CPU runs
 *
 * The optimized set prepares its own read-only copy of the weights from a loaded Model (which
 * it never writes), in one block (from the heap, or the caller's: prepare_in); a workspace runs a
 * batch of up to `batch` images: their arenas of activations (the Model's memory plan, scaled by
 * the batch) and the scratch buffers that set's kernels use, nothing more.  The optimized set runs
 * a batch layer-major (op i for every image, then op i + 1; a conv or linear layer one GEMM over all
 * the images' pixels, so each weight panel is loaded once per chunk of pixels, not once per image)
 * and, in the OpenMP build, splits each layer across the threads (workspace_new's thread count);
 * the reference set runs the images one after the other on one thread.  Each set has one kernel per op kind: the reference
 * set KindSpec.reference (core/fpgai.h), the optimized one its own (c/fast/hwc.inc's table, the GEMM
 * and depthwise kernels) or else the kind's KindSpec.hwc.
 */
#ifndef FPGAI_KERNELS_H
#define FPGAI_KERNELS_H

#include "fpgai.h"

typedef struct {
    const char *name;
    void *(*prepare)(const Model *m);               /* the set's weights; fails on a limit */
    void (*release)(void *prepared);
    /* for batches of up to `batch` images, on up to `threads` threads (OpenMP's thread numbers) */
    void *(*workspace_new)(const Model *m, const void *prepared, int batch, int threads);
    void (*workspace_free)(void *ws);
    /* n <= batch images (C*H*W pixels each, CHW, `stride` bytes apart) through the graph; returns
     * their last op's outputs, each CHW, op_elems(last op) bytes apart, in input order, valid until
     * the next run on this workspace */
    const uint8_t *(*run)(const Model *m, const void *prepared, void *ws, const uint8_t *images, size_t stride, int n);
    /* how ws runs a batch, for the run's report ("" where there is nothing to say; NULL: never) */
    void (*describe)(const void *ws, char *text, size_t size);
    /* from now on add the seconds each op of ws's runs takes to op_seconds[op] (n_ops entries,
     * the caller's); NULL: the set does not time its ops */
    void (*time_ops)(void *ws, double *op_seconds);
    /* prepare without the heap (firmware): the bytes of the block the set's weights take
     * (SIZE_MAX: more than memory holds), and those weights laid out in `block` (at least that many
     * bytes, 16-byte aligned) without malloc or I/O: what prepare returns, or NULL (a block too small
     * or misaligned, an op kind the set has no kernel for); the block is then the caller's to free,
     * not release's.  NULL: the set has none. */
    size_t (*prepared_bytes)(const Model *m);
    void *(*prepare_in)(const Model *m, void *block, size_t size);
} KernelSet;

extern const KernelSet REFERENCE_KERNELS;
extern const KernelSet FAST_KERNELS_AMX, FAST_KERNELS_AMX_EMU, FAST_KERNELS_AVX512, FAST_KERNELS_AVXVNNI,
    FAST_KERNELS_AVXVNNI_EVEX, FAST_KERNELS_AVX2, FAST_KERNELS_NEON, FAST_KERNELS_C99;

/* Part w of n items split into `parts` consecutive shares, the first n % parts of them one item
 * larger: its first item and its size */
static inline size_t share_start(size_t n, int parts, int w)
{
    const size_t p = (size_t)parts, k = (size_t)w;
    return k * (n / p) + (k < n % p ? k : n % p);
}

static inline size_t share_size(size_t n, int parts, int w)
{
    return n / (size_t)parts + ((size_t)w < n % (size_t)parts);
}

/* isa.c: the optimized set for ISA name (amx, avx512, avxvnni, avx2, neon, c99; avxvnni-evex,
 * amx-emu), or, for NULL, the best one this binary holds that the CPU runs; *isa gets its name.  Fails (one error
 * line, exit 1) on a name this binary does not know or one the CPU lacks. */
const KernelSet *fast_kernels(const char **isa);
/* --isa-table: each ISA of this binary, best first, as JSON (one per line): its name, whether this
 * CPU runs it, its role (build, test twin, emulated test twin) and what it needs */
void print_isa_table(void);

#endif
