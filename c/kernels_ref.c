/*
 * kernels_ref.c -- the reference kernels (--reference): CHW activations, plain loops.
 *
 * Conv is im2col + a matrix product on int16 (x - z_x) and (w - z_w); linear a dot product
 * per output; the pools, add, concat, mul and lut are direct loops, shuffle, slice and upsample
 * copies.  Every output value goes
 * through requantize() (fpgai.h), the contract's one requantizer (a lut reads its table, which
 * holds requantized values).  The inner loops work on blocks of LANES consecutive values (a
 * SIMD/PE row): contiguous, branch free, with a constant trip count, so a compiler turns them
 * into SIMD code.
 */
#include "kernels.h"

#include <stdlib.h>
#include <string.h>

#define LANES 8

/* n rounded up to a whole number of LANES blocks */
static size_t round_lanes(size_t n)
{
    return (n + LANES - 1) / LANES * LANES;
}

typedef struct {
    int16_t *weight;                /* conv / linear: [c][w_stride], minus w_zero_point, zero padded */
    size_t w_stride;                /* k_size, rounded up to LANES for linear */
} RefOp;

typedef struct {
    RefOp *ops;
    int n_ops;
    size_t cols;                    /* int16 elements of the im2col / linear input scratch */
    size_t acc;                     /* int32 accumulators of one conv output channel */
} RefModel;

typedef struct {
    uint8_t *arena;                 /* every activation (Model.arena_bytes) */
    int16_t *cols;
    int32_t *acc;
} RefWorkspace;

static const uint8_t *tensor(const Model *m, const RefWorkspace *ws, const Op *op, int k)
{
    return ws->arena + op_input(m, op, k)->offset;
}

/* ---- kernels ----------------------------------------------------------------------------- */

static void ref_input(const Model *m, const RefModel *rm, int i, RefWorkspace *ws, const uint8_t *image)
{
    (void)rm;
    memcpy(ws->arena + m->ops[i].offset, image, op_elems(&m->ops[i]));
}

/* Convolution as im2col + matrix product, one group at a time.
 *   cols[k][p]  = x[ci][oy*sh + ky*dh - pt][ox*sw + kx*dw - pl] - z_x   (0 in the padding)
 *                 with k = (ci*kh + ky)*kw + kx over the group's input channels,
 *                 p = oy*OW + ox; each row is zero padded to P8 = P rounded up to LANES
 *   acc[p]      = bias[co] + sum_k w[co][k] * cols[k][p]
 *   out[co][p]  = requantize(acc[p]) */
static void ref_conv(const Model *m, const RefModel *rm, int i, RefWorkspace *ws, const uint8_t *image)
{
    (void)image;
    const Op *op = &m->ops[i], *in = op_input(m, op, 0);
    const uint8_t *x = tensor(m, ws, op, 0);
    uint8_t *out = ws->arena + op->offset;
    int16_t *cols = ws->cols;
    int32_t *acc = ws->acc;
    const RefOp *r = &rm->ops[i];
    const int32_t cin_g = in->c / op->groups, cout_g = op->c / op->groups;
    const int32_t H = in->h, W = in->w, OH = op->h, OW = op->w;
    const size_t P = (size_t)OH * OW, P8 = round_lanes(P);
    const int32_t zx = in->zero_point;

    for (int32_t g = 0; g < op->groups; g++) {
        /* im2col for this group's input channels */
        int16_t *row = cols;
        for (int32_t ci = 0; ci < cin_g; ci++) {
            const uint8_t *plane = x + (size_t)(g * cin_g + ci) * H * W;
            for (int32_t ky = 0; ky < op->kh; ky++) {
                for (int32_t kx = 0; kx < op->kw; kx++, row += P8) {
                    for (int32_t oy = 0; oy < OH; oy++) {
                        int32_t iy = oy * op->stride_h + ky * op->dil_h - op->pad_top;
                        int16_t *dst = row + (size_t)oy * OW;
                        if (iy < 0 || iy >= H) {
                            memset(dst, 0, (size_t)OW * sizeof *dst);
                            continue;
                        }
                        const uint8_t *src = plane + (size_t)iy * W;
                        for (int32_t ox = 0; ox < OW; ox++) {
                            int32_t ix = ox * op->stride_w + kx * op->dil_w - op->pad_left;
                            dst[ox] = (int16_t)(ix >= 0 && ix < W ? src[ix] - zx : 0);
                        }
                    }
                    memset(row + P, 0, (P8 - P) * sizeof *row);
                }
            }
        }
        /* matrix product and requantization, one output channel at a time */
        for (int32_t j = 0; j < cout_g; j++) {
            int32_t co = g * cout_g + j;
            const int16_t *w = r->weight + (size_t)co * r->w_stride;
            for (size_t p = 0; p < P8; p++)
                acc[p] = op->bias[co];
            int32_t k = 0;
            for (; k + 4 <= op->k_size; k += 4) {          /* four weights at a time */
                const int16_t *c0 = cols + (size_t)k * P8, *c1 = c0 + P8, *c2 = c1 + P8, *c3 = c2 + P8;
                int32_t w0 = w[k], w1 = w[k + 1], w2 = w[k + 2], w3 = w[k + 3];
                for (size_t p = 0; p < P8; p += LANES)
                    for (int l = 0; l < LANES; l++)
                        acc[p + l] += w0 * c0[p + l] + w1 * c1[p + l] + w2 * c2[p + l] + w3 * c3[p + l];
            }
            for (; k < op->k_size; k++) {                  /* the remaining 0..3 */
                const int16_t *c0 = cols + (size_t)k * P8;
                int32_t w0 = w[k];
                for (size_t p = 0; p < P8; p += LANES)
                    for (int l = 0; l < LANES; l++)
                        acc[p + l] += w0 * c0[p + l];
            }
            uint8_t *dst = out + (size_t)co * P;
            const int64_t mult = op->multiplier[co];
            const int s = op->shift[co];
            for (size_t p = 0; p < P; p++)
                dst[p] = requantize(acc[p], mult, s, op->zero_point, op->qmin, op->qmax);
        }
    }
}

/* Fully connected: the input tensor read flat (CHW order).
 *   out[c] = requantize(bias[c] + sum_k w[c][k] * (x[k] - z_x))
 * LANES partial sums, one per lane, added up at the end; xs and the weight rows are zero
 * padded to whole blocks. */
static void ref_linear(const Model *m, const RefModel *rm, int i, RefWorkspace *ws, const uint8_t *image)
{
    (void)image;
    const Op *op = &m->ops[i], *in = op_input(m, op, 0);
    const uint8_t *x = tensor(m, ws, op, 0);
    uint8_t *out = ws->arena + op->offset;
    int16_t *xs = ws->cols;
    const RefOp *r = &rm->ops[i];
    const int32_t K = op->k_size;
    const size_t K8 = r->w_stride;
    for (int32_t k = 0; k < K; k++)
        xs[k] = (int16_t)(x[k] - in->zero_point);
    memset(xs + K, 0, (K8 - (size_t)K) * sizeof *xs);
    for (int32_t c = 0; c < op->c; c++) {
        const int16_t *w = r->weight + (size_t)c * K8;
        int32_t lane[LANES] = {0};
        for (size_t k = 0; k < K8; k += LANES)
            for (int l = 0; l < LANES; l++)
                lane[l] += w[k + l] * xs[k + l];
        int32_t acc = op->bias[c];
        for (int l = 0; l < LANES; l++)
            acc += lane[l];
        out[c] = requantize(acc, op->multiplier[c], op->shift[c], op->zero_point, op->qmin, op->qmax);
    }
}

/* Max pooling; padding never wins: out-of-bounds positions are skipped (pad < kernel
 * guarantees each window holds a real element). */
static void ref_maxpool(const Model *m, const RefModel *rm, int i, RefWorkspace *ws, const uint8_t *image)
{
    (void)rm;
    (void)image;
    const Op *op = &m->ops[i], *in = op_input(m, op, 0);
    const uint8_t *x = tensor(m, ws, op, 0);
    uint8_t *out = ws->arena + op->offset;
    for (int32_t c = 0; c < op->c; c++) {
        const uint8_t *plane = x + (size_t)c * in->h * in->w;
        for (int32_t oy = 0; oy < op->h; oy++) {
            int32_t y0, y1;
            pool_window(oy, op->stride_h, op->pad_top, op->kh, in->h, &y0, &y1);
            for (int32_t ox = 0; ox < op->w; ox++) {
                int32_t x0, x1;
                pool_window(ox, op->stride_w, op->pad_left, op->kw, in->w, &x0, &x1);
                uint8_t best = 0;
                for (int32_t iy = y0; iy < y1; iy++)
                    for (int32_t ix = x0; ix < x1; ix++)
                        if (plane[(size_t)iy * in->w + ix] > best)
                            best = plane[(size_t)iy * in->w + ix];
                *out++ = best;
            }
        }
    }
}

/* Average pooling (no padding): out = requantize(sum_window(x) - kh*kw*z_in) */
static void ref_avgpool(const Model *m, const RefModel *rm, int i, RefWorkspace *ws, const uint8_t *image)
{
    (void)rm;
    (void)image;
    const Op *op = &m->ops[i], *in = op_input(m, op, 0);
    const uint8_t *x = tensor(m, ws, op, 0);
    uint8_t *out = ws->arena + op->offset;
    const int64_t offset = (int64_t)op->kh * op->kw * in->zero_point;
    for (int32_t c = 0; c < op->c; c++) {
        const uint8_t *plane = x + (size_t)c * in->h * in->w;
        for (int32_t oy = 0; oy < op->h; oy++) {
            for (int32_t ox = 0; ox < op->w; ox++) {
                int64_t sum = 0;
                for (int32_t ky = 0; ky < op->kh; ky++) {
                    const uint8_t *src = plane + (size_t)(oy * op->stride_h + ky) * in->w + (size_t)ox * op->stride_w;
                    for (int32_t kx = 0; kx < op->kw; kx++)
                        sum += src[kx];
                }
                *out++ = requantize(sum - offset, op->multiplier[0], op->shift[0], op->zero_point, op->qmin, op->qmax);
            }
        }
    }
}

/* Adaptive average pooling: out[c][p] = requantize(sum_window_p(x) - n_p*z_in) with position p's
 * multiplier and shift, windows as PyTorch's (adaptive_window) */
static void ref_adaptive_avgpool(const Model *m, const RefModel *rm, int i, RefWorkspace *ws, const uint8_t *image)
{
    (void)rm;
    (void)image;
    const Op *op = &m->ops[i], *in = op_input(m, op, 0);
    const uint8_t *x = tensor(m, ws, op, 0);
    uint8_t *out = ws->arena + op->offset;
    for (int32_t c = 0; c < op->c; c++) {
        const uint8_t *plane = x + (size_t)c * in->h * in->w;
        for (int32_t oy = 0; oy < op->h; oy++) {
            int32_t y0, y1;
            adaptive_window(oy, op->h, in->h, &y0, &y1);
            for (int32_t ox = 0; ox < op->w; ox++) {
                int32_t x0, x1;
                adaptive_window(ox, op->w, in->w, &x0, &x1);
                int64_t sum = -(int64_t)(y1 - y0) * (x1 - x0) * in->zero_point;
                for (int32_t iy = y0; iy < y1; iy++)
                    for (int32_t ix = x0; ix < x1; ix++)
                        sum += plane[(size_t)iy * in->w + ix];
                size_t p = (size_t)oy * op->w + ox;
                *out++ = requantize(sum, op->multiplier[p], op->shift[p], op->zero_point, op->qmin, op->qmax);
            }
        }
    }
}

/* Residual add: out = requantize((a - z_a)*m_a + (b - z_b)*m_b) with multiplier 1 and the
 * shared shift: both products summed before the one rounding. */
static void ref_add(const Model *m, const RefModel *rm, int i, RefWorkspace *ws, const uint8_t *image)
{
    (void)rm;
    (void)image;
    const Op *op = &m->ops[i], *ia = op_input(m, op, 0), *ib = op_input(m, op, 1);
    const uint8_t *a = tensor(m, ws, op, 0), *b = tensor(m, ws, op, 1);
    uint8_t *out = ws->arena + op->offset;
    const size_t n = op_elems(op);
    for (size_t e = 0; e < n; e++) {
        int64_t acc = (int64_t)(a[e] - ia->zero_point) * op->multiplier[0] +
                      (int64_t)(b[e] - ib->zero_point) * op->multiplier[1];
        out[e] = requantize(acc, 1, op->shift[0], op->zero_point, op->qmin, op->qmax);
    }
}

/* Concat on channels: input k's planes, in input order, each value requantize(x - z_k) with
 * input k's multiplier and shift. */
static void ref_concat(const Model *m, const RefModel *rm, int i, RefWorkspace *ws, const uint8_t *image)
{
    (void)rm;
    (void)image;
    const Op *op = &m->ops[i];
    uint8_t *out = ws->arena + op->offset;
    for (int k = 0; k < op->n_inputs; k++) {
        const Op *in = op_input(m, op, k);
        const uint8_t *x = tensor(m, ws, op, k);
        const size_t n = op_elems(in);
        for (size_t e = 0; e < n; e++)
            out[e] = requantize(x[e] - in->zero_point, op->multiplier[k], op->shift[k], op->zero_point, op->qmin,
                                op->qmax);
        out += n;
    }
}

/* Lookup table: out = table[x] (its values are already requantized and clamped). */
static void ref_lut(const Model *m, const RefModel *rm, int i, RefWorkspace *ws, const uint8_t *image)
{
    (void)rm;
    (void)image;
    const Op *op = &m->ops[i];
    const uint8_t *x = tensor(m, ws, op, 0);
    uint8_t *out = ws->arena + op->offset;
    const size_t n = op_elems(op);
    for (size_t e = 0; e < n; e++)
        out[e] = (uint8_t)op->table[x[e]];
}

/* Product: out = requantize((a - z_a)*(b - z_b)) with the op's multiplier and shift; input 1 has
 * the output's shape or is Cx1x1 (one value for each channel plane). */
static void ref_mul(const Model *m, const RefModel *rm, int i, RefWorkspace *ws, const uint8_t *image)
{
    (void)rm;
    (void)image;
    const Op *op = &m->ops[i], *ia = op_input(m, op, 0), *ib = op_input(m, op, 1);
    const uint8_t *a = tensor(m, ws, op, 0), *b = tensor(m, ws, op, 1);
    uint8_t *out = ws->arena + op->offset;
    const size_t P = (size_t)op->h * op->w, Pb = (size_t)ib->h * ib->w;
    for (int32_t c = 0; c < op->c; c++)
        for (size_t p = 0; p < P; p++) {
            int64_t prod = (int64_t)(a[(size_t)c * P + p] - ia->zero_point) *
                           (b[(size_t)c * Pb + (Pb == 1 ? 0 : p)] - ib->zero_point);
            out[(size_t)c * P + p] = requantize(prod, op->multiplier[0], op->shift[0], op->zero_point, op->qmin,
                                                op->qmax);
        }
}

/* Channel shuffle: out channel j*groups + g is input channel g*(C/groups) + j (whole planes). */
static void ref_shuffle(const Model *m, const RefModel *rm, int i, RefWorkspace *ws, const uint8_t *image)
{
    (void)rm;
    (void)image;
    const Op *op = &m->ops[i];
    const uint8_t *x = tensor(m, ws, op, 0);
    uint8_t *out = ws->arena + op->offset;
    const size_t P = (size_t)op->h * op->w;
    const int32_t per = op->c / op->groups;
    for (int32_t g = 0; g < op->groups; g++)
        for (int32_t j = 0; j < per; j++)
            memcpy(out + ((size_t)j * op->groups + g) * P, x + ((size_t)g * per + j) * P, P);
}

/* Channel slice: input channels channel_start .. channel_start + C - 1 (contiguous planes). */
static void ref_slice(const Model *m, const RefModel *rm, int i, RefWorkspace *ws, const uint8_t *image)
{
    (void)rm;
    (void)image;
    const Op *op = &m->ops[i];
    memcpy(ws->arena + op->offset, tensor(m, ws, op, 0) + (size_t)op->ch_start * op->h * op->w, op_elems(op));
}

/* Nearest upsampling: out[c][y][x] = in[c][y / scale_h][x / scale_w]. */
static void ref_upsample(const Model *m, const RefModel *rm, int i, RefWorkspace *ws, const uint8_t *image)
{
    (void)rm;
    (void)image;
    const Op *op = &m->ops[i], *in = op_input(m, op, 0);
    const uint8_t *x = tensor(m, ws, op, 0);
    uint8_t *out = ws->arena + op->offset;
    for (int32_t c = 0; c < op->c; c++)
        for (int32_t y = 0; y < op->h; y++) {
            const uint8_t *row = x + ((size_t)c * in->h + y / op->scale_h) * in->w;
            for (int32_t ox = 0; ox < op->w; ox++)
                *out++ = row[ox / op->scale_w];
        }
}

typedef void RefKernel(const Model *m, const RefModel *rm, int i, RefWorkspace *ws, const uint8_t *image);

static RefKernel *const REF_KERNEL[OP_KIND_COUNT] = {
    [OP_INPUT] = ref_input,     [OP_CONV] = ref_conv, [OP_LINEAR] = ref_linear, [OP_MAXPOOL] = ref_maxpool,
    [OP_AVGPOOL] = ref_avgpool, [OP_ADD] = ref_add,   [OP_CONCAT] = ref_concat, [OP_LUT] = ref_lut,
    [OP_MUL] = ref_mul,         [OP_SHUFFLE] = ref_shuffle, [OP_SLICE] = ref_slice, [OP_UPSAMPLE] = ref_upsample,
    [OP_ADAPTIVE_AVGPOOL] = ref_adaptive_avgpool,
};

/* ---- the kernel set ---------------------------------------------------------------------- */

static void ref_release(void *p)
{
    RefModel *rm = p;
    if (!rm)
        return;
    for (int i = 0; rm->ops && i < rm->n_ops; i++)
        free(rm->ops[i].weight);
    free(rm->ops);
    free(rm);
}

/* The weights minus their zero point as int16 (-255..255), [c][w_stride], linear rows zero
 * padded to whole LANES blocks; the scratch sizes. */
static void *ref_prepare(const Model *m)
{
    for (int k = 0; k < OP_KIND_COUNT; k++)
        if (!REF_KERNEL[k])
            fail("kernels_ref.c: no reference kernel for op kind %s", KINDS[k].name);
    RefModel *rm = xcalloc(1, sizeof *rm, "reference model");
    rm->n_ops = m->n_ops;
    rm->ops = xcalloc((size_t)m->n_ops, sizeof *rm->ops, "reference ops");
    for (int i = 0; i < m->n_ops; i++) {
        const Op *op = &m->ops[i];
        RefOp *r = &rm->ops[i];
        if (op->kind == OP_CONV) {
            size_t plane = round_lanes((size_t)op->h * (size_t)op->w);
            if ((size_t)op->k_size * plane > rm->cols)
                rm->cols = (size_t)op->k_size * plane;
            if (plane > rm->acc)
                rm->acc = plane;
        }
        if (!KINDS[op->kind].weighted)
            continue;
        r->w_stride = op->kind == OP_LINEAR ? round_lanes((size_t)op->k_size) : (size_t)op->k_size;
        if (op->kind == OP_LINEAR && r->w_stride > rm->cols)
            rm->cols = r->w_stride;
        r->weight = xcalloc((size_t)op->c * r->w_stride, sizeof *r->weight, "weights");
        for (int32_t c = 0; c < op->c; c++)
            for (int32_t k = 0; k < op->k_size; k++)
                r->weight[(size_t)c * r->w_stride + (size_t)k] = (int16_t)weight_centered(m, op, c, k);
    }
    return rm;
}

static void ref_workspace_free(void *p)
{
    RefWorkspace *ws = p;
    if (!ws)
        return;
    free(ws->arena);
    free(ws->cols);
    free(ws->acc);
    free(ws);
}

static void *ref_workspace_new(const Model *m, const void *prepared)
{
    const RefModel *rm = prepared;
    RefWorkspace *ws = xcalloc(1, sizeof *ws, "workspace");
    ws->arena = xmalloc(m->arena_bytes, "activations");
    if (rm->cols)
        ws->cols = xmalloc(rm->cols * sizeof *ws->cols, "im2col scratch");
    if (rm->acc)
        ws->acc = xmalloc(rm->acc * sizeof *ws->acc, "accumulators");
    return ws;
}

static const uint8_t *ref_run(const Model *m, const void *prepared, void *workspace, const uint8_t *image)
{
    const RefModel *rm = prepared;
    RefWorkspace *ws = workspace;
    for (int i = 0; i < m->n_ops; i++)
        REF_KERNEL[m->ops[i].kind](m, rm, i, ws, image);
    return ws->arena + m->ops[m->n_ops - 1].offset;
}

const KernelSet REFERENCE_KERNELS = {"reference", ref_prepare, ref_release, ref_workspace_new, ref_workspace_free,
                                     ref_run};
