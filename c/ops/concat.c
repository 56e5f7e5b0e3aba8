/*
 * concat.c -- op kind "concat" (code 6): its inputs' channels one after the other (same H x W),
 * each input requantized to the output's scale with its own multiplier and shift:
 *   out = requantize(x_k - z_k, m_k, s_k)
 */
#include "kind.h"

FPGAI_KIND(concat, OP_CONCAT, 6,
           .min_inputs = 2, .max_inputs = MAX_INPUTS,
           .n_mult = RQ_INPUTS, .n_shift = RQ_INPUTS, .n_table = RQ_NONE,
           .validate = concat_validate, .reference = concat_reference, .hwc = NULL)

/* (x - z_i) * m_i: below 255 * 2^31 */
void concat_validate(Model *m, int i)
{
    const Op *op = &m->ops[i];
    int64_t channels = 0;
    for (int k = 0; k < op->n_inputs; k++) {
        const Op *x = op_input(m, op, k);
        if (x->h != op->h || x->w != op->w)
            fail("%s: op %d (concat): input %d (tensor %d) is %dx%d, the output %dx%d", m->path, i, k, op->in[k],
                 x->h, x->w, op->h, op->w);
        channels += x->c;
    }
    if (channels != op->c)
        fail("%s: op %d (concat): its inputs have %lld channels together, the output %d", m->path, i,
             (long long)channels, op->c);
}

/* Concat on channels: input k's planes, in input order, each value requantize(x - z_k) with
 * input k's multiplier and shift. */
void concat_reference(const Model *m, const Op *op, uint8_t *arena)
{
    uint8_t *out = arena + op->offset;
    for (int k = 0; k < op->n_inputs; k++) {
        const Op *in = op_input(m, op, k);
        const uint8_t *x = input_of(m, op, arena, k);
        const size_t n = op_elems(in);
        for (size_t e = 0; e < n; e++)
            out[e] = requantize(x[e] - in->zero_point, op->multiplier[k], op->shift[k], op->zero_point, op->qmin,
                                op->qmax);
        out += n;
    }
}
