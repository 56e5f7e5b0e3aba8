/*
 * lut.c -- op kind "lut" (code 7): an elementwise activation as a lookup table of 256 values
 * indexed by the input value (already requantized and clamped at export: sigmoid, tanh, ...):
 *   out = table[x]
 */
#include "kind.h"

FPGAI_KIND(lut, OP_LUT, 7,
           .min_inputs = 1, .max_inputs = 1,
           .n_mult = RQ_NONE, .n_shift = RQ_NONE, .n_table = RQ_256,
           .validate = lut_validate, .reference = lut_reference, .hwc = NULL)

/* out = table[x]: elementwise, so the input's shape; every table value inside the op's clamp, so
 * its output keeps the invariant the accumulator bound of the next layer relies on (no rounding) */
void lut_validate(Model *m, int i)
{
    const Op *op = &m->ops[i];
    check_same_shape(m, i);
    for (int32_t q = 0; q < op->n_table; q++)
        if (op->table[q] < op->qmin || op->table[q] > op->qmax)
            fail("%s: op %d (lut): table value %d (index %d) outside its clamp %d..%d", m->path, i, op->table[q], q,
                 op->qmin, op->qmax);
}

/* Lookup table: out = table[x] (its values are already requantized and clamped). */
void lut_reference(const Model *m, const Op *op, uint8_t *arena)
{
    const uint8_t *x = input_of(m, op, arena, 0);
    uint8_t *out = arena + op->offset;
    const size_t n = op_elems(op);
    for (size_t e = 0; e < n; e++)
        out[e] = (uint8_t)op->table[x[e]];
}
