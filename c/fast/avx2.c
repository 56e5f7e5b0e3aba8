/*
 * avx2.c -- the AVX2 build of the optimized kernels (FAST_KERNELS_AVX2, fast.h): the GEMM's register
 * tile with vpmaddwd on int16 pairs, 2 depths a step, the weights widened from int8 as loaded, the
 * rows of A as int16 once per tile; for the layers whose weights allow it (every weight of at most 7
 * bits, and many 8-bit layers: pair_limit), AVX-VNNI's tile on the rows in place (tile_u8.inc) with
 * vpdpbusd done as vpmaddubsw + vpmaddwd; the depthwise conv and requantizers of avx2.h.
 */
#ifndef __AVX2__
#error "c/fast/avx2.c needs -mavx2"
#endif

#include "avx2.h"

/* vpdpbusd, exact where each pair of u8 x s8 products that vpmaddubsw sums into an int16 stays inside
 * it (255 * 128 = 32,640 <= 32,767: the weights' pair_limit below); vpmaddwd against ones then adds
 * each int32 lane's two pair sums exactly. */
static inline __m256i dpbusd_pairs(__m256i acc, __m256i a, __m256i w)
{
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, w), _mm256_set1_epi16(1)));
}

#define dpbusd256 dpbusd_pairs
#include "tile_u8.inc"

#define MR 6            /* pixels per register tile: 16 ymm hold 1 block (2 ymm) x 6 pixels of sums (3-5%
                         * faster than 4 pixels) */
#define NBMAX 4         /* blocks per tile call: a tile's rows of A are converted once for them */
#define WSTEP 32        /* bytes of a block's weights a depth step: 16 channels x 2 depths */

/* The GEMM weights: per block, depth_padded / 2 steps of 2 depths of each of its 16 channels */
static void pack_pairs(const FastOp *f, void *weights, size_t slot, int32_t k, int32_t w8)
{
    ((int8_t *)weights)[(slot - slot % BLK) * (size_t)f->depth_padded + (size_t)k / 2 * 2 * BLK + slot % BLK * 2
                        + (size_t)k % 2] = (int8_t)w8;
}

/* The ymm register tile: one block of 16 channels x MP <= MR pixels, their rows converted to int16
 * (rows_as_int16) and read 2 depths (4 bytes) a step, the whole depth; each pixel's sums two ymm
 * (channels 0-7: lo, 8-15: hi), as are the block's weights at a step (WSTEP bytes of B, [16][2]
 * bytes widened as loaded), so 2 * MR sums + 2 weights + a broadcast + the product fill the 16 ymm.
 * vpmaddwd sums each channel's 2 exact products into its int32 lane: no horizontal sums (u8 x s8
 * vpmaddubsw would saturate). */
static inline __attribute__((always_inline)) void tile_int16_ymm(const int MP, const uint8_t *const *arow,
                                                                 int32_t steps, const int8_t *B, const int32_t *rowsum,
                                                                 const FastOp *f, size_t slot, int n, const Op *op,
                                                                 uint8_t *out, size_t ldc)
{
    const __m256i bias_lo = _mm256_loadu_si256((const void *)(f->bias + slot));
    const __m256i bias_hi = _mm256_loadu_si256((const void *)(f->bias + slot + 8));
    __m256i lo0 = bias_lo, lo1 = bias_lo, lo2 = bias_lo, lo3 = bias_lo, lo4 = bias_lo, lo5 = bias_lo;
    __m256i hi0 = bias_hi, hi1 = bias_hi, hi2 = bias_hi, hi3 = bias_hi, hi4 = bias_hi, hi5 = bias_hi;
    const uint8_t *A0 = arow[0], *A1 = MP > 1 ? arow[1] : A0, *A2 = MP > 2 ? arow[2] : A0;
    const uint8_t *A3 = MP > 3 ? arow[3] : A0, *A4 = MP > 4 ? arow[4] : A0, *A5 = MP > 5 ? arow[5] : A0;
    for (int32_t s = 0; s < steps; s++) {
        const int8_t *w = B + (size_t)s * WSTEP;
        __m256i w_lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const void *)w));
        __m256i w_hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const void *)(w + 16)));
        prefetch_weights(w);
        /* in registers, as in avx512.h's tile_vnni */
        __asm__("" : "+x"(w_lo), "+x"(w_hi));
#define TILE_PIX(p)                                                                 \
        if (MP > p) {                                                               \
            int32_t a;                                                              \
            memcpy(&a, A##p + (size_t)s * 4, 4);                                    \
            const __m256i av = _mm256_set1_epi32(a);                                \
            lo##p = _mm256_add_epi32(lo##p, _mm256_madd_epi16(av, w_lo));           \
            hi##p = _mm256_add_epi32(hi##p, _mm256_madd_epi16(av, w_hi));           \
        }
        TILE_PIX(0) TILE_PIX(1) TILE_PIX(2) TILE_PIX(3) TILE_PIX(4) TILE_PIX(5)
#undef TILE_PIX
    }
    const __m256i acc[MR][2] = {{lo0, hi0}, {lo1, hi1}, {lo2, hi2}, {lo3, hi3}, {lo4, hi4}, {lo5, hi5}};
    store_tile16(MP, acc, rowsum, f, slot, n, op, out, ldc);
}

#define TILE_MP(mp) case mp: \
    tile_int16_ymm(mp, rows, steps, B, rowsum, f, slot, b == nb - 1 ? last_n : BLK, op, out, ldc); break;

/* nb blocks of 16 channels from slot (the last one's first last_n) x mp pixels, the rows of A
 * converted into dot_rows once (TileKernel) */
static void tile_int16(int nb, int mp, const uint8_t *const *arow, const int32_t *rowsum, void *dot_rows,
                       const FastOp *f, size_t slot, int last_n, const Op *op, uint8_t *out, size_t ldc)
{
    const size_t Kp = (size_t)f->depth_padded;
    const int16_t *dot[MR];
    rows_as_int16(mp, mp, arow, f, dot_rows, dot);
    const uint8_t *rows[MR];
    for (int p = 0; p < mp; p++)
        rows[p] = (const uint8_t *)dot[p];
    const int32_t steps = (int32_t)(Kp / 2);
    const int8_t *B = (const int8_t *)f->weights + slot * Kp;
    const size_t bstride = Kp * BLK;
    for (int b = 0; b < nb; b++, slot += BLK, out += BLK, B += bstride) {
        switch (mp) {
        TILE_MP(1) TILE_MP(2) TILE_MP(3) TILE_MP(4) TILE_MP(5) TILE_MP(6)     /* mp = 1..MR */
        default: break;
        }
    }
}

/* The layers whose weights fit: vpmaddubsw's int16 pair sums exact for u8 activations up to 255 */
static const RegisterTile TILE_NARROW = {TILE_U8_FIELDS, .pair_limit = 128, .name = "vpmaddubsw"};

static const FastIsa ISA = {
    .gemm = {
        .depth_step = 2,
        .tile_pixels = MR,
        .tile_blocks = NBMAX,
        .segment_step = 0,
        .dot_bytes = sizeof(int16_t),
        .weight_bytes = 1,
        .pack_weight = pack_pairs,
        .tile = tile_int16,
    },
    .gemm_narrow = &TILE_NARROW,
    .chunk_bytes = 256 * 1024,
    .depthwise_padded = 0,
    .prepare_depthwise = prepare_depthwise_avx2,
    .depthwise_row = depthwise_row_avx2,
    .vector_requant = 1,
};

#include "engine.inc"

const KernelSet FAST_KERNELS_AVX2 = {"optimized (AVX2)", FAST_ENGINE};
