/*
 * conv.c -- op kind "conv" (code 1): 2-D convolution, grouped (depthwise at groups = C), padded on
 * each side, dilated; weights and biases from the weight files, one multiplier and shift per
 * output channel:
 *   acc = bias[co] + sum over the group's input channels and the kernel taps of (x - z_x)(w - z_w)
 *   out = requantize(acc, m[co], s[co])
 */
#include "kind.h"

#include <limits.h>

FPGAI_KIND(conv, OP_CONV, 1,
           .min_inputs = 1, .max_inputs = 1, .weighted = 1,
           .params = {WINDOW,
                      PARAM(pad_top, "pad_top", 0, MAX_DIM), PARAM(pad_left, "pad_left", 0, MAX_DIM),
                      PARAM(pad_bottom, "pad_bottom", 0, MAX_DIM), PARAM(pad_right, "pad_right", 0, MAX_DIM),
                      PARAM(dil_h, "dilation_h", 1, MAX_DIM), PARAM(dil_w, "dilation_w", 1, MAX_DIM),
                      PARAM(groups, "groups", 1, MAX_DIM), WEIGHTS},
           .n_mult = RQ_C, .n_shift = RQ_C, .n_table = RQ_NONE,
           .validate = conv_validate, .reference = conv_reference, .work = conv_work,
           .scratch = conv_scratch, .hwc = NULL)

void conv_validate(Model *m, int i)
{
    Op *op = &m->ops[i];
    const Op *x = op_input(m, op, 0);
    if (x->c % op->groups || op->c % op->groups)
        fail("%s: op %d (conv): groups %d does not divide its input's %d channels and its %d", m->path, i,
             op->groups, x->c, op->c);
    check_window(m, i);
    check_weight_zero_point(m, i);
    uint64_t k = (uint64_t)(x->c / op->groups) * (uint64_t)op->kh * (uint64_t)op->kw;     /* < 2^48 */
    if (k > INT32_MAX)
        fail("%s: op %d (conv): kernel of %dx%dx%d weights is too large", m->path, i, x->c / op->groups,
             op->kh, op->kw);
    op->k_size = (int32_t)k;
    /* the optimized kernels' scratch: im2col (K values for each output pixel, bounded here in whole
     * 8-element blocks of the output plane), the padded input */
    uint64_t plane = ((uint64_t)op->h * (uint64_t)op->w + 7) / 8 * 8;
    check_scratch(m, i, "im2col", k * plane);
    check_scratch(m, i, "padded input", ((uint64_t)x->h + (uint64_t)op->pad_top + (uint64_t)op->pad_bottom)
                                        * ((uint64_t)x->w + (uint64_t)op->pad_left + (uint64_t)op->pad_right)
                                        * (uint64_t)x->c);
}

/* C*H*W * (Cin/groups)*kh*kw multiply-accumulates */
uint64_t conv_work(const Model *m, const Op *op)
{
    (void)m;
    return (uint64_t)op_elems(op) * (uint64_t)op->k_size;
}

/* The reference kernel's row of int32 accumulators (its output row), then below 8 bits an output
 * channel's weights unpacked (weight_row) */
size_t conv_scratch(const Op *op)
{
    return 4 * (size_t)op->w + (op->w_bits < 8 ? (size_t)op->k_size : 0);
}

/* The outputs o in [*lo, *hi) whose tap at offset `at` (k*dil - pad) lands inside [0, size):
 * 0 <= o*stride + at < size. */
static void outputs_inside(int32_t at, int32_t stride, int32_t size, int32_t out, int32_t *lo, int32_t *hi)
{
    int32_t first = at >= 0 ? 0 : (-at + stride - 1) / stride;
    int32_t last = size - 1 - at < 0 ? -1 : (size - 1 - at) / stride;       /* the last o, or -1 */
    *lo = first;
    *hi = last + 1 < out ? last + 1 : out;
    if (*hi < *lo)
        *hi = *lo;
}

/* Convolution: acc = bias[co] + sum over the group's input channels and the kernel taps of
 * (x - z_x)(w - z_w), taps dilation apart; a tap in the padding adds 0 (the padding holds z_x)
 * and is skipped.  One output row at a time, in a row of int32 accumulators (the kind's scratch,
 * the arena's last bytes): per input channel and tap, one weight times a run of the input row. */
void conv_reference(const Model *m, const Op *op, uint8_t *arena)
{
    const Op *in = op_input(m, op, 0);
    const uint8_t *x = input_of(m, op, arena, 0);
    uint8_t *out = arena + op->offset;
    int32_t *acc = (int32_t *)(void *)(arena + m->row_offset);
    uint8_t *unpacked = arena + m->row_offset + 4 * (size_t)op->w;
    const int32_t H = in->h, W = in->w, cin_g = in->c / op->groups, cout_g = op->c / op->groups;
    const int32_t sh = op->stride_h, sw = op->stride_w, zx = in->zero_point;
    const int32_t flip = weight_flip(m), sub = weight_sub(m, op);
    for (int32_t co = 0; co < op->c; co++) {
        const uint8_t *group = x + (size_t)(co / cout_g) * (size_t)cin_g * H * W;
        const uint8_t *w = weight_row(m, op, co, unpacked);
        const int32_t bias = op_bias(m, op, co);
        for (int32_t oy = 0; oy < op->h; oy++) {
            for (int32_t ox = 0; ox < op->w; ox++)
                acc[ox] = bias;
            for (int32_t ky = 0; ky < op->kh; ky++) {
                const int32_t iy = oy * sh + ky * op->dil_h - op->pad_top;
                if (iy < 0 || iy >= H)
                    continue;
                for (int32_t kx = 0; kx < op->kw; kx++) {
                    const int32_t at = kx * op->dil_w - op->pad_left;
                    int32_t lo, hi;
                    outputs_inside(at, sw, W, op->w, &lo, &hi);
                    for (int32_t ci = 0; ci < cin_g; ci++) {
                        const int32_t wv = (w[((size_t)ci * op->kh + (size_t)ky) * op->kw + (size_t)kx] ^ flip) - sub;
                        const uint8_t *row = group + ((size_t)ci * H + (size_t)iy) * W;
                        for (int32_t ox = lo; ox < hi; ox++)
                            acc[ox] += (row[ox * sw + at] - zx) * wv;
                    }
                }
            }
            for (int32_t ox = 0; ox < op->w; ox++)
                *out++ = requantize(acc[ox], op->multiplier[co], op->shift[co], op->zero_point, op->qmin, op->qmax);
        }
    }
}
