/* ploopfs rdiff engine: librsync-compatible signatures, aligned block matching, delta command
 * encoding and a streaming patcher (docs: docs/rdiff.md, ploopfs/services/rdiff.py).
 *
 * Hash primitives come from libraries: MD4 from nettle, BLAKE2b from libb2. Our own code is
 * the weak sums, the block compare / match index, the command encoding and the patcher.
 *
 * Like ploopfs_native.h, only the declarations between the CDEF markers are fed to cffi's
 * cdef(), so nothing there may use the preprocessor.
 */
#ifndef PF_RDIFF_H
#define PF_RDIFF_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
/* Strong hashes (low nibble of the signature magic: 6 = MD4, 7 = BLAKE2) and weak sums
 * (bits 0xF0: 0x30 = rollsum, 0x40 = RabinKarp), docs/rdiff.md */
enum {
    PF_HASH_MD4 = 0,
    PF_HASH_BLAKE2 = 1,
    PF_WEAK_ROLLSUM = 0,
    PF_WEAK_RABINKARP = 1,
    PF_MD4_LEN = 16,
    PF_BLAKE2_LEN = 32,
    PF_MAX_STRONG = 32,
    PF_CMD_MAX = 17 /* longest command header: opcode + 8 + 8 */
};

/* Weak sums over buf[0..len) exactly as librsync stores them: rollsum is
 * (s2 mod 2^16) << 16 | (s1 mod 2^16) with the +31 byte offset; RabinKarp starts at 1 and
 * multiplies by 0x08104225. buf may be NULL when len is 0. */
uint32_t pf_rollsum(const unsigned char *buf, size_t len);
uint32_t pf_rabinkarp(const unsigned char *buf, size_t len);

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

/* Match index over a signature's records (each 4 + sum_len bytes, block i at i * block_len).
 * The signature does not record the basis length, so the last record may cover a short block
 * of unknown length: matching relies on the sums alone (equal sums imply equal length, since
 * every sum covers exactly its block). records is copied. NULL on bad arguments or no memory. */
typedef struct pf_index pf_index;
pf_index *pf_index_new(int hash, int weak, uint64_t block_len, size_t sum_len,
                       const unsigned char *records, uint64_t nrec, int nthreads);
void pf_index_free(pf_index *ix);
/* Number of distinct records in the hash index (duplicates keep the first block). */
uint64_t pf_index_size(const pf_index *ix);
/* For each block of buf[0..len) (new-file blocks first_block, first_block+1, ...; the last
 * may be short), match[k] = index of a basis block with an equal strong-sum prefix (and, for
 * prefixes shorter than 16 bytes, an equal weak sum), or -1. The block at the same index is tried first, then the hash index. Returns
 * the number of blocks, or -1. */
int64_t pf_match_chunk(const pf_index *ix, const unsigned char *buf, size_t len,
                       uint64_t first_block, int64_t *match);

/* Delta command headers with minimal-width big-endian parameters. Return the header
 * length (<= PF_CMD_MAX), or 0 when len is 0. A LITERAL header is followed by len payload
 * bytes. */
size_t pf_cmd_copy(unsigned char *out, uint64_t start, uint64_t len);
size_t pf_cmd_literal(unsigned char *out, uint64_t len);

/* Streaming patcher. Feed the delta (after its 4-byte magic) in pieces of any size; it
 * writes the new file to out_fd (a regular file: all-zero runs become holes, so call
 * pf_patch_finish to set the final length) from the literals and from basis_fd (read with
 * pread). pf_patch_feed returns PF_PATCH_MORE (all input consumed, feed more),
 * PF_PATCH_DONE (END seen; *consumed says how much of this piece it used) or an error
 * (< 0); pf_patch_error gives a message and the offset of the failing command relative to
 * the first byte fed. */
enum {
    PF_PATCH_MORE = 0,
    PF_PATCH_DONE = 1,
    PF_PATCH_EBOGUS = -1,  /* reserved opcode */
    PF_PATCH_EZERO = -2,   /* zero length */
    PF_PATCH_ERANGE = -3,  /* offset or length >= 2^63, or COPY past end of basis */
    PF_PATCH_EREAD = -4,   /* pread of the basis failed (errno kept) */
    PF_PATCH_EWRITE = -5,  /* write of the output failed (errno kept) */
    PF_PATCH_ENOMEM = -6,
    PF_PATCH_ESTATE = -7   /* fed after DONE or after an error */
};
typedef struct pf_patch pf_patch;
pf_patch *pf_patch_new(int basis_fd, int out_fd, uint64_t basis_size, int sparse);
void pf_patch_free(pf_patch *p);
int pf_patch_feed(pf_patch *p, const unsigned char *buf, size_t len, size_t *consumed);
/* Sets the output length (holes at the end) and returns 0, or PF_PATCH_EWRITE. */
int pf_patch_finish(pf_patch *p);
const char *pf_patch_error(const pf_patch *p, uint64_t *offset, int *err_no);
uint64_t pf_patch_written(const pf_patch *p);
uint64_t pf_patch_commands(const pf_patch *p);
/* CDEF-END */

#endif /* PF_RDIFF_H */
