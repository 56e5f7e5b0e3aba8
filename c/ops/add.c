/*
 * add.c -- op kind "add" (code 5): the residual add, both inputs requantized together: their
 * multipliers m_a, m_b and one shared shift, both products summed before the one rounding:
 *   out = requantize((a - z_a)*m_a + (b - z_b)*m_b, 1, s)
 */
#include "kind.h"

FPGAI_KIND(add, OP_ADD, 5,
           .min_inputs = 2, .max_inputs = 2,
           .n_mult = RQ_TWO, .n_shift = RQ_ONE, .n_table = RQ_NONE,
           .validate = add_validate, .reference = add_reference, .hwc = NULL)

/* (a - z_a) * m_a + (b - z_b) * m_b: below 2 * 255 * 2^31, far inside int64 */
void add_validate(Model *m, int i)
{
    const Op *op = &m->ops[i];
    for (int k = 0; k < op->n_inputs; k++) {
        const Op *x = op_input(m, op, k);
        if (x->c != op->c || x->h != op->h || x->w != op->w)
            fail("%s: op %d (add): input %d (tensor %d) is %dx%dx%d, the output %dx%dx%d", m->path, i, k,
                 op->in[k], x->c, x->h, x->w, op->c, op->h, op->w);
    }
}

/* Residual add: out = requantize((a - z_a)*m_a + (b - z_b)*m_b) with multiplier 1 and the
 * shared shift: both products summed before the one rounding. */
void add_reference(const Model *m, const Op *op, uint8_t *arena)
{
    const Op *ia = op_input(m, op, 0), *ib = op_input(m, op, 1);
    const uint8_t *a = input_of(m, op, arena, 0), *b = input_of(m, op, arena, 1);
    uint8_t *out = arena + op->offset;
    const size_t n = op_elems(op);
    for (size_t e = 0; e < n; e++) {
        int64_t acc = (int64_t)(a[e] - ia->zero_point) * op->multiplier[0] +
                      (int64_t)(b[e] - ib->zero_point) * op->multiplier[1];
        out[e] = requantize(acc, 1, op->shift[0], op->zero_point, op->qmin, op->qmax);
    }
}
