/*
 * avgpool.c -- op kind "avgpool" (code 4): average pooling without padding, rounded by the one
 * requantizer (one multiplier and shift, 1 / (kh*kw) folded in):
 *   out = requantize(sum_window(x) - kh*kw*z_in, m, s)
 */
#include "kind.h"

FPGAI_KIND(avgpool, OP_AVGPOOL, 4,
           .min_inputs = 1, .max_inputs = 1,
           .params = {WINDOW},
           .n_mult = RQ_ONE, .n_shift = RQ_ONE, .n_table = RQ_NONE,
           .validate = avgpool_validate, .reference = avgpool_reference, .work = avgpool_work, .hwc = NULL)

/* (window sum - n*z_in) * m + rounding must fit int64 */
void avgpool_validate(Model *m, int i)
{
    Op *op = &m->ops[i];
    const Op *x = op_input(m, op, 0);
    pool_geometry(op);
    check_same_channels(m, i);
    check_window(m, i);
    uint64_t n = (uint64_t)op->kh * (uint64_t)op->kw;
    int64_t window = (int64_t)n * max_abs_centered(x);      /* <= 2^32 * 255 */
    if (op->multiplier[0] > 0 && window > INT64_ROOM / op->multiplier[0])
        fail("%s: op %d (avgpool): window sum %lld times multiplier %d overflows int64", m->path, i,
             (long long)window, op->multiplier[0]);
}

/* C*H*W * kh*kw window reads */
uint64_t avgpool_work(const Model *m, const Op *op)
{
    (void)m;
    return (uint64_t)op_elems(op) * (uint64_t)op->kh * (uint64_t)op->kw;
}

/* Average pooling (no padding): out = requantize(sum_window(x) - kh*kw*z_in) */
void avgpool_reference(const Model *m, const Op *op, uint8_t *arena)
{
    const Op *in = op_input(m, op, 0);
    const uint8_t *x = input_of(m, op, arena, 0);
    uint8_t *out = arena + op->offset;
    const int64_t offset = (int64_t)op->kh * op->kw * in->zero_point;
    for (int32_t c = 0; c < op->c; c++) {
        const uint8_t *plane = x + (size_t)c * in->h * in->w;
        for (int32_t oy = 0; oy < op->h; oy++) {
            for (int32_t ox = 0; ox < op->w; ox++) {
                int64_t sum = 0;
                for (int32_t ky = 0; ky < op->kh; ky++) {
                    const uint8_t *src = plane + (size_t)(oy * op->stride_h + ky) * in->w + (size_t)ox * op->stride_w;
                    for (int32_t kx = 0; kx < op->kw; kx++)
                        sum += src[kx];
                }
                *out++ = requantize(sum - offset, op->multiplier[0], op->shift[0], op->zero_point, op->qmin, op->qmax);
            }
        }
    }
}
