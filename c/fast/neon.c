/*
 * neon.c -- the NEON build of the optimized kernels (FAST_KERNELS_NEON, fast.h), aarch64 with the dot
 * product: the GEMM's dot-product tile, 2 channels x 4 pixels, each output a dot product over the
 * depth, 16 depths a step (sdot: 4 int8 products summed into each int32 lane); the depthwise conv as
 * the C loop (depthwise_c.h), which GCC vectorizes with smull.
 */
#if !(defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD))
#error "c/fast/neon.c needs an aarch64 target with the dot product (-march=armv8.2-a+dotprod)"
#endif
#include <arm_neon.h>

#include "depthwise_c.h"
#include "fast.h"

#define MR 4            /* pixels per register tile */
#define RUN 16          /* depths of one channel's weights, then as many of the other's of the pair */
/* sdot is s8 x s8: the tile's rows hold x - ROW_OFFSET, whose ROW_OFFSET * sum w8 the bias adds back */
#define ROW_OFFSET 128

/* The GEMM weights, per pair of channels runs of RUN depths of each in turn (a vector of each a step,
 * so that the tile reads one stream) */
static void pack_runs(const FastOp *f, void *weights, size_t slot, int32_t k, int32_t w8)
{
    ((int8_t *)weights)[slot / 2 * 2 * (size_t)f->depth_padded + (size_t)k / RUN * 2 * RUN + slot % 2 * RUN
                        + (size_t)k % RUN] = (int8_t)w8;
}

/* The mp <= count pixels' rows of A into dot_rows as int8 x - ROW_OFFSET, each depth_padded long (an
 * implicit conv's segments one after the other, zero past its depth); rows[p] where each is.  Past mp:
 * row 0 again. */
static void rows_as_int8(int mp, int count, const uint8_t *const *arow, const FastOp *f, int8_t *dot_rows,
                         const int8_t **rows)
{
    const size_t Kp = (size_t)f->depth_padded;
    for (int p = 0; p < count; p++) {
        int8_t *row = dot_rows + (size_t)p * Kp;
        const uint8_t *a = arow[p < mp ? p : 0];
        const size_t seg = (size_t)f->segment_bytes, K = (size_t)f->segments * seg;
        for (size_t g = 0; g < (size_t)f->segments; g++) {
            const uint8_t *src = a + g * f->segment_stride;
            int8_t *dst = row + g * seg;
            for (size_t j = 0; j < seg; j++)        /* one index: GCC vectorizes it */
                dst[j] = (int8_t)(src[j] - ROW_OFFSET);
        }
        for (size_t k = K; k < Kp; k++)     /* an implicit conv's depth past K: zero weights */
            row[k] = 0;
        rows[p] = row;
    }
}

/* sums[p][l] = sum_k a[p][k] * w[l][k] for the 4 pixel rows a and a channel pair's weights w (pack_runs),
 * each an exact dot product, wrapping modulo 2^32 as the GEMM's sums do */
static inline void dot_2x4(const int8_t *const a[MR], const int8_t *w, size_t Kp, uint32_t sums[MR][2])
{
    int32x4_t c00 = vdupq_n_s32(0), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    for (size_t k = 0; k < Kp; k += 16) {
        const int8x16_t v0 = vld1q_s8(w + 2 * k), v1 = vld1q_s8(w + 2 * k + 16);
        int8x16_t x = vld1q_s8(a[0] + k);
        c00 = vdotq_s32(c00, x, v0);
        c01 = vdotq_s32(c01, x, v1);
        x = vld1q_s8(a[1] + k);
        c10 = vdotq_s32(c10, x, v0);
        c11 = vdotq_s32(c11, x, v1);
        x = vld1q_s8(a[2] + k);
        c20 = vdotq_s32(c20, x, v0);
        c21 = vdotq_s32(c21, x, v1);
        x = vld1q_s8(a[3] + k);
        c30 = vdotq_s32(c30, x, v0);
        c31 = vdotq_s32(c31, x, v1);
    }
    sums[0][0] = (uint32_t)vaddvq_s32(c00), sums[0][1] = (uint32_t)vaddvq_s32(c01);
    sums[1][0] = (uint32_t)vaddvq_s32(c10), sums[1][1] = (uint32_t)vaddvq_s32(c11);
    sums[2][0] = (uint32_t)vaddvq_s32(c20), sums[2][1] = (uint32_t)vaddvq_s32(c21);
    sums[3][0] = (uint32_t)vaddvq_s32(c30), sums[3][1] = (uint32_t)vaddvq_s32(c31);
}

/* Register tile: nb blocks of 16 channels from slot (the last one's first last_n) x mp <= MR pixels;
 * the pixels' rows of A into dot_rows once, then 2 channels at a time (RegisterTile.tile). */
static void tile(int nb, int mp, const uint8_t *const *arow, const int32_t *rowsum, void *dot_rows, const FastOp *f,
                 size_t slot, int last_n, const Op *op, uint8_t *out, size_t ldc)
{
    const size_t Kp = (size_t)f->depth_padded;
    const int n = (nb - 1) * BLK + last_n;
    const int8_t *rows[MR];
    rows_as_int8(mp, MR, arow, f, dot_rows, rows);
    for (int c = 0; c < n; c += 2) {          /* a block's padding channels have zero weights */
        uint32_t sums[MR][2];
        dot_2x4(rows, (const int8_t *)f->weights + (slot + (size_t)c) * Kp, Kp, sums);
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
        .dot_bytes = sizeof(int8_t),
        .row_offset = ROW_OFFSET,
        .weight_bytes = sizeof(int8_t),
        .pack_weight = pack_runs,
        .tile = tile,
    },
    .chunk_bytes = 256 * 1024,
    .depthwise_padded = 0,
    .prepare_depthwise = prepare_depthwise_c,
    .depthwise_row = depthwise_row_c,
    .vector_requant = 0,
};

#include "engine.inc"

const KernelSet FAST_KERNELS_NEON = {"optimized (NEON dot product)", FAST_ENGINE};
