/*
 * linear.c -- op kind "linear" (code 2): fully connected over its input read flat (CHW order);
 * weights and biases from the weight files, one multiplier and shift per output:
 *   out[c] = requantize(bias[c] + sum_k (x[k] - z_x)(w[c][k] - z_w), m[c], s[c])
 */
#include "kind.h"

FPGAI_KIND(linear, OP_LINEAR, 2,
           .min_inputs = 1, .max_inputs = 1, .weighted = 1,
           .params = {WEIGHTS},
           .n_mult = RQ_C, .n_shift = RQ_C, .n_table = RQ_NONE,
           .validate = linear_validate, .reference = linear_reference, .work = linear_work,
           .scratch = linear_scratch, .hwc = NULL)

void linear_validate(Model *m, int i)
{
    Op *op = &m->ops[i];
    const Op *x = op_input(m, op, 0);
    if (op->h != 1 || op->w != 1)
        fail("%s: op %d (linear): output shape %dx%dx%d, expected %dx1x1", m->path, i, op->c, op->h, op->w,
             op->c);
    check_weight_zero_point(m, i);
    op->k_size = (int32_t)op_elems(x);      /* <= 2^26 */
    op->groups = 1;
}

/* C * K multiply-accumulates (K its input's C*H*W) */
uint64_t linear_work(const Model *m, const Op *op)
{
    (void)m;
    return (uint64_t)op_elems(op) * (uint64_t)op->k_size;
}

/* Below 8 bits, an output's weights unpacked (weight_row) */
size_t linear_scratch(const Op *op)
{
    return op->w_bits < 8 ? (size_t)op->k_size : 0;
}

void linear_reference(const Model *m, const Op *op, uint8_t *arena)
{
    const uint8_t *x = input_of(m, op, arena, 0);
    const int32_t zx = op_input(m, op, 0)->zero_point, flip = weight_flip(m), sub = weight_sub(m, op);
    uint8_t *out = arena + op->offset;
    for (int32_t c = 0; c < op->c; c++) {
        const uint8_t *w = weight_row(m, op, c, arena + m->row_offset);
        int32_t acc = op_bias(m, op, c);
        for (int32_t k = 0; k < op->k_size; k++)
            acc += (x[k] - zx) * ((w[k] ^ flip) - sub);
        out[c] = requantize(acc, op->multiplier[c], op->shift[c], op->zero_point, op->qmin, op->qmax);
    }
}
