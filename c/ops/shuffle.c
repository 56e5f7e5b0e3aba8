/*
 * shuffle.c -- op kind "shuffle" (code 9): ShuffleNet's channel shuffle, whole planes moved:
 * output channel j*groups + g is input channel g*(C/groups) + j.  Its output keeps its input's
 * zero point and clamp.
 */
#include "kind.h"

FPGAI_KIND(shuffle, OP_SHUFFLE, 9,
           .min_inputs = 1, .max_inputs = 1,
           .params = {PARAM(groups, "groups", 1, MAX_DIM)},
           .n_mult = RQ_NONE, .n_shift = RQ_NONE, .n_table = RQ_NONE,
           .validate = shuffle_validate, .reference = shuffle_reference, .hwc = NULL)

/* channel shuffle: the input's shape; groups divides C */
void shuffle_validate(Model *m, int i)
{
    const Op *op = &m->ops[i];
    check_same_shape(m, i);
    if (op->c % op->groups)
        fail("%s: op %d (shuffle): groups %d does not divide its %d channels", m->path, i, op->groups, op->c);
    check_same_qparams(m, i);
}

/* Channel shuffle: out channel j*groups + g is input channel g*(C/groups) + j (whole planes). */
void shuffle_reference(const Model *m, const Op *op, uint8_t *arena)
{
    const uint8_t *x = input_of(m, op, arena, 0);
    uint8_t *out = arena + op->offset;
    const size_t P = (size_t)op->h * op->w;
    const int32_t per = op->c / op->groups;
    for (int32_t g = 0; g < op->groups; g++)
        for (int32_t j = 0; j < per; j++)
            memcpy(out + ((size_t)j * op->groups + g) * P, x + ((size_t)g * per + j) * P, P);
}
