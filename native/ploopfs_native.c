/* ploopfs native helpers. See ploopfs_native.h. */
#include "ploopfs_native.h"

#include <string.h>

int pf_version(void)
{
    return 3;
}

/* Load one machine word from an arbitrary address; memcpy keeps it free of alignment and
 * strict-aliasing UB, and compilers turn it into a single load. */
static inline uint64_t load_u64(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof w);
    return w;
}

/* A page of zeros, compared with memcmp below: libc's vectorised memcmp scans a zero buffer
 * about twice as fast as the word loop (~60 vs ~30 GB/s here), and the block stays in L1. */
static const unsigned char zero_block[4096];

size_t pf_first_nonzero(const unsigned char *buf, size_t len)
{
    size_t i = 0;

    if (len == 0)
        return 0;

    /* Whole zero blocks first; the block holding the first non-zero byte is searched below. */
    while (len - i >= sizeof zero_block && memcmp(buf + i, zero_block, sizeof zero_block) == 0)
        i += sizeof zero_block;

    /* Byte loop up to an 8-byte boundary, so the word loop reads aligned memory (not
     * required for correctness, just faster on some cores). */
    while (i < len && ((uintptr_t)(buf + i) & (sizeof(uint64_t) - 1)) != 0) {
        if (buf[i] != 0)
            return i;
        i++;
    }

    /* 32 bytes per iteration: OR four words, test once. */
    while (len - i >= 4 * sizeof(uint64_t)) {
        uint64_t a = load_u64(buf + i);
        uint64_t b = load_u64(buf + i + 8);
        uint64_t c = load_u64(buf + i + 16);
        uint64_t d = load_u64(buf + i + 24);
        if ((a | b | c | d) != 0)
            break;
        i += 4 * sizeof(uint64_t);
    }

    /* Single words. */
    while (len - i >= sizeof(uint64_t)) {
        if (load_u64(buf + i) != 0)
            break;
        i += sizeof(uint64_t);
    }

    /* Tail, or locate the byte inside the non-zero word(s) found above. */
    while (i < len) {
        if (buf[i] != 0)
            return i;
        i++;
    }
    return len;
}

size_t pf_count_nonzero_u32(const uint32_t *v, size_t n)
{
    size_t count = 0;
    size_t i;

    /* Branch-free so the compiler can vectorise it. */
    for (i = 0; i < n; i++)
        count += (v[i] != 0);
    return count;
}
