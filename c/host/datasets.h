/*
 * datasets.h -- the test sets the engine reads: MNIST idx files, the CIFAR-10 binary batch, and
 * .npy arrays (uint8 NxCxHxW images, integer labels) for any model.
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
    uint32_t *npy_labels;            /* .npy labels, converted (owned; NULL otherwise) */
    int has_labels;                  /* 0: .npy images without --labels (no accuracy) */
    char source[4096];               /* for the report */
} Dataset;

/* A parsed .npy header (format version 1.0 or 2.0): the array's dtype, shape and data. */
#define NPY_MAX_DIMS 8
typedef struct {
    char kind;                       /* 'u' unsigned or 'i' signed integer (the only kinds read) */
    int itemsize;                    /* 1, 2, 4 or 8 bytes */
    int big_endian;
    int ndim;
    uint64_t shape[NPY_MAX_DIMS];
    uint64_t count;                  /* product of shape */
    const uint8_t *data;             /* count * itemsize bytes, exactly the rest of the file */
} NpyArray;

/* From memory (caller-owned buffers; d points into them) */
void parse_mnist(Dataset *d, const uint8_t *ibuf, size_t isize, const char *images,
                 const uint8_t *lbuf, size_t lsize, const char *labels);
void parse_cifar(Dataset *d, const uint8_t *buf, size_t size, const char *path);
/* A .npy file strictly: magic, version 1.0/2.0, a dict of exactly 'descr' (an integer dtype),
 * 'fortran_order': False and 'shape', the data exactly the rest of the file. */
void parse_npy(NpyArray *a, const uint8_t *buf, size_t size, const char *path);
/* .npy images (uint8 N x c x h x w) and, if lbuf is not NULL, labels (any integer dtype, N of them,
 * each in 0..n_classes-1; converted into d->npy_labels, allocated after every check passed). */
void parse_npy_dataset(Dataset *d, const uint8_t *ibuf, size_t isize, const char *images,
                       const uint8_t *lbuf, size_t lsize, const char *labels, int c, int h, int w,
                       size_t n_classes);
/* The label of image i, or -1 when the dataset has none. */
long dataset_label(const Dataset *d, size_t i);

/* The model's dataset (m->dataset) from DATA (default paths) or the given files, which
 * override them (NULL: the default); the model's input shape checked against it.  Images in
 * .npy format (by their magic) are read for any model; dataset "custom" requires them. */
void load_dataset(Dataset *d, const Model *m, const char *data, const char *images, const char *labels);
void free_dataset(Dataset *d);

#endif
