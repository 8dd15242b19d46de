/* C unit tests for the rdiff engine (pf_rollsum.c, pf_sig.c, pf_search.c, pf_emit.c,
 * pf_patch.c; run from test_native.c's main under ASan/UBSan.
 * Known answers: MD4 from RFC 1320 §A.5, BLAKE2b-256 (unkeyed, outlen 32) cross-checked with
 * Python's hashlib, rollsum/RabinKarp from the definitions in docs/rdiff.md (byte-by-byte
 * references below), zero-window constants from librsync issue #11. */
#define _GNU_SOURCE
#include "pf_b2x.h"
#include "pf_rdiff.h"

#include <blake2.h>

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

static void tohex(const unsigned char *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
    out[2 * n] = 0;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void fill_random(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)rnd();
}

/* -- references straight from the definitions ---------------------------------------------- */
static uint32_t ref_rollsum(const unsigned char *p, size_t n)
{
    uint32_t s1 = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) {
        s1 += p[i] + 31u;
        s2 += s1;
    }
    return ((s2 & 0xffffu) << 16) | (s1 & 0xffffu);
}

static uint32_t ref_rabinkarp(const unsigned char *p, size_t n)
{
    uint32_t h = 1;
    for (size_t i = 0; i < n; i++)
        h = h * 0x08104225u + p[i];
    return h;
}

static void test_md4_kat(void)
{
    static const char *const in[] = {
        "", "a", "abc", "message digest", "abcdefghijklmnopqrstuvwxyz",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        "12345678901234567890123456789012345678901234567890123456789012345678901234567890"};
    static const char *const want[] = {
        "31d6cfe0d16ae931b73c59d7e0c089c0", "bde52cb31de33e46245e05fbdbd6fb24",
        "a448017aaf21d8525fc10ae87aa6729d", "d9130a8164549fe818874806e1c7014b",
        "d79e1c308aa5bbcdeea8ed63df412da9", "043f8582f241db351ce627e153e7f0e4",
        "e33b4ddc9c38f2199c3e7b164fcc0536"};
    unsigned char d[PF_MAX_STRONG];
    char hex[2 * PF_MAX_STRONG + 1];
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++) {
        int n = pf_strong(PF_HASH_MD4, (const unsigned char *)in[i], strlen(in[i]), d);
        tohex(d, 16, hex);
        CHECK(n == 16 && strcmp(hex, want[i]) == 0, "MD4(\"%s\") = %s", in[i], hex);
    }
    CHECK(pf_strong(PF_HASH_MD4, NULL, 0, d) == 16, "NULL, 0");
    tohex(d, 16, hex);
    CHECK(strcmp(hex, want[0]) == 0, "MD4(NULL,0) = %s", hex);
    CHECK(pf_strong(7, (const unsigned char *)"x", 1, d) == -1, "unknown hash");
}

static void test_blake2_kat(void)
{
    unsigned char d[PF_MAX_STRONG];
    char hex[2 * PF_MAX_STRONG + 1];
    pf_strong(PF_HASH_BLAKE2, (const unsigned char *)"", 0, d);
    tohex(d, 32, hex);
    CHECK(strcmp(hex, "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8") == 0,
          "BLAKE2b-256('') = %s", hex);
    int n = pf_strong(PF_HASH_BLAKE2, (const unsigned char *)"abc", 3, d);
    tohex(d, 32, hex);
    CHECK(n == 32 &&
              strcmp(hex, "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319") == 0,
          "BLAKE2b-256('abc') = %s", hex);
    /* not a truncated BLAKE2b-512 ("abc" -> ba80a53f...) */
    CHECK(memcmp(hex, "ba80a53f", 8) != 0, "outlen must be 32, not 64 truncated");
    unsigned char *z = calloc(1 << 20, 1);
    pf_strong(PF_HASH_BLAKE2, z, 1 << 20, d);
    tohex(d, 32, hex);
    CHECK(strcmp(hex, "c74860dd7480e7f4b5ae705f9137e90a0aa0bc67d6e90cf8078dd6697dbdb6ad") == 0,
          "BLAKE2b-256(1 MiB zeros) = %s", hex);
    free(z);
}

static void test_weak_sums(void)
{
    CHECK(pf_rollsum((const unsigned char *)"abc", 3) == 0x03040183u, "rollsum(abc) = %08x",
          pf_rollsum((const unsigned char *)"abc", 3));
    CHECK(pf_rollsum(NULL, 0) == 0, "rollsum('')");
    CHECK(pf_rabinkarp(NULL, 0) == 1, "rabinkarp('') is the seed");
    CHECK(pf_rabinkarp((const unsigned char *)"a", 1) == 0x08104225u + 97u, "rabinkarp(a)");

    /* librsync#11: zero windows of power-of-two lengths >= 64 KiB */
    unsigned char *z = calloc(1 << 20, 1);
    CHECK(pf_rollsum(z, 1 << 20) == 0x00000000u, "rollsum(1 MiB zeros) = %08x",
          pf_rollsum(z, 1 << 20));
    CHECK(pf_rollsum(z, 1 << 16) == 0x80000000u, "rollsum(64 KiB zeros) = %08x",
          pf_rollsum(z, 1 << 16));
    free(z);

    /* blocked implementations == byte-by-byte definitions, every length/alignment mix */
    unsigned char *buf = xmalloc(4096 + 64);
    fill_random(buf, 4096 + 64);
    for (size_t len = 0; len <= 300; len++) {
        for (size_t off = 0; off < 5; off++) {
            unsigned char *p = xmalloc(len);
            memcpy(p, buf + off, len);
            CHECK(pf_rollsum(p, len) == ref_rollsum(p, len), "rollsum len=%zu off=%zu", len, off);
            CHECK(pf_rabinkarp(p, len) == ref_rabinkarp(p, len), "rk len=%zu off=%zu", len, off);
            free(p);
        }
    }
    memset(buf, 0xff, 4096); /* maximum byte values: exercises the mod-2^32 wrap */
    CHECK(pf_rollsum(buf, 4096) == ref_rollsum(buf, 4096), "rollsum 0xff");
    CHECK(pf_rabinkarp(buf, 4096) == ref_rabinkarp(buf, 4096), "rk 0xff");
    free(buf);
}

/* -- command encoding ------------------------------------------------------------------------ */
static int cmd_is(const unsigned char *got, size_t n, const char *hex)
{
    char h[2 * PF_CMD_MAX + 1];
    tohex(got, n, h);
    return strcmp(h, hex) == 0;
}

static void test_encoding(void)
{
    unsigned char c[PF_CMD_MAX];
    size_t n;
    CHECK(pf_cmd_copy(c, 0, 0) == 0, "zero-length copy");
    CHECK(pf_cmd_literal(c, 0) == 0, "zero-length literal");
    n = pf_cmd_copy(c, 0, 1);
    CHECK(cmd_is(c, n, "450001"), "copy(0,1)");
    n = pf_cmd_copy(c, 0xff, 0x100);
    CHECK(cmd_is(c, n, "46ff0100"), "copy(255,256) = (1,2) 0x46");
    n = pf_cmd_copy(c, 0x100, 0x10000);
    CHECK(cmd_is(c, n, "4b010000010000"), "copy(2,4) = 0x4b");
    n = pf_cmd_copy(c, 0xffffffffULL, 0xffffffffULL);
    CHECK(cmd_is(c, n, "4fffffffffffffffff"), "copy(4,4) = 0x4f");
    n = pf_cmd_copy(c, 0x100000000ULL, 0x100000);
    CHECK(cmd_is(c, n, "53000000010000000000100000"), "copy(8,4) = 0x53 (offset > 4 GiB)");
    n = pf_cmd_copy(c, 0x10000000000ULL, 0x200000000ULL);
    CHECK(n == 17 && cmd_is(c, n, "5400000100000000000000000200000000"), "copy(8,8) = 0x54");
    n = pf_cmd_literal(c, 1);
    CHECK(cmd_is(c, n, "01"), "literal 1");
    n = pf_cmd_literal(c, 64);
    CHECK(cmd_is(c, n, "40"), "literal 64");
    n = pf_cmd_literal(c, 65);
    CHECK(cmd_is(c, n, "4141"), "literal 65 = N1");
    n = pf_cmd_literal(c, 256);
    CHECK(cmd_is(c, n, "420100"), "literal 256 = N2");
    n = pf_cmd_literal(c, 1 << 22);
    CHECK(cmd_is(c, n, "4300400000"), "literal 4 MiB = N4");
    n = pf_cmd_literal(c, 0x100000000ULL);
    CHECK(cmd_is(c, n, "440000000100000000"), "literal 4 GiB = N8");
}

/* -- signatures -------------------------------------------------------------------------------- */
static void ref_record(int hash, int weak, const unsigned char *p, size_t n, size_t sum_len,
                       unsigned char *out)
{
    uint32_t w = weak == PF_WEAK_ROLLSUM ? ref_rollsum(p, n) : ref_rabinkarp(p, n);
    unsigned char s[PF_MAX_STRONG];
    out[0] = (unsigned char)(w >> 24);
    out[1] = (unsigned char)(w >> 16);
    out[2] = (unsigned char)(w >> 8);
    out[3] = (unsigned char)w;
    pf_strong(hash, p, n, s);
    memcpy(out + 4, s, sum_len);
}

static void test_signature(void)
{
    const size_t len = 70000;
    unsigned char *buf = xmalloc(len);
    fill_random(buf, len);
    memset(buf + 4096, 0, 8192); /* whole zero blocks at 4 KiB: the cached zero record */
    const uint64_t blocks[] = {1, 7, 4096, 65536, 100000};
    const size_t sums[] = {1, 8, 16};
    for (int hash = 0; hash < 2; hash++)
        for (int weak = 0; weak < 2; weak++)
            for (size_t b = 0; b < sizeof blocks / sizeof blocks[0]; b++)
                for (size_t s = 0; s < sizeof sums / sizeof sums[0]; s++)
                    for (int threads = 1; threads <= 3; threads += 2) {
                        uint64_t bl = blocks[b];
                        size_t sl = sums[s], rec = 4 + sl;
                        size_t n = bl == 1 ? 333 : len; /* keep the 1-byte case small */
                        size_t nb = (n + bl - 1) / bl;
                        pf_sigctx *c = pf_sigctx_new(hash, weak, bl, sl, threads);
                        unsigned char *got = xmalloc(nb * rec), *want = xmalloc(nb * rec);
                        int64_t w = pf_sig_chunk(c, buf, n, got);
                        for (size_t k = 0; k < nb; k++) {
                            size_t bn = n - k * bl < bl ? n - k * bl : bl;
                            ref_record(hash, weak, buf + k * bl, bn, sl, want + k * rec);
                        }
                        CHECK(w == (int64_t)(nb * rec) && memcmp(got, want, nb * rec) == 0,
                              "sig hash=%d weak=%d block=%llu sum=%zu threads=%d", hash, weak,
                              (unsigned long long)bl, sl, threads);
                        free(got);
                        free(want);
                        pf_sigctx_free(c);
                    }
    CHECK(pf_sigctx_new(PF_HASH_MD4, 0, 1024, 17, 1) == NULL, "MD4 sum 17 refused");
    CHECK(pf_sigctx_new(PF_HASH_BLAKE2, 0, 1024, 33, 1) == NULL, "BLAKE2 sum 33 refused");
    CHECK(pf_sigctx_new(PF_HASH_BLAKE2, 0, 0, 8, 1) == NULL, "block 0 refused");
    CHECK(pf_sigctx_new(5, 0, 1024, 8, 1) == NULL, "bad hash refused");
    pf_sigctx *c = pf_sigctx_new(PF_HASH_MD4, 0, 1024, 8, 2);
    CHECK(pf_sig_chunk(c, NULL, 0, NULL) == 0, "empty chunk");
    pf_sigctx_free(c);
    free(buf);
}

/* -- match index ------------------------------------------------------------------------------ */
static void test_match(void)
{
    const uint64_t bl = 4096;
    const size_t nbasis = 40, blen = nbasis * bl - 1000; /* short last block of 3096 */
    unsigned char *basis = xmalloc(blen);
    fill_random(basis, blen);
    memset(basis + 5 * bl, 0, 3 * bl); /* three identical zero blocks 5,6,7 */
    memcpy(basis + 9 * bl, basis + 8 * bl, bl); /* 9 duplicates 8 */

    for (int hash = 0; hash < 2; hash++) {
        for (size_t sl = 1; sl <= 16; sl += 15) {
            size_t rec = 4 + sl;
            unsigned char *recs = xmalloc(nbasis * rec);
            for (size_t k = 0; k < nbasis; k++) {
                size_t n = blen - k * bl < bl ? blen - k * bl : bl;
                ref_record(hash, PF_WEAK_RABINKARP, basis + k * bl, n, sl, recs + k * rec);
            }
            pf_index *ix = pf_index_new(hash, PF_WEAK_RABINKARP, bl, sl, recs, nbasis, 2);
            CHECK(ix != NULL, "index");
            /* 40 blocks, minus 2 extra zero copies, minus the duplicate of 8; with a 1-byte
             * prefix, distinct weak sums still keep the rest apart */
            CHECK(pf_index_size(ix) == nbasis - 3, "distinct = %llu",
                  (unsigned long long)pf_index_size(ix));

            /* new: 0 same, 1 <- basis 20 (moved), 2 random, 3 zero, 4 <- 9/8 duplicate,
             * 5 = basis's short last block (moved, same length), then 6 = short tail equal to
             * the first 100 bytes of basis block 6... (no match: different length) */
            const size_t nlen = 6 * bl + 3096 + 0;
            unsigned char *nw = xmalloc(nlen + 100);
            memcpy(nw, basis, bl);
            memcpy(nw + bl, basis + 20 * bl, bl);
            fill_random(nw + 2 * bl, bl);
            memset(nw + 3 * bl, 0, bl);
            memcpy(nw + 4 * bl, basis + 9 * bl, bl);
            memcpy(nw + 5 * bl, basis + 39 * bl, 3096); /* a short block in the middle */
            memset(nw + 5 * bl + 3096, 0xab, bl - 3096);
            memcpy(nw + 6 * bl, basis + 39 * bl, 3096); /* short tail == basis last block */
            int64_t m[7];
            int64_t nb = pf_match_chunk(ix, nw, nlen, 0, m);
            CHECK(nb == 7, "blocks %lld", (long long)nb);
            CHECK(m[0] == 0, "same index: %lld", (long long)m[0]);
            CHECK(m[1] == 20, "moved: %lld", (long long)m[1]);
            CHECK(m[2] == -1, "random: %lld", (long long)m[2]);
            CHECK(m[3] >= 5 && m[3] <= 7, "zero: %lld", (long long)m[3]);
            CHECK(m[4] == 8 || m[4] == 9, "duplicate: %lld", (long long)m[4]);
            CHECK(m[5] == -1, "full block that starts like the short last: %lld", (long long)m[5]);
            CHECK(m[6] == 39, "short tail: %lld", (long long)m[6]);

            /* first_block offsets the same-index check: new block 38 == basis 38 */
            int64_t m2[2];
            nb = pf_match_chunk(ix, basis + 38 * bl, bl + 3096, 38, m2);
            CHECK(nb == 2 && m2[0] == 38 && m2[1] == 39, "tail chunk %lld %lld",
                  (long long)m2[0], (long long)m2[1]);
            /* a short tail that is a prefix of a full basis block must not match it */
            nb = pf_match_chunk(ix, basis + 10 * bl, 100, 10, m2);
            CHECK(nb == 1 && m2[0] == -1, "prefix of a full block: %lld", (long long)m2[0]);
            pf_index_free(ix);
            free(recs);
            free(nw);
        }
    }
    /* short strong prefixes are backed by the weak sum; 16+ bytes decide alone */
    for (size_t sl = 8; sl <= 16; sl += 8) {
        unsigned char r[4 + 16];
        int64_t m1[1];
        ref_record(PF_HASH_MD4, PF_WEAK_ROLLSUM, basis, bl, sl, r);
        r[0] ^= 1; /* wrong weak sum, right strong sum */
        pf_index *wx = pf_index_new(PF_HASH_MD4, PF_WEAK_ROLLSUM, bl, sl, r, 1, 1);
        CHECK(wx && pf_match_chunk(wx, basis, bl, 0, m1) == 1, "weak check sl=%zu", sl);
        CHECK(m1[0] == (sl < 16 ? -1 : 0), "weak check sl=%zu: %lld", sl, (long long)m1[0]);
        pf_index_free(wx);
    }
    /* an empty signature matches nothing */
    pf_index *ix = pf_index_new(PF_HASH_MD4, PF_WEAK_ROLLSUM, bl, 8, NULL, 0, 2);
    int64_t m1[1];
    CHECK(ix && pf_match_chunk(ix, basis, bl, 0, m1) == 1 && m1[0] == -1, "empty signature");
    pf_index_free(ix);
    free(basis);
}

/* -- patcher --------------------------------------------------------------------------------- */
static int tmpfile_fd(char *path)
{
    strcpy(path, "/tmp/pf_rdiff_testXXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) {
        perror("mkstemp");
        exit(2);
    }
    return fd;
}

/* Apply delta (after the magic) fed in pieces of `step` bytes; returns the final status and
 * puts the output in *out (malloc'd) / *outlen. */
static int run_patch(const unsigned char *basis, size_t blen, const unsigned char *delta,
                     size_t dlen, size_t step, unsigned char **out, size_t *outlen,
                     uint64_t *err_off)
{
    char bpath[64], opath[64];
    int bfd = tmpfile_fd(bpath), ofd = tmpfile_fd(opath);
    if (write(bfd, basis, blen) != (ssize_t)blen)
        exit(2);
    pf_patch *p = pf_patch_new(bfd, ofd, blen, 1);
    int rc = PF_PATCH_MORE;
    size_t i = 0;
    while (i < dlen && rc == PF_PATCH_MORE) {
        size_t k = dlen - i < step ? dlen - i : step, used = 0;
        rc = pf_patch_feed(p, delta + i, k, &used);
        i += used;
    }
    if (rc == PF_PATCH_DONE)
        pf_patch_finish(p);
    pf_patch_error(p, err_off, NULL);
    struct stat st;
    fstat(ofd, &st);
    *outlen = (size_t)st.st_size;
    *out = xmalloc(*outlen);
    if (pread(ofd, *out, *outlen, 0) != (ssize_t)*outlen)
        exit(2);
    if (rc == PF_PATCH_DONE) {
        size_t used = 9;
        CHECK(pf_patch_feed(p, delta, 1, &used) == PF_PATCH_ESTATE && used == 0, "after END");
    }
    pf_patch_free(p);
    close(bfd);
    close(ofd);
    unlink(bpath);
    unlink(opath);
    return rc;
}

static void test_patch(void)
{
    unsigned char basis[300000];
    fill_random(basis, sizeof basis);
    memset(basis + 100000, 0, 150000); /* a zero run: becomes a hole in the output */
    unsigned char delta[512];
    unsigned char lit[70];
    fill_random(lit, sizeof lit);
    size_t d = 0;
    d += pf_cmd_copy(delta + d, 5, 10);
    d += pf_cmd_literal(delta + d, 3);
    memcpy(delta + d, "xyz", 3);
    d += 3;
    d += pf_cmd_literal(delta + d, 70); /* LITERAL_N1 */
    memcpy(delta + d, lit, 70);
    d += 70;
    d += pf_cmd_copy(delta + d, 90000, 200000); /* through the zero run */
    /* a non-minimal encoding: COPY_N8_N8 (0x54) of 1 byte at offset 0 */
    unsigned char wide[] = {0x54, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    memcpy(delta + d, wide, sizeof wide);
    d += sizeof wide;
    delta[d++] = 0;    /* END */
    delta[d++] = 0x55; /* ignored after END */

    unsigned char want[10 + 3 + 70 + 200000 + 1];
    memcpy(want, basis + 5, 10);
    memcpy(want + 10, "xyz", 3);
    memcpy(want + 13, lit, 70);
    memcpy(want + 83, basis + 90000, 200000);
    want[83 + 200000] = basis[0];

    const size_t steps[] = {1, 2, 7, 4096, 1 << 20};
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        unsigned char *out;
        size_t outlen;
        uint64_t off;
        int rc = run_patch(basis, sizeof basis, delta, d, steps[s], &out, &outlen, &off);
        CHECK(rc == PF_PATCH_DONE, "rc %d step %zu", rc, steps[s]);
        CHECK(outlen == sizeof want && memcmp(out, want, sizeof want) == 0,
              "output step %zu len %zu", steps[s], outlen);
        free(out);
    }

    /* errors, with the offset of the failing command */
    struct {
        unsigned char d[24];
        size_t n;
        int rc;
        uint64_t off;
    } bad[] = {
        {{0x01, 'a', 0x55}, 3, PF_PATCH_EBOGUS, 2},
        {{0xff}, 1, PF_PATCH_EBOGUS, 0},
        {{0x41, 0x00}, 2, PF_PATCH_EZERO, 0},
        {{0x45, 0x00, 0x00}, 3, PF_PATCH_EZERO, 0},
        {{0x02, 'a', 'b', 0x47, 0xff, 0x7f, 0x00, 0x00, 0x00}, 9, PF_PATCH_ERANGE, 3},
        /* exactly the basis end is fine, one past is not */
        {{0x4f, 0x00, 0x04, 0x93, 0xdf, 0x00, 0x00, 0x00, 0x02}, 9, PF_PATCH_ERANGE, 0},
        {{0x4f, 0x00, 0x04, 0x93, 0xdf, 0x00, 0x00, 0x00, 0x01, 0x00}, 10, PF_PATCH_DONE, 0},
        {{0x44, 0x80, 0, 0, 0, 0, 0, 0, 0}, 9, PF_PATCH_ERANGE, 0},
        /* truncated: header or payload cut, no END */
        {{0x43, 0x00, 0x00}, 3, PF_PATCH_MORE, 0},
        {{0x05, 'a', 'b'}, 3, PF_PATCH_MORE, 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        unsigned char *out;
        size_t outlen;
        uint64_t off = 99;
        int rc = run_patch(basis, sizeof basis, bad[i].d, bad[i].n, 1, &out, &outlen, &off);
        CHECK(rc == bad[i].rc, "bad[%zu] rc %d want %d", i, rc, bad[i].rc);
        if (rc < 0)
            CHECK(off == bad[i].off, "bad[%zu] offset %llu want %llu", i,
                  (unsigned long long)off, (unsigned long long)bad[i].off);
        free(out);
    }
    uint64_t off;
    CHECK(strcmp(pf_patch_error(NULL, &off, NULL), "no patch state") == 0, "NULL state");
}

/* Multi-buffer BLAKE2b equals libb2 for every lane width the CPU has, message lengths around
 * the 128-byte block edges, digest lengths 1..64, batch sizes that leave partial batches, and
 * messages at unaligned addresses. Then the signature and match paths (which batch full,
 * non-zero blocks) give the same records with 1, 4 and 8 lanes. */
static void test_blake2b_many(void)
{
    static const size_t lens[] = {0, 1, 2, 63, 64, 127, 128, 129, 255, 256, 257, 1000, 4096, 65537};
    size_t area = 12 * 70001 + 65537 + 64;
    unsigned char *buf = xmalloc(area);
    uint32_t x = 12345;
    for (size_t i = 0; i < area; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (unsigned char)(x >> 16);
    }
    const unsigned char *msgs[12];
    unsigned char out[12 * 64], ref[64];
    int cpu = pf_blake2b_limit(8);
    for (int lanes = cpu; lanes >= 1; lanes = lanes == 8 ? 4 : lanes == 4 ? 1 : 0) {
        CHECK(pf_blake2b_limit(lanes) == lanes, "limit %d", lanes);
        for (size_t li = 0; li < sizeof lens / sizeof *lens; li++)
            for (size_t outlen = 1; outlen <= 64; outlen += outlen < 4 ? 1 : 15)
                for (size_t cnt = 1; cnt <= 12; cnt += 1 + (cnt > 4)) {
                    for (size_t i = 0; i < cnt; i++)
                        msgs[i] = buf + i * 70001 + i % 3;
                    CHECK(pf_blake2b_many(msgs, cnt, lens[li], outlen, out) == 0, "len %zu", lens[li]);
                    for (size_t i = 0; i < cnt; i++) {
                        blake2b(ref, msgs[i], NULL, outlen, lens[li], 0);
                        CHECK(memcmp(ref, out + i * outlen, outlen) == 0,
                              "lanes %d len %zu outlen %zu count %zu msg %zu", lanes, lens[li],
                              outlen, cnt, i);
                    }
                }
    }
    CHECK(pf_blake2b_many(msgs, 1, 1, 0, out) == -1, "outlen 0");
    CHECK(pf_blake2b_many(msgs, 1, 1, 65, out) == -1, "outlen 65");
    CHECK(pf_blake2b_many(NULL, 1, 1, 32, out) == -1, "NULL msgs");

    /* signature + match of 21 blocks of 4 KiB (one all-zero, a short last one) per lane width */
    size_t block = 4096, len = 20 * block + 777;
    memset(buf + 5 * block, 0, block);
    unsigned char *sig[3];
    int64_t match[21];
    int widths[3] = {8, 4, 1};
    for (int w = 0; w < 3; w++) {
        pf_blake2b_limit(widths[w]);
        pf_sigctx *ctx = pf_sigctx_new(PF_HASH_BLAKE2, PF_WEAK_RABINKARP, block, 32, 2);
        sig[w] = xmalloc(21 * 36);
        CHECK(pf_sig_chunk(ctx, buf, len, sig[w]) == 21 * 36, "sig lanes %d", widths[w]);
        pf_sigctx_free(ctx);
        pf_index *ix = pf_index_new(PF_HASH_BLAKE2, PF_WEAK_RABINKARP, block, 32, sig[w], 21, 2);
        CHECK(pf_match_chunk(ix, buf, len, 0, match) == 21, "match lanes %d", widths[w]);
        for (int k = 0; k < 21; k++)
            CHECK(match[k] == k, "lanes %d block %d matched %lld", widths[w], k, (long long)match[k]);
        pf_index_free(ix);
    }
    CHECK(memcmp(sig[0], sig[1], 21 * 36) == 0, "signature 8 vs 4 lanes");
    CHECK(memcmp(sig[0], sig[2], 21 * 36) == 0, "signature 8 vs 1 lane");
    for (int w = 0; w < 3; w++)
        free(sig[w]);
    pf_blake2b_limit(8);
    free(buf);
}

void test_rdiff_all(void)
{
    test_blake2b_many();
    test_md4_kat();
    test_blake2_kat();
    test_weak_sums();
    test_encoding();
    test_signature();
    test_match();
    test_patch();
}
