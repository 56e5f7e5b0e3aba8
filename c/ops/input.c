/*
 * input.c -- op kind "input" (code 0): op 0 and only op 0, the image's raw pixels (C x H x W
 * uint8).  No parameters, no requantization; fpgai_run_op copies the image into its tensor.
 */
#include "kind.h"

FPGAI_KIND(input, OP_INPUT, 0,
           .min_inputs = 0, .max_inputs = 0,
           .n_mult = RQ_NONE, .n_shift = RQ_NONE, .n_table = RQ_NONE,
           .validate = input_validate, .reference = NULL, .hwc = NULL)

void input_validate(Model *m, int i)
{
    const Op *op = &m->ops[i];
    if (op->zero_point != 0 || op->qmin != 0 || op->qmax != 255)
        fail("%s: op %d (input): raw pixels need zero point 0 and clamp 0..255", m->path, i);
}
