/*
 * fuzz_loaders.c -- libFuzzer harness for the loaders of the C engine (the core, c/core/ and
 * c/ops/, under the host's c/host/model.c, and c/host/datasets.c, built with them: make -C c fuzz).
 *
 * Built once per target (make -C c fuzz), with -DFUZZ_TARGET_<name>:
 *   model        model.bin: parse + validate, tiling, memory plan
 *   weights_bin  [model.bin][weight.bin] bias.bin: the whole load of --format bin (and the
 *                accumulator bound), then one image through the core's reference kernels
 *                when the model's work is small
 *   weights_txt  [model.bin] weight.txt: the whole load of --format txt, then one image as above
 *   mnist        [idx3 images] idx1 labels
 *   cifar        a CIFAR-10 binary batch
 *   npy          [images.npy] labels.npy: the .npy reader (header parser, dtypes, shapes, labels);
 *                an empty labels part runs the images alone
 * Multi-file inputs are packed: each part but the last is a uint32 little-endian
 * length and that many bytes (clamped to what is left), the last part is the rest.
 * Every part is copied into its own exactly sized heap block, so ASan sees any
 * read past the end of a "file".
 *
 * The loaders are compiled with -DFPGAI_FUZZ: fail() longjmps back here instead of
 * exiting; everything a failed load allocated hangs off the Model and is freed by
 * free_model, so the leak checker stays on.
 *
 * The seal.  model.bin v3 carries the CRC-32 of its own bytes 16.. (offset 12) and the size
 * and CRC-32 of each weight file; a random mutation would almost never keep them right, and
 * the fuzzer would stop at the first check.  So before parsing, the harness seals its input
 * as the exporter does: it writes the size and CRC-32 of the weight part(s) it supplies into
 * the model.bin part's header (weights_bin: weight.bin at 40, bias.bin at 56; weights_txt:
 * weight.txt at 72), then model.bin's own CRC-32 at 12.  The engine's code is the same as in
 * every other build (no fuzz-only branch in the checks): the CRC comparisons run and pass,
 * and the fuzzer reaches the header fields, the record parser and the weight loaders.  What
 * this gives up (mismatched sizes and CRCs) is tested by tests/test_c_engine.py.
 */
#include "datasets.h"
#include "host.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Globals, not locals: they survive the longjmp with defined values. */
static Model g_model;
static Dataset g_data;
static uint8_t *g_part[3];
static size_t g_part_size[3];

/* Split the input into n parts (see above), each in its own malloc block. */
static void split(const uint8_t *data, size_t size, int n)
{
    for (int i = 0; i < n; i++) {
        size_t len = size;
        if (i + 1 < n) {
            if (size >= 4) {
                uint32_t want = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
                                (uint32_t)data[3] << 24;
                data += 4;
                size -= 4;
                len = want < size ? want : size;
            } else {
                len = 0;
            }
        }
        g_part[i] = malloc(len ? len : 1);
        if (!g_part[i])
            abort();
        if (len)
            memcpy(g_part[i], data, len);
        g_part_size[i] = len;
        data += len;
        size -= len;
    }
}

#if defined(FUZZ_TARGET_model) || defined(FUZZ_TARGET_weights_bin) || defined(FUZZ_TARGET_weights_txt)
static void put_u32(uint8_t *p, uint32_t v)
{
    for (int k = 0; k < 4; k++)
        p[k] = (uint8_t)(v >> 8 * k);
}

/* model.bin's own CRC-32 (see the top) */
static void seal_model(void)
{
    if (g_part_size[0] >= 16)
        put_u32(g_part[0] + 12, crc32_bytes(g_part[0] + 16, g_part_size[0] - 16));
}
#endif

#if defined(FUZZ_TARGET_weights_bin) || defined(FUZZ_TARGET_weights_txt)
/* Part `part`'s size and CRC-32 into model.bin's header entry at `at` (see the top) */
static void seal_file(int part, size_t at)
{
    if (g_part_size[0] < at + 12)
        return;
    put_u32(g_part[0] + at, (uint32_t)g_part_size[part]);
    put_u32(g_part[0] + at + 4, (uint32_t)((uint64_t)g_part_size[part] >> 32));
    put_u32(g_part[0] + at + 8, crc32_bytes(g_part[part], g_part_size[part]));
}
#endif

/* Promises the main loop relies on, checked after a successful load. */
#if defined(FUZZ_TARGET_model) || defined(FUZZ_TARGET_weights_bin) || defined(FUZZ_TARGET_weights_txt)
static void check_plan(const Model *m)
{
    for (int i = 0; i < m->n_ops; i++)
        if (m->ops[i].offset + op_elems(&m->ops[i]) > m->arena_bytes || m->arena_bytes > MAX_ARENA)
            abort();
}

#if defined(FUZZ_TARGET_weights_bin) || defined(FUZZ_TARGET_weights_txt)
static volatile uint8_t g_sink_run;

/* A model that loaded runs one image through the core's reference kernels (fpgai_run), when its
 * work is small enough for a fuzzing iteration: every kernel on every graph the fuzzer finds
 * valid, under ASan and UBSan (an image of 0x5a bytes). */
static void run_small(const Model *m)
{
    if (m->work > ((uint64_t)1 << 22) || m->arena_bytes > ((size_t)1 << 24))     /* the loader's count */
        return;
    uint8_t *arena = malloc(m->arena_bytes ? m->arena_bytes : 1), *image = malloc(op_elems(&m->ops[0]));
    if (!arena || !image)
        abort();
    memset(image, 0x5a, op_elems(&m->ops[0]));
    g_sink_run = fpgai_run(m, arena, image)[0];
    free(arena);
    free(image);
}
#endif
#else
static volatile uint32_t g_sink;

static void touch_dataset(const Dataset *d, size_t image_bytes)
{
    uint32_t s = 0;
    for (size_t i = 0; i < d->count; i++)
        s += d->pixels[i * d->image_stride] + d->pixels[i * d->image_stride + image_bytes - 1] +
             (uint32_t)dataset_label(d, i);
    g_sink = s;
}
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static jmp_buf jb;
    memset(&g_model, 0, sizeof g_model);
    memset(&g_data, 0, sizeof g_data);
    g_model.path = "model.bin";
#if defined(FUZZ_TARGET_model)
    split(data, size, 1);
    seal_model();
#elif defined(FUZZ_TARGET_weights_bin)
    split(data, size, 3);
    seal_file(1, 40);
    seal_file(2, 56);
    seal_model();
#elif defined(FUZZ_TARGET_weights_txt)
    split(data, size, 2);
    seal_file(1, 72);
    seal_model();
#elif defined(FUZZ_TARGET_mnist)
    split(data, size, 2);
#elif defined(FUZZ_TARGET_cifar)
    split(data, size, 1);
#elif defined(FUZZ_TARGET_npy)
    split(data, size, 2);
#else
#error "define one FUZZ_TARGET_<name> (see the top of this file)"
#endif

    fpgai_fuzz_jmp = &jb;
    if (setjmp(jb) == 0) {
#if defined(FUZZ_TARGET_model) || defined(FUZZ_TARGET_weights_bin) || defined(FUZZ_TARGET_weights_txt)
        Model *m = &g_model;
        parse_model_bin(m, g_part[0], g_part_size[0], NULL);
#if defined(FUZZ_TARGET_weights_bin)
        parse_weight_bins(m, g_part[1], g_part_size[1], "weight.bin", g_part[2], g_part_size[2], "bias.bin");
#elif defined(FUZZ_TARGET_weights_txt)
        parse_weight_txt(m, (const char *)g_part[1], g_part_size[1], "weight.txt");
#endif
        check_plan(m);
#if !defined(FUZZ_TARGET_model)
        run_small(m);
#endif
#elif defined(FUZZ_TARGET_mnist)
        parse_mnist(&g_data, g_part[0], g_part_size[0], "images", g_part[1], g_part_size[1], "labels");
        touch_dataset(&g_data, 784);
#elif defined(FUZZ_TARGET_cifar)
        parse_cifar(&g_data, g_part[0], g_part_size[0], "test_batch.bin");
        touch_dataset(&g_data, 3072);
#elif defined(FUZZ_TARGET_npy)
        /* the model's input shape: the file's own when it is 4-d with sane sizes (so the labels are
         * reached), else 1x28x28 (the shape check refuses it) */
        NpyArray a;
        int c = 1, h = 28, w = 28;
        parse_npy(&a, g_part[0], g_part_size[0], "images.npy");
        if (a.ndim == 4 && a.shape[1] >= 1 && a.shape[1] < 65536 && a.shape[2] >= 1 && a.shape[2] < 65536 &&
            a.shape[3] >= 1 && a.shape[3] < 65536) {
            c = (int)a.shape[1];
            h = (int)a.shape[2];
            w = (int)a.shape[3];
        }
        parse_npy_dataset(&g_data, g_part[0], g_part_size[0], "images.npy", g_part_size[1] ? g_part[1] : NULL,
                          g_part_size[1], "labels.npy", c, h, w, 10);
        touch_dataset(&g_data, (size_t)c * (size_t)h * (size_t)w);
#endif
    }
    fpgai_fuzz_jmp = NULL;
    free(g_data.npy_labels);            /* allocated only once every check passed */
    g_data.npy_labels = NULL;
    free_model(&g_model);
    for (int i = 0; i < 3; i++) {
        free(g_part[i]);
        g_part[i] = NULL;
    }
    return 0;
}
