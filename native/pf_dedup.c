/* Dedup estimator: bounded-memory hash table with consistent sampling, and the block scanner
 * (pf_dedup.h, docs/dedup.md). */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "pf_dedup.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ploopfs_native.h"

typedef struct {
    uint64_t lo, hi, count; /* count == 0: empty slot */
} slot_t;

struct pf_ddt {
    slot_t *slots;
    uint64_t cap; /* power of two */
    uint64_t entries, refs, offered, limit, peak;
    unsigned shift;
};

static int kept(const pf_ddt *t, uint64_t lo)
{
    return t->shift == 0 || (lo & ((UINT64_C(1) << t->shift) - 1)) == 0;
}

/* Home slot from the high word: the low word's low bits are the sampling bits. */
static uint64_t home(const pf_ddt *t, uint64_t hi)
{
    return hi & (t->cap - 1);
}

static int too_full(uint64_t entries, uint64_t cap)
{
    return entries * 10 > cap * 7;
}

/* Place an entry known to be absent (rehash, purge). */
static void place(slot_t *slots, uint64_t cap, const slot_t *e)
{
    uint64_t i = e->hi & (cap - 1);
    while (slots[i].count)
        i = (i + 1) & (cap - 1);
    slots[i] = *e;
}

pf_ddt *pf_ddt_new(uint64_t mem_limit, unsigned shift)
{
    if (mem_limit < PF_DDT_MIN_BYTES || shift > 63)
        return NULL;
    pf_ddt *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    uint64_t cap = 16;
    while (cap < 1024 && cap * 2 * sizeof(slot_t) <= mem_limit)
        cap *= 2;
    t->slots = calloc(cap, sizeof(slot_t));
    if (!t->slots) {
        free(t);
        return NULL;
    }
    t->cap = cap;
    t->limit = mem_limit;
    t->shift = shift;
    t->peak = cap * sizeof(slot_t);
    return t;
}

void pf_ddt_free(pf_ddt *t)
{
    if (t) {
        free(t->slots);
        free(t);
    }
}

/* Double the slot array if old + new fit the limit. 1 = grown, 0 = may not, -1 = no memory. */
static int grow(pf_ddt *t)
{
    uint64_t ncap = t->cap * 2;
    if ((t->cap + ncap) * sizeof(slot_t) > t->limit)
        return 0;
    slot_t *ns = calloc(ncap, sizeof(slot_t));
    if (!ns)
        return -1;
    for (uint64_t i = 0; i < t->cap; i++)
        if (t->slots[i].count)
            place(ns, ncap, &t->slots[i]);
    if ((t->cap + ncap) * sizeof(slot_t) > t->peak)
        t->peak = (t->cap + ncap) * sizeof(slot_t);
    free(t->slots);
    t->slots = ns;
    t->cap = ncap;
    return 1;
}

/* Raise the sampling shift by one and drop the entries that no longer qualify, in place.
 * Linear probing: clear the dropped slots, then, starting just after an empty slot (so that
 * no probe run crosses the start), take each remaining entry out and place it again; it lands
 * at or before its old slot, and every run stays unbroken. */
static void purge(pf_ddt *t)
{
    t->shift++;
    for (uint64_t i = 0; i < t->cap; i++) {
        slot_t *s = &t->slots[i];
        if (s->count && !kept(t, s->lo)) {
            t->entries--;
            t->refs -= s->count;
            memset(s, 0, sizeof *s);
        }
    }
    uint64_t start = 0;
    while (start < t->cap && t->slots[start].count)
        start++;
    if (start == t->cap)
        return; /* cannot happen: load <= 0.7 */
    for (uint64_t k = 1; k <= t->cap; k++) {
        uint64_t i = (start + k) & (t->cap - 1);
        if (!t->slots[i].count)
            continue;
        slot_t e = t->slots[i];
        memset(&t->slots[i], 0, sizeof e);
        place(t->slots, t->cap, &e);
    }
}

int pf_ddt_add(pf_ddt *t, uint64_t lo, uint64_t hi)
{
    t->offered++;
    if (!kept(t, lo))
        return 0;
    uint64_t i = home(t, hi);
    while (t->slots[i].count) {
        if (t->slots[i].lo == lo && t->slots[i].hi == hi) {
            t->slots[i].count++;
            t->refs++;
            return 1;
        }
        i = (i + 1) & (t->cap - 1);
    }
    /* A new entry: make room first (grow, else sample more coarsely). */
    while (too_full(t->entries + 1, t->cap)) {
        int g = grow(t);
        if (g < 0) {
            t->offered--;
            return -1;
        }
        if (g == 0) {
            if (t->shift >= 63) {
                t->offered--;
                return -1;
            }
            purge(t);
            if (!kept(t, lo))
                return 0;
        }
    }
    slot_t e = {lo, hi, 1};
    place(t->slots, t->cap, &e);
    t->entries++;
    t->refs++;
    return 1;
}

uint64_t pf_ddt_count(const pf_ddt *t, uint64_t lo, uint64_t hi)
{
    if (!kept(t, lo))
        return 0;
    for (uint64_t i = home(t, hi);; i = (i + 1) & (t->cap - 1)) {
        const slot_t *s = &t->slots[i];
        if (!s->count)
            return 0;
        if (s->lo == lo && s->hi == hi)
            return s->count;
    }
}

uint64_t pf_ddt_entries(const pf_ddt *t) { return t->entries; }
uint64_t pf_ddt_refs(const pf_ddt *t) { return t->refs; }
uint64_t pf_ddt_offered(const pf_ddt *t) { return t->offered; }
uint64_t pf_ddt_capacity(const pf_ddt *t) { return t->cap; }
unsigned pf_ddt_shift(const pf_ddt *t) { return t->shift; }
uint64_t pf_ddt_peak_bytes(const pf_ddt *t) { return t->peak; }

void pf_ddt_histogram(const pf_ddt *t, uint64_t *entries, uint64_t *refs)
{
    memset(entries, 0, PF_DDT_BUCKETS * sizeof *entries);
    memset(refs, 0, PF_DDT_BUCKETS * sizeof *refs);
    for (uint64_t i = 0; i < t->cap; i++) {
        uint64_t c = t->slots[i].count;
        if (!c)
            continue;
        int b = 63 - __builtin_clzll(c);
        entries[b]++;
        refs[b] += c;
    }
}

/* -- scanner ------------------------------------------------------------------------------ */
struct pf_dedup {
    pf_ddt *table[2];
    uint64_t len[2], blocks[2], zero[2], every;
    pthread_mutex_t lock; /* tables and counters: feeds may run on several threads */
};

static void hash_base(const unsigned char *buf, size_t len, uint64_t *out)
{
    XXH128_hash_t h = XXH3_128bits(buf, len);
    out[0] = h.low64;
    out[1] = h.high64;
}

int pf_dedup_hash_variant(int v, const unsigned char *buf, size_t len, uint64_t *out)
{
    switch (v) {
    case 0:
        hash_base(buf, len, out);
        return 0;
#if PF_DEDUP_X86
    case 1:
        if (!__builtin_cpu_supports("avx2"))
            return -1;
        pf_dedup_hash_avx2(buf, len, out);
        return 0;
    case 2:
        if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw"))
            return -1;
        pf_dedup_hash_avx512(buf, len, out);
        return 0;
#endif
    default:
        return -1;
    }
}

/* Best variant for this CPU: XXH3 runs ~2x faster with AVX2 than with baseline SSE2. */
void pf_dedup_hash(const unsigned char *buf, size_t len, uint64_t *out)
{
#if PF_DEDUP_X86
    if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512f")) {
        pf_dedup_hash_avx512(buf, len, out);
        return;
    }
    if (__builtin_cpu_supports("avx2")) {
        pf_dedup_hash_avx2(buf, len, out);
        return;
    }
#endif
    hash_base(buf, len, out);
}

pf_dedup *pf_dedup_new(uint64_t small_len, uint64_t large_len, uint64_t small_mem,
                       uint64_t large_mem, unsigned shift, uint64_t sample_every)
{
    if (!small_len || !large_len || large_len % small_len || large_len / small_len > 256 ||
        !sample_every)
        return NULL;
    pf_dedup *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    pthread_mutex_init(&d->lock, NULL);
    d->table[0] = pf_ddt_new(small_mem, shift);
    d->table[1] = pf_ddt_new(large_mem, shift);
    if (!d->table[0] || !d->table[1]) {
        pf_dedup_free(d);
        return NULL;
    }
    d->len[0] = small_len;
    d->len[1] = large_len;
    d->every = sample_every;
    return d;
}

void pf_dedup_free(pf_dedup *d)
{
    if (d) {
        pf_ddt_free(d->table[0]);
        pf_ddt_free(d->table[1]);
        pthread_mutex_destroy(&d->lock);
        free(d);
    }
}

/* Per-call work list, filled without the lock: for each block, its hash and whether it is
 * all zeros (small) or its index and whether it is picked (large). */
typedef struct {
    uint64_t lo, hi;
    uint32_t zero, pick;
    uint64_t idx;
} hashed_t;

/* Hash the blocks of buf[0..len) (see pf_dedup_feed) into sm[] and lg[]; returns the number
 * of large blocks, their small blocks' count in *nsm. Touches nothing shared. The large-block
 * hash is XXH3-128 over the small blocks' hashes (16 bytes each, zero blocks included), so
 * the data is hashed once: two large blocks share it only if all their small blocks match. */
static size_t hash_blocks(const pf_dedup *d, const unsigned char *buf, size_t len,
                          hashed_t *sm, size_t *nsm, hashed_t *lg)
{
    size_t ns = 0, nl = 0;
    uint64_t list[2 * 256]; /* small hashes of one large block (<= 256, checked at setup) */
    for (size_t off = 0; off < len; off += d->len[1]) {
        size_t rec = len - off < d->len[1] ? len - off : d->len[1];
        hashed_t *L = &lg[nl++];
        memset(L, 0, sizeof *L);
        L->idx = off / d->len[1];
        if (pf_first_nonzero(buf + off, rec) == rec) {
            L->zero = 1;
            for (size_t s = 0; s < rec; s += d->len[0]) {
                memset(&sm[ns], 0, sizeof sm[ns]);
                sm[ns++].zero = 1;
            }
            continue;
        }
        size_t k = 0;
        for (size_t s = 0; s < rec; s += d->len[0], k++) {
            size_t n = rec - s < d->len[0] ? rec - s : d->len[0];
            hashed_t *S = &sm[ns++];
            uint64_t h[2];
            pf_dedup_hash(buf + off + s, n, h);
            S->lo = h[0];
            S->hi = h[1];
            S->zero = pf_first_nonzero(buf + off + s, n) == n;
            S->pick = 0;
            list[2 * k] = h[0];
            list[2 * k + 1] = h[1];
        }
        uint64_t h[2];
        pf_dedup_hash((const unsigned char *)list, k * 16, h);
        L->lo = h[0];
        L->hi = h[1];
        L->pick = (h[0] >> 32) % d->every == 0;
    }
    *nsm = ns;
    return nl;
}

int64_t pf_dedup_feed(pf_dedup *d, const unsigned char *buf, size_t len, uint64_t *picks,
                      size_t max_picks)
{
    if (!d || (len && !buf))
        return -1;
    size_t nl_max = len / d->len[1] + 1, ns_max = len / d->len[0] + nl_max;
    hashed_t *sm = malloc(ns_max * sizeof *sm), *lg = malloc(nl_max * sizeof *lg);
    if (!sm || !lg) {
        free(sm);
        free(lg);
        return -1;
    }
    size_t ns, nl = hash_blocks(d, buf, len, sm, &ns, lg);
    size_t npicks = 0;
    for (size_t i = 0; i < nl; i++)
        npicks += lg[i].pick;
    int64_t ret = npicks > max_picks ? -1 : (int64_t)npicks;
    if (ret >= 0) {
        pthread_mutex_lock(&d->lock);
        for (size_t i = 0; i < ns; i++) {
            d->blocks[0]++;
            if (sm[i].zero)
                d->zero[0]++;
            else if (pf_ddt_add(d->table[0], sm[i].lo, sm[i].hi) < 0)
                ret = -1;
        }
        for (size_t i = 0; i < nl; i++) {
            d->blocks[1]++;
            if (lg[i].zero)
                d->zero[1]++;
            else if (pf_ddt_add(d->table[1], lg[i].lo, lg[i].hi) < 0)
                ret = -1;
        }
        pthread_mutex_unlock(&d->lock);
        for (size_t i = 0, k = 0; i < nl && ret >= 0; i++) {
            if (!lg[i].pick)
                continue;
            picks[3 * k] = lg[i].idx;
            picks[3 * k + 1] = lg[i].lo;
            picks[3 * k + 2] = lg[i].hi;
            k++;
        }
    }
    free(sm);
    free(lg);
    return ret;
}

pf_ddt *pf_dedup_table(pf_dedup *d, int which)
{
    return d->table[which ? 1 : 0];
}

uint64_t pf_dedup_blocks(const pf_dedup *d, int which) { return d->blocks[which ? 1 : 0]; }
uint64_t pf_dedup_zero(const pf_dedup *d, int which) { return d->zero[which ? 1 : 0]; }
