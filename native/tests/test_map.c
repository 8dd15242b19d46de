/* C unit tests for pf_map.c against dense per-cluster references. Run under ASan/UBSan by
 * `make -C native test`. */
#include "pf_map.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static uint64_t rng(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static void test_bat_nonzero(void)
{
    uint64_t s = 7;
    for (int round = 0; round < 200; round++) {
        size_t n = (size_t)(rng(&s) % 3000);
        /* one byte in: the entries are read unaligned */
        unsigned char *raw = xmalloc(4 * n + 1);
        uint32_t *ref = xmalloc(4 * n), *ov = xmalloc(4 * n), *oe = xmalloc(4 * n);
        int density = (int)(rng(&s) % 4);
        for (size_t i = 0; i < n; i++) {
            uint32_t e = 0;
            uint64_t r = rng(&s);
            if ((int)(r % 4) < density)
                e = (r >> 8) % 5 == 0 ? 0xffffffffu : (uint32_t)(r >> 16) % 1000;
            ref[i] = e;
            raw[1 + 4 * i] = (unsigned char)e;  /* little-endian on the disk */
            raw[2 + 4 * i] = (unsigned char)(e >> 8);
            raw[3 + 4 * i] = (unsigned char)(e >> 16);
            raw[4 + 4 * i] = (unsigned char)(e >> 24);
        }
        uint32_t first = (uint32_t)(rng(&s) % 100000);
        int64_t lo = 10, hi = 900;
        size_t bad = 12345;
        size_t k = pf_bat_nonzero(raw + 1, n, first, lo, hi, ov, oe, &bad);
        size_t j = 0, rbad = 0;
        int ok = 1;
        for (size_t i = 0; i < n; i++) {
            if (!ref[i])
                continue;
            if (j >= k || ov[j] != first + i || oe[j] != ref[i])
                ok = 0;
            if (ref[i] < lo || ref[i] > hi)
                rbad++;
            j++;
        }
        CHECK(ok && j == k && bad == rbad, "round %d: k %zu j %zu bad %zu/%zu", round, k, j,
              bad, rbad);
        free(raw);
        free(ref);
        free(ov);
        free(oe);
    }
}

#define NCL_MAX 200000u  /* crosses three merge windows */

/* A random chain: per level, a sorted distinct subset of [0, ncl + 50) (some past the end). */
typedef struct {
    size_t nlevels;
    pf_map_level lv[6];
    uint32_t *v[6], *e[6];
} chain;

static void make_chain(chain *c, uint64_t *s, uint64_t ncl, int with_zero)
{
    c->nlevels = 1 + (size_t)(rng(s) % (with_zero ? 6 : 4));
    for (size_t l = 0; l < c->nlevels; l++) {
        uint64_t span = ncl + 50;
        c->v[l] = xmalloc(4 * span);
        c->e[l] = xmalloc(4 * span);
        size_t n = 0;
        int mode = (int)(rng(s) % 3);  /* sparse, runs, dense */
        uint64_t next = 0;
        for (uint64_t x = 0; x < span; x++) {
            int take;
            if (mode == 0)
                take = rng(s) % 97 == 0;
            else if (mode == 1)
                take = (x / (1 + rng(s) % 3000 + 1)) % 2 == 0 && rng(s) % 50;
            else
                take = rng(s) % 8 != 0;
            if (!take)
                continue;
            c->v[l][n] = (uint32_t)x;
            /* mostly consecutive file clusters, sometimes a jump */
            next = rng(s) % 40 == 0 ? next + 1 + rng(s) % 5000 : next + 1;
            c->e[l][n] = (uint32_t)next;
            n++;
        }
        int zero = with_zero && l % 2 == 1;  /* odd levels: salvage zero masks */
        c->lv[l] = (pf_map_level){c->v[l], zero ? NULL : c->e[l], n,
                                  zero ? 1 : (rng(s) % 2 ? 4096 : 512),
                                  zero ? 255 : (int)l};
    }
}

static void free_chain(chain *c)
{
    for (size_t l = 0; l < c->nlevels; l++) {
        free(c->v[l]);
        free(c->e[l]);
    }
}

typedef struct {
    uint32_t *vstart, *count;
    uint8_t *level;
    int64_t *offset;
    size_t n;
} merged;

static void merge(const chain *c, uint64_t ncl, uint64_t cs, merged *m)
{
    size_t cap = 0;
    for (size_t l = 0; l < c->nlevels; l++)
        cap += c->lv[l].n;
    m->vstart = xmalloc(4 * cap);
    m->count = xmalloc(4 * cap);
    m->level = xmalloc(cap);
    m->offset = xmalloc(8 * cap);
    m->n = pf_map_merge(c->lv, c->nlevels, ncl, cs, m->vstart, m->count, m->level, m->offset,
                        cap);
}

static void free_merged(merged *m)
{
    free(m->vstart);
    free(m->count);
    free(m->level);
    free(m->offset);
}

/* Dense model: owner (-1 none) and offset of every cluster. */
static void dense(const chain *c, uint64_t ncl, uint64_t cs, int *own, int64_t *off)
{
    for (uint64_t x = 0; x < ncl; x++)
        own[x] = -1;
    for (size_t l = 0; l < c->nlevels; l++)
        for (size_t i = 0; i < c->lv[l].n; i++) {
            uint64_t x = c->lv[l].v[i];
            if (x >= ncl)
                continue;
            own[x] = c->lv[l].level;
            off[x] = c->lv[l].e ? (int64_t)(c->lv[l].e[i] * c->lv[l].unit) : (int64_t)(x * cs);
        }
}

static void test_merge(void)
{
    uint64_t s = 11;
    for (int round = 0; round < 60; round++) {
        uint64_t ncl = 1 + rng(&s) % NCL_MAX, cs = 4096;
        chain c;
        make_chain(&c, &s, ncl, round % 3 == 0);
        merged m;
        merge(&c, ncl, cs, &m);
        int *own = xmalloc(sizeof(int) * ncl);
        int64_t *off = xmalloc(8 * ncl);
        dense(&c, ncl, cs, own, off);
        int ok = m.n != (size_t)-1;
        uint64_t x = 0;
        for (size_t i = 0; ok && i < m.n; i++) {
            if (m.vstart[i] < x || m.count[i] == 0)
                ok = 0;  /* sorted, not empty */
            for (; ok && x < m.vstart[i]; x++)
                ok = own[x] == -1;
            for (uint32_t k = 0; ok && k < m.count[i]; k++, x++)
                ok = own[x] == m.level[i] && off[x] == m.offset[i] + (int64_t)(k * cs);
            if (ok && i && m.vstart[i - 1] + m.count[i - 1] == m.vstart[i] &&
                m.level[i - 1] == m.level[i] &&
                m.offset[i - 1] + (int64_t)(m.count[i - 1] * cs) == m.offset[i])
                ok = 0;  /* maximal: this extent continues the previous one */
        }
        for (; ok && x < ncl; x++)
            ok = own[x] == -1;
        CHECK(ok, "round %d: %zu extents, wrong at cluster %llu", round, m.n,
              (unsigned long long)x);
        free(own);
        free(off);
        free_merged(&m);
        free_chain(&c);
    }
    /* nothing mapped, and no levels at all */
    merged m;
    chain c = {0};
    merge(&c, 100, 512, &m);
    CHECK(m.n == 0, "no levels: %zu", m.n);
    free_merged(&m);
}

/* Dense source of cluster x: key (-1 zeros) and offset. */
static void dense_source(const int *own, const int64_t *off, const int64_t *key, int raw,
                         uint64_t x, uint64_t cs, int64_t *k, int64_t *o)
{
    if (own[x] == 255 || (own[x] < 0 && !raw)) {
        *k = -1;
        *o = 0;
    } else if (own[x] < 0) {
        *k = key[0];
        *o = (int64_t)(x * cs);
    } else {
        *k = key[own[x]];
        *o = off[x];
    }
}

static void test_candidates(void)
{
    uint64_t s = 23;
    for (int round = 0; round < 80; round++) {
        uint64_t cs = 4096;
        uint64_t ncl_a = 1 + rng(&s) % NCL_MAX, ncl_b = 1 + rng(&s) % NCL_MAX;
        chain ca, cb;
        make_chain(&ca, &s, ncl_a, round % 4 == 0);
        /* b shares a's lower levels often (snapshots of one chain) */
        make_chain(&cb, &s, ncl_b, round % 5 == 0);
        if (round % 2)
            for (size_t l = 0; l < cb.nlevels && l < ca.nlevels; l++)
                if (rng(&s) % 3) {
                    free(cb.v[l]);
                    free(cb.e[l]);
                    cb.v[l] = xmalloc(4 * ca.lv[l].n + 4);
                    cb.e[l] = xmalloc(4 * ca.lv[l].n + 4);
                    if (ca.lv[l].n) {
                        memcpy(cb.v[l], ca.v[l], 4 * ca.lv[l].n);
                        memcpy(cb.e[l], ca.e[l], 4 * ca.lv[l].n);
                    }
                    cb.lv[l] = ca.lv[l];
                    cb.lv[l].v = cb.v[l];
                    cb.lv[l].e = ca.lv[l].e ? cb.e[l] : NULL;
                }
        merged ma, mb;
        merge(&ca, ncl_a, cs, &ma);
        merge(&cb, ncl_b, cs, &mb);
        int64_t ka[6], kb[6];
        for (int l = 0; l < 6; l++) {  /* shared files on the shared levels */
            ka[l] = l;
            kb[l] = (round % 2 && rng(&s) % 4) ? l : 10 + l;
        }
        int raw_a = (int)(rng(&s) % 3 == 0), raw_b = raw_a ? (int)(rng(&s) % 4 != 0) : 0;
        pf_map_view va = {ma.vstart, ma.count, ma.level, ma.offset, ma.n, ka, 255, raw_a};
        pf_map_view vb = {mb.vstart, mb.count, mb.level, mb.offset, mb.n, kb, 255, raw_b};
        uint64_t common = ncl_a < ncl_b ? ncl_a : ncl_b;
        size_t cap = 2 * (ma.n + mb.n) + 1;
        int64_t *first = xmalloc(8 * cap), *runs = xmalloc(8 * cap);
        size_t k = pf_candidate_runs(&va, &vb, common, cs, first, runs, cap);
        int *oa = xmalloc(sizeof(int) * ncl_a), *ob = xmalloc(sizeof(int) * ncl_b);
        int64_t *fa = xmalloc(8 * ncl_a), *fb = xmalloc(8 * ncl_b);
        dense(&ca, ncl_a, cs, oa, fa);
        dense(&cb, ncl_b, cs, ob, fb);
        int ok = k != (size_t)-1;
        size_t r = 0;
        uint64_t x;
        for (x = 0; ok && x < common; x++) {
            int64_t k1, o1, k2, o2;
            dense_source(oa, fa, ka, raw_a, x, cs, &k1, &o1);
            dense_source(ob, fb, kb, raw_b, x, cs, &k2, &o2);
            int differ = k1 != k2 || (k1 >= 0 && o1 != o2);
            while (r < k && (uint64_t)(first[r] + runs[r]) <= x)
                r++;
            int in = r < k && (uint64_t)first[r] <= x;
            ok = differ == in;
        }
        for (size_t i = 0; ok && i < k; i++)  /* sorted, not empty, not touching, inside */
            ok = runs[i] > 0 && (uint64_t)(first[i] + runs[i]) <= common &&
                 (i == 0 || first[i] > first[i - 1] + runs[i - 1]);
        CHECK(ok, "round %d: %zu runs, wrong at cluster %llu", round, k,
              (unsigned long long)(x ? x - 1 : 0));
        free(first);
        free(runs);
        free(oa);
        free(ob);
        free(fa);
        free(fb);
        free_merged(&ma);
        free_merged(&mb);
        free_chain(&ca);
        free_chain(&cb);
    }
}

void test_map_all(void)
{
    test_bat_nonzero();
    test_merge();
    test_candidates();
}
