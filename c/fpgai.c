/*
 * fpgai.c -- the core library (fpgai.h): a model loaded from memory buffers, checked exactly as
 * the host program checks its files, and run one image at a time into caller-provided memory.
 * No malloc/free, no stdio, no file I/O, no OS call: firmware links it as it is.
 *
 *   1. errors (formatted here, into Model.error), the storage block, little-endian reads, CRC-32
 *   2. the op kinds: their declaration table (KINDS) and validate functions
 *   3. model.bin: header, seal, the generic record parser, layer tiling
 *   4. the accumulator bound, the memory plan
 *   5. the reference kernels (CHW, plain loops) and fpgai_run
 *   6. the API: storage, the graph, the weight buffers, the seals
 *
 * Every problem is one message naming the file (Model.path / weights_path); nothing trusts a
 * length from a buffer.  A check deep in the parser that fails longjmps back to the API
 * function, which returns -1: the storage block holds whatever the load had taken.
 */
#include "fpgai.h"

#include <limits.h>
#include <stdarg.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* 1. Errors, storage, helpers, CRC-32                                       */
/* ------------------------------------------------------------------------ */

/* printf's %s %c %d %u %x (flags '0', a width; lengths l, ll, z) into dst, cut to cap - 1
 * bytes: messages without stdio. */
static void format_message(char *dst, size_t cap, const char *fmt, va_list ap)
{
    size_t n = 0;
#define PUT(ch) do { if (n + 1 < cap) dst[n++] = (ch); } while (0)
    for (const char *f = fmt; *f; f++) {
        if (*f != '%') {
            PUT(*f);
            continue;
        }
        f++;
        char pad = ' ';
        int width = 0, longs = 0, size_t_arg = 0;
        if (*f == '0')
            pad = *f++;
        while (*f >= '0' && *f <= '9')
            width = width * 10 + (*f++ - '0');
        for (; *f == 'l' || *f == 'z'; f++) {
            longs += *f == 'l';
            size_t_arg |= *f == 'z';
        }
        char digits[24];
        int nd = 0, neg = 0;
        unsigned long long u = 0;
        if (*f == 's') {
            for (const char *s = va_arg(ap, const char *); *s; s++)
                PUT(*s);
            continue;
        } else if (*f == 'c') {
            PUT((char)va_arg(ap, int));
            continue;
        } else if (*f == 'd') {
            long long v = longs >= 2 ? va_arg(ap, long long) : longs ? va_arg(ap, long) : va_arg(ap, int);
            neg = v < 0;
            u = neg ? 0ull - (unsigned long long)v : (unsigned long long)v;
        } else if (*f == 'u' || *f == 'x') {
            u = size_t_arg ? va_arg(ap, size_t) : longs >= 2 ? va_arg(ap, unsigned long long)
                : longs ? va_arg(ap, unsigned long) : va_arg(ap, unsigned);
        } else {                        /* '%' and anything else: itself */
            PUT(*f ? *f : '%');
            if (!*f)
                break;
            continue;
        }
        const unsigned base = *f == 'x' ? 16 : 10;
        do
            digits[nd++] = "0123456789abcdef"[u % base];
        while ((u /= base) && nd < (int)sizeof digits);
        if (neg)
            PUT('-');
        for (int k = nd + neg; k < width; k++)
            PUT(pad);
        while (nd)
            PUT(digits[--nd]);
    }
    dst[n < cap ? n : cap - 1] = 0;
#undef PUT
}

/* The message into m->error, then back to the API function that set m->on_error.  (m is
 * const in the checks that call this; the error field and the jump are the loader's.) */
static void core_fail(const Model *cm, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3), noreturn))
#endif
    ;
static void core_fail(const Model *cm, const char *fmt, ...)
{
    Model *m = (Model *)cm;
    va_list ap;
    va_start(ap, fmt);
    format_message(m->error, sizeof m->error, fmt, ap);
    va_end(ap);
    longjmp(*m->on_error, 1);
}
#define fail(...) core_fail(m, __VA_ARGS__)

/* `bytes` of the storage block, 8-byte aligned (FPGAI_STORAGE_BYTES counts what a model.bin
 * can ask for). */
static void *take_storage(const Model *cm, size_t bytes, const char *what)
{
    Model *m = (Model *)cm;
    size_t at = (m->storage_used + 7) / 8 * 8;
    if (at > m->storage_bytes || bytes > m->storage_bytes - at)
        fail("%s: storage block of %zu bytes too small for the %s", m->path, m->storage_bytes, what);
    m->storage_used = at + bytes;
    return m->storage + at;
}

/* Little-endian reads that do not depend on the host's byte order. */
uint32_t rd_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd_u64(const uint8_t *p)
{
    return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32;
}

static float rd_f32(const uint8_t *p)
{
    uint32_t u = rd_u32(p);
    float f;
    memcpy(&f, &u, sizeof f);        /* assumes IEEE-754 binary32 floats */
    return f;
}

#ifndef FPGAI_SMALL
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
#else
/* FPGAI_SMALL (microcontrollers): the same CRC-32 four bits a step from a 16-entry table in
 * flash, instead of 8 KB of RAM for the host's table. */
static const uint32_t crc_nibble[16] = {
    0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC, 0x76DC4190, 0x6B6B51F4, 0x4DB26158, 0x5005713C,
    0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C, 0x9B64C2B0, 0x86D3D2D4, 0xA00AE278, 0xBDBDF21C};

uint32_t crc32_bytes(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (; n; n--, p++) {
        c = crc_nibble[(c ^ *p) & 15] ^ c >> 4;
        c = crc_nibble[(c ^ (uint32_t)(*p >> 4)) & 15] ^ c >> 4;
    }
    return c ^ 0xFFFFFFFFu;
}
#endif

/* Copy n bytes of file content for a message or a name: at most cap - 1 of them, stopping at
 * a NUL, anything but printable ASCII shown as '?'. */
void printable(char *dst, size_t cap, const char *src, size_t n)
{
    size_t i = 0;
    for (; i < n && i + 1 < cap && src[i]; i++)
        dst[i] = src[i] >= 0x20 && src[i] < 0x7f ? src[i] : '?';
    dst[i] = 0;
}

static const char *const FILE_NAMES[FILE_COUNT] = {"weight.bin", "bias.bin", "weight.txt"};

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
    /* the optimized kernels' scratch: im2col (K values for each output pixel, bounded here in whole
     * 8-element blocks of the output plane), the padded input */
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
}

static void validate_maxpool(Model *m, int i)
{
    Op *op = &m->ops[i];
    const Op *x = op_input(m, op, 0);
    pool_geometry(op);
    check_same_channels(m, i);
    check_window(m, i);
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

/* THE op kinds (docs/contract.md, the kinds table).  The record parser reads a record
 * from its row: n_inputs in [min_inputs, max_inputs] and the ids, the parameters in order,
 * n_mult / n_shift / n_table words by their rule; then the row's validate function checks the rules
 * between fields.  A new kind: a row here, its validate function, a reference kernel here
 * (KERNEL) and an optimized one in kernels_fast.c (FAST_KERNEL), the enum in fpgai.h. */
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
    m->ops = take_storage(m, n_ops * sizeof *m->ops, "ops");
    memset(m->ops, 0, n_ops * sizeof *m->ops);
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
    const Model *m = w->m;
    const Op *op = &m->ops[w->op];
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

/* A count word that must equal `want`, then that many words into *dst. */
static int32_t take_array(Words *w, const char *count_name, int64_t want, int32_t **dst, const char *field,
                          int64_t lo, int64_t hi)
{
    int32_t n = (int32_t)take(w, count_name, want, want);
    int32_t *arr = *dst = take_storage(w->m, (size_t)n * sizeof *arr, field);
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
    op->in = take_storage(m, (size_t)op->n_inputs * sizeof *op->in, "input ids");
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

/* Rows (or columns) of input `size` that an adaptive pool's windows read, over its `out` outputs */
static uint64_t adaptive_reads(int32_t out, int32_t size)
{
    uint64_t n = 0;
    for (int32_t o = 0; o < out; o++) {
        int32_t lo, hi;
        adaptive_window(o, out, size, &lo, &hi);
        n += (uint64_t)(hi - lo);
    }
    return n;
}

/* The work of op i per image (fpgai.h): at most 2^26 outputs times 2^32 window reads or 2^31 weights */
uint64_t fpgai_op_work(const Model *m, int i)
{
    const Op *op = &m->ops[i];
    switch (op->kind) {
    case OP_CONV:
    case OP_LINEAR:
        return (uint64_t)op_elems(op) * (uint64_t)op->k_size;
    case OP_MAXPOOL:
    case OP_AVGPOOL:
        return (uint64_t)op_elems(op) * (uint64_t)op->kh * (uint64_t)op->kw;
    case OP_ADAPTIVE_AVGPOOL: {
        const Op *x = op_input(m, op, 0);
        return (uint64_t)op->c * adaptive_reads(op->h, x->h) * adaptive_reads(op->w, x->w);
    }
    default:                        /* input, add, concat, lut, mul, shuffle, slice, upsample */
        return (uint64_t)op_elems(op);
    }
}

/* The whole model's work per image against the cap: one line naming the total and the op that
 * adds the most (the first of equals) */
static void check_work(Model *m)
{
    const uint64_t cap = m->max_work ? m->max_work : DEFAULT_MAX_WORK;
    uint64_t most = 0;
    int top = 0;
    m->work = 0;
    for (int i = 0; i < m->n_ops; i++) {
        const uint64_t w = fpgai_op_work(m, i);
        m->work = w > UINT64_MAX - m->work ? UINT64_MAX : m->work + w;
        if (w > most) {
            most = w;
            top = i;
        }
    }
    if (m->work > cap)
        fail("%s: model needs %llu operations per image (op %d %s adds %llu); the cap is %llu (--max-work N "
             "raises it)", m->path, (unsigned long long)m->work, top, kind_name(&m->ops[top]),
             (unsigned long long)most, (unsigned long long)cap);
}

static void parse_model_bin(Model *m, const uint8_t *data, size_t size, const char *want_model)
{
    parse_header(m, data, size, want_model);
    size_t pos = HEADER_BYTES;
    for (int i = 0; i < m->n_ops; i++)
        pos = parse_record(m, i, data, size, pos);
    if (pos != size)
        fail("%s: %zu bytes after the last op", m->path, size - pos);
    check_tiling(m);
    check_work(m);
}

/* ------------------------------------------------------------------------ */
/* 4. The accumulator bound, the memory plan                                 */
/* ------------------------------------------------------------------------ */

/* A conv/linear accumulates in int32:  acc = bias[c] + sum_k (x_k - z_x)(w_ck - z_w).
 * Every partial sum is bounded by
 *   bound = max_c (sum_k |w_ck - z_w|) * max(z_x - qmin_x, qmax_x - z_x) + |bias_c|
 * so bound <= INT32_MAX proves no int32 overflow for any input image.  requantize() then
 * computes acc * m in int64: |acc| < 2^31, m < 2^31, plus a rounding constant <= 2^61,
 * stays below 2^63.  The other kinds' int64 bounds are in their validate functions. */
static void check_overflow(const Model *m)
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
            int64_t b = op_bias(m, op, c) < 0 ? -(int64_t)op_bias(m, op, c) : op_bias(m, op, c);
            if (sum * x_mag + b > worst)
                worst = sum * x_mag + b;
        }
        if (worst > INT32_MAX)
            fail("%s: op %d (%s): worst-case accumulator %lld exceeds int32 (%d); the integer path could "
                 "overflow", m->weights_path, i, kind_name(op), (long long)worst, INT32_MAX);
    }
}

/* Place every tensor in one arena.  A tensor's buffer is reused once every op that reads it
 * has run ("slots"); the logits (last op) are never reused.  The reference conv's accumulator
 * row follows them. */
static void plan_memory(Model *m)
{
    int n = m->n_ops;
    size_t *slot_of = take_storage(m, (size_t)n * sizeof *slot_of, "plan");
    size_t *slot_tensor = take_storage(m, (size_t)n * sizeof *slot_tensor, "plan");
    size_t *slot_size = take_storage(m, (size_t)n * sizeof *slot_size, "plan");
    size_t *slot_offset = take_storage(m, (size_t)n * sizeof *slot_offset, "plan");
    int n_slots = 0;

    for (int i = 0; i < n; i++) {
        m->ops[i].last_reader = i;
        for (int k = 0; k < m->ops[i].n_inputs; k++)
            m->ops[m->ops[i].in[k]].last_reader = i;
    }
    m->ops[n - 1].last_reader = n;

    for (int i = 0; i < n; i++) {
        size_t need = op_elems(&m->ops[i]);
        int best = -1;
        for (int s = 0; s < n_slots; s++) {
            if (m->ops[slot_tensor[s]].last_reader >= i)
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
        slot_tensor[best] = (size_t)i;
        slot_of[i] = (size_t)best;
    }

    uint64_t total = 0;
    for (int s = 0; s < n_slots; s++) {
        slot_offset[s] = (size_t)total;
        total += slot_size[s];                      /* <= 4096 * 2^26 */
    }
    for (int i = 0; i < n; i++)
        m->ops[i].offset = slot_offset[slot_of[i]];
    /* after them, 4-byte aligned: the reference conv's row of int32 accumulators (its widest output row) */
    total = (total + 3) / 4 * 4;
    m->row_offset = (size_t)total;
    for (int i = 0; i < n; i++)
        if (m->ops[i].kind == OP_CONV && 4 * (uint64_t)m->ops[i].w > m->row_bytes)
            m->row_bytes = 4 * (size_t)m->ops[i].w;
    total += m->row_bytes;
    if (total > MAX_ARENA)
        fail("%s: %llu bytes of activations, over the %llu-byte limit", m->path, (unsigned long long)total,
             (unsigned long long)MAX_ARENA);
    m->arena_bytes = (size_t)total;
}


/* ------------------------------------------------------------------------ */
/* 5. The reference kernels (CHW) and fpgai_run                              */
/* ------------------------------------------------------------------------ */

/* Direct loops over the contract, one per kind, reading the weights and biases in place (in
 * flash on a microcontroller) and writing only the arena: every output value goes through
 * requantize() (a lut reads its table, which holds requantized values). */

static const uint8_t *input_of(const Model *m, const Op *op, const uint8_t *arena, int k)
{
    return arena + op_input(m, op, k)->offset;
}

/* Weight byte b minus the op's weight zero point, branch free: int8 (b ^ 0x80) - 128, uint8
 * b - z_w.  weight_flip / weight_sub give the two constants. */
static int weight_flip(const Model *m)
{
    return m->weight_signed ? 0x80 : 0;
}

static int weight_sub(const Model *m, const Op *op)
{
    return m->weight_signed ? 128 : op->w_zero_point;
}

/* The outputs o in [*lo, *hi) whose tap at offset `at` (k*dil - pad) lands inside [0, size):
 * 0 <= o*stride + at < size. */
static void outputs_inside(int32_t at, int32_t stride, int32_t size, int32_t out, int32_t *lo, int32_t *hi)
{
    int32_t first = at >= 0 ? 0 : (-at + stride - 1) / stride;
    int32_t last = size - 1 - at < 0 ? -1 : (size - 1 - at) / stride;       /* the last o, or -1 */
    *lo = first;
    *hi = last + 1 < out ? last + 1 : out;
    if (*hi < *lo)
        *hi = *lo;
}

/* Convolution: acc = bias[co] + sum over the group's input channels and the kernel taps of
 * (x - z_x)(w - z_w), taps dilation apart; a tap in the padding adds 0 (the padding holds z_x)
 * and is skipped.  One output row at a time, in a row of int32 accumulators (the arena's last
 * bytes): per input channel and tap, one weight times a run of the input row. */
static void k_conv(const Model *m, const Op *op, uint8_t *arena)
{
    const Op *in = op_input(m, op, 0);
    const uint8_t *x = input_of(m, op, arena, 0);
    uint8_t *out = arena + op->offset;
    int32_t *acc = (int32_t *)(void *)(arena + m->row_offset);
    const int32_t H = in->h, W = in->w, cin_g = in->c / op->groups, cout_g = op->c / op->groups;
    const int32_t sh = op->stride_h, sw = op->stride_w, zx = in->zero_point;
    const int32_t flip = weight_flip(m), sub = weight_sub(m, op);
    for (int32_t co = 0; co < op->c; co++) {
        const uint8_t *group = x + (size_t)(co / cout_g) * (size_t)cin_g * H * W;
        const uint8_t *w = m->weight_raw + (size_t)op->w_offset + (size_t)co * (size_t)op->k_size;
        const int32_t bias = op_bias(m, op, co);
        for (int32_t oy = 0; oy < op->h; oy++) {
            for (int32_t ox = 0; ox < op->w; ox++)
                acc[ox] = bias;
            for (int32_t ky = 0; ky < op->kh; ky++) {
                const int32_t iy = oy * sh + ky * op->dil_h - op->pad_top;
                if (iy < 0 || iy >= H)
                    continue;
                for (int32_t kx = 0; kx < op->kw; kx++) {
                    const int32_t at = kx * op->dil_w - op->pad_left;
                    int32_t lo, hi;
                    outputs_inside(at, sw, W, op->w, &lo, &hi);
                    for (int32_t ci = 0; ci < cin_g; ci++) {
                        const int32_t wv = (w[((size_t)ci * op->kh + (size_t)ky) * op->kw + (size_t)kx] ^ flip) - sub;
                        const uint8_t *row = group + ((size_t)ci * H + (size_t)iy) * W;
                        for (int32_t ox = lo; ox < hi; ox++)
                            acc[ox] += (row[ox * sw + at] - zx) * wv;
                    }
                }
            }
            for (int32_t ox = 0; ox < op->w; ox++)
                *out++ = requantize(acc[ox], op->multiplier[co], op->shift[co], op->zero_point, op->qmin, op->qmax);
        }
    }
}

/* Fully connected, the input tensor read flat (CHW order):
 *   out[c] = requantize(bias[c] + sum_k (x[k] - z_x)(w[c][k] - z_w)) */
static void k_linear(const Model *m, const Op *op, uint8_t *arena)
{
    const uint8_t *x = input_of(m, op, arena, 0);
    const int32_t zx = op_input(m, op, 0)->zero_point, flip = weight_flip(m), sub = weight_sub(m, op);
    uint8_t *out = arena + op->offset;
    for (int32_t c = 0; c < op->c; c++) {
        const uint8_t *w = m->weight_raw + (size_t)op->w_offset + (size_t)c * (size_t)op->k_size;
        int32_t acc = op_bias(m, op, c);
        for (int32_t k = 0; k < op->k_size; k++)
            acc += (x[k] - zx) * ((w[k] ^ flip) - sub);
        out[c] = requantize(acc, op->multiplier[c], op->shift[c], op->zero_point, op->qmin, op->qmax);
    }
}

/* Max pooling; padding never wins: out-of-bounds positions are skipped (pad < kernel
 * guarantees each window holds a real element). */
static void k_maxpool(const Model *m, const Op *op, uint8_t *arena)
{
    const Op *in = op_input(m, op, 0);
    const uint8_t *x = input_of(m, op, arena, 0);
    uint8_t *out = arena + op->offset;
    for (int32_t c = 0; c < op->c; c++) {
        const uint8_t *plane = x + (size_t)c * in->h * in->w;
        for (int32_t oy = 0; oy < op->h; oy++) {
            int32_t y0, y1;
            pool_window(oy, op->stride_h, op->pad_top, op->kh, in->h, &y0, &y1);
            for (int32_t ox = 0; ox < op->w; ox++) {
                int32_t x0, x1;
                pool_window(ox, op->stride_w, op->pad_left, op->kw, in->w, &x0, &x1);
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

/* Average pooling (no padding): out = requantize(sum_window(x) - kh*kw*z_in) */
static void k_avgpool(const Model *m, const Op *op, uint8_t *arena)
{
    const Op *in = op_input(m, op, 0);
    const uint8_t *x = input_of(m, op, arena, 0);
    uint8_t *out = arena + op->offset;
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
                *out++ = requantize(sum - offset, op->multiplier[0], op->shift[0], op->zero_point, op->qmin, op->qmax);
            }
        }
    }
}

/* Adaptive average pooling: out[c][p] = requantize(sum_window_p(x) - n_p*z_in) with position p's
 * multiplier and shift, windows as PyTorch's (adaptive_window) */
static void k_adaptive_avgpool(const Model *m, const Op *op, uint8_t *arena)
{
    const Op *in = op_input(m, op, 0);
    const uint8_t *x = input_of(m, op, arena, 0);
    uint8_t *out = arena + op->offset;
    for (int32_t c = 0; c < op->c; c++) {
        const uint8_t *plane = x + (size_t)c * in->h * in->w;
        for (int32_t oy = 0; oy < op->h; oy++) {
            int32_t y0, y1;
            adaptive_window(oy, op->h, in->h, &y0, &y1);
            for (int32_t ox = 0; ox < op->w; ox++) {
                int32_t x0, x1;
                adaptive_window(ox, op->w, in->w, &x0, &x1);
                int64_t sum = -(int64_t)(y1 - y0) * (x1 - x0) * in->zero_point;
                for (int32_t iy = y0; iy < y1; iy++)
                    for (int32_t ix = x0; ix < x1; ix++)
                        sum += plane[(size_t)iy * in->w + ix];
                size_t p = (size_t)oy * op->w + ox;
                *out++ = requantize(sum, op->multiplier[p], op->shift[p], op->zero_point, op->qmin, op->qmax);
            }
        }
    }
}

/* Residual add: out = requantize((a - z_a)*m_a + (b - z_b)*m_b) with multiplier 1 and the
 * shared shift: both products summed before the one rounding. */
static void k_add(const Model *m, const Op *op, uint8_t *arena)
{
    const Op *ia = op_input(m, op, 0), *ib = op_input(m, op, 1);
    const uint8_t *a = input_of(m, op, arena, 0), *b = input_of(m, op, arena, 1);
    uint8_t *out = arena + op->offset;
    const size_t n = op_elems(op);
    for (size_t e = 0; e < n; e++) {
        int64_t acc = (int64_t)(a[e] - ia->zero_point) * op->multiplier[0] +
                      (int64_t)(b[e] - ib->zero_point) * op->multiplier[1];
        out[e] = requantize(acc, 1, op->shift[0], op->zero_point, op->qmin, op->qmax);
    }
}

/* Concat on channels: input k's planes, in input order, each value requantize(x - z_k) with
 * input k's multiplier and shift. */
static void k_concat(const Model *m, const Op *op, uint8_t *arena)
{
    uint8_t *out = arena + op->offset;
    for (int k = 0; k < op->n_inputs; k++) {
        const Op *in = op_input(m, op, k);
        const uint8_t *x = input_of(m, op, arena, k);
        const size_t n = op_elems(in);
        for (size_t e = 0; e < n; e++)
            out[e] = requantize(x[e] - in->zero_point, op->multiplier[k], op->shift[k], op->zero_point, op->qmin,
                                op->qmax);
        out += n;
    }
}

/* Lookup table: out = table[x] (its values are already requantized and clamped). */
static void k_lut(const Model *m, const Op *op, uint8_t *arena)
{
    const uint8_t *x = input_of(m, op, arena, 0);
    uint8_t *out = arena + op->offset;
    const size_t n = op_elems(op);
    for (size_t e = 0; e < n; e++)
        out[e] = (uint8_t)op->table[x[e]];
}

/* Product: out = requantize((a - z_a)*(b - z_b)) with the op's multiplier and shift; input 1 has
 * the output's shape or is Cx1x1 (one value for each channel plane). */
static void k_mul(const Model *m, const Op *op, uint8_t *arena)
{
    const Op *ia = op_input(m, op, 0), *ib = op_input(m, op, 1);
    const uint8_t *a = input_of(m, op, arena, 0), *b = input_of(m, op, arena, 1);
    uint8_t *out = arena + op->offset;
    const size_t P = (size_t)op->h * op->w, Pb = (size_t)ib->h * ib->w;
    for (int32_t c = 0; c < op->c; c++)
        for (size_t p = 0; p < P; p++) {
            int64_t prod = (int64_t)(a[(size_t)c * P + p] - ia->zero_point) *
                           (b[(size_t)c * Pb + (Pb == 1 ? 0 : p)] - ib->zero_point);
            out[(size_t)c * P + p] = requantize(prod, op->multiplier[0], op->shift[0], op->zero_point, op->qmin,
                                                op->qmax);
        }
}

/* Channel shuffle: out channel j*groups + g is input channel g*(C/groups) + j (whole planes). */
static void k_shuffle(const Model *m, const Op *op, uint8_t *arena)
{
    const uint8_t *x = input_of(m, op, arena, 0);
    uint8_t *out = arena + op->offset;
    const size_t P = (size_t)op->h * op->w;
    const int32_t per = op->c / op->groups;
    for (int32_t g = 0; g < op->groups; g++)
        for (int32_t j = 0; j < per; j++)
            memcpy(out + ((size_t)j * op->groups + g) * P, x + ((size_t)g * per + j) * P, P);
}

/* Channel slice: input channels channel_start .. channel_start + C - 1 (contiguous planes). */
static void k_slice(const Model *m, const Op *op, uint8_t *arena)
{
    memcpy(arena + op->offset, input_of(m, op, arena, 0) + (size_t)op->ch_start * op->h * op->w, op_elems(op));
}

/* Nearest upsampling: out[c][y][x] = in[c][y / scale_h][x / scale_w]. */
static void k_upsample(const Model *m, const Op *op, uint8_t *arena)
{
    const Op *in = op_input(m, op, 0);
    const uint8_t *x = input_of(m, op, arena, 0);
    uint8_t *out = arena + op->offset;
    for (int32_t c = 0; c < op->c; c++)
        for (int32_t y = 0; y < op->h; y++) {
            const uint8_t *row = x + ((size_t)c * in->h + y / op->scale_h) * in->w;
            for (int32_t ox = 0; ox < op->w; ox++)
                *out++ = row[ox / op->scale_w];
        }
}

typedef void Kernel(const Model *m, const Op *op, uint8_t *arena);

static Kernel *const KERNEL[OP_KIND_COUNT] = {
    [OP_CONV] = k_conv,       [OP_LINEAR] = k_linear, [OP_MAXPOOL] = k_maxpool, [OP_AVGPOOL] = k_avgpool,
    [OP_ADD] = k_add,         [OP_CONCAT] = k_concat, [OP_LUT] = k_lut,         [OP_MUL] = k_mul,
    [OP_SHUFFLE] = k_shuffle, [OP_SLICE] = k_slice,   [OP_UPSAMPLE] = k_upsample,
    [OP_ADAPTIVE_AVGPOOL] = k_adaptive_avgpool,
};

void fpgai_run_op(const Model *m, uint8_t *arena, const uint8_t *image, int i)
{
    if (i == 0)
        memcpy(arena + m->ops[0].offset, image, op_elems(&m->ops[0]));  /* op 0: the input */
    else
        KERNEL[m->ops[i].kind](m, &m->ops[i], arena);
}

const uint8_t *fpgai_run(const Model *m, uint8_t *arena, const uint8_t *image)
{
    for (int i = 0; i < m->n_ops; i++)
        fpgai_run_op(m, arena, image, i);
    return arena + m->ops[m->n_ops - 1].offset;
}

/* ------------------------------------------------------------------------ */
/* 6. The API                                                                */
/* ------------------------------------------------------------------------ */

size_t fpgai_storage_bytes(const uint8_t *model_bin, size_t size)
{
    uint32_t n_ops = size >= 24 ? rd_u32(model_bin + 20) : 0;
    return FPGAI_STORAGE_BYTES(n_ops < MAX_OPS ? n_ops : MAX_OPS, size);
}

int fpgai_load_graph(Model *m, void *storage, size_t storage_bytes, const uint8_t *model_bin, size_t size,
                     const char *want_model)
{
    const char *path = m->path ? m->path : "model.bin", *weights_path = m->weights_path;
    const uint64_t max_work = m->max_work;
    void *owned[sizeof m->owned / sizeof m->owned[0]];
    memcpy(owned, m->owned, sizeof owned);
    memset(m, 0, sizeof *m);
    m->path = path;
    m->weights_path = weights_path ? weights_path : "the weights";
    m->max_work = max_work;
    memcpy(m->owned, owned, sizeof owned);
    m->storage = storage;
    m->storage_bytes = storage_bytes;
    jmp_buf env;
    m->on_error = &env;
    if (setjmp(env)) {
        m->on_error = NULL;
        return -1;
    }
    for (int k = 1; k < OP_KIND_COUNT; k++)
        if (!KERNEL[k])
            fail("fpgai.c: no reference kernel for op kind %s", KINDS[k].name);
    parse_model_bin(m, model_bin, size, want_model);
    plan_memory(m);
    m->on_error = NULL;
    return 0;
}

int fpgai_check_seal(Model *m, int file, const char *path, const uint8_t *data, size_t size)
{
    jmp_buf env;
    m->on_error = &env;
    if (setjmp(env)) {
        m->on_error = NULL;
        return -1;
    }
    check_seal(m, file, path, data, size);
    m->on_error = NULL;
    return 0;
}

int fpgai_attach_weights(Model *m, const uint8_t *weights, size_t w_size, const char *weight_path,
                         const uint8_t *biases, size_t b_size, const char *bias_path, int sealed)
{
    jmp_buf env;
    m->on_error = &env;
    if (setjmp(env)) {
        m->on_error = NULL;
        return -1;
    }
    if (sealed) {
        check_seal(m, FILE_WEIGHT_BIN, weight_path, weights, w_size);
        check_seal(m, FILE_BIAS_BIN, bias_path, biases, b_size);
    } else if ((uint64_t)w_size != (uint64_t)m->weight_bytes || (uint64_t)b_size != 4 * (uint64_t)m->bias_count) {
        fail("%s: %zu weight bytes and %zu bias bytes, model.bin has %lld weights and %lld biases", weight_path,
             w_size, b_size, (long long)m->weight_bytes, (long long)m->bias_count);
    }
    if (m->weight_signed) {
        const uint8_t *bad = memchr(weights, 0x80, w_size);
        if (bad)
            fail("%s: weight at byte %zu is -128; per-channel int8 weights lie in [-127, 127]", weight_path,
                 (size_t)(bad - weights));
    }
    m->weight_raw = weights;
    m->bias_raw = biases;
    check_overflow(m);
    m->on_error = NULL;
    return 0;
}
