/* BLAKE3 as a tree: the whole-disk hashes of `ploopfs diff` (docs/diff.md, "Manifest hashes").
 *
 * BLAKE3 is a Merkle tree over 1 KiB chunks. A piece of P bytes (P a power of two, >= 2 KiB) at
 * an offset that is a multiple of P is a complete subtree, and its two top chaining values (its
 * "pair") depend only on its bytes and its offset. So when OLD and NEW hold the same bytes at
 * the same offset, NEW's pair is OLD's: a diff hashes OLD in full but only the changed pieces of
 * NEW, pieces can be hashed by any thread in any order, and the pairs are pushed into the
 * hasher in order. The digest is exactly BLAKE3 of the stream (what `b3sum` prints): feeding a
 * pair does to the hasher what blake3_hasher_update() of the piece's bytes does.
 *
 * The hash itself is the official BLAKE3 C implementation (portable, SSE2/SSE4.1/AVX2/AVX-512,
 * chosen at run time), compiled from the sources Debian ships in librust-blake3-dev
 * (docs/dependencies.md); only the pair bookkeeping is ours.
 *
 * Only the declarations between the CDEF markers are fed to cffi's cdef().
 */
#ifndef PF_B3_H
#define PF_B3_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
/* Bytes of a hasher state (callers allocate it; pf_b3_state_size() >= sizeof(blake3_hasher)). */
size_t pf_b3_state_size(void);
void pf_b3_init(void *state);
void pf_b3_update(void *state, const unsigned char *data, size_t len);
/* The 32-byte digest of everything fed so far (the state may be fed further). */
void pf_b3_final(const void *state, unsigned char out[32]);
/* 1 when a piece of `len` bytes at byte `offset` of the stream is a complete subtree (len a
 * power of two >= 2048, offset a multiple of len), else 0. */
int pf_b3_pairable(uint64_t offset, size_t len);
/* The pair (64 bytes) of a pairable piece. Returns 0, or -1 when not pairable. */
int pf_b3_pair(const unsigned char *data, size_t len, uint64_t offset, unsigned char pair[64]);
/* Feed `len` bytes that start where the stream so far ends, cut into pieces of `piece` bytes
 * (the last may be shorter): piece j by its pair pairs + 64 j when have[j] is set and the state
 * is at a piece boundary, else by its bytes (data may then be NULL only if no piece needs it).
 * Returns 0, or -1 when a piece without a usable pair has no data. */
int pf_b3_feed(void *state, const unsigned char *data, size_t len, size_t piece,
               const unsigned char *pairs, const unsigned char *have);
/* Bytes of the stream fed so far. */
uint64_t pf_b3_count(const void *state);

/* One window of `ploopfs diff`: OLD's bytes old[0..olen) and NEW's new[0..nlen), both from
 * byte `offset` of the disks, clusters of c bytes, pieces of `per` clusters, n clusters (the
 * last may be partial: NEW ends). For pieces j = first, first + stride, ... :
 *   flags[k] = 1 for every cluster k of the piece with maybe[k] set that differs or reaches
 *   past OLD's end (clusters with maybe[k] == 0 are proven equal and keep flags[k] == 0);
 *   with `zero` (may be NULL), zero[k] = 1 for such a changed cluster whose bytes in NEW are
 *   all zero, else 0 (for candidates; others are left alone): the sinks need it (a change to
 *   zeros), and here NEW's cluster is still in this core's cache, scanned up to its first
 *   non-zero byte, on the worker threads;
 *   with pairs_old/pairs_new (may be NULL): the pair of OLD's piece when OLD holds all of it
 *   and it is pairable (have_old[j] = 1), and NEW's the same way, copied from OLD's when every
 *   cluster of the piece is equal (no bytes of NEW hashed);
 *   then, with PF_RELEASE_OLD in `release`, the whole pages of OLD's piece are given back
 *   (madvise MADV_DONTNEED), and NEW's with PF_RELEASE_NEW when the piece is equal. Only for
 *   read-only views of a shared file mapping: the page cache keeps the bytes and a later access
 *   faults them in again, so what is read never changes; the resident set holds the pieces in
 *   work and NEW's changes, not whole windows.
 * probe (0: off): each candidate cluster longer than `probe` bytes is compared in two steps,
 *   its first `probe` bytes, then, only when they are equal, the rest, asked for first with
 *   MADV_WILLNEED on the sides named in `release` (file mappings). For windows whose pages were
 *   announced only `probe` bytes a cluster (scan's PROBE): a cluster changed early is never
 *   read whole, and one equal so far is read ahead in one request, not fault by fault.
 * Returns the number of clusters compared past their probe (0 without one), or -1 on bad
 * arguments. */
#define PF_RELEASE_OLD 1
#define PF_RELEASE_NEW 2
int pf_diff_window(const unsigned char *old, size_t olen, const unsigned char *new_,
                   size_t nlen, uint64_t offset, size_t c, size_t per, size_t n,
                   const unsigned char *maybe, unsigned char *flags, unsigned char *zero,
                   size_t first, size_t stride, unsigned char *pairs_old,
                   unsigned char *have_old, unsigned char *pairs_new, unsigned char *have_new,
                   unsigned release, size_t probe);
/* CDEF-END */

#endif /* PF_B3_H */
