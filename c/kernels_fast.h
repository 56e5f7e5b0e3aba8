/*
 * kernels_fast.h -- the optimized kernels of c/inference.c (included at the end
 * of its section 5; uses its Op and Model types).  Same integer results as the
 * reference kernels there, bit for bit (tests/test_c_kernels.py).
 *
 * Layout: activations are HWC here (channels innermost), so a conv is a GEMM
 *   acc[p][co] = sum_k A[p][k] * W[co][k],   k = (ky, kx, ci)
 * with A[p] = the input pixels under output pixel p's window, raw uint8, the
 * padding holding z_x (im2col; a 1x1 stride-1 conv reads the input in place).
 * The weights are repacked at load as signed bytes w8:
 *   per channel (int8, z_w = 0):   w8 = w,        d = 0
 *   per tensor  (uint8, z_w):      w8 = w - 128,  d = 128 - z_w   (w - z_w = w8 + d)
 * so that   sum_k (x - z_x)(w - z_w) = sum_k x*w8 + d*sum_k x - z_x*(sum_k w8 + d*K):
 * the last term is folded into the bias at load, d*sum_k x is a per-pixel row
 * sum.  Every sum is an exact int32 (the loader proves |acc| < 2^31) computed
 * modulo 2^32 (uint32 in C, wrapping SIMD adds), hence exact.
 *
 * With AVX-512 VNNI (-march=native on a CPU that has it) the GEMM inner step is
 * vpdpbusd: 16 output channels x 4 depths (u8 x s8) per instruction, a register
 * tile of up to 64 channels x 4 pixels.  Without it, the same loops in C99.
 * Depthwise convs (groups == C) have their own kernel, vectorized over channels.
 */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512DQ__) \
    && defined(__AVX512VL__) && defined(__AVX512VBMI__) && !defined(FPGAI_NO_SIMD)
#include <immintrin.h>
#define FAST_VNNI 1
#else
#define FAST_VNNI 0
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#define BLK 16          /* output channels per packed weight block (one zmm of int32) */
#define MR  4           /* pixels per register tile (6 spills more than it gains with GCC 12) */
#define NBMAX 4         /* weight blocks per register tile */
#define OVER 32         /* im2col copies move whole pieces of this many bytes */
#define QV_WORDS 48     /* int64 words of qv per block */

enum { FK_NONE, FK_GEMM, FK_DEPTHWISE };

typedef struct {
    int kind;
    int32_t K, K4;          /* depth per group, rounded up to 4 */
    int32_t nblk;           /* 16-channel blocks per group */
    int32_t cin_g, cout_g;
    int direct;             /* conv reads the input as A in place (1x1, stride 1, no padding, K % 4 == 0) */
    int32_t d;              /* 128 - z_w (per tensor) or 0 */
    int8_t *w8;             /* [groups][nblk][K4/4][16][4] */
    uint32_t *bias;         /* [groups*nblk*16] bias - z_x*(sum w8 + d*K), mod 2^32 */
    int64_t *mult, *rnd, *sh;   /* [groups*nblk*16] requantization per channel (padded) */
    int64_t *qv;            /* the same per 16-channel block for SIMD: mult even, odd, rnd even, odd, sh even, odd */
    int16_t *wdw;           /* depthwise: [kh*kw][C] w - z_w */
    uint32_t ones[16];      /* depthwise, per group of 4 taps: a byte 1 for each real tap */
} FastOp;

typedef struct {
    FastOp *ops;
    int n_ops;
    size_t cols_bytes;      /* im2col scratch */
    size_t pad_bytes;       /* a conv input with its padding */
    size_t rows;            /* row sums / accumulators (elements) */
    size_t out_elems;       /* last op */
} FastModel;

typedef struct {
    uint8_t *arena, *cols, *pad, *logits;
    int32_t *rowsum;
    int64_t *acc;
} Workspace;

static size_t round4(size_t n)
{
    return (n + 3) & ~(size_t)3;
}

/* Arithmetic right shift of an int64 (floor division by 2^s).  GCC and Clang
 * define >> of a negative value as arithmetic, which vectorizes; elsewhere the
 * portable form of rshift_round. */
static inline int64_t sra64(int64_t x, int s)
{
#if defined(__GNUC__)
    return x >> s;
#else
    return x >= 0 ? x >> s : ~(~x >> s);
#endif
}

static inline uint8_t requant1(int32_t acc, int64_t mult, int64_t rnd, int64_t sh, int32_t zp, int32_t lo, int32_t hi)
{
    int64_t v = zp + sra64(acc * mult + rnd, (int)sh);
    return (uint8_t)(v < lo ? lo : v > hi ? hi : v);
}

/* ---- load time --------------------------------------------------------- */

/* qv from mult/rnd/sh (nch channels, a multiple of 16) */
static void qparams(FastOp *f, size_t nch)
{
    f->qv = xcalloc(nch / BLK * QV_WORDS, sizeof *f->qv, "requantization");
    for (size_t b = 0; b < nch / BLK; b++)
        for (size_t j = 0; j < BLK; j++) {
            size_t c = b * BLK + j, half = j % 2 ? 8 : 0;
            int64_t *q = f->qv + b * QV_WORDS + j / 2;
            q[half] = f->mult[c];
            q[16 + half] = f->rnd[c];
            q[32 + half] = f->sh[c];
        }
}

static void fast_prepare(FastModel *fm, const Model *m)
{
    fm->n_ops = m->n_ops;
    fm->ops = xcalloc((size_t)m->n_ops, sizeof *fm->ops, "fast ops");
    fm->cols_bytes = 4;
    fm->rows = 1;
    for (int i = 0; i < m->n_ops; i++) {
        const Op *op = &m->ops[i];
        FastOp *f = &fm->ops[i];
        const Op *in = op->type != OP_INPUT ? &m->ops[op->in[0]] : NULL;
        size_t P = (size_t)op->h * op->w;
        if ((size_t)op->c > fm->rows)
            fm->rows = (size_t)op->c;
        if (!is_weighted(op))
            continue;
        int32_t groups = op->type == OP_CONV ? op->groups : 1;
        f->cin_g = in->c / groups;
        f->cout_g = op->c / groups;
        f->K = op->k_size;
        f->K4 = (int32_t)round4((size_t)op->k_size);
        f->d = m->weight_signed ? 0 : 128 - op->w_zero_point;
        const int taps = op->type == OP_CONV ? op->kh * op->kw : 1;
        if (op->type == OP_CONV) {      /* the input with its padding (pad_input) */
            size_t padded = ((size_t)in->h + 2 * (size_t)op->pad_h) * ((size_t)in->w + 2 * (size_t)op->pad_w) * in->c;
            if (padded > fm->pad_bytes)
                fm->pad_bytes = padded;
        }
        if (op->type == OP_CONV && f->cin_g == 1 && f->cout_g == 1 && groups > 1 && taps <= 64) {
            f->kind = FK_DEPTHWISE;
            if (!FAST_VNNI) {           /* the C99 kernel's weights: [tap][C] as int16 */
                f->wdw = xmalloc((size_t)taps * op->c * sizeof *f->wdw, "depthwise weights");
                for (int32_t c = 0; c < op->c; c++)
                    for (int t = 0; t < taps; t++)
                        f->wdw[(size_t)t * op->c + c] = (int16_t)weight_centered(m, op, c, t);
            }
            size_t nch = ((size_t)op->c + BLK - 1) / BLK * BLK;       /* padded: whole vectors */
            f->mult = xcalloc(3 * nch, sizeof *f->mult, "requantization");
            f->rnd = f->mult + nch;
            f->sh = f->rnd + nch;
            for (int32_t c = 0; c < op->c; c++) {
                f->mult[c] = op->multiplier[c];
                f->sh[c] = op->shift[c];
                f->rnd[c] = ((int64_t)1 << op->shift[c]) >> 1;
            }
            qparams(f, nch);
            /* vpdpbusd form: w8 = (w - z_w) - d, [tap group][channel][4 taps]; bias folded as for GEMM */
            f->nblk = (int32_t)(nch / BLK);
            int32_t ngroups = (taps + 3) / 4;
            f->w8 = xcalloc((size_t)ngroups * nch * 4, 1, "depthwise weights");
            f->bias = xcalloc(nch, sizeof *f->bias, "biases");
            for (int32_t c = 0; c < op->c; c++) {
                uint32_t wsum = 0;
                for (int t = 0; t < taps; t++) {
                    int32_t v = weight_centered(m, op, c, t) - f->d;
                    f->w8[((size_t)(t / 4) * nch + (size_t)c) * 4 + (size_t)(t % 4)] = (int8_t)v;
                    wsum += (uint32_t)v;
                }
                f->bias[c] = (uint32_t)op->bias[c] - (uint32_t)in->zero_point * (wsum + (uint32_t)f->d * (uint32_t)taps);
            }
            for (int32_t g = 0; g < ngroups && g < 16; g++)
                for (int j = 0; j < 4; j++)
                    f->ones[g] |= (4 * g + j < taps ? 1u : 0u) << (8 * j);
            continue;
        }
        f->kind = FK_GEMM;
        f->nblk = (f->cout_g + BLK - 1) / BLK;
        f->direct = op->type == OP_CONV && op->kh == 1 && op->kw == 1 && op->stride_h == 1 && op->stride_w == 1
                    && groups == 1 && f->K4 == f->K;
        if (op->type == OP_LINEAR)
            f->direct = f->K4 == f->K;
        if (!f->direct && P * (size_t)f->K4 > fm->cols_bytes)
            fm->cols_bytes = P * (size_t)f->K4;

        if (P > fm->rows)
            fm->rows = P;
        size_t nch = (size_t)groups * f->nblk * BLK;
        f->w8 = xcalloc(nch * (size_t)f->K4, 1, "packed weights");
        f->bias = xcalloc(nch, sizeof *f->bias, "biases");
        f->mult = xcalloc(3 * nch, sizeof *f->mult, "requantization");
        f->rnd = f->mult + nch;
        f->sh = f->rnd + nch;
        /* linear: the input is read flat in CHW order; here it is HWC */
        size_t hw = (size_t)in->h * in->w;
        for (int32_t g = 0; g < groups; g++) {
            for (int32_t j = 0; j < f->nblk * BLK; j++) {
                size_t slot = ((size_t)g * f->nblk + (size_t)j / BLK) * BLK + (size_t)j % BLK;  /* = g*nblk*16 + j */
                int8_t *panel = f->w8 + ((size_t)g * f->nblk + (size_t)j / BLK) * (size_t)f->K4 * BLK;
                if (j >= f->cout_g)
                    continue;
                int32_t co = g * f->cout_g + j;
                uint32_t wsum = 0;
                for (int32_t k = 0; k < f->K; k++) {
                    int32_t src;     /* reference column of packed depth k */
                    if (op->type == OP_CONV) {
                        int32_t ci = k % f->cin_g, t = k / f->cin_g;      /* k = (ky*kw + kx)*cin_g + ci */
                        src = ci * taps + t;
                    } else {
                        size_t pos = (size_t)k / (size_t)in->c, c = (size_t)k % (size_t)in->c;
                        src = (int32_t)(c * hw + pos);
                    }
                    int32_t v = weight_centered(m, op, co, src) - f->d;      /* w8 = (w - z_w) - d */
                    panel[(size_t)(k / 4) * BLK * 4 + (size_t)(j % BLK) * 4 + (size_t)(k % 4)] = (int8_t)v;
                    wsum += (uint32_t)v;
                }
                uint32_t zx = (uint32_t)in->zero_point;
                f->bias[slot] = (uint32_t)op->bias[co] - zx * (wsum + (uint32_t)f->d * (uint32_t)f->K);
                f->mult[slot] = op->multiplier[co];
                f->sh[slot] = op->shift[co];
                f->rnd[slot] = ((int64_t)1 << op->shift[co]) >> 1;
            }
        }
        qparams(f, nch);
    }
    const Op *last = &m->ops[m->n_ops - 1];
    fm->out_elems = op_elems(last);
}

static void fast_free(FastModel *fm)
{
    for (int i = 0; fm->ops && i < fm->n_ops; i++) {
        free(fm->ops[i].w8);
        free(fm->ops[i].bias);
        free(fm->ops[i].mult);
        free(fm->ops[i].qv);
        free(fm->ops[i].wdw);
    }
    free(fm->ops);
}

/* Zero-filled once at load: the GEMM tile reads rowsum even when its factor d
 * is 0 (int8 weights), which changes no result but would read indeterminate
 * values; with every buffer defined the engine is valgrind-clean. */
static void workspace_init(Workspace *ws, const FastModel *fm, const Model *m)
{
    ws->arena = xcalloc(m->arena_bytes, 1, "activations");
    ws->cols = xcalloc(fm->cols_bytes + OVER, 1, "im2col scratch");
    ws->pad = xcalloc(fm->pad_bytes + OVER, 1, "padded input");
    ws->rowsum = xcalloc(fm->rows, sizeof *ws->rowsum, "row sums");
    ws->acc = xcalloc(fm->rows, sizeof *ws->acc, "accumulators");
    ws->logits = xcalloc(fm->out_elems, 1, "logits");
}

static void workspace_free(Workspace *ws)
{
    free(ws->arena);
    free(ws->cols);
    free(ws->pad);
    free(ws->rowsum);
    free(ws->acc);
    free(ws->logits);
}

/* ---- GEMM conv / linear -------------------------------------------------- */

/* Copy n bytes in whole OVER-byte pieces: up to OVER - 1 bytes past the end
 * of both are touched (the buffers have OVER bytes of slack; what lands past
 * a row of A is overwritten by the next row). */
static inline void copy_over(uint8_t *dst, const uint8_t *src, size_t n)
{
    for (size_t i = 0; i < n; i += OVER)
        memcpy(dst + i, src + i, OVER);
}

/* Requantize n <= 16 accumulators of channels slot.. and store them. */
static inline void requant_store(const int32_t *acc, const FastOp *f, size_t slot, int n, const Op *op, uint8_t *dst)
{
    for (int l = 0; l < n; l++)
        dst[l] = requant1(acc[l], f->mult[slot + l], f->rnd[slot + l], f->sh[slot + l], op->zero_point, op->qmin, op->qmax);
}

#if FAST_VNNI
/* 16 int32 lanes (channels slot..slot+15) -> bytes, masked store of the first n.
 * Even channels in the low halves of 64-bit lanes, odd ones shifted down: two
 * 32x32->64 multiplies, per-lane arithmetic shifts, clamp, back together.
 * The per-channel constants are stored even channels first (see qparams). */
static inline __attribute__((always_inline)) void requant_store_v(__m512i acc, const FastOp *f, size_t slot, int n,
                                                                  const Op *op, uint8_t *dst)
{
    const int64_t *q = f->qv + slot / BLK * QV_WORDS;
    __m512i lo = _mm512_set1_epi64(op->qmin - op->zero_point), hi = _mm512_set1_epi64(op->qmax - op->zero_point);
    __m512i e = _mm512_mul_epi32(acc, _mm512_loadu_si512(q));
    __m512i o = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), _mm512_loadu_si512(q + 8));
    e = _mm512_srav_epi64(_mm512_add_epi64(e, _mm512_loadu_si512(q + 16)), _mm512_loadu_si512(q + 32));
    o = _mm512_srav_epi64(_mm512_add_epi64(o, _mm512_loadu_si512(q + 24)), _mm512_loadu_si512(q + 40));
    e = _mm512_min_epi64(_mm512_max_epi64(e, lo), hi);
    o = _mm512_min_epi64(_mm512_max_epi64(o, lo), hi);
    __m512i v = _mm512_mask_blend_epi32((__mmask16)0xAAAA, e, _mm512_slli_epi64(o, 32));
    v = _mm512_add_epi32(v, _mm512_set1_epi32(op->zero_point));
    _mm_mask_storeu_epi8(dst, (__mmask16)((1u << n) - 1), _mm512_cvtepi32_epi8(v));
}

/* Register tile: NB blocks of 16 channels x MP pixels, the whole depth. */
static inline __attribute__((always_inline)) void tile_vnni(const int NB, const int MP, const uint8_t *A, size_t lda,
                                                            const int8_t *B, size_t bstride, int32_t nk,
                                                            const int32_t *rowsum, const FastOp *f, size_t slot,
                                                            int last_n, const Op *op, uint8_t *out, size_t ldc)
{
    __m512i acc[NBMAX][MR];
    for (int b = 0; b < NB; b++)
        for (int p = 0; p < MP; p++)
            acc[b][p] = _mm512_setzero_si512();
    for (int32_t s = 0; s < nk; s++) {
        __m512i w[NBMAX];
        for (int b = 0; b < NB; b++)
            w[b] = _mm512_loadu_si512(B + (size_t)b * bstride + (size_t)s * 64);
        for (int p = 0; p < MP; p++) {
            int32_t a;
            memcpy(&a, A + (size_t)p * lda + (size_t)s * 4, 4);
            __m512i av = _mm512_set1_epi32(a);
            for (int b = 0; b < NB; b++)
                acc[b][p] = _mm512_dpbusd_epi32(acc[b][p], av, w[b]);
        }
    }
    for (int b = 0; b < NB; b++) {
        __m512i bias = _mm512_loadu_si512(f->bias + slot + (size_t)b * BLK);
        __m512i dv = _mm512_set1_epi32(f->d);
        for (int p = 0; p < MP; p++) {
            __m512i v = _mm512_add_epi32(acc[b][p], bias);
            if (f->d)
                v = _mm512_add_epi32(v, _mm512_mullo_epi32(dv, _mm512_set1_epi32(rowsum[p])));
            requant_store_v(v, f, slot + (size_t)b * BLK, b == NB - 1 ? last_n : BLK, op,
                            out + (size_t)p * ldc + (size_t)b * BLK);
        }
    }
}

#define TILE_CASE(nb, mp) case (nb) * 8 + (mp): \
    tile_vnni(nb, mp, A, lda, B, bstride, nk, rowsum, f, slot, last_n, op, out, ldc); break;
#define TILE_ROW(nb) TILE_CASE(nb, 1) TILE_CASE(nb, 2) TILE_CASE(nb, 3) TILE_CASE(nb, 4)   /* mp = 1..MR */

static void tile(int nb, int mp, const uint8_t *A, size_t lda, const int8_t *B, size_t bstride, int32_t nk,
                 const int32_t *rowsum, const FastOp *f, size_t slot, int last_n, const Op *op, uint8_t *out, size_t ldc)
{
    switch (nb * 8 + mp) {
    TILE_ROW(1) TILE_ROW(2) TILE_ROW(3) TILE_ROW(4)
    default: break;
    }
}
#else
/* uint32 (a sum modulo 2^32 whose true value fits int32) -> int32, no implementation-defined conversion */
static int32_t u32_to_i32(uint32_t u)
{
    return u <= INT32_MAX ? (int32_t)u : (int32_t)(u - 2147483648u) - INT32_MAX - 1;
}

/* Portable register tile: the same computation in C99, modulo 2^32. */
static void tile(int nb, int mp, const uint8_t *A, size_t lda, const int8_t *B, size_t bstride, int32_t nk,
                 const int32_t *rowsum, const FastOp *f, size_t slot, int last_n, const Op *op, uint8_t *out, size_t ldc)
{
    for (int b = 0; b < nb; b++) {
        const int8_t *panel = B + (size_t)b * bstride;
        for (int p = 0; p < mp; p++) {
            const uint8_t *a = A + (size_t)p * lda;
            uint32_t acc[BLK];
            int32_t res[BLK];
            for (int l = 0; l < BLK; l++)
                acc[l] = f->bias[slot + (size_t)b * BLK + l] + (uint32_t)f->d * (uint32_t)rowsum[p];
            for (int32_t s = 0; s < nk; s++) {
                const int8_t *w = panel + (size_t)s * 64;
                int32_t x0 = a[4 * s], x1 = a[4 * s + 1], x2 = a[4 * s + 2], x3 = a[4 * s + 3];
                for (int l = 0; l < BLK; l++)
                    acc[l] += (uint32_t)(x0 * w[4 * l] + x1 * w[4 * l + 1] + x2 * w[4 * l + 2] + x3 * w[4 * l + 3]);
            }
            for (int l = 0; l < BLK; l++)
                res[l] = u32_to_i32(acc[l]);
            requant_store(res, f, slot + (size_t)b * BLK, b == nb - 1 ? last_n : BLK, op,
                          out + (size_t)p * ldc + (size_t)b * BLK);
        }
    }
}
#endif

/* The conv input x (HWC) with its padding, which holds z_x, into pb. */
static void pad_input(const Op *op, const Op *in, const uint8_t *x, uint8_t *pb)
{
    const size_t C = (size_t)in->c, Wp = (size_t)in->w + 2 * (size_t)op->pad_w;
    const int zx = in->zero_point;
    memset(pb, zx, (size_t)op->pad_h * Wp * C);
    pb += (size_t)op->pad_h * Wp * C;
    for (int32_t iy = 0; iy < in->h; iy++) {
        memset(pb, zx, (size_t)op->pad_w * C);
        memcpy(pb + (size_t)op->pad_w * C, x + (size_t)iy * in->w * C, (size_t)in->w * C);
        memset(pb + (size_t)(op->pad_w + in->w) * C, zx, (size_t)op->pad_w * C);
        pb += Wp * C;
    }
    memset(pb, zx, (size_t)op->pad_h * Wp * C);
}

/* A conv (any groups but depthwise) or linear layer; x and out are HWC. */
static void fast_gemm(const Op *op, const Op *in, const FastOp *f, const uint8_t *x, uint8_t *out, Workspace *ws)
{
    const int32_t groups = op->type == OP_CONV ? op->groups : 1;
    const size_t P = (size_t)op->h * op->w, K4 = (size_t)f->K4;
    for (int32_t g = 0; g < groups; g++) {
        const uint8_t *A = x;
        size_t lda = K4;
        if (!f->direct) {
            uint8_t *row = ws->cols;
            if (op->type == OP_LINEAR) {
                memcpy(row, x, (size_t)f->K);
                memset(row + f->K, 0, K4 - (size_t)f->K);
            } else {
                /* the input with its padding (z_x) in the workspace, then each row of A
                 * from whole spans of it: kw*C bytes per kernel row (groups 1), else cin_g per tap */
                const size_t C = (size_t)in->c, Wp = (size_t)in->w + 2 * (size_t)op->pad_w;
                if (g == 0)
                    pad_input(op, in, x, ws->pad);
                const size_t span = groups == 1 ? (size_t)op->kw * C : (size_t)f->cin_g;
                for (int32_t oy = 0; oy < op->h; oy++)
                    for (int32_t ox = 0; ox < op->w; ox++, row += K4) {
                        uint8_t *dst = row;
                        for (int32_t ky = 0; ky < op->kh; ky++) {
                            const uint8_t *src = ws->pad + ((size_t)(oy * op->stride_h + ky) * Wp
                                                            + (size_t)ox * op->stride_w) * C + (size_t)g * f->cin_g;
                            if (groups == 1) {
                                copy_over(dst, src, span);
                                dst += span;
                            } else {
                                for (int32_t kx = 0; kx < op->kw; kx++, dst += span)
                                    copy_over(dst, src + (size_t)kx * C, span);
                            }
                        }
                        memset(dst, 0, K4 - (size_t)f->K);
                    }
            }
            A = ws->cols;
        }
        if (f->d)
            for (size_t p = 0; p < P; p++) {
                const uint8_t *a = A + p * lda;
                uint32_t s = 0;
                for (int32_t k = 0; k < f->K; k++)
                    s += a[k];
                ws->rowsum[p] = (int32_t)s;         /* <= 255 * K < 2^31 (K < 2^23 in practice) */
            }
        const size_t bstride = K4 * BLK;
        const int8_t *Bg = f->w8 + (size_t)g * f->nblk * bstride;
        uint8_t *outg = out + (size_t)g * f->cout_g;
        for (int32_t b0 = 0; b0 < f->nblk; b0 += NBMAX) {
            int nb = f->nblk - b0 < NBMAX ? f->nblk - b0 : NBMAX;
            int last_n = f->cout_g - (b0 + nb - 1) * BLK;
            if (last_n > BLK)
                last_n = BLK;
            size_t slot = ((size_t)g * f->nblk + b0) * BLK;
            for (size_t p0 = 0; p0 < P; p0 += MR) {
                int mp = P - p0 < MR ? (int)(P - p0) : MR;
                tile(nb, mp, A + p0 * lda, lda, Bg + (size_t)b0 * bstride, bstride, f->K4 / 4,
                     ws->rowsum + p0, f, slot, last_n, op, outg + p0 * op->c + (size_t)b0 * BLK, (size_t)op->c);
            }
        }
    }
}

/* ---- depthwise conv, maxpool, avgpool, add (HWC) ------------------------- */

#if FAST_VNNI
/* On the padded input (z_x in the padding): 16 channels per vector, 4 taps per
 * vpdpbusd: the taps' 16 bytes side by side in a zmm, a byte permute makes each
 * 32-bit lane one channel's 4 taps; weights packed the same way, [tap/4][c][4]. */
static void fast_depthwise(const Op *op, const Op *in, const FastOp *f, const uint8_t *x, uint8_t *out, Workspace *ws)
{
    const int32_t C = op->c, taps = op->kh * op->kw, ngroups = (taps + 3) / 4;
    const size_t Wp = (size_t)in->w + 2 * (size_t)op->pad_w, nch = (size_t)f->nblk * BLK;
    size_t toff[64];                            /* byte offset of each tap (padded to whole groups) */
    uint8_t idx_bytes[64];
    for (int j = 0; j < 64; j++)
        idx_bytes[j] = (uint8_t)((j % 4) * 16 + j / 4);
    const __m512i idx = _mm512_loadu_si512(idx_bytes);
    for (int32_t t = 0; t < 4 * ngroups; t++) {
        int32_t tt = t < taps ? t : taps - 1;   /* beyond the kernel: any tap, weight 0 */
        toff[t] = ((size_t)(tt / op->kw) * Wp + (size_t)(tt % op->kw)) * (size_t)C;
    }
    pad_input(op, in, x, ws->pad);
    const __m512i dv = _mm512_set1_epi32(f->d);
    for (int32_t oy = 0; oy < op->h; oy++)
        for (int32_t ox = 0; ox < op->w; ox++) {
            const uint8_t *base = ws->pad + ((size_t)oy * op->stride_h * Wp + (size_t)ox * op->stride_w) * C;
            uint8_t *dst = out + ((size_t)oy * op->w + ox) * C;
            for (int32_t c0 = 0; c0 < C; c0 += BLK) {
                __m512i acc = _mm512_loadu_si512(f->bias + c0), sx = _mm512_setzero_si512();
                for (int32_t g = 0; g < ngroups; g++) {
                    const size_t *o = toff + 4 * g;
                    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const void *)(base + o[0] + c0)));
                    v = _mm512_inserti32x4(v, _mm_loadu_si128((const void *)(base + o[1] + c0)), 1);
                    v = _mm512_inserti32x4(v, _mm_loadu_si128((const void *)(base + o[2] + c0)), 2);
                    v = _mm512_inserti32x4(v, _mm_loadu_si128((const void *)(base + o[3] + c0)), 3);
                    v = _mm512_permutexvar_epi8(idx, v);
                    acc = _mm512_dpbusd_epi32(acc, v, _mm512_loadu_si512(f->w8 + ((size_t)g * nch + (size_t)c0) * 4));
                    if (f->d)
                        sx = _mm512_dpbusd_epi32(sx, v, _mm512_set1_epi32(f->ones[g]));
                }
                if (f->d)
                    acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(dv, sx));
                requant_store_v(acc, f, (size_t)c0, C - c0 < BLK ? C - c0 : BLK, op, dst + c0);
            }
        }
}
#else
static void fast_depthwise(const Op *op, const Op *in, const FastOp *f, const uint8_t *x, uint8_t *out, Workspace *ws)
{
    const int32_t C = op->c, zx = in->zero_point;
    int32_t *acc = ws->rowsum;
    for (int32_t oy = 0; oy < op->h; oy++)
        for (int32_t ox = 0; ox < op->w; ox++) {
            for (int32_t c = 0; c < C; c++)
                acc[c] = op->bias[c];
            for (int32_t ky = 0; ky < op->kh; ky++) {
                int32_t iy = oy * op->stride_h + ky - op->pad_h;
                if (iy < 0 || iy >= in->h)
                    continue;
                for (int32_t kx = 0; kx < op->kw; kx++) {
                    int32_t ix = ox * op->stride_w + kx - op->pad_w;
                    if (ix < 0 || ix >= in->w)
                        continue;               /* padding: x - z_x = 0 */
                    const uint8_t *src = x + ((size_t)iy * in->w + ix) * C;
                    const int16_t *w = f->wdw + (size_t)(ky * op->kw + kx) * C;
                    for (int32_t c = 0; c < C; c++)
                        acc[c] += (src[c] - zx) * w[c];
                }
            }
            uint8_t *dst = out + ((size_t)oy * op->w + ox) * C;
            for (int32_t c = 0; c < C; c++)
                dst[c] = requant1(acc[c], f->mult[c], f->rnd[c], f->sh[c], op->zero_point, op->qmin, op->qmax);
        }
}
#endif

static void fast_maxpool(const Op *op, const Op *in, const uint8_t *x, uint8_t *out)
{
    const size_t C = (size_t)op->c;
    for (int32_t oy = 0; oy < op->h; oy++) {
        int32_t y0 = oy * op->stride_h - op->pad_h, y1 = y0 + op->kh;
        if (y0 < 0) y0 = 0;
        if (y1 > in->h) y1 = in->h;
        for (int32_t ox = 0; ox < op->w; ox++) {
            int32_t x0 = ox * op->stride_w - op->pad_w, x1 = x0 + op->kw;
            if (x0 < 0) x0 = 0;
            if (x1 > in->w) x1 = in->w;
            uint8_t *dst = out + ((size_t)oy * op->w + ox) * C;
            memset(dst, 0, C);
            for (int32_t iy = y0; iy < y1; iy++)
                for (int32_t ix = x0; ix < x1; ix++) {
                    const uint8_t *src = x + ((size_t)iy * in->w + ix) * C;
                    for (size_t c = 0; c < C; c++)
                        dst[c] = src[c] > dst[c] ? src[c] : dst[c];
                }
        }
    }
}

static void fast_avgpool(const Op *op, const Op *in, const uint8_t *x, uint8_t *out, Workspace *ws)
{
    const size_t C = (size_t)op->c;
    const int64_t offset = (int64_t)op->kh * op->kw * in->zero_point;
    int64_t *sum = ws->acc;
    for (int32_t oy = 0; oy < op->h; oy++)
        for (int32_t ox = 0; ox < op->w; ox++) {
            for (size_t c = 0; c < C; c++)
                sum[c] = -offset;
            for (int32_t ky = 0; ky < op->kh; ky++)
                for (int32_t kx = 0; kx < op->kw; kx++) {
                    const uint8_t *src = x + ((size_t)(oy * op->stride_h + ky) * in->w + (size_t)ox * op->stride_w + kx) * C;
                    for (size_t c = 0; c < C; c++)
                        sum[c] += src[c];
                }
            uint8_t *dst = out + ((size_t)oy * op->w + ox) * C;
            for (size_t c = 0; c < C; c++)
                dst[c] = clamp_u8(op->zero_point + rshift_round(sum[c] * op->multiplier[0], op->shift[0]), op->qmin, op->qmax);
        }
}

static void fast_add(const Op *op, const Op *ia, const Op *ib, const uint8_t *a, const uint8_t *b, uint8_t *out)
{
    const size_t n = op_elems(op);
    const int64_t ma = op->mul_a, mb = op->mul_b, za = ia->zero_point, zb = ib->zero_point;
    const int s = op->add_shift;
    const int64_t rnd = ((int64_t)1 << s) >> 1;
    const int32_t zp = op->zero_point, lo = op->qmin, hi = op->qmax;
    for (size_t i = 0; i < n; i++) {
        int64_t v = zp + sra64((a[i] - za) * ma + (b[i] - zb) * mb + rnd, s);
        out[i] = (uint8_t)(v < lo ? lo : v > hi ? hi : v);
    }
}

/* Run the whole graph on one image (CHW pixels); returns the logits (CHW). */
static const uint8_t *run_model_fast(const Model *m, const FastModel *fm, Workspace *ws, const uint8_t *image)
{
    for (int i = 0; i < m->n_ops; i++) {
        const Op *op = &m->ops[i];
        const FastOp *f = &fm->ops[i];
        uint8_t *out = ws->arena + op->offset;
        const Op *a = op->type != OP_INPUT ? &m->ops[op->in[0]] : NULL;
        const uint8_t *xa = a ? ws->arena + a->offset : NULL;
        switch (op->type) {
        case OP_INPUT: {
            const size_t hw = (size_t)op->h * op->w, C = (size_t)op->c;
            for (size_t c = 0; c < C; c++)
                for (size_t p = 0; p < hw; p++)
                    out[p * C + c] = image[c * hw + p];
            break;
        }
        case OP_CONV:
            if (f->kind == FK_DEPTHWISE)
                fast_depthwise(op, a, f, xa, out, ws);
            else
                fast_gemm(op, a, f, xa, out, ws);
            break;
        case OP_LINEAR:  fast_gemm(op, a, f, xa, out, ws); break;
        case OP_MAXPOOL: fast_maxpool(op, a, xa, out); break;
        case OP_AVGPOOL: fast_avgpool(op, a, xa, out, ws); break;
        case OP_ADD: {
            const Op *b = &m->ops[op->in[1]];
            fast_add(op, a, b, xa, ws->arena + b->offset, out);
            break;
        }
        }
    }
    const Op *last = &m->ops[m->n_ops - 1];
    const uint8_t *y = ws->arena + last->offset;
    const size_t hw = (size_t)last->h * last->w, C = (size_t)last->c;
    if (hw == 1)
        return y;
    for (size_t c = 0; c < C; c++)              /* HWC -> CHW */
        for (size_t p = 0; p < hw; p++)
            ws->logits[c * hw + p] = y[p * C + c];
    return ws->logits;
}
