/*
 * amx.c -- the AMX-INT8 build of the optimized kernels (FAST_KERNELS_AMX, fast.h): the AVX-512 build
 * (avx512.h) with the GEMM's chunks of enough rows on AMX-INT8 tiles, tdpbusd on 2 x 2 tiles: 32
 * pixels x 32 channels, 64 depths a step, the rows of A packed per chunk (amx_tiles).  A chunk of at
 * least AMX_MIN_ROWS rows runs on AMX tiles, a smaller one on the VNNI tiles (FPGAI_AMX_ROWS overrides
 * it: tuning, tests).  -DFAST_AMX_EMULATE, its test twin (c/Makefile's amx-emu, FAST_KERNELS_AMX_EMU),
 * runs the very same code with the tile instructions done in C (emu_*), so that CPUs without AMX test
 * its packing and tiling.
 */
#if !(defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512DQ__) \
      && defined(__AVX512VL__) && defined(__AVX512VBMI__))
#error "c/fast/amx.c needs -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512vnni -mavx512vbmi"
#endif
#if !defined(FAST_AMX_EMULATE) && !(defined(__AMX_TILE__) && defined(__AMX_INT8__))
#error "c/fast/amx.c needs -mamx-tile -mamx-int8 (or -DFAST_AMX_EMULATE)"
#endif

#include "avx512.h"

/* AMX: a tile is 16 rows of 64 bytes.  A: 16 pixels x 64 depths (u8); B: 16 depth steps x 16
 * channels x 4 depths (s8: one block's VNNI packing, as is); C: 16 pixels x 16 channels (int32).
 * The register tile is 2 x 2 of them, 32 pixels x 2 blocks. */
#define AMX_DEPTH 64
#define AMX_PIX 16
#define AMX_M (2 * AMX_PIX)
#define AMX_NB 2
#define AMX_MIN_ROWS 16

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

/* Rows lo .. hi - 1 of the chunk's A packed for the AMX tiles, panel_depth bytes apart: each row's
 * segments, segment_depth bytes each (as the VNNI tile reads them).  The bytes from depth_padded to
 * panel_depth keep whatever an earlier layer left there (the buffer starts zeroed): they meet zero
 * weights (FastIsa.matrix_pack). */
static void amx_pack(const GemmChunk *ch, const Workspace *ws, size_t lo, size_t hi)
{
    const FastOp *f = ch->f;
    const size_t seg = (size_t)f->segment_depth;
    for (size_t r = lo; r < hi; r++)
        for (int32_t g = 0; g < f->segments; g++)
            copy_64(ws->matrix_rows + r * (size_t)f->panel_depth + (size_t)g * seg,
                    ws->arow[r] + (size_t)g * f->segment_stride, seg);
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
 * tiles pt_lo .. pt_hi - 1, blocks outermost; c: the thread's sums (FastIsa.matrix_tiles) */
static void amx_tiles(const GemmChunk *ch, const Workspace *ws, int32_t bg_lo, int32_t bg_hi, size_t pt_lo,
                      size_t pt_hi, int32_t *c)
{
    const FastOp *f = ch->f;
    const size_t wdepth = (size_t)f->panel_depth, ldc = (size_t)ch->op->c;
    TILE_CONFIG(&TILES);
    memory_barrier();           /* the packed rows */
    for (int32_t b0 = bg_lo * AMX_NB; b0 < bg_hi * AMX_NB; b0 += AMX_NB) {
        const int nb = f->blocks - b0 < AMX_NB ? f->blocks - b0 : AMX_NB;
        const int last_n = f->group_out - (b0 + nb - 1) * BLK < BLK ? f->group_out - (b0 + nb - 1) * BLK : BLK;
        const size_t slot = ((size_t)ch->g * f->blocks + (size_t)b0) * BLK;
        const int8_t *B0 = (const int8_t *)f->weights + slot * wdepth, *B1 = B0 + wdepth * BLK;
        for (size_t p0 = pt_lo * AMX_M; p0 < pt_hi * AMX_M && p0 < ch->mc; p0 += AMX_M) {
            const uint8_t *A = ws->matrix_rows + p0 * wdepth;
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
    /* more than the other builds (its cores have 2 MB of L2), so that a panel is read from memory fewer
     * times for its tiles, which consume one 16 times faster */
    .chunk_bytes = 1024 * 1024,
    .matrix_pixels = AMX_M,
    .matrix_blocks = AMX_NB,
    .matrix_depth = AMX_DEPTH,
    .matrix_min_rows = AMX_MIN_ROWS,
    .matrix_pack = amx_pack,
    .matrix_tiles = amx_tiles,
    .matrix_name = "AMX",
    .depthwise_padded = 1,
    .prepare_depthwise = prepare_depthwise_vnni,
    .depthwise_row = depthwise_row_vnni,
    .vector_requant = 1,
    .lut = lut_vbmi,
};

#include "engine.inc"

#ifdef FAST_AMX_EMULATE
const KernelSet FAST_KERNELS_AMX_EMU = {"optimized (AMX-INT8, emulated test twin)", FAST_ENGINE};
#else
const KernelSet FAST_KERNELS_AMX = {"optimized (AMX-INT8)", FAST_ENGINE};
#endif
