/*
 * depthwise_c.h -- the depthwise conv as one C loop over the channels, on the input in place (no copy
 * with its padding), which the compilers vectorize (int16 products: pmullw/pmulhw, smull): the
 * depthwise kernel of neon.c and c99.c, and of avx2.c and avxvnni.c for the channels past their
 * 16-channel chunks (avx2.h).
 */
#ifndef FPGAI_FAST_DEPTHWISE_C_H
#define FPGAI_FAST_DEPTHWISE_C_H

#include "fast.h"

/* f's weights [tap][C] as int16 w - z_w, its bias as it is and its requantization per channel, in
 * channel order (whole 16-channel blocks), from blk (FastIsa.prepare_depthwise) */
static inline void prepare_depthwise_c(FastModel *fm, FastOp *f, const Model *m, const Op *op, const Op *in,
                                       Block *blk)
{
    (void)in;
    const int taps = op->kh * op->kw;
    const size_t nch = ((size_t)op->c + BLK - 1) / BLK * BLK;
    fm->dw_acc_elems = max_size(fm->dw_acc_elems, (size_t)op->c);
    f->blocks = (int32_t)(nch / BLK);
    f->dw_weights = block_take(blk, (size_t)taps * (size_t)op->c, sizeof *f->dw_weights);
    take_channels(f, nch, blk);
    if (!block_filling(blk))
        return;
    for (int32_t c = 0; c < op->c; c++)
        for (int t = 0; t < taps; t++)
            f->dw_weights[(size_t)t * op->c + c] = (int16_t)weight_centered(m, op, c, t);
    for (int32_t c = 0; c < op->c; c++) {
        set_requant(f, op, c, (size_t)c);
        f->bias[c] = (uint32_t)op_bias(m, op, c);
    }
}

/* The taps [lo, hi) of a k-tap kernel row (or column) whose input index o * stride - pad + t * dil
 * lies inside 0 .. size - 1; the others read the padding (x - z_x = 0 there) */
static inline void tap_window(int32_t o, int32_t stride, int32_t dil, int32_t pad, int32_t k, int32_t size,
                              int32_t *lo, int32_t *hi)
{
    const int32_t start = o * stride - pad;
    *lo = start >= 0 ? 0 : (-start + dil - 1) / dil;
    *hi = start >= size ? 0 : (size - start + dil - 1) / dil;
    if (*hi > k)
        *hi = k;
    if (*lo > *hi)
        *lo = *hi;
}

/* An output pixel's window in the input: its taps inside the input, rows ky0 .. ky1 - 1 and columns
 * kx0 .. kx1 - 1 (tap_window), tap (ky, kx)'s input pixel at x0 + (ky - ky0) * ystep + (kx - kx0) *
 * xstep, x0 the first tap's (where there is one: a window can lie wholly in the padding) */
typedef struct {
    int32_t ky0, ky1, kx0, kx1;
    const uint8_t *x0;
    size_t ystep, xstep;
} DwWindow;

/* Output pixel (oy, ox)'s window in the image x, its rows ky0 .. ky1 - 1 (oy's tap_window) */
static inline DwWindow dw_window(const Op *op, const Op *in, const uint8_t *x, int32_t oy, int32_t ky0, int32_t ky1,
                                 int32_t ox)
{
    const int32_t C = op->c;
    DwWindow w;
    w.ky0 = ky0;
    w.ky1 = ky1;
    tap_window(ox, op->stride_w, op->dil_w, op->pad_left, op->kw, in->w, &w.kx0, &w.kx1);
    const int32_t iy0 = oy * op->stride_h - op->pad_top + ky0 * op->dil_h;
    const int32_t ix0 = ox * op->stride_w - op->pad_left + w.kx0 * op->dil_w;
    w.x0 = ky0 < ky1 && w.kx0 < w.kx1 ? x + ((size_t)iy0 * in->w + (size_t)ix0) * (size_t)C : x;
    w.ystep = (size_t)op->dil_h * in->w * C;
    w.xstep = (size_t)op->dil_w * C;
    return w;
}

/* The sums of window w's channels c0 .. C - 1 into acc: the bias, then every tap's (x - z_x)(w - z_w) */
static inline void dw_sum_c(const Op *op, const Op *in, const FastOp *f, const DwWindow *w, int32_t c0, int32_t *acc)
{
    const int32_t C = op->c, zx = in->zero_point;
    memcpy(acc + c0, f->bias + c0, (size_t)(C - c0) * sizeof *acc);     /* int32 biases, stored as uint32 */
    for (int32_t ky = w->ky0; c0 < C && ky < w->ky1; ky++)
        for (int32_t kx = w->kx0; kx < w->kx1; kx++) {
            const uint8_t *src = w->x0 + (size_t)(ky - w->ky0) * w->ystep + (size_t)(kx - w->kx0) * w->xstep;
            const int16_t *wt = f->dw_weights + (size_t)(ky * op->kw + kx) * C;
            for (int32_t c = c0; c < C; c++)
                acc[c] += (int16_t)(src[c] - zx) * wt[c];
        }
}

/* Channels c .. C - 1 of acc requantized into dst */
static inline void dw_requant_c(const Op *op, const FastOp *f, const int32_t *acc, int32_t c, uint8_t *dst)
{
    const int32_t C = op->c;
    for (; c < C; c++)
        dst[c] = requantize(acc[c], f->multiplier[c], (int)f->shift[c], op->zero_point, op->qmin, op->qmax);
}

/* Output row oy of one image, on its input x in place (FastIsa.depthwise_row) */
static inline void depthwise_row_c(const Op *op, const Op *in, const FastOp *f, const uint8_t *x, int32_t oy,
                                   Scratch *sc, uint8_t *out)
{
    int32_t ky0, ky1;
    tap_window(oy, op->stride_h, op->dil_h, op->pad_top, op->kh, in->h, &ky0, &ky1);
    for (int32_t ox = 0; ox < op->w; ox++) {
        const DwWindow w = dw_window(op, in, x, oy, ky0, ky1, ox);
        uint8_t *dst = out + ((size_t)oy * op->w + ox) * op->c;
        dw_sum_c(op, in, f, &w, 0, sc->dw_acc);
        dw_requant_c(op, f, sc->dw_acc, 0, dst);
    }
}

#endif
