/* rdiff engine, search: the hash index over a signature and aligned matching. See pf_search.h
 * and docs/rdiff.md. */
#include "pf_search.h"
#include "pf_rollsum.h"
#include "pf_sig.h"
#include "ploopfs_native.h"

#include <stdlib.h>
#include <string.h>

struct pf_index {
    int hash, weak, nthreads;
    uint64_t block_len, nrec, distinct;
    size_t sum_len, rec;
    unsigned char *records;
    uint32_t *slots; /* block index + 1; 0 = empty */
    uint64_t mask;
    uint32_t zero_weak;
    unsigned char zero_strong[PF_MAX_STRONG];
};

/* splitmix64 finaliser: spreads any strong-prefix bits over the table. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t key_of(const unsigned char *strong, size_t sum_len)
{
    uint64_t k = 0;
    memcpy(&k, strong, sum_len < 8 ? sum_len : 8);
    return mix64(k ^ sum_len);
}

static const unsigned char *rec_at(const pf_index *ix, uint64_t i)
{
    return ix->records + i * ix->rec;
}

pf_index *pf_index_new(int hash, int weak, uint64_t block_len, size_t sum_len,
                       const unsigned char *records, uint64_t nrec, int nthreads)
{
    if (!pf_sig_kinds_valid(hash, weak) || block_len == 0 || sum_len == 0 ||
        sum_len > pf_strong_len(hash) || (nrec && !records) ||
        nrec >= UINT32_MAX || nrec > SIZE_MAX / (4 + PF_MAX_STRONG))
        return NULL;
    pf_index *ix = calloc(1, sizeof *ix);
    if (!ix)
        return NULL;
    ix->hash = hash;
    ix->weak = weak;
    ix->nthreads = nthreads < 1 ? 1 : nthreads;
    ix->block_len = block_len;
    ix->nrec = nrec;
    ix->sum_len = sum_len;
    ix->rec = 4 + sum_len;
    ix->records = malloc(nrec ? (size_t)nrec * ix->rec : 1);
    uint64_t size = 16;
    while (size < 2 * nrec)
        size <<= 1;
    ix->slots = calloc((size_t)size, sizeof *ix->slots);
    if (!ix->records || !ix->slots) {
        pf_index_free(ix);
        return NULL;
    }
    if (nrec)
        memcpy(ix->records, records, (size_t)nrec * ix->rec);
    ix->mask = size - 1;
    ix->zero_weak = pf_zero_block_sums(hash, weak, block_len, ix->zero_strong);

    /* Open addressing, linear probing. Equal (weak, strong prefix) pairs are stored once
     * (the first block wins), so runs of identical blocks cost one probe each. */
    for (uint64_t i = 0; i < nrec; i++) {
        const unsigned char *r = rec_at(ix, i);
        uint64_t s = key_of(r + 4, sum_len) & ix->mask;
        for (;;) {
            uint32_t v = ix->slots[s];
            if (v == 0) {
                ix->slots[s] = (uint32_t)(i + 1);
                ix->distinct++;
                break;
            }
            if (memcmp(rec_at(ix, v - 1), r, ix->rec) == 0)
                break;
            s = (s + 1) & ix->mask;
        }
    }
    return ix;
}

void pf_index_free(pf_index *ix)
{
    if (!ix)
        return;
    free(ix->records);
    free(ix->slots);
    free(ix);
}

uint64_t pf_index_size(const pf_index *ix)
{
    return ix ? ix->distinct : 0;
}

struct match_job {
    const pf_index *ix;
    const unsigned char *buf;
    size_t len;
    uint64_t first_block;
    int64_t *match;
};

/* Strong prefixes of at least this many bytes decide a match alone (2^64 birthday bound);
 * shorter ones (e.g. fast-rdiff's 8-byte MD4) are backed by the 32-bit weak sum as well. */
#define STRONG_ENOUGH 16

/* Does record r equal (weak of p[0..n), strong)? The weak sum is computed at most once per
 * block, and only once a strong prefix already matched. */
static int rec_equal(const pf_index *ix, const unsigned char *r, const unsigned char *strong,
                     const unsigned char *p, size_t n, int *have_weak, uint32_t *weak)
{
    if (memcmp(r + 4, strong, ix->sum_len) != 0)
        return 0;
    if (ix->sum_len >= STRONG_ENOUGH)
        return 1;
    if (!*have_weak) {
        *weak = pf_weak_sum(ix->weak, p, n);
        *have_weak = 1;
    }
    return pf_get_be32(r) == *weak;
}

/* sum: the block's strong sum if already taken (pf_sig_batch_strong), else NULL. */
static int64_t match_block(const pf_index *ix, uint64_t bi, const unsigned char *p, size_t n,
                           const unsigned char *sum)
{
    unsigned char strong[PF_MAX_STRONG];
    int have_weak = 0;
    uint32_t weak = 0;

    if (sum) {
        memcpy(strong, sum, PF_BLAKE2_LEN);
    } else if (n == ix->block_len && pf_first_nonzero(p, n) == n) {
        memcpy(strong, ix->zero_strong, sizeof strong);
        weak = ix->zero_weak;
        have_weak = 1;
    } else {
        pf_strong(ix->hash, p, n, strong);
    }
    /* 1. the block at the same index (the common case: nothing moved) */
    if (bi < ix->nrec && rec_equal(ix, rec_at(ix, bi), strong, p, n, &have_weak, &weak))
        return (int64_t)bi;
    /* 2. any block with the same sums */
    uint64_t s = key_of(strong, ix->sum_len) & ix->mask;
    for (;;) {
        uint32_t v = ix->slots[s];
        if (v == 0)
            return -1;
        if (rec_equal(ix, rec_at(ix, v - 1), strong, p, n, &have_weak, &weak))
            return (int64_t)(v - 1);
        s = (s + 1) & ix->mask;
    }
}

static void match_range(void *arg, uint64_t begin, uint64_t end)
{
    const struct match_job *j = arg;
    const pf_index *ix = j->ix;
    unsigned char sums[PF_SIG_BATCH * PF_BLAKE2_LEN];
    int slot[PF_SIG_BATCH];

    for (uint64_t k0 = begin; k0 < end; k0 += PF_SIG_BATCH) {
        uint64_t k1 = end - k0 < PF_SIG_BATCH ? end : k0 + PF_SIG_BATCH;
        pf_sig_batch_strong(ix->hash, ix->block_len, j->buf, j->len, k0, k1, slot, sums);
        for (uint64_t k = k0; k < k1; k++) {
            size_t off = (size_t)(k * ix->block_len);
            size_t n = j->len - off < ix->block_len ? j->len - off : (size_t)ix->block_len;
            const unsigned char *sum =
                slot[k - k0] >= 0 ? sums + (size_t)slot[k - k0] * PF_BLAKE2_LEN : NULL;
            j->match[k] = match_block(ix, j->first_block + k, j->buf + off, n, sum);
        }
    }
}

int64_t pf_match_chunk(const pf_index *ix, const unsigned char *buf, size_t len,
                       uint64_t first_block, int64_t *match)
{
    if (!ix || (len && (!buf || !match)))
        return -1;
    uint64_t nb = (len + ix->block_len - 1) / ix->block_len;
    struct match_job j = {ix, buf, len, first_block, match};
    if (nb)
        pf_run_parallel(pf_sig_threads(ix->hash, ix->nthreads, nb), nb, match_range, &j);
    return (int64_t)nb;
}
