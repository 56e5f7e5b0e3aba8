/*
 * kernels.h -- the two kernel sets, with identical integer results (tests/test_c_kernels.py):
 *
 *   REFERENCE_KERNELS  kernels_ref.c   the core's (fpgai.c): CHW activations, direct loops over
 *                                      the contract, the plain code an FPGA engineer reads
 *                                      (--reference)
 *   FAST_KERNELS       kernels_fast.c  HWC activations, every conv and linear layer an int8
 *                                      GEMM (AVX-512 VNNI where the compiler targets it, else
 *                                      C99), depthwise convs vectorized over channels
 *
 * The optimized set prepares its own read-only copy of the weights from a loaded Model (which
 * it never writes); each set gives each thread a workspace: its arena of activations (the
 * Model's memory plan) and the scratch buffers that set's kernels use, nothing more.  Inside each
 * set, a table indexed by op kind (fpgai.h) holds one kernel per kind.
 */
#ifndef FPGAI_KERNELS_H
#define FPGAI_KERNELS_H

#include "fpgai.h"

typedef struct {
    const char *name;
    void *(*prepare)(const Model *m);               /* the set's weights; fails on a limit */
    void (*release)(void *prepared);
    void *(*workspace_new)(const Model *m, const void *prepared);
    void (*workspace_free)(void *ws);
    /* one image (C*H*W pixels, CHW) through the graph; returns the last op's output, CHW,
     * valid until the next run on this workspace */
    const uint8_t *(*run)(const Model *m, const void *prepared, void *ws, const uint8_t *image);
} KernelSet;

extern const KernelSet REFERENCE_KERNELS, FAST_KERNELS;

#endif
