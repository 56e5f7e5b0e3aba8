/*
 * dump.c -- ./c/inference --dump-layers DIR: every op's uint8 output for the first N images, in
 * the golden-vector layout of model/formats/golden.py (format "fpgai-golden" 1, its docstring is the
 * specification): per op i, opNNN_KIND.npy (N x C x H x W, CHW) and opNNN_KIND.hex (one byte a
 * line for $readmemh), and manifest.json.  The C engine has no op names: it names each op by
 * its kind (compare with python compare_dumps.py A B --ignore_names).  The reference kernels run
 * op by op (fpgai_run_op); the folder is written whole or not at all: into .DIR.PID.tmp beside
 * DIR, then renamed over it (a previous dump moved aside first, then removed).
 */
#define _POSIX_C_SOURCE 200809L

#include "dump.h"
#include "host.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void join(char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        fail("%s/%s: path too long", dir, name);
}

/* DIR may be missing, empty, or a previous dump (a manifest.json and op*.npy / op*.hex files
 * only); returns whether it exists. */
static int check_target(const char *dir)
{
    struct stat st;
    if (lstat(dir, &st) != 0) {
        if (errno != ENOENT)
            fail("%s: cannot stat (%s)", dir, strerror(errno));
        return 0;
    }
    if (!S_ISDIR(st.st_mode))
        fail("%s: exists and is not a folder", dir);
    DIR *d = opendir(dir);
    if (!d)
        fail("%s: cannot read (%s)", dir, strerror(errno));
    int entries = 0, manifest = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        const char *n = e->d_name;
        size_t len = strlen(n);
        if (!strcmp(n, ".") || !strcmp(n, ".."))
            continue;
        entries++;
        manifest |= !strcmp(n, "manifest.json");
        int dumped = !strncmp(n, "op", 2) && len > 4 && (!strcmp(n + len - 4, ".npy") || !strcmp(n + len - 4, ".hex"));
        if (strcmp(n, "manifest.json") && !dumped) {
            char held[256];
            snprintf(held, sizeof held, "%s", n);       /* closedir frees the entry */
            closedir(d);
            fail("%s: not empty and not a previous dump (it holds %s); choose another folder", dir, held);
        }
    }
    closedir(d);
    if (entries && !manifest)
        fail("%s: not empty and not a previous dump (no manifest.json); choose another folder", dir);
    return 1;
}

static FILE *create(const char *folder, const char *name, char *path, size_t cap)
{
    join(path, cap, folder, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        fail("%s: cannot create (%s)", path, strerror(errno));
    return f;
}

static void close_file(FILE *f, const char *path)
{
    if (ferror(f) | fclose(f))
        fail("%s: write error (%s)", path, strerror(errno));
}

/* numpy's .npy format 1.0: magic, version, a header dict padded with spaces to a multiple of 64 */
static void write_npy(const char *folder, const char *name, const uint8_t *data, size_t n, const Op *op)
{
    char path[8192], dict[256];
    int len = snprintf(dict, sizeof dict, "{'descr': '|u1', 'fortran_order': False, 'shape': (%zu, %d, %d, %d), }",
                       n, op->c, op->h, op->w);
    size_t total = (10 + (size_t)len + 1 + 63) / 64 * 64;           /* magic(6) version(2) len(2) dict \n */
    FILE *f = create(folder, name, path, sizeof path);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    const size_t hlen = total - 10;
    fputc((int)(hlen & 0xff), f);
    fputc((int)(hlen >> 8), f);
    fputs(dict, f);
    for (size_t k = 10 + (size_t)len; k + 1 < total; k++)
        fputc(' ', f);
    fputc('\n', f);
    fwrite(data, 1, n * op_elems(op), f);
    close_file(f, path);
}

static void write_hex(const char *folder, const char *name, const uint8_t *data, size_t count)
{
    char path[8192];
    FILE *f = create(folder, name, path, sizeof path);
    for (size_t k = 0; k < count; k++)
        fprintf(f, "%02x\n", data[k]);
    close_file(f, path);
}

/* a JSON string of printable ASCII (model.bin's names are, printable()) */
static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

void dump_layers(const Model *m, const Dataset *ds, size_t count, const char *dir)
{
    int exists = check_target(dir);
    /* run every image op by op, keeping every op's output */
    uint8_t **out = xcalloc((size_t)m->n_ops, sizeof *out, "dump");
    for (int i = 0; i < m->n_ops; i++)
        out[i] = xmalloc(count * op_elems(&m->ops[i]), "dump");
    uint8_t *arena = xmalloc(m->arena_bytes, "activations");
    for (size_t n = 0; n < count; n++)
        for (int i = 0; i < m->n_ops; i++) {
            const size_t e = op_elems(&m->ops[i]);
            fpgai_run_op(m, arena, ds->pixels + n * ds->image_stride, i);
            memcpy(out[i] + n * e, arena + m->ops[i].offset, e);
        }
    free(arena);

    /* .DIR.PID.tmp beside DIR */
    char parent[4096], tmp[8192], old[8192], name[64], path[8192];
    const char *slash = strrchr(dir, '/'), *base = slash ? slash + 1 : dir;
    int np = snprintf(parent, sizeof parent, "%.*s", slash ? (int)(slash - dir) : 1, slash ? dir : ".");
    if (np < 0 || (size_t)np >= sizeof parent || !*base)
        fail("%s: not a usable folder name", dir);
    snprintf(tmp, sizeof tmp, "%s/.%s.%ld.tmp", *parent ? parent : "/", base, (long)getpid());
    snprintf(old, sizeof old, "%s/.%s.%ld.old", *parent ? parent : "/", base, (long)getpid());
    remove_path(tmp);
    if (mkdir(tmp, 0777) != 0)
        fail("%s: cannot create (%s)", tmp, strerror(errno));
    fpgai_tmp_path = tmp;       /* a failure from here on removes the partial dump */
    FILE *mf = create(tmp, "manifest.json", path, sizeof path);
    fprintf(mf, "{\"format\": \"fpgai-golden\", \"version\": 1, \"model\": ");
    json_string(mf, m->name);
    fprintf(mf, ", \"images\": %zu, \"layout\": \"NCHW\", \"ops\": [", count);
    for (int i = 0; i < m->n_ops; i++) {
        const Op *op = &m->ops[i];
        const char *kind = KINDS[op->kind].name;
        snprintf(name, sizeof name, "op%03d_%s", i, kind);
        char npy[80], hex[80];
        snprintf(npy, sizeof npy, "%s.npy", name);
        snprintf(hex, sizeof hex, "%s.hex", name);
        write_npy(tmp, npy, out[i], count, op);
        write_hex(tmp, hex, out[i], count * op_elems(op));
        fprintf(mf, "%s\n  {\"index\": %d, \"name\": \"%s\", \"op\": \"%s\", \"inputs\": [", i ? "," : "", i, kind, kind);
        for (int k = 0; k < op->n_inputs; k++)
            fprintf(mf, "%s%d", k ? ", " : "", op->in[k]);
        fprintf(mf, "], \"shape\": [%d, %d, %d], \"scale\": %.9g, \"zero_point\": %d, \"qmin\": %d, \"qmax\": %d, "
                    "\"npy\": \"%s\", \"hex\": \"%s\"}", op->c, op->h, op->w, (double)op->scale, op->zero_point,
                op->qmin, op->qmax, npy, hex);
        free(out[i]);
    }
    fprintf(mf, "\n]}\n");
    close_file(mf, path);
    free(out);
    if (exists && rename(dir, old) != 0)
        fail("%s: cannot move the previous dump aside (%s)", dir, strerror(errno));
    if (rename(tmp, dir) != 0)
        fail("%s: cannot rename %s to it (%s)", dir, tmp, strerror(errno));
    fpgai_tmp_path = NULL;
    if (exists)
        remove_path(old);
}
