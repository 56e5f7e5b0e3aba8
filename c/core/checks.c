/*
 * checks.c -- the load-time checks kinds share (kind.h: windows, channels, zero points, shapes,
 * scratch sizes) and the weighted layers' checks once the weights are in: their codes against their
 * bits, the accumulator bound.
 * Each names the file, the op and its kind; a failure longjmps back to the API function.
 */
#include "core.h"

/* Output size of a window op along one axis: (in + before + after - extent) / stride + 1, or -1;
 * extent = the kernel's reach, dilation (k - 1) + 1. */
static int64_t window_out(int32_t in, int64_t extent, int32_t stride, int32_t before, int32_t after, int ceil_mode)
{
    const int64_t padded = (int64_t)in + before + after;
    if (padded < extent)
        return -1;
    int64_t out = (padded - extent + (ceil_mode ? stride - 1 : 0)) / stride + 1;
    /* PyTorch's rule: a last window may reach past the padded input, never start past the
     * input and its left padding, so every window still holds a real element */
    if (ceil_mode && (out - 1) * stride >= (int64_t)in + before)
        out--;
    return out;
}

/* Largest |x - z| of a tensor: every op clamps its output to [qmin, qmax] (maxpool copies its
 * input's bounds, checked at load; the input is 0..255). */
int32_t max_abs_centered(const Op *x)
{
    int32_t a = x->zero_point - x->qmin, b = x->qmax - x->zero_point;
    return a > b ? a : b;
}

void check_scratch(const Model *m, int i, const char *what, uint64_t elems)
{
    if (elems > MAX_SCRATCH)
        fail("%s: op %d (%s): %llu %s elements, over the %llu limit", m->path, i, kind_name(&m->ops[i]),
             (unsigned long long)elems, what, (unsigned long long)MAX_SCRATCH);
}

/* kernel, stride, padding and dilation against the input and output sizes (conv, pools); no
 * padding reaches as far as the kernel, so every window holds a real element */
void check_window(const Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    const int64_t eh = (int64_t)op->dil_h * (op->kh - 1) + 1, ew = (int64_t)op->dil_w * (op->kw - 1) + 1;
    const int32_t pads[4] = {op->pad_top, op->pad_left, op->pad_bottom, op->pad_right};
    static const char *const side[4] = {"top", "left", "bottom", "right"};
    for (int k = 0; k < 4; k++)
        if (pads[k] >= (k % 2 ? ew : eh))
            fail("%s: op %d (%s): %s padding %d is not below the kernel's reach %lld", m->path, i, kind_name(op),
                 side[k], pads[k], (long long)(k % 2 ? ew : eh));
    int64_t oh = window_out(x->h, eh, op->stride_h, op->pad_top, op->pad_bottom, op->ceil_mode);
    int64_t ow = window_out(x->w, ew, op->stride_w, op->pad_left, op->pad_right, op->ceil_mode);
    if (oh != op->h || ow != op->w)
        fail("%s: op %d (%s): output %dx%d, but a %dx%d input with kernel %dx%d, stride %dx%d, padding "
             "%d,%d,%d,%d (top, left, bottom, right), dilation %dx%d%s gives %lldx%lld", m->path, i, kind_name(op),
             op->h, op->w, x->h, x->w, op->kh, op->kw, op->stride_h, op->stride_w, op->pad_top, op->pad_left,
             op->pad_bottom, op->pad_right, op->dil_h, op->dil_w, op->ceil_mode ? ", ceil_mode" : "",
             (long long)oh, (long long)ow);
}

/* A pool's geometry in the conv's terms: its padding on both sides, no dilation */
void pool_geometry(Op *op)
{
    op->pad_bottom = op->pad_top;
    op->pad_right = op->pad_left;
    op->dil_h = op->dil_w = 1;
}

void check_same_channels(const Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    if (op->c != x->c)
        fail("%s: op %d (%s): %d channels, its input tensor %d has %d", m->path, i, kind_name(op), op->c,
             op->in[0], x->c);
}

void check_weight_zero_point(const Model *m, int i)
{
    const Op *op = &m->ops[i];
    if (m->weight_signed && op->w_zero_point != 0)
        fail("%s: op %d (%s): weight_zero_point %d, but per-channel weights have zero point 0",
             m->path, i, kind_name(op), op->w_zero_point);
    if (op->w_zero_point > (1 << op->w_bits) - 1)
        fail("%s: op %d (%s): weight_zero_point %d does not fit its %d-bit weights (0..%d)", m->path, i,
             kind_name(op), op->w_zero_point, op->w_bits, (1 << op->w_bits) - 1);
}

/* The data-movement kinds (maxpool's rule): the output keeps its input's zero point and clamp */
void check_same_qparams(const Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    if (op->zero_point != x->zero_point || op->qmin != x->qmin || op->qmax != x->qmax)
        fail("%s: op %d (%s): zero point/clamp %d/%d..%d differ from its input's %d/%d..%d", m->path, i,
             kind_name(op), op->zero_point, op->qmin, op->qmax, x->zero_point, x->qmin, x->qmax);
}

/* elementwise kinds: the output has its input's shape */
void check_same_shape(const Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    if (x->c != op->c || x->h != op->h || x->w != op->w)
        fail("%s: op %d (%s): output %dx%dx%d, its input tensor %d is %dx%dx%d", m->path, i, kind_name(op), op->c,
             op->h, op->w, op->in[0], x->c, x->h, x->w);
}

/* Layer op's weights as their bits allow: a per-channel code of b bits is never -2^(b-1) (the
 * range is symmetric), and the bits after the layer's last value are 0. */
static void check_codes(const Model *m, int i, const char *weight_path)
{
    const Op *op = &m->ops[i];
    const int b = op->w_bits;
    const uint64_t n = (uint64_t)op->c * (uint64_t)op->k_size, tail = n * (uint64_t)b % 8;
    if (tail && m->weight_raw[(size_t)op->w_offset + (size_t)layer_weight_bytes(op) - 1] >> tail)
        fail("%s: op %d (%s): the padding bits after its last %d-bit weight are not 0", weight_path, i,
             kind_name(op), b);
    if (!m->weight_signed)
        return;                                     /* every code of b bits is an unsigned weight */
    const uint8_t refused = (uint8_t)(256 - (1 << (b - 1)));      /* -2^(b-1) in weight_byte's form */
    for (uint64_t j = 0; j < n; j++)
        if (weight_byte(m, op, j) == refused)
            fail("%s: op %d (%s): weight %llu (output channel %llu) is -%d; per-channel weights of %d bits lie "
                 "in [-%d, %d]", weight_path, i, kind_name(op), (unsigned long long)j,
                 (unsigned long long)(j / (uint64_t)op->k_size), 1 << (b - 1), b, (1 << (b - 1)) - 1,
                 (1 << (b - 1)) - 1);
}

/* A conv/linear accumulates in int32:  acc = bias[c] + sum_k (x_k - z_x)(w_ck - z_w).
 * Every partial sum of channel c is bounded by
 *   bound_c = (sum_k |w_ck - z_w|) * max(z_x - qmin_x, qmax_x - z_x) + |bias_c|
 * so max_c bound_c <= INT32_MAX proves no int32 overflow for any input image.  requantize() then
 * computes acc * m in int64: |acc| < 2^31, m < 2^31, plus a rounding constant <= 2^61,
 * stays below 2^63.  The other kinds' int64 bounds are in their validate functions. */
int64_t acc_bound(const Model *m, const Op *op, int32_t c)
{
    int64_t sum = 0;
    for (int32_t k = 0; k < op->k_size; k++) {
        int w = weight_centered(m, op, c, k);
        sum += w < 0 ? -w : w;                    /* <= 2^31 * 255: no overflow */
    }
    int64_t b = op_bias(m, op, c) < 0 ? -(int64_t)op_bias(m, op, c) : op_bias(m, op, c);
    return sum * max_abs_centered(op_input(m, op, 0)) + b;
}

/* Refused where a channel's bound exceeds int32 */
static void check_overflow(const Model *m, int i)
{
    const Op *op = &m->ops[i];
    int64_t worst = 0;
    for (int32_t c = 0; c < op->c; c++) {
        const int64_t bound = acc_bound(m, op, c);
        if (bound > worst)
            worst = bound;
    }
    if (worst > INT32_MAX)
        fail("%s: op %d (%s): worst-case accumulator %lld exceeds int32 (%d); the integer path could "
             "overflow", m->weights_path, i, kind_name(op), (long long)worst, INT32_MAX);
}

void check_weights(const Model *m, const char *weight_path)
{
    for (int i = 0; i < m->n_ops; i++)
        if (KINDS[m->ops[i].kind].weighted) {
            check_codes(m, i, weight_path);
            check_overflow(m, i);
        }
}
