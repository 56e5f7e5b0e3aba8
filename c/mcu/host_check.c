/*
 * host_check.c -- an EXPORT_MODE=c export compiled with the core library on the host: the same
 * arrays and #defines a firmware takes (tests/test_mcu.py builds it per model:
 *   make -C c kinds
 *   gcc -I c/core -I c/build -I EXPORT_DIR -DMODEL_H='"NAME_model.h"' -DPREFIX=name_ -DUPREFIX=NAME_
 *       c/mcu/host_check.c CORE EXPORT_DIR/NAME_model.c
 * with CORE every .c file of c/core and c/ops
 * ), reading raw images (C*H*W uint8 bytes each, one after another) on stdin and writing each
 * image's logits as a comma-separated line on stdout, like c/inference --logits.
 */
#include <stdio.h>
#include <string.h>

#include MODEL_H

#define CAT(a, b) a##b
#define XCAT(a, b) CAT(a, b)
#define SYM(s) XCAT(PREFIX, s)
#define DEF(s) XCAT(UPREFIX, s)
#define IMAGE_BYTES (DEF(INPUT_C) * DEF(INPUT_H) * DEF(INPUT_W))

static uint8_t storage[DEF(STORAGE_BYTES)];
static uint8_t arena[DEF(ARENA_BYTES)];
static uint8_t image[IMAGE_BYTES];

int main(void)
{
    Model m;
    memset(&m, 0, sizeof m);
    if (fpgai_load_graph(&m, storage, sizeof storage, SYM(model_bin), sizeof SYM(model_bin), NULL) != 0 ||
        fpgai_attach_weights(&m, SYM(weight_bin), sizeof SYM(weight_bin), "weight.bin", SYM(bias_bin),
                             sizeof SYM(bias_bin), "bias.bin", 1) != 0) {
        fprintf(stderr, "error: %s\n", m.error);
        return 1;
    }
    if (m.arena_bytes != sizeof arena) {
        fprintf(stderr, "error: the core plans %zu bytes of activations, the export %zu\n", m.arena_bytes,
                sizeof arena);
        return 1;
    }
    while (fread(image, 1, sizeof image, stdin) == sizeof image) {
        const uint8_t *logits = fpgai_run(&m, arena, image);
        for (int k = 0; k < DEF(OUTPUTS); k++)
            printf("%d%c", logits[k], k + 1 < DEF(OUTPUTS) ? ',' : '\n');
    }
    return ferror(stdin) ? 1 : 0;
}
