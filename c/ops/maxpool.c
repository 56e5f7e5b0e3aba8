/*
 * maxpool.c -- op kind "maxpool" (code 3): the largest value of each window; padding (pad_h,
 * pad_w on both sides) never wins, ceil_mode rounds the output size up as PyTorch's does.  Its
 * output keeps its input's zero point and clamp: no requantization.
 */
#include "kind.h"

FPGAI_KIND(maxpool, OP_MAXPOOL, 3,
           .min_inputs = 1, .max_inputs = 1,
           .params = {WINDOW, POOL_PADDING, PARAM(ceil_mode, "ceil_mode", 0, 1)},
           .n_mult = RQ_NONE, .n_shift = RQ_NONE, .n_table = RQ_NONE,
           .validate = maxpool_validate, .reference = maxpool_reference, .work = maxpool_work, .hwc = NULL)

void maxpool_validate(Model *m, int i)
{
    Op *op = &m->ops[i];
    const Op *x = op_input(m, op, 0);
    pool_geometry(op);
    check_same_channels(m, i);
    check_window(m, i);
    if (op->zero_point != x->zero_point || op->qmin != x->qmin || op->qmax != x->qmax)
        fail("%s: op %d (maxpool): zero point/clamp %d/%d..%d differ from its input's %d/%d..%d", m->path, i,
             op->zero_point, op->qmin, op->qmax, x->zero_point, x->qmin, x->qmax);
}

/* C*H*W * kh*kw window reads, padding included */
uint64_t maxpool_work(const Model *m, const Op *op)
{
    (void)m;
    return (uint64_t)op_elems(op) * (uint64_t)op->kh * (uint64_t)op->kw;
}

/* Max pooling; padding never wins: out-of-bounds positions are skipped (pad < kernel
 * guarantees each window holds a real element). */
void maxpool_reference(const Model *m, const Op *op, uint8_t *arena)
{
    const Op *in = op_input(m, op, 0);
    const uint8_t *x = input_of(m, op, arena, 0);
    uint8_t *out = arena + op->offset;
    for (int32_t c = 0; c < op->c; c++) {
        const uint8_t *plane = x + (size_t)c * in->h * in->w;
        for (int32_t oy = 0; oy < op->h; oy++) {
            int32_t y0, y1;
            pool_window(oy, op->stride_h, op->pad_top, op->kh, in->h, &y0, &y1);
            for (int32_t ox = 0; ox < op->w; ox++) {
                int32_t x0, x1;
                pool_window(ox, op->stride_w, op->pad_left, op->kw, in->w, &x0, &x1);
                uint8_t best = 0;
                for (int32_t iy = y0; iy < y1; iy++)
                    for (int32_t ix = x0; ix < x1; ix++)
                        if (plane[(size_t)iy * in->w + ix] > best)
                            best = plane[(size_t)iy * in->w + ix];
                *out++ = best;
            }
        }
    }
}
