/*
 * datasets.c -- MNIST idx3 images + idx1 labels, CIFAR-10 binary batches (1 label byte and
 * 3,072 CHW pixel bytes a record).  Every length is checked against the file's real size.
 */
#include "datasets.h"

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
    check_labels(d, path);
    snprintf(d->source, sizeof d->source, "%s", path);
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
    size_t isize, lsize;
    if (!strcmp(m->dataset, "mnist")) {
        if (input->c != 1 || input->h != 28 || input->w != 28)
            fail("%s: model input is %dx%dx%d, mnist images are 1x28x28", m->path, input->c, input->h, input->w);
        set_path(img, sizeof img, images, data, "MNIST/raw/t10k-images-idx3-ubyte");
        set_path(lab, sizeof lab, labels, data, "MNIST/raw/t10k-labels-idx1-ubyte");
        d->image_buf = read_file(img, MAX_DATA_FILE, &isize);
        d->label_buf = read_file(lab, MAX_DATA_FILE, &lsize);
        parse_mnist(d, d->image_buf, isize, img, d->label_buf, lsize, lab);
    } else {
        if (labels)
            fail("%s: --labels does not apply to cifar10 (labels are inside the batch file)", labels);
        if (input->c != 3 || input->h != 32 || input->w != 32)
            fail("%s: model input is %dx%dx%d, cifar10 images are 3x32x32", m->path, input->c, input->h, input->w);
        set_path(img, sizeof img, images, data, "cifar-10-batches-bin/test_batch.bin");
        d->image_buf = read_file(img, MAX_DATA_FILE, &isize);
        parse_cifar(d, d->image_buf, isize, img);
    }
}

void free_dataset(Dataset *d)
{
    free(d->image_buf);
    free(d->label_buf);
    memset(d, 0, sizeof *d);
}
