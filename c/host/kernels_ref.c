/*
 * kernels_ref.c -- the reference kernel set (--reference): the core's kernels (ops/KIND.c, CHW,
 * direct loops over the contract, the weights read in place) with an arena from the heap.
 */
#include "host.h"
#include "kernels.h"

#include <stdlib.h>
#include <string.h>

static void *ref_prepare(const Model *m)
{
    return (void *)m;               /* nothing to prepare: the core reads the Model's buffers */
}

static void ref_release(void *prepared)
{
    (void)prepared;
}

/* One arena, reused image after image, and the batch's outputs */
typedef struct {
    uint8_t *arena, *outputs;
} RefWorkspace;

static void *ref_workspace_new(const Model *m, const void *prepared, int batch, int threads)
{
    (void)prepared, (void)threads;
    RefWorkspace *ws = xcalloc(1, sizeof *ws, "workspace");
    ws->arena = xmalloc(m->arena_bytes, "activations");
    ws->outputs = xmalloc((size_t)batch * op_elems(&m->ops[m->n_ops - 1]), "outputs");
    return ws;
}

static void ref_workspace_free(void *p)
{
    RefWorkspace *ws = p;
    if (!ws)
        return;
    free(ws->arena);
    free(ws->outputs);
    free(ws);
}

static const uint8_t *ref_run(const Model *m, const void *prepared, void *workspace, const uint8_t *images,
                              size_t stride, int n)
{
    (void)prepared;
    RefWorkspace *ws = workspace;
    const size_t n_out = op_elems(&m->ops[m->n_ops - 1]);
    for (int b = 0; b < n; b++)
        memcpy(ws->outputs + (size_t)b * n_out, fpgai_run(m, ws->arena, images + (size_t)b * stride), n_out);
    return ws->outputs;
}

const KernelSet REFERENCE_KERNELS = {"reference", ref_prepare, ref_release, ref_workspace_new, ref_workspace_free,
                                     ref_run, NULL, NULL, NULL, NULL};
