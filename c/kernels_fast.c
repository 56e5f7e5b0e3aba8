/*
 * kernels_fast.c -- the optimized kernels (FAST_KERNELS_* in kernels.h, the default).  Same
 * integer results as the reference kernels (the core's, fpgai.c), bit for bit
 * (tests/test_c_kernels.py).  The Makefile compiles this one file once per ISA (FAST_ISA_*,
 * each object with its target flags and its own KernelSet); isa.c picks one at run time.
 *
 * Layout: activations are HWC here (channels innermost), so a conv is a GEMM
 *   acc[p][co] = sum_k A[p][k] * W[co][k],   k = (ky, kx, ci)
 * with A[p] = the input pixels under output pixel p's window, raw uint8, the
 * padding holding z_x.  A 1x1 stride-1 conv reads the input in place; a conv whose
 * kernel rows are whole runs of the padded input (groups 1, taps adjacent) reads them
 * there (implicit: A[p] is kh runs, no copy); the others copy A (im2col).
 * The weights are repacked at load as signed bytes w8:
 *   per channel (int8, z_w = 0):   w8 = w,        d = 0
 *   per tensor  (uint8, z_w):      w8 = w - 128,  d = 128 - z_w   (w - z_w = w8 + d)
 * so that   sum_k (x - z_x)(w - z_w) = sum_k x*w8 + d*sum_k x - z_x*(sum_k w8 + d*K):
 * the last term is folded into the bias at load, d*sum_k x is a per-pixel row
 * sum.  Every sum is an exact int32 (the loader proves |acc| < 2^31) computed
 * modulo 2^32 (uint32 in C, wrapping SIMD adds), hence exact.
 *
 * The GEMM's register tile, per build:
 *   AMX-INT8      tdpbusd on 2 x 2 tiles: 32 pixels x 32 channels, 64 depths a step, the rows of A
 *                 packed per chunk (amx_tiles); chunks of fewer than AMX_MIN_ROWS rows and every
 *                 other kernel as in the AVX-512 build
 *   AVX-512 VNNI  vpdpbusd: 16 output channels x 4 depths (u8 x s8) per instruction, up to
 *                 64 channels x 4 pixels, the weights pinned in registers
 *   AVX-VNNI      the same packing, vpdpbusd on ymm (8 channels): 16 channels x 6 pixels
 *                 (tile_ymm); everything else as in the AVX2 build
 *   AVX2          the same tile with vpmaddwd on int16 pairs, 2 depths a step, the weights
 *                 widened from int8 as loaded, the rows of A as int16 once per tile
 *   NEON, C99     the dot-product tile: 2 channels x 4 pixels, each output a dot product over
 *                 the depth, 16 depths a step (NEON: sdot on int8; C99: plain loops GCC
 *                 vectorizes as pmaddwd), the weights [channel][depth]
 * Depthwise convs (groups == C) have their own kernel, vectorized over channels: VNNI's
 * own; AVX2's 16-channel chunks in registers, a window wholly inside the input two taps a vpmaddwd
 * (wpair); for the rest one C loop the compilers vectorize (int16 products: pmullw/pmulhw, smull).
 *
 * Batches and threads: a workspace runs a batch of images layer by layer, each tensor's images one
 * HWC matrix (image_tensor); a conv or linear layer is one GEMM over all of the batch's pixels,
 * in chunks of rows (CHUNK_BYTES of A) that every weight panel passes over, so a panel is read
 * once per chunk, not once per image.  Where the batch's activations would not stay in cache, its
 * first layers run in passes of fewer images (schedule_passes).  In the OpenMP build each layer's
 * rows (im2col, depthwise output rows) and tiles are split across the threads, each with its own
 * scratch (Scratch).
 *
 * Requantization: every scalar path calls requantize() (fpgai.h).  The SIMD paths use two
 * vector forms of the same function, precomputed per channel at load (qparams,
 * qparams_fast): requant_v (the product, the rounding constant and the shift in 64-bit
 * lanes) and requant_fast (the whole requantization as the high half of one 64-bit sum,
 * where that is exact; AVX2's requant_fast8 is the same in 256-bit lanes).  Both give
 * requantize()'s value bit for bit; the tests run every build's fast kernels against the reference
 * ones on awkward random graphs.
 */
#include "host.h"
#include "kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* The OpenMP build (make omp) splits each layer's work across the threads; the others run it in
 * order on one.  Every parallel loop's iterations write disjoint bytes. */
#ifdef _OPENMP
#define PRAGMA(text) _Pragma(#text)
#define PARALLEL_FOR_IF(cond) PRAGMA(omp parallel for schedule(static) if (cond))
static int thread_id(void)
{
    return omp_get_thread_num();
}
#else
#define PARALLEL_FOR_IF(cond)
static int thread_id(void)
{
    return 0;
}
#endif

/* Which build this is: the Makefile compiles this file once per ISA, each object with its target
 * flags and its own KernelSet (kernels.h); isa.c picks one at run time. */
#if defined(FAST_ISA_AVX512) || defined(FAST_ISA_AMX)
#if !(defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512DQ__) \
      && defined(__AVX512VL__) && defined(__AVX512VBMI__))
#error "FAST_ISA_AVX512 and FAST_ISA_AMX need -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512vnni -mavx512vbmi"
#endif
#include <immintrin.h>
#define FAST_VNNI 1
#define FAST_AVX2 0
#define FAST_NEON 0
#if defined(FAST_ISA_AMX)
/* The AVX-512 build with the GEMM's chunks of enough rows on AMX-INT8 tiles (amx_tiles).
 * FAST_AMX_EMULATE, the test twin (c/Makefile's amx-emu), runs the very same code with the tile
 * instructions done in C (emu_*), so that CPUs without AMX test its packing and tiling. */
#define FAST_AMX 1
#ifdef FAST_AMX_EMULATE
#define FAST_KERNELS_ISA FAST_KERNELS_AMX_EMU
#define FAST_NAME "optimized (AMX-INT8, emulated test twin)"
#else
#if !(defined(__AMX_TILE__) && defined(__AMX_INT8__))
#error "FAST_ISA_AMX needs -mamx-tile -mamx-int8"
#endif
#define FAST_KERNELS_ISA FAST_KERNELS_AMX
#define FAST_NAME "optimized (AMX-INT8)"
#endif
#else
#define FAST_KERNELS_ISA FAST_KERNELS_AVX512
#define FAST_NAME "optimized (AVX-512 VNNI)"
#endif
#elif defined(FAST_ISA_AVX2)
#ifndef __AVX2__
#error "FAST_ISA_AVX2 needs -mavx2"
#endif
#include <immintrin.h>
#define FAST_VNNI 0
#define FAST_AVX2 1
#define FAST_NEON 0
#define FAST_KERNELS_ISA FAST_KERNELS_AVX2
#define FAST_NAME "optimized (AVX2)"
#elif defined(FAST_ISA_AVXVNNI)
/* The AVX2 build with the GEMM as vpdpbusd on ymm (VEX, AVX-VNNI).  FAST_AVXVNNI_EVEX, the test
 * twin (c/Makefile's avxvnni-evex), compiles the very same code with the EVEX form of that
 * instruction (AVX-512 VL + VNNI, the same sums), so that CPUs with AVX-512 but no AVX-VNNI run it */
#ifdef FAST_AVXVNNI_EVEX
#if !(defined(__AVX2__) && defined(__AVX512VL__) && defined(__AVX512VNNI__))
#error "FAST_AVXVNNI_EVEX needs -mavx2 -mavx512vl -mavx512vnni"
#endif
#define dpbusd256 _mm256_dpbusd_epi32
#define FAST_KERNELS_ISA FAST_KERNELS_AVXVNNI_EVEX
#define FAST_NAME "optimized (AVX-VNNI, EVEX test twin)"
#else
#if !(defined(__AVX2__) && defined(__AVXVNNI__))
#error "FAST_ISA_AVXVNNI needs -mavx2 -mavxvnni"
#endif
#define dpbusd256 _mm256_dpbusd_avx_epi32
#define FAST_KERNELS_ISA FAST_KERNELS_AVXVNNI
#define FAST_NAME "optimized (AVX-VNNI)"
#endif
#include <immintrin.h>
#define FAST_VNNI 0
#define FAST_AVX2 1
#define FAST_AVXVNNI 1
#define FAST_NEON 0
#elif defined(FAST_ISA_NEON)
#if !(defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD))
#error "FAST_ISA_NEON needs an aarch64 target with the dot product (-march=armv8.2-a+dotprod)"
#endif
#include <arm_neon.h>
#define FAST_VNNI 0
#define FAST_AVX2 0
#define FAST_NEON 1
#define FAST_KERNELS_ISA FAST_KERNELS_NEON
#define FAST_NAME "optimized (NEON dot product)"
#elif defined(FAST_ISA_C99)
#define FAST_VNNI 0
#define FAST_AVX2 0
#define FAST_NEON 0
#define FAST_KERNELS_ISA FAST_KERNELS_C99
#define FAST_NAME "optimized (C99)"
#else
#error "kernels_fast.c: compile with one of -DFAST_ISA_AMX, -DFAST_ISA_AVX512, -DFAST_ISA_AVXVNNI, -DFAST_ISA_AVX2, \
-DFAST_ISA_NEON, -DFAST_ISA_C99 (c/Makefile)"
#endif
#ifndef FAST_AVXVNNI
#define FAST_AVXVNNI 0
#endif
#ifndef FAST_AMX
#define FAST_AMX 0
#endif
/* The GEMM's weights in VNNI's packing (w8), for a vpdpbusd tile: zmm (AVX-512) or ymm (AVX-VNNI) */
#define FAST_VNNI_GEMM (FAST_VNNI || FAST_AVXVNNI)

/* The weights (wdot) and rows of A (dotrows) of the tiles of every build but VNNI.  AVX2: int8
 * weights, widened as loaded (vpmovsxbw), int16 rows.  NEON: int8 both (sdot is s8 x s8), the rows
 * holding x - 128, whose 128 * sum w8 is added back in the bias.  C99: int16 both, since SSE2, its
 * vectorizer's x86-64 baseline, has no one-instruction sign extension. */
#if FAST_AVX2
typedef int8_t DotWeight;
typedef int16_t DotRow;
#elif FAST_NEON
typedef int8_t DotWeight;
typedef int8_t DotRow;
#else
typedef int16_t DotWeight;
typedef int16_t DotRow;
#endif
#define ROW_OFFSET (FAST_NEON ? 128 : 0)
/* The dot-product tile's channel pair's weights in wdot: runs of this many depths of each channel
 * in turn.  NEON: 16, a vector of each a step, so that the tile reads one stream; C99: the two
 * whole rows. */
#define DOT_RUN(Kp) (FAST_NEON ? 16 : (Kp))

#define BLK 16          /* output channels per packed weight block (one zmm of int32) */
/* The GEMM's depth step: VNNI packs 4 depths per 32-bit lane, AVX2 2 (vpmaddwd's int16 pairs);
 * the dot-product tile (NEON, C99) reads 16 activations a vector */
#define KSTEP (FAST_VNNI_GEMM ? 4 : FAST_AVX2 ? 2 : 16)
/* pixels per register tile (AVX-512: 6 measured no faster once the weights stay in registers) and
 * weight blocks per register tile; AVX-VNNI's and AVX2's 16 ymm hold 1 block (2 ymm) x 6 pixels of
 * sums (AVX2: 3-5% faster than 4 pixels) */
#define MR (FAST_AVX2 ? 6 : 4)
#define NBMAX (FAST_AVXVNNI ? 1 : 4)
#define OVER 32         /* im2col copies move whole pieces of this many bytes */
#define QV_WORDS 48     /* int64 words of qv per block */
#define QF_WORDS 40     /* int64 words of qf per block */
/* A GEMM runs over the batch's pixels in chunks of about this many bytes of A (its rows of all the
 * images, one after the other): each chunk stays in cache while every weight panel passes over it.
 * AMX: more (its cores have 2 MB of L2), so that a panel is read from memory fewer times for its
 * tiles, which consume one 16 times faster. */
#define CHUNK_BYTES (FAST_AMX ? 1024 * 1024 : 256 * 1024)
/* A pass's activations (an op's inputs, output and padded input, times its images): about half a
 * core's L2, so that one layer's output is still in cache when the next reads it (a workspace is one
 * thread's, but for a batch smaller than the thread count).  The environment's FPGAI_PASS_BYTES
 * overrides it (tuning, and the tests' small passes). */
#define PASS_BYTES (512 * 1024)
/* AMX: a tile is 16 rows of 64 bytes.  A: 16 pixels x 64 depths (u8); B: 16 depth steps x 16
 * channels x 4 depths (s8: one block's VNNI packing, as is); C: 16 pixels x 16 channels (int32).
 * The register tile is 2 x 2 of them, 32 pixels x 2 blocks.  A chunk of at least AMX_MIN_ROWS rows
 * runs on AMX tiles, a smaller one on the VNNI tiles (FPGAI_AMX_ROWS overrides it: tuning, tests). */
#define AMX_DEPTH 64
#define AMX_PIX 16
#define AMX_M (2 * AMX_PIX)
#define AMX_NB 2
#define AMX_MIN_ROWS 16
/* A GEMM chunk holds whole register tiles of either kind */
#define CHUNK_UNIT (FAST_AMX ? AMX_M : MR)

enum { FK_NONE, FK_GEMM, FK_DEPTHWISE };

typedef struct {
    int kind;
    int32_t K, Kp;          /* depth per group, rounded up to KSTEP */
    int32_t nblk;           /* 16-channel blocks per group */
    int32_t chunk_rows;     /* GEMM: rows of A per chunk, a multiple of MR */
    int32_t cin_g, cout_g;
    int direct;             /* conv reads the input as A in place (1x1, stride 1, no padding, K % KSTEP == 0) */
    /* A row as read by the tiles: nseg segments of seg_bytes, seg_stride bytes apart.  An implicit
     * conv (groups 1, taps adjacent in a kernel row) reads each kernel row of its window straight
     * from the padded input: no im2col copy.  Otherwise one segment of Kp bytes.  The VNNI tiles
     * read whole 4-byte depth steps: seg_depth bytes a segment (seg_bytes rounded up; the bytes
     * past a kernel row, the next pixels', meet zero weights), and the weights are packed so. */
    int implicit;
    int32_t nseg, seg_bytes, seg_depth;
    size_t seg_stride;
    int32_t d;              /* 128 - z_w (per tensor) or 0 */
    int32_t wdepth;         /* GEMM (VNNI): depth of a block's packed weights, Kp (AMX: rounded up to AMX_DEPTH,
                             * zero weights past Kp) */
    int8_t *w8;             /* GEMM (VNNI): [groups][nblk][wdepth/4][16][4]; depthwise (VNNI): see fast_prepare */
    DotWeight *wdot;        /* GEMM (not VNNI), the w8 values; AVX2: [groups][nblk][Kp/2][16][2]; NEON, C99:
                             * [groups][nblk*8 channel pairs][Kp/run][2][run] (run: DOT_RUN) */
    uint32_t *bias;         /* [groups*nblk*16] bias - z_x*(sum w8 + d*K), mod 2^32 */
    int64_t *mult, *rnd, *sh;   /* [groups*nblk*16] requantization per channel (padded) */
    int64_t *qv;            /* the same per 16-channel block for SIMD: mult even, odd, rnd even, odd, sh even, odd */
    int64_t *qf;            /* the 32-bit-result form per block (qparams_fast), when rq32 */
    int rq32;               /* every channel has a qf form: requantization as the high half of one product */
    int post;               /* some channel of qf needs a shift after the high half */
    int16_t *wdw;           /* depthwise: [kh*kw][C] w - z_w */
    /* depthwise (AVX2), the windows wholly inside the input: taps in pairs, each pair's two inputs
     * interleaved against their weights so interleaved (dw_pairs_weights), one vpmaddwd a pair
     * and no z_x subtracted: it is in bias_in */
    int16_t *wpair;         /* [C/16][pairs][2][16], pairs = (kh * kw + 1) / 2 */
    size_t *tap_offset;     /* [2*pairs] each tap's input from the window's first tap (an odd tap out is
                             * paired with itself, at zero weight) */
    uint32_t *bias_in;      /* [C/16*16] bias - z_x * sum (w - z_w), mod 2^32 */
} FastOp;

typedef struct {
    FastOp *ops;
    int n_ops;
    /* a workspace's buffers (0: no kernel of this model uses it) */
    size_t pad_bytes;       /* per image: a conv input with its padding */
    size_t dwcols_bytes;    /* per thread: depthwise (VNNI), one row of interleaved input columns */
    size_t dwacc_elems;     /* per thread: depthwise (not VNNI), one pixel's int32 accumulators */
    size_t dotrows_elems;   /* per thread: a tile's MR rows of A as DotRow (not VNNI) */
    size_t acc_elems;       /* per thread: avgpool sums (int64 per channel) */
    size_t row_bytes;       /* per thread: maxpool, an input row's column maxima (W * C) */
    size_t logits_bytes;    /* per image: the last op's output back in CHW order, when it has H*W > 1 */
} FastModel;

/* One thread's scratch buffers */
typedef struct {
    uint8_t *dwcols;
    int32_t *dwacc;
    DotRow *dotrows;
    int32_t *amx_c;         /* AMX: a register tile's sums, [AMX_NB][AMX_M][16] */
    int64_t *acc;
    uint8_t *row;           /* maxpool's column maxima */
} Scratch;

/* A batch's: tensor j of image b at tensor[j] + (b % images[j]) * op_elems(&ops[j]), so a tensor's
 * images are one HWC matrix of H * W pixels per image.  tensor[j] = arena + images[j] * ops[j].offset
 * (the memory plan scaled by the images it holds keeps its tensors apart).  Ops [0, split) run pass
 * by pass: the tensors only they read hold one pass's images (images[j] = pass: each pass reuses
 * the same memory, still in cache), the ones later ops (or the logits) read all the batch's, each
 * in a place of its own after the plan's; the other tensors hold the batch's (images[j] = batch). */
typedef struct {
    int batch, n_threads;
    int split, pass;        /* ops [0, split) run in passes of `pass` images, the others on the batch */
    const Op *ops;          /* the model's, the index of tensor and images */
    uint8_t **tensor;
    int *images;
    uint8_t *arena, *logits;
    uint8_t *cols;          /* a GEMM chunk's rows of A, cols_stride() bytes apart */
    uint8_t *pad;           /* each image's conv input with its padding, pad_stride bytes apart */
    size_t pad_stride;
    int32_t *rowsum;        /* a GEMM chunk's row sums */
    uint8_t *amx_a;         /* AMX: a GEMM chunk's rows of A packed, wdepth bytes apart (whole AMX_M-row tiles) */
    size_t amx_rows;        /* AMX: the fewest rows of a chunk that runs on AMX tiles */
    const uint8_t **arow;   /* a GEMM chunk's rows of A: where each starts */
    Scratch *scratch;       /* [n_threads] */
    double *op_seconds;     /* NULL, or where each op's seconds add up (time_ops) */
} Workspace;

/* Op's output (a tensor) of image b */
static uint8_t *image_tensor(const Workspace *ws, const Op *op, int b)
{
    return ws->tensor[op - ws->ops] + (size_t)(b % ws->images[op - ws->ops]) * op_elems(op);
}

static size_t max_size(size_t a, size_t b)
{
    return a > b ? a : b;
}

static size_t round_up(size_t n, size_t step)
{
    return (n + step - 1) / step * step;
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

/* The same requantization as the high 32 bits of one 64-bit sum, where that is exact:
 *   zp + floor((acc*m + rnd) / 2^s) = floor(floor(y / 2^32) / 2^(S-32)),
 *   y = acc*(m << a) + (rnd << a) + (zp << S),   S = s + a,
 * a = 32 - s for s < 32 (possible when m << a < 2^31), else a = 0; S <= 53 keeps
 * |y| < 2^62 + 2^61 (|acc|, m << a < 2^31), so y and floor(y / 2^32) fit int64 and
 * int32.  Per block: m<<a of even channels, odd channels, y's constant even, odd,
 * then S - 32 as 16 int32.  Returns 0 (no qf) when some channel has no such form. */
static int qparams_fast(FastOp *f, size_t nch, int32_t zp)
{
    int64_t *qf = xcalloc(nch / BLK * QF_WORDS, sizeof *qf, "requantization");
    int post = 0;
    for (size_t c = 0; c < nch; c++) {
        int64_t mlt = f->mult[c], s = f->sh[c], a = s < 32 ? 32 - s : 0, S = s + a;
        if (S > 53 || mlt > (a > 31 ? 0 : (int64_t)INT32_MAX >> a)) {      /* m << a < 2^31 */
            free(qf);
            return 0;
        }
        size_t b = c / BLK, j = c % BLK;
        int64_t *q = qf + b * QF_WORDS;
        q[(j % 2 ? 8 : 0) + j / 2] = mlt << a;
        q[(j % 2 ? 24 : 16) + j / 2] = (f->rnd[c] << a) + ((int64_t)zp << S);
        int32_t ps = (int32_t)(S - 32);
        memcpy((int32_t *)(q + 32) + j, &ps, sizeof ps);
        post |= ps != 0;
    }
    f->qf = qf;
    f->rq32 = 1;
    f->post = post;
    return 1;
}

/* Depthwise (VNNI): where channel c's constants go, see fast_prepare */
static size_t dw_slot(size_t c)
{
    size_t r = c % 64;
    return c - r + r / 4 % 4 * 16 + r / 16 * 4 + r % 4;
}

/* Rows and columns of a conv's input with its padding (pad_input) */
static size_t padded_h(const Op *op, const Op *in)
{
    return (size_t)in->h + (size_t)op->pad_top + (size_t)op->pad_bottom;
}

static size_t padded_w(const Op *op, const Op *in)
{
    return (size_t)in->w + (size_t)op->pad_left + (size_t)op->pad_right;
}

/* Depthwise (AVX2): FastOp's wpair, tap_offset and bias_in from wdw and bias.  In a 16-channel
 * chunk, vpunpcklbw of two taps' input bytes holds channels 0-7, each channel's two taps side by
 * side, and vpunpckhbw channels 8-15: their weights are so, as int16 */
static void dw_pairs_weights(FastOp *f, const Op *op, const Op *in)
{
    const int32_t C = op->c, chunked = C / BLK * BLK, taps = op->kh * op->kw, pairs = (taps + 1) / 2;
    f->wpair = xcalloc((size_t)chunked * (size_t)pairs * 2, sizeof *f->wpair, "depthwise weights");
    f->tap_offset = xmalloc(2 * (size_t)pairs * sizeof *f->tap_offset, "depthwise taps");
    f->bias_in = xmalloc((size_t)chunked * sizeof *f->bias_in, "biases");
    for (int32_t t = 0; t < 2 * pairs; t++) {
        const int32_t tap = t < taps ? t : taps - 1;
        f->tap_offset[t] = ((size_t)(tap / op->kw * op->dil_h) * in->w + (size_t)(tap % op->kw * op->dil_w)) * in->c;
    }
    for (int32_t c = 0; c < chunked; c++) {
        uint32_t wsum = 0;
        for (int32_t t = 0; t < taps; t++)
            wsum += (uint32_t)f->wdw[(size_t)t * C + c];
        f->bias_in[c] = f->bias[c] - (uint32_t)in->zero_point * wsum;
        for (int32_t t = 0; t < taps; t++)
            f->wpair[((size_t)(c / BLK) * (size_t)pairs + (size_t)(t / 2)) * 2 * BLK + (size_t)(c % BLK * 2 + t % 2)]
                = f->wdw[(size_t)t * C + c];
    }
}

/* The packed weights and requantization constants of every conv/linear layer, and the
 * workspace sizes. */
static FastModel *fast_prepare_model(const Model *m)
{
    FastModel *fm = xcalloc(1, sizeof *fm, "fast model");
    fm->n_ops = m->n_ops;
    fm->ops = xcalloc((size_t)m->n_ops, sizeof *fm->ops, "fast ops");
    for (int i = 0; i < m->n_ops; i++) {
        const Op *op = &m->ops[i];
        FastOp *f = &fm->ops[i];
        const Op *in = op->n_inputs ? op_input(m, op, 0) : NULL;
        if (op->kind == OP_AVGPOOL || op->kind == OP_ADAPTIVE_AVGPOOL)
            fm->acc_elems = max_size(fm->acc_elems, (size_t)op->c);
        if (op->kind == OP_MAXPOOL)
            fm->row_bytes = max_size(fm->row_bytes, (size_t)in->w * (size_t)in->c);
        if (!KINDS[op->kind].weighted)
            continue;
        int32_t groups = op->kind == OP_CONV ? op->groups : 1;
        f->cin_g = in->c / groups;
        f->cout_g = op->c / groups;
        f->K = op->k_size;
        f->Kp = (int32_t)round_up((size_t)op->k_size, KSTEP);
        f->d = m->weight_signed ? 0 : 128 - op->w_zero_point;
        const int taps = op->kind == OP_CONV ? op->kh * op->kw : 1;
        /* the input with its padding (pad_input): depthwise and im2col convs */
        const size_t padded = op->kind == OP_CONV ? padded_h(op, in) * padded_w(op, in) * (size_t)in->c : 0;
        if (op->kind == OP_CONV && f->cin_g == 1 && f->cout_g == 1 && groups > 1 && taps <= 64) {
            f->kind = FK_DEPTHWISE;
            if (FAST_VNNI) {            /* the VNNI kernel reads the padded input */
                fm->pad_bytes = max_size(fm->pad_bytes, padded);
            } else {                    /* the C loop the input in place; its weights [tap][C] as int16 */
                fm->dwacc_elems = max_size(fm->dwacc_elems, (size_t)op->c);
                f->wdw = xmalloc((size_t)taps * op->c * sizeof *f->wdw, "depthwise weights");
                for (int32_t c = 0; c < op->c; c++)
                    for (int t = 0; t < taps; t++)
                        f->wdw[(size_t)t * op->c + c] = (int16_t)weight_centered(m, op, c, t);
            }
            /* C loop: channels in order, whole 16-channel vectors.  VNNI: whole 64-channel chunks,
             * channel 64u + 16L + 4j + i in lane 4L + i of vector j (dw_slot), the order in which
             * byte unpacks interleave 4 rows and packs put the results back */
            size_t nch = FAST_VNNI ? ((size_t)op->c + 63) / 64 * 64 : ((size_t)op->c + BLK - 1) / BLK * BLK;
            f->mult = xcalloc(3 * nch, sizeof *f->mult, "requantization");
            f->rnd = f->mult + nch;
            f->sh = f->rnd + nch;
            f->nblk = (int32_t)(nch / BLK);
            f->bias = xcalloc(nch, sizeof *f->bias, "biases");
            const int32_t rg = (op->kh + 3) / 4;      /* groups of 4 kernel rows */
            if (FAST_VNNI) {
                f->w8 = xcalloc(nch / 64 * (size_t)rg * (size_t)op->kw * 256, 1, "depthwise weights");
                fm->dwcols_bytes = max_size(fm->dwcols_bytes, padded_w(op, in) * (size_t)rg * 256);
            }
            for (int32_t c = 0; c < op->c; c++) {
                size_t sl = FAST_VNNI ? dw_slot((size_t)c) : (size_t)c;
                f->mult[sl] = op->multiplier[c];
                f->sh[sl] = op->shift[c];
                f->rnd[sl] = ((int64_t)1 << op->shift[c]) >> 1;
                /* the C loop sums (x - z_x)(w - z_w) onto the bias as it is; VNNI the vpdpbusd form,
                 * w8 = (w - z_w) - d, the bias folded as for GEMM */
                f->bias[sl] = (uint32_t)op_bias(m, op, c);
                if (!FAST_VNNI)
                    continue;
                uint32_t wsum = 0;
                for (int t = 0; t < taps; t++) {
                    int32_t v = weight_centered(m, op, c, t) - f->d;
                    wsum += (uint32_t)v;
                    size_t ky = (size_t)(t / op->kw), kx = (size_t)(t % op->kw);
                    f->w8[((sl / 64 * (size_t)rg + ky / 4) * (size_t)op->kw + kx) * 256 + sl % 64 * 4 + ky % 4] = (int8_t)v;
                }
                f->bias[sl] -= (uint32_t)in->zero_point * (wsum + (uint32_t)f->d * (uint32_t)taps);
            }
            if (FAST_AVX2 && op->c >= BLK)
                dw_pairs_weights(f, op, in);
            qparams(f, nch);
            if (FAST_VNNI || FAST_AVX2)
                qparams_fast(f, nch, op->zero_point);
            continue;
        }
        f->kind = FK_GEMM;
        f->nblk = (f->cout_g + BLK - 1) / BLK;
        f->direct = op->kind == OP_CONV && op->kh == 1 && op->kw == 1 && op->stride_h == 1 && op->stride_w == 1
                    && groups == 1 && f->Kp == f->K;
        if (op->kind == OP_LINEAR)
            f->direct = f->Kp == f->K;
        f->implicit = !f->direct && op->kind == OP_CONV && groups == 1 && op->dil_w == 1;
        f->nseg = f->implicit ? op->kh : 1;
        f->seg_bytes = f->implicit ? op->kw * in->c : f->Kp;
        f->seg_depth = FAST_VNNI_GEMM ? (int32_t)round_up((size_t)f->seg_bytes, 4) : f->seg_bytes;
        f->seg_stride = f->implicit ? (size_t)op->dil_h * padded_w(op, in) * (size_t)in->c : 0;
        if (f->implicit && FAST_VNNI_GEMM)
            f->Kp = f->nseg * f->seg_depth;
        f->wdepth = FAST_AMX ? (int32_t)round_up((size_t)f->Kp, AMX_DEPTH) : f->Kp;
        f->chunk_rows = (int32_t)max_size(CHUNK_UNIT, CHUNK_BYTES / (size_t)f->Kp / CHUNK_UNIT * CHUNK_UNIT);
        if (!f->direct && op->kind == OP_CONV)
            fm->pad_bytes = max_size(fm->pad_bytes, padded);
        if (!FAST_VNNI_GEMM)
            fm->dotrows_elems = max_size(fm->dotrows_elems, MR * (size_t)f->Kp);
        size_t nch = (size_t)groups * f->nblk * BLK;
        if (FAST_VNNI_GEMM)
            f->w8 = xcalloc(nch * (size_t)f->wdepth, 1, "packed weights");
        else
            f->wdot = xcalloc(nch * (size_t)f->Kp, sizeof *f->wdot, "packed weights");
        f->bias = xcalloc(nch, sizeof *f->bias, "biases");
        f->mult = xcalloc(3 * nch, sizeof *f->mult, "requantization");
        f->rnd = f->mult + nch;
        f->sh = f->rnd + nch;
        /* linear: the input is read flat in CHW order; here it is HWC */
        size_t hw = (size_t)in->h * in->w;
        for (int32_t g = 0; g < groups; g++) {
            for (int32_t j = 0; j < f->nblk * BLK; j++) {
                size_t slot = ((size_t)g * f->nblk + (size_t)j / BLK) * BLK + (size_t)j % BLK;  /* = g*nblk*16 + j */
                if (j >= f->cout_g)
                    continue;
                int32_t co = g * f->cout_g + j;
                uint32_t wsum = 0;
                for (int32_t k = 0; k < f->K; k++) {
                    int32_t src;     /* reference column of packed depth k */
                    if (op->kind == OP_CONV) {
                        int32_t ci = k % f->cin_g, t = k / f->cin_g;      /* k = (ky*kw + kx)*cin_g + ci */
                        src = ci * taps + t;
                    } else {
                        size_t pos = (size_t)k / (size_t)in->c, c = (size_t)k % (size_t)in->c;
                        src = (int32_t)(c * hw + pos);
                    }
                    int32_t v = weight_centered(m, op, co, src) - f->d;      /* w8 = (w - z_w) - d */
                    if (FAST_VNNI_GEMM) {
                        /* panel of slot's block, then 4 depths of each of its 16 channels; depth k
                         * where the tiles read it: its segment's, padded to whole depth steps (no
                         * division per weight where nothing is padded: it took longer than the load) */
                        const int32_t kp = f->seg_depth == f->seg_bytes ? k
                                           : k / f->seg_bytes * f->seg_depth + k % f->seg_bytes;
                        f->w8[(slot - (size_t)j % BLK) * (size_t)f->wdepth + (size_t)(kp / 4) * BLK * 4
                              + (size_t)(j % BLK) * 4 + (size_t)(kp % 4)] = (int8_t)v;
                    } else if (FAST_AVX2) {
                        /* the block's panel, then 2 depths of each of its 16 channels */
                        f->wdot[(slot - (size_t)j % BLK) * (size_t)f->Kp + (size_t)k / 2 * 2 * BLK
                                + (size_t)(j % BLK) * 2 + (size_t)k % 2] = (DotWeight)v;
                    } else {
                        const size_t run = DOT_RUN((size_t)f->Kp);
                        f->wdot[slot / 2 * 2 * (size_t)f->Kp + (size_t)k / run * 2 * run + slot % 2 * run
                                + (size_t)k % run] = (DotWeight)v;
                    }
                    wsum += (uint32_t)v;
                }
                uint32_t zx = (uint32_t)in->zero_point;
                f->bias[slot] = (uint32_t)op_bias(m, op, co) - zx * (wsum + (uint32_t)f->d * (uint32_t)f->K)
                                + (uint32_t)ROW_OFFSET * wsum;
                f->mult[slot] = op->multiplier[co];
                f->sh[slot] = op->shift[co];
                f->rnd[slot] = ((int64_t)1 << op->shift[co]) >> 1;
            }
        }
        qparams(f, nch);
        if (FAST_VNNI || FAST_AVX2)
            qparams_fast(f, nch, op->zero_point);
    }
    const Op *last = &m->ops[m->n_ops - 1];
    if (last->h * last->w > 1)
        fm->logits_bytes = op_elems(last);
    return fm;
}

static void fast_release(void *p)
{
    FastModel *fm = p;
    if (!fm)
        return;
    for (int i = 0; fm->ops && i < fm->n_ops; i++) {
        free(fm->ops[i].w8);
        free(fm->ops[i].wdot);
        free(fm->ops[i].bias);
        free(fm->ops[i].mult);
        free(fm->ops[i].qv);
        free(fm->ops[i].qf);
        free(fm->ops[i].wdw);
        free(fm->ops[i].wpair);
        free(fm->ops[i].tap_offset);
        free(fm->ops[i].bias_in);
    }
    free(fm->ops);
    free(fm);
}

/* Bytes between a GEMM's rows of A in cols: Kp and the OVER bytes that copy_over may write past a
 * row, so that rows filled by different threads never overlap */
static size_t cols_stride(const FastOp *f)
{
    return (size_t)f->Kp + OVER;
}

/* The positive number in environment variable `name` (a tuning knob), else `fallback` */
static size_t env_count(const char *name, size_t fallback, const char *unit)
{
    const char *env = getenv(name);
    if (!env)
        return fallback;
    char *end;
    long long v = strtoll(env, &end, 10);
    if (end == env || *end || v < 1)
        fail("%s=%s: not a positive number of %s", name, env, unit);
    return (size_t)v;
}

/* Which ops run in passes of fewer images than the batch, and how many (ws->split, ws->pass).  An
 * op's footprint per image: its inputs, output and padded input.  The ops from the first one after
 * which every op's batch footprint fits PASS_BYTES, or is outweighed by its weights (which a whole
 * batch reads once), run on the whole batch; the ones before it in passes of as many images as fit
 * PASS_BYTES (at least one). */
static void schedule_passes(const Model *m, const FastModel *fm, Workspace *ws)
{
    const size_t pass_bytes = env_count("FPGAI_PASS_BYTES", PASS_BYTES, "bytes");
    const size_t batch = (size_t)ws->batch;
    size_t head = 0;
    ws->split = m->n_ops;
    for (int i = m->n_ops - 1; i >= 0; i--) {
        const Op *op = &m->ops[i];
        const Op *in = op->n_inputs ? op_input(m, op, 0) : NULL;
        const size_t weights = KINDS[op->kind].weighted ? (size_t)op->k_size * (size_t)op->c : 0;
        size_t foot = op_elems(op);
        for (int k = 0; k < op->n_inputs; k++)
            foot += op_elems(op_input(m, op, k));
        if (op->kind == OP_CONV && !fm->ops[i].direct)
            foot += padded_h(op, in) * padded_w(op, in) * (size_t)in->c;
        if (ws->split == i + 1 && (foot * batch <= pass_bytes || weights >= foot * batch))
            ws->split = i;
        else
            head = max_size(head, foot);
    }
    const size_t pass = head ? max_size(pass_bytes / head, 1) : batch;
    ws->pass = pass < batch ? (int)pass : ws->batch;
    if (ws->pass == ws->batch)
        ws->split = 0;
}

/* Only the buffers this model's kernels use, zero-filled once: the GEMM tile reads rowsum
 * even when its factor d is 0 (int8 weights), which changes no result but would read
 * indeterminate values; with every buffer defined the engine is valgrind-clean.  The
 * im2col copies touch up to OVER bytes past the end of a row of cols and of pad (copy_over), an
 * implicit conv's VNNI tile up to 3 past a kernel row; dwcols gets 64 bytes to align to. */
static void *fast_workspace_new(const Model *m, const void *prepared, int batch, int threads)
{
    const FastModel *fm = prepared;
    Workspace *ws = xcalloc(1, sizeof *ws, "workspace");
    ws->batch = batch;
    ws->n_threads = threads;
    schedule_passes(m, fm, ws);
    ws->ops = m->ops;
    ws->tensor = xcalloc((size_t)m->n_ops, sizeof *ws->tensor, "tensors");
    ws->images = xcalloc((size_t)m->n_ops, sizeof *ws->images, "tensors");
    size_t own = 0;                             /* bytes per image after the plan's */
    for (int j = 0; j < ws->split; j++)
        if (m->ops[j].last_reader >= ws->split)
            own += op_elems(&m->ops[j]);
    ws->arena = xcalloc((size_t)batch * (m->arena_bytes + own), 1, "activations");
    own = (size_t)batch * m->arena_bytes;
    for (int j = 0; j < m->n_ops; j++) {
        ws->images[j] = j < ws->split && m->ops[j].last_reader < ws->split ? ws->pass : batch;
        if (j < ws->split && m->ops[j].last_reader >= ws->split) {
            ws->tensor[j] = ws->arena + own;
            own += (size_t)batch * op_elems(&m->ops[j]);
        } else {
            ws->tensor[j] = ws->arena + (size_t)ws->images[j] * m->ops[j].offset;
        }
    }
    /* each GEMM's chunk: its rows of A, never more than the batch's pixels */
    size_t chunk_rows = 0, cols_bytes = 0, amx_bytes = 0;
    for (int i = 0; i < m->n_ops; i++) {
        const FastOp *f = &fm->ops[i];
        if (f->kind != FK_GEMM)
            continue;
        const size_t rows = (size_t)batch * (size_t)m->ops[i].h * (size_t)m->ops[i].w;
        const size_t chunk = rows < (size_t)f->chunk_rows ? rows : (size_t)f->chunk_rows;
        chunk_rows = max_size(chunk_rows, chunk);
        if (!f->direct && !f->implicit)
            cols_bytes = max_size(cols_bytes, chunk * cols_stride(f));
        if (FAST_AMX)
            amx_bytes = max_size(amx_bytes, round_up(chunk, AMX_M) * (size_t)f->wdepth);
    }
    if (amx_bytes)
        ws->amx_a = xcalloc(amx_bytes, 1, "AMX rows");
    ws->amx_rows = env_count("FPGAI_AMX_ROWS", AMX_MIN_ROWS, "rows");
    if (cols_bytes)
        ws->cols = xcalloc(cols_bytes, 1, "im2col scratch");
    if (chunk_rows) {
        ws->rowsum = xcalloc(chunk_rows, sizeof *ws->rowsum, "row sums");
        ws->arow = xcalloc(chunk_rows, sizeof *ws->arow, "row pointers");
    }
    ws->pad_stride = fm->pad_bytes;
    if (fm->pad_bytes)
        ws->pad = xcalloc((size_t)batch * fm->pad_bytes + OVER, 1, "padded input");
    if (fm->logits_bytes)
        ws->logits = xcalloc((size_t)batch * fm->logits_bytes, 1, "logits");
    ws->scratch = xcalloc((size_t)threads, sizeof *ws->scratch, "scratch");
    for (int t = 0; t < threads; t++) {
        Scratch *sc = &ws->scratch[t];
        if (fm->dwcols_bytes)
            sc->dwcols = xcalloc(fm->dwcols_bytes + 64, 1, "depthwise columns");
        if (fm->dwacc_elems)
            sc->dwacc = xcalloc(fm->dwacc_elems, sizeof *sc->dwacc, "depthwise sums");
        if (fm->dotrows_elems)
            sc->dotrows = xcalloc(fm->dotrows_elems, sizeof *sc->dotrows, "dot-product rows");
        if (amx_bytes)          /* an AMX build, a GEMM layer */
            sc->amx_c = xcalloc(AMX_NB * AMX_M * BLK, sizeof *sc->amx_c, "AMX sums");
        if (fm->acc_elems)
            sc->acc = xcalloc(fm->acc_elems, sizeof *sc->acc, "accumulators");
        if (fm->row_bytes)
            sc->row = xcalloc(fm->row_bytes, 1, "maxpool row");
    }
    return ws;
}

static void fast_workspace_free(void *p)
{
    Workspace *ws = p;
    if (!ws)
        return;
    for (int t = 0; ws->scratch && t < ws->n_threads; t++) {
        free(ws->scratch[t].dwcols);
        free(ws->scratch[t].dwacc);
        free(ws->scratch[t].dotrows);
        free(ws->scratch[t].amx_c);
        free(ws->scratch[t].acc);
        free(ws->scratch[t].row);
    }
    free(ws->scratch);
    free(ws->tensor);
    free(ws->images);
    free(ws->arena);
    free(ws->cols);
    free(ws->pad);
    free(ws->rowsum);
    free(ws->amx_a);
    free(ws->arow);
    free(ws->logits);
    free(ws);
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
        dst[l] = requantize(acc[l], f->mult[slot + l], (int)f->sh[slot + l], op->zero_point, op->qmin, op->qmax);
}

#if FAST_VNNI
/* requant_v, requant_fast and dw_chunk (the depthwise conv's) at two widths: _16 on zmm, _8 on ymm */
#define LANES 16
#include "kernels_fast_vnni.inc"
#undef LANES
#define LANES 8
#include "kernels_fast_vnni.inc"
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
    const int32_t d = f->d, post = f->post;     /* locals: the byte stores may alias any field */
    const __m512i dv = _mm512_set1_epi32(d);
    if (f->rq32) {
        const __m512i order = _mm512_loadu_si512(pack_order);
        const __m512i lo = _mm512_set1_epi8((char)op->qmin), hi = _mm512_set1_epi8((char)op->qmax);
        const int64_t *q = f->qf + slot / BLK * QF_WORDS;
        /* every result before the first store: a block's constants are then loaded once, not once
         * per pixel (a byte store may alias them) */
        __m512i r[NBMAX][MR];
        for (int b = 0; b < NBMAX; b++)
            for (int p = 0; p < MP; p++) {
                __m512i v = acc.v[b < NB ? b : 0][p];
                if (d)
                    v = _mm512_add_epi32(v, _mm512_mullo_epi32(dv, _mm512_set1_epi32(rowsum[p])));
                r[b][p] = b < NB ? requant_fast_16(v, q + (size_t)b * QF_WORDS, post) : r[0][p];
            }
        for (int p = 0; p < MP; p++)
            store_packed(r[0][p], r[1][p], r[2][p], r[3][p], (NB - 1) * BLK + last_n, order, lo, hi,
                         out + (size_t)p * ldc);
        return;
    }
    for (int b = 0; b < NB; b++) {
        for (int p = 0; p < MP; p++) {
            __m512i v = acc.v[b][p];
            if (f->d)
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
    const int32_t nseg = f->nseg, seg_k = f->seg_depth / 4;
    const size_t seg_stride = f->seg_stride;
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
static void tile(int nb, int mp, const uint8_t *const *arow, const int32_t *rowsum, DotRow *dotrows, const FastOp *f,
                 size_t slot, int last_n, const Op *op, uint8_t *out, size_t ldc)
{
    (void)dotrows;          /* the other builds' */
    const int8_t *B = f->w8 + slot * (size_t)f->wdepth;
    const size_t bstride = (size_t)f->wdepth * BLK;
    switch (nb * 8 + mp) {
    TILE_ROW(1) TILE_ROW(2) TILE_ROW(3) TILE_ROW(4)
    default: break;
    }
}
#else
/* Every build but VNNI: AVX-VNNI and AVX2 run one broadcast tile (tile_ymm) of one block of 16
 * channels in two ymm a pixel, as VNNI's; NEON and C99 a dot-product tile of two channels. */
#if FAST_AVX2
/* requant_fast's form in 8 int32 lanes: me / mo the multipliers of the even / odd lanes' channels
 * (m << a in each 64-bit lane), ce / co their constants, ps the post shifts (where post); returns
 * zp + the requantized value, unclamped. */
static inline __m256i requant_fast8(__m256i acc, __m256i me, __m256i mo, __m256i ce, __m256i co, __m256i ps, int post)
{
    const __m256i e = _mm256_add_epi64(_mm256_mul_epi32(acc, me), ce);
    const __m256i o = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(acc, 32), mo), co);
    const __m256i h = _mm256_blend_epi32(_mm256_srli_epi64(e, 32), o, 0xAA);
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
static inline __m128i requant_pack16(__m256i v_lo, __m256i v_hi, const int64_t *q, int post, __m128i qmin,
                                     __m128i qmax)
{
    /* channels 0-7 take the block's 64-bit words 0-3 of each kind, channels 8-15 words 4-7 */
    const __m256i *ps = (const __m256i *)(const void *)(q + 32);
    v_lo = requant_fast8(v_lo, _mm256_loadu_si256((const void *)q), _mm256_loadu_si256((const void *)(q + 8)),
                         _mm256_loadu_si256((const void *)(q + 16)), _mm256_loadu_si256((const void *)(q + 24)),
                         _mm256_loadu_si256(ps), post);
    v_hi = requant_fast8(v_hi, _mm256_loadu_si256((const void *)(q + 4)), _mm256_loadu_si256((const void *)(q + 12)),
                         _mm256_loadu_si256((const void *)(q + 20)), _mm256_loadu_si256((const void *)(q + 28)),
                         _mm256_loadu_si256(ps + 1), post);
    /* packs: int16 channels 0-3, 8-11 | 4-7, 12-15; packus: bytes 0-3, 8-11, 4-7, 12-15; the
     * dword shuffle puts them in order.  The saturations clamp to 0..255, then to qmin..qmax. */
    const __m256i w = _mm256_packs_epi32(v_lo, v_hi);
    const __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    return _mm_min_epu8(_mm_max_epu8(_mm_shuffle_epi32(b, _MM_SHUFFLE(3, 1, 2, 0)), qmin), qmax);
}

/* A register tile's sums, one block of 16 channels (slot..) x MP pixels, each pixel's two ymm
 * (channels 0-7: acc[p][0], 8-15: acc[p][1]), the bias included: d * rowsum added, requantized in 8
 * lanes (requant_fast8 on f->qf where f->rq32, else requantize() per channel), pixel p's first n
 * channels stored at out + p * ldc. */
static inline __attribute__((always_inline)) void store_tile16(const int MP, const __m256i acc[][2],
                                                               const int32_t *rowsum, const FastOp *f, size_t slot,
                                                               int n, const Op *op, uint8_t *out, size_t ldc)
{
    const int32_t d = f->d, post = f->post;     /* locals: the byte stores may alias any field */
    const __m256i dv = _mm256_set1_epi32(d);
    const int64_t *q = f->rq32 ? f->qf + slot / BLK * QF_WORDS : NULL;
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
        const __m128i b = requant_pack16(v_lo, v_hi, q, post, qmin, qmax);
        if (n == BLK) {
            _mm_storeu_si128((void *)dst, b);
        } else {
            uint8_t bytes[BLK];
            _mm_storeu_si128((void *)bytes, b);
            memcpy(dst, bytes, (size_t)n);
        }
    }
}
#endif

#if !FAST_AVXVNNI
/* The mp <= count pixels' rows of A into dotrows, as DotRow less ROW_OFFSET, each Kp long (an
 * implicit conv's segments one after the other); rows[p] where each is.  Past mp: row 0 again. */
static void convert_rows(int mp, int count, const uint8_t *const *arow, const FastOp *f, DotRow *dotrows,
                         const DotRow *rows[MR])
{
    const size_t Kp = (size_t)f->Kp;
    for (int p = 0; p < count; p++) {
        DotRow *row = dotrows + (size_t)p * Kp;
        const uint8_t *a = arow[p < mp ? p : 0];
        const size_t seg = (size_t)f->seg_bytes, K = (size_t)f->nseg * seg;
        for (size_t g = 0; g < (size_t)f->nseg; g++) {
            const uint8_t *src = a + g * f->seg_stride;
            DotRow *dst = row + g * seg;
            for (size_t j = 0; j < seg; j++)        /* one index: GCC vectorizes it */
                dst[j] = (DotRow)(src[j] - ROW_OFFSET);
        }
        for (size_t k = K; k < Kp; k++)     /* an implicit conv's depth past K: zero weights */
            row[k] = 0;
        rows[p] = row;
    }
}
#endif

#if FAST_AVX2
/* The ymm register tile (AVX-VNNI, AVX2): one block of 16 channels x MP <= MR pixels, their rows
 * at arow read as bytes (nseg segments of seg_k 4-byte depth steps, seg_stride apart), the whole
 * depth; each pixel's sums two ymm (channels 0-7: lo, 8-15: hi), as are the block's weights at a
 * step (WSTEP bytes of B), so 2 * MR sums + 2 weights + a broadcast (+ AVX2's product) fill the 16
 * ymm.  AVX-VNNI: 4 u8 depths a step against w8's [16][4] bytes (vpdpbusd).  AVX2: the rows as
 * int16 (convert_rows), 2 depths a step against wdot's [16][2] bytes widened as loaded, vpmaddwd
 * summing each channel's 2 exact products into its int32 lane: no horizontal sums (u8 x s8
 * vpmaddubsw would saturate). */
#if FAST_AVXVNNI
#define WSTEP 64
#define YMM_PRODUCTS(acc, av, w) dpbusd256(acc, av, w)
#else
#define WSTEP 32
#define YMM_PRODUCTS(acc, av, w) _mm256_add_epi32(acc, _mm256_madd_epi16(av, w))
#endif
static inline __attribute__((always_inline)) void tile_ymm(const int MP, const uint8_t *const *arow, int32_t nseg,
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
    for (int32_t g = 0; g < nseg; g++, A0 += seg_stride, A1 += seg_stride, A2 += seg_stride, A3 += seg_stride,
         A4 += seg_stride, A5 += seg_stride, B += (size_t)seg_k * WSTEP)
    for (int32_t s = 0; s < seg_k; s++) {
        const int8_t *w = B + (size_t)s * WSTEP;
#if FAST_AVXVNNI
        __m256i w_lo = _mm256_loadu_si256((const void *)w), w_hi = _mm256_loadu_si256((const void *)(w + 32));
#else
        __m256i w_lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const void *)w));
        __m256i w_hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const void *)(w + 16)));
#endif
        prefetch_weights(w);
        /* in registers, as in tile_vnni: otherwise GCC folds the loads into every vpdpbusd
         * (AVX-VNNI) */
        __asm__("" : "+x"(w_lo), "+x"(w_hi));
#define TILE_PIX(p)                                                         \
        if (MP > p) {                                                       \
            int32_t a;                                                      \
            memcpy(&a, A##p + (size_t)s * 4, 4);                            \
            const __m256i av = _mm256_set1_epi32(a);                        \
            lo##p = YMM_PRODUCTS(lo##p, av, w_lo);                          \
            hi##p = YMM_PRODUCTS(hi##p, av, w_hi);                          \
        }
        TILE_PIX(0) TILE_PIX(1) TILE_PIX(2) TILE_PIX(3) TILE_PIX(4) TILE_PIX(5)
#undef TILE_PIX
    }
    const __m256i acc[MR][2] = {{lo0, hi0}, {lo1, hi1}, {lo2, hi2}, {lo3, hi3}, {lo4, hi4}, {lo5, hi5}};
    store_tile16(MP, acc, rowsum, f, slot, n, op, out, ldc);
}
#undef WSTEP
#undef YMM_PRODUCTS

#define TILE_MP(mp) case mp: \
    tile_ymm(mp, rows, nseg, seg_k, seg_stride, B, rowsum, f, slot, b == nb - 1 ? last_n : BLK, op, out, ldc); break;

/* nb blocks of 16 channels from slot (the last one's first last_n) x mp pixels.  AVX-VNNI reads
 * the rows of A in place (NBMAX = 1 block); AVX2 converts them into dotrows once */
static void tile(int nb, int mp, const uint8_t *const *arow, const int32_t *rowsum, DotRow *dotrows, const FastOp *f,
                 size_t slot, int last_n, const Op *op, uint8_t *out, size_t ldc)
{
#if FAST_AVXVNNI
    (void)dotrows;                  /* the AVX2, NEON and C99 tiles' */
    const uint8_t *const *rows = arow;
    const int32_t nseg = f->nseg, seg_k = f->seg_depth / 4;
    const size_t seg_stride = f->seg_stride;
    const int8_t *B = f->w8 + slot * (size_t)f->wdepth;
    const size_t bstride = (size_t)f->wdepth * BLK;
#else
    const size_t Kp = (size_t)f->Kp;
    const DotRow *dot[MR];
    convert_rows(mp, mp, arow, f, dotrows, dot);
    const uint8_t *rows[MR];
    for (int p = 0; p < mp; p++)
        rows[p] = (const uint8_t *)dot[p];
    const int32_t nseg = 1, seg_k = (int32_t)(Kp / 2);
    const size_t seg_stride = 0;
    const int8_t *B = f->wdot + slot * Kp;
    const size_t bstride = Kp * BLK;
#endif
    for (int b = 0; b < nb; b++, slot += BLK, out += BLK, B += bstride) {
        switch (mp) {
        TILE_MP(1) TILE_MP(2) TILE_MP(3) TILE_MP(4) TILE_MP(5) TILE_MP(6)     /* mp = 1..MR */
        default: break;
        }
    }
}
#else
/* The dot-product tile (NEON, C99): sums[p][l] = sum_k a[p][k] * w[l][k] for 4 pixel rows a (DotRow,
 * converted once per tile) and a channel pair's weights w (wdot's pair panel), each an exact dot
 * product, wrapping modulo 2^32 as the GEMM's sums do. */
#if FAST_NEON
/* sdot: 4 int8 products summed into each int32 lane, 16 depths a step */
static inline void dot_2x4(const DotRow *const a[MR], const DotWeight *w, size_t Kp, uint32_t sums[MR][2])
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
#else
/* plain C that GCC vectorizes as pmaddwd (SSE2 at -O3 without -march); the pair's weights are two
 * rows of Kp (DOT_RUN), since a reduction per 16 depths would not vectorize as well */
static inline void dot_2x4(const DotRow *const a[MR], const DotWeight *w, size_t Kp, uint32_t sums[MR][2])
{
    const DotWeight *w0 = w, *w1 = w + Kp;
    const DotRow *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
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
#endif

/* Register tile: nb blocks of 16 channels from slot (the last one's first last_n) x mp <= MR
 * pixels; the pixels' rows of A into dotrows once, then 2 channels at a time. */
static void tile(int nb, int mp, const uint8_t *const *arow, const int32_t *rowsum, DotRow *dotrows, const FastOp *f,
                 size_t slot, int last_n, const Op *op, uint8_t *out, size_t ldc)
{
    const size_t Kp = (size_t)f->Kp;
    const int n = (nb - 1) * BLK + last_n;
    const DotRow *rows[MR];
    convert_rows(mp, MR, arow, f, dotrows, rows);
    for (int c = 0; c < n; c += 2) {          /* a block's padding channels have zero weights */
        uint32_t sums[MR][2];
        dot_2x4(rows, f->wdot + (slot + (size_t)c) * Kp, Kp, sums);
        for (int p = 0; p < mp; p++) {
            int32_t res[2];
            for (int l = 0; l < 2; l++)
                res[l] = u32_to_i32(sums[p][l] + f->bias[slot + (size_t)(c + l)] + (uint32_t)f->d * (uint32_t)rowsum[p]);
            requant_store(res, f, slot + (size_t)c, n - c < 2 ? 1 : 2, op, out + (size_t)p * ldc + (size_t)c);
        }
    }
}
#endif /* FAST_AVX2 */
#endif

/* The conv input x (HWC) with its padding, which holds z_x, into pb. */
static void pad_input(const Op *op, const Op *in, const uint8_t *x, uint8_t *pb)
{
    const size_t C = (size_t)in->c, Wp = padded_w(op, in);
    const int zx = in->zero_point;
    memset(pb, zx, (size_t)op->pad_top * Wp * C);
    pb += (size_t)op->pad_top * Wp * C;
    for (int32_t iy = 0; iy < in->h; iy++) {
        memset(pb, zx, (size_t)op->pad_left * C);
        memcpy(pb + (size_t)op->pad_left * C, x + (size_t)iy * in->w * C, (size_t)in->w * C);
        memset(pb + (size_t)(op->pad_left + in->w) * C, zx, (size_t)op->pad_right * C);
        pb += Wp * C;
    }
    memset(pb, zx, (size_t)op->pad_bottom * Wp * C);
}

/* Each of the n images' input (x: HWC, one after the other) with its padding into ws->pad */
static void pad_inputs(const Op *op, const Op *in, const uint8_t *x, const Workspace *ws, int n)
{
    PARALLEL_FOR_IF(n > 1)
    for (int b = 0; b < n; b++)
        pad_input(op, in, x + (size_t)b * op_elems(in), ws->pad + (size_t)b * ws->pad_stride);
}

/* Where rows lo .. hi - 1 (row r: image r / P, pixel r % P) of group g's kernel windows start in
 * the padded inputs, into corner[0 .. hi - lo - 1].  The pixel is stepped row by row: no division
 * per row. */
static void window_corners(const Op *op, const Op *in, const FastOp *f, const Workspace *ws, int32_t g, size_t lo,
                           size_t hi, const uint8_t **corner)
{
    const size_t P = (size_t)op->h * op->w, C = (size_t)in->c, Wp = padded_w(op, in);
    size_t image = lo / P, oy = lo % P / (size_t)op->w, ox = lo % P % (size_t)op->w;
    for (size_t r = lo; r < hi; r++) {
        corner[r - lo] = ws->pad + image * ws->pad_stride + (size_t)g * f->cin_g
                         + (oy * op->stride_h * Wp + ox * op->stride_w) * C;
        if (++ox == (size_t)op->w) {
            ox = 0;
            if (++oy == (size_t)op->h) {
                oy = 0;
                image++;
            }
        }
    }
}

/* Row r of an im2col conv's A (grouped, or taps dil_w apart: the others are implicit) from its
 * window's corner in the padded input: cin_g bytes per tap */
static void im2col_row(const Op *op, const Op *in, const FastOp *f, const uint8_t *corner, uint8_t *row)
{
    const size_t C = (size_t)in->c, Wp = padded_w(op, in), tap = (size_t)op->dil_w * C, span = (size_t)f->cin_g;
    uint8_t *dst = row;
    for (int32_t ky = 0; ky < op->kh; ky++) {
        const uint8_t *src = corner + (size_t)ky * op->dil_h * Wp * C;
        for (int32_t kx = 0; kx < op->kw; kx++, dst += span)
            copy_over(dst, src + (size_t)kx * tap, span);
    }
    memset(dst, 0, (size_t)f->Kp - (size_t)f->K);
}

/* One chunk of a GEMM's rows (of group g): where its rows of A are and where its outputs go */
typedef struct {
    const Op *op, *in;
    const FastOp *f;
    const uint8_t *x;           /* the layer's input, all the images */
    size_t r0, mc;              /* the chunk: rows r0 .. r0 + mc - 1 of all the images' pixels */
    int32_t g;
    const uint8_t *A;           /* its first row of A */
    size_t lda;
    uint8_t *out;               /* its first row's output, group g's first channel */
    int amx;                    /* on AMX tiles (its rows of A packed into ws->amx_a), else the build's own */
} GemmChunk;

#if FAST_AMX
/* The tile instructions: AMX's, or in the test twin (FAST_AMX_EMULATE) the same in C on each
 * thread's copy of the tile registers.  GCC's AMX intrinsics are asm statements that do not say
 * which memory they read or write: memory_barrier() keeps the C stores and loads around them in
 * place. */
#define memory_barrier() __asm__ __volatile__("" ::: "memory")
#ifdef FAST_AMX_EMULATE
static __thread uint8_t emu_tile[8][AMX_PIX][AMX_DEPTH];

static void emu_load(int t, const void *base, size_t stride)
{
    for (int r = 0; r < AMX_PIX; r++)
        memcpy(emu_tile[t][r], (const uint8_t *)base + (size_t)r * stride, AMX_DEPTH);
}

static void emu_store(int t, void *base, size_t stride)
{
    for (int r = 0; r < AMX_PIX; r++)
        memcpy((uint8_t *)base + (size_t)r * stride, emu_tile[t][r], AMX_DEPTH);
}

/* tdpbusd: C[m][n] += sum over k < 16, i < 4 of A[m][4k + i] (u8) * B[k][4n + i] (s8), modulo 2^32 */
static void emu_dpbusd(int c, int a, int b)
{
    uint32_t sum[AMX_PIX][BLK];
    memcpy(sum, emu_tile[c], sizeof sum);
    for (int m = 0; m < AMX_PIX; m++)
        for (int k = 0; k < AMX_DEPTH; k++) {
            const int32_t x = emu_tile[a][m][k];
            const uint8_t *w = &emu_tile[b][k / 4][k % 4];
            for (int n = 0; n < BLK; n++)
                sum[m][n] += (uint32_t)(x * (int32_t)(int8_t)w[4 * n]);
        }
    memcpy(emu_tile[c], sum, sizeof sum);
}
#define TILE_CONFIG(cfg) (void)(cfg)
#define TILE_RELEASE() ((void)0)
#define TILE_ZERO(t) memset(emu_tile[t], 0, sizeof emu_tile[t])
#define TILE_LOAD(t, base, stride) emu_load(t, base, stride)
#define TILE_STORE(t, base, stride) emu_store(t, base, stride)
#define TILE_DPBUSD(c, a, b) emu_dpbusd(c, a, b)
#else
#define TILE_CONFIG(cfg) _tile_loadconfig(cfg)
#define TILE_RELEASE() _tile_release()
#define TILE_ZERO(t) _tile_zero(t)
#define TILE_LOAD(t, base, stride) _tile_loadd(t, base, stride)
#define TILE_STORE(t, base, stride) _tile_stored(t, base, stride)
#define TILE_DPBUSD(c, a, b) _tile_dpbusd(c, a, b)
#endif

/* ldtilecfg's operand, palette 1: every tile 16 rows of 64 bytes */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

static const TileConfig TILES = {1, 0, {0}, {AMX_DEPTH, AMX_DEPTH, AMX_DEPTH, AMX_DEPTH, AMX_DEPTH, AMX_DEPTH, AMX_DEPTH,
                                            AMX_DEPTH}, {AMX_PIX, AMX_PIX, AMX_PIX, AMX_PIX, AMX_PIX, AMX_PIX, AMX_PIX, AMX_PIX}};

/* n bytes from src to dst in 64-byte vectors, the last one masked: nothing read or written past n
 * (a call of memcpy per segment took about as long as the AMX tiles that read them) */
static inline void copy_64(uint8_t *dst, const uint8_t *src, size_t n)
{
    size_t k = 0;
    for (; k + 64 <= n; k += 64)
        _mm512_storeu_si512(dst + k, _mm512_loadu_si512(src + k));
    if (k < n) {
        const __mmask64 m = ((__mmask64)1 << (n - k)) - 1;
        _mm512_mask_storeu_epi8(dst + k, m, _mm512_maskz_loadu_epi8(m, src + k));
    }
}

/* Rows lo .. hi - 1 of the chunk's A packed for the AMX tiles, wdepth bytes apart: each row's
 * segments, seg_depth bytes each (as the VNNI tile reads them).  The bytes from Kp to wdepth keep
 * whatever an earlier layer left there (the buffer starts zeroed): they meet zero weights. */
static void amx_pack(const GemmChunk *ch, const Workspace *ws, size_t lo, size_t hi)
{
    const FastOp *f = ch->f;
    const size_t seg = (size_t)f->seg_depth;
    for (size_t r = lo; r < hi; r++)
        for (int32_t g = 0; g < f->nseg; g++)
            copy_64(ws->amx_a + r * (size_t)f->wdepth + (size_t)g * seg, ws->arow[r] + (size_t)g * f->seg_stride, seg);
}

/* Up to MR pixels' sums of an AMX register tile (c: [block][pixel][16]) plus the bias, stored */
static inline __attribute__((always_inline)) void amx_store_pixels(const int NB, const int MP, const int32_t *c,
                                                                   const int32_t *rowsum, const FastOp *f,
                                                                   size_t slot, int last_n, const Op *op,
                                                                   uint8_t *out, size_t ldc)
{
    TileSums acc;
    for (int b = 0; b < NBMAX; b++)
        for (int p = 0; p < MR; p++)
            acc.v[b][p] = b < NB && p < MP ? _mm512_add_epi32(_mm512_loadu_si512(c + ((size_t)b * AMX_M + p) * BLK),
                                                            _mm512_loadu_si512(f->bias + slot + (size_t)b * BLK))
                                         : _mm512_setzero_si512();
    tile_store(NB, MP, acc, rowsum, f, slot, last_n, op, out, ldc);
}

#define AMX_STORE(nb, mp) case (nb) * 8 + (mp): \
    amx_store_pixels(nb, mp, c + p * BLK, rowsum + p, f, slot, last_n, op, out + p * ldc, ldc); break;

/* An AMX register tile's mp pixels x nb blocks, MR pixels at a time */
static void amx_store(int nb, size_t mp, const int32_t *c, const int32_t *rowsum, const FastOp *f, size_t slot,
                      int last_n, const Op *op, uint8_t *out, size_t ldc)
{
    for (size_t p = 0; p < mp; p += MR)
        switch (nb * 8 + (mp - p < MR ? (int)(mp - p) : MR)) {
        AMX_STORE(1, 1) AMX_STORE(1, 2) AMX_STORE(1, 3) AMX_STORE(1, 4)
        AMX_STORE(2, 1) AMX_STORE(2, 2) AMX_STORE(2, 3) AMX_STORE(2, 4)
        default: break;
        }
}

/* The chunk's AMX register tiles (32 pixels x 2 blocks) of block pairs bg_lo .. bg_hi - 1 x pixel
 * tiles pt_lo .. pt_hi - 1, blocks outermost; c: the thread's sums */
static void amx_tiles(const GemmChunk *ch, const Workspace *ws, int32_t bg_lo, int32_t bg_hi, size_t pt_lo,
                      size_t pt_hi, int32_t *c)
{
    const FastOp *f = ch->f;
    const size_t wdepth = (size_t)f->wdepth, ldc = (size_t)ch->op->c;
    TILE_CONFIG(&TILES);
    memory_barrier();           /* the packed rows */
    for (int32_t b0 = bg_lo * AMX_NB; b0 < bg_hi * AMX_NB; b0 += AMX_NB) {
        const int nb = f->nblk - b0 < AMX_NB ? f->nblk - b0 : AMX_NB;
        const int last_n = f->cout_g - (b0 + nb - 1) * BLK < BLK ? f->cout_g - (b0 + nb - 1) * BLK : BLK;
        const size_t slot = ((size_t)ch->g * f->nblk + (size_t)b0) * BLK;
        const int8_t *B0 = f->w8 + slot * wdepth, *B1 = B0 + wdepth * BLK;
        for (size_t p0 = pt_lo * AMX_M; p0 < pt_hi * AMX_M && p0 < ch->mc; p0 += AMX_M) {
            const uint8_t *A = ws->amx_a + p0 * wdepth;
            TILE_ZERO(0);
            TILE_ZERO(1);
            TILE_ZERO(2);
            TILE_ZERO(3);
            for (size_t k = 0; k < wdepth; k += AMX_DEPTH) {     /* depth k: a block's byte 16k */
                TILE_LOAD(4, A + k, wdepth);
                TILE_LOAD(5, A + AMX_PIX * wdepth + k, wdepth);
                TILE_LOAD(6, B0 + k * BLK, AMX_DEPTH);
                TILE_DPBUSD(0, 4, 6);
                TILE_DPBUSD(1, 5, 6);
                if (nb > 1) {
                    TILE_LOAD(7, B1 + k * BLK, AMX_DEPTH);
                    TILE_DPBUSD(2, 4, 7);
                    TILE_DPBUSD(3, 5, 7);
                }
            }
            memory_barrier();   /* the last tile's sums read */
            TILE_STORE(0, c, BLK * sizeof *c);
            TILE_STORE(1, c + AMX_PIX * BLK, BLK * sizeof *c);
            TILE_STORE(2, c + AMX_M * BLK, BLK * sizeof *c);
            TILE_STORE(3, c + (AMX_M + AMX_PIX) * BLK, BLK * sizeof *c);
            memory_barrier();   /* ... and these written */
            amx_store(nb, ch->mc - p0 < AMX_M ? ch->mc - p0 : AMX_M, c, ws->rowsum + p0, f, slot, last_n, ch->op,
                      ch->out + p0 * ldc + (size_t)b0 * BLK, ldc);
        }
    }
    TILE_RELEASE();
}
#endif

/* Rows lo .. hi - 1 of the chunk's A (im2col, or a linear layer's input padded to Kp; in place
 * for the others) and their sums */
static void fill_rows(const GemmChunk *ch, Workspace *ws, size_t lo, size_t hi)
{
    const FastOp *f = ch->f;
    const uint8_t **arow = ws->arow;
    if (ch->op->kind == OP_CONV && !f->direct) {
        window_corners(ch->op, ch->in, f, ws, ch->g, ch->r0 + lo, ch->r0 + hi, arow + lo);
        for (size_t r = lo; r < hi && !f->implicit; r++) {
            im2col_row(ch->op, ch->in, f, arow[r], ws->cols + r * ch->lda);
            arow[r] = ws->cols + r * ch->lda;
        }
    } else {
        for (size_t r = lo; r < hi; r++) {
            arow[r] = ch->A + r * ch->lda;
            if (!f->direct) {               /* a linear layer, K not a multiple of KSTEP */
                memcpy(ws->cols + r * ch->lda, ch->x + (ch->r0 + r) * op_elems(ch->in), (size_t)f->K);
                memset(ws->cols + r * ch->lda + f->K, 0, (size_t)f->Kp - (size_t)f->K);
            }
        }
    }
    if (f->d) {
        for (size_t r = lo; r < hi; r++) {
            uint32_t s = 0;
            for (int32_t g = 0; g < f->nseg; g++)
                for (int32_t k = 0; k < f->seg_bytes; k++)
                    s += arow[r][(size_t)g * f->seg_stride + (size_t)k];
            ws->rowsum[r] = (int32_t)s;     /* <= 255 * K < 2^31 (K < 2^23 in practice) */
        }
    }
#if FAST_AMX
    if (ch->amx)
        amx_pack(ch, ws, lo, hi);
#endif
}

/* The chunk's register tiles of NBMAX-block groups bg_lo .. bg_hi - 1 x pixel tiles pt_lo ..
 * pt_hi - 1 (AMX: its own tiles' groups and pixel tiles), channel blocks outermost: a weight panel
 * stays in cache over the pixels; sc: the thread's scratch */
static void gemm_tiles(const GemmChunk *ch, const Workspace *ws, int32_t bg_lo, int32_t bg_hi, size_t pt_lo,
                       size_t pt_hi, const Scratch *sc)
{
    const FastOp *f = ch->f;
#if FAST_AMX
    if (ch->amx) {
        amx_tiles(ch, ws, bg_lo, bg_hi, pt_lo, pt_hi, sc->amx_c);
        return;
    }
#endif
    for (int32_t b0 = bg_lo * NBMAX; b0 < bg_hi * NBMAX; b0 += NBMAX) {
        const int nb = f->nblk - b0 < NBMAX ? f->nblk - b0 : NBMAX;
        int last_n = f->cout_g - (b0 + nb - 1) * BLK;
        if (last_n > BLK)
            last_n = BLK;
        for (size_t p0 = pt_lo * MR; p0 < pt_hi * MR && p0 < ch->mc; p0 += MR) {
            const int mp = ch->mc - p0 < MR ? (int)(ch->mc - p0) : MR;
            tile(nb, mp, ws->arow + p0, ws->rowsum + p0, sc->dotrows, f, ((size_t)ch->g * f->nblk + b0) * BLK,
                 last_n, ch->op, ch->out + p0 * ch->op->c + (size_t)b0 * BLK, (size_t)ch->op->c);
        }
    }
}

/* A conv (any groups but depthwise) or linear layer on n images; x and out are HWC, the images one
 * after the other.  All the images' pixels are the GEMM's rows, in chunks: per chunk, its rows of A
 * (im2col, or the input in place; AMX: packed) and their sums, then every tile of channels x pixels.
 * The threads split a chunk by rows where it has a tile of pixels for each (each fills its rows,
 * then runs their tiles: no wait in between), else by tiles of channel blocks x pixels once the
 * rows are filled. */
static void fast_gemm(const Op *op, const Op *in, const FastOp *f, const uint8_t *x, uint8_t *out, Workspace *ws, int n)
{
    const int32_t groups = op->kind == OP_CONV ? op->groups : 1;
    const size_t rows = (size_t)n * op->h * op->w;
    if (!f->direct && op->kind == OP_CONV)
        pad_inputs(op, in, x, ws, n);
    const int parts = ws->n_threads;
    for (size_t r0 = 0; r0 < rows; r0 += (size_t)f->chunk_rows) {
        const size_t mc = rows - r0 < (size_t)f->chunk_rows ? rows - r0 : (size_t)f->chunk_rows;
        const int amx = FAST_AMX && mc >= ws->amx_rows;
        const size_t mr = amx ? AMX_M : MR;                 /* a tile's pixels and blocks */
        const int32_t nbt = amx ? AMX_NB : NBMAX;
        const size_t pixel_tiles = (mc + mr - 1) / mr;
        const int32_t block_groups = (f->nblk + nbt - 1) / nbt;
        for (int32_t g = 0; g < groups; g++) {
            const size_t lda = f->direct ? (size_t)f->Kp : cols_stride(f);
            const GemmChunk ch = {op, in, f, x, r0, mc, g, f->direct ? x + r0 * lda : ws->cols, lda,
                                  out + r0 * op->c + (size_t)g * f->cout_g, amx};
            if (pixel_tiles >= (size_t)parts) {
                PARALLEL_FOR_IF(parts > 1)
                for (int w = 0; w < parts; w++) {
                    const size_t pt_lo = share_start(pixel_tiles, parts, w), pt_hi = pt_lo + share_size(pixel_tiles, parts, w);
                    fill_rows(&ch, ws, pt_lo * mr, pt_hi * mr < mc ? pt_hi * mr : mc);
                    gemm_tiles(&ch, ws, 0, block_groups, pt_lo, pt_hi, &ws->scratch[thread_id()]);
                }
            } else {
                /* fewer than a tile of rows a thread: the rows filled first, then each thread a share
                 * of the (block group, pixel tile) pairs, block groups outermost */
                fill_rows(&ch, ws, 0, mc);
                const size_t pairs = (size_t)block_groups * pixel_tiles;
                PARALLEL_FOR_IF(parts > 1 && pairs > 1)
                for (int w = 0; w < parts; w++) {
                    const size_t hi = share_start(pairs, parts, w) + share_size(pairs, parts, w);
                    for (size_t i = share_start(pairs, parts, w); i < hi;) {
                        const size_t pt = i % pixel_tiles, n = hi - i < pixel_tiles - pt ? hi - i : pixel_tiles - pt;
                        const int32_t bg = (int32_t)(i / pixel_tiles);
                        gemm_tiles(&ch, ws, bg, bg + 1, pt, pt + n, &ws->scratch[thread_id()]);
                        i += n;
                    }
                }
            }
        }
    }
}

/* ---- depthwise conv, maxpool, avgpool, add (HWC) ------------------------- */

#if FAST_VNNI
/* Output row oy of one image */
static void dw_row(const Op *op, const Op *in, const FastOp *f, const uint8_t *pad, int32_t oy, Scratch *sc,
                   uint8_t *out)
{
    const size_t Wpad = padded_w(op, in);
    for (size_t c0 = 0; c0 < (size_t)op->c; c0 += 64) {
        const int rg = (op->kh + 3) / 4, last32 = (size_t)op->c - c0 <= 32;     /* ymm: half the work */
        if (op->kw == 3 && rg == 1 && last32)
            dw_chunk_8(3, 1, op, f, Wpad, c0, oy, pad, sc->dwcols, out);
        else if (op->kw == 3 && rg == 1)
            dw_chunk_16(3, 1, op, f, Wpad, c0, oy, pad, sc->dwcols, out);
        else if (last32)
            dw_chunk_8(op->kw, rg, op, f, Wpad, c0, oy, pad, sc->dwcols, out);
        else
            dw_chunk_16(op->kw, rg, op, f, Wpad, c0, oy, pad, sc->dwcols, out);
    }
}
#else
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

/* Output row oy of one image, on its input x in place */
static void dw_row(const Op *op, const Op *in, const FastOp *f, const uint8_t *x, int32_t oy, Scratch *sc,
                   uint8_t *out)
{
    const int32_t C = op->c, zx = in->zero_point;
    int32_t *acc = sc->dwacc;
#if FAST_AVX2
    /* locals: the byte stores may alias any field */
    const int16_t *wdw = f->wdw;
    const uint32_t *bias = f->bias;
    const size_t kw = (size_t)op->kw;
    const int64_t *qf = f->rq32 ? f->qf : NULL;
    const int post = f->post;
    const int16_t *wpair = f->wpair;
    const uint32_t *bias_in = f->bias_in;
    const size_t *tap_offset = f->tap_offset;
    const int32_t pairs = (op->kh * op->kw + 1) / 2;
    const __m128i qmin = _mm_set1_epi8((char)op->qmin), qmax = _mm_set1_epi8((char)op->qmax);
#endif
    int32_t ky0, ky1;
    tap_window(oy, op->stride_h, op->dil_h, op->pad_top, op->kh, in->h, &ky0, &ky1);
    for (int32_t ox = 0; ox < op->w; ox++) {
        int32_t kx0, kx1;
        tap_window(ox, op->stride_w, op->dil_w, op->pad_left, op->kw, in->w, &kx0, &kx1);
        /* tap (ky, kx)'s input pixel: x0 + (ky - ky0) * ystep + (kx - kx0) * xstep, x0 the first
         * tap's (where there is one: a window can lie wholly in the padding) */
        const int32_t iy0 = oy * op->stride_h - op->pad_top + ky0 * op->dil_h;
        const int32_t ix0 = ox * op->stride_w - op->pad_left + kx0 * op->dil_w;
        const uint8_t *x0 = ky0 < ky1 && kx0 < kx1 ? x + ((size_t)iy0 * in->w + (size_t)ix0) * (size_t)C : x;
        const size_t ystep = (size_t)op->dil_h * in->w * C, xstep = (size_t)op->dil_w * C;
        uint8_t *dst = out + ((size_t)oy * op->w + ox) * C;
        int32_t c0 = 0;         /* channels c0.. take the plain loop */
        int32_t c = 0;          /* channels c.. are requantized from acc below */
#if FAST_AVX2
        /* 16 channels at a time, their sums in registers across the taps.  A window wholly inside
         * the input (MobileNetV2 at 32x32: 88% of them) takes its taps in pairs (wpair); one with
         * taps in the padding the exact int32 products of int16 x - z_x and w - z_w from their low
         * and high halves (vpmullw, vpmulhw), interleaved by vpunpck* within each 128-bit lane, so
         * s0 holds channels 0-3 | 8-11 and s1 4-7 | 12-15 */
        const __m256i zxv = _mm256_set1_epi16((int16_t)zx);
        const int inside = wpair && ky0 == 0 && ky1 == op->kh && kx0 == 0 && kx1 == op->kw;
        for (; c0 + 16 <= C; c0 += 16) {
            __m256i v_lo, v_hi;
            if (inside) {       /* two taps a vpmaddwd, onto bias_in (z_x folded in) */
                v_lo = _mm256_loadu_si256((const void *)(bias_in + c0));
                v_hi = _mm256_loadu_si256((const void *)(bias_in + c0 + 8));
                const uint8_t *xc = x0 + c0;
                const int16_t *w = wpair + (size_t)c0 / BLK * (size_t)pairs * 2 * BLK;
                for (int32_t p = 0; p < pairs; p++, w += 2 * BLK) {
                    /* the two taps' bytes interleaved: channels 0-7 | 8-15, widened */
                    const __m128i a = _mm_loadu_si128((const void *)(xc + tap_offset[2 * p]));
                    const __m128i b = _mm_loadu_si128((const void *)(xc + tap_offset[2 * p + 1]));
                    v_lo = _mm256_add_epi32(v_lo, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a, b)),
                                                                    _mm256_loadu_si256((const void *)w)));
                    v_hi = _mm256_add_epi32(v_hi, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpackhi_epi8(a, b)),
                                                                    _mm256_loadu_si256((const void *)(w + BLK))));
                }
            } else {
                __m256i s0 = _mm256_setzero_si256(), s1 = s0;
                const uint8_t *xrow = x0 + c0;
                const int16_t *wrow = wdw + ((size_t)ky0 * kw + (size_t)kx0) * C + c0;
                for (int32_t ky = ky0; ky < ky1; ky++, xrow += ystep, wrow += kw * C) {
                    const uint8_t *src = xrow;
                    const int16_t *w = wrow;
                    for (int32_t kx = kx0; kx < kx1; kx++, src += xstep, w += C) {
                        const __m256i xv = _mm256_sub_epi16(
                            _mm256_cvtepu8_epi16(_mm_loadu_si128((const void *)src)), zxv);
                        const __m256i wv = _mm256_loadu_si256((const void *)w);
                        const __m256i lo = _mm256_mullo_epi16(xv, wv), hi = _mm256_mulhi_epi16(xv, wv);
                        s0 = _mm256_add_epi32(s0, _mm256_unpacklo_epi16(lo, hi));
                        s1 = _mm256_add_epi32(s1, _mm256_unpackhi_epi16(lo, hi));
                    }
                }
                v_lo = _mm256_add_epi32(_mm256_permute2x128_si256(s0, s1, 0x20),
                                        _mm256_loadu_si256((const void *)(bias + c0)));
                v_hi = _mm256_add_epi32(_mm256_permute2x128_si256(s0, s1, 0x31),
                                        _mm256_loadu_si256((const void *)(bias + c0 + 8)));
            }
            if (qf) {           /* requantized and stored here, not through acc */
                _mm_storeu_si128((void *)(dst + c0), requant_pack16(v_lo, v_hi, qf + (size_t)c0 / BLK * QF_WORDS, post,
                                                                    qmin, qmax));
            } else {
                _mm256_storeu_si256((void *)(acc + c0), v_lo);
                _mm256_storeu_si256((void *)(acc + c0 + 8), v_hi);
            }
        }
        if (qf)
            c = c0;
#endif
        memcpy(acc + c0, f->bias + c0, (size_t)(C - c0) * sizeof *acc);     /* int32 biases, stored as uint32 */
        for (int32_t ky = ky0; c0 < C && ky < ky1; ky++)
            for (int32_t kx = kx0; kx < kx1; kx++) {
                const uint8_t *src = x0 + (size_t)(ky - ky0) * ystep + (size_t)(kx - kx0) * xstep;
                const int16_t *w = f->wdw + (size_t)(ky * op->kw + kx) * C;
                for (int32_t c = c0; c < C; c++)
                    acc[c] += (int16_t)(src[c] - zx) * w[c];
            }
#if FAST_AVX2
        /* 8 channels c.. (c % 8 == 0) at a time: in f->qf's block, the even ones' constants are 4
         * consecutive words, the odd ones' too */
        const __m128i order = _mm_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
        for (; f->rq32 && c + 8 <= C; c += 8) {
            const int64_t *qb = f->qf + (size_t)c / BLK * QF_WORDS, *q = qb + c % BLK / 2;
            const __m256i ps = _mm256_loadu_si256((const void *)((const int32_t *)(qb + 32) + c % BLK));
            __m256i h = requant_fast8(_mm256_loadu_si256((const void *)(acc + c)), _mm256_loadu_si256((const void *)q),
                                      _mm256_loadu_si256((const void *)(q + 8)), _mm256_loadu_si256((const void *)(q + 16)),
                                      _mm256_loadu_si256((const void *)(q + 24)), ps, f->post);
            h = clamp8(h, op);
            /* the low byte of each lane, in order */
            const __m128i lo = _mm_shuffle_epi8(_mm256_castsi256_si128(h), order);
            const __m128i hi = _mm_shuffle_epi8(_mm256_extracti128_si256(h, 1), order);
            _mm_storel_epi64((void *)(dst + c), _mm_unpacklo_epi32(lo, hi));
        }
#endif
        for (; c < C; c++)
            dst[c] = requantize(acc[c], f->mult[c], (int)f->sh[c], op->zero_point, op->qmin, op->qmax);
    }
}
#endif

/* A depthwise conv on n images (HWC, one after the other), the threads sharing their output rows.
 * The VNNI kernel reads each image's input with its padding, the C loop the input in place. */
static void fast_depthwise(const Op *op, const Op *in, const FastOp *f, const uint8_t *x, uint8_t *out, Workspace *ws,
                           int n)
{
    const size_t in_elems = op_elems(in), out_elems = op_elems(op);
    if (FAST_VNNI)
        pad_inputs(op, in, x, ws, n);
    const long n_rows = (long)n * op->h;
    PARALLEL_FOR_IF(n_rows > 1)
    for (long r = 0; r < n_rows; r++) {
        const size_t b = (size_t)(r / op->h);
        const uint8_t *src = FAST_VNNI ? ws->pad + b * ws->pad_stride : x + b * in_elems;
        dw_row(op, in, f, src, (int32_t)(r % op->h), &ws->scratch[thread_id()], out + b * out_elems);
    }
}

/* d[k] = max(d[k], s[k]) for n bytes: vpmaxub / pmaxub / umax, 16 to 64 bytes an instruction */
static inline void max_bytes(uint8_t *restrict d, const uint8_t *restrict s, size_t n)
{
    for (size_t k = 0; k < n; k++)
        d[k] = s[k] > d[k] ? s[k] : d[k];
}

/* Max pooling, separable: a window's maximum is the maximum over its columns of each column's
 * maximum over its rows.  Per output row: the columns' maxima over the window's input rows (y0..y1),
 * one byte-wise max of whole HWC rows (vectorized whatever C is) into `row`, then each output the
 * maximum of its columns there; at stride 1 that is kw byte-wise maxima of the whole output row
 * (vectorized again), else one output at a time.  Per output row: (y1 - y0) * (columns read) * C
 * byte steps, plus kw * OW * C: about kh + kw steps an output where the reference takes kh * kw
 * (31x31 windows, one channel: 560x faster than the 64-channel loop it replaces, 90x faster than
 * the reference, on a Zen 3).  Padding never wins: outputs start at 0, below or equal to every
 * value, and every window holds a real element.  `row`: in->w * C bytes. */
static void fast_maxpool(const Op *op, const Op *in, const uint8_t *x, uint8_t *out, uint8_t *row)
{
    const size_t C = (size_t)op->c, W = (size_t)in->w;
    const int32_t sw = op->stride_w, pw = op->pad_left, kw = op->kw;
    /* the columns the windows read: one run [cx0, cx1) where windows touch or overlap (kw >= sw),
     * else each window's own */
    int32_t cx0, cx1, lo, hi;
    pool_window(0, sw, pw, kw, in->w, &cx0, &hi);
    pool_window(op->w - 1, sw, pw, kw, in->w, &lo, &cx1);
    const int one_run = kw >= sw;
    for (int32_t oy = 0; oy < op->h; oy++) {
        int32_t y0, y1;
        pool_window(oy, op->stride_h, op->pad_top, op->kh, in->h, &y0, &y1);
        const uint8_t *cols = x + (size_t)y0 * W * C;      /* the column maxima: input row y0 itself */
        if (y1 - y0 > 1) {
            for (int32_t ox = 0; ox < (one_run ? 1 : op->w); ox++) {
                if (one_run) {
                    lo = cx0;
                    hi = cx1;
                } else {
                    pool_window(ox, sw, pw, kw, in->w, &lo, &hi);
                }
                const size_t at = (size_t)lo * C, n = (size_t)(hi - lo) * C;
                memcpy(row + at, cols + at, n);
                for (int32_t iy = y0 + 1; iy < y1; iy++)
                    max_bytes(row + at, x + (size_t)iy * W * C + at, n);
            }
            cols = row;
        }
        uint8_t *dst = out + (size_t)oy * op->w * C;
        if (sw == 1) {
            /* tap kx of output ox is column ox + kx - pw: the outputs [lo, hi) whose tap is inside */
            memset(dst, 0, (size_t)op->w * C);
            for (int32_t kx = 0; kx < kw; kx++) {
                lo = pw - kx > 0 ? pw - kx : 0;
                hi = in->w + pw - kx < op->w ? in->w + pw - kx : op->w;
                if (hi > lo)
                    max_bytes(dst + (size_t)lo * C, cols + (size_t)(lo + kx - pw) * C, (size_t)(hi - lo) * C);
            }
        } else {
            for (int32_t ox = 0; ox < op->w; ox++) {
                pool_window(ox, sw, pw, kw, in->w, &lo, &hi);
                uint8_t *d = dst + (size_t)ox * C;
                if (C == 1) {                   /* one reduction over the window's bytes */
                    uint8_t m = 0;
                    for (int32_t ix = lo; ix < hi; ix++)
                        m = cols[ix] > m ? cols[ix] : m;
                    *d = m;
                    continue;
                }
                memcpy(d, cols + (size_t)lo * C, C);
                for (int32_t ix = lo + 1; ix < hi; ix++)
                    max_bytes(d, cols + (size_t)ix * C, C);
            }
        }
    }
}

static void fast_avgpool(const Op *op, const Op *in, const uint8_t *x, uint8_t *out, int64_t *sum)
{
    const size_t C = (size_t)op->c;
    const int64_t offset = (int64_t)op->kh * op->kw * in->zero_point;
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
                dst[c] = requantize(sum[c], op->multiplier[0], op->shift[0], op->zero_point, op->qmin, op->qmax);
        }
}

static void fast_adaptive_avgpool(const Op *op, const Op *in, const uint8_t *x, uint8_t *out, int64_t *sum)
{
    const size_t C = (size_t)op->c;
    for (int32_t oy = 0; oy < op->h; oy++) {
        int32_t y0, y1;
        adaptive_window(oy, op->h, in->h, &y0, &y1);
        for (int32_t ox = 0; ox < op->w; ox++) {
            int32_t x0, x1;
            adaptive_window(ox, op->w, in->w, &x0, &x1);
            for (size_t c = 0; c < C; c++)
                sum[c] = -(int64_t)(y1 - y0) * (x1 - x0) * in->zero_point;
            for (int32_t iy = y0; iy < y1; iy++)
                for (int32_t ix = x0; ix < x1; ix++) {
                    const uint8_t *src = x + ((size_t)iy * in->w + ix) * C;
                    for (size_t c = 0; c < C; c++)
                        sum[c] += src[c];
                }
            const size_t p = (size_t)oy * op->w + ox;
            uint8_t *dst = out + p * C;
            for (size_t c = 0; c < C; c++)
                dst[c] = requantize(sum[c], op->multiplier[p], op->shift[p], op->zero_point, op->qmin, op->qmax);
        }
    }
}

/* Residual add: requantize((a - z_a)*m_a + (b - z_b)*m_b) with multiplier 1 and the shared shift */
static void fast_add(const Op *op, const Op *ia, const Op *ib, const uint8_t *a, const uint8_t *b, uint8_t *out)
{
    const size_t n = op_elems(op);
    const int64_t ma = op->multiplier[0], mb = op->multiplier[1], za = ia->zero_point, zb = ib->zero_point;
    const int s = op->shift[0];
    const int32_t zp = op->zero_point, lo = op->qmin, hi = op->qmax;
    if (ma >= INT16_MIN && ma <= INT16_MAX && mb >= INT16_MIN && mb <= INT16_MAX && s <= 30) {
        /* requantize() in int32, which vectorizes: |(a - za) * ma + (b - zb) * mb| < 2^25 and the
         * rounding term <= 2^29, so nothing overflows; >> is arithmetic (rshift_round's rule) */
        const int32_t ma32 = (int32_t)ma, mb32 = (int32_t)mb, za32 = (int32_t)za, zb32 = (int32_t)zb;
        const int32_t rnd = (int32_t)(((int64_t)1 << s) >> 1);
        for (size_t i = 0; i < n; i++) {
            int32_t v = zp + (((a[i] - za32) * ma32 + (b[i] - zb32) * mb32 + rnd) >> s);
            out[i] = (uint8_t)(v < lo ? lo : v > hi ? hi : v);
        }
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = requantize((a[i] - za) * ma + (b[i] - zb) * mb, 1, s, zp, lo, hi);
}

static void fast_concat(const Model *m, const Op *op, const Workspace *ws, int b, uint8_t *out)
{
    const size_t P = (size_t)op->h * op->w, C = (size_t)op->c;
    size_t c0 = 0;
    for (int k = 0; k < op->n_inputs; k++) {
        const Op *in = op_input(m, op, k);
        const uint8_t *x = image_tensor(ws, in, b);
        const size_t Ck = (size_t)in->c;
        const int64_t mk = op->multiplier[k];
        const int s = op->shift[k];
        const int32_t zk = in->zero_point, zp = op->zero_point, lo = op->qmin, hi = op->qmax;
        for (size_t p = 0; p < P; p++) {
            uint8_t *dst = out + p * C + c0;
            const uint8_t *src = x + p * Ck;
            for (size_t c = 0; c < Ck; c++)
                dst[c] = requantize(src[c] - zk, mk, s, zp, lo, hi);
        }
        c0 += Ck;
    }
}

/* Lookup table: out = table[x], any layout.  With AVX-512 VBMI, 64 values a step: vpermi2b looks
 * up the low 7 bits in the two 128-entry halves, the top bit picks the half. */
static void fast_lut(const Op *op, const uint8_t *x, uint8_t *out)
{
    uint8_t t[256];
    for (int q = 0; q < 256; q++)
        t[q] = (uint8_t)op->table[q];
    const size_t n = op_elems(op);
    size_t e = 0;
#if FAST_VNNI
    const __m512i t0 = _mm512_loadu_si512(t), t1 = _mm512_loadu_si512(t + 64);
    const __m512i t2 = _mm512_loadu_si512(t + 128), t3 = _mm512_loadu_si512(t + 192);
    for (; e + 64 <= n; e += 64) {
        __m512i v = _mm512_loadu_si512(x + e);
        __m512i lo = _mm512_permutex2var_epi8(t0, v, t1), hi = _mm512_permutex2var_epi8(t2, v, t3);
        _mm512_storeu_si512(out + e, _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), lo, hi));
    }
#endif
    for (; e < n; e++)
        out[e] = t[x[e]];
}

/* Product (HWC): requantize((a - z_a)*(b - z_b)) with the op's multiplier and shift; input 1 has
 * the output's shape or is Cx1x1 (the same C values for every pixel). */
static void fast_mul(const Op *op, const Op *ia, const Op *ib, const uint8_t *a, const uint8_t *b, uint8_t *out)
{
    const size_t P = (size_t)op->h * op->w, C = (size_t)op->c;
    const size_t b_step = (size_t)ib->h * ib->w == 1 ? 0 : C;
    const int64_t mult = op->multiplier[0];
    const int s = op->shift[0];
    const int32_t za = ia->zero_point, zb = ib->zero_point, zp = op->zero_point, lo = op->qmin, hi = op->qmax;
    for (size_t p = 0; p < P; p++) {
        const uint8_t *x = a + p * C, *y = b + p * b_step;
        uint8_t *dst = out + p * C;
        for (size_t c = 0; c < C; c++)
            dst[c] = requantize((x[c] - za) * (y[c] - zb), mult, s, zp, lo, hi);
    }
}

/* Channel shuffle (HWC): at each pixel, out channel j*groups + g is input channel g*(C/groups) + j. */
static void fast_shuffle(const Op *op, const uint8_t *x, uint8_t *out)
{
    const size_t P = (size_t)op->h * op->w, C = (size_t)op->c, G = (size_t)op->groups, per = C / G;
    for (size_t p = 0; p < P; p++) {
        const uint8_t *src = x + p * C;
        uint8_t *dst = out + p * C;
        for (size_t g = 0; g < G; g++)
            for (size_t j = 0; j < per; j++)
                dst[j * G + g] = src[g * per + j];
    }
}

/* Channel slice (HWC): each pixel's channels channel_start .. channel_start + C - 1. */
static void fast_slice(const Op *op, const Op *in, const uint8_t *x, uint8_t *out)
{
    const size_t P = (size_t)op->h * op->w, C = (size_t)op->c, Cin = (size_t)in->c;
    for (size_t p = 0; p < P; p++)
        memcpy(out + p * C, x + p * Cin + (size_t)op->ch_start, C);
}

/* Nearest upsampling (HWC): output pixel (y, x) is input pixel (y / scale_h, x / scale_w), all C. */
static void fast_upsample(const Op *op, const Op *in, const uint8_t *x, uint8_t *out)
{
    const size_t C = (size_t)op->c;
    for (int32_t y = 0; y < op->h; y++) {
        const uint8_t *row = x + (size_t)(y / op->scale_h) * in->w * C;
        for (int32_t ox = 0; ox < op->w; ox++, out += C)
            memcpy(out, row + (size_t)(ox / op->scale_w) * C, C);
    }
}

/* ---- the kernel table and the kernel set ------------------------------------------------- */

/* The kernels of the ops but conv and linear (fast_gemm, fast_depthwise), one image each: image b
 * of the batch, its pixels `image` (CHW), sc the thread's scratch */
typedef void FastKernel(const Model *m, int i, const Workspace *ws, int b, const uint8_t *image, Scratch *sc);

#define FAST_ARGS const Model *m, int i, const Workspace *ws, int b, const uint8_t *image, Scratch *sc
#define FAST_UNUSED (void)m, (void)i, (void)ws, (void)b, (void)image, (void)sc
#define OP_IN(k) op_input(m, &m->ops[i], k)
#define X_IN(k) image_tensor(ws, OP_IN(k), b)
#define OUT image_tensor(ws, &m->ops[i], b)

/* the image, CHW pixels, into HWC */
static void fk_input(FAST_ARGS)
{
    FAST_UNUSED;
    const Op *op = &m->ops[i];
    uint8_t *out = OUT;
    const size_t hw = (size_t)op->h * op->w, C = (size_t)op->c;
    for (size_t c = 0; c < C; c++)
        for (size_t p = 0; p < hw; p++)
            out[p * C + c] = image[c * hw + p];
}

static void fk_maxpool(FAST_ARGS)
{
    FAST_UNUSED;
    fast_maxpool(&m->ops[i], OP_IN(0), X_IN(0), OUT, sc->row);
}

static void fk_avgpool(FAST_ARGS)
{
    FAST_UNUSED;
    fast_avgpool(&m->ops[i], OP_IN(0), X_IN(0), OUT, sc->acc);
}

static void fk_add(FAST_ARGS)
{
    FAST_UNUSED;
    fast_add(&m->ops[i], OP_IN(0), OP_IN(1), X_IN(0), X_IN(1), OUT);
}

static void fk_concat(FAST_ARGS)
{
    FAST_UNUSED;
    fast_concat(m, &m->ops[i], ws, b, OUT);
}

static void fk_lut(FAST_ARGS)
{
    FAST_UNUSED;
    fast_lut(&m->ops[i], X_IN(0), OUT);
}

static void fk_mul(FAST_ARGS)
{
    FAST_UNUSED;
    fast_mul(&m->ops[i], OP_IN(0), OP_IN(1), X_IN(0), X_IN(1), OUT);
}

static void fk_shuffle(FAST_ARGS)
{
    FAST_UNUSED;
    fast_shuffle(&m->ops[i], X_IN(0), OUT);
}

static void fk_slice(FAST_ARGS)
{
    FAST_UNUSED;
    fast_slice(&m->ops[i], OP_IN(0), X_IN(0), OUT);
}

static void fk_upsample(FAST_ARGS)
{
    FAST_UNUSED;
    fast_upsample(&m->ops[i], OP_IN(0), X_IN(0), OUT);
}

static void fk_adaptive_avgpool(FAST_ARGS)
{
    FAST_UNUSED;
    fast_adaptive_avgpool(&m->ops[i], OP_IN(0), X_IN(0), OUT, sc->acc);
}

static FastKernel *const FAST_KERNEL[OP_KIND_COUNT] = {
    [OP_INPUT] = fk_input,     [OP_MAXPOOL] = fk_maxpool, [OP_AVGPOOL] = fk_avgpool, [OP_ADD] = fk_add,
    [OP_CONCAT] = fk_concat,   [OP_LUT] = fk_lut,         [OP_MUL] = fk_mul,         [OP_SHUFFLE] = fk_shuffle,
    [OP_SLICE] = fk_slice,     [OP_UPSAMPLE] = fk_upsample, [OP_ADAPTIVE_AVGPOOL] = fk_adaptive_avgpool,
};

static void *fast_prepare(const Model *m)
{
    for (int k = 0; k < OP_KIND_COUNT; k++)
        if (!FAST_KERNEL[k] && !KINDS[k].weighted)
            fail("kernels_fast.c: no optimized kernel for op kind %s", KINDS[k].name);
    return fast_prepare_model(m);
}

/* Ops i0 .. i1 - 1 on images b0 .. b0 + n - 1 (CHW pixels, stride bytes apart), layer by layer */
static void run_ops(const Model *m, const FastModel *fm, Workspace *ws, int i0, int i1, int b0, int n,
                    const uint8_t *images, size_t stride)
{
    for (int i = i0; i < i1; i++) {
        const Op *op = &m->ops[i], *in = op->n_inputs ? op_input(m, op, 0) : NULL;
        const FastOp *f = &fm->ops[i];
        const double t0 = ws->op_seconds ? now_seconds() : 0;
        if (f->kind == FK_GEMM) {
            fast_gemm(op, in, f, image_tensor(ws, in, b0), image_tensor(ws, op, b0), ws, n);
        } else if (f->kind == FK_DEPTHWISE) {
            fast_depthwise(op, in, f, image_tensor(ws, in, b0), image_tensor(ws, op, b0), ws, n);
        } else {
            PARALLEL_FOR_IF(n > 1)
            for (int b = b0; b < b0 + n; b++)
                FAST_KERNEL[op->kind](m, i, ws, b, images + (size_t)b * stride, &ws->scratch[thread_id()]);
        }
        if (ws->op_seconds)
            ws->op_seconds[i] += now_seconds() - t0;
    }
}

/* Run the graph on n images (CHW pixels, stride bytes apart): ops [0, split) pass by pass, the
 * rest on all n at once; returns their logits (CHW), one image after the other. */
static const uint8_t *fast_run(const Model *m, const void *prepared, void *workspace, const uint8_t *images,
                               size_t stride, int n)
{
    const FastModel *fm = prepared;
    Workspace *ws = workspace;
    for (int b0 = 0; b0 < n && ws->split; b0 += ws->pass)
        run_ops(m, fm, ws, 0, ws->split, b0, n - b0 < ws->pass ? n - b0 : ws->pass, images, stride);
    run_ops(m, fm, ws, ws->split, m->n_ops, 0, n, images, stride);
    const Op *last = &m->ops[m->n_ops - 1];
    const size_t hw = (size_t)last->h * last->w, C = (size_t)last->c;
    if (hw == 1)
        return image_tensor(ws, last, 0);
    for (int b = 0; b < n; b++) {               /* HWC -> CHW */
        const uint8_t *y = image_tensor(ws, last, b);
        uint8_t *logits = ws->logits + (size_t)b * C * hw;
        for (size_t c = 0; c < C; c++)
            for (size_t p = 0; p < hw; p++)
                logits[c * hw + p] = y[p * C + c];
    }
    return ws->logits;
}

/* The pass schedule, where there is one; AMX: which GEMM chunks take its tiles */
static void fast_describe(const void *workspace, char *text, size_t size)
{
    const Workspace *ws = workspace;
    int n = 0;
    if (size)
        text[0] = 0;
    if (ws->split)
        n = snprintf(text, size, " (ops 0-%d in passes of %d)", ws->split - 1, ws->pass);
    if (FAST_AMX && n >= 0 && (size_t)n < size)
        snprintf(text + n, size - (size_t)n, ", AMX tiles on GEMM chunks of %zu+ rows", ws->amx_rows);
}

static void fast_time_ops(void *workspace, double *op_seconds)
{
    ((Workspace *)workspace)->op_seconds = op_seconds;
}

const KernelSet FAST_KERNELS_ISA = {FAST_NAME,           fast_prepare, fast_release,  fast_workspace_new,
                                    fast_workspace_free, fast_run,     fast_describe, fast_time_ops};
