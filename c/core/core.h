/*
 * core.h -- what the core's files (core/) share among themselves and show no one else.
 */
#ifndef FPGAI_CORE_H
#define FPGAI_CORE_H

#include "kind.h"

/* util.c: `bytes` of the storage block, 8-byte aligned, or fail naming `what` */
void *take_storage(const Model *m, size_t bytes, const char *what);
uint64_t rd_u64(const uint8_t *p);
float rd_f32(const uint8_t *p);

/* kinds.c: how many multipliers, shifts or table values rule RQ_* asks of op */
int64_t rq_count(int rule, const Op *op);

/* checks.c: every conv and linear layer's weights, once they are in: each code inside its bits'
 * range (weight_path names them), the int32 accumulator bound */
void check_weights(const Model *m, const char *weight_path);

/* plan.c: every tensor's place in the arena (Op.offset), the arena's size */
void plan_memory(Model *m);

#endif
