/*
 * fuzz_loaders.c -- libFuzzer harness for the file loaders of c/inference.c.
 *
 * Built once per target (make -C c fuzz), with -DFUZZ_TARGET_<name>:
 *   model        model.bin: parse + validate, tiling, memory plan
 *   weights_bin  [model.bin][weight.bin] bias.bin: the whole load of --format bin
 *   weights_txt  [model.bin] weight.txt: the whole load of --format txt
 *   mnist        [idx3 images] idx1 labels
 *   cifar        a CIFAR-10 binary batch
 * Multi-file inputs are packed: each part but the last is a uint32 little-endian
 * length and that many bytes (clamped to what is left), the last part is the rest.
 * Every part is copied into its own exactly sized heap block, so ASan sees any
 * read past the end of a "file".
 *
 * The engine is compiled in with FPGAI_FUZZ: fail() longjmps back here instead of
 * exiting; everything a failed load allocated hangs off the Model and is freed by
 * free_model, so the leak checker stays on.
 */
#define FPGAI_FUZZ 1
#define main fpgai_inference_main
#include "../inference.c"
#undef main

#include <stddef.h>

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

/* Promises the main loop relies on, checked after a successful load. */
#if defined(FUZZ_TARGET_model) || defined(FUZZ_TARGET_weights_bin) || defined(FUZZ_TARGET_weights_txt)
static void check_plan(const Model *m)
{
    for (int i = 0; i < m->n_ops; i++)
        if (m->ops[i].offset + op_elems(&m->ops[i]) > m->arena_bytes)
            abort();
}
#else
static volatile uint32_t g_sink;

static void touch_dataset(const Dataset *d, size_t image_bytes)
{
    uint32_t s = 0;
    for (size_t i = 0; i < d->count; i++)
        s += d->pixels[i * d->image_stride] + d->pixels[i * d->image_stride + image_bytes - 1] +
             d->labels[i * d->label_stride];
    g_sink = s;
}
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static jmp_buf jb;
    memset(&g_model, 0, sizeof g_model);
    memset(&g_data, 0, sizeof g_data);
    snprintf(g_model.path, sizeof g_model.path, "model.bin");
#if defined(FUZZ_TARGET_model)
    split(data, size, 1);
#elif defined(FUZZ_TARGET_weights_bin)
    split(data, size, 3);
#elif defined(FUZZ_TARGET_weights_txt)
    split(data, size, 2);
#elif defined(FUZZ_TARGET_mnist)
    split(data, size, 2);
#elif defined(FUZZ_TARGET_cifar)
    split(data, size, 1);
#else
#error "define one FUZZ_TARGET_<name> (see the top of this file)"
#endif

    g_fuzz_jmp = &jb;
    if (setjmp(jb) == 0) {
#if defined(FUZZ_TARGET_model) || defined(FUZZ_TARGET_weights_bin) || defined(FUZZ_TARGET_weights_txt)
        Model *m = &g_model;
        parse_model_bin(m, g_part[0], g_part_size[0], NULL);
        check_tiling(m);
#if defined(FUZZ_TARGET_weights_bin)
        parse_weight_bins(m, g_part[1], g_part_size[1], "weight.bin", g_part[2], g_part_size[2], "bias.bin");
#elif defined(FUZZ_TARGET_weights_txt)
        parse_weight_txt(m, (const char *)g_part[1], g_part_size[1], "weight.txt");
#endif
#if !defined(FUZZ_TARGET_model)
        prepare_layers(m);
        check_overflow(m);
#endif
        plan_memory(m);
        check_plan(m);
#elif defined(FUZZ_TARGET_mnist)
        parse_mnist(&g_data, g_part[0], g_part_size[0], "images", g_part[1], g_part_size[1], "labels");
        touch_dataset(&g_data, 784);
#elif defined(FUZZ_TARGET_cifar)
        parse_cifar(&g_data, g_part[0], g_part_size[0], "test_batch.bin");
        touch_dataset(&g_data, 3072);
#endif
    }
    g_fuzz_jmp = NULL;
    free_model(&g_model);
    for (int i = 0; i < 3; i++) {
        free(g_part[i]);
        g_part[i] = NULL;
    }
    return 0;
}
