/* BLAKE3 tree pieces and the diff window loop (see pf_b3.h).
 *
 * blake3.c is included, not linked, so that the pair helpers can use its internal functions
 * (compress_subtree_to_parent_node, hasher_push_cv: the very steps blake3_hasher_update() takes
 * for a whole subtree). The dispatcher and the portable code are compiled by pf_b3_base.c,
 * the SIMD back ends from the project's x86-64 assembly (pf_b3_*.S).
 */
#define _DEFAULT_SOURCE /* madvise, MADV_DONTNEED (-std=c11 hides them) */
#include "pf_b3.h"
#include "ploopfs_native.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-function"
#include <blake3.c>
#pragma GCC diagnostic pop

_Static_assert(BLAKE3_CHUNK_LEN == 1024 && BLAKE3_OUT_LEN == 32, "BLAKE3 constants");

size_t pf_b3_state_size(void) { return sizeof(blake3_hasher); }

void pf_b3_init(void *state) { blake3_hasher_init((blake3_hasher *)state); }

void pf_b3_update(void *state, const unsigned char *data, size_t len)
{
    blake3_hasher_update((blake3_hasher *)state, data, len);
}

void pf_b3_final(const void *state, unsigned char out[32])
{
    blake3_hasher_finalize((const blake3_hasher *)state, out, 32);
}

uint64_t pf_b3_count(const void *state)
{
    const blake3_hasher *h = (const blake3_hasher *)state;
    return h->chunk.chunk_counter * BLAKE3_CHUNK_LEN + chunk_state_len(&h->chunk);
}

int pf_b3_pairable(uint64_t offset, size_t len)
{
    return len >= 2 * BLAKE3_CHUNK_LEN && (len & (len - 1)) == 0 && offset % len == 0;
}

int pf_b3_pair(const unsigned char *data, size_t len, uint64_t offset, unsigned char pair[64])
{
    if (!pf_b3_pairable(offset, len) || data == NULL)
        return -1;
    /* What blake3_hasher_update() does with a whole subtree at a subtree boundary. */
    compress_subtree_to_parent_node(data, len, IV, offset / BLAKE3_CHUNK_LEN, 0, pair);
    return 0;
}

/* The pushes blake3_hasher_update() makes for the same piece (the state is at its start). */
static void push_pair(blake3_hasher *h, const unsigned char pair[64], size_t len)
{
    uint8_t cv[64];
    uint64_t chunks = len / BLAKE3_CHUNK_LEN;
    memcpy(cv, pair, 64);
    hasher_push_cv(h, cv, h->chunk.chunk_counter);
    hasher_push_cv(h, cv + 32, h->chunk.chunk_counter + chunks / 2);
    h->chunk.chunk_counter += chunks;
}

int pf_b3_feed(void *state, const unsigned char *data, size_t len, size_t piece,
               const unsigned char *pairs, const unsigned char *have)
{
    blake3_hasher *h = (blake3_hasher *)state;
    if (piece == 0)
        return -1;
    for (size_t j = 0, pos = 0; pos < len; j++, pos += piece) {
        size_t n = len - pos < piece ? len - pos : piece;
        if (pairs != NULL && have != NULL && have[j] && n == piece &&
            chunk_state_len(&h->chunk) == 0 &&
            pf_b3_pairable(h->chunk.chunk_counter * BLAKE3_CHUNK_LEN, n)) {
            push_pair(h, pairs + 64 * j, n);
        } else if (data != NULL) {
            blake3_hasher_update(h, data + pos, n);
        } else {
            return -1;
        }
    }
    return 0;
}

static size_t page_size(void)
{
    static size_t page;
    if (page == 0) {
        long ps = sysconf(_SC_PAGESIZE);
        page = ps > 0 ? (size_t)ps : 4096;
    }
    return page;
}

/* The whole pages inside [p, p + len) of a shared file mapping, given back (see pf_b3.h). */
static void release_pages(const unsigned char *p, size_t len)
{
    size_t page = page_size();
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t e = ((uintptr_t)p + len) & ~(uintptr_t)(page - 1);
    if (e > a)
        (void)madvise((void *)a, e - a, MADV_DONTNEED); /* advice: a failure changes nothing */
}

/* The pages holding [p, p + len) of a file mapping, asked for (read ahead, asynchronously). */
static void willneed_pages(const unsigned char *p, size_t len)
{
    size_t page = page_size();
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(page - 1);
    uintptr_t e = ((uintptr_t)p + len + page - 1) & ~(uintptr_t)(page - 1);
    (void)madvise((void *)a, e - a, MADV_WILLNEED); /* advice: a failure changes nothing */
}

int pf_diff_window(const unsigned char *old, size_t olen, const unsigned char *new_,
                   size_t nlen, uint64_t offset, size_t c, size_t per, size_t n,
                   const unsigned char *maybe, unsigned char *flags, unsigned char *zero,
                   size_t first, size_t stride, unsigned char *pairs_old,
                   unsigned char *have_old, unsigned char *pairs_new, unsigned char *have_new,
                   unsigned release, size_t probe)
{
    if (c == 0 || per == 0 || stride == 0 || nlen > n * c || (n > 0 && nlen <= (n - 1) * c) ||
        (olen && !old) || (nlen && !new_) || (n && (!maybe || !flags)) ||
        (release & ~(unsigned)(PF_RELEASE_OLD | PF_RELEASE_NEW)))
        return -1;
    const int hashing = pairs_old && have_old && pairs_new && have_new;
    const size_t piece = per * c;
    const size_t npieces = (n + per - 1) / per;
    int missed = 0; /* clusters the probe did not decide */
    for (size_t j = first; j < npieces; j += stride) {
        size_t k0 = j * per, k1 = k0 + per < n ? k0 + per : n;
        int same = 1;
        for (size_t k = k0; k < k1; k++) {
            if (!maybe[k])
                continue;
            size_t s = k * c, e = (k + 1) * c < nlen ? (k + 1) * c : nlen;
            if (e > olen) {
                flags[k] = 1;
            } else if (probe && e - s > probe) {
                flags[k] = memcmp(old + s, new_ + s, probe) != 0;
                if (!flags[k]) {
                    missed++;
                    if (release & PF_RELEASE_OLD)
                        willneed_pages(old + s + probe, e - s - probe);
                    if (release & PF_RELEASE_NEW)
                        willneed_pages(new_ + s + probe, e - s - probe);
                    flags[k] = memcmp(old + s + probe, new_ + s + probe, e - s - probe) != 0;
                }
            } else {
                flags[k] = memcmp(old + s, new_ + s, e - s) != 0;
            }
            if (zero)
                zero[k] = flags[k] && pf_first_nonzero(new_ + s, e - s) == e - s;
            same &= !flags[k];
        }
        size_t b0 = j * piece;
        if (hashing) {
            have_old[j] = b0 + piece <= olen && pf_b3_pairable(offset + b0, piece);
            have_new[j] = b0 + piece <= nlen && pf_b3_pairable(offset + b0, piece);
            if (have_old[j])
                pf_b3_pair(old + b0, piece, offset + b0, pairs_old + 64 * j);
            if (have_new[j]) {
                if (same && have_old[j])
                    memcpy(pairs_new + 64 * j, pairs_old + 64 * j, 64);
                else
                    pf_b3_pair(new_ + b0, piece, offset + b0, pairs_new + 64 * j);
            }
        }
        if ((release & PF_RELEASE_OLD) && b0 < olen)
            release_pages(old + b0, olen - b0 < piece ? olen - b0 : piece);
        if ((release & PF_RELEASE_NEW) && same && b0 < nlen)
            release_pages(new_ + b0, nlen - b0 < piece ? nlen - b0 : piece);
    }
    return missed;
}
