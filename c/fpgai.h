/*
 * fpgai.h -- the types every part of the C engine shares (C99, libc only).
 *
 *   fpgai.h         this file: limits, the op kinds and their declaration table, Op and
 *                   Model (read-only once loaded), the one requantizer, the loader's API
 *   model.c         errors, CRC-32, model.bin (format version 2) and the weight files,
 *                   load-time checks, the activation memory plan: everything that reads files
 *   kernels.h       the two kernel sets' API: reference (kernels_ref.c, CHW, plain loops)
 *                   and optimized (kernels_fast.c, HWC, int8 GEMM, AVX-512 VNNI where present)
 *   datasets.c/.h   MNIST idx and CIFAR-10 binary readers
 *   inference.c     the program: command line, threads, the report
 *
 * llama2.c's split: a loaded Model (graph, weights, memory plan) is never written while
 * images run; each kernel set prepares its own read-only copy of the weights, and every
 * thread owns a workspace (its arena of activations and its scratch buffers).
 *
 * The arithmetic contract (README "The integer arithmetic contract", model/qmath.py):
 *   rshift_round(x, s) = floor((x + 2^(s-1)) / 2^s)        round half toward +infinity
 *   requantize(acc)    = clamp(z_out + rshift_round(acc * m, s), qmin, qmax)
 * Both live below, once; every kernel's scalar path calls requantize().
 */
#ifndef FPGAI_H
#define FPGAI_H

#include <stddef.h>
#include <stdint.h>

/* ---- limits (README "Exported files") -------------------------------------------------- */

#define FORMAT_VERSION 3
#define HEADER_BYTES   256
#define MIN_OPS        2
#define MAX_OPS        4096
#define MAX_DIM        65535            /* C, H, W, kernels, strides: below 65,536 */
#define MAX_INPUTS     64               /* concat's most inputs */
#define MAX_TENSOR     ((int64_t)1 << 26)   /* elements of one tensor */
#define MAX_WORK       ((uint64_t)1 << 32)  /* MACs (conv, linear) or window reads (pools) of one op */
#define MAX_SHIFT      62
#define MAX_SCRATCH    ((uint64_t)1 << 28)  /* elements of one kernel scratch buffer (im2col, padded input) */
#define MAX_WEIGHTS    ((int64_t)INT32_MAX) /* weights, and biases, in the weight files */
#ifndef FPGAI_FUZZ
#define MAX_ARENA      ((uint64_t)1 << 30)  /* bytes of all activations together: 1 GiB */
#else
#define MAX_ARENA      ((uint64_t)1 << 28)  /* fuzzing: stay far below the fuzzer's malloc limit */
#endif

/* ---- op kinds ------------------------------------------------------------------------- */

/* The record's type word.  Each kind is declared once, in KINDS (model.c). */
enum { OP_INPUT, OP_CONV, OP_LINEAR, OP_MAXPOOL, OP_AVGPOOL, OP_ADD, OP_CONCAT, OP_LUT, OP_MUL, OP_SHUFFLE, OP_SLICE,
       OP_UPSAMPLE, OP_ADAPTIVE_AVGPOOL, OP_KIND_COUNT };

/* One op of the graph; op i produces tensor i.  Filled by the record parser from the
 * declaration table, checked by the kind's validate function, then read-only. */
typedef struct {
    int32_t kind;
    int32_t c, h, w;                /* output shape */
    int32_t zero_point, qmin, qmax; /* output zero point and clamp bounds */
    float scale;                    /* for people only */
    int32_t n_inputs;
    int32_t *in;                    /* n_inputs input tensor ids, each < this op's index */

    /* parameters: the ones of its kind (KINDS[kind].params), the others 0 */
    int32_t kh, kw, stride_h, stride_w, groups;
    int32_t pad_top, pad_left;      /* conv: each side; maxpool: its pad_h / pad_w, on both sides */
    int32_t pad_bottom, pad_right;  /* conv; the pools: copies of pad_top / pad_left (at load) */
    int32_t dil_h, dil_w;           /* conv: kernel taps this far apart; the pools: 1 (at load) */
    int32_t ceil_mode;              /* maxpool: the output size rounds up (PyTorch's ceil_mode) */
    int32_t w_zero_point, w_offset, b_offset;
    int32_t ch_start;               /* slice: its first input channel */
    int32_t scale_h, scale_w;       /* upsample: the integer factors */

    /* the requantization block */
    int32_t n_mult, n_shift;
    int32_t *multiplier, *shift;

    /* the table block: n_table values in 0..255 (a lookup table indexed by the input value) */
    int32_t n_table;
    int32_t *table;

    /* derived at load */
    int32_t k_size;                 /* conv / linear: weights per output channel */
    const int32_t *bias;            /* conv / linear: its C biases, into Model.bias */
    size_t offset;                  /* of its output tensor in a workspace's arena */
} Op;

enum { FILE_WEIGHT_BIN, FILE_BIAS_BIN, FILE_WEIGHT_TXT, FILE_COUNT };   /* the files model.bin seals */

typedef struct {
    char path[4096];                /* of model.bin, for messages */
    char weights_path[8200];        /* of the weight file(s) read, for messages */
    char name[32], dataset[16], fingerprint[24];
    int weight_signed;              /* 1: int8 per-channel weights (zero point 0); 0: uint8 per tensor */
    uint32_t exported;              /* bit 0: weight.bin + bias.bin, bit 1: weight.txt */
    uint64_t file_size[FILE_COUNT]; /* as model.bin recorded them */
    uint32_t file_crc[FILE_COUNT];
    int64_t weight_bytes, bias_count;
    int n_ops;
    Op *ops;
    uint8_t *weight_raw;            /* weight.bin bytes (int8 or uint8); NULL once the kernels have their copy */
    int32_t *bias;                  /* bias.bin values */
    size_t arena_bytes;             /* every activation, placed by plan_memory */
} Model;

/* ---- the declaration table ------------------------------------------------------------ */

/* One parameter word of a record: its README name, where it goes in Op, its range.  Rules
 * between fields (pad < kernel, shapes against the inputs) are the kind's validate function. */
typedef struct {
    const char *name;
    size_t offset;                  /* offsetof(Op, ...) of an int32_t field */
    int32_t lo, hi;
} ParamSpec;

/* How many multipliers, shifts (or table values) a record holds */
enum { RQ_NONE, RQ_ONE, RQ_TWO, RQ_C, RQ_INPUTS, RQ_256, RQ_HW, RQ_RULE_COUNT };

#define MAX_PARAMS 16

typedef struct {
    const char *name;               /* "conv" */
    int32_t code;                   /* the record's type word (= its index in KINDS) */
    int32_t min_inputs, max_inputs;
    int weighted;                   /* reads weight_offset/bias_offset layers from the weight files */
    ParamSpec params[MAX_PARAMS];   /* in record order, ended by a NULL name */
    int n_mult, n_shift, n_table;   /* RQ_* */
    void (*validate)(Model *m, int i);  /* cross-field rules; derives k_size */
} KindSpec;

extern const KindSpec KINDS[OP_KIND_COUNT];
extern const char *const RQ_RULE_NAMES[RQ_RULE_COUNT];

/* ---- the one requantizer ---------------------------------------------------------------- */

/* rshift_round(x, s) = floor((x + 2^(s-1)) / 2^s), s in 0..62: round half up.  Right-shifting
 * a negative value is implementation-defined in C99; GCC and Clang define it as arithmetic
 * (floor), which vectorizes; elsewhere the complement form: floor(x / 2^s) = ~(~x >> s). */
static inline int64_t rshift_round(int64_t x, int s)
{
    x += ((int64_t)1 << s) >> 1;
#if defined(__GNUC__)
    return x >> s;
#else
    return x >= 0 ? x >> s : ~(~x >> s);
#endif
}

/* THE requantization of the contract: clamp(z_out + rshift_round(acc * m, s), qmin, qmax).
 * acc * m must fit int64 (the loader proves it: |acc| < 2^31 for conv/linear, m < 2^31; the
 * pools', adds' and concats' bounds in check_overflow / their validate functions).  Every
 * kernel's scalar path calls this; an add passes its two summed products with m = 1.  The
 * SIMD forms in kernels_fast.c (requant_v, requant_fast) compute the same value, bit for
 * bit (tests/test_c_kernels.py). */
static inline uint8_t requantize(int64_t acc, int64_t m, int s, int32_t zp, int32_t qmin, int32_t qmax)
{
    int64_t v = zp + rshift_round(acc * m, s);
    return (uint8_t)(v < qmin ? qmin : v > qmax ? qmax : v);
}

static inline size_t op_elems(const Op *op)
{
    return (size_t)op->c * (size_t)op->h * (size_t)op->w;
}

/* Input k of op */
static inline const Op *op_input(const Model *m, const Op *op, int k)
{
    return &m->ops[op->in[k]];
}

/* Rows (or columns) [lo, hi) of the input under pooling window o, padding cut off: the
 * reference and the optimized pools' geometry. */
static inline void pool_window(int32_t o, int32_t stride, int32_t pad, int32_t k, int32_t size, int32_t *lo,
                               int32_t *hi)
{
    int32_t start = o * stride - pad, end = start + k;
    *lo = start < 0 ? 0 : start;
    *hi = end > size ? size : end;
}

/* Rows (or columns) [lo, hi) of the input under adaptive pooling window o of out (PyTorch's
 * floor(o*size/out) .. ceil((o+1)*size/out)): the reference and the optimized kernels' geometry. */
static inline void adaptive_window(int32_t o, int32_t out, int32_t size, int32_t *lo, int32_t *hi)
{
    *lo = (int32_t)((int64_t)o * size / out);
    *hi = (int32_t)(((int64_t)(o + 1) * size + out - 1) / out);
}

/* Weight k of output channel c minus its zero point (-255..255), from weight.bin's bytes. */
static inline int weight_centered(const Model *m, const Op *op, int32_t c, int32_t k)
{
    int raw = m->weight_raw[(size_t)op->w_offset + (size_t)c * (size_t)op->k_size + (size_t)k];
    return (m->weight_signed && raw >= 128 ? raw - 256 : raw) - op->w_zero_point;
}

/* ---- model.c: errors, files, loading -------------------------------------------------- */

/* Print "error: ..." to stderr, delete fpgai_tmp_path if set, exit 1.  In the fuzzing build
 * (FPGAI_FUZZ) a harness that sets fpgai_fuzz_jmp gets a longjmp instead. */
void fail(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2), noreturn))
#endif
    ;
extern const char *fpgai_tmp_path;
#ifdef FPGAI_FUZZ
#include <setjmp.h>
extern jmp_buf *fpgai_fuzz_jmp;
#endif

void *xmalloc(size_t n, const char *what);
void *xcalloc(size_t count, size_t size, const char *what);
uint32_t rd_u32(const uint8_t *p);
uint32_t rd_be32(const uint8_t *p);
uint32_t crc32_bytes(const uint8_t *p, size_t n);   /* zlib's CRC-32 */
uint8_t *read_file(const char *path, size_t max_size, size_t *size_out);

/* model.bin from memory (m->path names it): header, seal, records, tiling.  want_model NULL
 * accepts any model name. */
void parse_model_bin(Model *m, const uint8_t *data, size_t size, const char *want_model);
/* weight.bin + bias.bin, or weight.txt, from memory: checked against model.bin's seal */
void parse_weight_bins(Model *m, const uint8_t *w, size_t w_size, const char *weight_path,
                       const uint8_t *b, size_t b_size, const char *bias_path);
void parse_weight_txt(Model *m, const char *text, size_t size, const char *path);
void check_overflow(const Model *m);    /* the accumulator bound, per conv/linear channel */
void plan_memory(Model *m);             /* op offsets and arena_bytes */

/* The whole load: DIR/NAME_model.bin, its weight files (txt or bin), every check, the plan. */
void load_model(Model *m, const char *dir, const char *name, int txt);
void free_model(Model *m);

/* --op-table: the declaration table as JSON, one kind a line */
void print_op_table(void);

#endif
