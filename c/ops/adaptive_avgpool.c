/*
 * adaptive_avgpool.c -- op kind "adaptive_avgpool" (code 12): PyTorch's adaptive average pooling
 * to the output's H x W (window p of an axis: floor(p*size/out) .. ceil((p+1)*size/out)), one
 * multiplier and shift per output position (windows differ in size):
 *   out[c][p] = requantize(sum_window_p(x) - n_p*z_in, m[p], s[p])
 */
#include "kind.h"

FPGAI_KIND(adaptive_avgpool, OP_ADAPTIVE_AVGPOOL, 12,
           .min_inputs = 1, .max_inputs = 1,
           .n_mult = RQ_HW, .n_shift = RQ_HW, .n_table = RQ_NONE,
           .validate = adaptive_avgpool_validate, .reference = adaptive_avgpool_reference,
           .work = adaptive_avgpool_work, .hwc = NULL)

/* windows of every output position (their reads bounded), each sum times its multiplier within int64 */
void adaptive_avgpool_validate(Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    check_same_channels(m, i);
    for (int32_t oy = 0; oy < op->h; oy++) {
        int32_t y0, y1;
        adaptive_window(oy, op->h, x->h, &y0, &y1);
        for (int32_t ox = 0; ox < op->w; ox++) {
            int32_t x0, x1;
            adaptive_window(ox, op->w, x->w, &x0, &x1);
            int64_t window = (int64_t)(y1 - y0) * (x1 - x0) * max_abs_centered(x);   /* <= 2^32 * 255 */
            int32_t mult = op->multiplier[(size_t)oy * op->w + ox];
            if (mult > 0 && window > INT64_ROOM / mult)
                fail("%s: op %d (adaptive_avgpool): window sum %lld times multiplier %d overflows int64", m->path, i,
                     (long long)window, mult);
        }
    }
}

/* Rows (or columns) of input `size` that an adaptive pool's windows read, over its `out` outputs */
static uint64_t adaptive_reads(int32_t out, int32_t size)
{
    uint64_t n = 0;
    for (int32_t o = 0; o < out; o++) {
        int32_t lo, hi;
        adaptive_window(o, out, size, &lo, &hi);
        n += (uint64_t)(hi - lo);
    }
    return n;
}

/* C * (its windows' rows summed over the output rows) * (their columns over the output columns)
 * window reads */
uint64_t adaptive_avgpool_work(const Model *m, const Op *op)
{
    const Op *x = op_input(m, op, 0);
    return (uint64_t)op->c * adaptive_reads(op->h, x->h) * adaptive_reads(op->w, x->w);
}

/* Adaptive average pooling: out[c][p] = requantize(sum_window_p(x) - n_p*z_in) with position p's
 * multiplier and shift, windows as PyTorch's (adaptive_window) */
void adaptive_avgpool_reference(const Model *m, const Op *op, uint8_t *arena)
{
    const Op *in = op_input(m, op, 0);
    const uint8_t *x = input_of(m, op, arena, 0);
    uint8_t *out = arena + op->offset;
    for (int32_t c = 0; c < op->c; c++) {
        const uint8_t *plane = x + (size_t)c * in->h * in->w;
        for (int32_t oy = 0; oy < op->h; oy++) {
            int32_t y0, y1;
            adaptive_window(oy, op->h, in->h, &y0, &y1);
            for (int32_t ox = 0; ox < op->w; ox++) {
                int32_t x0, x1;
                adaptive_window(ox, op->w, in->w, &x0, &x1);
                int64_t sum = -(int64_t)(y1 - y0) * (x1 - x0) * in->zero_point;
                for (int32_t iy = y0; iy < y1; iy++)
                    for (int32_t ix = x0; ix < x1; ix++)
                        sum += plane[(size_t)iy * in->w + ix];
                size_t p = (size_t)oy * op->w + ox;
                *out++ = requantize(sum, op->multiplier[p], op->shift[p], op->zero_point, op->qmin, op->qmax);
            }
        }
    }
}
