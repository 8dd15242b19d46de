/* ploopfs rdiff engine. See pf_rdiff.h and docs/rdiff.md. */
#define _GNU_SOURCE
#include "pf_rdiff.h"
#include "pf_b2x.h"
#include "ploopfs_native.h"

#include <blake2.h>
#include <errno.h>
#include <nettle/md4.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* -- weak sums ---------------------------------------------------------------------- */

#define RS_CHAR_OFFSET 31u
#define RK_MULT 0x08104225u
#define RK_SEED 1u
#define BLK 32 /* bytes per unrolled step of the weak sums */

/* The weak sums' inner loops vectorise well with AVX2; build an AVX2 and a baseline clone and
 * let the loader pick (GCC function multi-versioning). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define WEAK_CLONES __attribute__((target_clones("avx2", "default"), optimize("O3")))
#else
#define WEAK_CLONES
#endif

/* RK_MULT^(BLK-1-j) for j = 0..BLK-1, and RK_MULT^BLK; filled once. */
static uint32_t rk_weights[BLK];
static uint32_t rk_mult_blk;
static pthread_once_t rk_once = PTHREAD_ONCE_INIT;

static void rk_init(void)
{
    uint32_t p = 1;
    for (int j = BLK - 1; j >= 0; j--) {
        rk_weights[j] = p;
        p *= RK_MULT;
    }
    rk_mult_blk = p;
}

/* rollsum state: s1 = sum of (b + 31), s2 = sum of the running s1; kept mod 2^32, which
 * keeps them right mod 2^16 (all arithmetic is on unsigned, so wrapping is defined). */
struct rollsum {
    uint32_t s1, s2;
};

WEAK_CLONES static void rollsum_update(struct rollsum *r, const unsigned char *p, size_t n)
{
    uint32_t s1 = r->s1, s2 = r->s2;
    /* Per BLK-byte step: s2 += BLK*s1 + sum (BLK-j)*(b_j+31); s1 += sum (b_j+31). */
    const uint32_t off_s1 = RS_CHAR_OFFSET * BLK;
    const uint32_t off_s2 = RS_CHAR_OFFSET * (BLK * (BLK + 1) / 2);
    while (n >= BLK) {
        uint32_t a = 0, b = 0;
        for (int j = 0; j < BLK; j++) {
            a += p[j];
            b += (uint32_t)(BLK - j) * p[j];
        }
        s2 += BLK * s1 + b + off_s2;
        s1 += a + off_s1;
        p += BLK;
        n -= BLK;
    }
    while (n--) {
        s1 += (uint32_t)*p++ + RS_CHAR_OFFSET;
        s2 += s1;
    }
    r->s1 = s1;
    r->s2 = s2;
}

static uint32_t rollsum_digest(const struct rollsum *r)
{
    return ((r->s2 & 0xffffu) << 16) | (r->s1 & 0xffffu);
}

WEAK_CLONES static uint32_t rk_blocks(uint32_t h, const unsigned char *p, size_t n)
{
    while (n >= BLK) {
        uint32_t s = 0;
        for (int j = 0; j < BLK; j++)
            s += rk_weights[j] * p[j];
        h = h * rk_mult_blk + s;
        p += BLK;
        n -= BLK;
    }
    return h;
}

static uint32_t rk_update(uint32_t h, const unsigned char *p, size_t n)
{
    pthread_once(&rk_once, rk_init);
    size_t whole = n - n % BLK;
    h = rk_blocks(h, p, whole);
    p += whole;
    n -= whole;
    while (n--)
        h = h * RK_MULT + *p++;
    return h;
}

uint32_t pf_rollsum(const unsigned char *buf, size_t len)
{
    struct rollsum r = {0, 0};
    if (len)
        rollsum_update(&r, buf, len);
    return rollsum_digest(&r);
}

uint32_t pf_rabinkarp(const unsigned char *buf, size_t len)
{
    return len ? rk_update(RK_SEED, buf, len) : RK_SEED;
}

/* Streaming weak + strong hash over a block given in pieces (used for the zero block). */
struct blockhash {
    int hash, weak;
    struct rollsum rs;
    uint32_t rk;
    struct md4_ctx md4;
    blake2b_state b2;
};

static void bh_init(struct blockhash *h, int hash, int weak)
{
    h->hash = hash;
    h->weak = weak;
    h->rs.s1 = h->rs.s2 = 0;
    h->rk = RK_SEED;
    if (hash == PF_HASH_MD4)
        md4_init(&h->md4);
    else
        blake2b_init(&h->b2, PF_BLAKE2_LEN);
}

static void bh_update(struct blockhash *h, const unsigned char *p, size_t n)
{
    if (h->weak == PF_WEAK_ROLLSUM)
        rollsum_update(&h->rs, p, n);
    else
        h->rk = rk_update(h->rk, p, n);
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
    return h->weak == PF_WEAK_ROLLSUM ? rollsum_digest(&h->rs) : h->rk;
}

static uint32_t weak_sum(int weak, const unsigned char *p, size_t n)
{
    return weak == PF_WEAK_ROLLSUM ? pf_rollsum(p, n) : pf_rabinkarp(p, n);
}

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

static size_t strong_len(int hash)
{
    return hash == PF_HASH_MD4 ? PF_MD4_LEN : PF_BLAKE2_LEN;
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Weak and full strong hash of a zero block of n bytes, streamed from a small zero buffer. */
static uint32_t zero_block_hash(int hash, int weak, uint64_t n, unsigned char *strong)
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

static int valid_kinds(int hash, int weak)
{
    return (hash == PF_HASH_MD4 || hash == PF_HASH_BLAKE2) &&
           (weak == PF_WEAK_ROLLSUM || weak == PF_WEAK_RABINKARP);
}

/* -- a tiny fork/join over a range of items --------------------------------------------------- */

typedef void (*range_fn)(void *arg, uint64_t begin, uint64_t end);

struct range_job {
    range_fn fn;
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

/* Split [0, n) into up to nthreads contiguous ranges; the caller's thread takes the first.
 * A thread that cannot be started has its range done by the caller, so this cannot fail. */
static void run_parallel(int nthreads, uint64_t n, range_fn fn, void *arg)
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

/* -- signatures ---------------------------------------------------------------------------- */

struct pf_sigctx {
    int hash, weak, nthreads;
    uint64_t block_len;
    size_t sum_len;
    unsigned char zero_rec[4 + PF_MAX_STRONG]; /* record of a full all-zero block */
};

pf_sigctx *pf_sigctx_new(int hash, int weak, uint64_t block_len, size_t sum_len, int nthreads)
{
    if (!valid_kinds(hash, weak) || block_len == 0 || sum_len == 0 || sum_len > strong_len(hash))
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
    put_be32(c->zero_rec, zero_block_hash(hash, weak, block_len, strong));
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

/* Blocks whose BLAKE2 sums are taken together, one per SIMD lane (pf_b2x.h). */
#define BATCH 8

/* Strong sums of the full-length, not all-zero blocks among [k0, k1) of buf, in batches
 * (BLAKE2 only): slot[k - k0] = index of block k's sum in sums, or -1 (not batched: the caller
 * hashes it itself). */
static void batch_strong(int hash, uint64_t block_len, const unsigned char *buf, size_t len,
                         uint64_t k0, uint64_t k1, int *slot, unsigned char *sums)
{
    const unsigned char *msgs[BATCH];
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

/* Threads for nb blocks: no more than there are full SIMD batches to give them (a thread
 * with half a batch hashes at half the speed, and the other core is better left to the
 * caller's reader). */
static int hash_threads(int hash, int nthreads, uint64_t nb)
{
    if (hash != PF_HASH_BLAKE2)
        return nthreads;
    uint64_t lanes = (uint64_t)pf_blake2b_lanes();
    uint64_t batches = (nb + lanes - 1) / lanes;
    return batches < (uint64_t)nthreads ? (int)(batches ? batches : 1) : nthreads;
}

static void sig_range(void *arg, uint64_t begin, uint64_t end)
{
    const struct sig_job *j = arg;
    const pf_sigctx *c = j->c;
    size_t rec = 4 + c->sum_len;
    unsigned char strong[PF_MAX_STRONG];
    unsigned char sums[BATCH * PF_BLAKE2_LEN];
    int slot[BATCH];

    for (uint64_t k0 = begin; k0 < end; k0 += BATCH) {
        uint64_t k1 = end - k0 < BATCH ? end : k0 + BATCH;
        batch_strong(c->hash, c->block_len, j->buf, j->len, k0, k1, slot, sums);
        for (uint64_t k = k0; k < k1; k++) {
            size_t off = (size_t)(k * c->block_len);
            size_t n = j->len - off < c->block_len ? j->len - off : (size_t)c->block_len;
            const unsigned char *p = j->buf + off;
            unsigned char *o = j->out + k * rec;
            if (slot[k - k0] < 0 && n == c->block_len && pf_first_nonzero(p, n) == n) {
                memcpy(o, c->zero_rec, rec);
                continue;
            }
            put_be32(o, weak_sum(c->weak, p, n));
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
        run_parallel(hash_threads(ctx->hash, ctx->nthreads, nb), nb, sig_range, &j);
    return (int64_t)(nb * (4 + ctx->sum_len));
}

/* -- match index --------------------------------------------------------------------------- */

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
    if (!valid_kinds(hash, weak) || block_len == 0 || sum_len == 0 ||
        sum_len > strong_len(hash) || (nrec && !records) ||
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
    ix->zero_weak = zero_block_hash(hash, weak, block_len, ix->zero_strong);

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
        *weak = weak_sum(ix->weak, p, n);
        *have_weak = 1;
    }
    return get_be32(r) == *weak;
}

/* sum: the block's strong sum if already taken (batch_strong), else NULL. */
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
    unsigned char sums[BATCH * PF_BLAKE2_LEN];
    int slot[BATCH];

    for (uint64_t k0 = begin; k0 < end; k0 += BATCH) {
        uint64_t k1 = end - k0 < BATCH ? end : k0 + BATCH;
        batch_strong(ix->hash, ix->block_len, j->buf, j->len, k0, k1, slot, sums);
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
        run_parallel(hash_threads(ix->hash, ix->nthreads, nb), nb, match_range, &j);
    return (int64_t)nb;
}

/* -- command encoding --------------------------------------------------------------- */

/* Minimal big-endian width of v: 1, 2, 4 or 8 (like librsync's rs_int_len). */
static int int_width(uint64_t v)
{
    if (v <= 0xffu)
        return 1;
    if (v <= 0xffffu)
        return 2;
    if (v <= 0xffffffffu)
        return 4;
    return 8;
}

static int log2_width(int w)
{
    return w == 1 ? 0 : w == 2 ? 1 : w == 4 ? 2 : 3;
}

static void put_be(unsigned char *p, uint64_t v, int w)
{
    for (int i = w - 1; i >= 0; i--) {
        p[i] = (unsigned char)v;
        v >>= 8;
    }
}

size_t pf_cmd_copy(unsigned char *out, uint64_t start, uint64_t len)
{
    if (len == 0)
        return 0;
    int wa = int_width(start), wb = int_width(len);
    out[0] = (unsigned char)(0x45 + 4 * log2_width(wa) + log2_width(wb));
    put_be(out + 1, start, wa);
    put_be(out + 1 + wa, len, wb);
    return (size_t)(1 + wa + wb);
}

size_t pf_cmd_literal(unsigned char *out, uint64_t len)
{
    if (len == 0)
        return 0;
    if (len <= 64) {
        out[0] = (unsigned char)len;
        return 1;
    }
    int w = int_width(len);
    out[0] = (unsigned char)(0x41 + log2_width(w));
    put_be(out + 1, len, w);
    return (size_t)(1 + w);
}

/* -- patcher ------------------------------------------------------------------------------- */

#define PATCH_IO (1u << 20)
#define HOLE_GRAIN 65536u

enum { ST_HDR, ST_LIT, ST_DONE, ST_ERR };

struct pf_patch {
    int basis_fd, out_fd, sparse, state, err, err_no;
    uint64_t basis_size;
    unsigned char hdr[PF_CMD_MAX];
    size_t hlen, need;
    uint64_t lit_left;
    uint64_t fed;     /* bytes fed before the current piece */
    uint64_t cmd_off; /* offset of the current command's opcode */
    uint64_t pos;     /* output bytes produced */
    uint64_t commands;
    unsigned char *io;
};

pf_patch *pf_patch_new(int basis_fd, int out_fd, uint64_t basis_size, int sparse)
{
    pf_patch *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->io = malloc(PATCH_IO);
    if (!p->io) {
        free(p);
        return NULL;
    }
    p->basis_fd = basis_fd;
    p->out_fd = out_fd;
    p->basis_size = basis_size;
    p->sparse = sparse;
    p->state = ST_HDR;
    return p;
}

void pf_patch_free(pf_patch *p)
{
    if (!p)
        return;
    free(p->io);
    free(p);
}

static int fail(pf_patch *p, int err, int err_no)
{
    p->state = ST_ERR;
    p->err = err;
    p->err_no = err_no;
    return err;
}

/* Append data to the output: pwrite at our own position (all-zero grains are skipped, making
 * holes, when sparse), else a plain write loop (pipes, devices). */
static int out_write(pf_patch *p, const unsigned char *d, size_t n)
{
    while (n) {
        size_t k = n;
        if (p->sparse) {
            k = n < HOLE_GRAIN ? n : HOLE_GRAIN;
            if (pf_first_nonzero(d, k) == k) {
                p->pos += k;
                d += k;
                n -= k;
                continue;
            }
        }
        ssize_t w = p->sparse ? pwrite(p->out_fd, d, k, (off_t)p->pos) : write(p->out_fd, d, k);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return fail(p, PF_PATCH_EWRITE, errno);
        }
        if (w == 0)
            return fail(p, PF_PATCH_EWRITE, ENOSPC);
        p->pos += (uint64_t)w;
        d += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Bytes from `start` that are certainly a hole of the basis (0 if data or unknown). */
static uint64_t basis_hole(const pf_patch *p, uint64_t start, uint64_t len)
{
    off_t d = lseek(p->basis_fd, (off_t)start, SEEK_DATA);
    if (d < 0)
        return errno == ENXIO ? len : 0; /* ENXIO: no data after start */
    return (uint64_t)d - start < len ? (uint64_t)d - start : len;
}

static int do_copy(pf_patch *p, uint64_t start, uint64_t len)
{
    while (len) {
        size_t k = len < PATCH_IO ? (size_t)len : PATCH_IO;
        if (p->sparse) { /* a hole of the basis is a hole of the output: nothing to read */
            uint64_t h = basis_hole(p, start, len);
            if (h) {
                p->pos += h;
                start += h;
                len -= h;
                continue;
            }
        }
        ssize_t r = pread(p->basis_fd, p->io, k, (off_t)start);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return fail(p, PF_PATCH_EREAD, errno);
        }
        if (r == 0) /* the basis shrank under us */
            return fail(p, PF_PATCH_ERANGE, 0);
        int rc = out_write(p, p->io, (size_t)r);
        if (rc)
            return rc;
        start += (uint64_t)r;
        len -= (uint64_t)r;
    }
    return 0;
}

static uint64_t get_be(const unsigned char *q, size_t w)
{
    uint64_t v = 0;
    for (size_t i = 0; i < w; i++)
        v = (v << 8) | q[i];
    return v;
}

/* Execute the complete header in p->hdr. */
static int run_header(pf_patch *p)
{
    unsigned op = p->hdr[0];
    p->commands++;
    if (op >= 0x41 && op <= 0x44) {
        uint64_t len = get_be(p->hdr + 1, p->need - 1);
        if (len == 0)
            return fail(p, PF_PATCH_EZERO, 0);
        if (len >> 63)
            return fail(p, PF_PATCH_ERANGE, 0);
        p->lit_left = len;
        p->state = ST_LIT;
        return 0;
    }
    unsigned c = op - 0x45;
    size_t wa = (size_t)1 << (c / 4), wb = (size_t)1 << (c % 4);
    uint64_t start = get_be(p->hdr + 1, wa), len = get_be(p->hdr + 1 + wa, wb);
    if (len == 0)
        return fail(p, PF_PATCH_EZERO, 0);
    if ((start >> 63) || (len >> 63) || start > p->basis_size || len > p->basis_size - start)
        return fail(p, PF_PATCH_ERANGE, 0);
    p->state = ST_HDR;
    return do_copy(p, start, len);
}

int pf_patch_feed(pf_patch *p, const unsigned char *buf, size_t len, size_t *consumed)
{
    size_t i = 0;
    int rc = PF_PATCH_MORE;

    if (!p || (len && !buf))
        return PF_PATCH_ESTATE;
    if (p->state == ST_DONE || p->state == ST_ERR) {
        rc = PF_PATCH_ESTATE;
        goto out;
    }
    while (i < len) {
        if (p->state == ST_LIT) {
            size_t k = len - i < p->lit_left ? len - i : (size_t)p->lit_left;
            if ((rc = out_write(p, buf + i, k)) != 0)
                goto out;
            i += k;
            p->lit_left -= k;
            if (p->lit_left == 0)
                p->state = ST_HDR;
            continue;
        }
        if (p->hlen == 0) {
            unsigned op = buf[i];
            p->cmd_off = p->fed + i;
            p->hdr[0] = (unsigned char)op;
            p->hlen = 1;
            i++;
            if (op == 0) {
                p->state = ST_DONE;
                p->hlen = 0;
                rc = PF_PATCH_DONE;
                goto out;
            }
            if (op <= 0x40) {
                p->commands++;
                p->lit_left = op;
                p->state = ST_LIT;
                p->hlen = 0;
                continue;
            }
            if (op <= 0x44) {
                p->need = 1 + ((size_t)1 << (op - 0x41));
            } else if (op <= 0x54) {
                unsigned c = op - 0x45;
                p->need = 1 + ((size_t)1 << (c / 4)) + ((size_t)1 << (c % 4));
            } else {
                rc = fail(p, PF_PATCH_EBOGUS, 0);
                goto out;
            }
            continue;
        }
        size_t k = p->need - p->hlen;
        if (k > len - i)
            k = len - i;
        memcpy(p->hdr + p->hlen, buf + i, k);
        p->hlen += k;
        i += k;
        if (p->hlen == p->need) {
            p->hlen = 0;
            if ((rc = run_header(p)) != 0)
                goto out;
        }
    }
out:
    if (consumed)
        *consumed = i;
    p->fed += i;
    return rc;
}

int pf_patch_finish(pf_patch *p)
{
    if (!p)
        return PF_PATCH_ESTATE;
    if (p->sparse && ftruncate(p->out_fd, (off_t)p->pos) != 0)
        return fail(p, PF_PATCH_EWRITE, errno);
    return 0;
}

const char *pf_patch_error(const pf_patch *p, uint64_t *offset, int *err_no)
{
    if (offset)
        *offset = p ? p->cmd_off : 0;
    if (err_no)
        *err_no = p ? p->err_no : 0;
    if (!p)
        return "no patch state";
    switch (p->err) {
    case PF_PATCH_EBOGUS:
        return "bogus command (reserved opcode)";
    case PF_PATCH_EZERO:
        return "command with length 0";
    case PF_PATCH_ERANGE:
        return "COPY outside the basis, or a parameter of 2^63 or more";
    case PF_PATCH_EREAD:
        return "reading the basis failed";
    case PF_PATCH_EWRITE:
        return "writing the output failed";
    case PF_PATCH_ENOMEM:
        return "out of memory";
    default:
        return "no error";
    }
}

uint64_t pf_patch_written(const pf_patch *p)
{
    return p ? p->pos : 0;
}

uint64_t pf_patch_commands(const pf_patch *p)
{
    return p ? p->commands : 0;
}
