/*
 * upsample.c -- op kind "upsample" (code 11): nearest-neighbour upsampling by integer factors:
 * out[c][y][x] = in[c][y / scale_h][x / scale_w].  Its output keeps its input's zero point and
 * clamp.
 */
#include "kind.h"

FPGAI_KIND(upsample, OP_UPSAMPLE, 11,
           .min_inputs = 1, .max_inputs = 1,
           .params = {PARAM(scale_h, "scale_h", 1, MAX_DIM), PARAM(scale_w, "scale_w", 1, MAX_DIM)},
           .n_mult = RQ_NONE, .n_shift = RQ_NONE, .n_table = RQ_NONE,
           .validate = upsample_validate, .reference = upsample_reference, .hwc = NULL)

/* nearest upsampling: H = in H * scale_h, W = in W * scale_w, the input's C */
void upsample_validate(Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    if (x->c != op->c || (int64_t)x->h * op->scale_h != op->h || (int64_t)x->w * op->scale_w != op->w)
        fail("%s: op %d (upsample): output %dx%dx%d, but its input tensor %d of %dx%dx%d by %dx%d gives "
             "%dx%lldx%lld", m->path, i, op->c, op->h, op->w, op->in[0], x->c, x->h, x->w, op->scale_h,
             op->scale_w, x->c, (long long)x->h * op->scale_h, (long long)x->w * op->scale_w);
    check_same_qparams(m, i);
}

/* Nearest upsampling: out[c][y][x] = in[c][y / scale_h][x / scale_w]. */
void upsample_reference(const Model *m, const Op *op, uint8_t *arena)
{
    const Op *in = op_input(m, op, 0);
    const uint8_t *x = input_of(m, op, arena, 0);
    uint8_t *out = arena + op->offset;
    for (int32_t c = 0; c < op->c; c++)
        for (int32_t y = 0; y < op->h; y++) {
            const uint8_t *row = x + ((size_t)c * in->h + y / op->scale_h) * in->w;
            for (int32_t ox = 0; ox < op->w; ox++)
                *out++ = row[ox / op->scale_w];
        }
}
