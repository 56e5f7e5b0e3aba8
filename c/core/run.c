/*
 * run.c -- the run loop: one image through the graph, op after op, each by its kind's reference
 * kernel (ops/KIND.c: CHW, direct loops over the contract, reading the weights and biases in
 * place, in flash on a microcontroller, and writing only the arena; every output value goes
 * through requantize(), a lut reads its table of requantized values).
 */
#include "core.h"

void fpgai_run_op(const Model *m, uint8_t *arena, const uint8_t *image, int i)
{
    if (i == 0)
        memcpy(arena + m->ops[0].offset, image, op_elems(&m->ops[0]));  /* op 0: the input */
    else
        KINDS[m->ops[i].kind].reference(m, &m->ops[i], arena);
}

const uint8_t *fpgai_run(const Model *m, uint8_t *arena, const uint8_t *image)
{
    for (int i = 0; i < m->n_ops; i++)
        fpgai_run_op(m, arena, image, i);
    return arena + m->ops[m->n_ops - 1].offset;
}
