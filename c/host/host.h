/*
 * host.h -- the host program's side of the engine: errors that print and exit, files, memory, a
 * clock (files.c); weight.txt, and the whole load from a folder over the core's buffer loader
 * (model.c over fpgai.h).
 */
#ifndef FPGAI_HOST_H
#define FPGAI_HOST_H

#include "fpgai.h"

/* Print "error: ..." to stderr, remove_path(fpgai_tmp_path) if set, exit 1.  In the fuzzing build
 * (FPGAI_FUZZ) a harness that sets fpgai_fuzz_jmp gets a longjmp instead. */
void fail(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2), noreturn))
#endif
    ;
extern const char *fpgai_tmp_path;
/* Remove a file, or a folder holding only files (a dump's temporary folder); errors ignored. */
void remove_path(const char *path);
#ifdef FPGAI_FUZZ
extern jmp_buf *fpgai_fuzz_jmp;
#endif

/* Seconds on a monotonic clock, for timings */
double now_seconds(void);

void *xmalloc(size_t n, const char *what);
void *xcalloc(size_t count, size_t size, const char *what);
uint32_t rd_be32(const uint8_t *p);
/* The size of a regular file of at most max_size bytes, or fail */
size_t file_size(const char *path, size_t max_size);
uint8_t *read_file(const char *path, size_t max_size, size_t *size_out);

/* The core's loaders (fpgai.h) on host memory, failing with their message: model.bin, then
 * weight.bin + bias.bin or weight.txt (each copied into buffers the Model owns), which also
 * proves the accumulator bound and plans the memory. */
void parse_model_bin(Model *m, const uint8_t *data, size_t size, const char *want_model);
void parse_weight_bins(Model *m, const uint8_t *w, size_t w_size, const char *weight_path,
                       const uint8_t *b, size_t b_size, const char *bias_path);
void parse_weight_txt(Model *m, const char *text, size_t size, const char *path);

/* The whole load: DIR/NAME_model.bin, its weight files (txt or bin), every check, the plan. */
void load_model(Model *m, const char *dir, const char *name, int txt);
void free_model(Model *m);
/* Free the raw weights once a kernel set has its own copy (the optimized one): the reference
 * kernels read them. */
void release_weights(Model *m);

/* --op-table: the declaration table as JSON, one kind a line */
void print_op_table(void);

#endif
