/*
 * util.c -- the core's small services: its messages (a printf without stdio, into Model.error,
 * then a longjmp back to the API function: fpgai_fail), the storage block, little-endian reads,
 * CRC-32, printable copies of file content.
 */
#include "kind.h"

#include <stdarg.h>

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

void fpgai_fail(const Model *cm, const char *fmt, ...)
{
    Model *m = (Model *)cm;
    va_list ap;
    va_start(ap, fmt);
    format_message(m->error, sizeof m->error, fmt, ap);
    va_end(ap);
    longjmp(*m->on_error, 1);
}

/* `bytes` of the storage block, 8-byte aligned (FPGAI_STORAGE_BYTES counts what a model.bin
 * can ask for). */
void *take_storage(const Model *cm, size_t bytes, const char *what)
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

uint64_t rd_u64(const uint8_t *p)
{
    return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32;
}

float rd_f32(const uint8_t *p)
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

void unpack_weight_row(const Model *m, const Op *op, int32_t c, uint8_t *row)
{
    const uint64_t first = (uint64_t)c * (uint64_t)op->k_size;
    for (int32_t k = 0; k < op->k_size; k++)
        row[k] = weight_byte(m, op, first + (uint64_t)k);
}
