/* rdiff engine, signatures: strong sums, block records and the signature writer. See pf_sig.h
 * and docs/rdiff.md. */
#include "pf_sig.h"
#include "pf_b2x.h"
#include "pf_rollsum.h"
#include "ploopfs_native.h"

#include <blake2.h>
#include <nettle/md4.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* -- strong sums ---------------------------------------------------------------------------- */

int pf_strong(int hash, const unsigned char *buf, size_t len, unsigned char *out)
{
    static const unsigned char empty[1] = {0};
    if (!buf)
        buf = empty; /* len is 0: the libraries still want a valid pointer */
    if (hash == PF_HASH_MD4) {
        struct md4_ctx c;
        md4_init(&c);
        md4_update(&c, len, buf);
        md4_digest(&c, PF_MD4_LEN, out);
        return PF_MD4_LEN;
    }
    if (hash == PF_HASH_BLAKE2) {
        blake2b_state s;
        /* outlen 32 is part of the parameter block: this is BLAKE2b-256, not a truncated
         * BLAKE2b-512. */
        blake2b_init(&s, PF_BLAKE2_LEN);
        blake2b_update(&s, buf, len);
        blake2b_final(&s, out, PF_BLAKE2_LEN);
        return PF_BLAKE2_LEN;
    }
    return -1;
}

size_t pf_strong_len(int hash)
{
    return hash == PF_HASH_MD4 ? PF_MD4_LEN : PF_BLAKE2_LEN;
}

int pf_sig_kinds_valid(int hash, int weak)
{
    return (hash == PF_HASH_MD4 || hash == PF_HASH_BLAKE2) &&
           (weak == PF_WEAK_ROLLSUM || weak == PF_WEAK_RABINKARP);
}

/* Streaming weak + strong hash over a block given in pieces (used for the zero block). */
struct blockhash {
    int hash, weak;
    struct pf_rollsum_state rs;
    uint32_t rk;
    struct md4_ctx md4;
    blake2b_state b2;
};

static void bh_init(struct blockhash *h, int hash, int weak)
{
    h->hash = hash;
    h->weak = weak;
    h->rs.s1 = h->rs.s2 = 0;
    h->rk = PF_RK_SEED;
    if (hash == PF_HASH_MD4)
        md4_init(&h->md4);
    else
        blake2b_init(&h->b2, PF_BLAKE2_LEN);
}

static void bh_update(struct blockhash *h, const unsigned char *p, size_t n)
{
    if (h->weak == PF_WEAK_ROLLSUM)
        pf_rollsum_update(&h->rs, p, n);
    else
        h->rk = pf_rabinkarp_update(h->rk, p, n);
    if (h->hash == PF_HASH_MD4)
        md4_update(&h->md4, n, p);
    else
        blake2b_update(&h->b2, p, n);
}

static uint32_t bh_final(struct blockhash *h, unsigned char *strong)
{
    if (h->hash == PF_HASH_MD4)
        md4_digest(&h->md4, PF_MD4_LEN, strong);
    else
        blake2b_final(&h->b2, strong, PF_BLAKE2_LEN);
    return h->weak == PF_WEAK_ROLLSUM ? pf_rollsum_digest(&h->rs) : h->rk;
}

/* Streamed from a small zero buffer. */
uint32_t pf_zero_block_sums(int hash, int weak, uint64_t n, unsigned char *strong)
{
    static const unsigned char zeros[65536];
    struct blockhash h;
    bh_init(&h, hash, weak);
    while (n) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        bh_update(&h, zeros, k);
        n -= k;
    }
    return bh_final(&h, strong);
}

/* -- a chunk's blocks: SIMD batches, threads ----------------------------------------------- */

void pf_sig_batch_strong(int hash, uint64_t block_len, const unsigned char *buf, size_t len,
                         uint64_t k0, uint64_t k1, int *slot, unsigned char *sums)
{
    const unsigned char *msgs[PF_SIG_BATCH];
    size_t nb = 0;
    for (uint64_t k = k0; k < k1; k++) {
        size_t off = (size_t)(k * block_len);
        const unsigned char *p = buf + off;
        slot[k - k0] = -1;
        if (hash != PF_HASH_BLAKE2 || len - off < block_len ||
            pf_first_nonzero(p, block_len) == block_len)
            continue;
        slot[k - k0] = (int)nb;
        msgs[nb++] = p;
    }
    if (nb)
        pf_blake2b_many(msgs, nb, (size_t)block_len, PF_BLAKE2_LEN, sums);
}

/* A thread with half a batch hashes at half the speed, and the other core is better left to
 * the caller's reader. */
int pf_sig_threads(int hash, int nthreads, uint64_t nb)
{
    if (hash != PF_HASH_BLAKE2)
        return nthreads;
    uint64_t lanes = (uint64_t)pf_blake2b_lanes();
    uint64_t batches = (nb + lanes - 1) / lanes;
    return batches < (uint64_t)nthreads ? (int)(batches ? batches : 1) : nthreads;
}

struct range_job {
    pf_range_fn fn;
    void *arg;
    uint64_t begin, end;
};

static void *range_thread(void *p)
{
    struct range_job *j = p;
    j->fn(j->arg, j->begin, j->end);
    return NULL;
}

#define MAX_THREADS 64

void pf_run_parallel(int nthreads, uint64_t n, pf_range_fn fn, void *arg)
{
    pthread_t tid[MAX_THREADS];
    struct range_job jobs[MAX_THREADS];
    int started[MAX_THREADS];
    uint64_t t = (uint64_t)(nthreads < 1 ? 1 : nthreads > MAX_THREADS ? MAX_THREADS : nthreads);

    if (t > n)
        t = n ? n : 1;
    for (uint64_t i = 0; i < t; i++) {
        jobs[i].fn = fn;
        jobs[i].arg = arg;
        jobs[i].begin = n * i / t;
        jobs[i].end = n * (i + 1) / t;
        started[i] = 0;
    }
    for (uint64_t i = 1; i < t; i++)
        started[i] = pthread_create(&tid[i], NULL, range_thread, &jobs[i]) == 0;
    fn(arg, jobs[0].begin, jobs[0].end);
    for (uint64_t i = 1; i < t; i++) {
        if (started[i])
            pthread_join(tid[i], NULL);
        else
            fn(arg, jobs[i].begin, jobs[i].end);
    }
}

/* -- the signature writer ------------------------------------------------------------------ */

struct pf_sigctx {
    int hash, weak, nthreads;
    uint64_t block_len;
    size_t sum_len;
    unsigned char zero_rec[4 + PF_MAX_STRONG]; /* record of a full all-zero block */
};

pf_sigctx *pf_sigctx_new(int hash, int weak, uint64_t block_len, size_t sum_len, int nthreads)
{
    if (!pf_sig_kinds_valid(hash, weak) || block_len == 0 || sum_len == 0 ||
        sum_len > pf_strong_len(hash))
        return NULL;
    pf_sigctx *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->hash = hash;
    c->weak = weak;
    c->block_len = block_len;
    c->sum_len = sum_len;
    c->nthreads = nthreads < 1 ? 1 : nthreads;
    unsigned char strong[PF_MAX_STRONG];
    pf_put_be32(c->zero_rec, pf_zero_block_sums(hash, weak, block_len, strong));
    memcpy(c->zero_rec + 4, strong, sum_len);
    return c;
}

void pf_sigctx_free(pf_sigctx *ctx)
{
    free(ctx);
}

struct sig_job {
    const pf_sigctx *c;
    const unsigned char *buf;
    size_t len;
    unsigned char *out;
};

static void sig_range(void *arg, uint64_t begin, uint64_t end)
{
    const struct sig_job *j = arg;
    const pf_sigctx *c = j->c;
    size_t rec = 4 + c->sum_len;
    unsigned char strong[PF_MAX_STRONG];
    unsigned char sums[PF_SIG_BATCH * PF_BLAKE2_LEN];
    int slot[PF_SIG_BATCH];

    for (uint64_t k0 = begin; k0 < end; k0 += PF_SIG_BATCH) {
        uint64_t k1 = end - k0 < PF_SIG_BATCH ? end : k0 + PF_SIG_BATCH;
        pf_sig_batch_strong(c->hash, c->block_len, j->buf, j->len, k0, k1, slot, sums);
        for (uint64_t k = k0; k < k1; k++) {
            size_t off = (size_t)(k * c->block_len);
            size_t n = j->len - off < c->block_len ? j->len - off : (size_t)c->block_len;
            const unsigned char *p = j->buf + off;
            unsigned char *o = j->out + k * rec;
            if (slot[k - k0] < 0 && n == c->block_len && pf_first_nonzero(p, n) == n) {
                memcpy(o, c->zero_rec, rec);
                continue;
            }
            pf_put_be32(o, pf_weak_sum(c->weak, p, n));
            if (slot[k - k0] >= 0) {
                memcpy(o + 4, sums + (size_t)slot[k - k0] * PF_BLAKE2_LEN, c->sum_len);
            } else {
                pf_strong(c->hash, p, n, strong);
                memcpy(o + 4, strong, c->sum_len);
            }
        }
    }
}

int64_t pf_sig_chunk(pf_sigctx *ctx, const unsigned char *buf, size_t len, unsigned char *out)
{
    if (!ctx || (!buf && len) || (!out && len))
        return -1;
    uint64_t nb = (len + ctx->block_len - 1) / ctx->block_len;
    struct sig_job j = {ctx, buf, len, out};
    if (nb)
        pf_run_parallel(pf_sig_threads(ctx->hash, ctx->nthreads, nb), nb, sig_range, &j);
    return (int64_t)(nb * (4 + ctx->sum_len));
}
