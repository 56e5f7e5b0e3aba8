/*
 * load.c -- the core's API (fpgai.h): a model loaded from memory buffers, checked exactly as the
 * host program checks its files: model.bin's header and seal, the records (read by one generic
 * parser from their kinds' declarations, KINDS, then checked by each kind's validate function),
 * the layers' tiling of the weight files, the work cap, the memory plan; then the weight buffers
 * against their seals and the accumulator bound.
 *
 * Every problem is one message naming the file (Model.path / weights_path); nothing trusts a
 * length from a buffer.  A check deep in the parser that fails longjmps back to the API
 * function, which returns -1: the storage block holds whatever the load had taken.
 */
#include "core.h"

static const char *const FILE_NAMES[FILE_COUNT] = {"weight.bin", "bias.bin", "weight.txt"};

/* A weight file's content against the size and CRC-32 model.bin recorded for it. */
static void check_seal(const Model *m, int file, const char *path, const uint8_t *data, size_t size)
{
    if ((uint64_t)size != m->file_size[file])
        fail("%s: %zu bytes, model.bin recorded %llu: damaged, or not from the same export", path, size,
             (unsigned long long)m->file_size[file]);
    uint32_t crc = crc32_bytes(data, size);
    if (crc != m->file_crc[file])
        fail("%s: CRC-32 0x%08x differs from the 0x%08x model.bin recorded: damaged, or not from the "
             "same export", path, crc, m->file_crc[file]);
}

/* A NUL-terminated, NUL-padded header string of width bytes. */
static void header_string(const Model *m, const uint8_t *src, size_t width, const char *field, char *dst)
{
    const uint8_t *nul = memchr(src, 0, width);
    if (!nul)
        fail("%s: %s field of %zu bytes has no terminating NUL", m->path, field, width);
    for (const uint8_t *p = nul; p < src + width; p++)
        if (*p)
            fail("%s: %s field: bytes after its NUL are not zero", m->path, field);
    printable(dst, width, (const char *)src, width);
}

static void parse_header(Model *m, const uint8_t *data, size_t size, const char *want_model)
{
    const char *path = m->path;
    if (size < 12)
        fail("%s: %zu bytes, too short for a model file", path, size);
    if (memcmp(data, "FPGAIQM\0", 8) != 0)
        fail("%s: bad magic, not an FPGAI model file", path);
    m->version = rd_u32(data + 8);
    if (m->version < OLDEST_FORMAT_VERSION || m->version > FORMAT_VERSION)
        fail("%s: model file format version %u, this engine reads versions %d to %d: run export_quant_model.py "
             "again to re-export the model", path, m->version, OLDEST_FORMAT_VERSION, FORMAT_VERSION);
    if (size < HEADER_BYTES)
        fail("%s: %zu bytes, shorter than the %d-byte header", path, size, HEADER_BYTES);
    uint32_t crc = crc32_bytes(data + 16, size - 16), want_crc = rd_u32(data + 12);
    if (crc != want_crc)
        fail("%s: CRC-32 0x%08x of bytes 16 to the end differs from the 0x%08x the file recorded: damaged "
             "or truncated", path, crc, want_crc);
    uint32_t header = rd_u32(data + 16), n_ops = rd_u32(data + 20), mode = rd_u32(data + 24);
    if (header != HEADER_BYTES)
        fail("%s: header size %u, expected %d", path, header, HEADER_BYTES);
    if (n_ops < MIN_OPS || n_ops > MAX_OPS)
        fail("%s: %u ops, expected %d..%d", path, n_ops, MIN_OPS, MAX_OPS);
    if (mode > 1)
        fail("%s: weight mode %u, expected 1 (signed per-channel) or 0 (unsigned per-tensor)", path, mode);
    m->weight_signed = (int)mode;
    m->weight_bytes = rd_u32(data + 28);
    m->bias_count = rd_u32(data + 32);
    if (m->weight_bytes > MAX_WEIGHTS || m->bias_count > MAX_WEIGHTS / 4)
        fail("%s: %lld weight bytes / %lld biases, over this engine's limit", path, (long long)m->weight_bytes,
             (long long)m->bias_count);
    m->exported = rd_u32(data + 36);
    if (m->exported & ~3u)
        fail("%s: exported-files word 0x%x has bits other than 0 (bin) and 1 (txt)", path, m->exported);
    for (int f = 0; f < FILE_COUNT; f++) {
        const uint8_t *e = data + 40 + 16 * f;
        m->file_size[f] = rd_u64(e);
        m->file_crc[f] = rd_u32(e + 8);
        int exported = (m->exported >> (f == FILE_WEIGHT_TXT)) & 1;
        if (rd_u32(e + 12) != 0)
            fail("%s: %s entry: its last word is %u, not 0", path, FILE_NAMES[f], rd_u32(e + 12));
        if (!exported && (m->file_size[f] || m->file_crc[f]))
            fail("%s: %s was not exported, yet its size or CRC-32 is not 0", path, FILE_NAMES[f]);
    }
    if (m->exported & 1) {
        if (m->file_size[FILE_WEIGHT_BIN] != (uint64_t)m->weight_bytes)
            fail("%s: the header says %lld weight bytes, but records a weight.bin of %llu bytes", path,
                 (long long)m->weight_bytes, (unsigned long long)m->file_size[FILE_WEIGHT_BIN]);
        if (m->file_size[FILE_BIAS_BIN] != 4 * (uint64_t)m->bias_count)
            fail("%s: the header says %lld biases, but records a bias.bin of %llu bytes", path,
                 (long long)m->bias_count, (unsigned long long)m->file_size[FILE_BIAS_BIN]);
    }
    header_string(m, data + 88, 32, "model name", m->name);
    header_string(m, data + 120, 16, "dataset", m->dataset);
    header_string(m, data + 136, 24, "fingerprint", m->fingerprint);
    for (size_t b = 160; b < HEADER_BYTES; b++)
        if (data[b])
            fail("%s: reserved header byte %zu is not 0", path, b);
    if (want_model && strcmp(m->name, want_model) != 0)
        fail("%s: holds model '%s', expected '%s'", path, m->name, want_model);
    if (strcmp(m->dataset, "mnist") != 0 && strcmp(m->dataset, "cifar10") != 0 && strcmp(m->dataset, "custom") != 0)
        fail("%s: unknown dataset '%s' (expected mnist, cifar10 or custom)", path, m->dataset);
    m->n_ops = (int)n_ops;
    m->ops = take_storage(m, n_ops * sizeof *m->ops, "ops");
    memset(m->ops, 0, n_ops * sizeof *m->ops);
}

/* The words of one record after type and n_words, each taken with its range checked. */
typedef struct {
    const uint8_t *p;
    int64_t left;               /* words of the record not yet taken */
    const Model *m;
    int op;
} Words;

static int64_t take(Words *w, const char *field, int64_t lo, int64_t hi)
{
    const Model *m = w->m;
    const Op *op = &m->ops[w->op];
    if (w->left < 1)
        fail("%s: op %d (%s): the record ends before its %s", w->m->path, w->op, kind_name(op), field);
    int64_t v = rd_u32(w->p);
    w->p += 4;
    w->left--;
    if (v < lo || v > hi)
        fail("%s: op %d (%s): %s = %lld outside [%lld, %lld]", w->m->path, w->op, kind_name(op), field,
             (long long)v, (long long)lo, (long long)hi);
    return v;
}

/* A count word that must equal `want`, then that many words into *dst. */
static int32_t take_array(Words *w, const char *count_name, int64_t want, int32_t **dst, const char *field,
                          int64_t lo, int64_t hi)
{
    int32_t n = (int32_t)take(w, count_name, want, want);
    int32_t *arr = *dst = take_storage(w->m, (size_t)n * sizeof *arr, field);
    for (int32_t k = 0; k < n; k++)
        arr[k] = (int32_t)take(w, field, lo, hi);
    return n;
}

/* One record, read by the generic parser from the declaration table. */
static size_t parse_record(Model *m, int i, const uint8_t *data, size_t size, size_t pos)
{
    const char *path = m->path;
    Op *op = &m->ops[i];
    if (size - pos < 8)
        fail("%s: truncated in op %d (at byte %zu of %zu)", path, i, pos, size);
    uint32_t type = rd_u32(data + pos), n_words = rd_u32(data + pos + 4);
    if (type >= OP_KIND_COUNT || !KINDS[type].name)
        fail("%s: op %d has unknown type %u", path, i, type);
    op->kind = (int32_t)type;
    const KindSpec *k = &KINDS[type];
    if ((type == OP_INPUT) != (i == 0))
        fail("%s: op %d is %s; op 0 must be the input and only op 0", path, i, k->name);
    if ((uint64_t)(size - pos - 8) < 4 * (uint64_t)n_words)
        fail("%s: truncated in op %d (%s): %u words past the end of the file", path, i, k->name, n_words);
    Words w = {data + pos + 8, n_words, m, i};

    op->c = (int32_t)take(&w, "C", 1, MAX_DIM);
    op->h = (int32_t)take(&w, "H", 1, MAX_DIM);
    op->w = (int32_t)take(&w, "W", 1, MAX_DIM);
    if ((int64_t)op_elems(op) > MAX_TENSOR)
        fail("%s: op %d (%s): output %dx%dx%d has more than 2^26 elements", path, i, k->name, op->c, op->h, op->w);
    op->zero_point = (int32_t)take(&w, "zero_point", 0, 255);
    op->qmin = (int32_t)take(&w, "qmin", 0, 255);
    op->qmax = (int32_t)take(&w, "qmax", op->qmin, 255);
    take(&w, "scale", 0, UINT32_MAX);
    op->scale = rd_f32(w.p - 4);
    op->n_inputs = (int32_t)take(&w, "n_inputs", k->min_inputs, k->max_inputs);
    op->in = take_storage(m, (size_t)op->n_inputs * sizeof *op->in, "input ids");
    for (int32_t j = 0; j < op->n_inputs; j++)
        op->in[j] = (int32_t)take(&w, "input tensor id", 0, i - 1);
    for (const ParamSpec *p = k->params; p < k->params + MAX_PARAMS && p->name; p++) {
        int32_t v = m->version < p->since ? p->absent : (int32_t)take(&w, p->name, p->lo, p->hi);
        memcpy((char *)op + p->offset, &v, sizeof v);
    }
    op->n_mult = take_array(&w, "n_mult", rq_count(k->n_mult, op), &op->multiplier, "multiplier", 0, INT32_MAX);
    op->n_shift = take_array(&w, "n_shift", rq_count(k->n_shift, op), &op->shift, "shift", 0, MAX_SHIFT);
    op->n_table = take_array(&w, "n_table", rq_count(k->n_table, op), &op->table, "table value", 0, 255);
    if (w.left)
        fail("%s: op %d (%s): record of %u words, its fields take %lld", path, i, k->name, n_words,
             (long long)(n_words - w.left));
    k->validate(m, i);
    return pos + 8 + 4 * (size_t)n_words;
}

/* The weighted layers must tile weight.bin and bias.bin exactly, in op order. */
static void check_tiling(const Model *m)
{
    int64_t w_pos = 0, b_pos = 0;
    for (int i = 0; i < m->n_ops; i++) {
        const Op *op = &m->ops[i];
        if (!KINDS[op->kind].weighted)
            continue;
        if (op->w_offset != w_pos || op->b_offset != b_pos)
            fail("%s: op %d (%s): weight offset %d / bias offset %d, expected %lld / %lld (layers must "
                 "tile the weight and bias files in order)", m->path, i, kind_name(op), op->w_offset,
                 op->b_offset, (long long)w_pos, (long long)b_pos);
        w_pos += (int64_t)layer_weight_bytes(op);     /* < 2^47 */
        b_pos += op->c;
        if (w_pos > m->weight_bytes || b_pos > m->bias_count)
            fail("%s: op %d (%s): weight bytes end at %lld / biases at %lld, past the header's %lld / %lld",
                 m->path, i, kind_name(op), (long long)w_pos, (long long)b_pos, (long long)m->weight_bytes,
                 (long long)m->bias_count);
    }
    if (w_pos != m->weight_bytes || b_pos != m->bias_count)
        fail("%s: layers hold %lld weight bytes and %lld biases, the header says %lld and %lld", m->path,
             (long long)w_pos, (long long)b_pos, (long long)m->weight_bytes, (long long)m->bias_count);
}

/* The work of op i per image (fpgai.h): its kind's rule, else its output's C*H*W values; at most
 * 2^26 outputs times 2^32 window reads or 2^31 weights */
uint64_t fpgai_op_work(const Model *m, int i)
{
    const Op *op = &m->ops[i];
    const KindSpec *k = &KINDS[op->kind];
    return k->work ? k->work(m, op) : (uint64_t)op_elems(op);
}

/* The whole model's work per image against the cap: one line naming the total and the op that
 * adds the most (the first of equals) */
static void check_work(Model *m)
{
    const uint64_t cap = m->max_work ? m->max_work : DEFAULT_MAX_WORK;
    uint64_t most = 0;
    int top = 0;
    m->work = 0;
    for (int i = 0; i < m->n_ops; i++) {
        const uint64_t w = fpgai_op_work(m, i);
        m->work = w > UINT64_MAX - m->work ? UINT64_MAX : m->work + w;
        if (w > most) {
            most = w;
            top = i;
        }
    }
    if (m->work > cap)
        fail("%s: model needs %llu operations per image (op %d %s adds %llu); the cap is %llu (--max-work N "
             "raises it)", m->path, (unsigned long long)m->work, top, kind_name(&m->ops[top]),
             (unsigned long long)most, (unsigned long long)cap);
}

static void parse_model_bin(Model *m, const uint8_t *data, size_t size, const char *want_model)
{
    parse_header(m, data, size, want_model);
    size_t pos = HEADER_BYTES;
    for (int i = 0; i < m->n_ops; i++)
        pos = parse_record(m, i, data, size, pos);
    if (pos != size)
        fail("%s: %zu bytes after the last op", m->path, size - pos);
    check_tiling(m);
    check_work(m);
}

size_t fpgai_storage_bytes(const uint8_t *model_bin, size_t size)
{
    uint32_t n_ops = size >= 24 ? rd_u32(model_bin + 20) : 0;
    return FPGAI_STORAGE_BYTES(n_ops < MAX_OPS ? n_ops : MAX_OPS, size);
}

int fpgai_load_graph(Model *m, void *storage, size_t storage_bytes, const uint8_t *model_bin, size_t size,
                     const char *want_model)
{
    const char *path = m->path ? m->path : "model.bin", *weights_path = m->weights_path;
    const uint64_t max_work = m->max_work;
    void *owned[sizeof m->owned / sizeof m->owned[0]];
    memcpy(owned, m->owned, sizeof owned);
    memset(m, 0, sizeof *m);
    m->path = path;
    m->weights_path = weights_path ? weights_path : "the weights";
    m->max_work = max_work;
    memcpy(m->owned, owned, sizeof owned);
    m->storage = storage;
    m->storage_bytes = storage_bytes;
    jmp_buf env;
    m->on_error = &env;
    if (setjmp(env)) {
        m->on_error = NULL;
        return -1;
    }
    for (int k = 1; k < OP_KIND_COUNT; k++)
        if (KINDS[k].name && !KINDS[k].reference)
            fail("ops/%s.c: no reference kernel for op kind %s", KINDS[k].name, KINDS[k].name);
    parse_model_bin(m, model_bin, size, want_model);
    plan_memory(m);
    m->on_error = NULL;
    return 0;
}

int fpgai_check_seal(Model *m, int file, const char *path, const uint8_t *data, size_t size)
{
    jmp_buf env;
    m->on_error = &env;
    if (setjmp(env)) {
        m->on_error = NULL;
        return -1;
    }
    check_seal(m, file, path, data, size);
    m->on_error = NULL;
    return 0;
}

int fpgai_attach_weights(Model *m, const uint8_t *weights, size_t w_size, const char *weight_path,
                         const uint8_t *biases, size_t b_size, const char *bias_path, int sealed)
{
    jmp_buf env;
    m->on_error = &env;
    if (setjmp(env)) {
        m->on_error = NULL;
        return -1;
    }
    if (sealed) {
        check_seal(m, FILE_WEIGHT_BIN, weight_path, weights, w_size);
        check_seal(m, FILE_BIAS_BIN, bias_path, biases, b_size);
    } else if ((uint64_t)w_size != (uint64_t)m->weight_bytes || (uint64_t)b_size != 4 * (uint64_t)m->bias_count) {
        fail("%s: %zu weight bytes and %zu bias bytes, model.bin has %lld weight bytes and %lld biases", weight_path,
             w_size, b_size, (long long)m->weight_bytes, (long long)m->bias_count);
    }
    m->weight_raw = weights;
    m->bias_raw = biases;
    check_weights(m, weight_path);
    m->on_error = NULL;
    return 0;
}
