/* C unit tests for pf_dedup.c: the hash table (collisions, growth, memory limit, sampling
 * switch) and the block scanner. Run under ASan/UBSan by `make -C native test`. */
#include "pf_dedup.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Hash i of a reproducible pseudo-random set. */
static void nth_hash(uint64_t i, uint64_t *lo, uint64_t *hi)
{
    uint64_t s = i * 2 + 1;
    *lo = splitmix(&s);
    *hi = splitmix(&s);
}

static void test_bad_args(void)
{
    CHECK(pf_ddt_new(PF_DDT_MIN_BYTES - 1, 0) == NULL, "limit below minimum");
    CHECK(pf_ddt_new(1 << 20, 64) == NULL, "shift 64");
    CHECK(pf_dedup_new(3000, 131072, 1 << 20, 1 << 20, 0, 1) == NULL, "small does not divide large");
    CHECK(pf_dedup_new(4096, 131072, 1 << 20, 1 << 20, 0, 0) == NULL, "sample_every 0");
    CHECK(pf_dedup_new(512, 512 * 257, 1 << 20, 1 << 20, 0, 1) == NULL, "> 256 small per large");
    CHECK(pf_dedup_feed(NULL, NULL, 0, NULL, 0) == -1, "NULL scanner");
}

/* Exact mode: counts, entries, refs and the histogram against the known multiplicities. */
static void test_exact_counts(void)
{
    pf_ddt *t = pf_ddt_new(64 << 20, 0);
    const uint64_t n = 5000;
    uint64_t want_refs = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t lo, hi;
        nth_hash(i, &lo, &hi);
        for (uint64_t k = 0; k <= i % 9; k++) { /* multiplicity 1..9 */
            CHECK(pf_ddt_add(t, lo, hi) == 1, "add %llu", (unsigned long long)i);
            want_refs++;
        }
    }
    CHECK(pf_ddt_entries(t) == n, "entries %llu", (unsigned long long)pf_ddt_entries(t));
    CHECK(pf_ddt_refs(t) == want_refs, "refs");
    CHECK(pf_ddt_offered(t) == want_refs, "offered");
    CHECK(pf_ddt_shift(t) == 0, "exact mode stays exact");
    unsigned bad = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t lo, hi;
        nth_hash(i, &lo, &hi);
        bad += pf_ddt_count(t, lo, hi) != i % 9 + 1;
    }
    CHECK(bad == 0, "%u wrong counts", bad);
    uint64_t lo, hi;
    nth_hash(n + 7, &lo, &hi);
    CHECK(pf_ddt_count(t, lo, hi) == 0, "absent hash");
    /* multiplicities 1..9: bucket 0 = {1}, 1 = {2,3}, 2 = {4..7}, 3 = {8,9} */
    uint64_t e[PF_DDT_BUCKETS], r[PF_DDT_BUCKETS];
    pf_ddt_histogram(t, e, r);
    uint64_t per = n / 9; /* 5000 = 9 * 555 + 5: multiplicities 1..5 get one more */
    CHECK(e[0] == per + 1 && r[0] == per + 1, "bucket 0: %llu", (unsigned long long)e[0]);
    CHECK(e[1] == 2 * per + 2 && r[1] == 5 * per + 5, "bucket 1");
    CHECK(e[2] == 4 * per + 2 && r[2] == 22 * per + 9, "bucket 2: %llu %llu",
          (unsigned long long)e[2], (unsigned long long)r[2]);
    CHECK(e[3] == 2 * per && r[3] == 17 * per, "bucket 3");
    CHECK(e[4] == 0, "bucket 4 empty");
    pf_ddt_free(t);
}

/* Collisions: every hash has the same home slot (same hi), including the last slot so probe
 * runs wrap around; and hashes equal in lo but not hi. */
static void test_collisions(void)
{
    pf_ddt *t = pf_ddt_new(1 << 20, 0);
    const uint64_t n = 300;
    for (uint64_t i = 0; i < n; i++) {
        CHECK(pf_ddt_add(t, i << 8, UINT64_MAX) == 1, "same-home add");
        CHECK(pf_ddt_add(t, 12345, i) == 1, "same-lo add");
    }
    for (uint64_t i = 0; i < n; i += 3)
        pf_ddt_add(t, i << 8, UINT64_MAX);
    unsigned bad = 0;
    for (uint64_t i = 0; i < n; i++) {
        bad += pf_ddt_count(t, i << 8, UINT64_MAX) != (i % 3 ? 1u : 2u);
        bad += pf_ddt_count(t, 12345, i) != 1;
    }
    CHECK(bad == 0, "%u wrong counts under collisions", bad);
    CHECK(pf_ddt_entries(t) == 2 * n, "entries");
    CHECK(pf_ddt_count(t, 1, UINT64_MAX) == 0, "absent in a full run");
    pf_ddt_free(t);
}

/* Growth: capacity doubles, load stays <= 0.7, peak (old + new during a resize) <= limit. */
static void test_growth(void)
{
    const uint64_t limit = 32 << 20; /* 2^19 slots + the 2^18 before: 18 MiB */
    pf_ddt *t = pf_ddt_new(limit, 0);
    uint64_t cap0 = pf_ddt_capacity(t);
    const uint64_t n = 200000;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t lo, hi;
        nth_hash(i, &lo, &hi);
        pf_ddt_add(t, lo, hi);
    }
    CHECK(pf_ddt_shift(t) == 0, "fits: exact");
    CHECK(pf_ddt_capacity(t) > cap0, "grew");
    CHECK(pf_ddt_entries(t) * 10 <= pf_ddt_capacity(t) * 7, "load");
    CHECK(pf_ddt_peak_bytes(t) <= limit, "peak %llu", (unsigned long long)pf_ddt_peak_bytes(t));
    unsigned bad = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t lo, hi;
        nth_hash(i, &lo, &hi);
        bad += pf_ddt_count(t, lo, hi) != 1;
    }
    CHECK(bad == 0, "%u lost after growth", bad);
    pf_ddt_free(t);
}

/* The table outgrows its limit: the shift rises, the kept set is exactly the hashes whose low
 * `shift` bits are zero, each with its exact count, and the estimates are near the truth. */
static void test_sampling_switch(void)
{
    const uint64_t limit = 64 << 10;
    pf_ddt *t = pf_ddt_new(limit, 0);
    const uint64_t n = 400000;
    uint64_t refs = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t lo, hi;
        nth_hash(i, &lo, &hi);
        for (uint64_t k = 0; k <= i % 4; k++) { /* multiplicity 1..4, mean 2.5 */
            CHECK(pf_ddt_add(t, lo, hi) >= 0, "add");
            refs++;
        }
    }
    unsigned s = pf_ddt_shift(t);
    CHECK(s > 0, "switched to sampling");
    CHECK(pf_ddt_peak_bytes(t) <= limit, "peak %llu", (unsigned long long)pf_ddt_peak_bytes(t));
    CHECK(pf_ddt_offered(t) == refs, "offered");
    uint64_t mask = (UINT64_C(1) << s) - 1, want_entries = 0, want_refs = 0;
    unsigned bad = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t lo, hi;
        nth_hash(i, &lo, &hi);
        uint64_t want = (lo & mask) ? 0 : i % 4 + 1;
        want_entries += want != 0;
        want_refs += want;
        bad += pf_ddt_count(t, lo, hi) != want;
    }
    CHECK(bad == 0, "%u kept counts wrong", bad);
    CHECK(pf_ddt_entries(t) == want_entries && pf_ddt_refs(t) == want_refs, "kept totals");
    double est = (double)pf_ddt_entries(t) * (double)(UINT64_C(1) << s);
    CHECK(est > 0.85 * n && est < 1.15 * n, "distinct estimate %.0f of %llu", est,
          (unsigned long long)n);
    double ratio = (double)pf_ddt_refs(t) / (double)pf_ddt_entries(t);
    CHECK(ratio > 2.3 && ratio < 2.7, "dedup ratio estimate %.3f (true 2.5)", ratio);
    pf_ddt_free(t);
}

/* Starting in sampled mode: only qualifying hashes are counted. */
static void test_initial_shift(void)
{
    pf_ddt *t = pf_ddt_new(1 << 20, 3);
    CHECK(pf_ddt_add(t, 8, 1) == 1, "low 3 bits zero: kept");
    CHECK(pf_ddt_add(t, 9, 1) == 0, "sampled out");
    CHECK(pf_ddt_entries(t) == 1 && pf_ddt_offered(t) == 2, "counts");
    CHECK(pf_ddt_count(t, 9, 1) == 0, "sampled out is absent");
    pf_ddt_free(t);
}

/* The scanner's large-block hash: XXH3-128 over the small blocks' hashes. */
static void large_hash(const unsigned char *p, size_t n, size_t small, uint64_t *out)
{
    uint64_t list[2 * 256];
    size_t k = 0;
    for (size_t s = 0; s < n; s += small, k++)
        pf_dedup_hash(p + s, n - s < small ? n - s : small, &list[2 * k]);
    pf_dedup_hash((const unsigned char *)list, 16 * k, out);
}

/* Scanner: a buffer of 6 large blocks of 64 KiB (16 small of 4 KiB each) plus a 5000-byte
 * tail: zero blocks, repeated small blocks, repeated large blocks, picks. */
static void test_scanner(void)
{
    const size_t S = 4096, L = 65536, len = 6 * L + 5000;
    unsigned char *buf = calloc(1, len);
    uint64_t seed = 42;
    /* block 0: 16 distinct random small blocks; block 1 = block 0; block 2: zeros;
     * block 3: small block 0 of block 0 repeated 16 times; block 4: half zero, half random;
     * block 5 = block 4; tail: 4096 random + 904 zero bytes (one short small block, zero). */
    for (size_t i = 0; i < L; i += 8) {
        uint64_t v = splitmix(&seed);
        memcpy(buf + i, &v, 8);
    }
    memcpy(buf + L, buf, L);
    for (size_t k = 0; k < 16; k++)
        memcpy(buf + 3 * L + k * S, buf, S);
    for (size_t i = L / 2; i < L; i += 8) {
        uint64_t v = splitmix(&seed);
        memcpy(buf + 4 * L + i, &v, 8);
    }
    memcpy(buf + 5 * L, buf + 4 * L, L);
    for (size_t i = 0; i < S; i += 8) {
        uint64_t v = splitmix(&seed);
        memcpy(buf + 6 * L + i, &v, 8);
    }
    pf_dedup *d = pf_dedup_new(S, L, 1 << 20, 1 << 20, 0, 1);
    uint64_t picks[3 * 7];
    CHECK(pf_dedup_feed(d, buf, len, picks, 5) == -1, "too few pick slots");
    pf_dedup_free(d);

    d = pf_dedup_new(S, L, 1 << 20, 1 << 20, 0, 1);
    int64_t np = pf_dedup_feed(d, buf, len, picks, 7);
    CHECK(np == 6, "picks %lld", (long long)np); /* all non-zero large blocks */
    const uint64_t want_idx[] = {0, 1, 3, 4, 5, 6};
    for (int k = 0; k < 6 && k < np; k++)
        CHECK(picks[3 * k] == want_idx[k], "pick %d at %llu", k, (unsigned long long)picks[3 * k]);
    uint64_t h[2];
    large_hash(buf, L, S, h);
    CHECK(picks[1] == h[0] && picks[2] == h[1] && picks[4] == h[0], "pick hashes");
    CHECK(pf_dedup_blocks(d, 0) == 6 * 16 + 2, "small blocks %llu",
          (unsigned long long)pf_dedup_blocks(d, 0));
    /* zero small: block 2 (16), block 4 and 5 (8 each), tail's short block (1) */
    CHECK(pf_dedup_zero(d, 0) == 16 + 8 + 8 + 1, "small zero %llu",
          (unsigned long long)pf_dedup_zero(d, 0));
    CHECK(pf_dedup_blocks(d, 1) == 7 && pf_dedup_zero(d, 1) == 1, "large counts");
    pf_ddt *ts = pf_dedup_table(d, 0), *tl = pf_dedup_table(d, 1);
    /* distinct non-zero small: 16 (block 0) + 8 (block 4) + 1 (tail) */
    CHECK(pf_ddt_entries(ts) == 25, "small entries %llu", (unsigned long long)pf_ddt_entries(ts));
    CHECK(pf_ddt_refs(ts) == 16 + 16 + 16 + 8 + 8 + 1, "small refs");
    pf_dedup_hash(buf, S, h);
    CHECK(pf_ddt_count(ts, h[0], h[1]) == 18, "small block 0 x18");
    CHECK(pf_ddt_entries(tl) == 4 && pf_ddt_refs(tl) == 6, "large entries/refs");
    pf_dedup_free(d);

    /* sample_every: picks are exactly the blocks whose (lo >> 32) % every == 0 */
    d = pf_dedup_new(S, L, 1 << 20, 1 << 20, 0, 3);
    np = pf_dedup_feed(d, buf, len, picks, 7);
    int64_t want = 0;
    for (size_t b = 0; b < 7; b++) {
        size_t n = b < 6 ? L : 5000;
        large_hash(buf + b * L, n, S, h);
        want += b != 2 && (h[0] >> 32) % 3 == 0;
    }
    CHECK(np == want, "every-3 picks %lld, want %lld", (long long)np, (long long)want);
    pf_dedup_free(d);
    free(buf);
}

struct feeder {
    pf_dedup *d;
    const unsigned char *buf;
    size_t len;
    int rounds, fails;
};

static void *feed_loop(void *arg)
{
    struct feeder *f = arg;
    uint64_t picks[3 * 64];
    for (int r = 0; r < f->rounds; r++)
        f->fails += pf_dedup_feed(f->d, f->buf, f->len, picks, 64) < 0;
    return NULL;
}

/* Two threads feeding one scanner at once count the same as one thread feeding the same
 * buffers. */
static void test_threads(void)
{
    const size_t len = 1 << 20;
    unsigned char *bufs[2];
    uint64_t seed = 7;
    for (int k = 0; k < 2; k++) {
        bufs[k] = malloc(len);
        for (size_t i = 0; i < len; i += 8) {
            uint64_t v = splitmix(&seed);
            memcpy(bufs[k] + i, &v, 8);
        }
    }
    pf_dedup *one = pf_dedup_new(4096, 131072, 1 << 20, 1 << 16, 0, 2);
    pf_dedup *two = pf_dedup_new(4096, 131072, 1 << 20, 1 << 16, 0, 2);
    struct feeder f1 = {one, bufs[0], len, 20, 0}, f2 = {one, bufs[1], len, 20, 0};
    feed_loop(&f1);
    feed_loop(&f2);
    struct feeder g1 = {two, bufs[0], len, 20, 0}, g2 = {two, bufs[1], len, 20, 0};
    pthread_t t1, t2;
    pthread_create(&t1, NULL, feed_loop, &g1);
    pthread_create(&t2, NULL, feed_loop, &g2);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    CHECK(f1.fails + f2.fails + g1.fails + g2.fails == 0, "feed failures");
    for (int w = 0; w < 2; w++) {
        pf_ddt *a = pf_dedup_table(one, w), *b = pf_dedup_table(two, w);
        CHECK(pf_ddt_entries(a) == pf_ddt_entries(b) && pf_ddt_refs(a) == pf_ddt_refs(b) &&
              pf_ddt_offered(a) == pf_ddt_offered(b), "table %d differs across threads", w);
        CHECK(pf_dedup_blocks(one, w) == pf_dedup_blocks(two, w), "blocks %d", w);
    }
    CHECK(pf_ddt_entries(pf_dedup_table(one, 0)) == 512 && pf_ddt_refs(pf_dedup_table(one, 0)) == 512 * 20,
          "512 distinct small blocks, 20 times each");
    pf_dedup_free(one);
    pf_dedup_free(two);
    free(bufs[0]);
    free(bufs[1]);
}

/* Every vector variant the CPU has gives the baseline's hash, at every length 0..600 and a
 * few large ones, at odd alignments. */
static void test_hash_variants(void)
{
    const size_t big = 300000;
    unsigned char *buf = malloc(big + 8);
    uint64_t seed = 3;
    for (size_t i = 0; i < big + 8; i++)
        buf[i] = (unsigned char)splitmix(&seed);
    unsigned bad = 0, ran = 0;
    for (int v = 1; v <= 2; v++) {
        uint64_t a[2], b[2];
        if (pf_dedup_hash_variant(v, buf, 1, a) < 0)
            continue;
        ran++;
        for (size_t n = 0; n <= 600; n++) {
            pf_dedup_hash_variant(0, buf + n % 7, n, a);
            pf_dedup_hash_variant(v, buf + n % 7, n, b);
            bad += a[0] != b[0] || a[1] != b[1];
        }
        const size_t lens[] = {4096, 4097, 131072, 200003, big};
        for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
            pf_dedup_hash_variant(0, buf + 3, lens[k], a);
            pf_dedup_hash_variant(v, buf + 3, lens[k], b);
            bad += a[0] != b[0] || a[1] != b[1];
        }
    }
    uint64_t a[2], b[2];
    pf_dedup_hash_variant(0, buf, 4096, a);
    pf_dedup_hash(buf, 4096, b);
    CHECK(a[0] == b[0] && a[1] == b[1], "dispatch differs from baseline");
    CHECK(bad == 0, "%u variant hashes differ (%u variants ran)", bad, ran);
    CHECK(pf_dedup_hash_variant(9, buf, 1, a) == -1, "unknown variant");
    free(buf);
}

void test_dedup_all(void)
{
    test_hash_variants();
    test_bad_args();
    test_exact_counts();
    test_collisions();
    test_growth();
    test_sampling_switch();
    test_initial_shift();
    test_scanner();
    test_threads();
}
