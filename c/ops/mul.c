/*
 * mul.c -- op kind "mul" (code 8): the elementwise product of two tensors (a gate, e.g. squeeze-
 * and-excitation's), the second of the output's shape or C x 1 x 1 (one value a channel plane):
 *   out = requantize((a - z_a)*(b - z_b), m, s)
 */
#include "kind.h"

FPGAI_KIND(mul, OP_MUL, 8,
           .min_inputs = 2, .max_inputs = 2,
           .n_mult = RQ_ONE, .n_shift = RQ_ONE, .n_table = RQ_NONE,
           .validate = mul_validate, .reference = mul_reference, .hwc = NULL)

/* (a - z_a) * (b - z_b) * m: the first input has the output's shape, the second it or Cx1x1
 * (broadcast over H x W); |product| <= 255 * 255 < 2^16, times m < 2^31, plus the rounding
 * constant: inside int64 (checked, as the rule of the contract) */
void mul_validate(Model *m, int i)
{
    const Op *op = &m->ops[i], *a = op_input(m, op, 0), *b = op_input(m, op, 1);
    if (a->c != op->c || a->h != op->h || a->w != op->w)
        fail("%s: op %d (mul): input 0 (tensor %d) is %dx%dx%d, the output %dx%dx%d", m->path, i, op->in[0], a->c,
             a->h, a->w, op->c, op->h, op->w);
    if (b->c != op->c || !((b->h == op->h && b->w == op->w) || (b->h == 1 && b->w == 1)))
        fail("%s: op %d (mul): input 1 (tensor %d) is %dx%dx%d, neither the output's %dx%dx%d nor %dx1x1", m->path,
             i, op->in[1], b->c, b->h, b->w, op->c, op->h, op->w, op->c);
    int64_t product = (int64_t)max_abs_centered(a) * max_abs_centered(b);     /* < 2^16 */
    if (op->multiplier[0] > 0 && product > INT64_ROOM / op->multiplier[0])
        fail("%s: op %d (mul): product %lld times multiplier %d overflows int64", m->path, i, (long long)product,
             op->multiplier[0]);
}

/* Product: out = requantize((a - z_a)*(b - z_b)) with the op's multiplier and shift; input 1 has
 * the output's shape or is Cx1x1 (one value for each channel plane). */
void mul_reference(const Model *m, const Op *op, uint8_t *arena)
{
    const Op *ia = op_input(m, op, 0), *ib = op_input(m, op, 1);
    const uint8_t *a = input_of(m, op, arena, 0), *b = input_of(m, op, arena, 1);
    uint8_t *out = arena + op->offset;
    const size_t P = (size_t)op->h * op->w, Pb = (size_t)ib->h * ib->w;
    for (int32_t c = 0; c < op->c; c++)
        for (size_t p = 0; p < P; p++) {
            int64_t prod = (int64_t)(a[(size_t)c * P + p] - ia->zero_point) *
                           (b[(size_t)c * Pb + (Pb == 1 ? 0 : p)] - ib->zero_point);
            out[(size_t)c * P + p] = requantize(prod, op->multiplier[0], op->shift[0], op->zero_point, op->qmin,
                                                op->qmax);
        }
}
