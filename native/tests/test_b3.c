/* pf_b3: feeding pairs equals feeding bytes; pf_diff_window flags and pairs. */
#define _DEFAULT_SOURCE /* mmap, fileno */
#include "pf_b3.h"

#include <blake3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "check.h"

static unsigned long long rng = 0x9e3779b97f4a7c15ULL;
static unsigned rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng >> 11);
}

static void ref_digest(const unsigned char *data, size_t len, unsigned char out[32])
{
    blake3_hasher h;
    blake3_hasher_init(&h);
    blake3_hasher_update(&h, data, len);
    blake3_hasher_finalize(&h, out, 32);
}

/* The stream data[0..len) fed as: `lead` bytes, then pieces of `piece` bytes by pairs where
 * pairable (some without data: proves the pair is used), the rest by bytes. */
static void feed_case(const unsigned char *data, size_t len, size_t lead, size_t piece)
{
    unsigned char want[32], got[32];
    ref_digest(data, len, want);
    void *st = malloc(pf_b3_state_size());
    pf_b3_init(st);
    if (lead > len)
        lead = len;
    pf_b3_update(st, data, lead);
    size_t rest = len - lead, np = (rest + piece - 1) / piece;
    unsigned char *pairs = calloc(np ? np : 1, 64), *have = calloc(np ? np : 1, 1);
    size_t paired = 0;
    for (size_t j = 0; j < np; j++) {
        size_t n = rest - j * piece < piece ? rest - j * piece : piece;
        if (n == piece && pf_b3_pair(data + lead + j * piece, n, lead + j * piece,
                                      pairs + 64 * j) == 0) {
            have[j] = 1;
            paired++;
        }
    }
    CHECK(pf_b3_feed(st, data + lead, rest, piece, pairs, have) == 0, "feed");
    CHECK(pf_b3_count(st) == len, "count %llu != %zu", (unsigned long long)pf_b3_count(st), len);
    pf_b3_final(st, got);
    CHECK(memcmp(want, got, 32) == 0, "digest len %zu lead %zu piece %zu (%zu paired)", len, lead,
          piece, paired);
    if (lead == 0 && paired == np && np > 0) { /* every piece by its pair: no data needed */
        pf_b3_init(st);
        CHECK(pf_b3_feed(st, NULL, rest, piece, pairs, have) == 0, "feed without data");
        pf_b3_final(st, got);
        CHECK(memcmp(want, got, 32) == 0, "pairs only, len %zu piece %zu", len, piece);
    }
    free(pairs);
    free(have);
    free(st);
}

static void test_feed(void)
{
    size_t max = 3 << 20;
    unsigned char *data = malloc(max);
    for (size_t i = 0; i < max; i++)
        data[i] = (unsigned char)rnd();
    const size_t pieces[] = {2048, 4096, 65536, 1 << 20, 3000, 1024};
    const size_t lens[] = {0, 1, 1024, 2048, 2049, 4096, 65536 * 3, 65536 * 3 + 17, 1 << 20,
                           (1 << 20) + 1, 2 << 20, 3 << 20, (3 << 20) - 5};
    for (size_t p = 0; p < sizeof pieces / sizeof *pieces; p++)
        for (size_t l = 0; l < sizeof lens / sizeof *lens; l++) {
            feed_case(data, lens[l], 0, pieces[p]);
            feed_case(data, lens[l], 1024, pieces[p]);
            feed_case(data, lens[l], pieces[p], pieces[p]);
            feed_case(data, lens[l], 5, pieces[p]);
        }
    for (int r = 0; r < 40; r++)
        feed_case(data, rnd() % max, (rnd() % 4) * 4096, (size_t)2048 << (rnd() % 8));
    CHECK(pf_b3_pairable(0, 2048) && pf_b3_pairable(1 << 20, 1 << 20), "pairable");
    CHECK(!pf_b3_pairable(512, 1024) && !pf_b3_pairable(2048, 4096) &&
          !pf_b3_pairable(0, 3072), "not pairable");
    unsigned char pair[64];
    CHECK(pf_b3_pair(data, 4096, 2048, pair) == -1, "misaligned pair refused");
    void *st = malloc(pf_b3_state_size());
    pf_b3_init(st);
    unsigned char have1 = 0;
    CHECK(pf_b3_feed(st, NULL, 4096, 4096, pair, &have1) == -1, "no pair and no data");
    free(st);
    free(data);
}

/* `len` bytes as a read-only shared mapping of a temporary file (NULL for len 0). */
static unsigned char *file_map(const unsigned char *data, size_t len)
{
    if (len == 0)
        return NULL;
    FILE *f = tmpfile();
    CHECK(f != NULL && fwrite(data, 1, len, f) == len && fflush(f) == 0, "temporary file");
    void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fileno(f), 0);
    CHECK(m != MAP_FAILED, "mmap");
    fclose(f); /* the mapping keeps the file */
    return m;
}

/* Two disks differing in chosen clusters: flags, and the new disk's digest from the window's
 * pairs equals BLAKE3 of its bytes (pairs reused for equal pieces). With `mapped`, both disks
 * are file mappings whose compared pages the window gives back: everything read afterwards
 * (the digests below, the bytes themselves) is still the disks' bytes. */
static void window_case_m(size_t c, size_t per, size_t n, size_t olen, size_t nlen, int stride,
                          int mapped, size_t probe)
{
    unsigned char *old = malloc(olen + 1), *new_ = malloc(nlen + 1);
    for (size_t i = 0; i < olen; i++)
        old[i] = (unsigned char)rnd();
    for (size_t i = 0; i < nlen; i++)
        new_[i] = i < olen ? old[i] : (unsigned char)rnd();
    unsigned char *maybe = malloc(n), *flags = calloc(n, 1), *want = malloc(n);
    for (size_t k = 0; k < n; k++) {
        maybe[k] = rnd() % 8 != 0;
        size_t s = k * c, e = (k + 1) * c < nlen ? (k + 1) * c : nlen;
        if (maybe[k] && rnd() % 5 == 0 && e > s)
            new_[s + rnd() % (e - s)] ^= 0x5a;
        if (!maybe[k]) /* proven equal: make it so */
            for (size_t i = s; i < e && i < olen; i++)
                new_[i] = old[i];
        else if (rnd() % 6 == 0) { /* NEW's cluster all zero; OLD's too, every other time */
            int both = rnd() % 2;
            for (size_t i = s; i < e; i++) {
                new_[i] = 0;
                if (both && i < olen)
                    old[i] = 0;
            }
        }
    }
    /* what the window must find: changed candidates, and those of them zero in NEW */
    unsigned char *want_zero = malloc(n), *zero = malloc(n);
    memset(zero, 0x77, n); /* left alone where not a candidate */
    for (size_t k = 0; k < n; k++) {
        size_t s = k * c, e = (k + 1) * c < nlen ? (k + 1) * c : nlen;
        want[k] = maybe[k] && (e > olen || memcmp(old + s, new_ + s, e - s) != 0);
        int z = 1;
        for (size_t i = s; i < e && z; i++)
            z = new_[i] == 0;
        want_zero[k] = !maybe[k] ? 0x77 : want[k] && z;
    }
    size_t np = (n + per - 1) / per;
    unsigned char *po = calloc(np, 64), *pn = calloc(np, 64), *ho = calloc(np, 1),
                  *hn = calloc(np, 1);
    unsigned char *mo = mapped ? file_map(old, olen) : NULL;
    unsigned char *mn = mapped ? file_map(new_, nlen) : NULL;
    unsigned release = (mo ? PF_RELEASE_OLD : 0) | (mn ? PF_RELEASE_NEW : 0);
    const unsigned char *vo = mo ? mo : old, *vn = mn ? mn : new_;
    int missed = 0, want_missed = 0;
    for (size_t k = 0; k < n; k++) { /* candidates whose first probe bytes are equal */
        size_t s = k * c, e = (k + 1) * c < nlen ? (k + 1) * c : nlen;
        want_missed += probe && maybe[k] && e <= olen && e - s > probe &&
                       memcmp(old + s, new_ + s, probe) == 0;
    }
    for (int f = 0; f < stride; f++) {
        int r = pf_diff_window(vo, olen, vn, nlen, 0, c, per, n, maybe, flags, zero, (size_t)f,
                               (size_t)stride, po, ho, pn, hn, release, probe);
        CHECK(r >= 0, "window");
        missed += r;
    }
    CHECK(missed == want_missed, "missed %d of %d, probe %zu", missed, want_missed, probe);
    CHECK(memcmp(vo, old, olen) == 0 && memcmp(vn, new_, nlen) == 0, "bytes after release");
    CHECK(memcmp(flags, want, n) == 0, "flags c %zu n %zu probe %zu", c, n, probe);
    CHECK(memcmp(zero, want_zero, n) == 0, "zero c %zu n %zu probe %zu", c, n, probe);
    unsigned char a[32], b[32];
    void *st = malloc(pf_b3_state_size());
    pf_b3_init(st);
    pf_b3_feed(st, vn, nlen, per * c, pn, hn);
    pf_b3_final(st, a);
    ref_digest(new_, nlen, b);
    CHECK(memcmp(a, b, 32) == 0, "new digest c %zu per %zu n %zu", c, per, n);
    pf_b3_init(st);
    pf_b3_feed(st, vo, olen, per * c, po, ho);
    pf_b3_final(st, a);
    ref_digest(old, olen, b);
    CHECK(memcmp(a, b, 32) == 0, "old digest c %zu per %zu n %zu", c, per, n);
    CHECK(pf_diff_window(old, olen, new_, nlen, 0, c, per, n + 2, maybe, flags, NULL, 0, 1,
                         NULL, NULL, NULL, NULL, 0, 0) == -1, "n past NEW's end refused");
    CHECK(pf_diff_window(old, olen, new_, nlen, 0, c, per, n, maybe, flags, NULL, 0, 1, NULL,
                         NULL, NULL, NULL, 4, 0) == -1, "unknown release flag refused");
    if (mo)
        munmap(mo, olen);
    if (mn)
        munmap(mn, nlen);
    free(st);
    free(old), free(new_), free(maybe), free(flags), free(want), free(want_zero), free(zero);
    free(po), free(pn), free(ho), free(hn);
}

static void window_case(size_t c, size_t per, size_t n, size_t olen, size_t nlen, int stride)
{
    window_case_m(c, per, n, olen, nlen, stride, 0, 0);
    window_case_m(c, per, n, olen, nlen, stride, 1, 0);
    /* compared in two steps: a change before, at or after the probe's end (random positions) */
    window_case_m(c, per, n, olen, nlen, stride, 1, c / 3);
    window_case_m(c, per, n, olen, nlen, stride, 0, c / 2 + 1);
}

static void test_window(void)
{
    window_case(4096, 16, 64, 64 * 4096, 64 * 4096, 2);
    window_case(4096, 16, 64, 64 * 4096, 64 * 4096, 1);
    window_case(65536, 16, 40, 40 * 65536, 40 * 65536, 2);        /* last piece short */
    window_case(65536, 16, 40, 20 * 65536 + 100, 40 * 65536, 2);  /* OLD ends early */
    window_case(65536, 16, 40, 40 * 65536, 39 * 65536 + 7, 2);    /* NEW ends mid-cluster */
    window_case(1 << 20, 1, 6, 6 << 20, 6 << 20, 2);
    window_case(512, 2048, 4096, 4096 * 512, 4096 * 512, 2);
    window_case(3072, 4, 20, 20 * 3072, 20 * 3072, 2);           /* pieces not pairable */
    for (int r = 0; r < 10; r++) {
        size_t c = (size_t)512 << (rnd() % 6), n = 1 + rnd() % 80;
        window_case(c, 1 + rnd() % 8, n, rnd() % (n * c + 1), (n - 1) * c + 1 + rnd() % c,
                    1 + rnd() % 3);
    }
}

void test_b3_all(void)
{
    test_feed();
    test_window();
}
