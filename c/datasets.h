/*
 * datasets.h -- the test sets the engine reads: MNIST idx files and the CIFAR-10 binary batch.
 */
#ifndef FPGAI_DATASETS_H
#define FPGAI_DATASETS_H

#include "fpgai.h"

typedef struct {
    uint8_t *image_buf, *label_buf;  /* file contents (label_buf NULL for CIFAR) */
    const uint8_t *pixels;           /* first image, C*H*W bytes */
    const uint8_t *labels;           /* first label */
    size_t image_stride, label_stride;
    size_t count;
    char source[4096];               /* for the report */
} Dataset;

/* From memory (caller-owned buffers; d points into them) */
void parse_mnist(Dataset *d, const uint8_t *ibuf, size_t isize, const char *images,
                 const uint8_t *lbuf, size_t lsize, const char *labels);
void parse_cifar(Dataset *d, const uint8_t *buf, size_t size, const char *path);

/* The model's dataset (m->dataset) from DATA (default paths) or the given files, which
 * override them (NULL: the default); the model's input shape checked against it. */
void load_dataset(Dataset *d, const Model *m, const char *data, const char *images, const char *labels);
void free_dataset(Dataset *d);

#endif
