/*
 * inference.c -- FPGAI's C inference engine, the program (C99, libc only; OpenMP optional).
 *
 * Runs the integer graph that export_quant_model.py writes ({model}_model.bin, format
 * version 3, plus {model}_weight.bin/_bias.bin or {model}_weight.txt) on the MNIST or
 * CIFAR-10 test set, or on .npy images (any model; --labels optional), and reports accuracy.
 * Every op matches model/engines/np_engine.py bit for bit.  The parts (core/fpgai.h lists them):
 * model.c reads the files and the core (core/, ops/) checks them, the kinds' reference kernels
 * or the optimized ones run the graph, datasets.c reads the test set, dump.c writes golden vectors;
 * this file is the command line, the loop over batches of images, the report.  Threads (the
 * OpenMP build, inference_omp) share each batch's images, or, in a batch of fewer images than
 * threads, each layer's work (Engine, kernels.h).
 */
#define _POSIX_C_SOURCE 200809L     /* stat, lstat, readlink, sigaction, kill, posix_spawnp */

#include "datasets.h"
#include "dump.h"
#include "host.h"
#include "fpgai.h"
#include "kernels.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    const char *model, *dir, *data, *logits, *images, *labels, *dump;
    const char *isa;                /* --isa: the optimized kernels' build; NULL: the best the CPU runs */
    int txt, quiet, reference, profile, overwrite;
    long limit;                     /* 0: all */
    long batch;                     /* images per pass through the graph; 0: DEFAULT_BATCH_PER_THREAD a thread */
    long threads;                   /* 0: OpenMP's default (OMP_NUM_THREADS, else every core) */
    uint64_t max_work;              /* --max-work: the cap on operations per image; 0: DEFAULT_MAX_WORK */
} Options;

/* Images at a time and thread by default.  A batch reads each weight panel once per chunk of its
 * pixels, not once per image, and runs its first layers in passes that stay in cache: on a Zen 4
 * (1 MB L2, 32 MB L3) ResNet18, MobileNetV2 and VGG13 take the same CPU time at batches of 1 to 64
 * (within 2%); 4 a thread keeps a few images together where the weights do not fit the cache, and
 * every thread its own images (inference_omp). */
#define DEFAULT_BATCH_PER_THREAD 4
#define TEXT(x) #x
#define MACRO_TEXT(x) TEXT(x)
#define MAX_BATCH 65536

/* Print the usage (to stderr after a command-line error, exit 2; to stdout for --help). */
static void usage(const char *msg, const char *arg)
{
    FILE *f = msg ? stderr : stdout;
    if (msg)
        fprintf(stderr, "inference: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    fprintf(f,
            "usage: inference [--model NAME] [--dir DIR] [--data DIR] [--format bin|txt] [--limit N]\n"
            "                 [--logits FILE] [--images PATH] [--labels PATH] [--quiet] [--reference]\n"
            "                 [--isa NAME] [--batch N] [--threads T] [--max-work N] [--profile]\n"
            "                 [--dump-layers DIR] [--overwrite]\n"
            "       inference --op-table | --isa-table\n"
            "  --model NAME    model name, files DIR/NAME_model.bin etc. (default lenet)\n"
            "  --dir DIR       export folder (default export_model)\n"
            "  --data DIR      dataset folder (default data)\n"
            "  --format F      weights from NAME_weight.bin + NAME_bias.bin (bin) or NAME_weight.txt (txt)\n"
            "  --limit N       run only the first N images\n"
            "  --logits FILE   write each image's output values, one comma-separated line per image\n"
            "                  ('-': stdout; a file atomically, through a symlink to its target; a device\n"
            "                  or FIFO directly)\n"
            "  --images PATH   test images: a .npy of uint8 N x C x H x W (any model; required for dataset\n"
            "                  custom), or the idx3 file (mnist) or CIFAR-10 batch (cifar10)\n"
            "  --labels PATH   test labels: a .npy of N integers (optional with .npy images: without it,\n"
            "                  no accuracy), or the idx1 file (mnist)\n"
            "  --quiet         print only the result line\n"
            "  --reference     run the simple reference kernels instead of the optimized ones\n"
            "  --isa NAME      the optimized kernels' build: amx, avx512, avxvnni, avx2 or c99 (x86-64), neon\n"
            "                  or c99 (aarch64); default the best this CPU runs (--isa-table)\n"
            "  --batch N       run N images at a time through the graph, layer by layer (default "
            MACRO_TEXT(DEFAULT_BATCH_PER_THREAD) " a thread); the\n"
            "                  activations take N times the model's.  Where the N images' activations\n"
            "                  would overflow the cache, the layers before run in passes of fewer\n"
            "                  (environment: FPGAI_PASS_BYTES, a pass's activations, default 524288)\n"
            "  --threads T     split each layer across T threads (inference_omp; default OMP_NUM_THREADS,\n"
            "                  else every core); other builds run one\n"
            "  --max-work N    refuse a model that needs more than N operations per image, all its ops\n"
            "                  together: multiply-accumulates (conv, linear), window reads (pools), output\n"
            "                  values (the other kinds) (default %llu)\n"
            "  --profile       print each op's share of the time after the run (the optimized kernels)\n"
            "  --dump-layers DIR  write every op's output for the images (--limit N of them) to DIR as\n"
            "                  golden vectors (.npy, .hex, manifest.json: model/formats/golden.py's\n"
            "                  layout) and exit\n"
            "  --overwrite     replace a --logits file or --dump-layers folder that git tracks (refused\n"
            "                  without it)\n"
            "  --op-table      print the op kinds this engine reads, as JSON (one per line), and exit\n"
            "  --isa-table     print the builds of the optimized kernels this binary holds, best first, as\n"
            "                  JSON (one per line: name, whether this CPU runs it, role, needs), and exit\n",
            (unsigned long long)DEFAULT_MAX_WORK);
    exit(msg ? 2 : 0);
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

#define MAX_THREADS 4096

/* --max-work: an integer in 1..2^64 - 1, else one error line */
static uint64_t work_cap(const char *option, const char *v)
{
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (!*v || *end || errno || !isdigit((unsigned char)v[0]) || n < 1)
        fail("%s needs a positive integer below 2^64, not '%s'", option, v);
    return (uint64_t)n;
}

/* --batch / --threads: an integer in 1..max, else one error line */
static long positive_count(const char *option, const char *v, long max)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (!*v || *end || errno || v[0] == '+' || isspace((unsigned char)v[0]) || n < 1)
        fail("%s needs a positive integer, not '%s'", option, v);
    if (n > max)
        fail("%s %s: at most %ld", option, v, max);
    return n;
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
        if (!strcmp(a, "--profile")) {
            o->profile = 1;
            continue;
        }
        if (!strcmp(a, "--overwrite")) {
            o->overwrite = 1;
            continue;
        }
        if (!strcmp(a, "--op-table")) {
            print_op_table();
            exit(0);
        }
        if (!strcmp(a, "--isa-table")) {
            print_isa_table();
            exit(0);
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            usage(NULL, NULL);
        const char **slot = !strcmp(a, "--model") ? &o->model : !strcmp(a, "--dir") ? &o->dir
                          : !strcmp(a, "--data") ? &o->data : !strcmp(a, "--logits") ? &o->logits
                          : !strcmp(a, "--images") ? &o->images : !strcmp(a, "--labels") ? &o->labels
                          : !strcmp(a, "--dump-layers") ? &o->dump : !strcmp(a, "--isa") ? &o->isa : NULL;
        int is_format = !strcmp(a, "--format"), is_limit = !strcmp(a, "--limit"), is_work = !strcmp(a, "--max-work");
        long *count = !strcmp(a, "--batch") ? &o->batch : !strcmp(a, "--threads") ? &o->threads : NULL;
        if (!slot && !is_format && !is_limit && !is_work && !count)
            usage("unknown option", a);
        if (i + 1 >= argc)
            usage("missing value for", a);
        const char *v = argv[++i];
        if (slot) {
            if (!*v)
                usage("empty value for", a);
            *slot = v;
        } else if (count) {
            *count = positive_count(a, v, count == &o->batch ? MAX_BATCH : MAX_THREADS);
        } else if (is_work) {
            o->max_work = work_cap(a, v);
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

/* A kernel set, prepared, and its workspaces for batches of `batch` images.  A batch of at least
 * as many images as threads is split between the threads, each running its share through the
 * whole graph in a workspace of its own (no thread waits for another between layers); a smaller
 * one (a batch of 1: the latency) runs in one workspace, each layer split across the threads. */
typedef struct {
    const KernelSet *k;
    void *prepared;
    void **ws;
    int n_ws;                       /* n_threads, or 1 */
    int batch, n_threads;
    uint8_t *outputs;               /* a batch's, gathered from the workspaces */
    double *op_seconds;             /* --profile: [n_ws][n_ops], each workspace's; else NULL */
} Engine;

/* The threads: --threads, else OpenMP's default; one without OpenMP */
static int thread_count(long wanted)
{
#ifdef _OPENMP
    if (wanted)
        omp_set_num_threads((int)wanted);
    omp_set_max_active_levels(1);       /* a layer inside a thread's share of a batch runs on that thread */
    return omp_get_max_threads() > 1 ? omp_get_max_threads() : 1;
#else
    if (wanted > 1)
        fail("--threads %ld: this build runs one thread (make -C c omp builds inference_omp)", wanted);
    return 1;
#endif
}

static void engine_init(Engine *e, const Model *m, const Options *opt, const KernelSet *fast)
{
    const long batch = opt->batch, threads = opt->threads;
    const int reference = opt->reference;
    e->k = reference ? &REFERENCE_KERNELS : fast;
    e->n_threads = thread_count(threads);
    e->batch = batch ? (int)batch : DEFAULT_BATCH_PER_THREAD * e->n_threads;
    /* the batch's activations, the memory plan once per image, under the core's limit on one plan */
    if ((uint64_t)e->batch * m->arena_bytes > MAX_ARENA)
        fail("--batch %d: %d images' activations take %llu bytes, more than %llu", e->batch, e->batch,
             (unsigned long long)e->batch * m->arena_bytes, (unsigned long long)MAX_ARENA);
    e->prepared = e->k->prepare(m);
    e->n_ws = e->batch >= e->n_threads ? e->n_threads : 1;
    e->ws = xcalloc((size_t)e->n_ws, sizeof *e->ws, "workspaces");
    for (int w = 0; w < e->n_ws; w++)
        e->ws[w] = e->k->workspace_new(m, e->prepared, (int)share_size((size_t)e->batch, e->n_ws, w), e->n_threads);
    e->outputs = xmalloc((size_t)e->batch * op_elems(&m->ops[m->n_ops - 1]), "outputs");
    if (opt->profile) {
        if (!e->k->time_ops)
            fail("--profile: the %s kernels do not time their ops (the optimized ones do)", e->k->name);
        e->op_seconds = xcalloc((size_t)e->n_ws * (size_t)m->n_ops, sizeof *e->op_seconds, "op times");
        for (int w = 0; w < e->n_ws; w++)
            e->k->time_ops(e->ws[w], e->op_seconds + (size_t)w * (size_t)m->n_ops);
    }
}

static void engine_free(Engine *e)
{
    for (int w = 0; e->ws && w < e->n_ws; w++)
        e->k->workspace_free(e->ws[w]);
    free(e->ws);
    free(e->outputs);
    free(e->op_seconds);
    e->k->release(e->prepared);
}

/* n images through the graph; returns their outputs, one image after the other */
static const uint8_t *run_batch(const Engine *e, const Model *m, const uint8_t *images, size_t stride, int n)
{
    if (e->n_ws == 1)
        return e->k->run(m, e->prepared, e->ws[0], images, stride, n);
    const size_t n_out = op_elems(&m->ops[m->n_ops - 1]);
#ifdef _OPENMP
#pragma omp parallel for schedule(static, 1)
#endif
    for (int w = 0; w < e->n_ws; w++) {
        const size_t first = share_start((size_t)n, e->n_ws, w), count = share_size((size_t)n, e->n_ws, w);
        if (count)
            memcpy(e->outputs + first * n_out,
                   e->k->run(m, e->prepared, e->ws[w], images + first * stride, stride, (int)count), count * n_out);
    }
    return e->outputs;
}

/* ---- --logits: where the bytes go (one rule) -------------------------------------------
 * "-", or the very file stdout is: stdout.  A character or block device, a FIFO, a socket, or a
 * path under /dev/: opened and written directly, no temporary and no rename (a device node is
 * never replaced).  A directory: an error.  Anything else (a regular file, or a path not there
 * yet) atomically: the bytes go to DIR/.NAME.PID.tmp beside the file and are renamed over it once
 * complete; a symlink is followed to its final target first, so the link stays and the target is
 * replaced.  The temporary is removed by fail() on every error and by on_signal() on SIGINT,
 * SIGTERM and SIGHUP; one that a SIGKILLed run left (its PID no longer alive) by the next run. */
typedef struct {
    FILE *f;
    const char *path;               /* as given, for messages */
    int atomic, is_stdout;
    char target[4096];              /* the atomic write's file, symlinks followed */
} Output;

static char out_tmp[4200];
static volatile sig_atomic_t out_tmp_armed;

/* Async-signal-safe: unlink, then the signal's default action (SA_RESETHAND, SA_NODEFER). */
static void on_signal(int sig)
{
    if (out_tmp_armed)
        unlink(out_tmp);
    raise(sig);
    _exit(128 + sig);
}

static void catch_signals(void)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        struct sigaction sa, old;
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN)
            continue;               /* left ignored (nohup, a background job) */
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESETHAND | SA_NODEFER;
        sigaction(sigs[i], &sa, NULL);
    }
}

/* out = path with the symlinks of its last component followed (to a target that may not exist yet). */
static void follow_links(const char *path, char *out, size_t cap)
{
    char link[4096];
    if (snprintf(out, cap, "%s", path) >= (int)cap)
        fail("%s: path too long", path);
    for (int hops = 0;; hops++) {
        struct stat st;
        if (lstat(out, &st) != 0 || !S_ISLNK(st.st_mode))
            return;
        if (hops == 40)
            fail("%s: too many levels of symbolic links", path);
        ssize_t n = readlink(out, link, sizeof link - 1);
        if (n < 0)
            fail("%s: cannot read the link %s (%s)", path, out, strerror(errno));
        link[n] = '\0';
        const char *slash = strrchr(out, '/');
        size_t keep = link[0] == '/' || !slash ? 0 : (size_t)(slash - out) + 1;
        if (keep + (size_t)n >= cap)
            fail("%s: path too long", path);
        memmove(out + keep, link, (size_t)n + 1);
    }
}

/* The stages' no-clobber rule (model/fileio.py, check_not_tracked): a path that git tracks, or a
 * folder holding files it tracks, is replaced only with --overwrite.  Asked as Python asks, with no
 * shell: git -C DIR ls-files --error-unmatch -- NAME on the symlinks' final target; git missing, or
 * any exit code but 0 (outside a checkout, untracked), is not tracked.  A path not there, "-", and
 * a device, FIFO or socket or a path under /dev/ (written directly, never replaced) pass. */
static void refuse_tracked(const char *path, const char *another)
{
    extern char **environ;
    struct stat st;
    char target[4096], dir[4096];
    if (!path || !strcmp(path, "-") || !strncmp(path, "/dev/", 5) || stat(path, &st) != 0
        || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)))
        return;
    follow_links(path, target, sizeof target);
    for (size_t n = strlen(target); n > 1 && target[n - 1] == '/';)
        target[--n] = '\0';                                    /* "out/" is the folder "out" */
    const char *slash = strrchr(target, '/');
    const char *name = !slash ? target : slash[1] ? slash + 1 : ".";       /* "/": "/" and "." */
    if (!slash)
        strcpy(dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", slash == target ? 1 : (int)(slash - target), target);
    char *argv[] = {"git", "-C", dir, "ls-files", "--error-unmatch", "--", (char *)name, NULL};
    posix_spawn_file_actions_t io;
    pid_t pid, got = -1;
    int status = 0;
    if (posix_spawn_file_actions_init(&io) != 0)
        return;
    posix_spawn_file_actions_addopen(&io, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&io, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
    if (posix_spawnp(&pid, "git", &io, NULL, argv, environ) == 0)
        while ((got = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
        }
    posix_spawn_file_actions_destroy(&io);
    if (got == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0)
        fail("%s: %s git tracks (shipped with the repository); pass --overwrite to replace it, or %s", path,
             S_ISDIR(st.st_mode) ? "a folder holding files" : "a file", another);
}

/* Remove PREFIX.NAME.PID.tmp (PREFIX: the folder part, "" or ending in '/') of every PID no
 * longer alive, and of this process's own PID (left by an earlier process of the same PID). */
static void remove_stale_tmps(const char *prefix, size_t prefix_len, const char *name)
{
    char folder[4200], stale[4200];
    snprintf(folder, sizeof folder, "%.*s", prefix_len ? (int)prefix_len : 1, prefix_len ? prefix : ".");
    DIR *d = opendir(folder);
    if (!d)
        return;
    const size_t len = strlen(name);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *s = e->d_name;
        if (s[0] != '.' || strncmp(s + 1, name, len) || s[1 + len] != '.' || !isdigit((unsigned char)s[2 + len]))
            continue;
        char *end;
        errno = 0;
        long pid = strtol(s + 2 + len, &end, 10);
        if (strcmp(end, ".tmp") || errno || pid <= 0 || pid > INT_MAX)
            continue;
        if ((pid_t)pid != getpid() && (kill((pid_t)pid, 0) == 0 || errno != ESRCH))
            continue;               /* a live writer's */
        if (snprintf(stale, sizeof stale, "%.*s%s", (int)prefix_len, prefix, s) < (int)sizeof stale)
            unlink(stale);
    }
    closedir(d);
}

static void output_open(Output *o, const char *path)
{
    memset(o, 0, sizeof *o);
    o->path = path;
    struct stat st, out_st;
    const int exists = stat(path, &st) == 0;
    if (!exists && errno != ENOENT)
        fail("%s: cannot write (%s)", path, strerror(errno));
    if (!strcmp(path, "-") || (exists && fstat(STDOUT_FILENO, &out_st) == 0 && st.st_dev == out_st.st_dev
                               && st.st_ino == out_st.st_ino)) {
        o->f = stdout;
        o->is_stdout = 1;
        return;
    }
    if (exists && S_ISDIR(st.st_mode))
        fail("%s: is a directory", path);
    if ((exists && !S_ISREG(st.st_mode)) || !strncmp(path, "/dev/", 5)) {
        o->f = fopen(path, "w");
        if (!o->f)
            fail("%s: cannot write (%s)", path, strerror(errno));
        return;
    }
    follow_links(path, o->target, sizeof o->target);
    const char *slash = strrchr(o->target, '/');
    const size_t prefix_len = slash ? (size_t)(slash - o->target) + 1 : 0;
    const char *name = o->target + prefix_len;
    if (!*name)
        fail("%s: is a directory", path);
    remove_stale_tmps(o->target, prefix_len, name);
    int n = snprintf(out_tmp, sizeof out_tmp, "%.*s.%s.%ld.tmp", (int)prefix_len, o->target, name, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof out_tmp)
        fail("%s: path too long", path);
    catch_signals();
    out_tmp_armed = 1;
    int fd = open(out_tmp, O_WRONLY | O_CREAT | O_EXCL, 0666);
    if (fd < 0) {
        out_tmp_armed = 0;
        fail("%s: cannot write %s (%s)", path, out_tmp, strerror(errno));
    }
    fpgai_tmp_path = out_tmp;
    o->f = fdopen(fd, "w");
    if (!o->f)
        fail("%s: cannot write %s (%s)", path, out_tmp, strerror(errno));
    o->atomic = 1;
}

static void output_close(Output *o)
{
    if (o->is_stdout) {
        if (fflush(stdout) != 0 || ferror(stdout))
            fail("%s: write error (%s)", o->path, strerror(errno));
        return;
    }
    int bad = ferror(o->f);
    if (o->atomic)
        bad |= fflush(o->f) != 0 || fsync(fileno(o->f)) != 0;
    bad |= fclose(o->f) != 0;
    if (bad)
        fail("%s: write error (%s)", o->path, strerror(errno));
    if (o->atomic && rename(out_tmp, o->target) != 0)
        fail("%s: cannot rename %s to %s (%s)", o->path, out_tmp, o->target, strerror(errno));
    out_tmp_armed = 0;
    fpgai_tmp_path = NULL;
}

/* --profile: each op's seconds (summed over the workspaces, which run at once where the threads
 * share a batch's images), its share, and its speed where it multiplies. */
static void print_profile(const Engine *e, const Model *m, size_t images)
{
    double total = 0;
    for (size_t i = 0; i < (size_t)e->n_ws * (size_t)m->n_ops; i++)
        total += e->op_seconds[i];
    printf("profile: %zu images, seconds per op%s\n", images,
           e->n_ws > 1 ? " (the threads' together: each runs its own share of every batch)" : "");
    printf("%4s  %-16s %16s %10s %9s %7s %8s\n", "op", "kind", "output (CxHxW)", "MMAC/img", "seconds", "share",
           "GMAC/s");
    for (int i = 0; i < m->n_ops; i++) {
        const Op *op = &m->ops[i];
        double s = 0;
        for (int w = 0; w < e->n_ws; w++)
            s += e->op_seconds[(size_t)w * (size_t)m->n_ops + (size_t)i];
        char shape[48];
        snprintf(shape, sizeof shape, "%dx%dx%d", op->c, op->h, op->w);
        printf("%4d  %-16s %16s", i, KINDS[op->kind].name, shape);
        if (op->kind == OP_CONV || op->kind == OP_LINEAR) {
            const double macs = (double)op_elems(op) * op->k_size;
            printf(" %10.3f %9.4f %6.1f%% %8.1f\n", macs * 1e-6, s, total > 0 ? 100 * s / total : 0,
                   s > 0 ? macs * (double)images / s * 1e-9 : 0);
        } else {
            printf(" %10s %9.4f %6.1f%% %8s\n", "-", s, total > 0 ? 100 * s / total : 0, "-");
        }
    }
    printf("profile: %.4f seconds in the ops\n", total);
}

/* The weights' type for the report: int8 or uint8, int4, int2..8 where the layers' widths differ */
static void weight_type(const Model *m, char *out, size_t cap)
{
    int lo = 8, hi = 2;
    for (int i = 0; i < m->n_ops; i++)
        if (KINDS[m->ops[i].kind].weighted) {
            lo = m->ops[i].w_bits < lo ? m->ops[i].w_bits : lo;
            hi = m->ops[i].w_bits > hi ? m->ops[i].w_bits : hi;
        }
    const char *type = m->weight_signed ? "int" : "uint";
    if (lo < hi)
        snprintf(out, cap, "%s%d..%d", type, lo, hi);
    else
        snprintf(out, cap, "%s%d", type, hi);
}

/* Images run in batches (the last one partial); results are scored and written in order.
 * Returns the number of correct predictions (argmax, first index on ties). */
static size_t run_images(const Engine *e, const Model *m, const Dataset *ds, size_t count, FILE *logits)
{
    const size_t n_out = op_elems(&m->ops[m->n_ops - 1]);     /* all of the last op, CHW, as numpy flattens it */
    size_t correct = 0;
    for (size_t start = 0; start < count; start += (size_t)e->batch) {
        const int n = count - start < (size_t)e->batch ? (int)(count - start) : e->batch;
        const uint8_t *results = run_batch(e, m, ds->pixels + start * ds->image_stride, ds->image_stride, n);
        for (int j = 0; j < n; j++) {
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
    return correct;
}

int main(int argc, char **argv)
{
    Options opt;
    parse_args(&opt, argc, argv);
    if (!opt.overwrite) {                               /* before any work */
        refuse_tracked(opt.logits, "name another file");
        refuse_tracked(opt.dump, "choose another folder");
    }
    const KernelSet *fast = fast_kernels(&opt.isa);     /* checked even with --reference */

    /* Load and check everything before the clock starts. */
    Model m;
    Dataset ds;
    Engine e;
    memset(&m, 0, sizeof m);
    memset(&ds, 0, sizeof ds);
    memset(&e, 0, sizeof e);
    m.max_work = opt.max_work;
    load_model(&m, opt.dir, opt.model, opt.txt);
    load_dataset(&ds, &m, opt.data, opt.images, opt.labels);
    size_t count = opt.limit > 0 && (size_t)opt.limit < ds.count ? (size_t)opt.limit : ds.count;
    if (opt.dump) {
        dump_layers(&m, &ds, count, opt.dump);
        printf("wrote %s: %d ops of %zu images (the reference kernels)\n", opt.dump, m.n_ops, count);
        free_dataset(&ds);
        free_model(&m);
        return 0;
    }
    engine_init(&e, &m, &opt, fast);
    if (!opt.reference)
        release_weights(&m);            /* the optimized kernels have their own copy */
    Output logits;
    if (opt.logits)
        output_open(&logits, opt.logits);

    double t0 = now_seconds();
    size_t correct = run_images(&e, &m, &ds, count, opt.logits ? logits.f : NULL);
    double seconds = now_seconds() - t0;

    if (opt.logits)
        output_close(&logits);
    if (!opt.quiet) {
        char weights[32];
        weight_type(&m, weights, sizeof weights);
        printf("model: %s (%s, fingerprint %s), %d ops, %s weights from %s files, %zu bytes of activations\n",
               m.name, m.dataset, m.fingerprint, m.n_ops, weights, opt.txt ? "txt" : "bin", m.arena_bytes);
        char passes[128] = "";
        if (e.k->describe)
            e.k->describe(e.ws[0], passes, sizeof passes);
        printf("kernels: %s, %d thread%s, batches of %d%s\n", e.k->name, e.n_threads, e.n_threads > 1 ? "s" : "",
               e.batch, passes);
        printf("images: %zu of %zu from %s\n", count, ds.count, ds.source);
        if (ds.has_labels)
            printf("accuracy: %.2f%% (%zu/%zu)\n", 100.0 * (double)correct / (double)count, correct, count);
        else
            printf("accuracy: n/a (no --labels)\n");
        printf("speed: %.1f images/s\n", seconds > 0 ? (double)count / seconds : 0.0);
    }
    if (opt.profile)
        print_profile(&e, &m, count);
    if (ds.has_labels)
        printf("result: images=%zu correct=%zu seconds=%.4f\n", count, correct, seconds);
    else
        printf("result: images=%zu seconds=%.4f\n", count, seconds);

    engine_free(&e);
    free_dataset(&ds);
    free_model(&m);
    return 0;
}
