/*
 * datasets.c -- MNIST idx3 images + idx1 labels, CIFAR-10 binary batches (1 label byte and
 * 3,072 CHW pixel bytes a record), .npy arrays (uint8 NxCxHxW images, integer labels).
 * Every length is checked against the file's real size.
 */
#include "datasets.h"
#include "host.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DATA_FILE ((size_t)1 << 30)  /* bytes of one dataset file */

static void check_labels(const Dataset *d, const char *path)
{
    for (size_t i = 0; i < d->count; i++)
        if (d->labels[i * d->label_stride] > 9)
            fail("%s: label %d of image %zu outside 0..9", path, d->labels[i * d->label_stride], i);
}

/* MNIST / CIFAR-10 labels (0..9) against the model's outputs: a model with fewer cannot be scored */
static void check_classes(const Dataset *d, const char *path, size_t n_classes)
{
    for (size_t i = 0; i < d->count; i++)
        if ((size_t)d->labels[i * d->label_stride] >= n_classes)
            fail("%s: label %d of image %zu outside 0..%zu (the model's outputs)", path,
                 d->labels[i * d->label_stride], i, n_classes - 1);
}

void parse_mnist(Dataset *d, const uint8_t *ibuf, size_t isize, const char *images,
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
    d->has_labels = 1;
    check_labels(d, labels);
    snprintf(d->source, sizeof d->source, "%s", images);
}

void parse_cifar(Dataset *d, const uint8_t *buf, size_t size, const char *path)
{
    if (size == 0 || size % 3073 != 0)
        fail("%s: %zu bytes, not a positive multiple of the 3073-byte CIFAR-10 record", path, size);
    d->labels = buf;
    d->label_stride = 3073;
    d->pixels = buf + 1;
    d->image_stride = 3073;
    d->count = size / 3073;
    d->has_labels = 1;
    check_labels(d, path);
    snprintf(d->source, sizeof d->source, "%s", path);
}

/* --- .npy ------------------------------------------------------------------------------------ */

static const uint8_t NPY_MAGIC[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
#define NPY_MAX_DIM ((uint64_t)1 << 40)

typedef struct {
    const char *p, *end, *path;
} Cursor;

static void skip_spaces(Cursor *c)
{
    while (c->p < c->end && *c->p == ' ')
        c->p++;
}

static void expect(Cursor *c, char ch, const char *what)
{
    skip_spaces(c);
    if (c->p >= c->end || *c->p != ch)
        fail("%s: .npy header: expected '%c' %s", c->path, ch, what);
    c->p++;
}

/* A quoted string ('...' or "...") of at most cap - 1 plain characters into out. */
static void take_string(Cursor *c, char *out, size_t cap, const char *what)
{
    skip_spaces(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"'))
        fail("%s: .npy header: expected a quoted string for %s", c->path, what);
    char q = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != q) {
        if (*c->p == '\\' || n + 1 >= cap)
            fail("%s: .npy header: %s is not a plain short string", c->path, what);
        out[n++] = *c->p++;
    }
    if (c->p >= c->end)
        fail("%s: .npy header: unterminated string in %s", c->path, what);
    c->p++;
    out[n] = 0;
}

static int take_word(Cursor *c, const char *word)
{
    size_t n = strlen(word);
    skip_spaces(c);
    if ((size_t)(c->end - c->p) >= n && !memcmp(c->p, word, n)) {
        c->p += n;
        return 1;
    }
    return 0;
}

static uint64_t take_dim(Cursor *c)
{
    skip_spaces(c);
    if (c->p >= c->end || *c->p < '0' || *c->p > '9')
        fail("%s: .npy header: shape holds something other than non-negative integers", c->path);
    uint64_t v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        v = v * 10 + (uint64_t)(*c->p++ - '0');
        if (v > NPY_MAX_DIM)
            fail("%s: .npy header: a dimension above %llu", c->path, (unsigned long long)NPY_MAX_DIM);
    }
    if (c->p < c->end && *c->p == 'L')   /* Python 2 longs, as old numpy wrote them */
        c->p++;
    return v;
}

static void take_shape(Cursor *c, NpyArray *a)
{
    expect(c, '(', "to open the shape tuple");
    a->ndim = 0;
    skip_spaces(c);
    if (c->p < c->end && *c->p == ')') {
        c->p++;
        return;
    }
    for (;;) {
        if (a->ndim == NPY_MAX_DIMS)
            fail("%s: .npy header: more than %d dimensions", c->path, NPY_MAX_DIMS);
        a->shape[a->ndim++] = take_dim(c);
        skip_spaces(c);
        if (c->p < c->end && *c->p == ')') {
            if (a->ndim == 1)
                fail("%s: .npy header: a one-element shape needs its comma, (n,)", c->path);
            c->p++;
            return;
        }
        expect(c, ',', "or ')' in the shape");
        skip_spaces(c);
        if (c->p < c->end && *c->p == ')') {
            c->p++;
            return;
        }
    }
}

/* The magic, the version and the header's bytes: *start where the header dict begins, *hlen its
 * length (newline included), every byte of it printable */
static void npy_preamble(const uint8_t *buf, size_t size, const char *path, size_t *start, size_t *hlen)
{
    if (size < 10 || memcmp(buf, NPY_MAGIC, 6) != 0)
        fail("%s: not a .npy file (no \\x93NUMPY magic)", path);
    if (buf[6] == 1 && buf[7] == 0) {
        *start = 10;
        *hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
    } else if (buf[6] == 2 && buf[7] == 0) {
        if (size < 12)
            fail("%s: .npy version 2.0 file of %zu bytes, shorter than its header", path, size);
        *start = 12;
        *hlen = rd_u32(buf + 8);
    } else {
        fail("%s: .npy format version %u.%u, this engine reads 1.0 and 2.0", path, buf[6], buf[7]);
    }
    if (*hlen > size - *start)
        fail("%s: .npy header of %zu bytes runs past the end of the %zu-byte file", path, *hlen, size);
    const char *h = (const char *)buf + *start;
    if (*hlen == 0 || h[*hlen - 1] != '\n')
        fail("%s: .npy header does not end in a newline", path);
    for (size_t i = 0; i + 1 < *hlen; i++)
        if (h[i] < 0x20 || h[i] > 0x7e)
            fail("%s: .npy header byte %zu is not printable ASCII", path, i);
}

/* The header dict {'descr': ..., 'fortran_order': False, 'shape': (...)}, each key once, in any
 * order: descr into descr[32], the shape into a */
static void npy_dict(Cursor *c, NpyArray *a, char *descr)
{
    const char *path = c->path;
    int seen_descr = 0, seen_order = 0, seen_shape = 0;
    char key[32];
    expect(c, '{', "to open the header dict");
    for (;;) {
        skip_spaces(c);
        if (c->p < c->end && *c->p == '}')
            break;
        take_string(c, key, sizeof key, "a key");
        expect(c, ':', "after a key");
        if (!strcmp(key, "descr") && !seen_descr) {
            take_string(c, descr, 32, "'descr'");
            seen_descr = 1;
        } else if (!strcmp(key, "fortran_order") && !seen_order) {
            if (take_word(c, "True"))
                fail("%s: .npy array in Fortran order; save it C-contiguous (np.ascontiguousarray)", path);
            if (!take_word(c, "False"))
                fail("%s: .npy header: 'fortran_order' is neither True nor False", path);
            seen_order = 1;
        } else if (!strcmp(key, "shape") && !seen_shape) {
            take_shape(c, a);
            seen_shape = 1;
        } else {
            fail("%s: .npy header: unexpected or repeated key '%s'", path, key);
        }
        skip_spaces(c);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            continue;
        }
        skip_spaces(c);
        if (c->p >= c->end || *c->p != '}')
            fail("%s: .npy header: expected ',' or '}' after a value", path);
    }
    c->p++;                                        /* the '}' */
    skip_spaces(c);
    if (c->p != c->end)
        fail("%s: .npy header: something after the dict", path);
    if (!seen_descr || !seen_order || !seen_shape)
        fail("%s: .npy header lacks %s", path, !seen_descr ? "'descr'" : !seen_order ? "'fortran_order'" : "'shape'");
}

/* descr: [<>|]?[iu][1248], '|' only for one byte */
static void npy_dtype(NpyArray *a, const char *descr, const char *path)
{
    const char *t = descr;
    char order = (*t == '<' || *t == '>' || *t == '|') ? *t++ : 0;
    if ((t[0] != 'i' && t[0] != 'u') || !(t[1] == '1' || t[1] == '2' || t[1] == '4' || t[1] == '8') || t[2])
        fail("%s: .npy dtype '%s' is not an integer type (|u1, <i8, ...)", path, descr);
    a->kind = t[0];
    a->itemsize = t[1] - '0';
    if (a->itemsize > 1 && order != '<' && order != '>')
        fail("%s: .npy dtype '%s' has no byte order", path, descr);
    a->big_endian = order == '>';
}

void parse_npy(NpyArray *a, const uint8_t *buf, size_t size, const char *path)
{
    memset(a, 0, sizeof *a);
    size_t start, hlen;
    npy_preamble(buf, size, path, &start, &hlen);
    const char *h = (const char *)buf + start;
    Cursor c = {h, h + hlen - 1, path};
    char descr[32];
    npy_dict(&c, a, descr);
    npy_dtype(a, descr, path);
    uint64_t count = 1;
    for (int i = 0; i < a->ndim; i++) {
        if (a->shape[i] && count > (UINT64_MAX / 8) / a->shape[i])
            fail("%s: .npy shape too large", path);
        count *= a->shape[i];
    }
    a->count = count;
    size_t body = size - start - hlen;
    if (count * (uint64_t)a->itemsize != (uint64_t)body)
        fail("%s: .npy data is %zu bytes, its shape and dtype '%s' need %llu", path, body, descr,
             (unsigned long long)(count * (uint64_t)a->itemsize));
    a->data = buf + start + hlen;
}

/* element i of an integer array: its 64 bits, sign-extended for a signed dtype (two's complement) */
static uint64_t npy_bits(const NpyArray *a, uint64_t i)
{
    const uint8_t *p = a->data + i * (uint64_t)a->itemsize;
    uint64_t v = 0;
    for (int k = 0; k < a->itemsize; k++)
        v |= (uint64_t)p[a->big_endian ? a->itemsize - 1 - k : k] << (8 * k);
    if (a->kind == 'i' && a->itemsize < 8 && (v >> (8 * a->itemsize - 1)) & 1)
        v |= ~(uint64_t)0 << (8 * a->itemsize);     /* sign-extend */
    return v;
}

/* Label i in 0..n_classes-1 (the model's outputs), else one line naming the file, the image and the
 * value as the file holds it (uint64 above INT64_MAX and negative values included) */
static void check_npy_label(const NpyArray *a, uint64_t i, size_t n_classes, const char *path)
{
    uint64_t v = npy_bits(a, i);
    int negative = a->kind == 'i' && (v >> 63);
    if (negative || v >= (uint64_t)n_classes) {
        char text[32];
        if (negative)
            snprintf(text, sizeof text, "-%llu", (unsigned long long)(~v + 1));
        else
            snprintf(text, sizeof text, "%llu", (unsigned long long)v);
        fail("%s: label %s of image %llu outside 0..%zu (the model's outputs)", path, text, (unsigned long long)i,
             n_classes - 1);
    }
}

void parse_npy_dataset(Dataset *d, const uint8_t *ibuf, size_t isize, const char *images,
                       const uint8_t *lbuf, size_t lsize, const char *labels, int c, int h, int w,
                       size_t n_classes)
{
    NpyArray x, y;
    memset(&y, 0, sizeof y);
    if (c < 1 || h < 1 || w < 1)
        fail("%s: the model's input %dx%dx%d has an empty dimension", images, c, h, w);
    parse_npy(&x, ibuf, isize, images);
    if (x.kind != 'u' || x.itemsize != 1)
        fail("%s: .npy images must be uint8 (|u1), not %c%d", images, x.kind, x.itemsize);
    if (x.ndim != 4)
        fail("%s: .npy images have %d dimensions, expected 4 (N x C x H x W)", images, x.ndim);
    if (x.shape[1] != (uint64_t)c || x.shape[2] != (uint64_t)h || x.shape[3] != (uint64_t)w)
        fail("%s: images are %llux%llux%llu, the model takes %dx%dx%d", images, (unsigned long long)x.shape[1],
             (unsigned long long)x.shape[2], (unsigned long long)x.shape[3], c, h, w);
    if (x.shape[0] == 0)
        fail("%s: no images", images);
    if (lbuf) {
        parse_npy(&y, lbuf, lsize, labels);
        if (y.ndim != 1 || y.shape[0] != x.shape[0])
            fail("%s: labels must be one integer per image, shape (%llu,)", labels, (unsigned long long)x.shape[0]);
        if (n_classes < 1)
            fail("%s: the model has no outputs to label", labels);
        for (uint64_t i = 0; i < y.count; i++)
            check_npy_label(&y, i, n_classes, labels);
    }
    /* every check passed: nothing below fails */
    d->pixels = x.data;
    d->image_stride = (size_t)c * (size_t)h * (size_t)w;
    d->count = (size_t)x.shape[0];
    d->has_labels = lbuf != NULL;
    if (lbuf) {
        d->npy_labels = xmalloc(d->count * sizeof *d->npy_labels, "labels");
        for (size_t i = 0; i < d->count; i++)
            d->npy_labels[i] = (uint32_t)npy_bits(&y, i);     /* checked above: < n_classes <= 2^26 */
    }
    snprintf(d->source, sizeof d->source, "%s", images);
}

long dataset_label(const Dataset *d, size_t i)
{
    if (!d->has_labels)
        return -1;
    if (d->npy_labels)
        return (long)d->npy_labels[i];
    return (long)d->labels[i * d->label_stride];
}

static int is_npy(const char *path)
{
    uint8_t head[6];
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    return got == sizeof head && !memcmp(head, NPY_MAGIC, sizeof head);
}

static void set_path(char *dst, size_t cap, const char *given, const char *data, const char *rel)
{
    int n = given ? snprintf(dst, cap, "%s", given) : snprintf(dst, cap, "%s/%s", data, rel);
    if (n < 0 || (size_t)n >= cap)
        fail("%s: dataset path too long", given ? given : data);
}

void load_dataset(Dataset *d, const Model *m, const char *data, const char *images, const char *labels)
{
    const Op *input = &m->ops[0];
    char img[4096], lab[4096];
    size_t isize, lsize = 0;
    if (!strcmp(m->dataset, "custom") || (images && is_npy(images))) {
        if (!images)
            fail("%s: a model of dataset '%s' reads its images from --images x.npy (uint8 N x %d x %d x %d)",
                 m->path, m->dataset, input->c, input->h, input->w);
        d->image_buf = read_file(images, MAX_DATA_FILE, &isize);
        if (labels)
            d->label_buf = read_file(labels, MAX_DATA_FILE, &lsize);
        const Op *last = &m->ops[m->n_ops - 1];
        parse_npy_dataset(d, d->image_buf, isize, images, d->label_buf, lsize, labels, input->c, input->h, input->w,
                          op_elems(last));
        return;
    }
    if (!strcmp(m->dataset, "mnist")) {
        if (input->c != 1 || input->h != 28 || input->w != 28)
            fail("%s: model input is %dx%dx%d, mnist images are 1x28x28", m->path, input->c, input->h, input->w);
        set_path(img, sizeof img, images, data, "MNIST/raw/t10k-images-idx3-ubyte");
        set_path(lab, sizeof lab, labels, data, "MNIST/raw/t10k-labels-idx1-ubyte");
        d->image_buf = read_file(img, MAX_DATA_FILE, &isize);
        d->label_buf = read_file(lab, MAX_DATA_FILE, &lsize);
        parse_mnist(d, d->image_buf, isize, img, d->label_buf, lsize, lab);
        check_classes(d, lab, op_elems(&m->ops[m->n_ops - 1]));
    } else {
        if (labels)
            fail("%s: --labels does not apply to cifar10 (labels are inside the batch file)", labels);
        if (input->c != 3 || input->h != 32 || input->w != 32)
            fail("%s: model input is %dx%dx%d, cifar10 images are 3x32x32", m->path, input->c, input->h, input->w);
        set_path(img, sizeof img, images, data, "cifar-10-batches-bin/test_batch.bin");
        d->image_buf = read_file(img, MAX_DATA_FILE, &isize);
        parse_cifar(d, d->image_buf, isize, img);
        check_classes(d, img, op_elems(&m->ops[m->n_ops - 1]));
    }
}

void free_dataset(Dataset *d)
{
    free(d->image_buf);
    free(d->label_buf);
    free(d->npy_labels);
    memset(d, 0, sizeof *d);
}
