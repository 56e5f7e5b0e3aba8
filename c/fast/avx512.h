/*
 * avx512.h -- the AVX-512 VNNI kernels that avx512.c and amx.c share (amx.c runs its GEMM chunks of
 * enough rows on AMX tiles, everything else here): the GEMM's register tile, vpdpbusd with 16 output
 * channels x 4 depths (u8 x s8) an instruction, up to 64 channels x 4 pixels, the weights pinned in
 * registers; the requantizers and the depthwise conv of avx512_lanes.inc, on zmm and ymm; the lookup
 * table with vpermi2b (VBMI).
 */
#ifndef FPGAI_FAST_AVX512_H
#define FPGAI_FAST_AVX512_H

#include <immintrin.h>

#include "fast.h"

/* pixels per register tile (6 measured no faster once the weights stay in registers) and weight
 * blocks per register tile */
#define MR 4
#define NBMAX 4

/* requant_v, requant_fast and dw_chunk (the depthwise conv's) at two widths: _16 on zmm, _8 on ymm */
#define LANES 16
#include "avx512_lanes.inc"
#undef LANES
#define LANES 8
#include "avx512_lanes.inc"
#undef LANES

static inline __attribute__((always_inline)) void requant_store_v(__m512i acc, const FastOp *f, size_t slot, int n,
                                                                  const Op *op, uint8_t *dst)
{
    _mm_mask_storeu_epi8(dst, (__mmask16)((1u << n) - 1), _mm512_cvtepi32_epi8(requant_v_16(acc, f, slot, op)));
}

/* Byte k of packus(packs(r0, r1), packs(r2, r3)) is channel 16*(k/4%4) + 4*(k/16) + k%4 */
static const uint8_t pack_order[64] = {
    0, 1, 2, 3, 16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51,
    4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39, 52, 53, 54, 55,
    8, 9, 10, 11, 24, 25, 26, 27, 40, 41, 42, 43, 56, 57, 58, 59,
    12, 13, 14, 15, 28, 29, 30, 31, 44, 45, 46, 47, 60, 61, 62, 63,
};

/* 4 x 16 int32 (zp added, channels 16b + l) -> clamped bytes, the first n stored.
 * The saturating packs clamp to 0..255, then to qmin..qmax. */
static inline __attribute__((always_inline)) void store_packed(__m512i r0, __m512i r1, __m512i r2, __m512i r3,
                                                               int n, __m512i order, __m512i lo, __m512i hi,
                                                               uint8_t *dst)
{
    __m512i u = _mm512_packus_epi16(_mm512_packs_epi32(r0, r1), _mm512_packs_epi32(r2, r3));
    u = _mm512_min_epu8(_mm512_max_epu8(_mm512_permutexvar_epi8(order, u), lo), hi);
    if (n >= 64)
        _mm512_storeu_si512(dst, u);
    else if (n > 32)
        _mm512_mask_storeu_epi8(dst, ((__mmask64)1 << n) - 1, u);
    else if (n == 32)
        _mm256_storeu_si256((void *)dst, _mm512_castsi512_si256(u));
    else if (n > 16)
        _mm256_mask_storeu_epi8(dst, ((__mmask32)1 << n) - 1, _mm512_castsi512_si256(u));
    else if (n == 16)
        _mm_storeu_si128((void *)dst, _mm512_castsi512_si128(u));
    else
        _mm_mask_storeu_epi8(dst, (__mmask16)((1u << n) - 1), _mm512_castsi512_si128(u));
}

/* A register tile's sums: v[b][p] of block b (channels slot + 16b ..) and pixel p, the bias included.
 * Passed by value: GCC then keeps them in registers (an array by pointer: stack copies) */
typedef struct {
    __m512i v[NBMAX][MR];
} TileSums;

/* The tile's sums acc requantized and stored: pixel p's at out + p * ldc, the last block's first last_n */
static inline __attribute__((always_inline)) void tile_store(const int NB, const int MP, const TileSums acc,
                                                             const int32_t *rowsum, const FastOp *f, size_t slot,
                                                             int last_n, const Op *op, uint8_t *out, size_t ldc)
{
    /* locals: the byte stores may alias any field */
    const int32_t d = f->weight_offset, high = f->high_mult, post = f->post_shift;
    const __m512i dv = _mm512_set1_epi32(d);
    if (f->has_fast) {
        const __m512i order = _mm512_loadu_si512(pack_order);
        const __m512i lo = _mm512_set1_epi8((char)op->qmin), hi = _mm512_set1_epi8((char)op->qmax);
        const int64_t *q = f->requant_fast + slot / BLK * QF_WORDS;
        /* every result before the first store: a block's constants are then loaded once, not once
         * per pixel (a byte store may alias them) */
        __m512i r[NBMAX][MR];
        for (int b = 0; b < NBMAX; b++)
            for (int p = 0; p < MP; p++) {
                __m512i v = acc.v[b < NB ? b : 0][p];
                if (d)
                    v = _mm512_add_epi32(v, _mm512_mullo_epi32(dv, _mm512_set1_epi32(rowsum[p])));
                r[b][p] = b < NB ? requant_fast_16(v, q + (size_t)b * QF_WORDS, high, post) : r[0][p];
            }
        for (int p = 0; p < MP; p++)
            store_packed(r[0][p], r[1][p], r[2][p], r[3][p], (NB - 1) * BLK + last_n, order, lo, hi,
                         out + (size_t)p * ldc);
        return;
    }
    for (int b = 0; b < NB; b++) {
        for (int p = 0; p < MP; p++) {
            __m512i v = acc.v[b][p];
            if (f->weight_offset)
                v = _mm512_add_epi32(v, _mm512_mullo_epi32(dv, _mm512_set1_epi32(rowsum[p])));
            requant_store_v(v, f, slot + (size_t)b * BLK, b == NB - 1 ? last_n : BLK, op,
                            out + (size_t)p * ldc + (size_t)b * BLK);
        }
    }
}

/* Register tile: NB blocks of 16 channels x MP pixels (their rows of A at arow), the whole depth. */
static inline __attribute__((always_inline)) void tile_vnni(const int NB, const int MP, const uint8_t *const *arow,
                                                            const int8_t *B, size_t bstride,
                                                            const int32_t *rowsum, const FastOp *f, size_t slot,
                                                            int last_n, const Op *op, uint8_t *out, size_t ldc)
{
    /* named accumulators: GCC keeps an array of them in registers only with copies
     * (and a spill) in every iteration of the depth loop */
    const __m512i z = _mm512_setzero_si512();
    const __m512i bias0 = _mm512_loadu_si512(f->bias + slot);
    const __m512i bias1 = NB > 1 ? _mm512_loadu_si512(f->bias + slot + BLK) : z;
    const __m512i bias2 = NB > 2 ? _mm512_loadu_si512(f->bias + slot + 2 * BLK) : z;
    const __m512i bias3 = NB > 3 ? _mm512_loadu_si512(f->bias + slot + 3 * BLK) : z;
    __m512i c00 = bias0, c01 = bias0, c02 = bias0, c03 = bias0;
    __m512i c10 = bias1, c11 = bias1, c12 = bias1, c13 = bias1;
    __m512i c20 = bias2, c21 = bias2, c22 = bias2, c23 = bias2;
    __m512i c30 = bias3, c31 = bias3, c32 = bias3, c33 = bias3;
    const uint8_t *A0 = arow[0], *A1 = MP > 1 ? arow[1] : A0, *A2 = MP > 2 ? arow[2] : A0, *A3 = MP > 3 ? arow[3] : A0;
    const int8_t *B0 = B, *B1 = B + bstride, *B2 = B + 2 * bstride, *B3 = B + 3 * bstride;
    const int32_t nseg = f->segments, seg_k = f->segment_depth / 4;
    const size_t seg_stride = f->segment_stride;
    for (int32_t g = 0; g < nseg; g++, A0 += seg_stride, A1 += seg_stride, A2 += seg_stride, A3 += seg_stride,
         B0 += (size_t)seg_k * 64, B1 += (size_t)seg_k * 64, B2 += (size_t)seg_k * 64, B3 += (size_t)seg_k * 64)
    for (int32_t s = 0; s < seg_k; s++) {
        __m512i w0 = _mm512_loadu_si512(B0 + (size_t)s * 64), w1 = z, w2 = z, w3 = z;
        if (NB > 1) w1 = _mm512_loadu_si512(B1 + (size_t)s * 64);
        if (NB > 2) w2 = _mm512_loadu_si512(B2 + (size_t)s * 64);
        if (NB > 3) w3 = _mm512_loadu_si512(B3 + (size_t)s * 64);
        /* keep the weights in registers: GCC otherwise folds each load into every vpdpbusd
         * that uses it, MR loads per vector, and the loads, not the multiplies, set the pace */
        __asm__("" : "+v"(w0), "+v"(w1), "+v"(w2), "+v"(w3));
#define TILE_PIX(p)                                                         \
        if (MP > p) {                                                       \
            int32_t a;                                                      \
            memcpy(&a, A##p + (size_t)s * 4, 4);                            \
            __m512i av = _mm512_set1_epi32(a);                              \
            c0##p = _mm512_dpbusd_epi32(c0##p, av, w0);                     \
            if (NB > 1) c1##p = _mm512_dpbusd_epi32(c1##p, av, w1);         \
            if (NB > 2) c2##p = _mm512_dpbusd_epi32(c2##p, av, w2);         \
            if (NB > 3) c3##p = _mm512_dpbusd_epi32(c3##p, av, w3);         \
        }
        TILE_PIX(0) TILE_PIX(1) TILE_PIX(2) TILE_PIX(3)
#undef TILE_PIX
    }
    const TileSums acc = {{{c00, c01, c02, c03}, {c10, c11, c12, c13}, {c20, c21, c22, c23}, {c30, c31, c32, c33}}};
    tile_store(NB, MP, acc, rowsum, f, slot, last_n, op, out, ldc);
}

#define TILE_CASE(nb, mp) case (nb) * 8 + (mp): \
    tile_vnni(nb, mp, arow, B, bstride, rowsum, f, slot, last_n, op, out, ldc); break;
#define TILE_ROW(nb) TILE_CASE(nb, 1) TILE_CASE(nb, 2) TILE_CASE(nb, 3) TILE_CASE(nb, 4)   /* mp = 1..MR */

/* nb blocks of 16 channels from slot (the last one's first last_n) x mp pixels */
static void tile(int nb, int mp, const uint8_t *const *arow, const int32_t *rowsum, void *dot_rows, const FastOp *f,
                 size_t slot, int last_n, const Op *op, uint8_t *out, size_t ldc)
{
    (void)dot_rows;         /* the tiles' that convert their rows */
    const int8_t *B = (const int8_t *)f->weights + slot * (size_t)f->panel_depth;
    const size_t bstride = (size_t)f->panel_depth * BLK;
    switch (nb * 8 + mp) {
    TILE_ROW(1) TILE_ROW(2) TILE_ROW(3) TILE_ROW(4)
    default: break;
    }
}

/* ---- depthwise ------------------------------------------------------------------------------ */

/* Where channel c's constants go: whole 64-channel chunks, channel 64u + 16L + 4j + i in lane 4L + i of
 * vector j, the order in which byte unpacks interleave 4 rows and packs put the results back */
static inline size_t dw_slot(size_t c)
{
    size_t r = c % 64;
    return c - r + r / 4 % 4 * 16 + r / 16 * 4 + r % 4;
}

/* The depthwise kernel's weights as vpdpbusd reads them, w8 = (w - z_w) - d in
 * [chunk][row group][kx][4][16][4] (dw_chunk), the bias folded as for the GEMM, the constants in dw_slot
 * order; a row of interleaved input columns per thread (FastIsa.prepare_depthwise) */
static void prepare_depthwise_vnni(FastModel *fm, FastOp *f, const Model *m, const Op *op, const Op *in, Block *blk)
{
    const int taps = op->kh * op->kw;
    const size_t nch = ((size_t)op->c + 63) / 64 * 64;
    const int32_t rg = (op->kh + 3) / 4;      /* groups of 4 kernel rows */
    f->blocks = (int32_t)(nch / BLK);
    fm->dw_columns_bytes = max_size(fm->dw_columns_bytes, padded_w(op, in) * (size_t)rg * 256);
    int8_t *w8 = block_take(blk, nch / 64 * (size_t)rg * (size_t)op->kw * 256, 1);
    f->weights = w8;
    take_channels(f, nch, blk);
    if (!block_filling(blk))
        return;
    for (int32_t c = 0; c < op->c; c++) {
        size_t sl = dw_slot((size_t)c);
        set_requant(f, op, c, sl);
        f->bias[sl] = (uint32_t)op_bias(m, op, c);
        uint32_t wsum = 0;
        for (int t = 0; t < taps; t++) {
            int32_t v = weight_centered(m, op, c, t) - f->weight_offset;
            wsum += (uint32_t)v;
            size_t ky = (size_t)(t / op->kw), kx = (size_t)(t % op->kw);
            w8[((sl / 64 * (size_t)rg + ky / 4) * (size_t)op->kw + kx) * 256 + sl % 64 * 4 + ky % 4] = (int8_t)v;
        }
        f->bias[sl] -= (uint32_t)in->zero_point * (wsum + (uint32_t)f->weight_offset * (uint32_t)taps);
    }
}

/* Output row oy of one image, on its padded input (FastIsa.depthwise_row) */
static void depthwise_row_vnni(const Op *op, const Op *in, const FastOp *f, const uint8_t *pad, int32_t oy,
                               Scratch *sc, uint8_t *out)
{
    const size_t Wpad = padded_w(op, in);
    for (size_t c0 = 0; c0 < (size_t)op->c; c0 += 64) {
        const int rg = (op->kh + 3) / 4, last32 = (size_t)op->c - c0 <= 32;     /* ymm: half the work */
        if (op->kw == 3 && rg == 1 && last32)
            dw_chunk_8(3, 1, op, f, Wpad, c0, oy, pad, sc->dw_columns, out);
        else if (op->kw == 3 && rg == 1)
            dw_chunk_16(3, 1, op, f, Wpad, c0, oy, pad, sc->dw_columns, out);
        else if (last32)
            dw_chunk_8(op->kw, rg, op, f, Wpad, c0, oy, pad, sc->dw_columns, out);
        else
            dw_chunk_16(op->kw, rg, op, f, Wpad, c0, oy, pad, sc->dw_columns, out);
    }
}

/* Lookup table, 64 values a step: vpermi2b looks up the low 7 bits in the two 128-entry halves, the top
 * bit picks the half (FastIsa.lut) */
static size_t lut_vbmi(const uint8_t t[256], const uint8_t *x, uint8_t *out, size_t n)
{
    size_t e = 0;
    const __m512i t0 = _mm512_loadu_si512(t), t1 = _mm512_loadu_si512(t + 64);
    const __m512i t2 = _mm512_loadu_si512(t + 128), t3 = _mm512_loadu_si512(t + 192);
    for (; e + 64 <= n; e += 64) {
        __m512i v = _mm512_loadu_si512(x + e);
        __m512i lo = _mm512_permutex2var_epi8(t0, v, t1), hi = _mm512_permutex2var_epi8(t2, v, t3);
        _mm512_storeu_si512(out + e, _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), lo, hi));
    }
    return e;
}

#endif
