/*
 * c99.c -- the C99 build of the optimized kernels (FAST_KERNELS_C99, fast.h), for any CPU and compiler:
 * the GEMM's dot-product tile, 2 channels x 4 pixels, each output a dot product over the depth of
 * int16 rows and weights, as plain loops GCC vectorizes (pmaddwd with SSE2, the x86-64 baseline, which
 * has no one-instruction sign extension: hence int16 both); the depthwise conv as the C loop
 * (depthwise_c.h).
 */
#include "depthwise_c.h"
#include "fast.h"

#define MR 4            /* pixels per register tile */

/* The GEMM weights as int16, per pair of channels the two whole rows of depth_padded, one after the other
 * (a reduction per 16 depths would not vectorize as well) */
static void pack_rows(const FastOp *f, void *weights, size_t slot, int32_t k, int32_t w8)
{
    const size_t Kp = (size_t)f->depth_padded;
    ((int16_t *)weights)[slot / 2 * 2 * Kp + slot % 2 * Kp + (size_t)k] = (int16_t)w8;
}

/* sums[p][l] = sum_k a[p][k] * w[l][k] for the 4 pixel rows a and a channel pair's weights w (two rows
 * of Kp), each an exact dot product, wrapping modulo 2^32 as the GEMM's sums do: plain C that GCC
 * vectorizes as pmaddwd (SSE2 at -O3 without -march) */
static inline void dot_2x4(const int16_t *const a[MR], const int16_t *w, size_t Kp, uint32_t sums[MR][2])
{
    const int16_t *w0 = w, *w1 = w + Kp;
    const int16_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
    uint32_t s00 = 0, s01 = 0, s10 = 0, s11 = 0, s20 = 0, s21 = 0, s30 = 0, s31 = 0;
    for (size_t k = 0; k < Kp; k++) {
        const int32_t x0 = a0[k], x1 = a1[k], x2 = a2[k], x3 = a3[k], v0 = w0[k], v1 = w1[k];
        s00 += (uint32_t)(x0 * v0);
        s01 += (uint32_t)(x0 * v1);
        s10 += (uint32_t)(x1 * v0);
        s11 += (uint32_t)(x1 * v1);
        s20 += (uint32_t)(x2 * v0);
        s21 += (uint32_t)(x2 * v1);
        s30 += (uint32_t)(x3 * v0);
        s31 += (uint32_t)(x3 * v1);
    }
    sums[0][0] = s00, sums[0][1] = s01, sums[1][0] = s10, sums[1][1] = s11;
    sums[2][0] = s20, sums[2][1] = s21, sums[3][0] = s30, sums[3][1] = s31;
}

/* Register tile: nb blocks of 16 channels from slot (the last one's first last_n) x mp <= MR pixels;
 * the pixels' rows of A into dot_rows once, then 2 channels at a time (RegisterTile.tile). */
static void tile(int nb, int mp, const uint8_t *const *arow, const int32_t *rowsum, void *dot_rows, const FastOp *f,
                 size_t slot, int last_n, const Op *op, uint8_t *out, size_t ldc)
{
    const size_t Kp = (size_t)f->depth_padded;
    const int n = (nb - 1) * BLK + last_n;
    const int16_t *rows[MR];
    rows_as_int16(mp, MR, arow, f, dot_rows, rows);
    for (int c = 0; c < n; c += 2) {          /* a block's padding channels have zero weights */
        uint32_t sums[MR][2];
        dot_2x4(rows, (const int16_t *)f->weights + (slot + (size_t)c) * Kp, Kp, sums);
        for (int p = 0; p < mp; p++) {
            int32_t res[2];
            for (int l = 0; l < 2; l++)
                res[l] = u32_to_i32(sums[p][l] + f->bias[slot + (size_t)(c + l)]
                                    + (uint32_t)f->weight_offset * (uint32_t)rowsum[p]);
            requant_store(res, f, slot + (size_t)c, n - c < 2 ? 1 : 2, op, out + (size_t)p * ldc + (size_t)c);
        }
    }
}

static const FastIsa ISA = {
    .gemm = {
        .depth_step = 16,
        .tile_pixels = MR,
        .tile_blocks = 4,
        .segment_step = 0,
        .dot_bytes = sizeof(int16_t),
        .weight_bytes = sizeof(int16_t),
        .pack_weight = pack_rows,
        .tile = tile,
    },
    .chunk_bytes = 256 * 1024,
    .depthwise_padded = 0,
    .prepare_depthwise = prepare_depthwise_c,
    .depthwise_row = depthwise_row_c,
    .vector_requant = 0,
};

#include "engine.inc"

const KernelSet FAST_KERNELS_C99 = {"optimized (C99)", FAST_ENGINE};
