/*
 * plan.c -- the activation memory plan: every tensor's place in one arena (a workspace holds one
 * arena an image), buffers reused once their last reader has run, and after them the scratch the
 * reference kernels ask for (KindSpec.scratch).
 */
#include "core.h"

/* Place every tensor in one arena.  A tensor's buffer is reused once every op that reads it
 * has run ("slots"); the logits (last op) are never reused.  The reference kernels' scratch
 * follows them. */
void plan_memory(Model *m)
{
    int n = m->n_ops;
    size_t *slot_of = take_storage(m, (size_t)n * sizeof *slot_of, "plan");
    size_t *slot_tensor = take_storage(m, (size_t)n * sizeof *slot_tensor, "plan");
    size_t *slot_size = take_storage(m, (size_t)n * sizeof *slot_size, "plan");
    size_t *slot_offset = take_storage(m, (size_t)n * sizeof *slot_offset, "plan");
    int n_slots = 0;

    for (int i = 0; i < n; i++) {
        m->ops[i].last_reader = i;
        for (int k = 0; k < m->ops[i].n_inputs; k++)
            m->ops[m->ops[i].in[k]].last_reader = i;
    }
    m->ops[n - 1].last_reader = n;

    for (int i = 0; i < n; i++) {
        size_t need = op_elems(&m->ops[i]);
        int best = -1;
        for (int s = 0; s < n_slots; s++) {
            if (m->ops[slot_tensor[s]].last_reader >= i)
                continue;                           /* still live */
            /* prefer the smallest free slot that fits, else the largest free one (grown) */
            int fits = slot_size[s] >= need;
            int best_fits = best >= 0 && slot_size[best] >= need;
            if (best < 0 || (fits && (!best_fits || slot_size[s] < slot_size[best]))
                         || (!fits && !best_fits && slot_size[s] > slot_size[best]))
                best = s;
        }
        if (best < 0) {
            best = n_slots++;
            slot_size[best] = 0;
        }
        if (slot_size[best] < need)
            slot_size[best] = need;
        slot_tensor[best] = (size_t)i;
        slot_of[i] = (size_t)best;
    }

    uint64_t total = 0;
    for (int s = 0; s < n_slots; s++) {
        slot_offset[s] = (size_t)total;
        total += slot_size[s];                      /* <= 4096 * 2^26 */
    }
    for (int i = 0; i < n; i++)
        m->ops[i].offset = slot_offset[slot_of[i]];
    /* after them, 4-byte aligned: the reference kernels' scratch, the most any op asks for (the conv's
     * row of int32 accumulators, a weight row unpacked below 8 bits) */
    total = (total + 3) / 4 * 4;
    m->row_offset = (size_t)total;
    for (int i = 0; i < n; i++) {
        const KindSpec *k = &KINDS[m->ops[i].kind];
        const size_t bytes = k->scratch ? k->scratch(&m->ops[i]) : 0;
        if (bytes > m->row_bytes)
            m->row_bytes = bytes;
    }
    total += m->row_bytes;
    if (total > MAX_ARENA)
        fail("%s: %llu bytes of activations, over the %llu-byte limit", m->path, (unsigned long long)total,
             (unsigned long long)MAX_ARENA);
    m->arena_bytes = (size_t)total;
}
