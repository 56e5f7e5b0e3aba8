/*
 * avx512.c -- the AVX-512 VNNI build of the optimized kernels (FAST_KERNELS_AVX512, fast.h): the kernels
 * of avx512.h, which amx.c shares.
 */
#if !(defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512DQ__) \
      && defined(__AVX512VL__) && defined(__AVX512VBMI__))
#error "c/fast/avx512.c needs -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512vnni -mavx512vbmi"
#endif

#include "avx512.h"

static const FastIsa ISA = {
    .gemm = {
        .depth_step = 4,
        .tile_pixels = MR,
        .tile_blocks = NBMAX,
        .segment_step = 4,
        .weight_bytes = 1,
        .pack_weight = pack_vnni,
        .tile = tile,
    },
    .chunk_bytes = 256 * 1024,
    .depthwise_padded = 1,
    .prepare_depthwise = prepare_depthwise_vnni,
    .depthwise_row = depthwise_row_vnni,
    .vector_requant = 1,
    .lut = lut_vbmi,
};

#include "engine.inc"

const KernelSet FAST_KERNELS_AVX512 = {"optimized (AVX-512 VNNI)", FAST_ENGINE};
