/* C unit tests for ploopfs_native.c; run under ASan/UBSan via `make -C native test`.
 * Last line of output on success: "N passed, 0 failed". */
#include "ploopfs_native.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

unsigned passed, failed;

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        perror("malloc");
        exit(2);
    }
    return p;
}

/* Obvious byte-by-byte reference. */
static size_t ref_first_nonzero(const unsigned char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (buf[i])
            return i;
    return len;
}

static size_t ref_count_nonzero_u32(const uint32_t *v, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i])
            c++;
    return c;
}

/* Exact-size heap copy so ASan catches any read past len. */
static unsigned char *exact_copy(const unsigned char *src, size_t len)
{
    unsigned char *p = malloc(len ? len : 1);
    if (!p) {
        perror("malloc");
        exit(2);
    }
    if (len)
        memcpy(p, src, len);
    return p;
}

static void test_version(void)
{
    CHECK(pf_version() == 3, "got %d", pf_version());
}

static void test_empty(void)
{
    unsigned char b = 0xff;
    CHECK(pf_first_nonzero(NULL, 0) == 0, "NULL, 0");
    CHECK(pf_first_nonzero(&b, 0) == 0, "non-NULL, 0");
    CHECK(pf_count_nonzero_u32(NULL, 0) == 0, "NULL, 0");
}

/* Every length 0..70, every start offset 0..15 (so every alignment), every position of a
 * single non-zero byte, every non-zero byte value class (low bit, high bit, 0xff). */
static void test_every_position(void)
{
    static const unsigned char values[] = {0x01, 0x80, 0xff, 0x10};
    unsigned char *arena = malloc(70 + 16);

    for (size_t len = 0; len <= 70; len++) {
        for (size_t off = 0; off < 16; off++) {
            /* exact-size allocation for the all-zero case */
            memset(arena, 0, len + off);
            unsigned char *z = exact_copy(arena + off, len);
            size_t got = pf_first_nonzero(z, len);
            CHECK(got == len, "all-zero len=%zu off=%zu got %zu", len, off, got);
            free(z);

            for (size_t pos = 0; pos < len; pos++) {
                unsigned char v = values[(pos + off) % sizeof values];
                memset(arena, 0, len + off);
                arena[off + pos] = v;
                got = pf_first_nonzero(arena + off, len);
                CHECK(got == pos, "len=%zu off=%zu pos=%zu got %zu", len, off, pos, got);

                /* a second non-zero byte later must not matter */
                if (pos + 1 < len) {
                    arena[off + len - 1] = 0x7f;
                    got = pf_first_nonzero(arena + off, len);
                    CHECK(got == pos, "2nd byte len=%zu off=%zu pos=%zu got %zu", len, off,
                          pos, got);
                }
            }
        }
    }
    /* non-zero bytes just outside [buf, buf+len) must be ignored */
    for (size_t len = 0; len <= 70; len++) {
        memset(arena, 0, 70 + 16);
        arena[0] = 1;
        arena[1 + len] = 1;
        size_t got = pf_first_nonzero(arena + 1, len);
        CHECK(got == len, "guard bytes len=%zu got %zu", len, got);
    }
    free(arena);
}

static void test_large(void)
{
    const size_t sizes[] = {4096, 65536, (size_t)1 << 20, ((size_t)16 << 20) + 13};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t len = sizes[s];
        unsigned char *buf = calloc(len + 8, 1);
        if (!buf) {
            perror("calloc");
            exit(2);
        }
        for (size_t off = 0; off < 8; off += 3) {
            unsigned char *b = buf + off;
            CHECK(pf_first_nonzero(b, len) == len, "zero len=%zu off=%zu", len, off);
            /* around the 4 KiB blocks compared whole first, too */
            const size_t positions[] = {0, 1, 31, 32, 33, 4095, 4096, 4097, 8191, len / 2,
                                        len - 4097, len - 4096, len - 9, len - 2, len - 1};
            for (size_t k = 0; k < sizeof positions / sizeof positions[0]; k++) {
                size_t pos = positions[k] < len ? positions[k] : len - 1;
                b[pos] = 0x40;
                size_t got = pf_first_nonzero(b, len);
                CHECK(got == pos, "len=%zu off=%zu pos=%zu got %zu", len, off, pos, got);
                b[pos] = 0;
            }
        }
        free(buf);
    }
}

static void test_random(void)
{
    srand(12345);
    for (int iter = 0; iter < 2000; iter++) {
        /* every fourth buffer over a few 4 KiB blocks */
        size_t len = (size_t)rand() % (iter % 4 == 0 ? 13000 : 600);
        unsigned char *b = malloc(len ? len : 1);
        memset(b, 0, len);
        /* mostly-zero buffers with a few sprinkled bytes */
        int nz = rand() % 3;
        for (int k = 0; k < nz && len; k++)
            b[(size_t)rand() % len] = (unsigned char)(1 + rand() % 255);
        CHECK(pf_first_nonzero(b, len) == ref_first_nonzero(b, len), "random iter=%d len=%zu",
              iter, len);
        free(b);
    }
}

static void test_count_nonzero_u32(void)
{
    uint32_t v[257];

    memset(v, 0, sizeof v);
    for (size_t n = 0; n <= 257; n++)
        CHECK(pf_count_nonzero_u32(v, n) == 0, "zeros n=%zu", n);

    for (size_t i = 0; i < 257; i++)
        v[i] = 1;
    for (size_t n = 0; n <= 257; n++)
        CHECK(pf_count_nonzero_u32(v, n) == n, "ones n=%zu", n);

    /* values whose only set bit is in one byte must count as non-zero */
    const uint32_t singles[] = {1u, 0x100u, 0x10000u, 0x1000000u, 0x80000000u, 0xffffffffu};
    for (size_t k = 0; k < sizeof singles / sizeof singles[0]; k++) {
        memset(v, 0, sizeof v);
        v[100] = singles[k];
        CHECK(pf_count_nonzero_u32(v, 257) == 1, "single 0x%x", singles[k]);
        CHECK(pf_count_nonzero_u32(v, 100) == 0, "before 0x%x", singles[k]);
    }

    srand(777);
    for (int iter = 0; iter < 500; iter++) {
        size_t n = (size_t)rand() % 258;
        uint32_t *h = malloc((n ? n : 1) * sizeof *h);
        for (size_t i = 0; i < n; i++)
            h[i] = (rand() % 3 == 0) ? 0 : (uint32_t)rand();
        CHECK(pf_count_nonzero_u32(h, n) == ref_count_nonzero_u32(h, n), "random n=%zu", n);
        free(h);
    }

    /* large */
    size_t big = (size_t)1 << 22;
    uint32_t *h = calloc(big, sizeof *h);
    for (size_t i = 0; i < big; i += 7)
        h[i] = (uint32_t)i | 1u;
    CHECK(pf_count_nonzero_u32(h, big) == (big + 6) / 7, "large");
    free(h);
}

int main(void)
{
    test_version();
    test_empty();
    test_every_position();
    test_large();
    test_random();
    test_count_nonzero_u32();
    test_rdiff_all();
    test_dedup_all();
    test_b3_all();
    test_map_all();
    printf("%u passed, %u failed\n", passed, failed);
    return failed ? 1 : 0;
}
