/*
 * fpgai.h -- the core library: the types every part of the C engine shares, and the API of
 * c/core/, which loads a model from memory buffers and runs images into caller-provided memory
 * (C99; no malloc/free, no stdio, no file I/O, no OS call: firmware links it as it is).
 *
 *   core/            this header and the core: limits, Op and Model, the one requantizer (below);
 *                    load.c (model.bin, format versions 3 and 4, and the weight buffers checked against
 *                    its seal: the API), kinds.c (the kinds' table, KINDS), checks.c (the checks
 *                    kinds share, the accumulator bound), plan.c (the activation memory plan),
 *                    run.c (the run loop), util.c (messages, CRC-32); kind.h is what an op file
 *                    includes
 *   ops/KIND.c       one file per op kind: its declaration (FPGAI_KIND: name, code, inputs,
 *                    parameters, requantization counts), its validate function, its reference
 *                    kernel (CHW, plain loops); build/fpgai_kinds.h lists them (core/kinds.awk)
 *   host/            the host program: host.h / model.c (errors that print and exit, files,
 *                    weight.txt), datasets.c/.h, dump.c/.h, kernels_ref.c, isa.c, inference.c
 *   kernels.h        the host's two kernel sets: reference (the core's, CHW) and optimized (HWC,
 *                    int8 GEMM, one build per ISA)
 *
 * llama2.c's split: a loaded Model is read-only while images run.  Its fields are of three sorts,
 * marked below: the graph and the weights (what model.bin and the weight files say, checked),
 * the plan (derived at load: tensor offsets, arena size), and the loader's own bookkeeping.
 * What an image writes lives in a workspace: the arena of activations (m->arena_bytes, the plan
 * laid out once per image) and the optimized kernels' scratch buffers (one set per thread).
 *
 * The arithmetic contract (docs/contract.md "Numbers", model/qmath.py):
 *   rshift_round(x, s) = floor((x + 2^(s-1)) / 2^s)        round half toward +infinity
 *   requantize(acc)    = clamp(z_out + rshift_round(acc * m, s), qmin, qmax)
 * Both live below, once; every kernel's scalar path calls requantize().
 */
#ifndef FPGAI_H
#define FPGAI_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

/* ---- limits (docs/contract.md "Rules between fields") ------------------------------------ */

#define FORMAT_VERSION 4            /* model.bin's, written by this tree's export */
#define OLDEST_FORMAT_VERSION 3     /* read too: its records lack the words added since (ParamSpec.since) */
#define HEADER_BYTES   256
#define MIN_OPS        2
#define MAX_OPS        4096
#define MAX_DIM        65535            /* C, H, W, kernels, strides: below 65,536 */
#define MAX_INPUTS     64               /* concat's most inputs */
#define MAX_TENSOR     ((int64_t)1 << 26)   /* elements of one tensor */
/* The operations per image a model may ask for, all its ops together (fpgai_op_work: MACs, window
 * reads, output values); Model.max_work (--max-work) overrides it.  2^35 = 34.4 G: the shipped
 * models need 0.42 M (LeNet) to 0.23 G (VGG13), torchvision's ResNet50 at 224x224 4.1 G, VGG19 19.6 G;
 * a model at the cap keeps the reference kernels busy for tens of seconds an image. */
#define DEFAULT_MAX_WORK ((uint64_t)1 << 35)
#define MAX_SHIFT      62
#define MAX_SCRATCH    ((uint64_t)1 << 28)  /* elements of one kernel scratch buffer (im2col, padded input) */
#define MAX_WEIGHTS    ((int64_t)INT32_MAX) /* weights, and biases, in the weight files */
#ifndef FPGAI_FUZZ
#define MAX_ARENA      ((uint64_t)1 << 30)  /* bytes of all activations together: 1 GiB */
#else
#define MAX_ARENA      ((uint64_t)1 << 28)  /* fuzzing: stay far below the fuzzer's malloc limit */
#endif

/* ---- op kinds ------------------------------------------------------------------------- */

/* The record's type word.  Each kind is declared once, in its own file ops/KIND.c, by its
 * FPGAI_KIND(name, OP_ID, code, row...) line (core/kind.h); the Makefile collects those lines into
 * build/fpgai_kinds.h (core/kinds.awk), which gives the enum below (OP_CONV = 1, ...) and the
 * table KINDS (core/kinds.c).  OP_KIND_COUNT is the largest code + 1. */
#define FPGAI_KIND(name, id, code, ...) id = code,
enum {
#include "fpgai_kinds.h"
};
#undef FPGAI_KIND
#define FPGAI_KIND(name, id, code, ...) char name[(code) + 1];
union fpgai_kind_codes {
#include "fpgai_kinds.h"
};
#undef FPGAI_KIND
enum { OP_KIND_COUNT = sizeof(union fpgai_kind_codes) };

/* One op of the graph; op i produces tensor i.  Filled by the record parser from its kind's
 * declaration (KINDS), checked by the kind's validate function, then read-only. */
#define OP_ARGS 4
typedef struct {
    /* the graph: what the record says */
    int32_t kind;
    int32_t c, h, w;                /* output shape */
    int32_t zero_point, qmin, qmax; /* output zero point and clamp bounds */
    float scale;                    /* for people only */
    int32_t n_inputs;
    int32_t *in;                    /* n_inputs input tensor ids, each < this op's index */

    /* parameters: the ones of its kind (KINDS[kind].params), the others 0.  The named fields
     * below are the ones several kinds share (and the optimized kernels read); a kind with
     * parameters of its own keeps them in arg[], each named in its file (ParamSpec's offset
     * offsetof(Op, arg[k]); e.g. #define PAD_MODE(op) ((op)->arg[0])), not in a new field. */
    int32_t kh, kw, stride_h, stride_w, groups;
    int32_t pad_top, pad_left;      /* conv: each side; maxpool: its pad_h / pad_w, on both sides */
    int32_t pad_bottom, pad_right;  /* conv; the pools: copies of pad_top / pad_left (at load) */
    int32_t dil_h, dil_w;           /* conv: kernel taps this far apart; the pools: 1 (at load) */
    int32_t ceil_mode;              /* maxpool: the output size rounds up (PyTorch's ceil_mode) */
    int32_t w_zero_point, w_offset, b_offset;
    int32_t w_bits;                 /* conv / linear: bits of each weight, 2..8, packed in weight.bin */
    int32_t ch_start;               /* slice: its first input channel */
    int32_t scale_h, scale_w;       /* upsample: the integer factors */
    int32_t arg[OP_ARGS];           /* a kind's own parameters (see above) */

    /* the requantization block */
    int32_t n_mult, n_shift;
    int32_t *multiplier, *shift;

    /* the table block: n_table values in 0..255 (a lookup table indexed by the input value) */
    int32_t n_table;
    int32_t *table;

    /* derived at load */
    int32_t k_size;                 /* conv / linear: weights per output channel */
    /* the plan */
    int32_t last_reader;            /* the last op that reads its output: n_ops for the last op's
                                     * (the logits, read after the run), itself where none does */
    size_t offset;                  /* of its output tensor in a workspace's arena */
} Op;

enum { FILE_WEIGHT_BIN, FILE_BIAS_BIN, FILE_WEIGHT_TXT, FILE_COUNT };   /* the files model.bin seals */

/* A loaded model.  Three sorts of fields (llama2.c's Config / Weights / RunState, less the last:
 * a workspace, the caller's, holds what a run writes):
 *   the graph and the weights   what model.bin and the weight files say, checked by the load;
 *                               read-only from then on (the weights are the caller's buffers)
 *   the plan                    derived at load: the work per image, where each tensor lives in
 *                               an arena (Op.offset, Op.last_reader) and the arena's size
 *   the loader's own            names for messages, the error, the storage block, the jump
 * Nothing a run of images does writes a Model: threads share one. */
typedef struct {
    /* the graph and the weights */
    char name[32], dataset[16], fingerprint[24];
    uint32_t version;               /* model.bin's format version, OLDEST_FORMAT_VERSION..FORMAT_VERSION */
    int weight_signed;              /* 1: signed per-channel weights (zero point 0); 0: unsigned per tensor */
    uint32_t exported;              /* bit 0: weight.bin + bias.bin, bit 1: weight.txt */
    uint64_t file_size[FILE_COUNT]; /* as model.bin recorded them */
    uint32_t file_crc[FILE_COUNT];
    int64_t weight_bytes, bias_count;   /* weight.bin's bytes (the layers packed), bias.bin's int32s */
    int n_ops;
    Op *ops;                        /* in the storage block */
    const uint8_t *weight_raw;      /* weight.bin bytes (each layer packed at its w_bits), the caller's buffer */
    const uint8_t *bias_raw;        /* bias.bin bytes (int32 little-endian), the caller's buffer */

    /* the plan */
    uint64_t max_work;              /* the caller's, kept by the load: the cap on `work` (0: DEFAULT_MAX_WORK) */
    uint64_t work;                  /* operations per image, every op's fpgai_op_work (saturating at 2^64 - 1) */
    size_t arena_bytes;             /* every activation, placed by the memory plan, and the scratch below */
    size_t row_offset, row_bytes;   /* the reference kernels' scratch (KindSpec.scratch: the conv's int32
                                     * accumulator row, a weight row unpacked), in the arena after the tensors */

    /* the loader's own */
    const char *path;               /* model.bin's name in messages (the caller's string) */
    const char *weights_path;       /* the weight file(s)' names in messages */
    char error[256];                /* why the last load failed */
    uint8_t *storage;               /* the caller's block for ops and their arrays (FPGAI_STORAGE_BYTES) */
    size_t storage_bytes, storage_used;
    jmp_buf *on_error;
    void *owned[5];                 /* the host's: buffers it frees with the model; the core never touches them */
} Model;

/* ---- the declaration table ------------------------------------------------------------ */

/* One parameter word of a record: its name in docs/contract.md, where it goes in Op, its range, and
 * the format version that added it (a file of an older version lacks the word: the field takes
 * `absent`).  Rules between fields (pad < kernel, shapes against the inputs) are the kind's validate
 * function. */
typedef struct {
    const char *name;
    size_t offset;                  /* offsetof(Op, ...) of an int32_t field */
    int32_t lo, hi;
    uint32_t since;                 /* 0: in every version */
    int32_t absent;
} ParamSpec;

/* How many multipliers, shifts (or table values) a record holds */
enum { RQ_NONE, RQ_ONE, RQ_TWO, RQ_C, RQ_INPUTS, RQ_256, RQ_HW, RQ_RULE_COUNT };

#define MAX_PARAMS 16

/* A kind's reference kernel (CHW): op's output from its inputs, all in the arena (Op.offset);
 * scratch, if the kind asked for it, at arena + m->row_offset. */
typedef void FpgaiKernel(const Model *m, const Op *op, uint8_t *arena);

/* One kind's declaration: its row of the op table (docs/contract.md), filled from its file's
 * FPGAI_KIND line (core/kind.h, core/kinds.c). */
typedef struct {
    const char *name;               /* "conv" */
    int32_t code;                   /* the record's type word (= its index in KINDS) */
    int32_t min_inputs, max_inputs;
    int weighted;                   /* reads weight_offset/bias_offset layers from the weight files */
    ParamSpec params[MAX_PARAMS];   /* in record order, ended by a NULL name */
    int n_mult, n_shift, n_table;   /* RQ_* */
    void (*validate)(Model *m, int i);  /* cross-field rules; derives k_size */
    FpgaiKernel *reference;         /* its reference kernel; NULL for the input (fpgai_run_op copies it) */
    /* its work per image (fpgai_op_work); NULL: its output's C*H*W values */
    uint64_t (*work)(const Model *m, const Op *op);
    /* bytes of scratch its reference kernel needs (the plan keeps the most any op needs after the
     * tensors, 4-byte aligned); NULL: none */
    size_t (*scratch)(const Op *op);
    /* The kind's kernel in the optimized engine's layout (HWC, one image: in[k] its k-th input, out its
     * output), for a kind that engine has no kernel of its own for; NULL otherwise. */
    void (*hwc)(const Model *m, const Op *op, const uint8_t *const in[], uint8_t *out);
} KindSpec;

/* Every kind, indexed by code; a code no file declares has a NULL name (refused at load). */
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
 * SIMD forms in the optimized kernels (requant_v, requant_fast) compute the same value, bit for
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

/* uint32 -> int32 two's complement without implementation-defined conversion */
static inline int32_t u32_to_i32(uint32_t u)
{
    return u <= INT32_MAX ? (int32_t)u : (int32_t)(u - 2147483648u) - INT32_MAX - 1;
}

/* Bias of output channel c of a conv / linear op, from bias.bin's little-endian bytes. */
static inline int32_t op_bias(const Model *m, const Op *op, int32_t c)
{
    const uint8_t *p = m->bias_raw + 4 * ((size_t)op->b_offset + (size_t)c);
    return u32_to_i32((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

/* Bytes of weight.bin a conv / linear layer takes: its C*K values of w_bits bits, packed */
static inline uint64_t layer_weight_bytes(const Op *op)
{
    return ((uint64_t)op->c * (uint64_t)op->k_size * (uint64_t)op->w_bits + 7) / 8;
}

/* THE reading of weight.bin's packing (docs/contract.md "weight.bin"): value j of op's layer (its C*K
 * weights, [C][K]) as one byte, as weight.bin holds it at 8 bits: the two's complement of a
 * per-channel weight, the unsigned per-tensor one.  Value j of b bits is bits j*b .. j*b + b - 1 of
 * the layer's bytes read as one little-endian bit string: within one byte or across two. */
static inline uint8_t weight_byte(const Model *m, const Op *op, uint64_t j)
{
    const uint8_t *layer = m->weight_raw + op->w_offset;
    const unsigned b = (unsigned)op->w_bits;
    if (b == 8)
        return layer[j];
    const uint64_t bit = j * b;
    const unsigned at = (unsigned)(bit % 8);
    unsigned v = layer[bit / 8] >> at;
    if (at + b > 8)
        v |= (unsigned)layer[bit / 8 + 1] << (8 - at);
    const unsigned sign = m->weight_signed ? 1u << (b - 1) : 0;
    return (uint8_t)(((v & ((1u << b) - 1)) ^ sign) - sign);    /* sign-extended, mod 256 */
}

/* Weight k of output channel c minus its zero point (-255..255) */
static inline int weight_centered(const Model *m, const Op *op, int32_t c, int32_t k)
{
    int raw = weight_byte(m, op, (uint64_t)c * (uint64_t)op->k_size + (uint64_t)k);
    return (m->weight_signed && raw >= 128 ? raw - 256 : raw) - op->w_zero_point;
}

/* ---- the core's API (core/load.c, core/run.c) ------------------------------------------ */

/* Bytes of storage (fpgai_load_graph) for a model.bin of n_ops ops and `size` bytes: the Op array,
 * every int32 array of the records (at most one a word), the memory plan's work arrays, alignment. */
#define FPGAI_STORAGE_BYTES(n_ops, size) \
    ((size_t)(n_ops) * (sizeof(Op) + 4 * sizeof(size_t) + 4 * 8) + (size_t)(size) + 64)
/* FPGAI_STORAGE_BYTES of this model.bin (its op count read from the header) */
size_t fpgai_storage_bytes(const uint8_t *model_bin, size_t size);

/* model.bin from memory: header, its CRC-32, the records with every rule of docs/contract.md ("model.bin"),
 * the layers' tiling of the weight files, the work per image against the cap (m->work,
 * m->max_work), the memory plan (m->arena_bytes).  m->path names it in messages, m->max_work (0:
 * DEFAULT_MAX_WORK) caps the work; want_model NULL accepts any model name.  Returns 0, or -1 with
 * m->error set. */
int fpgai_load_graph(Model *m, void *storage, size_t storage_bytes, const uint8_t *model_bin, size_t size,
                     const char *want_model);
/* The weights (weight.bin's bytes) and biases (bias.bin's), kept by reference, and the
 * accumulator bound they must keep (m->weights_path names them in its message).  `sealed`: check
 * them against the size and CRC-32 model.bin recorded for weight.bin / bias.bin (0 when they come
 * from weight.txt, whose seal the caller checked with fpgai_check_seal).  Returns 0, or -1 with
 * m->error set. */
int fpgai_attach_weights(Model *m, const uint8_t *weights, size_t w_size, const char *weight_path,
                         const uint8_t *biases, size_t b_size, const char *bias_path, int sealed);
/* The work of op i of a loaded graph per image, in operations (the cap's unit, DEFAULT_MAX_WORK):
 * its kind's work function (KindSpec.work, in ops/KIND.c), else its output's C*H*W values:
 *   conv                C*H*W * (Cin/groups)*kh*kw           multiply-accumulates
 *   linear              C * K (its input's C*H*W)             multiply-accumulates
 *   maxpool, avgpool    C*H*W * kh*kw                         window reads, padding included
 *   adaptive_avgpool    C * (its windows' rows summed over the output rows)
 *                         * (its windows' columns summed over the output columns)   window reads
 *   the other kinds     C*H*W                                 output values
 * (C, H, W the op's output shape.)  model/work.py is the same in Python. */
uint64_t fpgai_op_work(const Model *m, int i);
/* One exported file's bytes against the size and CRC-32 model.bin recorded (FILE_*): 0 or -1 */
int fpgai_check_seal(Model *m, int file, const char *path, const uint8_t *data, size_t size);
/* One image (C*H*W pixels, CHW) through the graph with the reference kernels, in `arena`
 * (m->arena_bytes); returns the last op's output (CHW), inside the arena. */
const uint8_t *fpgai_run(const Model *m, uint8_t *arena, const uint8_t *image);
/* Op i alone, what fpgai_run does op by op (its inputs already in the arena; op 0 copies the
 * image): for tools that look at every op's output (--dump-layers).  Op i's output is at
 * arena + m->ops[i].offset until a later op reuses its slot. */
void fpgai_run_op(const Model *m, uint8_t *arena, const uint8_t *image, int i);
/* The largest |acc| output channel c of a conv / linear op reaches on any input (core/checks.c; the
 * load refuses an op where one exceeds INT32_MAX): the optimized kernels' requant_fast proves itself
 * exact against it. */
int64_t acc_bound(const Model *m, const Op *op, int32_t c);

uint32_t rd_u32(const uint8_t *p);
uint32_t crc32_bytes(const uint8_t *p, size_t n);   /* zlib's CRC-32 */
/* n bytes of file content for a message: at most cap - 1 of them, stopping at a NUL, anything
 * but printable ASCII shown as '?' */
void printable(char *dst, size_t cap, const char *src, size_t n);

#endif
