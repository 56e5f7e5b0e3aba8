/*
 * kernels_ref.c -- the reference kernel set (--reference): the core's kernels (fpgai.c, CHW,
 * direct loops over the contract, the weights read in place) with an arena from the heap.
 */
#include "host.h"
#include "kernels.h"

#include <stdlib.h>

static void *ref_prepare(const Model *m)
{
    return (void *)m;               /* nothing to prepare: the core reads the Model's buffers */
}

static void ref_release(void *prepared)
{
    (void)prepared;
}

static void *ref_workspace_new(const Model *m, const void *prepared)
{
    (void)prepared;
    return xmalloc(m->arena_bytes, "activations");
}

static const uint8_t *ref_run(const Model *m, const void *prepared, void *arena, const uint8_t *image)
{
    (void)prepared;
    return fpgai_run(m, arena, image);
}

const KernelSet REFERENCE_KERNELS = {"reference", ref_prepare, ref_release, ref_workspace_new, free, ref_run};
