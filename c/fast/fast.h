/*
 * fast.h -- what the optimized kernels' files share (FAST_KERNELS_* in kernels.h, the default):
 * the prepared model (FastModel, FastOp), a workspace (Workspace, Scratch), and FastIsa, what an
 * ISA's file gives the shared engine.  Same integer results as the reference kernels (the core's),
 * bit for bit (tests/test_c_kernels.py).
 *
 * The files: one per ISA, each compiled with its own target flags into its own KernelSet (c/Makefile;
 * isa.c picks one at run time):
 *   amx.c       AMX-INT8: tdpbusd on 2 x 2 tiles, 32 pixels x 32 channels, 64 depths a step, the rows
 *               of A packed per chunk; chunks of fewer rows and every other kernel as avx512.c's
 *               (its test twin amx-emu: -DFAST_AMX_EMULATE, the tile instructions done in C)
 *   avx512.c    AVX-512 VNNI: vpdpbusd, 16 output channels x 4 depths (u8 x s8) an instruction, up to
 *               64 channels x 4 pixels, the weights pinned in registers (avx512.h: the kernels amx.c
 *               shares; avx512_lanes.inc: its requantizers and depthwise chunk, for zmm and ymm)
 *   avxvnni.c   AVX-VNNI: the same packing, vpdpbusd on ymm (8 channels), 16 channels x 6 pixels;
 *               everything else as avx2.c's (its test twin avxvnni-evex: -DFAST_AVXVNNI_EVEX, the
 *               EVEX form of vpdpbusd)
 *   avx2.c      AVX2: the same tile with vpmaddwd on int16 pairs, 2 depths a step, the weights widened
 *               from int8 as loaded, the rows of A as int16 once per tile; per layer, where its weights
 *               allow (RegisterTile.pair_limit), AVX-VNNI's tile (tile_u8.inc) with vpdpbusd done exactly
 *               as vpmaddubsw + vpmaddwd (avx2.h: the kernels avxvnni.c shares: requantizers, the ymm
 *               tile's store, the depthwise row)
 *   neon.c      NEON (aarch64): the dot-product tile, 2 channels x 4 pixels, each output a dot product
 *               over the depth, 16 depths a step (sdot on int8), the weights [channel][depth]
 *   c99.c       C99, any CPU: the same tile as plain loops GCC vectorizes as pmaddwd
 * and the engine they all include once, after their kernels (engine.inc: prepare.inc, workspace.inc,
 * gemm.inc, hwc.inc, run.inc), compiled with each ISA's flags, so that its plain C loops vectorize
 * for that ISA too.  An ISA file defines `static const FastIsa ISA` (below) before it includes
 * engine.inc: the compiler folds its constants and calls its kernels directly.
 *
 * Layout: activations are HWC here (channels innermost), so a conv is a GEMM
 *   acc[p][co] = sum_k A[p][k] * W[co][k],   k = (ky, kx, ci)
 * with A[p] = the input pixels under output pixel p's window, raw uint8, the padding holding z_x.
 * A 1x1 stride-1 conv reads the input in place; a conv whose kernel rows are whole runs of the
 * padded input (groups 1, taps adjacent) reads them there (implicit: A[p] is kh runs, no copy); the
 * others copy A (im2col).  The weights are repacked at load as signed bytes w8:
 *   per channel (int8, z_w = 0):   w8 = w,             d = 0
 *   per tensor  (uint8, z_w):      w8 = w - 2^(b-1),   d = 2^(b-1) - z_w   (w - z_w = w8 + d; b the layer's
 *                                  weight bits, 8: w8 = w - 128)
 * so that   sum_k (x - z_x)(w - z_w) = sum_k x*w8 + d*sum_k x - z_x*(sum_k w8 + d*K):
 * the last term is folded into the bias at load, d*sum_k x is a per-pixel row sum.  Every sum is an
 * exact int32 (the loader proves |acc| < 2^31) computed modulo 2^32 (uint32 in C, wrapping SIMD
 * adds), hence exact.  Depthwise convs (groups == C) have their own kernel, vectorized over channels.
 *
 * Batches and threads: a workspace runs a batch of images layer by layer, each tensor's images one
 * HWC matrix (image_tensor); a conv or linear layer is one GEMM over all of the batch's pixels, in
 * chunks of rows (FastIsa.chunk_bytes of A) that every weight panel passes over, so a panel is read
 * once per chunk, not once per image.  Where the batch's activations would not stay in cache, its
 * first layers run in passes of fewer images (schedule_passes).  In the OpenMP build each layer's
 * rows (im2col, depthwise output rows) and tiles are split across the threads, each with its own
 * scratch (Scratch).
 *
 * Requantization: every scalar path calls requantize() (fpgai.h).  The SIMD paths use two vector
 * forms of the same function, precomputed per channel at load (qparams, qparams_fast): the wide
 * form (the product, the rounding constant and the shift in 64-bit lanes) and the fast one (the
 * whole requantization as the high half of one 64-bit sum, plus acc times the multiplier's high
 * part where M >= 1/2, wherever that is exact: prepare.inc).  Both give
 * requantize()'s value bit for bit; the tests run every build's fast kernels against the reference
 * ones on awkward random graphs.
 */
#ifndef FPGAI_FAST_H
#define FPGAI_FAST_H

#include "host.h"
#include "kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLK 16          /* output channels per packed weight block (one zmm of int32) */
#define OVER 32         /* im2col copies move whole pieces of this many bytes */
#define QV_WORDS 48     /* int64 words of a block's wide requantization constants (requant_wide) */
#define QF_WORDS 48     /* int64 words of a block's fast requantization constants (requant_fast) */
/* A pass's activations (an op's inputs, output and padded input, times its images): about half a
 * core's L2, so that one layer's output is still in cache when the next reads it (a workspace is one
 * thread's, but for a batch smaller than the thread count).  The environment's FPGAI_PASS_BYTES
 * overrides it (tuning, and the tests' small passes). */
#define PASS_BYTES (512 * 1024)

/* The block a prepared model lies in (kernels.h: prepare_in), taken front to back in pieces 16 bytes
 * aligned, zero-filled.  A first pass with no memory (base NULL) only counts its bytes: it takes NULL
 * pieces and writes nothing (block_filling). */
typedef struct {
    uint8_t *base;              /* the block, or NULL: count */
    size_t used;                /* its bytes taken so far; SIZE_MAX: more than a size_t counts */
} Block;

static inline void *block_take(Block *b, size_t count, size_t size)
{
    const size_t at = (b->used + 15) / 16 * 16;
    if (b->used > SIZE_MAX - 15 || (size && count > (SIZE_MAX - 1 - at) / size)) {
        b->used = SIZE_MAX;
        return NULL;
    }
    b->used = at + count * size;
    return b->base ? b->base + at : NULL;
}

/* The pass that writes (not the one that counts) */
static inline int block_filling(const Block *b)
{
    return b->base != NULL;
}

typedef struct RegisterTile RegisterTile;     /* below */

/* How an op runs: a GEMM (conv, linear), the depthwise kernel, or its kind's own kernel */
enum { FK_NONE, FK_GEMM, FK_DEPTHWISE };

/* One op's prepared weights and geometry (read-only once prepared) */
typedef struct {
    int kernel;                 /* FK_*: which kernel runs it */
    const RegisterTile *tiles;  /* GEMM: its register tile and weight packing (FastIsa.gemm or .gemm_narrow) */
    int32_t depth;              /* the GEMM's depth per group: kh*kw*cin/groups (conv), the input's size (linear) */
    int32_t depth_padded;       /* a row of A: depth rounded up to its tile's depth step (an implicit conv read in
                                 * place in 4-byte steps: segments * segment_depth) */
    int32_t blocks;             /* 16-channel blocks of packed weights per group (depthwise: of all the channels) */
    int32_t chunk_rows;         /* GEMM: rows of A per chunk, a multiple of the register tiles' pixels */
    int32_t group_in;           /* input channels per group */
    int32_t group_out;          /* output channels per group */
    int in_place;               /* the GEMM reads its input as A in place (1x1 stride-1 conv, or linear; depth a
                                 * multiple of the depth step) */
    /* A row as read by the tiles: `segments` segments of segment_bytes, segment_stride bytes apart.  An
     * implicit conv (groups 1, taps adjacent in a kernel row) reads each kernel row of its window straight
     * from the padded input: no im2col copy.  Otherwise one segment of depth_padded bytes.  The VNNI tiles
     * read whole 4-byte depth steps: segment_depth bytes a segment (segment_bytes rounded up; the bytes
     * past a kernel row, the next pixels', meet zero weights), and the weights are packed so. */
    int implicit;               /* A's rows are the kernel rows of the padded input, read in place */
    int32_t segments;           /* segments of a row of A */
    int32_t segment_bytes;      /* the input bytes of a segment */
    int32_t segment_depth;      /* the depths a segment takes in the packed weights (VNNI: rounded up to 4) */
    size_t segment_stride;      /* bytes from one segment to the next */
    int32_t weight_offset;      /* d: 2^(b-1) - z_w (per-tensor weights of b bits) or 0; w - z_w = w8 + d */
    int32_t panel_depth;        /* GEMM: the depths of a block's packed weights, depth_padded (AMX: rounded up to
                                 * a tile's depth, zero weights past depth_padded) */
    void *weights;              /* the weights as the ISA's kernels read them (its pack_weight): GEMM, and the
                                 * depthwise kernel's where it packs them (VNNI) */
    uint32_t *bias;             /* [channel slots] bias - z_x*(sum w8 + d*K), mod 2^32 (the C depthwise loop:
                                 * the bias as it is) */
    int64_t *multiplier;        /* [channel slots] requantization per channel (padding slots 0) */
    int64_t *rounding;          /* [channel slots] 2^(shift - 1), 0 for shift 0 */
    int64_t *shift;             /* [channel slots] */
    int64_t *requant_wide;      /* per 16-channel block, QV_WORDS: multiplier even, odd, rounding even, odd,
                                 * shift even, odd (qparams; the ISAs with vector requantizers) */
    int64_t *requant_fast;      /* per block, QF_WORDS: the 32-bit-result form (qparams_fast), when has_fast */
    int has_fast;               /* every channel has a requant_fast form: requantization as the high half of
                                 * one product */
    int post_shift;             /* some channel of requant_fast needs a shift after the high half */
    int high_mult;              /* some channel of requant_fast has a multiplier high part k (M >= 1/2): + acc*k */
    int16_t *dw_weights;        /* depthwise, the C loop: [kh*kw][C] w - z_w */
    /* depthwise (AVX2), the windows wholly inside the input: taps in pairs, each pair's two inputs
     * interleaved against their weights so interleaved (dw_pairs_weights), one vpmaddwd a pair and no
     * z_x subtracted: it is in dw_inside_bias */
    int16_t *dw_pair_weights;   /* [C/16][pairs][2][16], pairs = (kh * kw + 1) / 2 */
    size_t *dw_tap_offset;      /* [2*pairs] each tap's input from the window's first tap (an odd tap out is
                                 * paired with itself, at zero weight) */
    uint32_t *dw_inside_bias;   /* [C/16*16] bias - z_x * sum (w - z_w), mod 2^32 */
} FastOp;

typedef struct {
    FastOp *ops;
    int n_ops;
    void *heap_block;           /* the host's prepare: the allocation the model lies in (release frees it) */
    /* a workspace's buffers (0: no kernel of this model uses it) */
    size_t pad_bytes;           /* per image: a conv input with its padding */
    size_t dw_columns_bytes;    /* per thread: depthwise (VNNI), one row of interleaved input columns */
    size_t dw_acc_elems;        /* per thread: depthwise (the C loop), one pixel's int32 accumulators */
    size_t dot_rows_bytes;      /* per thread: a register tile's rows of A converted (the tiles that do) */
    size_t acc_elems;           /* per thread: avgpool sums (int64 per channel) */
    size_t row_bytes;           /* per thread: maxpool, an input row's column maxima (W * C) */
    size_t logits_bytes;        /* per image: the last op's output back in CHW order, when it has H*W > 1 */
} FastModel;

/* One thread's scratch buffers */
typedef struct {
    uint8_t *dw_columns;        /* depthwise (VNNI): a row's interleaved input columns */
    int32_t *dw_acc;            /* depthwise (the C loop): a pixel's sums */
    void *dot_rows;             /* a register tile's rows of A as its ISA converts them */
    int32_t *matrix_sums;       /* matrix tiles (AMX): a register tile's sums, [blocks][pixels][16] */
    int64_t *acc;               /* avgpool sums */
    uint8_t *row;               /* maxpool's column maxima */
} Scratch;

/* A batch's: tensor j of image b at tensor[j] + (b % images[j]) * op_elems(&ops[j]), so a tensor's
 * images are one HWC matrix of H * W pixels per image.  tensor[j] = arena + images[j] * ops[j].offset
 * (the memory plan scaled by the images it holds keeps its tensors apart).  Ops [0, split) run pass
 * by pass: the tensors only they read hold one pass's images (images[j] = pass: each pass reuses
 * the same memory, still in cache), the ones later ops (or the logits) read all the batch's, each
 * in a place of its own after the plan's; the other tensors hold the batch's (images[j] = batch). */
typedef struct {
    int batch, n_threads;
    int split, pass;            /* ops [0, split) run in passes of `pass` images, the others on the batch */
    const Op *ops;              /* the model's, the index of tensor and images */
    uint8_t **tensor;
    int *images;
    uint8_t *arena, *logits;
    uint8_t *cols;              /* a GEMM chunk's rows of A, cols_stride() bytes apart */
    uint8_t *pad;               /* each image's conv input with its padding, pad_stride bytes apart */
    size_t pad_stride;
    int32_t *rowsum;            /* a GEMM chunk's row sums */
    uint8_t *matrix_rows;       /* matrix tiles (AMX): a GEMM chunk's rows of A packed, panel_depth bytes apart
                                 * (whole tiles of rows) */
    size_t matrix_min_rows;     /* matrix tiles: the fewest rows of a chunk that runs on them */
    const uint8_t **arow;       /* a GEMM chunk's rows of A: where each starts */
    Scratch *scratch;           /* [n_threads] */
    double *op_seconds;         /* NULL, or where each op's seconds add up (time_ops) */
    const FastModel *fm;        /* the prepared model it runs (describe) */
} Workspace;

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
    int matrix;                 /* on the matrix tiles (its rows of A packed into ws->matrix_rows), else the
                                 * register tiles */
} GemmChunk;

/* A register tile's work: nb blocks of 16 channels from slot (the last one's first last_n) x mp pixels
 * (their rows of A at arow, their sums at rowsum), the outputs of pixel p at out + p * ldc; dot_rows:
 * the thread's scratch for the tiles that convert the rows */
typedef void TileKernel(int nb, int mp, const uint8_t *const *arow, const int32_t *rowsum, void *dot_rows,
                        const FastOp *f, size_t slot, int last_n, const Op *op, uint8_t *out, size_t ldc);

/* A GEMM's register tile and the packing of the weights it reads.  An ISA has one (FastIsa.gemm); one
 * may offer a second for the layers whose weights allow it (FastIsa.gemm_narrow), each layer's chosen
 * at load (FastOp.tiles). */
struct RegisterTile {
    int32_t depth_step;         /* the tiles' depth step: a row of A is padded to a multiple of it */
    int32_t tile_pixels;        /* pixels of a register tile (at most) */
    int32_t tile_blocks;        /* 16-channel blocks of a register tile (at most) */
    int32_t segment_step;       /* the tiles read the rows of A in place in steps of this many bytes (VNNI: 4),
                                 * each segment of an implicit conv rounded up to them; 0: the tiles convert
                                 * a tile's rows into the thread's dot_rows first */
    size_t dot_bytes;           /* bytes of a converted row's element (segment_step 0) */
    int32_t row_offset;         /* the converted rows hold x - row_offset (NEON: 128, int8 for sdot), which
                                 * the bias makes up for: + row_offset * sum w8 */
    size_t weight_bytes;        /* bytes of a packed weight */
    /* weight w8 (depth k of channel slot, f's other fields set) into weights, the ISA's layout */
    void (*pack_weight)(const FastOp *f, void *weights, size_t slot, int32_t k, int32_t w8);
    TileKernel *tile;
    /* 0, or the tile sums two u8 x s8 products in an int16 (depths 2j and 2j + 1 of a segment, as pack_vnni
     * lays them: vpmaddubsw), exact only where the pair's positive weights sum to at most pair_limit and
     * its negative ones to at least -pair_limit (prepare.inc: pairs_fit) */
    int32_t pair_limit;
    const char *name;           /* a narrow tile's name in the run's report */
};

/* What an ISA's file gives the shared engine (engine.inc).  Optional kernels are NULL. */
typedef struct {
    /* the GEMM (conv, linear) */
    RegisterTile gemm;
    const RegisterTile *gemm_narrow;    /* NULL, or the tile of the layers whose weights fit its pair_limit */
    size_t chunk_bytes;         /* a GEMM chunk: about this many bytes of A, which stay in cache while every
                                 * weight panel passes over them */
    /* matrix tiles (AMX), for the chunks of at least matrix_min_rows rows (FPGAI_AMX_ROWS overrides it) */
    int32_t matrix_pixels;      /* pixels of a matrix tile: a multiple of tile_pixels */
    int32_t matrix_blocks;      /* its 16-channel blocks */
    int32_t matrix_depth;       /* its depth step: panel_depth is a multiple */
    size_t matrix_min_rows;
    /* rows lo .. hi - 1 of the chunk's A (ws->arow) packed into ws->matrix_rows */
    void (*matrix_pack)(const GemmChunk *ch, const Workspace *ws, size_t lo, size_t hi);
    /* the chunk's matrix tiles of block groups bg_lo .. bg_hi - 1 x pixel tiles pt_lo .. pt_hi - 1 */
    void (*matrix_tiles)(const GemmChunk *ch, const Workspace *ws, int32_t bg_lo, int32_t bg_hi, size_t pt_lo,
                         size_t pt_hi, int32_t *sums);
    /* depthwise convs */
    int depthwise_padded;       /* its kernel reads each image's input with its padding (else in place) */
    /* f's weights, bias and requantization constants taken from blk and, where blk is filling, written;
     * its scratch sizes into fm */
    void (*prepare_depthwise)(FastModel *fm, FastOp *f, const Model *m, const Op *op, const Op *in, Block *blk);
    /* output row oy of one image (x: its input, or its padded input) */
    void (*depthwise_row)(const Op *op, const Op *in, const FastOp *f, const uint8_t *x, int32_t oy, Scratch *sc,
                          uint8_t *out);
    int vector_requant;         /* the kernels read requant_wide and requant_fast (else neither is made) */
    /* lookup table: out[e] = table[x[e]] for the first e < n it does; returns that count */
    size_t (*lut)(const uint8_t table[256], const uint8_t *x, uint8_t *out, size_t n);
    const char *matrix_name;    /* the matrix tiles' name in the run's report */
} FastIsa;

/* ---- helpers every file may use ------------------------------------------------------------ */

/* Op's output (a tensor) of image b */
static inline uint8_t *image_tensor(const Workspace *ws, const Op *op, int b)
{
    return ws->tensor[op - ws->ops] + (size_t)(b % ws->images[op - ws->ops]) * op_elems(op);
}

static inline size_t max_size(size_t a, size_t b)
{
    return a > b ? a : b;
}

static inline size_t round_up(size_t n, size_t step)
{
    return (n + step - 1) / step * step;
}

/* Rows and columns of a conv's input with its padding (pad_input) */
static inline size_t padded_h(const Op *op, const Op *in)
{
    return (size_t)in->h + (size_t)op->pad_top + (size_t)op->pad_bottom;
}

static inline size_t padded_w(const Op *op, const Op *in)
{
    return (size_t)in->w + (size_t)op->pad_left + (size_t)op->pad_right;
}

/* Copy n bytes in whole OVER-byte pieces: up to OVER - 1 bytes past the end of both are touched (the
 * buffers have OVER bytes of slack; what lands past a row of A is overwritten by the next row). */
static inline void copy_over(uint8_t *dst, const uint8_t *src, size_t n)
{
    for (size_t i = 0; i < n; i += OVER)
        memcpy(dst + i, src + i, OVER);
}

/* Requantize n <= 16 accumulators of channels slot.. and store them. */
static inline void requant_store(const int32_t *acc, const FastOp *f, size_t slot, int n, const Op *op, uint8_t *dst)
{
    for (int l = 0; l < n; l++)
        dst[l] = requantize(acc[l], f->multiplier[slot + l], (int)f->shift[slot + l], op->zero_point, op->qmin,
                            op->qmax);
}

/* f's bias and requantization constants for nch channel slots, from blk (zero: the padding slots') */
static inline void take_channels(FastOp *f, size_t nch, Block *blk)
{
    f->bias = block_take(blk, nch, sizeof *f->bias);
    f->multiplier = block_take(blk, nch, sizeof *f->multiplier);
    f->rounding = block_take(blk, nch, sizeof *f->rounding);
    f->shift = block_take(blk, nch, sizeof *f->shift);
}

/* Output channel c's requantization into slot */
static inline void set_requant(FastOp *f, const Op *op, int32_t c, size_t slot)
{
    f->multiplier[slot] = op->multiplier[c];
    f->shift[slot] = op->shift[c];
    f->rounding[slot] = ((int64_t)1 << op->shift[c]) >> 1;
}

/* The mp <= count pixels' rows of A (at arow) as int16 into dot_rows, each depth_padded long (an implicit
 * conv's segments one after the other, zero past its depth); rows[p] where each is.  Past mp: row 0
 * again. */
static inline void rows_as_int16(int mp, int count, const uint8_t *const *arow, const FastOp *f, int16_t *dot_rows,
                                 const int16_t **rows)
{
    const size_t Kp = (size_t)f->depth_padded;
    for (int p = 0; p < count; p++) {
        int16_t *row = dot_rows + (size_t)p * Kp;
        const uint8_t *a = arow[p < mp ? p : 0];
        const size_t seg = (size_t)f->segment_bytes, K = (size_t)f->segments * seg;
        for (size_t g = 0; g < (size_t)f->segments; g++) {
            const uint8_t *src = a + g * f->segment_stride;
            int16_t *dst = row + g * seg;
            for (size_t j = 0; j < seg; j++)        /* one index: GCC vectorizes it */
                dst[j] = (int16_t)src[j];
        }
        for (size_t k = K; k < Kp; k++)     /* an implicit conv's depth past K: zero weights */
            row[k] = 0;
        rows[p] = row;
    }
}

/* The GEMM weights in VNNI's packing (avx512.c, amx.c, avxvnni.c, avx2.c's narrow tile): per block,
 * panel_depth / 4 depth steps of 4 depths of each of its 16 channels; depth k where the tiles read it: its
 * segment's, padded to whole depth steps (no division per weight where nothing is padded: it took longer
 * than the load) */
static inline void pack_vnni(const FastOp *f, void *weights, size_t slot, int32_t k, int32_t w8)
{
    const int32_t kp = f->segment_depth == f->segment_bytes ? k
                       : k / f->segment_bytes * f->segment_depth + k % f->segment_bytes;
    ((int8_t *)weights)[(slot - slot % BLK) * (size_t)f->panel_depth + (size_t)(kp / 4) * BLK * 4
                        + slot % BLK * 4 + (size_t)(kp % 4)] = (int8_t)w8;
}

#endif
