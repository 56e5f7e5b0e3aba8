/*
 * model.c -- everything the C engine reads from files: model.bin (format version 3, README
 * "Exported files"), the weight files it seals, and the load-time checks (accumulator bound,
 * work limits, the activation memory plan).  Nothing here runs per image.
 *
 *   1. errors, helpers, CRC-32, file reading
 *   2. the op kinds: their declaration table (KINDS) and validate functions
 *   3. model.bin: header, seal, the generic record parser, layer tiling
 *   4. weight.bin + bias.bin, weight.txt
 *   5. the accumulator bound and the memory plan; the whole load
 *
 * Every problem is one fail() line naming the file; nothing trusts a length from a file.
 * Whatever a failed load allocated hangs off the Model (free_model), so the fuzzing build,
 * where fail() longjmps, leaks nothing.
 */
#define _POSIX_C_SOURCE 200809L     /* stat */

#include "fpgai.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------------ */
/* 1. Errors, helpers, CRC-32, file reading                                  */
/* ------------------------------------------------------------------------ */

const char *fpgai_tmp_path;         /* a partial output file to delete on error */

#ifdef FPGAI_FUZZ
/* Fuzzing build (c/fuzz/): a harness that sets fpgai_fuzz_jmp gets every error as a longjmp
 * instead of exit(1), the message in fuzz_msg (not printed: speed). */
jmp_buf *fpgai_fuzz_jmp;
static char fuzz_msg[512];
#endif

void fail(const char *fmt, ...)
{
    va_list ap;
#ifdef FPGAI_FUZZ
    if (fpgai_fuzz_jmp) {
        va_start(ap, fmt);
        vsnprintf(fuzz_msg, sizeof fuzz_msg, fmt, ap);
        va_end(ap);
        longjmp(*fpgai_fuzz_jmp, 1);
    }
#endif
    fputs("error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (fpgai_tmp_path)
        remove(fpgai_tmp_path);
    exit(1);
}

void *xmalloc(size_t n, const char *what)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        fail("out of memory allocating %zu bytes for %s", n, what);
    return p;
}

void *xcalloc(size_t count, size_t size, const char *what)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        fail("out of memory allocating %zu x %zu bytes for %s", count, size, what);
    return p;
}

/* Little- and big-endian reads that do not depend on the host's byte order. */
uint32_t rd_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd_u64(const uint8_t *p)
{
    return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32;
}

uint32_t rd_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* uint32 -> int32 two's complement without implementation-defined conversion */
static int32_t u32_to_i32(uint32_t u)
{
    return u <= INT32_MAX ? (int32_t)u : (int32_t)(u - 2147483648u) - INT32_MAX - 1;
}

static float rd_f32(const uint8_t *p)
{
    uint32_t u = rd_u32(p);
    float f;
    memcpy(&f, &u, sizeof f);        /* assumes IEEE-754 binary32 floats */
    return f;
}

/* zlib's CRC-32 (reflected polynomial 0xEDB88320, initial value and final XOR 0xFFFFFFFF),
 * eight bytes a step (slicing-by-8); crc32_bytes("123456789") = 0xCBF43926. */
static uint32_t crc_table[8][256];

uint32_t crc32_bytes(const uint8_t *p, size_t n)
{
    if (!crc_table[0][1]) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            crc_table[0][i] = c;
        }
        for (int t = 1; t < 8; t++)
            for (int i = 0; i < 256; i++)
                crc_table[t][i] = crc_table[t - 1][i] >> 8 ^ crc_table[0][crc_table[t - 1][i] & 0xff];
    }
    uint32_t c = 0xFFFFFFFFu;
    for (; n >= 8; n -= 8, p += 8) {
        uint32_t a = c ^ rd_u32(p), b = rd_u32(p + 4);
        c = crc_table[7][a & 0xff] ^ crc_table[6][a >> 8 & 0xff] ^ crc_table[5][a >> 16 & 0xff] ^
            crc_table[4][a >> 24] ^ crc_table[3][b & 0xff] ^ crc_table[2][b >> 8 & 0xff] ^
            crc_table[1][b >> 16 & 0xff] ^ crc_table[0][b >> 24];
    }
    for (; n; n--, p++)
        c = crc_table[0][(c ^ *p) & 0xff] ^ c >> 8;
    return c ^ 0xFFFFFFFFu;
}

/* Size of a regular file, or fail. */
static size_t file_size(const char *path, size_t max_size)
{
    struct stat st;
    if (stat(path, &st) != 0)
        fail("%s: cannot open (%s)", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        fail("%s: not a regular file", path);
    if (st.st_size < 0 || (uint64_t)st.st_size > max_size)
        fail("%s: %lld bytes, larger than the %zu-byte limit", path, (long long)st.st_size, max_size);
    return (size_t)st.st_size;
}

/* Read a whole regular file (at most max_size bytes) into a new buffer, NUL-terminated. */
uint8_t *read_file(const char *path, size_t max_size, size_t *size_out)
{
    size_t size = file_size(path, max_size);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail("%s: cannot open (%s)", path, strerror(errno));
    uint8_t *buf = malloc(size + 1);
    if (!buf) {
        fclose(f);
        fail("out of memory allocating %zu bytes for %s", size + 1, path);
    }
    size_t got = fread(buf, 1, size, f);
    int extra = fgetc(f);               /* the file must not have grown meanwhile */
    int bad = ferror(f);
    fclose(f);
    if (got != size || extra != EOF || bad) {
        free(buf);
        fail("%s: read error or file changed while reading", path);
    }
    buf[size] = 0;
    *size_out = size;
    return buf;
}

/* Copy n bytes of file content for a message or a name: at most cap - 1 of them, stopping at
 * a NUL, anything but printable ASCII shown as '?'. */
static void printable(char *dst, size_t cap, const char *src, size_t n)
{
    size_t i = 0;
    for (; i < n && i + 1 < cap && src[i]; i++)
        dst[i] = src[i] >= 0x20 && src[i] < 0x7f ? src[i] : '?';
    dst[i] = 0;
}

static void join_path(char *out, size_t cap, const char *dir, const char *model, const char *suffix)
{
    int n = snprintf(out, cap, "%s/%s%s", dir, model, suffix);
    if (n < 0 || (size_t)n >= cap)
        fail("%s/%s%s: path too long", dir, model, suffix);
}

/* A weight file's content against the size and CRC-32 model.bin recorded for it. */
static void check_seal(const Model *m, int file, const char *path, const uint8_t *data, size_t size)
{
    if ((uint64_t)size != m->file_size[file])
        fail("%s: %zu bytes, model.bin recorded %llu: damaged, or not from the same export", path, size,
             (unsigned long long)m->file_size[file]);
    uint32_t crc = crc32_bytes(data, size);
    if (crc != m->file_crc[file])
        fail("%s: CRC-32 0x%08x differs from the 0x%08x model.bin recorded: damaged, or not from the "
             "same export", path, crc, m->file_crc[file]);
}

/* Read a file model.bin seals; its size is checked before reading (check_seal then checks
 * it again, with the CRC, from memory: the path the fuzzers take). */
static uint8_t *read_sealed(const Model *m, int file, const char *path, size_t *size)
{
    size_t n = file_size(path, (size_t)1 << 40);
    if ((uint64_t)n != m->file_size[file])
        fail("%s: %zu bytes, model.bin recorded %llu: damaged, or not from the same export", path, n,
             (unsigned long long)m->file_size[file]);
    return read_file(path, n, size);
}

/* ------------------------------------------------------------------------ */
/* 2. The op kinds                                                           */
/* ------------------------------------------------------------------------ */

static const char *kind_name(const Op *op)
{
    return KINDS[op->kind].name;
}

/* Output size of a window op along one axis: (in + before + after - extent) / stride + 1, or -1;
 * extent = the kernel's reach, dilation (k - 1) + 1. */
static int64_t window_out(int32_t in, int64_t extent, int32_t stride, int32_t before, int32_t after, int ceil_mode)
{
    const int64_t padded = (int64_t)in + before + after;
    if (padded < extent)
        return -1;
    int64_t out = (padded - extent + (ceil_mode ? stride - 1 : 0)) / stride + 1;
    /* PyTorch's rule: a last window may reach past the padded input, never start past the
     * input and its left padding, so every window still holds a real element */
    if (ceil_mode && (out - 1) * stride >= (int64_t)in + before)
        out--;
    return out;
}

/* Largest |x - z| of a tensor: every op clamps its output to [qmin, qmax] (maxpool copies its
 * input's bounds, checked at load; the input is 0..255). */
static int32_t max_abs_centered(const Op *x)
{
    int32_t a = x->zero_point - x->qmin, b = x->qmax - x->zero_point;
    return a > b ? a : b;
}

/* The work one op may ask for: MACs (conv, linear) or window reads (pools) */
static void check_work(const Model *m, int i, const char *what, uint64_t work)
{
    if (work > MAX_WORK)
        fail("%s: op %d (%s): %llu %s, over the limit of 2^32 per op", m->path, i, kind_name(&m->ops[i]),
             (unsigned long long)work, what);
}

static void check_scratch(const Model *m, int i, const char *what, uint64_t elems)
{
    if (elems > MAX_SCRATCH)
        fail("%s: op %d (%s): %llu %s elements, over the %llu limit", m->path, i, kind_name(&m->ops[i]),
             (unsigned long long)elems, what, (unsigned long long)MAX_SCRATCH);
}

/* kernel, stride, padding and dilation against the input and output sizes (conv, pools); no
 * padding reaches as far as the kernel, so every window holds a real element */
static void check_window(const Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    const int64_t eh = (int64_t)op->dil_h * (op->kh - 1) + 1, ew = (int64_t)op->dil_w * (op->kw - 1) + 1;
    const int32_t pads[4] = {op->pad_top, op->pad_left, op->pad_bottom, op->pad_right};
    static const char *const side[4] = {"top", "left", "bottom", "right"};
    for (int k = 0; k < 4; k++)
        if (pads[k] >= (k % 2 ? ew : eh))
            fail("%s: op %d (%s): %s padding %d is not below the kernel's reach %lld", m->path, i, kind_name(op),
                 side[k], pads[k], (long long)(k % 2 ? ew : eh));
    int64_t oh = window_out(x->h, eh, op->stride_h, op->pad_top, op->pad_bottom, op->ceil_mode);
    int64_t ow = window_out(x->w, ew, op->stride_w, op->pad_left, op->pad_right, op->ceil_mode);
    if (oh != op->h || ow != op->w)
        fail("%s: op %d (%s): output %dx%d, but a %dx%d input with kernel %dx%d, stride %dx%d, padding "
             "%d,%d,%d,%d (top, left, bottom, right), dilation %dx%d%s gives %lldx%lld", m->path, i, kind_name(op),
             op->h, op->w, x->h, x->w, op->kh, op->kw, op->stride_h, op->stride_w, op->pad_top, op->pad_left,
             op->pad_bottom, op->pad_right, op->dil_h, op->dil_w, op->ceil_mode ? ", ceil_mode" : "",
             (long long)oh, (long long)ow);
}

/* A pool's geometry in the conv's terms: its padding on both sides, no dilation */
static void pool_geometry(Op *op)
{
    op->pad_bottom = op->pad_top;
    op->pad_right = op->pad_left;
    op->dil_h = op->dil_w = 1;
}

static void check_same_channels(const Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    if (op->c != x->c)
        fail("%s: op %d (%s): %d channels, its input tensor %d has %d", m->path, i, kind_name(op), op->c,
             op->in[0], x->c);
}

static void check_weight_zero_point(const Model *m, int i)
{
    const Op *op = &m->ops[i];
    if (m->weight_signed && op->w_zero_point != 0)
        fail("%s: op %d (%s): weight_zero_point %d, but per-channel int8 weights have zero point 0",
             m->path, i, kind_name(op), op->w_zero_point);
}

static void validate_input(Model *m, int i)
{
    const Op *op = &m->ops[i];
    if (op->zero_point != 0 || op->qmin != 0 || op->qmax != 255)
        fail("%s: op %d (input): raw pixels need zero point 0 and clamp 0..255", m->path, i);
}

static void validate_conv(Model *m, int i)
{
    Op *op = &m->ops[i];
    const Op *x = op_input(m, op, 0);
    if (x->c % op->groups || op->c % op->groups)
        fail("%s: op %d (conv): groups %d does not divide its input's %d channels and its %d", m->path, i,
             op->groups, x->c, op->c);
    check_window(m, i);
    check_weight_zero_point(m, i);
    uint64_t k = (uint64_t)(x->c / op->groups) * (uint64_t)op->kh * (uint64_t)op->kw;     /* < 2^48 */
    if (k > INT32_MAX)
        fail("%s: op %d (conv): kernel of %dx%dx%d weights is too large", m->path, i, x->c / op->groups,
             op->kh, op->kw);
    op->k_size = (int32_t)k;
    check_work(m, i, "multiply-accumulates", (uint64_t)op_elems(op) * k);
    /* the kernels' scratch: im2col rows (the reference pads each to 8 lanes), the padded input */
    uint64_t plane = ((uint64_t)op->h * (uint64_t)op->w + 7) / 8 * 8;
    check_scratch(m, i, "im2col", k * plane);
    check_scratch(m, i, "padded input", ((uint64_t)x->h + (uint64_t)op->pad_top + (uint64_t)op->pad_bottom)
                                        * ((uint64_t)x->w + (uint64_t)op->pad_left + (uint64_t)op->pad_right)
                                        * (uint64_t)x->c);
}

static void validate_linear(Model *m, int i)
{
    Op *op = &m->ops[i];
    const Op *x = op_input(m, op, 0);
    if (op->h != 1 || op->w != 1)
        fail("%s: op %d (linear): output shape %dx%dx%d, expected %dx1x1", m->path, i, op->c, op->h, op->w,
             op->c);
    check_weight_zero_point(m, i);
    op->k_size = (int32_t)op_elems(x);      /* <= 2^26 */
    op->groups = 1;
    check_work(m, i, "multiply-accumulates", (uint64_t)op->c * (uint64_t)op->k_size);
}

static void validate_maxpool(Model *m, int i)
{
    Op *op = &m->ops[i];
    const Op *x = op_input(m, op, 0);
    pool_geometry(op);
    check_same_channels(m, i);
    check_window(m, i);
    check_work(m, i, "window reads", (uint64_t)op_elems(op) * (uint64_t)op->kh * (uint64_t)op->kw);
    if (op->zero_point != x->zero_point || op->qmin != x->qmin || op->qmax != x->qmax)
        fail("%s: op %d (maxpool): zero point/clamp %d/%d..%d differ from its input's %d/%d..%d", m->path, i,
             op->zero_point, op->qmin, op->qmax, x->zero_point, x->qmin, x->qmax);
}

/* (window sum - n*z_in) * m + rounding must fit int64 */
static void validate_avgpool(Model *m, int i)
{
    Op *op = &m->ops[i];
    const Op *x = op_input(m, op, 0);
    pool_geometry(op);
    check_same_channels(m, i);
    check_window(m, i);
    uint64_t n = (uint64_t)op->kh * (uint64_t)op->kw;
    check_work(m, i, "window reads", (uint64_t)op_elems(op) * n);
    int64_t window = (int64_t)n * max_abs_centered(x);      /* <= 2^32 * 255 */
    int64_t room = INT64_MAX - ((int64_t)1 << (MAX_SHIFT - 1));
    if (op->multiplier[0] > 0 && window > room / op->multiplier[0])
        fail("%s: op %d (avgpool): window sum %lld times multiplier %d overflows int64", m->path, i,
             (long long)window, op->multiplier[0]);
}

/* (a - z_a) * m_a + (b - z_b) * m_b: below 2 * 255 * 2^31, far inside int64 */
static void validate_add(Model *m, int i)
{
    const Op *op = &m->ops[i];
    for (int k = 0; k < op->n_inputs; k++) {
        const Op *x = op_input(m, op, k);
        if (x->c != op->c || x->h != op->h || x->w != op->w)
            fail("%s: op %d (add): input %d (tensor %d) is %dx%dx%d, the output %dx%dx%d", m->path, i, k,
                 op->in[k], x->c, x->h, x->w, op->c, op->h, op->w);
    }
}

/* (x - z_i) * m_i: below 255 * 2^31 */
static void validate_concat(Model *m, int i)
{
    const Op *op = &m->ops[i];
    int64_t channels = 0;
    for (int k = 0; k < op->n_inputs; k++) {
        const Op *x = op_input(m, op, k);
        if (x->h != op->h || x->w != op->w)
            fail("%s: op %d (concat): input %d (tensor %d) is %dx%d, the output %dx%d", m->path, i, k, op->in[k],
                 x->h, x->w, op->h, op->w);
        channels += x->c;
    }
    if (channels != op->c)
        fail("%s: op %d (concat): its inputs have %lld channels together, the output %d", m->path, i,
             (long long)channels, op->c);
}

/* out = table[x]: elementwise, so the input's shape; every table value inside the op's clamp, so
 * its output keeps the invariant the accumulator bound of the next layer relies on (no rounding) */
static void validate_lut(Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    if (x->c != op->c || x->h != op->h || x->w != op->w)
        fail("%s: op %d (lut): output %dx%dx%d, its input tensor %d is %dx%dx%d", m->path, i, op->c, op->h, op->w,
             op->in[0], x->c, x->h, x->w);
    for (int32_t q = 0; q < op->n_table; q++)
        if (op->table[q] < op->qmin || op->table[q] > op->qmax)
            fail("%s: op %d (lut): table value %d (index %d) outside its clamp %d..%d", m->path, i, op->table[q], q,
                 op->qmin, op->qmax);
}

/* (a - z_a) * (b - z_b) * m: the first input has the output's shape, the second it or Cx1x1
 * (broadcast over H x W); |product| <= 255 * 255 < 2^16, times m < 2^31, plus the rounding
 * constant: inside int64 (checked, as the rule of the contract) */
static void validate_mul(Model *m, int i)
{
    const Op *op = &m->ops[i], *a = op_input(m, op, 0), *b = op_input(m, op, 1);
    if (a->c != op->c || a->h != op->h || a->w != op->w)
        fail("%s: op %d (mul): input 0 (tensor %d) is %dx%dx%d, the output %dx%dx%d", m->path, i, op->in[0], a->c,
             a->h, a->w, op->c, op->h, op->w);
    if (b->c != op->c || !((b->h == op->h && b->w == op->w) || (b->h == 1 && b->w == 1)))
        fail("%s: op %d (mul): input 1 (tensor %d) is %dx%dx%d, neither the output's %dx%dx%d nor %dx1x1", m->path,
             i, op->in[1], b->c, b->h, b->w, op->c, op->h, op->w, op->c);
    int64_t product = (int64_t)max_abs_centered(a) * max_abs_centered(b);     /* < 2^16 */
    int64_t room = INT64_MAX - ((int64_t)1 << (MAX_SHIFT - 1));
    if (op->multiplier[0] > 0 && product > room / op->multiplier[0])
        fail("%s: op %d (mul): product %lld times multiplier %d overflows int64", m->path, i, (long long)product,
             op->multiplier[0]);
}

/* The data-movement kinds (maxpool's rule): the output keeps its input's zero point and clamp */
static void check_same_qparams(const Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    if (op->zero_point != x->zero_point || op->qmin != x->qmin || op->qmax != x->qmax)
        fail("%s: op %d (%s): zero point/clamp %d/%d..%d differ from its input's %d/%d..%d", m->path, i,
             kind_name(op), op->zero_point, op->qmin, op->qmax, x->zero_point, x->qmin, x->qmax);
}

/* channel shuffle: the input's shape; groups divides C */
static void validate_shuffle(Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    if (x->c != op->c || x->h != op->h || x->w != op->w)
        fail("%s: op %d (shuffle): output %dx%dx%d, its input tensor %d is %dx%dx%d", m->path, i, op->c, op->h,
             op->w, op->in[0], x->c, x->h, x->w);
    if (op->c % op->groups)
        fail("%s: op %d (shuffle): groups %d does not divide its %d channels", m->path, i, op->groups, op->c);
    check_same_qparams(m, i);
}

/* channels channel_start .. channel_start + C - 1 of the input, its H x W */
static void validate_slice(Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    if (x->h != op->h || x->w != op->w)
        fail("%s: op %d (slice): output %dx%d, its input tensor %d is %dx%d", m->path, i, op->h, op->w, op->in[0],
             x->h, x->w);
    if ((int64_t)op->ch_start + op->c > x->c)
        fail("%s: op %d (slice): channels %d..%lld, its input tensor %d has %d", m->path, i, op->ch_start,
             (long long)op->ch_start + op->c - 1, op->in[0], x->c);
    check_same_qparams(m, i);
}

/* nearest upsampling: H = in H * scale_h, W = in W * scale_w, the input's C */
static void validate_upsample(Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    if (x->c != op->c || (int64_t)x->h * op->scale_h != op->h || (int64_t)x->w * op->scale_w != op->w)
        fail("%s: op %d (upsample): output %dx%dx%d, but its input tensor %d of %dx%dx%d by %dx%d gives "
             "%dx%lldx%lld", m->path, i, op->c, op->h, op->w, op->in[0], x->c, x->h, x->w, op->scale_h,
             op->scale_w, x->c, (long long)x->h * op->scale_h, (long long)x->w * op->scale_w);
    check_same_qparams(m, i);
}

/* windows of every output position (their reads bounded), each sum times its multiplier within int64 */
static void validate_adaptive_avgpool(Model *m, int i)
{
    const Op *op = &m->ops[i], *x = op_input(m, op, 0);
    check_same_channels(m, i);
    /* a window spans at most in/out + 2 rows (columns): bounds the reads before the sum below */
    check_work(m, i, "window reads", (uint64_t)op_elems(op) * ((uint64_t)x->h / (uint64_t)op->h + 2)
                                     * ((uint64_t)x->w / (uint64_t)op->w + 2));
    const int64_t room = INT64_MAX - ((int64_t)1 << (MAX_SHIFT - 1));
    for (int32_t oy = 0; oy < op->h; oy++) {
        int32_t y0, y1;
        adaptive_window(oy, op->h, x->h, &y0, &y1);
        for (int32_t ox = 0; ox < op->w; ox++) {
            int32_t x0, x1;
            adaptive_window(ox, op->w, x->w, &x0, &x1);
            int64_t window = (int64_t)(y1 - y0) * (x1 - x0) * max_abs_centered(x);   /* <= 2^32 * 255 */
            int32_t mult = op->multiplier[(size_t)oy * op->w + ox];
            if (mult > 0 && window > room / mult)
                fail("%s: op %d (adaptive_avgpool): window sum %lld times multiplier %d overflows int64", m->path, i,
                     (long long)window, mult);
        }
    }
}

#define PARAM(field, name, lo, hi) {name, offsetof(Op, field), lo, hi}
#define WINDOW PARAM(kh, "kernel_h", 1, MAX_DIM), PARAM(kw, "kernel_w", 1, MAX_DIM), \
               PARAM(stride_h, "stride_h", 1, MAX_DIM), PARAM(stride_w, "stride_w", 1, MAX_DIM)
#define POOL_PADDING PARAM(pad_top, "pad_h", 0, MAX_DIM), PARAM(pad_left, "pad_w", 0, MAX_DIM)
#define CONV_PADDING PARAM(pad_top, "pad_top", 0, MAX_DIM), PARAM(pad_left, "pad_left", 0, MAX_DIM), \
                     PARAM(pad_bottom, "pad_bottom", 0, MAX_DIM), PARAM(pad_right, "pad_right", 0, MAX_DIM), \
                     PARAM(dil_h, "dilation_h", 1, MAX_DIM), PARAM(dil_w, "dilation_w", 1, MAX_DIM)
#define WEIGHTS PARAM(w_zero_point, "weight_zero_point", 0, 255), \
                PARAM(w_offset, "weight_offset", 0, INT32_MAX), PARAM(b_offset, "bias_offset", 0, INT32_MAX)

/* THE op kinds (README "Exported files", the kinds table).  The record parser reads a record
 * from its row: n_inputs in [min_inputs, max_inputs] and the ids, the parameters in order,
 * n_mult / n_shift / n_table words by their rule; then the row's validate function checks the rules
 * between fields.  A new kind: a row here, its validate function, a kernel in kernels_ref.c
 * and in kernels_fast.c (their dispatch tables), the enum in fpgai.h. */
const KindSpec KINDS[OP_KIND_COUNT] = {
    [OP_INPUT] = {"input", OP_INPUT, 0, 0, 0, {{NULL, 0, 0, 0}}, RQ_NONE, RQ_NONE, RQ_NONE, validate_input},
    [OP_CONV] = {"conv", OP_CONV, 1, 1, 1,
                 {WINDOW, CONV_PADDING, PARAM(groups, "groups", 1, MAX_DIM), WEIGHTS, {NULL, 0, 0, 0}},
                 RQ_C, RQ_C, RQ_NONE, validate_conv},
    [OP_LINEAR] = {"linear", OP_LINEAR, 1, 1, 1, {WEIGHTS, {NULL, 0, 0, 0}}, RQ_C, RQ_C, RQ_NONE, validate_linear},
    [OP_MAXPOOL] = {"maxpool", OP_MAXPOOL, 1, 1, 0, {WINDOW, POOL_PADDING, PARAM(ceil_mode, "ceil_mode", 0, 1),
                                                         {NULL, 0, 0, 0}}, RQ_NONE, RQ_NONE, RQ_NONE, validate_maxpool},
    [OP_AVGPOOL] = {"avgpool", OP_AVGPOOL, 1, 1, 0, {WINDOW, {NULL, 0, 0, 0}}, RQ_ONE, RQ_ONE, RQ_NONE,
                     validate_avgpool},
    [OP_ADD] = {"add", OP_ADD, 2, 2, 0, {{NULL, 0, 0, 0}}, RQ_TWO, RQ_ONE, RQ_NONE, validate_add},
    [OP_CONCAT] = {"concat", OP_CONCAT, 2, MAX_INPUTS, 0, {{NULL, 0, 0, 0}}, RQ_INPUTS, RQ_INPUTS,
                   RQ_NONE, validate_concat},
    [OP_LUT] = {"lut", OP_LUT, 1, 1, 0, {{NULL, 0, 0, 0}}, RQ_NONE, RQ_NONE, RQ_256, validate_lut},
    [OP_MUL] = {"mul", OP_MUL, 2, 2, 0, {{NULL, 0, 0, 0}}, RQ_ONE, RQ_ONE, RQ_NONE, validate_mul},
    [OP_SHUFFLE] = {"shuffle", OP_SHUFFLE, 1, 1, 0, {PARAM(groups, "groups", 1, MAX_DIM), {NULL, 0, 0, 0}},
                    RQ_NONE, RQ_NONE, RQ_NONE, validate_shuffle},
    [OP_SLICE] = {"slice", OP_SLICE, 1, 1, 0, {PARAM(ch_start, "channel_start", 0, MAX_DIM), {NULL, 0, 0, 0}},
                  RQ_NONE, RQ_NONE, RQ_NONE, validate_slice},
    [OP_UPSAMPLE] = {"upsample", OP_UPSAMPLE, 1, 1, 0,
                     {PARAM(scale_h, "scale_h", 1, MAX_DIM), PARAM(scale_w, "scale_w", 1, MAX_DIM), {NULL, 0, 0, 0}},
                     RQ_NONE, RQ_NONE, RQ_NONE, validate_upsample},
    [OP_ADAPTIVE_AVGPOOL] = {"adaptive_avgpool", OP_ADAPTIVE_AVGPOOL, 1, 1, 0, {{NULL, 0, 0, 0}}, RQ_HW, RQ_HW,
                             RQ_NONE, validate_adaptive_avgpool},
};

const char *const RQ_RULE_NAMES[RQ_RULE_COUNT] = {"0", "1", "2", "C", "n_inputs", "256", "HW"};

static int64_t rq_count(int rule, const Op *op)
{
    return rule == RQ_ONE ? 1 : rule == RQ_TWO ? 2 : rule == RQ_C ? op->c : rule == RQ_INPUTS ? op->n_inputs
         : rule == RQ_256 ? 256 : rule == RQ_HW ? (int64_t)op->h * op->w : 0;
}

void print_op_table(void)
{
    for (int k = 0; k < OP_KIND_COUNT; k++) {
        const KindSpec *s = &KINDS[k];
        printf("{\"code\":%d,\"kind\":\"%s\",\"min_inputs\":%d,\"max_inputs\":%d,\"params\":[", s->code, s->name,
               s->min_inputs, s->max_inputs);
        for (const ParamSpec *p = s->params; p->name; p++)
            printf("%s\"%s\"", p == s->params ? "" : ",", p->name);
        printf("],\"n_mult\":\"%s\",\"n_shift\":\"%s\",\"n_table\":\"%s\"}\n", RQ_RULE_NAMES[s->n_mult],
               RQ_RULE_NAMES[s->n_shift], RQ_RULE_NAMES[s->n_table]);
    }
}

/* ------------------------------------------------------------------------ */
/* 3. model.bin                                                              */
/* ------------------------------------------------------------------------ */

/* A NUL-terminated, NUL-padded header string of width bytes. */
static void header_string(const Model *m, const uint8_t *src, size_t width, const char *field, char *dst)
{
    const uint8_t *nul = memchr(src, 0, width);
    if (!nul)
        fail("%s: %s field of %zu bytes has no terminating NUL", m->path, field, width);
    for (const uint8_t *p = nul; p < src + width; p++)
        if (*p)
            fail("%s: %s field: bytes after its NUL are not zero", m->path, field);
    printable(dst, width, (const char *)src, width);
}

static const char *const FILE_NAMES[FILE_COUNT] = {"weight.bin", "bias.bin", "weight.txt"};

static void parse_header(Model *m, const uint8_t *data, size_t size, const char *want_model)
{
    const char *path = m->path;
    if (size < 12)
        fail("%s: %zu bytes, too short for a model file", path, size);
    if (memcmp(data, "FPGAIQM\0", 8) != 0)
        fail("%s: bad magic, not an FPGAI model file", path);
    uint32_t version = rd_u32(data + 8);
    if (version != FORMAT_VERSION)
        fail("%s: model file format version %u, this engine reads version %d: run export_quant_model.py "
             "again to re-export the model", path, version, FORMAT_VERSION);
    if (size < HEADER_BYTES)
        fail("%s: %zu bytes, shorter than the %d-byte header", path, size, HEADER_BYTES);
    uint32_t crc = crc32_bytes(data + 16, size - 16), want_crc = rd_u32(data + 12);
    if (crc != want_crc)
        fail("%s: CRC-32 0x%08x of bytes 16 to the end differs from the 0x%08x the file recorded: damaged "
             "or truncated", path, crc, want_crc);
    uint32_t header = rd_u32(data + 16), n_ops = rd_u32(data + 20), mode = rd_u32(data + 24);
    if (header != HEADER_BYTES)
        fail("%s: header size %u, expected %d", path, header, HEADER_BYTES);
    if (n_ops < MIN_OPS || n_ops > MAX_OPS)
        fail("%s: %u ops, expected %d..%d", path, n_ops, MIN_OPS, MAX_OPS);
    if (mode > 1)
        fail("%s: weight mode %u, expected 1 (int8 per-channel) or 0 (uint8 per-tensor)", path, mode);
    m->weight_signed = (int)mode;
    m->weight_bytes = rd_u32(data + 28);
    m->bias_count = rd_u32(data + 32);
    if (m->weight_bytes > MAX_WEIGHTS || m->bias_count > MAX_WEIGHTS / 4)
        fail("%s: %lld weights / %lld biases, over this engine's limit", path, (long long)m->weight_bytes,
             (long long)m->bias_count);
    m->exported = rd_u32(data + 36);
    if (m->exported & ~3u)
        fail("%s: exported-files word 0x%x has bits other than 0 (bin) and 1 (txt)", path, m->exported);
    for (int f = 0; f < FILE_COUNT; f++) {
        const uint8_t *e = data + 40 + 16 * f;
        m->file_size[f] = rd_u64(e);
        m->file_crc[f] = rd_u32(e + 8);
        int exported = (m->exported >> (f == FILE_WEIGHT_TXT)) & 1;
        if (rd_u32(e + 12) != 0)
            fail("%s: %s entry: its last word is %u, not 0", path, FILE_NAMES[f], rd_u32(e + 12));
        if (!exported && (m->file_size[f] || m->file_crc[f]))
            fail("%s: %s was not exported, yet its size or CRC-32 is not 0", path, FILE_NAMES[f]);
    }
    if (m->exported & 1) {
        if (m->file_size[FILE_WEIGHT_BIN] != (uint64_t)m->weight_bytes)
            fail("%s: the header says %lld weights, but records a weight.bin of %llu bytes", path,
                 (long long)m->weight_bytes, (unsigned long long)m->file_size[FILE_WEIGHT_BIN]);
        if (m->file_size[FILE_BIAS_BIN] != 4 * (uint64_t)m->bias_count)
            fail("%s: the header says %lld biases, but records a bias.bin of %llu bytes", path,
                 (long long)m->bias_count, (unsigned long long)m->file_size[FILE_BIAS_BIN]);
    }
    header_string(m, data + 88, 32, "model name", m->name);
    header_string(m, data + 120, 16, "dataset", m->dataset);
    header_string(m, data + 136, 24, "fingerprint", m->fingerprint);
    for (size_t b = 160; b < HEADER_BYTES; b++)
        if (data[b])
            fail("%s: reserved header byte %zu is not 0", path, b);
    if (want_model && strcmp(m->name, want_model) != 0)
        fail("%s: holds model '%s', expected '%s'", path, m->name, want_model);
    if (strcmp(m->dataset, "mnist") != 0 && strcmp(m->dataset, "cifar10") != 0 && strcmp(m->dataset, "custom") != 0)
        fail("%s: unknown dataset '%s' (expected mnist, cifar10 or custom)", path, m->dataset);
    m->n_ops = (int)n_ops;
    m->ops = xcalloc(n_ops, sizeof *m->ops, "ops");
}

/* The words of one record after type and n_words, each taken with its range checked. */
typedef struct {
    const uint8_t *p;
    int64_t left;               /* words of the record not yet taken */
    const Model *m;
    int op;
} Words;

static int64_t take(Words *w, const char *field, int64_t lo, int64_t hi)
{
    const Op *op = &w->m->ops[w->op];
    if (w->left < 1)
        fail("%s: op %d (%s): the record ends before its %s", w->m->path, w->op, kind_name(op), field);
    int64_t v = rd_u32(w->p);
    w->p += 4;
    w->left--;
    if (v < lo || v > hi)
        fail("%s: op %d (%s): %s = %lld outside [%lld, %lld]", w->m->path, w->op, kind_name(op), field,
             (long long)v, (long long)lo, (long long)hi);
    return v;
}

/* A count word that must equal `want`, then that many words into *dst (owned by the op from
 * the start: an error midway leaks nothing). */
static int32_t take_array(Words *w, const char *count_name, int64_t want, int32_t **dst, const char *field,
                          int64_t lo, int64_t hi)
{
    int32_t n = (int32_t)take(w, count_name, want, want);
    int32_t *arr = *dst = xmalloc((size_t)n * sizeof *arr, field);
    for (int32_t k = 0; k < n; k++)
        arr[k] = (int32_t)take(w, field, lo, hi);
    return n;
}

/* One record, read by the generic parser from the declaration table. */
static size_t parse_record(Model *m, int i, const uint8_t *data, size_t size, size_t pos)
{
    const char *path = m->path;
    Op *op = &m->ops[i];
    if (size - pos < 8)
        fail("%s: truncated in op %d (at byte %zu of %zu)", path, i, pos, size);
    uint32_t type = rd_u32(data + pos), n_words = rd_u32(data + pos + 4);
    if (type >= OP_KIND_COUNT)
        fail("%s: op %d has unknown type %u", path, i, type);
    op->kind = (int32_t)type;
    const KindSpec *k = &KINDS[type];
    if ((type == OP_INPUT) != (i == 0))
        fail("%s: op %d is %s; op 0 must be the input and only op 0", path, i, k->name);
    if ((uint64_t)(size - pos - 8) < 4 * (uint64_t)n_words)
        fail("%s: truncated in op %d (%s): %u words past the end of the file", path, i, k->name, n_words);
    Words w = {data + pos + 8, n_words, m, i};

    op->c = (int32_t)take(&w, "C", 1, MAX_DIM);
    op->h = (int32_t)take(&w, "H", 1, MAX_DIM);
    op->w = (int32_t)take(&w, "W", 1, MAX_DIM);
    if ((int64_t)op_elems(op) > MAX_TENSOR)
        fail("%s: op %d (%s): output %dx%dx%d has more than 2^26 elements", path, i, k->name, op->c, op->h, op->w);
    op->zero_point = (int32_t)take(&w, "zero_point", 0, 255);
    op->qmin = (int32_t)take(&w, "qmin", 0, 255);
    op->qmax = (int32_t)take(&w, "qmax", op->qmin, 255);
    take(&w, "scale", 0, UINT32_MAX);
    op->scale = rd_f32(w.p - 4);
    op->n_inputs = (int32_t)take(&w, "n_inputs", k->min_inputs, k->max_inputs);
    op->in = xmalloc((size_t)op->n_inputs * sizeof *op->in, "input ids");
    for (int32_t j = 0; j < op->n_inputs; j++)
        op->in[j] = (int32_t)take(&w, "input tensor id", 0, i - 1);
    for (const ParamSpec *p = k->params; p->name; p++) {
        int32_t v = (int32_t)take(&w, p->name, p->lo, p->hi);
        memcpy((char *)op + p->offset, &v, sizeof v);
    }
    op->n_mult = take_array(&w, "n_mult", rq_count(k->n_mult, op), &op->multiplier, "multiplier", 0, INT32_MAX);
    op->n_shift = take_array(&w, "n_shift", rq_count(k->n_shift, op), &op->shift, "shift", 0, MAX_SHIFT);
    op->n_table = take_array(&w, "n_table", rq_count(k->n_table, op), &op->table, "table value", 0, 255);
    if (w.left)
        fail("%s: op %d (%s): record of %u words, its fields take %lld", path, i, k->name, n_words,
             (long long)(n_words - w.left));
    k->validate(m, i);
    return pos + 8 + 4 * (size_t)n_words;
}

/* The weighted layers must tile weight.bin and bias.bin exactly, in op order. */
static void check_tiling(const Model *m)
{
    int64_t w_pos = 0, b_pos = 0;
    for (int i = 0; i < m->n_ops; i++) {
        const Op *op = &m->ops[i];
        if (!KINDS[op->kind].weighted)
            continue;
        if (op->w_offset != w_pos || op->b_offset != b_pos)
            fail("%s: op %d (%s): weight offset %d / bias offset %d, expected %lld / %lld (layers must "
                 "tile the weight and bias files in order)", m->path, i, kind_name(op), op->w_offset,
                 op->b_offset, (long long)w_pos, (long long)b_pos);
        w_pos += (int64_t)op->c * op->k_size;
        b_pos += op->c;
        if (w_pos > m->weight_bytes || b_pos > m->bias_count)
            fail("%s: op %d (%s): weights end at %lld / biases at %lld, past the header's %lld / %lld",
                 m->path, i, kind_name(op), (long long)w_pos, (long long)b_pos, (long long)m->weight_bytes,
                 (long long)m->bias_count);
    }
    if (w_pos != m->weight_bytes || b_pos != m->bias_count)
        fail("%s: layers hold %lld weights and %lld biases, the header says %lld and %lld", m->path,
             (long long)w_pos, (long long)b_pos, (long long)m->weight_bytes, (long long)m->bias_count);
}

void parse_model_bin(Model *m, const uint8_t *data, size_t size, const char *want_model)
{
    parse_header(m, data, size, want_model);
    size_t pos = HEADER_BYTES;
    for (int i = 0; i < m->n_ops; i++)
        pos = parse_record(m, i, data, size, pos);
    if (pos != size)
        fail("%s: %zu bytes after the last op", m->path, size - pos);
    check_tiling(m);
}

/* ------------------------------------------------------------------------ */
/* 4. Weights and biases                                                     */
/* ------------------------------------------------------------------------ */

static void set_bias_pointers(Model *m)
{
    for (int i = 0; i < m->n_ops; i++)
        if (KINDS[m->ops[i].kind].weighted)
            m->ops[i].bias = m->bias + m->ops[i].b_offset;
}

/* --format bin needs bit 0 of the exported-files word, --format txt bit 1 */
static void require_format(const Model *m, int txt)
{
    if (txt && !(m->exported & 2))
        fail("%s: exported without weight.txt (EXPORT_MODE=bin): run with --format bin, or export again "
             "with EXPORT_MODE=txt or both", m->path);
    if (!txt && !(m->exported & 1))
        fail("%s: exported without weight.bin and bias.bin (EXPORT_MODE=txt): run with --format txt, or "
             "export again with EXPORT_MODE=bin or both", m->path);
}

void parse_weight_bins(Model *m, const uint8_t *w, size_t w_size, const char *weight_path,
                       const uint8_t *b, size_t b_size, const char *bias_path)
{
    require_format(m, 0);
    check_seal(m, FILE_WEIGHT_BIN, weight_path, w, w_size);
    check_seal(m, FILE_BIAS_BIN, bias_path, b, b_size);
    if (m->weight_signed) {
        const uint8_t *bad = memchr(w, 0x80, w_size);
        if (bad)
            fail("%s: weight at byte %zu is -128; per-channel int8 weights lie in [-127, 127]", weight_path,
                 (size_t)(bad - w));
    }
    m->weight_raw = xmalloc(w_size, "weights");
    memcpy(m->weight_raw, w, w_size);
    snprintf(m->weights_path, sizeof m->weights_path, "%s, %s", weight_path, bias_path);
    m->bias = xmalloc((size_t)m->bias_count * sizeof *m->bias, "biases");
    for (int64_t i = 0; i < m->bias_count; i++)
        m->bias[i] = u32_to_i32(rd_u32(b + 4 * (size_t)i));
    set_bias_pointers(m);
}

/* One comma-separated field of the text file as a number: optional sign, digits, optional
 * surrounding blanks.  Returns 0 if it is not an integer. */
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

/* Next weighted op after `layer`, or n_ops */
static int next_layer(const Model *m, int layer)
{
    do
        layer++;
    while (layer < m->n_ops && !KINDS[m->ops[layer].kind].weighted);
    return layer;
}

/* {model}_weight.txt: per layer a '# name ...' line, its weights, a '$ name ...' line, its
 * biases (comma-separated integers).  Fills the same arrays as the .bin files; every count is
 * checked against model.bin. */
void parse_weight_txt(Model *m, const char *text, size_t size, const char *path)
{
    require_format(m, 1);
    check_seal(m, FILE_WEIGHT_TXT, path, (const uint8_t *)text, size);
    snprintf(m->weights_path, sizeof m->weights_path, "%s", path);
    /* n values need at least 2n - 1 bytes (a digit each, separators between): refuse before
     * allocating what a short file cannot fill */
    uint64_t n_values = (uint64_t)m->weight_bytes + (uint64_t)m->bias_count;
    if (n_values > 0 && 2 * n_values - 1 > (uint64_t)size)
        fail("%s: %zu bytes cannot hold the %lld weights and %lld biases of model.bin", path, size,
             (long long)m->weight_bytes, (long long)m->bias_count);
    m->weight_raw = xcalloc((size_t)m->weight_bytes, 1, "weights");
    m->bias = xcalloc((size_t)m->bias_count, sizeof *m->bias, "biases");
    const int64_t lo = m->weight_signed ? -127 : 0, hi = m->weight_signed ? 127 : 255;

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
                    fail("%s:%ld: layer '%s' has %lld biases, model.bin expects %d", path, lineno, shown,
                         (long long)count, op->c);
                layer = next_layer(m, layer);
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
                    fail("%s:%ld: layer '%s' has %lld weights, model.bin expects %lld", path, lineno, shown,
                         (long long)count, (long long)op->c * op->k_size);
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
                if (v < lo || v > hi)
                    fail("%s:%ld: weight %lld outside [%lld, %lld]", path, lineno, (long long)v, (long long)lo,
                         (long long)hi);
                if (count == (int64_t)op->c * op->k_size)
                    fail("%s:%ld: more weights than the %lld of layer '%s'", path, lineno, (long long)count, shown);
                m->weight_raw[(size_t)op->w_offset + (size_t)count] = (uint8_t)(v < 0 ? v + 256 : v);
            } else {
                if (v < INT32_MIN || v > INT32_MAX)
                    fail("%s:%ld: bias %lld outside int32", path, lineno, (long long)v);
                if (count == op->c)
                    fail("%s:%ld: more biases than the %d of layer '%s'", path, lineno, op->c, shown);
                m->bias[(size_t)op->b_offset + (size_t)count] = (int32_t)v;
            }
            count++;
            f = comma + 1;
        }
    }
    const Op *op = layer >= 0 ? &m->ops[layer] : NULL;
    if (section == 1)
        fail("%s:%ld: end of file, layer '%s' has no '$' bias line", path, lineno, shown);
    if (section == 2 && count != op->c)
        fail("%s:%ld: end of file, layer '%s' has %lld biases, model.bin expects %d", path, lineno, shown,
             (long long)count, op->c);
    int want_layers = 0;
    for (int i = next_layer(m, -1); i < m->n_ops; i = next_layer(m, i))
        want_layers++;
    if (n_layers != want_layers)
        fail("%s: %d layers, model.bin has %d conv/linear ops", path, n_layers, want_layers);
    set_bias_pointers(m);
}

/* ------------------------------------------------------------------------ */
/* 5. The accumulator bound, the memory plan, the whole load                 */
/* ------------------------------------------------------------------------ */

/* A conv/linear accumulates in int32:  acc = bias[c] + sum_k (x_k - z_x)(w_ck - z_w).
 * Every partial sum is bounded by
 *   bound = max_c (sum_k |w_ck - z_w|) * max(z_x - qmin_x, qmax_x - z_x) + |bias_c|
 * so bound <= INT32_MAX proves no int32 overflow for any input image.  requantize() then
 * computes acc * m in int64: |acc| < 2^31, m < 2^31, plus a rounding constant <= 2^61,
 * stays below 2^63.  The other kinds' int64 bounds are in their validate functions. */
void check_overflow(const Model *m)
{
    for (int i = 0; i < m->n_ops; i++) {
        const Op *op = &m->ops[i];
        if (!KINDS[op->kind].weighted)
            continue;
        int64_t x_mag = max_abs_centered(op_input(m, op, 0)), worst = 0;
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
            fail("%s: op %d (%s): worst-case accumulator %lld exceeds int32 (%d); the integer path could "
                 "overflow", m->weights_path, i, kind_name(op), (long long)worst, INT32_MAX);
    }
}

/* Place every tensor in one arena.  A tensor's buffer is reused once every op that reads it
 * has run ("slots"); the logits (last op) are never reused. */
void plan_memory(Model *m)
{
    int n = m->n_ops;
    int *last_use = xmalloc((size_t)n * sizeof *last_use, "plan");
    int *slot_of = xmalloc((size_t)n * sizeof *slot_of, "plan");
    int *slot_tensor = xmalloc((size_t)n * sizeof *slot_tensor, "plan");
    size_t *slot_size = xmalloc((size_t)n * sizeof *slot_size, "plan");
    size_t *slot_offset = xmalloc((size_t)n * sizeof *slot_offset, "plan");
    int n_slots = 0;

    for (int i = 0; i < n; i++) {
        last_use[i] = i;
        for (int k = 0; k < m->ops[i].n_inputs; k++)
            last_use[m->ops[i].in[k]] = i;
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

    uint64_t total = 0;
    for (int s = 0; s < n_slots; s++) {
        slot_offset[s] = (size_t)total;
        total += slot_size[s];                      /* <= 4096 * 2^26 */
    }
    for (int i = 0; i < n; i++)
        m->ops[i].offset = slot_offset[slot_of[i]];
    free(last_use);
    free(slot_of);
    free(slot_tensor);
    free(slot_size);
    free(slot_offset);
    if (total > MAX_ARENA)
        fail("%s: %llu bytes of activations, over the %llu-byte limit", m->path, (unsigned long long)total,
             (unsigned long long)MAX_ARENA);
    m->arena_bytes = (size_t)total;
}

void load_model(Model *m, const char *dir, const char *name, int txt)
{
    char path[4096], path2[4096];
    size_t size, size2;
    join_path(m->path, sizeof m->path, dir, name, "_model.bin");
    uint8_t *data = read_file(m->path, (size_t)1 << 30, &size);
    parse_model_bin(m, data, size, name);
    free(data);
    require_format(m, txt);
    if (txt) {
        join_path(path, sizeof path, dir, name, "_weight.txt");
        char *text = (char *)read_sealed(m, FILE_WEIGHT_TXT, path, &size);
        parse_weight_txt(m, text, size, path);
        free(text);
    } else {
        join_path(path, sizeof path, dir, name, "_weight.bin");
        join_path(path2, sizeof path2, dir, name, "_bias.bin");
        uint8_t *w = read_sealed(m, FILE_WEIGHT_BIN, path, &size);
        uint8_t *b = read_sealed(m, FILE_BIAS_BIN, path2, &size2);
        parse_weight_bins(m, w, size, path, b, size2, path2);
        free(w);
        free(b);
    }
    check_overflow(m);
    plan_memory(m);
}

void free_model(Model *m)
{
    for (int i = 0; m->ops && i < m->n_ops; i++) {
        free(m->ops[i].in);
        free(m->ops[i].multiplier);
        free(m->ops[i].shift);
        free(m->ops[i].table);
    }
    free(m->ops);
    free(m->weight_raw);
    free(m->bias);
    memset(m, 0, sizeof *m);
}
