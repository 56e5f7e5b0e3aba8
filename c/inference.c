/*
 * inference.c -- FPGAI's C inference engine, the program (C99, libc only; OpenMP optional).
 *
 * Runs the integer graph that export_quant_model.py writes ({model}_model.bin, format
 * version 2, plus {model}_weight.bin/_bias.bin or {model}_weight.txt) on the MNIST or
 * CIFAR-10 test set, or on .npy images (any model; --labels optional), and reports accuracy.  Every op matches model/np_engine.py bit for bit.
 * The parts (fpgai.h lists them): model.c loads and checks the files, kernels_ref.c and
 * kernels_fast.c run the graph, datasets.c reads the test set; this file is the command
 * line, the loop over images (in parallel with OpenMP, one workspace per thread), the report.
 */
#define _POSIX_C_SOURCE 200809L     /* clock_gettime, stat */

#include "datasets.h"
#include "fpgai.h"
#include "kernels.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    const char *model, *dir, *data, *logits, *images, *labels;
    int txt, quiet, reference;
    long limit;                     /* 0: all */
} Options;

/* Print the usage (to stderr after a command-line error, exit 2; to stdout for --help). */
static void usage(const char *msg, const char *arg)
{
    FILE *f = msg ? stderr : stdout;
    if (msg)
        fprintf(stderr, "inference: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    fprintf(f,
            "usage: inference [--model NAME] [--dir DIR] [--data DIR] [--format bin|txt] [--limit N]\n"
            "                 [--logits FILE] [--images PATH] [--labels PATH] [--quiet] [--reference]\n"
            "       inference --op-table\n"
            "  --model NAME    model name, files DIR/NAME_model.bin etc. (default lenet)\n"
            "  --dir DIR       export folder (default export_model)\n"
            "  --data DIR      dataset folder (default data)\n"
            "  --format F      weights from NAME_weight.bin + NAME_bias.bin (bin) or NAME_weight.txt (txt)\n"
            "  --limit N       run only the first N images\n"
            "  --logits FILE   write each image's output values, one comma-separated line per image\n"
            "  --images PATH   test images: a .npy of uint8 N x C x H x W (any model; required for dataset\n"
            "                  custom), or the idx3 file (mnist) or CIFAR-10 batch (cifar10)\n"
            "  --labels PATH   test labels: a .npy of N integers (optional with .npy images: without it,\n"
            "                  no accuracy), or the idx1 file (mnist)\n"
            "  --quiet         print only the result line\n"
            "  --reference     run the simple reference kernels instead of the optimized ones\n"
            "  --op-table      print the op kinds this engine reads, as JSON (one per line), and exit\n");
    exit(msg ? 2 : 0);
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static void parse_args(Options *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    o->model = "lenet";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--quiet")) {
            o->quiet = 1;
            continue;
        }
        if (!strcmp(a, "--reference")) {
            o->reference = 1;
            continue;
        }
        if (!strcmp(a, "--op-table")) {
            print_op_table();
            exit(0);
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            usage(NULL, NULL);
        const char **slot = !strcmp(a, "--model") ? &o->model : !strcmp(a, "--dir") ? &o->dir
                          : !strcmp(a, "--data") ? &o->data : !strcmp(a, "--logits") ? &o->logits
                          : !strcmp(a, "--images") ? &o->images : !strcmp(a, "--labels") ? &o->labels : NULL;
        int is_format = !strcmp(a, "--format"), is_limit = !strcmp(a, "--limit");
        if (!slot && !is_format && !is_limit)
            usage("unknown option", a);
        if (i + 1 >= argc)
            usage("missing value for", a);
        const char *v = argv[++i];
        if (slot) {
            if (!*v)
                usage("empty value for", a);
            *slot = v;
        } else if (is_format) {
            if (strcmp(v, "bin") && strcmp(v, "txt"))
                usage("--format must be bin or txt, not", v);
            o->txt = !strcmp(v, "txt");
        } else {
            char *end;
            errno = 0;
            long n = strtol(v, &end, 10);
            if (!*v || *end || errno || n < 1 || v[0] == '+' || v[0] == ' ')
                usage("--limit needs a positive integer, not", v);
            o->limit = n;
        }
    }
    if (strchr(o->model, '/'))
        usage("--model must be a plain name, not", o->model);
    /* Run from inside c/: take the repository root as the base of the defaults. */
    int up = !is_dir("export_model") && is_dir("../export_model");
    if (!o->dir)
        o->dir = up ? "../export_model" : "export_model";
    if (!o->data)
        o->data = up ? "../data" : "data";
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A kernel set, prepared, and one workspace per thread. */
typedef struct {
    const KernelSet *k;
    void *prepared;
    void **ws;
    int n_threads;
} Engine;

static void engine_init(Engine *e, const Model *m, int reference)
{
    e->k = reference ? &REFERENCE_KERNELS : &FAST_KERNELS;
    e->prepared = e->k->prepare(m);
    e->n_threads = 1;
#ifdef _OPENMP
    e->n_threads = omp_get_max_threads() > 1 ? omp_get_max_threads() : 1;
#endif
    e->ws = xcalloc((size_t)e->n_threads, sizeof *e->ws, "workspaces");
    for (int t = 0; t < e->n_threads; t++)
        e->ws[t] = e->k->workspace_new(m, e->prepared);
}

static void engine_free(Engine *e)
{
    for (int t = 0; e->ws && t < e->n_threads; t++)
        e->k->workspace_free(e->ws[t]);
    free(e->ws);
    e->k->release(e->prepared);
}

/* --logits goes to FILE.tmp, renamed over FILE only when complete (fail() deletes it). */
static FILE *open_logits(const char *path, char *tmp, size_t cap)
{
    int n = snprintf(tmp, cap, "%s.tmp", path);
    if (n < 0 || (size_t)n >= cap)
        fail("%s: path too long", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        fail("%s: cannot write (%s)", tmp, strerror(errno));
    fpgai_tmp_path = tmp;
    return f;
}

static void close_logits(FILE *f, const char *tmp, const char *path)
{
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    if (bad)
        fail("%s: write error", tmp);
    if (rename(tmp, path) != 0)
        fail("%s: cannot rename to %s (%s)", tmp, path, strerror(errno));
    fpgai_tmp_path = NULL;
}

/* Images run in chunks (in parallel with OpenMP); results are scored and written in order.
 * Returns the number of correct predictions (argmax, first index on ties). */
static size_t run_images(const Engine *e, const Model *m, const Dataset *ds, size_t count, FILE *logits)
{
    enum { CHUNK = 256 };
    const size_t n_out = op_elems(&m->ops[m->n_ops - 1]);     /* all of the last op, CHW, as numpy flattens it */
    uint8_t *results = xmalloc(CHUNK * n_out, "results");
    size_t correct = 0;
    for (size_t start = 0; start < count; start += CHUNK) {
        const long n = (long)(count - start < CHUNK ? count - start : CHUNK);
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1)
#endif
        for (long j = 0; j < n; j++) {
            int t = 0;
#ifdef _OPENMP
            t = omp_get_thread_num();
#endif
            const uint8_t *image = ds->pixels + (start + (size_t)j) * ds->image_stride;
            memcpy(results + (size_t)j * n_out, e->k->run(m, e->prepared, e->ws[t], image), n_out);
        }
        for (long j = 0; j < n; j++) {
            const uint8_t *out = results + (size_t)j * n_out;
            size_t best = 0;
            for (size_t c = 1; c < n_out; c++)
                if (out[c] > out[best])
                    best = c;
            correct += (long)best == dataset_label(ds, start + (size_t)j);
            if (logits)
                for (size_t c = 0; c < n_out; c++)
                    fprintf(logits, c + 1 < n_out ? "%d," : "%d\n", out[c]);
        }
    }
    free(results);
    return correct;
}

int main(int argc, char **argv)
{
    Options opt;
    parse_args(&opt, argc, argv);

    /* Load and check everything before the clock starts. */
    Model m;
    Dataset ds;
    Engine e;
    memset(&m, 0, sizeof m);
    memset(&ds, 0, sizeof ds);
    memset(&e, 0, sizeof e);
    load_model(&m, opt.dir, opt.model, opt.txt);
    load_dataset(&ds, &m, opt.data, opt.images, opt.labels);
    engine_init(&e, &m, opt.reference);
    free(m.weight_raw);                 /* the kernels have their own copy */
    m.weight_raw = NULL;
    size_t count = opt.limit > 0 && (size_t)opt.limit < ds.count ? (size_t)opt.limit : ds.count;
    char tmp[4200];
    FILE *logits = opt.logits ? open_logits(opt.logits, tmp, sizeof tmp) : NULL;

    double t0 = now_seconds();
    size_t correct = run_images(&e, &m, &ds, count, logits);
    double seconds = now_seconds() - t0;

    if (logits)
        close_logits(logits, tmp, opt.logits);
    if (!opt.quiet) {
        printf("model: %s (%s, fingerprint %s), %d ops, %s weights from %s files, %zu KiB activations\n",
               m.name, m.dataset, m.fingerprint, m.n_ops, m.weight_signed ? "int8" : "uint8",
               opt.txt ? "txt" : "bin", (m.arena_bytes + 1023) / 1024);
        printf("kernels: %s, %d thread%s\n", e.k->name, e.n_threads, e.n_threads > 1 ? "s" : "");
        printf("images: %zu of %zu from %s\n", count, ds.count, ds.source);
        if (ds.has_labels)
            printf("accuracy: %.2f%% (%zu/%zu)\n", 100.0 * (double)correct / (double)count, correct, count);
        else
            printf("accuracy: n/a (no --labels)\n");
        printf("speed: %.1f images/s\n", seconds > 0 ? (double)count / seconds : 0.0);
    }
    if (ds.has_labels)
        printf("result: images=%zu correct=%zu seconds=%.4f\n", count, correct, seconds);
    else
        printf("result: images=%zu seconds=%.4f\n", count, seconds);

    engine_free(&e);
    free_dataset(&ds);
    free_model(&m);
    return 0;
}
