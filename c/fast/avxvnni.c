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

#include "tile_u8.inc"

static const FastIsa ISA = {
    .gemm = {TILE_U8_FIELDS},
    .chunk_bytes = 256 * 1024,
    .depthwise_padded = 0,
    .prepare_depthwise = prepare_depthwise_avx2,
    .depthwise_row = depthwise_row_avx2,
    .vector_requant = 1,
};

#include "engine.inc"

const KernelSet FAST_KERNELS_THIS = {THIS_NAME, FAST_ENGINE};
