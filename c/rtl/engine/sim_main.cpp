// sim_main.cpp -- the Verilator testbench of engine.v (make -C c rtl-sim):
//   engine_sim MODEL_DIR IMAGES N LOGITS [LAYERS]
// MODEL_DIR: the export's {model}_rtl folder (params.vh, program.hex, weights.hex, the memory images
// engine.v reads from the working directory); IMAGES: N images of IN_SIZE uint8 pixels, raw.  Loads
// the weights once (when params.vh says WEIGHTS_STREAMED), streams each image in a pixel a cycle,
// collects OUT_SIZE bytes, and writes them to LOGITS in the --logits format (docs/contract.md).
// LAYERS: also every op's output tensor, read from the activation RAM as the op's last instruction ends
// (op 0, the pixels, when op 1 does; tensors.txt says where each lies and how many instructions it takes):
// image after image, op after op, each op's C*H*W bytes (CHW), raw (rtl/engine/dumps.py makes golden
// vectors of them).  Prints the cycles an image takes, from its first pixel to its last output byte.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <unistd.h>
#include "Vfpgai_engine.h"
#include "Vfpgai_engine___024root.h"
#include "verilated.h"

enum { S_FETCH = 1, S_RUN = 3 };                    // engine.v's states

static Vfpgai_engine *dut;
static unsigned long long cycles;

static void tick() {
    dut->clk = 0;
    dut->eval();
    dut->clk = 1;
    dut->eval();
    cycles++;
}

static long param(const char *name) {
    FILE *f = fopen("params.vh", "r");
    char line[256], key[64];
    long value;
    if (!f) { perror("params.vh"); exit(2); }
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "localparam %63s = %ld;", key, &value) == 2 && !strcmp(key, name)) { fclose(f); return value; }
    fprintf(stderr, "rtl-sim: params.vh has no %s\n", name);
    exit(2);
}

static void load_weights(int p) {
    FILE *f = fopen("weights.hex", "r");
    char line[64];
    if (!f) { perror("weights.hex"); exit(2); }
    dut->wload = 1;
    while (fgets(line, sizeof line, f) && strlen(line) >= (size_t)(2 * p))
        for (int l = 0; l < p; l++) {                 // lane 0 (the lowest byte, last on the line) first
            char hex[3] = {line[2 * (p - 1 - l)], line[2 * (p - 1 - l) + 1], 0};
            dut->s_valid = 1;
            dut->s_data = (unsigned char)strtoul(hex, nullptr, 16);
            tick();
        }
    fclose(f);
    dut->s_valid = 0;
    dut->wload = 0;
    tick();
}

// each op's output in the activation RAM and the instructions that make it (tensors.txt, a line an op:
// base, bytes, instructions; op 0, the pixels, none)
struct Tensor { long base, bytes, instructions; };

static std::vector<Tensor> tensors() {
    std::vector<Tensor> t;
    FILE *f = fopen("tensors.txt", "r");
    Tensor x;
    if (!f) { perror("tensors.txt"); exit(2); }
    while (fscanf(f, "%ld %ld %ld", &x.base, &x.bytes, &x.instructions) == 3) t.push_back(x);
    fclose(f);
    return t;
}

// one image in, its outputs out (and, with layers, every op's tensor); false if the engine never answers
static bool run_image(const unsigned char *pixels, long in_size, unsigned char *out, long out_size,
                      const std::vector<Tensor> *layers, std::vector<unsigned char> *dump) {
    long sent = 0, got = 0;
    size_t op = 0;                                       // the ops ended
    long left = layers && layers->size() > 1 ? (*layers)[1].instructions : 0;   // op + 1's instructions to go
    for (long guard = 0; got < out_size; guard++) {
        if (guard > 100000000L) return false;
        dut->s_valid = sent < in_size;
        dut->s_data = sent < in_size ? pixels[sent] : 0;
        bool take = dut->s_valid && dut->s_ready;
        int state = dut->rootp->fpgai_engine__DOT__state;
        dut->clk = 0;
        dut->eval();
        if (dut->m_valid) out[got++] = dut->m_data;
        dut->clk = 1;
        dut->eval();
        cycles++;
        sent += take;
        if (layers && state == S_RUN && dut->rootp->fpgai_engine__DOT__state == S_FETCH && --left == 0) {
            for (size_t i = op ? op + 1 : 0; i <= op + 1; i++)          // op `op + 1` ended
                for (long k = 0; k < (*layers)[i].bytes; k++)
                    dump->push_back(dut->rootp->fpgai_engine__DOT__amem[(*layers)[i].base + k]);
            op++;
            left = op + 1 < layers->size() ? (*layers)[op + 1].instructions : 0;
        }
    }
    dut->s_valid = 0;
    return true;
}

static std::string here(const char *path) {
    return path[0] == '/' ? path : std::string(getcwd(nullptr, 0)) + "/" + path;
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) { fprintf(stderr, "usage: engine_sim MODEL_DIR IMAGES N LOGITS [LAYERS]\n"); return 2; }
    std::string images_path = here(argv[2]), logits_path = here(argv[4]), layers_path = argc == 6 ? here(argv[5]) : "";
    long n = atol(argv[3]);
    if (chdir(argv[1]) != 0) { perror(argv[1]); return 2; }
    long p = param("P"), in_size = param("IN_SIZE"), out_size = param("OUT_SIZE");
    std::vector<unsigned char> images(n * in_size), out(out_size), dump;
    FILE *fi = fopen(images_path.c_str(), "rb");
    if (!fi || fread(images.data(), 1, images.size(), fi) != images.size()) {
        fprintf(stderr, "rtl-sim: %s: cannot read %ld images of %ld bytes\n", images_path.c_str(), n, in_size);
        return 2;
    }
    fclose(fi);
    std::vector<Tensor> layers = tensors();
    Verilated::commandArgs(argc, argv);
    dut = new Vfpgai_engine;
    dut->rst = 1;
    tick();
    tick();
    dut->rst = 0;
    if (param("WEIGHTS_STREAMED")) load_weights((int)p);      // else block RAM that $readmemh initialised
    FILE *fo = fopen(logits_path.c_str(), "w");
    if (!fo) { perror(logits_path.c_str()); return 2; }
    unsigned long long total = 0;
    for (long i = 0; i < n; i++) {
        unsigned long long start = cycles;
        if (!run_image(&images[i * in_size], in_size, out.data(), out_size, argc == 6 ? &layers : nullptr, &dump)) {
            fprintf(stderr, "rtl-sim: image %ld: no output\n", i);
            return 1;
        }
        total += cycles - start;
        for (long k = 0; k < out_size; k++) fprintf(fo, k ? ",%u" : "%u", out[k]);
        fputc('\n', fo);
    }
    fclose(fo);
    if (argc == 6) {
        FILE *fl = fopen(layers_path.c_str(), "wb");
        if (!fl || fwrite(dump.data(), 1, dump.size(), fl) != dump.size() || fclose(fl) != 0) {
            perror(layers_path.c_str());
            return 2;
        }
    }
    printf("rtl-sim: %ld images, %llu cycles per image\n", n, n ? total / n : 0);
    delete dut;
    return 0;
}
