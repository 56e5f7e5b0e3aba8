/*
 * avxvnni.c -- the AVX-VNNI build of the optimized kernels (FAST_KERNELS_AVXVNNI, fast.h): the AVX2
 * build (avx2.h) with the GEMM as vpdpbusd on ymm, VEX encoded, on VNNI's packing of the weights.
 * -DFAST_AVXVNNI_EVEX, its test twin (c/Makefile's avxvnni-evex, FAST_KERNELS_AVXVNNI_EVEX), compiles
 * the very same code with the EVEX form of that instruction (AVX-512 VL + VNNI, the same sums), so
 * that CPUs with AVX-512 but no AVX-VNNI run it.
 */
#if defined(FAST_AVXVNNI_EVEX) && !(defined(__AVX2__) && defined(__AVX512VL__) && defined(__AVX512VNNI__))
#error "c/fast/avxvnni.c with -DFAST_AVXVNNI_EVEX needs -mavx2 -mavx512vl -mavx512vnni"
#endif
#if !defined(FAST_AVXVNNI_EVEX) && !(defined(__AVX2__) && defined(__AVXVNNI__))
#error "c/fast/avxvnni.c needs -mavx2 -mavxvnni"
#endif
#ifdef FAST_AVXVNNI_EVEX
#define dpbusd256 _mm256_dpbusd_epi32
#define FAST_KERNELS_THIS FAST_KERNELS_AVXVNNI_EVEX
#define THIS_NAME "optimized (AVX-VNNI, EVEX test twin)"
#else
#define dpbusd256 _mm256_dpbusd_avx_epi32
#define FAST_KERNELS_THIS FAST_KERNELS_AVXVNNI
#define THIS_NAME "optimized (AVX-VNNI)"
#endif

#include "avx2.h"

#define MR 6            /* pixels per register tile: 16 ymm hold 1 block (2 ymm) x 6 pixels of sums */
#define WSTEP 64        /* bytes of a block's weights a depth step: 16 channels x 4 depths */

/* The ymm register tile: one block of 16 channels x MP <= MR pixels, their rows at arow read in place as
 * bytes (segments segments of seg_k 4-byte depth steps, seg_stride apart), the whole depth; each
 * pixel's sums two ymm (channels 0-7: lo, 8-15: hi), as are the block's weights at a step (WSTEP bytes
 * of B, [16][4]), so 2 * MR sums + 2 weights + a broadcast fill the 16 ymm.  4 u8 depths a step
 * against the s8 weights (vpdpbusd). */
static inline __attribute__((always_inline)) void tile_ymm(const int MP, const uint8_t *const *arow, int32_t segments,
                                                           int32_t seg_k, size_t seg_stride, const int8_t *B,
                                                           const int32_t *rowsum, const FastOp *f, size_t slot,
                                                           int n, const Op *op, uint8_t *out, size_t ldc)
{
    const __m256i bias_lo = _mm256_loadu_si256((const void *)(f->bias + slot));
    const __m256i bias_hi = _mm256_loadu_si256((const void *)(f->bias + slot + 8));
    __m256i lo0 = bias_lo, lo1 = bias_lo, lo2 = bias_lo, lo3 = bias_lo, lo4 = bias_lo, lo5 = bias_lo;
    __m256i hi0 = bias_hi, hi1 = bias_hi, hi2 = bias_hi, hi3 = bias_hi, hi4 = bias_hi, hi5 = bias_hi;
    const uint8_t *A0 = arow[0], *A1 = MP > 1 ? arow[1] : A0, *A2 = MP > 2 ? arow[2] : A0;
    const uint8_t *A3 = MP > 3 ? arow[3] : A0, *A4 = MP > 4 ? arow[4] : A0, *A5 = MP > 5 ? arow[5] : A0;
    for (int32_t g = 0; g < segments; g++, A0 += seg_stride, A1 += seg_stride, A2 += seg_stride, A3 += seg_stride,
         A4 += seg_stride, A5 += seg_stride, B += (size_t)seg_k * WSTEP)
    for (int32_t s = 0; s < seg_k; s++) {
        const int8_t *w = B + (size_t)s * WSTEP;
        __m256i w_lo = _mm256_loadu_si256((const void *)w), w_hi = _mm256_loadu_si256((const void *)(w + 32));
        prefetch_weights(w);
        /* in registers, as in avx512.h's tile_vnni: otherwise GCC folds the loads into every vpdpbusd */
        __asm__("" : "+x"(w_lo), "+x"(w_hi));
#define TILE_PIX(p)                                                         \
        if (MP > p) {                                                       \
            int32_t a;                                                      \
            memcpy(&a, A##p + (size_t)s * 4, 4);                            \
            const __m256i av = _mm256_set1_epi32(a);                        \
            lo##p = dpbusd256(lo##p, av, w_lo);                             \
            hi##p = dpbusd256(hi##p, av, w_hi);                             \
        }
        TILE_PIX(0) TILE_PIX(1) TILE_PIX(2) TILE_PIX(3) TILE_PIX(4) TILE_PIX(5)
#undef TILE_PIX
    }
    const __m256i acc[MR][2] = {{lo0, hi0}, {lo1, hi1}, {lo2, hi2}, {lo3, hi3}, {lo4, hi4}, {lo5, hi5}};
    store_tile16(MP, acc, rowsum, f, slot, n, op, out, ldc);
}

#define TILE_MP(mp) case mp: \
    tile_ymm(mp, arow, segments, seg_k, seg_stride, B, rowsum, f, slot, b == nb - 1 ? last_n : BLK, op, out, ldc); \
    break;

/* nb blocks of 16 channels from slot (the last one's first last_n) x mp pixels, the rows of A read in
 * place (FastIsa.tile; one block a tile, so nb is 1) */
static void tile(int nb, int mp, const uint8_t *const *arow, const int32_t *rowsum, void *dot_rows, const FastOp *f,
                 size_t slot, int last_n, const Op *op, uint8_t *out, size_t ldc)
{
    (void)dot_rows;                 /* the tiles' that convert their rows */
    const int32_t segments = f->segments, seg_k = f->segment_depth / 4;
    const size_t seg_stride = f->segment_stride;
    const int8_t *B = (const int8_t *)f->weights + slot * (size_t)f->panel_depth;
    const size_t bstride = (size_t)f->panel_depth * BLK;
    for (int b = 0; b < nb; b++, slot += BLK, out += BLK, B += bstride) {
        switch (mp) {
        TILE_MP(1) TILE_MP(2) TILE_MP(3) TILE_MP(4) TILE_MP(5) TILE_MP(6)     /* mp = 1..MR */
        default: break;
        }
    }
}

static const FastIsa ISA = {
    .depth_step = 4,
    .tile_pixels = MR,
    .tile_blocks = 1,
    .chunk_bytes = 256 * 1024,
    .segment_step = 4,
    .weight_bytes = 1,
    .pack_weight = pack_vnni,
    .tile = tile,
    .depthwise_padded = 0,
    .prepare_depthwise = prepare_depthwise_avx2,
    .depthwise_row = depthwise_row_avx2,
    .vector_requant = 1,
};

#include "engine.inc"

const KernelSet FAST_KERNELS_THIS = {THIS_NAME, FAST_ENGINE};
