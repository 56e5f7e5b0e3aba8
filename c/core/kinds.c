/*
 * kinds.c -- THE op kinds: KINDS, the table the record parser reads a record from (docs/contract.md,
 * the kinds table), made of every ops/KIND.c file's FPGAI_KIND row (kind.h), which the Makefile
 * collects into build/fpgai_kinds.h.  Two files declaring one code fail to compile here
 * (-Woverride-init); a code no file declares stays a NULL row, refused at load.
 */
#include "core.h"

/* every kind's functions, then its row at its code */
#undef FPGAI_KIND
#define FPGAI_KIND(name, id, code, ...) FPGAI_KIND_FUNCTIONS(name)
#include "fpgai_kinds.h"
#undef FPGAI_KIND
#define FPGAI_KIND(kind, id, kind_code, ...) [kind_code] = {.name = #kind, .code = kind_code, __VA_ARGS__},

const KindSpec KINDS[OP_KIND_COUNT] = {
#include "fpgai_kinds.h"
};

const char *const RQ_RULE_NAMES[RQ_RULE_COUNT] = {"0", "1", "2", "C", "n_inputs", "256", "HW"};

int64_t rq_count(int rule, const Op *op)
{
    return rule == RQ_ONE ? 1 : rule == RQ_TWO ? 2 : rule == RQ_C ? op->c : rule == RQ_INPUTS ? op->n_inputs
         : rule == RQ_256 ? 256 : rule == RQ_HW ? (int64_t)op->h * op->w : 0;
}
