/*
 * slice.c -- op kind "slice" (code 10): input channels channel_start .. channel_start + C - 1
 * (a split's part), contiguous planes copied.  Its output keeps its input's zero point and clamp.
 */
#include "kind.h"

FPGAI_KIND(slice, OP_SLICE, 10,
           .min_inputs = 1, .max_inputs = 1,
           .params = {PARAM(ch_start, "channel_start", 0, MAX_DIM)},
           .n_mult = RQ_NONE, .n_shift = RQ_NONE, .n_table = RQ_NONE,
           .validate = slice_validate, .reference = slice_reference, .hwc = NULL)

/* channels channel_start .. channel_start + C - 1 of the input, its H x W */
void slice_validate(Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    if (x->h != op->h || x->w != op->w)
        fail("%s: op %d (slice): output %dx%d, its input tensor %d is %dx%d", m->path, i, op->h, op->w, op->in[0],
             x->h, x->w);
    if ((int64_t)op->ch_start + op->c > x->c)
        fail("%s: op %d (slice): channels %d..%lld, its input tensor %d has %d", m->path, i, op->ch_start,
             (long long)op->ch_start + op->c - 1, op->in[0], x->c);
    check_same_qparams(m, i);
}

/* Channel slice: input channels channel_start .. channel_start + C - 1 (contiguous planes). */
void slice_reference(const Model *m, const Op *op, uint8_t *arena)
{
    memcpy(arena + op->offset, input_of(m, op, arena, 0) + (size_t)op->ch_start * op->h * op->w, op_elems(op));
}
