/*
 * pad.c -- op kind "pad" (code 13): H and W padded by pad_top, pad_left, pad_bottom, pad_right.
 * pad_mode 0: the constant pad_value; 1: reflect (mirrored about the edge, the edge not repeated,
 * each pad below the input's size); 2: replicate (the edge repeated).  Its output keeps its input's
 * zero point; its clamp holds its input's and the constant.
 */
#include "kind.h"

#define PAD_MODE(op) ((op)->arg[0])
#define PAD_VALUE(op) ((op)->arg[1])
enum { PAD_CONSTANT, PAD_REFLECT, PAD_REPLICATE };

FPGAI_KIND(pad, OP_PAD, 13,
           .min_inputs = 1, .max_inputs = 1,
           .params = {PARAM(pad_top, "pad_top", 0, MAX_DIM), PARAM(pad_left, "pad_left", 0, MAX_DIM),
                      PARAM(pad_bottom, "pad_bottom", 0, MAX_DIM), PARAM(pad_right, "pad_right", 0, MAX_DIM),
                      PARAM(arg[0], "pad_mode", 0, 2), PARAM(arg[1], "pad_value", 0, 255)},
           .n_mult = RQ_NONE, .n_shift = RQ_NONE, .n_table = RQ_NONE,
           .validate = pad_validate, .reference = pad_reference, .hwc = pad_hwc)

/* the input's C, H and W grown by the pads; reflect pads below the input's size; the zero point
 * kept, the clamp holding the input's and the constant */
void pad_validate(Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    if (x->c != op->c || (int64_t)x->h + op->pad_top + op->pad_bottom != op->h ||
        (int64_t)x->w + op->pad_left + op->pad_right != op->w)
        fail("%s: op %d (pad): output %dx%dx%d, but its input tensor %d of %dx%dx%d padded by %d,%d,%d,%d (top, "
             "left, bottom, right) gives %dx%lldx%lld", m->path, i, op->c, op->h, op->w, op->in[0], x->c, x->h,
             x->w, op->pad_top, op->pad_left, op->pad_bottom, op->pad_right, x->c,
             (long long)x->h + op->pad_top + op->pad_bottom, (long long)x->w + op->pad_left + op->pad_right);
    if (PAD_MODE(op) == PAD_REFLECT && (op->pad_top >= x->h || op->pad_bottom >= x->h || op->pad_left >= x->w ||
                                        op->pad_right >= x->w))
        fail("%s: op %d (pad): reflect padding %d,%d,%d,%d (top, left, bottom, right) of a %dx%d input: each pad "
             "must be below the input's size on its axis", m->path, i, op->pad_top, op->pad_left, op->pad_bottom,
             op->pad_right, x->h, x->w);
    if (op->zero_point != x->zero_point || op->qmin > x->qmin || op->qmax < x->qmax)
        fail("%s: op %d (pad): zero point/clamp %d/%d..%d: a pad keeps its input's zero point %d and a clamp "
             "holding its input's %d..%d", m->path, i, op->zero_point, op->qmin, op->qmax, x->zero_point, x->qmin,
             x->qmax);
    if (PAD_MODE(op) == PAD_CONSTANT && (PAD_VALUE(op) < op->qmin || PAD_VALUE(op) > op->qmax))
        fail("%s: op %d (pad): pad_value %d outside its clamp %d..%d", m->path, i, PAD_VALUE(op), op->qmin,
             op->qmax);
}

/* The input row or column an output one reads (-1: the constant), out an index into the padded axis */
static int32_t source_index(const Op *op, int32_t out, int32_t before, int32_t size)
{
    int32_t at = out - before;
    if (at >= 0 && at < size)
        return at;
    if (PAD_MODE(op) == PAD_CONSTANT)
        return -1;
    if (PAD_MODE(op) == PAD_REPLICATE)
        return at < 0 ? 0 : size - 1;
    return at < 0 ? -at : 2 * (size - 1) - at;      /* reflect: the pads are below size */
}

/* One output row of `width` elements from an input row, `step` bytes between elements (1 in CHW;
 * C in HWC, where each element is C bytes) */
static void pad_row(const Op *op, const uint8_t *row, int32_t in_w, size_t step, uint8_t *out)
{
    for (int32_t ox = 0; ox < op->w; ox++) {
        int32_t ix = row ? source_index(op, ox, op->pad_left, in_w) : -1;
        if (ix < 0)
            memset(out + ox * step, PAD_VALUE(op), step);
        else
            memcpy(out + ox * step, row + ix * step, step);
    }
}

void pad_reference(const Model *m, const Op *op, uint8_t *arena)
{
    const Op *in = op_input(m, op, 0);
    const uint8_t *x = input_of(m, op, arena, 0);
    uint8_t *out = arena + op->offset;
    for (int32_t c = 0; c < op->c; c++)
        for (int32_t y = 0; y < op->h; y++) {
            int32_t iy = source_index(op, y, op->pad_top, in->h);
            pad_row(op, iy < 0 ? NULL : x + ((size_t)c * in->h + iy) * in->w, in->w, 1,
                    out + ((size_t)c * op->h + y) * op->w);
        }
}

/* The optimized engine's layout (HWC): whole pixels of C bytes move at once */
void pad_hwc(const Model *m, const Op *op, const uint8_t *const in[], uint8_t *out)
{
    const Op *x = op_input(m, op, 0);
    const size_t pixel = (size_t)op->c;
    for (int32_t y = 0; y < op->h; y++) {
        int32_t iy = source_index(op, y, op->pad_top, x->h);
        pad_row(op, iy < 0 ? NULL : in[0] + (size_t)iy * x->w * pixel, x->w, pixel, out + (size_t)y * op->w * pixel);
    }
}
