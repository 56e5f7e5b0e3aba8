/*
 * inference.c -- FPGAI reference integer inference engine (C99, libc only).
 *
 * Runs the integer graph that export_quant_model.py writes ({model}_model.bin
 * plus {model}_weight.bin/_bias.bin or {model}_weight.txt) on the MNIST or
 * CIFAR-10 test set and reports accuracy.  Every op matches model/np_engine.py
 * bit for bit; the arithmetic contract is model/qmath.py:
 *
 *   rshift_round(x, s) = floor((x + 2^(s-1)) / 2^s)      round half toward +inf
 *   requantize(acc)    = clamp(z_out + rshift_round(acc * m, s), qmin, qmax)
 *
 * Layout of this file:
 *   1. errors, small helpers, file reading
 *   2. the model: parsing and validating model.bin (never trusting a length)
 *   3. weights and biases: .bin files or the text file
 *   4. load-time checks (accumulator overflow) and the activation memory plan
 *   5. the kernels: conv, linear, maxpool, avgpool, add
 *   6. datasets (MNIST idx, CIFAR-10 binary batch)
 *   7. command line and the main loop
 *
 * Activations are uint8 tensors in CHW order.  All of them live in one arena
 * allocated at load time; nothing is allocated per image.
 */
#define _POSIX_C_SOURCE 200809L     /* clock_gettime, stat */

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ------------------------------------------------------------------------ */
/* 1. Errors, helpers, file reading                                          */
/* ------------------------------------------------------------------------ */

static const char *g_tmp_path;      /* a partial output file to delete on error */

#ifdef FPGAI_FUZZ
/* Fuzzing build (c/fuzz/): a harness that sets g_fuzz_jmp gets every error as a
 * longjmp instead of exit(1), the message in g_fuzz_msg (not printed: speed).
 * The loaders leave every allocation reachable from the Model (free_model) or
 * owned by the caller, so the harness frees everything after the jump. */
#include <setjmp.h>
static jmp_buf *g_fuzz_jmp;
static char g_fuzz_msg[512];
#endif

/* Print "error: ..." to stderr and exit 1.  Every load-time failure ends here. */
static void fail(const char *fmt, ...)
{
    va_list ap;
#ifdef FPGAI_FUZZ
    if (g_fuzz_jmp) {
        va_start(ap, fmt);
        vsnprintf(g_fuzz_msg, sizeof g_fuzz_msg, fmt, ap);
        va_end(ap);
        longjmp(*g_fuzz_jmp, 1);
    }
#endif
    fputs("error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (g_tmp_path)
        remove(g_tmp_path);
    exit(1);
}

static void *xmalloc(size_t n, const char *what)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        fail("out of memory allocating %zu bytes for %s", n, what);
    return p;
}

static void *xcalloc(size_t count, size_t size, const char *what)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        fail("out of memory allocating %zu x %zu bytes for %s", count, size, what);
    return p;
}

/* Little-endian and big-endian reads that do not depend on the host's byte order. */
static int32_t rd_le32(const uint8_t *p)
{
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    /* uint32 -> int32 without implementation-defined conversion */
    return u <= INT32_MAX ? (int32_t)u : (int32_t)(u - 2147483648u) - INT32_MAX - 1;
}

static uint32_t rd_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static float rd_lef32(const uint8_t *p)
{
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    float f;
    memcpy(&f, &u, sizeof f);        /* assumes IEEE-754 binary32 floats */
    return f;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Read a whole regular file (at most max_size bytes) into a new buffer. */
static uint8_t *read_file(const char *path, size_t max_size, size_t *size_out)
{
    struct stat st;
    if (stat(path, &st) != 0)
        fail("%s: cannot open (%s)", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        fail("%s: not a regular file", path);
    if (st.st_size < 0 || (uint64_t)st.st_size > max_size)
        fail("%s: %lld bytes, larger than the %zu-byte limit", path, (long long)st.st_size, max_size);
    size_t size = (size_t)st.st_size;
    FILE *f = fopen(path, "rb");
    if (!f)
        fail("%s: cannot open (%s)", path, strerror(errno));
    uint8_t *buf = xmalloc(size + 1, path);
    size_t got = fread(buf, 1, size, f);
    int extra = fgetc(f);               /* the file must not have grown meanwhile */
    int bad = ferror(f);
    fclose(f);
    if (got != size || extra != EOF || bad) {
        free(buf);
        fail("%s: read error or file changed while reading", path);
    }
    buf[size] = 0;                      /* lets the text parser stop at a NUL */
    *size_out = size;
    return buf;
}

/* rshift_round(x, s) = floor((x + 2^(s-1)) / 2^s), s in 0..62: round half up.
 * Right-shifting a negative signed value is implementation-defined in C99, so
 * negative values go through the complement: floor(x / 2^s) = ~(~x >> s). */
static int64_t rshift_round(int64_t x, int s)
{
    x += ((int64_t)1 << s) >> 1;
    return x >= 0 ? x >> s : ~(~x >> s);
}

static uint8_t clamp_u8(int64_t v, int32_t lo, int32_t hi)
{
    return (uint8_t)(v < lo ? lo : v > hi ? hi : v);
}

/* Copy n bytes of file content for a message or a name: at most cap - 1 of
 * them, stopping at a NUL, anything but printable ASCII shown as '?'. */
static void printable(char *dst, size_t cap, const char *src, size_t n)
{
    size_t i = 0;
    for (; i < n && i + 1 < cap && src[i]; i++)
        dst[i] = src[i] >= 0x20 && src[i] < 0x7f ? src[i] : '?';
    dst[i] = 0;
}

/* A fixed-width, NUL-padded header string (not NUL-terminated when full). */
static void copy_field(char *dst, const uint8_t *src, size_t width)
{
    printable(dst, width + 1, (const char *)src, width);
}

static void join_path(char *out, size_t cap, const char *dir, const char *model, const char *suffix)
{
    int n = snprintf(out, cap, "%s/%s%s", dir, model, suffix);
    if (n < 0 || (size_t)n >= cap)
        fail("%s/%s%s: path too long", dir, model, suffix);
}

/* ------------------------------------------------------------------------ */
/* 2. The model: model.bin                                                   */
/* ------------------------------------------------------------------------ */

enum { OP_INPUT, OP_CONV, OP_LINEAR, OP_MAXPOOL, OP_AVGPOOL, OP_ADD, OP_TYPE_COUNT };
static const char *const OP_NAMES[OP_TYPE_COUNT] = {"input", "conv", "linear", "maxpool", "avgpool", "add"};

#define HEADER_BYTES 92         /* struct "<8s5i32s16s16s": 8 + 5*4 + 32 + 16 + 16 */
#define COMMON_WORDS 7          /* C, H, W, zero_point, qmin, qmax, scale */
#define MAX_OPS      4096
#define MAX_DIM      65536      /* any C, H, W, kernel, stride or padding */
#define MAX_TENSOR   (1L << 26) /* elements of one tensor */
#define MAX_SCRATCH  (1L << 28) /* elements of the im2col buffer */
#define MAX_SHIFT    62
#define MAX_DATA_FILE ((size_t)1 << 30)  /* bytes of one dataset file */
#ifndef FPGAI_FUZZ
#define MAX_ARENA    ((uint64_t)1 << 34)    /* bytes of all activations together */
#else
#define MAX_ARENA    ((uint64_t)1 << 28)    /* fuzzing: stay far below the fuzzer's malloc limit */
#endif
#define LANES        8          /* inner loops work on blocks of 8 values (a SIMD/PE row) */

/* n rounded up to a whole number of LANES blocks */
static size_t round_lanes(size_t n)
{
    return (n + LANES - 1) / LANES * LANES;
}

typedef struct {
    int type;
    int32_t c, h, w;                /* output shape */
    int32_t zero_point, qmin, qmax; /* output zero point and clamp bounds */
    float scale;                    /* informational only */
    int32_t in[2];                  /* input tensor ids (in[1]: add only) */

    /* conv / maxpool / avgpool geometry */
    int32_t kh, kw, stride_h, stride_w, pad_h, pad_w;
    int32_t groups;                 /* conv */

    /* conv / linear */
    int32_t k_size;                 /* weights per output channel: cin/groups*kh*kw or in_features */
    size_t w_stride;                /* row stride of `weight`: k_size, rounded up to LANES for linear */
    int32_t w_zero_point, w_offset, b_offset;
    int32_t *multiplier, *shift;    /* per output channel (avgpool: one of each) */
    int16_t *weight;                /* [c][w_stride], already minus w_zero_point, zero padded */
    int32_t *bias;                  /* [c], points into the model's bias array */

    /* add */
    int32_t mul_a, mul_b, add_shift;

    size_t offset;                  /* of this op's output tensor in the arena */
} Op;

typedef struct {
    char path[4096];                /* of model.bin, for messages */
    char name[33], dataset[17], fingerprint[17];
    int weight_signed;
    int32_t weight_bytes, bias_count;
    int n_ops;
    Op *ops;
    uint8_t *weight_raw;            /* weight.bin content (int8 or uint8 bytes) */
    int32_t *bias;                  /* bias.bin content */
    uint8_t *arena;                 /* every activation tensor */
    size_t arena_bytes;
    int16_t *scratch;               /* im2col columns / linear input minus zero point */
    int32_t *acc;                   /* one output channel's accumulators */
} Model;

static size_t op_elems(const Op *op)
{
    return (size_t)op->c * (size_t)op->h * (size_t)op->w;
}

/* Exact word count of a record of this type (after `type` and `n_words`). */
static int64_t expected_words(int type, int32_t c)
{
    switch (type) {
    case OP_INPUT:   return COMMON_WORDS;
    case OP_CONV:    return COMMON_WORDS + 12 + 2 * (int64_t)c;
    case OP_LINEAR:  return COMMON_WORDS + 5 + 2 * (int64_t)c;
    case OP_MAXPOOL: return COMMON_WORDS + 7;
    case OP_AVGPOOL: return COMMON_WORDS + 7;
    case OP_ADD:     return COMMON_WORDS + 5;
    }
    return -1;
}

/* Output size of a window op along one axis: (in + 2 pad - k) / stride + 1, or -1. */
static int64_t window_out(int32_t in, int32_t k, int32_t stride, int32_t pad)
{
    if ((int64_t)in + 2 * (int64_t)pad < k)
        return -1;
    return ((int64_t)in + 2 * (int64_t)pad - k) / stride + 1;
}

/* Check that v lies in [lo, hi]; the message names the op and the field. */
static void check_range(const Model *m, int i, const char *field, int64_t v, int64_t lo, int64_t hi)
{
    if (v < lo || v > hi)
        fail("%s: op %d (%s): %s = %lld outside [%lld, %lld]", m->path, i, OP_NAMES[m->ops[i].type],
             field, (long long)v, (long long)lo, (long long)hi);
}

/* The words of one record after the common ones, checked one by one. */
typedef struct {
    const uint8_t *p;
    const Model *m;
    int op;
} Words;

static int32_t next_word(Words *w, const char *field, int64_t lo, int64_t hi)
{
    int32_t v = rd_le32(w->p);
    w->p += 4;
    check_range(w->m, w->op, field, v, lo, hi);
    return v;
}

/* Fills *dst (owned by the op from the start, so an error midway leaks nothing). */
static void read_channel_words(Words *w, int32_t **dst, int32_t count, const char *field, int64_t lo, int64_t hi)
{
    int32_t *arr = *dst = xmalloc((size_t)count * sizeof *arr, field);
    for (int32_t c = 0; c < count; c++)
        arr[c] = next_word(w, field, lo, hi);
}

/* The words a conv and a linear record end with: weight zero point, offsets, per-channel requantization. */
static void read_weighted_tail(Words *w, Op *op, const Model *m)
{
    op->w_zero_point = next_word(w, "weight zero point", 0, m->weight_signed ? 0 : 255);
    op->w_offset = next_word(w, "weight offset", 0, INT32_MAX);
    op->b_offset = next_word(w, "bias offset", 0, INT32_MAX);
    read_channel_words(w, &op->multiplier, op->c, "multiplier", 0, INT32_MAX);
    read_channel_words(w, &op->shift, op->c, "shift", 0, MAX_SHIFT);
}

/* Parse the type-specific words of op i and check them against its input. */
static void parse_op_words(Model *m, int i, const uint8_t *p)
{
    Op *op = &m->ops[i];
    Words w = {p, m, i};
    const char *path = m->path;

    if (op->type == OP_INPUT)
        return;
    op->in[0] = next_word(&w, "input tensor id", 0, i - 1);
    if (op->type == OP_ADD)
        op->in[1] = next_word(&w, "second input tensor id", 0, i - 1);
    const Op *x = &m->ops[op->in[0]];

    switch (op->type) {
    case OP_CONV: {
        int32_t cin = next_word(&w, "cin", 1, MAX_DIM);
        op->kh = next_word(&w, "kernel_h", 1, MAX_DIM);
        op->kw = next_word(&w, "kernel_w", 1, MAX_DIM);
        op->stride_h = next_word(&w, "stride_h", 1, MAX_DIM);
        op->stride_w = next_word(&w, "stride_w", 1, MAX_DIM);
        op->pad_h = next_word(&w, "pad_h", 0, op->kh - 1);
        op->pad_w = next_word(&w, "pad_w", 0, op->kw - 1);
        op->groups = next_word(&w, "groups", 1, MAX_DIM);
        if (cin != x->c)
            fail("%s: op %d (conv): cin %d but its input tensor %d has %d channels",
                 path, i, cin, op->in[0], x->c);
        if (cin % op->groups || op->c % op->groups)
            fail("%s: op %d (conv): groups %d does not divide cin %d and cout %d", path, i, op->groups, cin, op->c);
        int64_t oh = window_out(x->h, op->kh, op->stride_h, op->pad_h);
        int64_t ow = window_out(x->w, op->kw, op->stride_w, op->pad_w);
        if (oh != op->h || ow != op->w)
            fail("%s: op %d (conv): output %dx%d, but a %dx%d input with kernel %dx%d, stride %dx%d, "
                 "padding %dx%d gives %lldx%lld", path, i, op->h, op->w, x->h, x->w, op->kh, op->kw,
                 op->stride_h, op->stride_w, op->pad_h, op->pad_w, (long long)oh, (long long)ow);
        uint64_t k = (uint64_t)(cin / op->groups) * (uint64_t)op->kh;     /* <= 2^32 */
        if (k > INT32_MAX || k * (uint64_t)op->kw > INT32_MAX)
            fail("%s: op %d (conv): kernel of %dx%dx%d weights is too large", path, i, cin / op->groups, op->kh, op->kw);
        op->k_size = (int32_t)(k * (uint64_t)op->kw);
        /* as allocated: each im2col row padded to whole LANES blocks */
        uint64_t cols = (uint64_t)op->k_size * (uint64_t)round_lanes((size_t)op->h * (size_t)op->w);
        if (cols > (uint64_t)MAX_SCRATCH)
            fail("%s: op %d (conv): %llu im2col elements, over the %ld limit", path, i,
                 (unsigned long long)cols, MAX_SCRATCH);
        read_weighted_tail(&w, op, m);
        break;
    }
    case OP_LINEAR: {
        int32_t in_features = next_word(&w, "in_features", 1, INT32_MAX);
        if ((size_t)in_features != op_elems(x))
            fail("%s: op %d (linear): in_features %d but its input tensor %d has %zu elements",
                 path, i, in_features, op->in[0], op_elems(x));
        if (op->h != 1 || op->w != 1)
            fail("%s: op %d (linear): output shape %dx%dx%d, expected %dx1x1", path, i, op->c, op->h, op->w, op->c);
        op->k_size = in_features;
        read_weighted_tail(&w, op, m);
        break;
    }
    case OP_MAXPOOL:
    case OP_AVGPOOL: {
        int is_max = op->type == OP_MAXPOOL;
        op->kh = next_word(&w, "kernel_h", 1, MAX_DIM);
        op->kw = next_word(&w, "kernel_w", 1, MAX_DIM);
        op->stride_h = next_word(&w, "stride_h", 1, MAX_DIM);
        op->stride_w = next_word(&w, "stride_w", 1, MAX_DIM);
        if (is_max) {
            /* pad < kernel: every window holds at least one real element */
            op->pad_h = next_word(&w, "pad_h", 0, op->kh - 1);
            op->pad_w = next_word(&w, "pad_w", 0, op->kw - 1);
        } else {
            read_channel_words(&w, &op->multiplier, 1, "multiplier", 0, INT32_MAX);
            read_channel_words(&w, &op->shift, 1, "shift", 0, MAX_SHIFT);
        }
        int64_t oh = window_out(x->h, op->kh, op->stride_h, op->pad_h);
        int64_t ow = window_out(x->w, op->kw, op->stride_w, op->pad_w);
        if (op->c != x->c || oh != op->h || ow != op->w)
            fail("%s: op %d (%s): output %dx%dx%d, but a %dx%dx%d input with kernel %dx%d, stride %dx%d, "
                 "padding %dx%d gives %dx%lldx%lld", path, i, OP_NAMES[op->type], op->c, op->h, op->w,
                 x->c, x->h, x->w, op->kh, op->kw, op->stride_h, op->stride_w, op->pad_h, op->pad_w,
                 x->c, (long long)oh, (long long)ow);
        if (is_max && (op->zero_point != x->zero_point || op->qmin != x->qmin || op->qmax != x->qmax))
            fail("%s: op %d (maxpool): zero point/clamp %d/%d..%d differ from its input's %d/%d..%d",
                 path, i, op->zero_point, op->qmin, op->qmax, x->zero_point, x->qmin, x->qmax);
        break;
    }
    case OP_ADD: {
        const Op *y = &m->ops[op->in[1]];
        if (x->c != op->c || x->h != op->h || x->w != op->w || y->c != op->c || y->h != op->h || y->w != op->w)
            fail("%s: op %d (add): input shapes %dx%dx%d and %dx%dx%d differ from the output %dx%dx%d",
                 path, i, x->c, x->h, x->w, y->c, y->h, y->w, op->c, op->h, op->w);
        op->mul_a = next_word(&w, "multiplier_a", 0, INT32_MAX);
        op->mul_b = next_word(&w, "multiplier_b", 0, INT32_MAX);
        op->add_shift = next_word(&w, "shift", 0, MAX_SHIFT);
        break;
    }
    }
}

/* Parse and validate model.bin's content (size bytes, caller-owned; m->path
 * names it in messages).  want_model NULL accepts any model name. */
static void parse_model_bin(Model *m, const uint8_t *data, size_t size, const char *want_model)
{
    const char *path = m->path;

    if (size < HEADER_BYTES)
        fail("%s: %zu bytes, shorter than the %d-byte header", path, size, HEADER_BYTES);
    if (memcmp(data, "FPGAIQM\0", 8) != 0)
        fail("%s: bad magic, not an FPGAI model file", path);
    int32_t version = rd_le32(data + 8);
    int32_t n_ops = rd_le32(data + 12);
    int32_t signed_w = rd_le32(data + 16);
    m->weight_bytes = rd_le32(data + 20);
    m->bias_count = rd_le32(data + 24);
    copy_field(m->name, data + 28, 32);
    copy_field(m->dataset, data + 60, 16);
    copy_field(m->fingerprint, data + 76, 16);
    if (version != 1)
        fail("%s: format version %d, this engine reads version 1", path, version);
    if (n_ops < 2 || n_ops > MAX_OPS)
        fail("%s: %d ops, expected 2..%d", path, n_ops, MAX_OPS);
    if (signed_w != 0 && signed_w != 1)
        fail("%s: weight_signed = %d, expected 0 or 1", path, signed_w);
    if (m->weight_bytes < 0 || m->bias_count < 0 || m->bias_count > INT32_MAX / 4)
        fail("%s: weight_bytes %d / bias_count %d out of range", path, m->weight_bytes, m->bias_count);
    if (want_model && strcmp(m->name, want_model) != 0)
        fail("%s: holds model '%s', expected '%s'", path, m->name, want_model);
    if (strcmp(m->dataset, "mnist") != 0 && strcmp(m->dataset, "cifar10") != 0)
        fail("%s: unknown dataset '%s' (expected mnist or cifar10)", path, m->dataset);
    m->weight_signed = signed_w;
    m->n_ops = n_ops;
    m->ops = xcalloc((size_t)n_ops, sizeof *m->ops, "ops");

    size_t pos = HEADER_BYTES;
    for (int i = 0; i < n_ops; i++) {
        Op *op = &m->ops[i];
        if (size - pos < 8 + 4 * COMMON_WORDS)
            fail("%s: truncated in op %d (at byte %zu of %zu)", path, i, pos, size);
        const uint8_t *r = data + pos;
        op->type = rd_le32(r);
        int32_t n_words = rd_le32(r + 4);
        if (op->type < 0 || op->type >= OP_TYPE_COUNT)
            fail("%s: op %d has unknown type %d", path, i, op->type);
        if ((op->type == OP_INPUT) != (i == 0))
            fail("%s: op %d is %s; op 0 must be the input and only op 0", path, i, OP_NAMES[op->type]);
        op->c = rd_le32(r + 8);
        op->h = rd_le32(r + 12);
        op->w = rd_le32(r + 16);
        op->zero_point = rd_le32(r + 20);
        op->qmin = rd_le32(r + 24);
        op->qmax = rd_le32(r + 28);
        op->scale = rd_lef32(r + 32);
        check_range(m, i, "C", op->c, 1, MAX_DIM);
        check_range(m, i, "H", op->h, 1, MAX_DIM);
        check_range(m, i, "W", op->w, 1, MAX_DIM);
        if (op_elems(op) > (size_t)MAX_TENSOR)
            fail("%s: op %d (%s): output %dx%dx%d has more than %ld elements", path, i,
                 OP_NAMES[op->type], op->c, op->h, op->w, MAX_TENSOR);
        int64_t want = expected_words(op->type, op->c);
        if (n_words != want)
            fail("%s: op %d (%s): record has %d words, a %s with %d channels has %lld",
                 path, i, OP_NAMES[op->type], n_words, OP_NAMES[op->type], op->c, (long long)want);
        if ((uint64_t)(size - pos - 8) < 4 * (uint64_t)n_words)
            fail("%s: truncated in op %d (%s): %d words past the end of the file", path, i,
                 OP_NAMES[op->type], n_words);
        check_range(m, i, "zero_point", op->zero_point, 0, 255);
        check_range(m, i, "qmin", op->qmin, 0, 255);
        check_range(m, i, "qmax", op->qmax, op->qmin, 255);
        if (i == 0 && (op->zero_point != 0 || op->qmin != 0 || op->qmax != 255))
            fail("%s: op 0 (input): raw pixels need zero point 0 and clamp 0..255", path);
        parse_op_words(m, i, r + 8 + 4 * COMMON_WORDS);
        pos += 8 + 4 * (size_t)n_words;
    }
    if (pos != size)
        fail("%s: %zu bytes after the last op", path, size - pos);
    if (m->ops[n_ops - 1].type == OP_INPUT)
        fail("%s: the last op must produce the logits", path);
}

static void load_model_bin(Model *m, const char *path, const char *want_model)
{
    size_t size;
    snprintf(m->path, sizeof m->path, "%s", path);
    uint8_t *data = read_file(path, (size_t)1 << 30, &size);
    parse_model_bin(m, data, size, want_model);
    free(data);
}

/* ------------------------------------------------------------------------ */
/* 3. Weights and biases                                                     */
/* ------------------------------------------------------------------------ */

static int is_weighted(const Op *op)
{
    return op->type == OP_CONV || op->type == OP_LINEAR;
}

/* The weighted layers must tile weight.bin and bias.bin exactly, in op order. */
static void check_tiling(const Model *m)
{
    int64_t w_pos = 0, b_pos = 0;
    for (int i = 0; i < m->n_ops; i++) {
        const Op *op = &m->ops[i];
        if (!is_weighted(op))
            continue;
        int64_t n_w = (int64_t)op->c * op->k_size;
        if (op->w_offset != w_pos || op->b_offset != b_pos)
            fail("%s: op %d (%s): weight offset %d / bias offset %d, expected %lld / %lld (layers must "
                 "tile the weight and bias files in order)", m->path, i, OP_NAMES[op->type],
                 op->w_offset, op->b_offset, (long long)w_pos, (long long)b_pos);
        w_pos += n_w;
        b_pos += op->c;
        if (w_pos > m->weight_bytes || b_pos > m->bias_count)
            fail("%s: op %d (%s): weights end at %lld / biases at %lld, past weight_bytes %d / bias_count %d",
                 m->path, i, OP_NAMES[op->type], (long long)w_pos, (long long)b_pos, m->weight_bytes,
                 m->bias_count);
    }
    if (w_pos != m->weight_bytes || b_pos != m->bias_count)
        fail("%s: layers hold %lld weights and %lld biases, header says %d and %d",
             m->path, (long long)w_pos, (long long)b_pos, m->weight_bytes, m->bias_count);
}

/* weight.bin and bias.bin contents (caller-owned buffers) into the model. */
static void parse_weight_bins(Model *m, const uint8_t *w, size_t w_size, const char *weight_path,
                              const uint8_t *b, size_t b_size, const char *bias_path)
{
    if (w_size != (size_t)m->weight_bytes)
        fail("%s: %zu bytes, model.bin says %d", weight_path, w_size, m->weight_bytes);
    if (b_size != 4 * (size_t)m->bias_count)
        fail("%s: %zu bytes, model.bin says %d int32 biases (%zu bytes)", bias_path, b_size,
             m->bias_count, 4 * (size_t)m->bias_count);
    m->weight_raw = xmalloc(w_size, "weights");
    memcpy(m->weight_raw, w, w_size);
    m->bias = xmalloc(b_size, "biases");
    for (int32_t i = 0; i < m->bias_count; i++)
        m->bias[i] = rd_le32(b + 4 * (size_t)i);
}

static void load_weight_bins(Model *m, const char *weight_path, const char *bias_path)
{
    size_t w_size, b_size;
    uint8_t *w = read_file(weight_path, (size_t)INT32_MAX, &w_size);
    uint8_t *b = read_file(bias_path, (size_t)INT32_MAX, &b_size);
    parse_weight_bins(m, w, w_size, weight_path, b, b_size, bias_path);
    free(w);
    free(b);
}

/* One comma-separated field of the text file as a number: optional sign,
 * digits, optional surrounding blanks.  Returns 0 if it is not an integer. */
static int parse_int_field(const char *s, const char *end, int64_t *out)
{
    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    int neg = 0;
    if (s < end && (*s == '+' || *s == '-'))
        neg = *s++ == '-';
    if (s == end)
        return 0;
    int64_t v = 0;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9')
            return 0;
        if (v < ((int64_t)1 << 40))      /* saturate: anything this big is out of range anyway */
            v = v * 10 + (*s - '0');
    }
    *out = neg ? -v : v;
    return 1;
}

/* {model}_weight.txt: per layer a '# name ...' line, its weights, a '$ name ...'
 * line, its biases (comma-separated integers).  Fills the same arrays as the
 * .bin files; every count is checked against model.bin. */
static void parse_weight_txt(Model *m, const char *text, size_t size, const char *path)
{
    /* n values need at least 2n - 1 bytes (a digit each, separators between):
     * refuse before allocating what a short file cannot fill */
    uint64_t n_values = (uint64_t)m->weight_bytes + (uint64_t)m->bias_count;
    if (n_values > 0 && 2 * n_values - 1 > (uint64_t)size)
        fail("%s: %zu bytes cannot hold the %d weights and %d biases of model.bin", path, size,
             m->weight_bytes, m->bias_count);
    m->weight_raw = xcalloc((size_t)m->weight_bytes, 1, "weights");
    m->bias = xcalloc((size_t)m->bias_count, sizeof *m->bias, "biases");

    int layer = -1;             /* index of the op whose values we read */
    int n_layers = 0;           /* '#' lines seen */
    int section = 0;            /* 0: before the first '#', 1: weights, 2: biases */
    int64_t count = 0;          /* values read in the current section */
    const char *name = "";      /* current layer's name (from its '#' line) */
    int name_len = 0;
    char shown[64] = "";        /* the name as printed in messages */
    long lineno = 0;
    const char *p = text, *end = text + size;

    while (p < end) {
        const char *line = p, *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        p = eol + 1;
        lineno++;
        if (memchr(line, '\0', (size_t)(eol - line)))
            fail("%s:%ld: NUL byte, not a text file", path, lineno);
        while (line < eol && (*line == ' ' || *line == '\t' || *line == '\r'))
            line++;
        const char *stop = eol;
        while (stop > line && (stop[-1] == ' ' || stop[-1] == '\t' || stop[-1] == '\r'))
            stop--;
        if (line == stop)
            continue;

        const Op *op = layer >= 0 ? &m->ops[layer] : NULL;
        if (*line == '#' || *line == '$') {
            const char *nm = line + 1;
            while (nm < stop && (*nm == ' ' || *nm == '\t'))
                nm++;
            int len = 0;                    /* the layer name: first word after the mark */
            while (nm + len < stop && nm[len] != ' ' && nm[len] != '\t' && len < 200)
                len++;
            if (*line == '#') {
                if (section == 1)
                    fail("%s:%ld: new layer, but layer '%s' has no '$' bias line", path, lineno, shown);
                if (section == 2 && count != op->c)
                    fail("%s:%ld: layer '%s' has %lld biases, model.bin expects %d", path, lineno,
                         shown, (long long)count, op->c);
                do
                    layer++;
                while (layer < m->n_ops && !is_weighted(&m->ops[layer]));
                if (layer >= m->n_ops)
                    fail("%s:%ld: more layers than the %d conv/linear ops of the model", path, lineno, n_layers);
                n_layers++;
                name = nm;
                name_len = len;
                printable(shown, sizeof shown, nm, (size_t)len);
                section = 1;
            } else {
                if (section != 1 || len != name_len || memcmp(nm, name, (size_t)len) != 0) {
                    printable(shown, sizeof shown, nm, (size_t)len);
                    fail("%s:%ld: '$' line for '%s' without its '#' line", path, lineno, shown);
                }
                if (count != (int64_t)op->c * op->k_size)
                    fail("%s:%ld: layer '%s' has %lld weights, model.bin expects %lld", path, lineno,
                         shown, (long long)count, (long long)op->c * op->k_size);
                section = 2;
            }
            count = 0;
            continue;
        }
        if (section == 0)
            fail("%s:%ld: values before the first '#' line", path, lineno);
        for (const char *f = line; f <= stop;) {
            const char *comma = memchr(f, ',', (size_t)(stop - f));
            if (!comma)
                comma = stop;
            int64_t v;
            if (!parse_int_field(f, comma, &v)) {
                char field[41];
                printable(field, sizeof field, f, (size_t)(comma - f));
                fail("%s:%ld: '%s' is not an integer", path, lineno, field);
            }
            if (section == 1) {
                int64_t lo = m->weight_signed ? -128 : 0, hi = m->weight_signed ? 127 : 255;
                if (v < lo || v > hi)
                    fail("%s:%ld: weight %lld outside [%lld, %lld]", path, lineno, (long long)v,
                         (long long)lo, (long long)hi);
                if (count == (int64_t)op->c * op->k_size)
                    fail("%s:%ld: more weights than the %lld of layer '%s'", path, lineno,
                         (long long)count, shown);
                m->weight_raw[op->w_offset + count] = (uint8_t)(v < 0 ? v + 256 : v);
            } else {
                if (v < INT32_MIN || v > INT32_MAX)
                    fail("%s:%ld: bias %lld outside int32", path, lineno, (long long)v);
                if (count == op->c)
                    fail("%s:%ld: more biases than the %d of layer '%s'", path, lineno, op->c, shown);
                m->bias[op->b_offset + count] = (int32_t)v;
            }
            count++;
            f = comma + 1;
        }
    }
    const Op *op = layer >= 0 ? &m->ops[layer] : NULL;
    if (section == 1)
        fail("%s:%ld: end of file, layer '%s' has no '$' bias line", path, lineno, shown);
    if (section == 2 && count != op->c)
        fail("%s:%ld: end of file, layer '%s' has %lld biases, model.bin expects %d", path, lineno,
             shown, (long long)count, op->c);
    int want_layers = 0;
    for (int i = 0; i < m->n_ops; i++)
        want_layers += is_weighted(&m->ops[i]);
    if (n_layers != want_layers)
        fail("%s: %d layers, model.bin has %d conv/linear ops", path, n_layers, want_layers);
}

static void load_weight_txt(Model *m, const char *path)
{
    size_t size;
    char *text = (char *)read_file(path, (size_t)1 << 30, &size);
    parse_weight_txt(m, text, size, path);
    free(text);
}

/* Weight k of output channel c minus its zero point (-255..255), from weight.bin's bytes. */
static int weight_centered(const Model *m, const Op *op, int32_t c, int32_t k)
{
    int raw = m->weight_raw[op->w_offset + (size_t)c * op->k_size + k];
    return (m->weight_signed && raw >= 128 ? raw - 256 : raw) - op->w_zero_point;
}

/* Bias pointers and weight row strides (linear rows padded to whole LANES
 * blocks).  The kernels make their own copies of the weights: the reference
 * ones with prepare_reference_weights (section 5), the optimized ones packed. */
static void prepare_layers(Model *m)
{
    for (int i = 0; i < m->n_ops; i++) {
        Op *op = &m->ops[i];
        if (!is_weighted(op))
            continue;
        op->w_stride = op->type == OP_LINEAR ? round_lanes((size_t)op->k_size) : (size_t)op->k_size;
        op->bias = m->bias + op->b_offset;
    }
}

/* ------------------------------------------------------------------------ */
/* 4. Load-time checks and the memory plan                                   */
/* ------------------------------------------------------------------------ */

/* Largest |x - z| of a tensor: every op clamps its output to [qmin, qmax]
 * (maxpool copies its input's bounds, checked at load; the input is 0..255). */
static int32_t max_abs_centered(const Op *x)
{
    int32_t a = x->zero_point - x->qmin, b = x->qmax - x->zero_point;
    return a > b ? a : b;
}

/* Overflow check.  A conv/linear accumulates in int32:
 *   acc = bias[c] + sum_k (x_k - z_x)(w_ck - z_w)
 * Every partial sum is bounded by
 *   bound = max_c (sum_k |w_ck - z_w|) * max(z_x - qmin_x, qmax_x - z_x) + |bias_c|
 * so bound <= INT32_MAX proves no int32 overflow for any input image.
 * The requantizer then computes acc * m in int64: |acc| < 2^31, m < 2^31, plus
 * a rounding constant <= 2^61, stays below 2^63.  An add computes
 * (a - za) * ma + (b - zb) * mb: at most 2 * 255 * 2^31, far inside int64.
 * An avgpool computes (window sum - count * z) * m in int64, checked here. */
static void check_overflow(const Model *m)
{
    for (int i = 0; i < m->n_ops; i++) {
        const Op *op = &m->ops[i];
        const Op *x = op->type != OP_INPUT ? &m->ops[op->in[0]] : NULL;
        if (is_weighted(op)) {
            int64_t x_mag = max_abs_centered(x), worst = 0;
            for (int32_t c = 0; c < op->c; c++) {
                int64_t sum = 0;
                for (int32_t k = 0; k < op->k_size; k++) {
                    int w = weight_centered(m, op, c, k);
                    sum += w < 0 ? -w : w;                    /* <= 2^31 * 255: no overflow */
                }
                int64_t b = op->bias[c] < 0 ? -(int64_t)op->bias[c] : op->bias[c];
                if (sum * x_mag + b > worst)
                    worst = sum * x_mag + b;
            }
            if (worst > INT32_MAX)
                fail("%s: op %d (%s): worst-case accumulator %lld exceeds int32 (%d); the integer "
                     "path could overflow", m->path, i, OP_NAMES[op->type], (long long)worst, INT32_MAX);
        } else if (op->type == OP_AVGPOOL) {
            int64_t window = (int64_t)op->kh * op->kw * max_abs_centered(x);    /* <= 2^26 * 255 */
            int64_t room = INT64_MAX - ((int64_t)1 << (MAX_SHIFT - 1));
            if (op->multiplier[0] > 0 && window > room / op->multiplier[0])
                fail("%s: op %d (avgpool): window sum %lld times multiplier %d overflows int64",
                     m->path, i, (long long)window, op->multiplier[0]);
        }
    }
}

/* Place every tensor in one arena.  A tensor's buffer is reused once every op
 * that reads it has run ("slots"); the logits (last op) are never reused.
 * Also sizes the conv/linear scratch buffers. */
static void plan_memory(Model *m)
{
    int n = m->n_ops;
    int *last_use = xmalloc((size_t)n * sizeof *last_use, "plan");
    int *slot_of = xmalloc((size_t)n * sizeof *slot_of, "plan");
    int *slot_tensor = xmalloc((size_t)n * sizeof *slot_tensor, "plan");
    size_t *slot_size = xmalloc((size_t)n * sizeof *slot_size, "plan");
    int n_slots = 0;

    for (int i = 0; i < n; i++) {
        last_use[i] = i;
        const Op *op = &m->ops[i];
        if (op->type != OP_INPUT)
            last_use[op->in[0]] = i;
        if (op->type == OP_ADD)
            last_use[op->in[1]] = i;
    }
    last_use[n - 1] = n;

    for (int i = 0; i < n; i++) {
        size_t need = op_elems(&m->ops[i]);
        int best = -1;
        for (int s = 0; s < n_slots; s++) {
            if (last_use[slot_tensor[s]] >= i)
                continue;                           /* still live */
            /* prefer the smallest free slot that fits, else the largest free one (grown) */
            int fits = slot_size[s] >= need;
            int best_fits = best >= 0 && slot_size[best] >= need;
            if (best < 0 || (fits && (!best_fits || slot_size[s] < slot_size[best]))
                         || (!fits && !best_fits && slot_size[s] > slot_size[best]))
                best = s;
        }
        if (best < 0) {
            best = n_slots++;
            slot_size[best] = 0;
        }
        if (slot_size[best] < need)
            slot_size[best] = need;
        slot_tensor[best] = i;
        slot_of[i] = best;
    }

    size_t *slot_offset = xmalloc((size_t)n * sizeof *slot_offset, "plan");
    size_t total = 0;
    for (int s = 0; s < n_slots; s++) {
        slot_offset[s] = total;
        total += slot_size[s];
    }
    for (int i = 0; i < n; i++)
        m->ops[i].offset = slot_offset[slot_of[i]];
    if ((uint64_t)total > MAX_ARENA) {
        free(last_use);
        free(slot_of);
        free(slot_tensor);
        free(slot_size);
        free(slot_offset);
        fail("%s: %zu bytes of activations, over the %llu-byte limit", m->path, total,
             (unsigned long long)MAX_ARENA);
    }
    m->arena_bytes = total;
    m->arena = xmalloc(total, "activations");

    size_t scratch = 1, acc = 1;
    for (int i = 0; i < n; i++) {
        const Op *op = &m->ops[i];
        size_t plane = round_lanes((size_t)op->h * (size_t)op->w);
        if (op->type == OP_CONV && (size_t)op->k_size * plane > scratch)
            scratch = (size_t)op->k_size * plane;
        if (op->type == OP_CONV && plane > acc)
            acc = plane;
        if (op->type == OP_LINEAR && op->w_stride > scratch)
            scratch = op->w_stride;
    }
    m->scratch = xmalloc(scratch * sizeof *m->scratch, "im2col scratch");
    m->acc = xmalloc(acc * sizeof *m->acc, "accumulators");

    free(last_use);
    free(slot_of);
    free(slot_tensor);
    free(slot_size);
    free(slot_offset);
}

static void free_model(Model *m)
{
    for (int i = 0; m->ops && i < m->n_ops; i++) {
        free(m->ops[i].multiplier);
        free(m->ops[i].shift);
        free(m->ops[i].weight);
    }
    free(m->ops);
    free(m->weight_raw);
    free(m->bias);
    free(m->arena);
    free(m->scratch);
    free(m->acc);
}

/* ------------------------------------------------------------------------ */
/* 5. Kernels                                                                */
/* ------------------------------------------------------------------------ */

/* The reference kernels' weights: minus their zero point as int16 (-255..255),
 * [c][w_stride], linear rows zero padded to whole LANES blocks. */
static void prepare_reference_weights(Model *m)
{
    for (int i = 0; i < m->n_ops; i++) {
        Op *op = &m->ops[i];
        if (!is_weighted(op))
            continue;
        op->weight = xcalloc((size_t)op->c * op->w_stride, sizeof *op->weight, "weights");
        for (int32_t c = 0; c < op->c; c++)
            for (int32_t k = 0; k < op->k_size; k++)
                op->weight[(size_t)c * op->w_stride + k] = (int16_t)weight_centered(m, op, c, k);
    }
}

/* Convolution as im2col + matrix product, one group at a time.
 *   cols[k][p]  = x[ci][oy*sh + ky - ph][ox*sw + kx - pw] - z_x   (0 in the padding)
 *                 with k = (ci*kh + ky)*kw + kx over the group's input channels,
 *                 p = oy*OW + ox; each row is zero padded to P8 = P rounded up to LANES
 *   acc[p]      = bias[co] + sum_k w[co][k] * cols[k][p]
 *   out[co][p]  = requantize(acc[p])
 * The inner loops run over LANES consecutive p: contiguous, branch free, and
 * with a constant trip count, so the compiler turns them into SIMD code. */
static void run_conv(const Op *op, const Op *in, const uint8_t *x, uint8_t *out, int16_t *cols, int32_t *acc)
{
    const int32_t cin_g = in->c / op->groups, cout_g = op->c / op->groups;
    const int32_t H = in->h, W = in->w, OH = op->h, OW = op->w;
    const size_t P = (size_t)OH * OW, P8 = round_lanes(P);
    const int32_t zx = in->zero_point;

    for (int32_t g = 0; g < op->groups; g++) {
        /* im2col for this group's input channels */
        int16_t *row = cols;
        for (int32_t ci = 0; ci < cin_g; ci++) {
            const uint8_t *plane = x + (size_t)(g * cin_g + ci) * H * W;
            for (int32_t ky = 0; ky < op->kh; ky++) {
                for (int32_t kx = 0; kx < op->kw; kx++, row += P8) {
                    for (int32_t oy = 0; oy < OH; oy++) {
                        int32_t iy = oy * op->stride_h + ky - op->pad_h;
                        int16_t *dst = row + (size_t)oy * OW;
                        if (iy < 0 || iy >= H) {
                            memset(dst, 0, (size_t)OW * sizeof *dst);
                            continue;
                        }
                        const uint8_t *src = plane + (size_t)iy * W;
                        for (int32_t ox = 0; ox < OW; ox++) {
                            int32_t ix = ox * op->stride_w + kx - op->pad_w;
                            dst[ox] = (int16_t)(ix >= 0 && ix < W ? src[ix] - zx : 0);
                        }
                    }
                    memset(row + P, 0, (P8 - P) * sizeof *row);
                }
            }
        }
        /* matrix product and requantization, one output channel at a time */
        for (int32_t j = 0; j < cout_g; j++) {
            int32_t co = g * cout_g + j;
            const int16_t *w = op->weight + (size_t)co * op->w_stride;
            for (size_t p = 0; p < P8; p++)
                acc[p] = op->bias[co];
            int32_t k = 0;
            for (; k + 4 <= op->k_size; k += 4) {          /* four weights at a time */
                const int16_t *c0 = cols + (size_t)k * P8, *c1 = c0 + P8, *c2 = c1 + P8, *c3 = c2 + P8;
                int32_t w0 = w[k], w1 = w[k + 1], w2 = w[k + 2], w3 = w[k + 3];
                for (size_t p = 0; p < P8; p += LANES)
                    for (int l = 0; l < LANES; l++)
                        acc[p + l] += w0 * c0[p + l] + w1 * c1[p + l] + w2 * c2[p + l] + w3 * c3[p + l];
            }
            for (; k < op->k_size; k++) {                  /* the remaining 0..3 */
                const int16_t *c0 = cols + (size_t)k * P8;
                int32_t w0 = w[k];
                for (size_t p = 0; p < P8; p += LANES)
                    for (int l = 0; l < LANES; l++)
                        acc[p + l] += w0 * c0[p + l];
            }
            uint8_t *dst = out + (size_t)co * P;
            int64_t mult = op->multiplier[co];
            int s = op->shift[co];
            for (size_t p = 0; p < P; p++)
                dst[p] = clamp_u8(op->zero_point + rshift_round(acc[p] * mult, s), op->qmin, op->qmax);
        }
    }
}

/* Fully connected: the input tensor read flat (CHW order).
 *   out[c] = requantize(bias[c] + sum_k w[c][k] * (x[k] - z_x))
 * LANES partial sums, one per lane, added up at the end; xs and the weight
 * rows are zero padded to whole blocks. */
static void run_linear(const Op *op, const Op *in, const uint8_t *x, uint8_t *out, int16_t *xs)
{
    const int32_t K = op->k_size;
    const size_t K8 = op->w_stride;
    for (int32_t k = 0; k < K; k++)
        xs[k] = (int16_t)(x[k] - in->zero_point);
    memset(xs + K, 0, (K8 - (size_t)K) * sizeof *xs);
    for (int32_t c = 0; c < op->c; c++) {
        const int16_t *w = op->weight + (size_t)c * K8;
        int32_t lane[LANES] = {0};
        for (size_t k = 0; k < K8; k += LANES)
            for (int l = 0; l < LANES; l++)
                lane[l] += w[k + l] * xs[k + l];
        int32_t acc = op->bias[c];
        for (int l = 0; l < LANES; l++)
            acc += lane[l];
        out[c] = clamp_u8(op->zero_point + rshift_round((int64_t)acc * op->multiplier[c], op->shift[c]),
                          op->qmin, op->qmax);
    }
}

/* Rows (or columns) [lo, hi) of the input under pooling window o, padding cut off:
 * shared by the reference and the optimized pools. */
static void pool_window(int32_t o, int32_t stride, int32_t pad, int32_t k, int32_t size, int32_t *lo, int32_t *hi)
{
    int32_t start = o * stride - pad, end = start + k;
    *lo = start < 0 ? 0 : start;
    *hi = end > size ? size : end;
}

/* Max pooling; padding never wins: out-of-bounds positions are skipped
 * (pad < kernel guarantees each window holds a real element). */
static void run_maxpool(const Op *op, const Op *in, const uint8_t *x, uint8_t *out)
{
    for (int32_t c = 0; c < op->c; c++) {
        const uint8_t *plane = x + (size_t)c * in->h * in->w;
        for (int32_t oy = 0; oy < op->h; oy++) {
            int32_t y0, y1;
            pool_window(oy, op->stride_h, op->pad_h, op->kh, in->h, &y0, &y1);
            for (int32_t ox = 0; ox < op->w; ox++) {
                int32_t x0, x1;
                pool_window(ox, op->stride_w, op->pad_w, op->kw, in->w, &x0, &x1);
                uint8_t best = 0;
                for (int32_t iy = y0; iy < y1; iy++)
                    for (int32_t ix = x0; ix < x1; ix++)
                        if (plane[(size_t)iy * in->w + ix] > best)
                            best = plane[(size_t)iy * in->w + ix];
                *out++ = best;
            }
        }
    }
}

/* Average pooling (no padding):
 *   out = clamp(z_out + rshift_round((sum_window(x) - kh*kw*z_in) * m, s), qmin, qmax) */
static void run_avgpool(const Op *op, const Op *in, const uint8_t *x, uint8_t *out)
{
    const int64_t offset = (int64_t)op->kh * op->kw * in->zero_point;
    for (int32_t c = 0; c < op->c; c++) {
        const uint8_t *plane = x + (size_t)c * in->h * in->w;
        for (int32_t oy = 0; oy < op->h; oy++) {
            for (int32_t ox = 0; ox < op->w; ox++) {
                int64_t sum = 0;
                for (int32_t ky = 0; ky < op->kh; ky++) {
                    const uint8_t *src = plane + (size_t)(oy * op->stride_h + ky) * in->w + (size_t)ox * op->stride_w;
                    for (int32_t kx = 0; kx < op->kw; kx++)
                        sum += src[kx];
                }
                *out++ = clamp_u8(op->zero_point + rshift_round((sum - offset) * op->multiplier[0], op->shift[0]),
                                  op->qmin, op->qmax);
            }
        }
    }
}

/* Residual add: out = clamp(z_out + rshift_round((a - za)*ma + (b - zb)*mb, s), qmin, qmax) */
static void run_add(const Op *op, const Op *ia, const Op *ib, const uint8_t *a, const uint8_t *b, uint8_t *out)
{
    const size_t n = op_elems(op);
    for (size_t i = 0; i < n; i++) {
        int64_t acc = (int64_t)(a[i] - ia->zero_point) * op->mul_a + (int64_t)(b[i] - ib->zero_point) * op->mul_b;
        out[i] = clamp_u8(op->zero_point + rshift_round(acc, op->add_shift), op->qmin, op->qmax);
    }
}

/* Run the whole graph on one image (C*H*W uint8 pixels); returns the logits. */
static const uint8_t *run_model(Model *m, const uint8_t *image)
{
    for (int i = 0; i < m->n_ops; i++) {
        const Op *op = &m->ops[i];
        uint8_t *out = m->arena + op->offset;
        const Op *a = op->type != OP_INPUT ? &m->ops[op->in[0]] : NULL;
        const uint8_t *xa = a ? m->arena + a->offset : NULL;
        switch (op->type) {
        case OP_INPUT:   memcpy(out, image, op_elems(op)); break;
        case OP_CONV:    run_conv(op, a, xa, out, m->scratch, m->acc); break;
        case OP_LINEAR:  run_linear(op, a, xa, out, m->scratch); break;
        case OP_MAXPOOL: run_maxpool(op, a, xa, out); break;
        case OP_AVGPOOL: run_avgpool(op, a, xa, out); break;
        case OP_ADD: {
            const Op *b = &m->ops[op->in[1]];
            run_add(op, a, b, xa, m->arena + b->offset, out);
            break;
        }
        }
    }
    return m->arena + m->ops[m->n_ops - 1].offset;
}

/* The optimized kernels (HWC activations, int8 GEMM, AVX-512 VNNI where the
 * compiler targets it): the default; --reference runs the kernels above. */
#include "kernels_fast.h"

/* ------------------------------------------------------------------------ */
/* 6. Datasets                                                               */
/* ------------------------------------------------------------------------ */

typedef struct {
    uint8_t *image_buf, *label_buf;  /* file contents (label_buf NULL for CIFAR) */
    const uint8_t *pixels;           /* first image */
    const uint8_t *labels;           /* first label */
    size_t image_stride, label_stride;
    size_t count;
    char source[4096];               /* for the report */
} Dataset;

static void check_labels(const Dataset *d, const char *path)
{
    for (size_t i = 0; i < d->count; i++)
        if (d->labels[i * d->label_stride] > 9)
            fail("%s: label %d of image %zu outside 0..9", path, d->labels[i * d->label_stride], i);
}

/* MNIST idx3 images + idx1 labels (caller-owned buffers; d points into them). */
static void parse_mnist(Dataset *d, const uint8_t *ibuf, size_t isize, const char *images,
                        const uint8_t *lbuf, size_t lsize, const char *labels)
{
    if (isize < 16)
        fail("%s: %zu bytes, shorter than the 16-byte idx header", images, isize);
    if (rd_be32(ibuf) != 0x803)
        fail("%s: bad magic 0x%08x, not an idx3 image file (0x00000803)", images, rd_be32(ibuf));
    uint32_t n = rd_be32(ibuf + 4), rows = rd_be32(ibuf + 8), cols = rd_be32(ibuf + 12);
    if (rows != 28 || cols != 28)
        fail("%s: images are %ux%u, the model takes 28x28", images, rows, cols);
    if (isize != 16 + (uint64_t)n * 784)
        fail("%s: %zu bytes, the header's %u images of 28x28 need %llu", images, isize, n,
             (unsigned long long)(16 + (uint64_t)n * 784));
    if (n == 0)
        fail("%s: no images", images);

    if (lsize < 8)
        fail("%s: %zu bytes, shorter than the 8-byte idx header", labels, lsize);
    if (rd_be32(lbuf) != 0x801)
        fail("%s: bad magic 0x%08x, not an idx1 label file (0x00000801)", labels, rd_be32(lbuf));
    if (rd_be32(lbuf + 4) != n)
        fail("%s: %u labels for the %u images of %s", labels, rd_be32(lbuf + 4), n, images);
    if (lsize != 8 + (uint64_t)n)
        fail("%s: %zu bytes, the header's %u labels need %llu", labels, lsize, n, (unsigned long long)(8 + (uint64_t)n));
    d->pixels = ibuf + 16;
    d->image_stride = 784;
    d->labels = lbuf + 8;
    d->label_stride = 1;
    d->count = n;
    check_labels(d, labels);
    snprintf(d->source, sizeof d->source, "%s", images);
}

static void load_mnist(Dataset *d, const char *images, const char *labels, const Model *m)
{
    size_t isize, lsize;
    const Op *input = &m->ops[0];
    if (input->c != 1 || input->h != 28 || input->w != 28)
        fail("%s: model input is %dx%dx%d, mnist images are 1x28x28", m->path, input->c, input->h, input->w);
    d->image_buf = read_file(images, MAX_DATA_FILE, &isize);
    d->label_buf = read_file(labels, MAX_DATA_FILE, &lsize);
    parse_mnist(d, d->image_buf, isize, images, d->label_buf, lsize, labels);
}

/* A CIFAR-10 binary batch (caller-owned buffer; d points into it). */
static void parse_cifar(Dataset *d, const uint8_t *buf, size_t size, const char *path)
{
    if (size == 0 || size % 3073 != 0)
        fail("%s: %zu bytes, not a positive multiple of the 3073-byte CIFAR-10 record", path, size);
    d->labels = buf;
    d->label_stride = 3073;
    d->pixels = buf + 1;
    d->image_stride = 3073;
    d->count = size / 3073;
    check_labels(d, path);
    snprintf(d->source, sizeof d->source, "%s", path);
}

static void load_cifar(Dataset *d, const char *path, const Model *m)
{
    size_t size;
    const Op *input = &m->ops[0];
    if (input->c != 3 || input->h != 32 || input->w != 32)
        fail("%s: model input is %dx%dx%d, cifar10 images are 3x32x32", m->path, input->c, input->h, input->w);
    d->image_buf = read_file(path, MAX_DATA_FILE, &size);
    parse_cifar(d, d->image_buf, size, path);
}

/* ------------------------------------------------------------------------ */
/* 7. Command line and main loop                                             */
/* ------------------------------------------------------------------------ */

/* Print the usage (to stderr after a command-line error, exit 2; to stdout for --help). */
static void usage(const char *msg, const char *arg)
{
    FILE *f = msg ? stderr : stdout;
    if (msg)
        fprintf(stderr, "inference: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    fprintf(f,
            "usage: inference [--model NAME] [--dir DIR] [--data DIR] [--format bin|txt] [--limit N]\n"
            "                 [--logits FILE] [--images PATH] [--labels PATH] [--quiet] [--reference]\n"
            "  --model NAME    model name, files DIR/NAME_model.bin etc. (default lenet)\n"
            "  --dir DIR       export folder (default export_model)\n"
            "  --data DIR      dataset folder (default data)\n"
            "  --format F      weights from NAME_weight.bin + NAME_bias.bin (bin) or NAME_weight.txt (txt)\n"
            "  --limit N       run only the first N images\n"
            "  --logits FILE   write each image's output values, one comma-separated line per image\n"
            "  --images PATH   test images file (idx3 for mnist, CIFAR-10 batch for cifar10)\n"
            "  --labels PATH   test labels file (mnist only)\n"
            "  --quiet         print only the result line\n"
            "  --reference     run the simple reference kernels (one thread) instead of the optimized ones\n");
    exit(msg ? 2 : 0);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    const char *model, *dir, *data, *logits, *images, *labels;
    int txt, quiet, reference;
    long limit;                     /* 0: all */
} Options;

static void parse_args(Options *o, int argc, char **argv)
{
    o->model = "lenet";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--quiet")) {
            o->quiet = 1;
            continue;
        }
        if (!strcmp(a, "--reference")) {
            o->reference = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            usage(NULL, NULL);
        const char **slot = !strcmp(a, "--model") ? &o->model : !strcmp(a, "--dir") ? &o->dir
                          : !strcmp(a, "--data") ? &o->data : !strcmp(a, "--logits") ? &o->logits
                          : !strcmp(a, "--images") ? &o->images : !strcmp(a, "--labels") ? &o->labels : NULL;
        int is_format = !strcmp(a, "--format"), is_limit = !strcmp(a, "--limit");
        if (!slot && !is_format && !is_limit)
            usage("unknown option", a);
        if (i + 1 >= argc)
            usage("missing value for", a);
        const char *v = argv[++i];
        if (slot) {
            if (!*v)
                usage("empty value for", a);
            *slot = v;
        } else if (is_format) {
            if (strcmp(v, "bin") && strcmp(v, "txt"))
                usage("--format must be bin or txt, not", v);
            o->txt = !strcmp(v, "txt");
        } else {
            char *end;
            errno = 0;
            long n = strtol(v, &end, 10);
            if (!*v || *end || errno || n < 1 || v[0] == '+' || v[0] == ' ')
                usage("--limit needs a positive integer, not", v);
            o->limit = n;
        }
    }
    if (strchr(o->model, '/'))
        usage("--model must be a plain name, not", o->model);
}

int main(int argc, char **argv)
{
    Options opt;
    memset(&opt, 0, sizeof opt);
    parse_args(&opt, argc, argv);

    /* Run from inside c/: take the repository root as the base of the defaults. */
    const char *base = !is_dir("export_model") && is_dir("../export_model") ? "../" : "";
    char dir[4096], data[4096];
    snprintf(dir, sizeof dir, "%s", opt.dir ? opt.dir : base[0] ? "../export_model" : "export_model");
    snprintf(data, sizeof data, "%s", opt.data ? opt.data : base[0] ? "../data" : "data");

    /* Load and validate everything before the clock starts. */
    Model m;
    memset(&m, 0, sizeof m);
    char path[4096], path2[4096];
    join_path(path, sizeof path, dir, opt.model, "_model.bin");
    load_model_bin(&m, path, opt.model);
    check_tiling(&m);
    if (opt.txt) {
        join_path(path, sizeof path, dir, opt.model, "_weight.txt");
        load_weight_txt(&m, path);
    } else {
        join_path(path, sizeof path, dir, opt.model, "_weight.bin");
        join_path(path2, sizeof path2, dir, opt.model, "_bias.bin");
        load_weight_bins(&m, path, path2);
    }
    prepare_layers(&m);
    check_overflow(&m);
    plan_memory(&m);

    Dataset ds;
    memset(&ds, 0, sizeof ds);
    if (!strcmp(m.dataset, "mnist")) {
        char img[4096], lab[4096];
        int n1 = snprintf(img, sizeof img, "%s", opt.images ? opt.images : "");
        int n2 = snprintf(lab, sizeof lab, "%s", opt.labels ? opt.labels : "");
        if (!opt.images)
            n1 = snprintf(img, sizeof img, "%s/MNIST/raw/t10k-images-idx3-ubyte", data);
        if (!opt.labels)
            n2 = snprintf(lab, sizeof lab, "%s/MNIST/raw/t10k-labels-idx1-ubyte", data);
        if (n1 < 0 || (size_t)n1 >= sizeof img || n2 < 0 || (size_t)n2 >= sizeof lab)
            fail("%s: dataset path too long", data);
        load_mnist(&ds, img, lab, &m);
    } else {
        if (opt.labels)
            fail("%s: --labels does not apply to cifar10 (labels are inside the batch file)", opt.labels);
        char img[4096];
        int n1 = opt.images ? snprintf(img, sizeof img, "%s", opt.images)
                            : snprintf(img, sizeof img, "%s/cifar-10-batches-bin/test_batch.bin", data);
        if (n1 < 0 || (size_t)n1 >= sizeof img)
            fail("%s: dataset path too long", data);
        load_cifar(&ds, img, &m);
    }
    size_t count = ds.count;
    if (opt.limit > 0 && (size_t)opt.limit < count)
        count = (size_t)opt.limit;

    /* --logits goes to FILE.tmp, renamed over FILE only when complete. */
    FILE *logits = NULL;
    char tmp_path[4200];
    if (opt.logits) {
        int n = snprintf(tmp_path, sizeof tmp_path, "%s.tmp", opt.logits);
        if (n < 0 || (size_t)n >= sizeof tmp_path)
            fail("%s: path too long", opt.logits);
        logits = fopen(tmp_path, "w");
        if (!logits)
            fail("%s: cannot write (%s)", tmp_path, strerror(errno));
        g_tmp_path = tmp_path;
    }

    /* Optimized kernels: repacked weights, then the reference copies are
     * dropped; one workspace (arena, scratch) per thread. */
    FastModel fm;
    Workspace *ws = NULL;
    int n_threads = 1;
    memset(&fm, 0, sizeof fm);
    if (opt.reference) {
        prepare_reference_weights(&m);
    } else {
        fast_prepare(&fm, &m);
        free(m.weight_raw);
        m.weight_raw = NULL;
#ifdef _OPENMP
        n_threads = omp_get_max_threads();
        if (n_threads < 1)
            n_threads = 1;
#endif
        ws = xcalloc((size_t)n_threads, sizeof *ws, "workspaces");
        for (int t = 0; t < n_threads; t++)
            workspace_init(&ws[t], &fm, &m);
    }

    /* Images run in chunks (in parallel with OpenMP); results are reported in order. */
    enum { CHUNK = 256 };
    const Op *out_op = &m.ops[m.n_ops - 1];
    const size_t n_out = (size_t)out_op->c;
    uint8_t *results = xmalloc(CHUNK * n_out, "results");
    size_t correct = 0;
    double t0 = now_seconds();
    for (size_t start = 0; start < count; start += CHUNK) {
        const long n = (long)(count - start < CHUNK ? count - start : CHUNK);
        if (opt.reference) {
            for (long j = 0; j < n; j++)
                memcpy(results + (size_t)j * n_out,
                       run_model(&m, ds.pixels + (start + (size_t)j) * ds.image_stride), n_out);
        } else {
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1)
#endif
            for (long j = 0; j < n; j++) {
                int t = 0;
#ifdef _OPENMP
                t = omp_get_thread_num();
#endif
                memcpy(results + (size_t)j * n_out,
                       run_model_fast(&m, &fm, &ws[t], ds.pixels + (start + (size_t)j) * ds.image_stride), n_out);
            }
        }
        for (long j = 0; j < n; j++) {
            const uint8_t *out = results + (size_t)j * n_out;
            size_t i = start + (size_t)j;
            int32_t best = 0;
            for (int32_t c = 1; c < out_op->c; c++)      /* argmax, first index on ties */
                if (out[c] > out[best])
                    best = c;
            correct += best == ds.labels[i * ds.label_stride];
            if (logits)
                for (int32_t c = 0; c < out_op->c; c++)
                    fprintf(logits, c + 1 < out_op->c ? "%d," : "%d\n", out[c]);
        }
    }
    double seconds = now_seconds() - t0;

    if (logits) {
        int bad = ferror(logits);
        bad |= fclose(logits) != 0;
        if (bad)
            fail("%s: write error", tmp_path);
        if (rename(tmp_path, opt.logits) != 0)
            fail("%s: cannot rename to %s (%s)", tmp_path, opt.logits, strerror(errno));
        g_tmp_path = NULL;
    }

    if (!opt.quiet) {
        printf("model: %s (%s, fingerprint %s), %d ops, %s weights from %s files, %zu KiB activations\n",
               m.name, m.dataset, m.fingerprint, m.n_ops, m.weight_signed ? "int8" : "uint8",
               opt.txt ? "txt" : "bin", (m.arena_bytes + 1023) / 1024);
        printf("images: %zu of %zu from %s\n", count, ds.count, ds.source);
        printf("accuracy: %.2f%% (%zu/%zu)\n", 100.0 * (double)correct / (double)count, correct, count);
        printf("speed: %.1f images/s\n", seconds > 0 ? (double)count / seconds : 0.0);
    }
    printf("result: images=%zu correct=%zu seconds=%.4f\n", count, correct, seconds);

    free(results);
    for (int t = 0; ws && t < n_threads; t++)
        workspace_free(&ws[t]);
    free(ws);
    fast_free(&fm);
    free(ds.image_buf);
    free(ds.label_buf);
    free_model(&m);
    return 0;
}
