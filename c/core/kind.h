/*
 * kind.h -- what an op kind's file (ops/KIND.c) includes: the FPGAI_KIND line that declares the
 * kind, the parameter rows it is written with, the checks kinds share (core/checks.c) and the
 * core's error (fpgai_fail).
 *
 * A kind is one file, ops/KIND.c, and nothing else to edit:
 *
 *   #include "kind.h"
 *
 *   FPGAI_KIND(pad, OP_PAD, 13,
 *              .min_inputs = 1, .max_inputs = 1,
 *              .params = {PARAM(pad_top, "pad_top", 0, MAX_DIM), ..., PARAM(arg[0], "mode", ...)},
 *              .n_mult = RQ_NONE, .n_shift = RQ_NONE, .n_table = RQ_NONE,
 *              .validate = pad_validate, .reference = pad_reference, .hwc = NULL)
 *
 *   void pad_validate(Model *m, int i) { ... }                                   rules between fields
 *   void pad_reference(const Model *m, const Op *op, uint8_t *arena) { ... }     its CHW kernel
 *
 * FPGAI_KIND(name, OP_ID, code, row...): the kind's name, its enum constant (fpgai.h), its
 * record type word (model.bin's, never to change), then its KindSpec row as designated
 * initializers (fpgai.h: inputs, parameters, requantization counts, functions).  The Makefile
 * collects these lines from the ops/ files into build/fpgai_kinds.h (core/kinds.awk: from
 * "FPGAI_KIND(" at the start of a line to its closing parenthesis); fpgai.h makes the enum of
 * them and core/kinds.c the table KINDS.  The functions a row names are the kind's
 * NAME_validate, NAME_reference, NAME_work, NAME_scratch, NAME_hwc (declared here, for the file
 * and for the table); a row names only the ones its file defines.  Parameters: the Op fields
 * several kinds share, or arg[k] for the kind's own (name them in the file:
 * #define PAD_MODE(op) ((op)->arg[0])).
 */
#ifndef FPGAI_KIND_H
#define FPGAI_KIND_H

#include "fpgai.h"

#include <stddef.h>
#include <string.h>

/* The functions a kind's row may name (fpgai.h, KindSpec) */
#define FPGAI_KIND_FUNCTIONS(name)                                                              \
    void name##_validate(Model *m, int i);                                                     \
    void name##_reference(const Model *m, const Op *op, uint8_t *arena);                       \
    uint64_t name##_work(const Model *m, const Op *op);                                        \
    size_t name##_scratch(const Op *op);                                                       \
    void name##_hwc(const Model *m, const Op *op, const uint8_t *const in[], uint8_t *out);

/* In the kind's own file: the declarations of its functions (the row itself goes to the table) */
#define FPGAI_KIND(name, id, code, ...) FPGAI_KIND_FUNCTIONS(name)

/* One parameter word: the Op field it fills, its name in docs/contract.md, its range */
#define PARAM(field, name, lo, hi) {name, offsetof(Op, field), lo, hi, 0, 0}
/* A word format version `since` added to the record: in a file of an older version the record lacks
 * it and the field is `absent` */
#define PARAM_SINCE(since, absent, field, name, lo, hi) {name, offsetof(Op, field), lo, hi, since, absent}
/* The rows kinds share */
#define WINDOW PARAM(kh, "kernel_h", 1, MAX_DIM), PARAM(kw, "kernel_w", 1, MAX_DIM), \
               PARAM(stride_h, "stride_h", 1, MAX_DIM), PARAM(stride_w, "stride_w", 1, MAX_DIM)
#define POOL_PADDING PARAM(pad_top, "pad_h", 0, MAX_DIM), PARAM(pad_left, "pad_w", 0, MAX_DIM)
#define WEIGHTS PARAM(w_zero_point, "weight_zero_point", 0, 255), \
                PARAM(w_offset, "weight_offset", 0, INT32_MAX), PARAM(b_offset, "bias_offset", 0, INT32_MAX), \
                PARAM_SINCE(4, 8, w_bits, "weight_bits", 2, 8)

/* ---- errors (core/util.c) ------------------------------------------------------------- */

/* The message into m->error, then back to the API function that set m->on_error.  (m is const
 * in the checks that call this; the error field and the jump are the loader's.) */
void fpgai_fail(const Model *m, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3), noreturn))
#endif
    ;
#define fail(...) fpgai_fail(m, __VA_ARGS__)

static inline const char *kind_name(const Op *op)
{
    return KINDS[op->kind].name;
}

/* ---- the checks kinds share (core/checks.c) ------------------------------------------- */

/* Largest |x - z| of a tensor: every op clamps its output to [qmin, qmax] */
int32_t max_abs_centered(const Op *x);
/* A kernel scratch buffer of `elems` elements against MAX_SCRATCH */
void check_scratch(const Model *m, int i, const char *what, uint64_t elems);
/* kernel, stride, padding and dilation against the input and output sizes (conv, pools) */
void check_window(const Model *m, int i);
/* A pool's geometry in the conv's terms: its padding on both sides, no dilation */
void pool_geometry(Op *op);
/* The output has its input's channels */
void check_same_channels(const Model *m, int i);
/* Per-channel weights have zero point 0; a per-tensor one fits the layer's bits */
void check_weight_zero_point(const Model *m, int i);
/* The output keeps its input's zero point and clamp (the data-movement kinds) */
void check_same_qparams(const Model *m, int i);
/* The output has its input's shape (lut, shuffle: "output CxHxW, its input tensor t is ...") */
void check_same_shape(const Model *m, int i);
/* The room in int64 for a product with a multiplier, past the largest rounding constant */
#define INT64_ROOM (INT64_MAX - ((int64_t)1 << (MAX_SHIFT - 1)))

/* ---- the reference kernels' helpers ---------------------------------------------------- */

/* Input k's tensor in the arena */
static inline const uint8_t *input_of(const Model *m, const Op *op, const uint8_t *arena, int k)
{
    return arena + op_input(m, op, k)->offset;
}

/* Output channel c's K weights unpacked into row (K bytes), in weight_byte's form (core/util.c) */
void unpack_weight_row(const Model *m, const Op *op, int32_t c, uint8_t *row);

/* Output channel c's K weights as bytes of weight_byte's form: at 8 bits the layer's own (weight.bin as
 * it is), below 8 unpacked into `row` (K bytes of the kind's scratch; out of line, so that the 8-bit
 * kernels compile as they did) */
static inline const uint8_t *weight_row(const Model *m, const Op *op, int32_t c, uint8_t *row)
{
    if (op->w_bits == 8)
        return m->weight_raw + (size_t)op->w_offset + (size_t)c * (size_t)op->k_size;
    unpack_weight_row(m, op, c, row);
    return row;
}

/* Weight byte b (weight_byte's form) minus the op's weight zero point, branch free: signed
 * (b ^ 0x80) - 128, unsigned b - z_w.  weight_flip / weight_sub give the two constants. */
static inline int weight_flip(const Model *m)
{
    return m->weight_signed ? 0x80 : 0;
}

static inline int weight_sub(const Model *m, const Op *op)
{
    return m->weight_signed ? 128 : op->w_zero_point;
}

#endif
