/* rdiff engine, signatures (pf_sig.c): the strong sums (MD4 from nettle, BLAKE2b from libb2
 * and, 8 blocks at a time, pf_b2x.h), a block's record (u32 weak sum + strong prefix), and the
 * signature writer, which hashes a chunk's blocks on several threads. The block hashing
 * helpers below CDEF-END serve the matcher too (pf_search.c).
 *
 * Only the declarations between the CDEF markers are fed to cffi's cdef() (no preprocessor
 * there); the rest is for the engine's other files.
 */
#ifndef PF_SIG_H
#define PF_SIG_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
/* Strong hashes (low nibble of the signature magic: 6 = MD4, 7 = BLAKE2), docs/rdiff.md. */
enum {
    PF_HASH_MD4 = 0,
    PF_HASH_BLAKE2 = 1,
    PF_MD4_LEN = 16,
    PF_BLAKE2_LEN = 32,
    PF_MAX_STRONG = 32
};

/* Full strong hash of buf[0..len) into out (16 bytes MD4, 32 bytes BLAKE2b-256, unkeyed).
 * Returns the digest length, or -1 for an unknown hash. */
int pf_strong(int hash, const unsigned char *buf, size_t len, unsigned char *out);

/* Signature writer context: block_len >= 1, 1 <= sum_len <= the hash's length, nthreads >= 1. */
typedef struct pf_sigctx pf_sigctx;
pf_sigctx *pf_sigctx_new(int hash, int weak, uint64_t block_len, size_t sum_len, int nthreads);
void pf_sigctx_free(pf_sigctx *ctx);
/* Signature records (u32 weak big-endian + sum_len strong bytes) of the blocks of
 * buf[0..len): ceil(len / block_len) records written to out. Every block but the last must
 * be full; the caller passes whole blocks except at end of file. Returns the number of bytes
 * written, or -1 (bad arguments, thread start failure). */
int64_t pf_sig_chunk(pf_sigctx *ctx, const unsigned char *buf, size_t len, unsigned char *out);
/* CDEF-END */

/* -- block hashing, shared with pf_search.c ---------------------------------------------- */

/* Blocks whose BLAKE2 sums are taken together, one per SIMD lane (pf_b2x.h). */
#define PF_SIG_BATCH 8

/* A known (hash, weak) pair of kinds (PF_HASH_*, PF_WEAK_*). */
int pf_sig_kinds_valid(int hash, int weak);
/* Digest length of a strong hash: PF_MD4_LEN or PF_BLAKE2_LEN. */
size_t pf_strong_len(int hash);
/* Weak sum and full strong hash (into strong) of an all-zero block of n bytes. */
uint32_t pf_zero_block_sums(int hash, int weak, uint64_t n, unsigned char *strong);
/* Strong sums of the full-length, not all-zero blocks among [k0, k1) of buf (block k at
 * k * block_len; k1 - k0 <= PF_SIG_BATCH), in one batch (BLAKE2 only): slot[k - k0] = index
 * of block k's sum in sums (PF_BLAKE2_LEN bytes each), or -1 (not batched: the caller hashes
 * it itself). */
void pf_sig_batch_strong(int hash, uint64_t block_len, const unsigned char *buf, size_t len,
                         uint64_t k0, uint64_t k1, int *slot, unsigned char *sums);
/* Threads worth starting for nb blocks: no more than there are full SIMD batches. */
int pf_sig_threads(int hash, int nthreads, uint64_t nb);
/* fn(arg, begin, end) over [0, n) split into up to nthreads contiguous ranges, the caller's
 * thread taking the first. A thread that cannot be started has its range done by the caller,
 * so this cannot fail. */
typedef void (*pf_range_fn)(void *arg, uint64_t begin, uint64_t end);
void pf_run_parallel(int nthreads, uint64_t n, pf_range_fn fn, void *arg);

static inline void pf_put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static inline uint32_t pf_get_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

#endif /* PF_SIG_H */
