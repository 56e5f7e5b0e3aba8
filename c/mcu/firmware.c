/*
 * firmware.c -- a bare-metal Cortex-M4 program around the core library (c/core/fpgai.h): the model
 * and a handful of test images are const arrays in flash (build/firmware_data.h, written by
 * mcu.py data), the storage block and the arena are static RAM sized by the export's #defines.
 * It loads the model (every check of the host's loader), then prints each image's logits as
 *   logits I: v0,v1,...
 * and exits through semihosting: 0 when all ran, 1 with an "error:" line when the load failed.
 */
#include "firmware_data.h"
#include "semihost.h"

static uint8_t storage[FW_STORAGE_BYTES] __attribute__((aligned(8)));
static uint8_t arena[FW_ARENA_BYTES];

/* decimal digits of v into buf (no stdio here), returns the end */
static char *put_uint(char *buf, uint32_t v)
{
    char tmp[10];
    int n = 0;
    do
        tmp[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    while (n)
        *buf++ = tmp[--n];
    return buf;
}

int main(void)
{
    Model m = {0};
    m.path = FW_NAME "_model.bin";
    m.weights_path = FW_NAME "_weight.bin, " FW_NAME "_bias.bin";
    if (fpgai_load_graph(&m, storage, sizeof storage, FW_MODEL_BIN, sizeof FW_MODEL_BIN, FW_NAME) != 0 ||
        fpgai_attach_weights(&m, FW_WEIGHT_BIN, sizeof FW_WEIGHT_BIN, FW_NAME "_weight.bin", FW_BIAS_BIN,
                             sizeof FW_BIAS_BIN, FW_NAME "_bias.bin", 1) != 0) {
        semihost_print("error: ");
        semihost_print(m.error);
        semihost_print("\n");
        return 1;
    }
    if (m.arena_bytes != FW_ARENA_BYTES) {          /* the export's plan is the core's */
        semihost_print("error: the arena the export planned differs from the core's\n");
        return 1;
    }
    for (uint32_t i = 0; i < FW_IMAGES; i++) {
        const uint8_t *logits = fpgai_run(&m, arena, fw_images[i]);
        char line[16 + 4 * FW_OUTPUTS], *p = line;
        for (const char *s = "logits "; *s; s++)
            *p++ = *s;
        p = put_uint(p, i);
        *p++ = ':';
        *p++ = ' ';
        for (uint32_t k = 0; k < FW_OUTPUTS; k++) {
            p = put_uint(p, logits[k]);
            *p++ = k + 1 < FW_OUTPUTS ? ',' : '\n';
        }
        *p = 0;
        semihost_print(line);
    }
    return 0;
}
