/*
 * avx2.h -- the AVX2 kernels that avx2.c and avxvnni.c share (on ymm, VEX encoded): the requantizers
 * in 8 lanes, the store of a ymm register tile (store_tile16) and the depthwise conv: its 16-channel
 * chunks in registers, a window wholly inside the input two taps a vpmaddwd (pair weights), the
 * channels past the chunks the C loop (depthwise_c.h).
 */
#ifndef FPGAI_FAST_AVX2_H
#define FPGAI_FAST_AVX2_H

#include <immintrin.h>

#include "depthwise_c.h"
#include "fast.h"

/* requant_fast's form (prepare.inc: qparams_fast) in 8 int32 lanes: me / mo the multipliers' low
 * parts lo of the even / odd lanes' channels (in each 64-bit lane), ce / co their constants, k the
 * high parts (where high), ps the post shifts (where post); returns zp + the requantized value,
 * unclamped. */
static inline __m256i requant_fast8(__m256i acc, __m256i me, __m256i mo, __m256i ce, __m256i co, __m256i k, int high,
                                    __m256i ps, int post)
{
    const __m256i e = _mm256_add_epi64(_mm256_mul_epi32(acc, me), ce);
    const __m256i o = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(acc, 32), mo), co);
    __m256i h = _mm256_blend_epi32(_mm256_srli_epi64(e, 32), o, 0xAA);
    if (high)
        h = _mm256_add_epi32(h, _mm256_mullo_epi32(acc, k));
    return post ? _mm256_srav_epi32(h, ps) : h;
}

/* int32 lanes clamped to op's qmin .. qmax */
static inline __m256i clamp8(__m256i h, const Op *op)
{
    return _mm256_min_epi32(_mm256_max_epi32(h, _mm256_set1_epi32(op->qmin)), _mm256_set1_epi32(op->qmax));
}

/* The ymm tiles read one block's weights at a time, one stream of 32 (AVX2) or 64 (AVX-VNNI) bytes a
 * step: too slow for the hardware prefetchers to run ahead of where the weights come from L3
 * (ResNet18's 512-channel layers at batch 1 on a Zen 4: AVX2 54 -> 77 GMAC/s, the AVX-VNNI EVEX
 * twin 77-89 -> 136-162).  Prefetched into L1 2 KB ahead and into L2 12 KB ahead of w, past the
 * block's panel into the next block's.  always_inline: GCC 12 otherwise dropped its calls (a
 * function of prefetches alone, seen as free of side effects). */
static inline __attribute__((always_inline)) void prefetch_weights(const void *w)
{
    _mm_prefetch((const char *)w + 2048, _MM_HINT_T0);
    _mm_prefetch((const char *)w + 12288, _MM_HINT_T2);
}

/* 16 channels' int32 sums (v_lo: channels 0-7, v_hi: 8-15, the bias included) of a block whose
 * requant_fast constants are q: requantized in 8 lanes, clamped to qmin .. qmax, as 16 bytes */
static inline __m128i requant_pack16(__m256i v_lo, __m256i v_hi, const int64_t *q, int high, int post,
                                     __m128i qmin, __m128i qmax)
{
    /* channels 0-7 take the block's 64-bit words 0-3 of each kind, channels 8-15 words 4-7 */
    const __m256i *ps = (const __m256i *)(const void *)(q + 32), *k = (const __m256i *)(const void *)(q + 40);
    v_lo = requant_fast8(v_lo, _mm256_loadu_si256((const void *)q), _mm256_loadu_si256((const void *)(q + 8)),
                         _mm256_loadu_si256((const void *)(q + 16)), _mm256_loadu_si256((const void *)(q + 24)),
                         _mm256_loadu_si256(k), high, _mm256_loadu_si256(ps), post);
    v_hi = requant_fast8(v_hi, _mm256_loadu_si256((const void *)(q + 4)), _mm256_loadu_si256((const void *)(q + 12)),
                         _mm256_loadu_si256((const void *)(q + 20)), _mm256_loadu_si256((const void *)(q + 28)),
                         _mm256_loadu_si256(k + 1), high, _mm256_loadu_si256(ps + 1), post);
    /* packs: int16 channels 0-3, 8-11 | 4-7, 12-15; packus: bytes 0-3, 8-11, 4-7, 12-15; the
     * dword shuffle puts them in order.  The saturations clamp to 0..255, then to qmin..qmax. */
    const __m256i w = _mm256_packs_epi32(v_lo, v_hi);
    const __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    return _mm_min_epu8(_mm_max_epu8(_mm_shuffle_epi32(b, _MM_SHUFFLE(3, 1, 2, 0)), qmin), qmax);
}

/* A ymm register tile's sums, one block of 16 channels (slot..) x MP pixels, each pixel's two ymm
 * (channels 0-7: acc[p][0], 8-15: acc[p][1]), the bias included: d * rowsum added, requantized in 8
 * lanes (requant_fast8 on f->requant_fast where f->has_fast, else requantize() per channel), pixel p's
 * first n channels stored at out + p * ldc. */
static inline __attribute__((always_inline)) void store_tile16(const int MP, const __m256i acc[][2],
                                                               const int32_t *rowsum, const FastOp *f, size_t slot,
                                                               int n, const Op *op, uint8_t *out, size_t ldc)
{
    /* locals: the byte stores may alias any field */
    const int32_t d = f->weight_offset, high = f->high_mult, post = f->post_shift;
    const __m256i dv = _mm256_set1_epi32(d);
    const int64_t *q = f->has_fast ? f->requant_fast + slot / BLK * QF_WORDS : NULL;
    const __m128i qmin = _mm_set1_epi8((char)op->qmin), qmax = _mm_set1_epi8((char)op->qmax);
    for (int p = 0; p < MP; p++) {
        __m256i v_lo = acc[p][0], v_hi = acc[p][1];
        if (d) {
            const __m256i drow = _mm256_mullo_epi32(dv, _mm256_set1_epi32(rowsum[p]));
            v_lo = _mm256_add_epi32(v_lo, drow);
            v_hi = _mm256_add_epi32(v_hi, drow);
        }
        uint8_t *dst = out + (size_t)p * ldc;
        if (!q) {
            int32_t v[BLK];
            _mm256_storeu_si256((void *)v, v_lo);
            _mm256_storeu_si256((void *)(v + 8), v_hi);
            requant_store(v, f, slot, n, op, dst);
            continue;
        }
        const __m128i b = requant_pack16(v_lo, v_hi, q, high, post, qmin, qmax);
        if (n == BLK) {
            _mm_storeu_si128((void *)dst, b);
        } else {
            uint8_t bytes[BLK];
            _mm_storeu_si128((void *)bytes, b);
            memcpy(dst, bytes, (size_t)n);
        }
    }
}

/* ---- depthwise ------------------------------------------------------------------------------ */

/* The C loop's weights (prepare_depthwise_c) and, for C >= 16, the pair weights of the windows wholly
 * inside the input: dw_pair_weights, dw_tap_offset and dw_inside_bias from dw_weights and bias.  In a
 * 16-channel chunk, vpunpcklbw of two taps' input bytes holds channels 0-7, each channel's two taps
 * side by side, and vpunpckhbw channels 8-15: their weights are so, as int16 (FastIsa.prepare_depthwise) */
static void prepare_depthwise_avx2(FastModel *fm, FastOp *f, const Model *m, const Op *op, const Op *in, Block *blk)
{
    prepare_depthwise_c(fm, f, m, op, in, blk);
    if (op->c < BLK)
        return;
    const int32_t C = op->c, chunked = C / BLK * BLK, taps = op->kh * op->kw, pairs = (taps + 1) / 2;
    f->dw_pair_weights = block_take(blk, (size_t)chunked * (size_t)pairs * 2, sizeof *f->dw_pair_weights);
    f->dw_tap_offset = block_take(blk, 2 * (size_t)pairs, sizeof *f->dw_tap_offset);
    f->dw_inside_bias = block_take(blk, (size_t)chunked, sizeof *f->dw_inside_bias);
    if (!block_filling(blk))
        return;
    for (int32_t t = 0; t < 2 * pairs; t++) {
        const int32_t tap = t < taps ? t : taps - 1;
        f->dw_tap_offset[t] = ((size_t)(tap / op->kw * op->dil_h) * in->w + (size_t)(tap % op->kw * op->dil_w)) * in->c;
    }
    for (int32_t c = 0; c < chunked; c++) {
        uint32_t wsum = 0;
        for (int32_t t = 0; t < taps; t++)
            wsum += (uint32_t)f->dw_weights[(size_t)t * C + c];
        f->dw_inside_bias[c] = f->bias[c] - (uint32_t)in->zero_point * wsum;
        for (int32_t t = 0; t < taps; t++)
            f->dw_pair_weights[((size_t)(c / BLK) * (size_t)pairs + (size_t)(t / 2)) * 2 * BLK
                               + (size_t)(c % BLK * 2 + t % 2)] = f->dw_weights[(size_t)t * C + c];
    }
}

/* A depthwise row's constants, in locals: the byte stores may alias any field of FastOp */
typedef struct {
    const int16_t *weights, *pair_weights;
    const uint32_t *bias, *inside_bias;
    const size_t *tap_offset;
    const int64_t *fast;        /* requant_fast where has_fast, else NULL */
    int high, post;
    int32_t pairs;
    size_t kw;
    int32_t C, zx;
    __m128i qmin, qmax;
} DwConsts;

/* 16 channels from c0 of window w, wholly inside the input: two taps a vpmaddwd onto dw_inside_bias
 * (z_x folded in); sums of channels 0-7 into v_lo, 8-15 into v_hi */
static inline __attribute__((always_inline)) void dw16_inside(const DwConsts *k, const DwWindow *w, int32_t c0,
                                                              __m256i *v_lo, __m256i *v_hi)
{
    __m256i lo = _mm256_loadu_si256((const void *)(k->inside_bias + c0));
    __m256i hi = _mm256_loadu_si256((const void *)(k->inside_bias + c0 + 8));
    const uint8_t *xc = w->x0 + c0;
    const int16_t *wt = k->pair_weights + (size_t)c0 / BLK * (size_t)k->pairs * 2 * BLK;
    for (int32_t p = 0; p < k->pairs; p++, wt += 2 * BLK) {
        /* the two taps' bytes interleaved: channels 0-7 | 8-15, widened */
        const __m128i a = _mm_loadu_si128((const void *)(xc + k->tap_offset[2 * p]));
        const __m128i b = _mm_loadu_si128((const void *)(xc + k->tap_offset[2 * p + 1]));
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a, b)),
                                                    _mm256_loadu_si256((const void *)wt)));
        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpackhi_epi8(a, b)),
                                                    _mm256_loadu_si256((const void *)(wt + BLK))));
    }
    *v_lo = lo;
    *v_hi = hi;
}

/* The same for a window with taps in the padding: the exact int32 products of int16 x - z_x and
 * w - z_w from their low and high halves (vpmullw, vpmulhw), interleaved by vpunpck* within each
 * 128-bit lane, so s0 holds channels 0-3 | 8-11 and s1 4-7 | 12-15, onto the bias */
static inline __attribute__((always_inline)) void dw16_edge(const DwConsts *k, const DwWindow *w, int32_t c0,
                                                            __m256i *v_lo, __m256i *v_hi)
{
    const __m256i zxv = _mm256_set1_epi16((int16_t)k->zx);
    const int32_t C = k->C;
    __m256i s0 = _mm256_setzero_si256(), s1 = s0;
    const uint8_t *xrow = w->x0 + c0;
    const int16_t *wrow = k->weights + ((size_t)w->ky0 * k->kw + (size_t)w->kx0) * C + c0;
    for (int32_t ky = w->ky0; ky < w->ky1; ky++, xrow += w->ystep, wrow += k->kw * C) {
        const uint8_t *src = xrow;
        const int16_t *wt = wrow;
        for (int32_t kx = w->kx0; kx < w->kx1; kx++, src += w->xstep, wt += C) {
            const __m256i xv = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const void *)src)), zxv);
            const __m256i wv = _mm256_loadu_si256((const void *)wt);
            const __m256i lo = _mm256_mullo_epi16(xv, wv), hi = _mm256_mulhi_epi16(xv, wv);
            s0 = _mm256_add_epi32(s0, _mm256_unpacklo_epi16(lo, hi));
            s1 = _mm256_add_epi32(s1, _mm256_unpackhi_epi16(lo, hi));
        }
    }
    *v_lo = _mm256_add_epi32(_mm256_permute2x128_si256(s0, s1, 0x20), _mm256_loadu_si256((const void *)(k->bias + c0)));
    *v_hi = _mm256_add_epi32(_mm256_permute2x128_si256(s0, s1, 0x31),
                             _mm256_loadu_si256((const void *)(k->bias + c0 + 8)));
}

/* Window w's whole 16-channel chunks, their sums in registers across the taps (a window wholly inside
 * the input, MobileNetV2 at 32x32: 88% of them, dw16_inside), requantized and stored into dst where
 * there is a requant_fast form, else their sums into acc.  Returns the channels done. */
static inline __attribute__((always_inline)) int32_t dw_chunks16(const DwConsts *k, const Op *op, const DwWindow *w,
                                                                 int32_t *acc, uint8_t *dst)
{
    const int inside = k->pair_weights && w->ky0 == 0 && w->ky1 == op->kh && w->kx0 == 0 && w->kx1 == op->kw;
    int32_t c0 = 0;
    for (; c0 + 16 <= k->C; c0 += 16) {
        __m256i v_lo, v_hi;
        if (inside)
            dw16_inside(k, w, c0, &v_lo, &v_hi);
        else
            dw16_edge(k, w, c0, &v_lo, &v_hi);
        if (k->fast) {          /* requantized and stored here, not through acc */
            _mm_storeu_si128((void *)(dst + c0), requant_pack16(v_lo, v_hi, k->fast + (size_t)c0 / BLK * QF_WORDS,
                                                                k->high, k->post, k->qmin, k->qmax));
        } else {
            _mm256_storeu_si256((void *)(acc + c0), v_lo);
            _mm256_storeu_si256((void *)(acc + c0 + 8), v_hi);
        }
    }
    return c0;
}

/* Channels c.. of acc requantized 8 at a time (c % 8 == 0) where there is a requant_fast form: in its
 * block, the even channels' constants are 4 consecutive words, the odd ones' too.  Returns the first
 * channel not done. */
static inline int32_t dw_requant8(const Op *op, const FastOp *f, const int32_t *acc, int32_t c, uint8_t *dst)
{
    const int32_t C = op->c;
    const __m128i order = _mm_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    for (; f->has_fast && c + 8 <= C; c += 8) {
        const int64_t *qb = f->requant_fast + (size_t)c / BLK * QF_WORDS, *q = qb + c % BLK / 2;
        const __m256i ps = _mm256_loadu_si256((const void *)((const int32_t *)(qb + 32) + c % BLK));
        const __m256i k = _mm256_loadu_si256((const void *)((const int32_t *)(qb + 40) + c % BLK));
        __m256i h = requant_fast8(_mm256_loadu_si256((const void *)(acc + c)), _mm256_loadu_si256((const void *)q),
                                  _mm256_loadu_si256((const void *)(q + 8)), _mm256_loadu_si256((const void *)(q + 16)),
                                  _mm256_loadu_si256((const void *)(q + 24)), k, f->high_mult, ps, f->post_shift);
        h = clamp8(h, op);
        /* the low byte of each lane, in order */
        const __m128i lo = _mm_shuffle_epi8(_mm256_castsi256_si128(h), order);
        const __m128i hi = _mm_shuffle_epi8(_mm256_extracti128_si256(h, 1), order);
        _mm_storel_epi64((void *)(dst + c), _mm_unpacklo_epi32(lo, hi));
    }
    return c;
}

/* Output row oy of one image, on its input x in place (FastIsa.depthwise_row): the 16-channel chunks
 * (dw_chunks16), the rest the C loop (dw_sum_c), requantized 8 channels at a time, then one by one */
static void depthwise_row_avx2(const Op *op, const Op *in, const FastOp *f, const uint8_t *x, int32_t oy, Scratch *sc,
                               uint8_t *out)
{
    const DwConsts k = {f->dw_weights, f->dw_pair_weights, f->bias, f->dw_inside_bias, f->dw_tap_offset,
                        f->has_fast ? f->requant_fast : NULL, f->high_mult, f->post_shift, (op->kh * op->kw + 1) / 2,
                        (size_t)op->kw, op->c, in->zero_point, _mm_set1_epi8((char)op->qmin),
                        _mm_set1_epi8((char)op->qmax)};
    int32_t *acc = sc->dw_acc;
    int32_t ky0, ky1;
    tap_window(oy, op->stride_h, op->dil_h, op->pad_top, op->kh, in->h, &ky0, &ky1);
    for (int32_t ox = 0; ox < op->w; ox++) {
        const DwWindow w = dw_window(op, in, x, oy, ky0, ky1, ox);
        uint8_t *dst = out + ((size_t)oy * op->w + ox) * k.C;
        const int32_t c0 = dw_chunks16(&k, op, &w, acc, dst);     /* channels c0.. take the C loop */
        dw_sum_c(op, in, f, &w, c0, acc);
        /* the channels from c on are requantized from acc */
        const int32_t c = dw_requant8(op, f, acc, k.fast ? c0 : 0, dst);
        dw_requant_c(op, f, acc, c, dst);
    }
}

#endif
