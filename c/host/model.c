/*
 * model.c -- the host's side of loading (host.h): the whole load of an export folder (model.bin,
 * then weight.bin + bias.bin or weight.txt, which this file parses) over the core's buffer loader
 * (core/load.c), with the buffers the Model owns (Model.owned, freed by free_model).
 *
 * Every problem is one fail() line naming the file; nothing trusts a length from a file.
 * Whatever a failed load allocated hangs off the Model (free_model), so the fuzzing build,
 * where fail() longjmps, leaks nothing.
 */
#include "host.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void join_path(char *out, size_t cap, const char *dir, const char *model, const char *suffix)
{
    int n = snprintf(out, cap, "%s/%s%s", dir, model, suffix);
    if (n < 0 || (size_t)n >= cap)
        fail("%s/%s%s: path too long", dir, model, suffix);
}

/* Read a file model.bin seals; its size is checked before reading (the core checks it again,
 * with the CRC, from memory: the path the fuzzers take). */
static uint8_t *read_sealed(const Model *m, int file, const char *path, size_t *size)
{
    size_t n = file_size(path, (size_t)1 << 40);
    if ((uint64_t)n != m->file_size[file])
        fail("%s: %zu bytes, model.bin recorded %llu: damaged, or not from the same export", path, n,
             (unsigned long long)m->file_size[file]);
    return read_file(path, n, size);
}

/* The buffers a Model owns (free_model frees them) */
enum { OWN_STORAGE, OWN_WEIGHTS, OWN_BIASES, OWN_PATH, OWN_WEIGHTS_PATH };

/* buf becomes the Model's buffer in `slot` (the one there before, if another, freed) */
static void own(Model *m, int slot, void *buf)
{
    if (m->owned[slot] != buf)
        free(m->owned[slot]);
    m->owned[slot] = buf;
}

static char *own_string(Model *m, int slot, const char *a, const char *b)
{
    size_t na = strlen(a), nb = b ? strlen(b) : 0;
    char *s = xmalloc(na + (b ? 2 + nb : 0) + 1, "a path");
    memcpy(s, a, na);
    if (b) {
        memcpy(s + na, ", ", 2);
        memcpy(s + na + 2, b, nb);
    }
    s[na + (b ? 2 + nb : 0)] = 0;
    own(m, slot, s);
    return s;
}

void parse_model_bin(Model *m, const uint8_t *data, size_t size, const char *want_model)
{
    size_t bytes = fpgai_storage_bytes(data, size);
    own(m, OWN_STORAGE, xmalloc(bytes, "the model"));
    if (fpgai_load_graph(m, m->owned[OWN_STORAGE], bytes, data, size, want_model) != 0)
        fail("%s", m->error);
}

void print_op_table(void)
{
    for (int k = 0; k < OP_KIND_COUNT; k++) {
        const KindSpec *s = &KINDS[k];
        if (!s->name)
            continue;                       /* a code no file declares */
        printf("{\"code\":%d,\"kind\":\"%s\",\"min_inputs\":%d,\"max_inputs\":%d,\"params\":[", s->code, s->name,
               s->min_inputs, s->max_inputs);
        for (const ParamSpec *p = s->params; p < s->params + MAX_PARAMS && p->name; p++)
            printf("%s\"%s\"", p == s->params ? "" : ",", p->name);
        printf("],\"n_mult\":\"%s\",\"n_shift\":\"%s\",\"n_table\":\"%s\"}\n", RQ_RULE_NAMES[s->n_mult],
               RQ_RULE_NAMES[s->n_shift], RQ_RULE_NAMES[s->n_table]);
    }
}

/* ------------------------------------------------------------------------ */
/* weight.bin + bias.bin, weight.txt                                         */
/* ------------------------------------------------------------------------ */

/* --format bin needs bit 0 of the exported-files word, --format txt bit 1 */
static void require_format(const Model *m, int txt)
{
    if (txt && !(m->exported & 2))
        fail("%s: exported without weight.txt (EXPORT_MODE=bin): run with --format bin, or export again "
             "with EXPORT_MODE=txt or both", m->path);
    if (!txt && !(m->exported & 1))
        fail("%s: exported without weight.bin and bias.bin (EXPORT_MODE=txt): run with --format txt, or "
             "export again with EXPORT_MODE=bin or both", m->path);
}

/* The weights and biases, buffers the Model owns, checked by the core. */
static void attach(Model *m, uint8_t *w, size_t w_size, const char *weight_path, uint8_t *b, size_t b_size,
                   const char *bias_path, int sealed)
{
    own(m, OWN_WEIGHTS, w);
    own(m, OWN_BIASES, b);
    if (fpgai_attach_weights(m, w, w_size, weight_path, b, b_size, bias_path, sealed) != 0)
        fail("%s", m->error);
}

/* weight.bin and bias.bin in buffers the Model takes over */
static void take_weight_bins(Model *m, uint8_t *w, size_t w_size, const char *weight_path, uint8_t *b, size_t b_size,
                             const char *bias_path)
{
    require_format(m, 0);
    m->weights_path = own_string(m, OWN_WEIGHTS_PATH, weight_path, bias_path);
    attach(m, w, w_size, weight_path, b, b_size, bias_path, 1);
}

void parse_weight_bins(Model *m, const uint8_t *w, size_t w_size, const char *weight_path,
                       const uint8_t *b, size_t b_size, const char *bias_path)
{
    uint8_t *wc = xmalloc(w_size, "weights"), *bc = xmalloc(b_size, "biases");
    memcpy(wc, w, w_size);
    memcpy(bc, b, b_size);
    take_weight_bins(m, wc, w_size, weight_path, bc, b_size, bias_path);
}

/* One comma-separated field of the text file as a number: optional sign, digits, optional
 * surrounding blanks.  Returns 0 if it is not an integer. */
static int parse_int_field(const char *s, const char *end, int64_t *out)
{
    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    int neg = 0;
    if (s < end && (*s == '+' || *s == '-'))
        neg = *s++ == '-';
    if (s == end)
        return 0;
    int64_t v = 0;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9')
            return 0;
        if (v < ((int64_t)1 << 40))      /* saturate: anything this big is out of range anyway */
            v = v * 10 + (*s - '0');
    }
    *out = neg ? -v : v;
    return 1;
}

/* Next weighted op after `layer`, or n_ops */
static int next_layer(const Model *m, int layer)
{
    do
        layer++;
    while (layer < m->n_ops && !KINDS[m->ops[layer].kind].weighted);
    return layer;
}

/* The reader of weight.txt: where it stands in the file and in the model */
typedef struct {
    Model *m;
    const char *path;
    uint8_t *weights, *biases;  /* the Model's buffers, filled as the values come (weights packed) */
    int64_t lo, hi;             /* a weight's range: the current layer's bits' */
    int layer;                  /* index of the op whose values we read */
    int n_layers;               /* '#' lines seen */
    int section;                /* 0: before the first '#', 1: weights, 2: biases */
    int64_t count;              /* values read in the current section */
    const char *name;           /* current layer's name (from its '#' line) */
    int name_len;
    char shown[64];             /* the name as printed in messages */
    long lineno;
} TxtReader;

/* A '#' line (a layer's weights follow) or a '$' line (its biases follow): [line, stop) */
static void txt_mark(TxtReader *t, const char *line, const char *stop)
{
    const Model *m = t->m;
    const Op *op = t->layer >= 0 ? &m->ops[t->layer] : NULL;
    const char *nm = line + 1;
    while (nm < stop && (*nm == ' ' || *nm == '\t'))
        nm++;
    int len = 0;                    /* the layer name: first word after the mark */
    while (nm + len < stop && nm[len] != ' ' && nm[len] != '\t' && len < 200)
        len++;
    if (*line == '#') {
        if (t->section == 1)
            fail("%s:%ld: new layer, but layer '%s' has no '$' bias line", t->path, t->lineno, t->shown);
        if (t->section == 2 && t->count != op->c)
            fail("%s:%ld: layer '%s' has %lld biases, model.bin expects %d", t->path, t->lineno, t->shown,
                 (long long)t->count, op->c);
        t->layer = next_layer(m, t->layer);
        if (t->layer >= m->n_ops)
            fail("%s:%ld: more layers than the %d conv/linear ops of the model", t->path, t->lineno, t->n_layers);
        const int32_t half = 1 << (m->ops[t->layer].w_bits - 1);
        t->lo = m->weight_signed ? 1 - half : 0;
        t->hi = m->weight_signed ? half - 1 : 2 * half - 1;
        t->n_layers++;
        t->name = nm;
        t->name_len = len;
        printable(t->shown, sizeof t->shown, nm, (size_t)len);
        t->section = 1;
    } else {
        if (t->section != 1 || len != t->name_len || memcmp(nm, t->name, (size_t)len) != 0) {
            printable(t->shown, sizeof t->shown, nm, (size_t)len);
            fail("%s:%ld: '$' line for '%s' without its '#' line", t->path, t->lineno, t->shown);
        }
        if (t->count != (int64_t)op->c * op->k_size)
            fail("%s:%ld: layer '%s' has %lld weights, model.bin expects %lld", t->path, t->lineno, t->shown,
                 (long long)t->count, (long long)op->c * op->k_size);
        t->section = 2;
    }
    t->count = 0;
}

/* Value j of a layer, `bits` wide, into its zeroed bytes as weight.bin packs it: bits j*bits ..
 * j*bits + bits - 1 of a little-endian bit string, the b-bit two's complement of a negative value */
static void pack_weight(uint8_t *layer, uint64_t j, int bits, int64_t v)
{
    const uint64_t bit = j * (uint64_t)bits;
    const unsigned code = (unsigned)((uint64_t)v & ((1u << bits) - 1)), at = (unsigned)(bit % 8);
    layer[bit / 8] |= (uint8_t)(code << at);
    if (at + (unsigned)bits > 8)
        layer[bit / 8 + 1] |= (uint8_t)(code >> (8 - at));
}

/* One value of the current section into the Model's weights or biases */
static void txt_store(TxtReader *t, int64_t v)
{
    const Op *op = &t->m->ops[t->layer];
    if (t->section == 1) {
        if (v < t->lo || v > t->hi)
            fail("%s:%ld: weight %lld outside [%lld, %lld]", t->path, t->lineno, (long long)v, (long long)t->lo,
                 (long long)t->hi);
        if (t->count == (int64_t)op->c * op->k_size)
            fail("%s:%ld: more weights than the %lld of layer '%s'", t->path, t->lineno, (long long)t->count,
                 t->shown);
        pack_weight(t->weights + op->w_offset, (uint64_t)t->count, op->w_bits, v);
    } else {
        if (v < INT32_MIN || v > INT32_MAX)
            fail("%s:%ld: bias %lld outside int32", t->path, t->lineno, (long long)v);
        if (t->count == op->c)
            fail("%s:%ld: more biases than the %d of layer '%s'", t->path, t->lineno, op->c, t->shown);
        uint8_t *le = t->biases + 4 * ((size_t)op->b_offset + (size_t)t->count);
        const uint32_t u = (uint32_t)v;          /* int32 little-endian, as in bias.bin */
        le[0] = (uint8_t)u;
        le[1] = (uint8_t)(u >> 8);
        le[2] = (uint8_t)(u >> 16);
        le[3] = (uint8_t)(u >> 24);
    }
    t->count++;
}

/* A line of comma-separated values, [line, stop) */
static void txt_values(TxtReader *t, const char *line, const char *stop)
{
    if (t->section == 0)
        fail("%s:%ld: values before the first '#' line", t->path, t->lineno);
    for (const char *f = line; f <= stop;) {
        const char *comma = memchr(f, ',', (size_t)(stop - f));
        if (!comma)
            comma = stop;
        int64_t v;
        if (!parse_int_field(f, comma, &v)) {
            char field[41];
            printable(field, sizeof field, f, (size_t)(comma - f));
            fail("%s:%ld: '%s' is not an integer", t->path, t->lineno, field);
        }
        txt_store(t, v);
        f = comma + 1;
    }
}

/* The end of the file: the last layer complete, every layer there */
static void txt_end(const TxtReader *t)
{
    const Model *m = t->m;
    const Op *op = t->layer >= 0 ? &m->ops[t->layer] : NULL;
    if (t->section == 1)
        fail("%s:%ld: end of file, layer '%s' has no '$' bias line", t->path, t->lineno, t->shown);
    if (t->section == 2 && t->count != op->c)
        fail("%s:%ld: end of file, layer '%s' has %lld biases, model.bin expects %d", t->path, t->lineno, t->shown,
             (long long)t->count, op->c);
    int want_layers = 0;
    for (int i = next_layer(m, -1); i < m->n_ops; i = next_layer(m, i))
        want_layers++;
    if (t->n_layers != want_layers)
        fail("%s: %d layers, model.bin has %d conv/linear ops", t->path, t->n_layers, want_layers);
}

/* {model}_weight.txt: per layer a '# name ...' line, its weights, a '$ name ...' line, its
 * biases (comma-separated integers).  Fills the same arrays as the .bin files; every count is
 * checked against model.bin. */
void parse_weight_txt(Model *m, const char *text, size_t size, const char *path)
{
    require_format(m, 1);
    if (fpgai_check_seal(m, FILE_WEIGHT_TXT, path, (const uint8_t *)text, size) != 0)
        fail("%s", m->error);
    m->weights_path = own_string(m, OWN_WEIGHTS_PATH, path, NULL);
    /* n values need at least 2n - 1 bytes (a digit each, separators between): refuse before
     * allocating what a short file cannot fill */
    uint64_t n_weights = 0;
    for (int i = next_layer(m, -1); i < m->n_ops; i = next_layer(m, i))
        n_weights += (uint64_t)m->ops[i].c * (uint64_t)m->ops[i].k_size;
    uint64_t n_values = n_weights + (uint64_t)m->bias_count;
    if (n_values > 0 && 2 * n_values - 1 > (uint64_t)size)
        fail("%s: %zu bytes cannot hold the %llu weights and %lld biases of model.bin", path, size,
             (unsigned long long)n_weights, (long long)m->bias_count);
    /* owned by the Model from the start: a failure midway leaks nothing */
    TxtReader t = {m, path, NULL, NULL, 0, 0, -1, 0, 0, 0, "", 0, "", 0};
    t.weights = xcalloc((size_t)m->weight_bytes, 1, "weights");     /* zeroed: pack_weight ORs the bits in */
    own(m, OWN_WEIGHTS, t.weights);
    t.biases = xcalloc((size_t)m->bias_count, 4, "biases");
    own(m, OWN_BIASES, t.biases);
    for (const char *p = text, *end = text + size; p < end;) {
        const char *line = p, *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        p = eol + 1;
        t.lineno++;
        if (memchr(line, '\0', (size_t)(eol - line)))
            fail("%s:%ld: NUL byte, not a text file", path, t.lineno);
        while (line < eol && (*line == ' ' || *line == '\t' || *line == '\r'))
            line++;
        const char *stop = eol;
        while (stop > line && (stop[-1] == ' ' || stop[-1] == '\t' || stop[-1] == '\r'))
            stop--;
        if (line == stop)
            continue;
        if (*line == '#' || *line == '$')
            txt_mark(&t, line, stop);
        else
            txt_values(&t, line, stop);
    }
    txt_end(&t);
    attach(m, t.weights, (size_t)m->weight_bytes, path, t.biases, 4 * (size_t)m->bias_count, path, 0);
}

void load_model(Model *m, const char *dir, const char *name, int txt)
{
    char path[4096], path2[4096];
    size_t size, size2;
    join_path(path, sizeof path, dir, name, "_model.bin");
    m->path = own_string(m, OWN_PATH, path, NULL);
    uint8_t *data = read_file(m->path, (size_t)1 << 30, &size);
    parse_model_bin(m, data, size, name);
    free(data);
    require_format(m, txt);
    if (txt) {
        join_path(path, sizeof path, dir, name, "_weight.txt");
        char *text = (char *)read_sealed(m, FILE_WEIGHT_TXT, path, &size);
        parse_weight_txt(m, text, size, path);
        free(text);
    } else {
        join_path(path, sizeof path, dir, name, "_weight.bin");
        join_path(path2, sizeof path2, dir, name, "_bias.bin");
        uint8_t *w = read_sealed(m, FILE_WEIGHT_BIN, path, &size);
        uint8_t *b = read_sealed(m, FILE_BIAS_BIN, path2, &size2);
        take_weight_bins(m, w, size, path, b, size2, path2);     /* read once, not copied */
    }
}

void release_weights(Model *m)
{
    own(m, OWN_WEIGHTS, NULL);
    m->weight_raw = NULL;
}

void free_model(Model *m)
{
    for (size_t k = 0; k < sizeof m->owned / sizeof m->owned[0]; k++)
        free(m->owned[k]);
    memset(m, 0, sizeof *m);
}
