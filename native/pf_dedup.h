/* ploopfs dedup estimator (`ploopfs du --dedup`, docs/dedup.md): a bounded-memory table of
 * 128-bit block hashes with reference counts, and a scanner that hashes the small (4 KiB) and
 * large (128 KiB) blocks of a buffer into two such tables.
 *
 * The hash is XXH3-128 from libxxhash (header-only, XXH_INLINE_ALL; the default secret, no seed:
 * a seeded XXH3 derives a new secret on every call, which costs ~10 % on 4 KiB blocks);
 * our code is the table, the sampling and the counting.
 *
 * Sampling (consistent, hash-based): a table at shift k keeps only hashes whose low k bits
 * are zero. Every copy of a kept block is kept, so the kept entries are a uniform random sample
 * of the distinct blocks carrying exact reference counts: entries * 2^k estimates the distinct
 * blocks, and refs / entries the dedup ratio, without bias. When the table would outgrow its
 * memory limit, k goes up by one and the entries that no longer qualify are dropped (their
 * hashes never qualify again, so nothing counted later is inconsistent).
 *
 * Like ploopfs_native.h, only the declarations between the CDEF markers are fed to cffi's
 * cdef(), so nothing there may use the preprocessor.
 */
#ifndef PF_DEDUP_H
#define PF_DEDUP_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
enum {
    PF_DDT_ENTRY_BYTES = 24, /* one slot: 128-bit hash + 64-bit count */
    PF_DDT_MIN_BYTES = 4096, /* smallest memory limit accepted */
    PF_DDT_BUCKETS = 64      /* histogram buckets: floor(log2(refcount)) */
};

/* Hash table of (lo, hi) 128-bit hashes -> reference count. Open addressing, linear probing,
 * power-of-two capacity, load <= 0.7. The slot array never exceeds mem_limit bytes, and a
 * resize (old + new array) stays within mem_limit too. shift: initial sampling bits (0 = exact,
 * at most 63). NULL on bad arguments or no memory. */
typedef struct pf_ddt pf_ddt;
pf_ddt *pf_ddt_new(uint64_t mem_limit, unsigned shift);
void pf_ddt_free(pf_ddt *t);
/* Count one occurrence of a hash. Returns 1 if it was kept (counted), 0 if sampled out,
 * -1 on no memory (the table is unchanged). */
int pf_ddt_add(pf_ddt *t, uint64_t lo, uint64_t hi);
/* Reference count of a hash (0 if absent or sampled out). */
uint64_t pf_ddt_count(const pf_ddt *t, uint64_t lo, uint64_t hi);
uint64_t pf_ddt_entries(const pf_ddt *t);   /* distinct kept hashes */
uint64_t pf_ddt_refs(const pf_ddt *t);      /* sum of the kept hashes' counts */
uint64_t pf_ddt_offered(const pf_ddt *t);   /* hashes passed to pf_ddt_add */
uint64_t pf_ddt_capacity(const pf_ddt *t);  /* slots */
unsigned pf_ddt_shift(const pf_ddt *t);     /* current sampling bits */
uint64_t pf_ddt_peak_bytes(const pf_ddt *t); /* most slot-array bytes held at once */
/* For b in [0, PF_DDT_BUCKETS): entries[b] = kept hashes whose count c has
 * floor(log2(c)) == b, refs[b] = the sum of their counts. */
void pf_ddt_histogram(const pf_ddt *t, uint64_t *entries, uint64_t *refs);

/* Scanner over two block sizes. small_len divides large_len (at most 256 small blocks in a
 * large one); buffers passed to pf_dedup_feed start on a large-block boundary of the disk.
 * All-zero blocks are counted apart and never enter a table. A small block's hash is
 * pf_dedup_hash of its bytes; a large block's is pf_dedup_hash of the concatenated 16-byte
 * (lo, hi little-endian in memory order) hashes of its small blocks, so the data is hashed
 * once. Every non-zero large block whose hash satisfies ((lo >> 32) % sample_every) == 0 is
 * reported as a compression sample pick, so the same content is always picked
 * (sample_every >= 1; 1 = every block). pf_dedup_feed may run on several threads at once:
 * hashing runs in parallel, the table updates under a mutex. */
typedef struct pf_dedup pf_dedup;
pf_dedup *pf_dedup_new(uint64_t small_len, uint64_t large_len, uint64_t small_mem,
                       uint64_t large_mem, unsigned shift, uint64_t sample_every);
void pf_dedup_free(pf_dedup *d);
/* Hash buf[0..len): whole large blocks, except that the last one (and its last small block)
 * may be short at the end of a disk. Writes up to max_picks triples (index of the large block
 * within buf, hash lo, hash hi) to picks; returns the number of picks, or -1 (bad arguments,
 * no memory, more picks than max_picks). ceil(len / large_len) triples always suffice. */
int64_t pf_dedup_feed(pf_dedup *d, const unsigned char *buf, size_t len, uint64_t *picks,
                      size_t max_picks);
/* which: 0 = small blocks, 1 = large blocks. */
pf_ddt *pf_dedup_table(pf_dedup *d, int which);
uint64_t pf_dedup_blocks(const pf_dedup *d, int which); /* blocks hashed (zero or not) */
uint64_t pf_dedup_zero(const pf_dedup *d, int which);   /* all-zero blocks */
/* XXH3-128 of buf[0..len) into out[0] = lo, out[1] = hi. */
void pf_dedup_hash(const unsigned char *buf, size_t len, uint64_t *out);
/* CDEF-END */

/* Vector variants of pf_dedup_hash (pf_dedup_x86*.c), chosen at run time; variant 0 is the
 * baseline build. pf_dedup_hash_variant(v, ...) returns -1 if the CPU lacks variant v
 * (1 = AVX2, 2 = AVX-512), else hashes like pf_dedup_hash and returns 0. */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__)
#define PF_DEDUP_X86 1
void pf_dedup_hash_avx2(const unsigned char *buf, size_t len, uint64_t *out);
void pf_dedup_hash_avx512(const unsigned char *buf, size_t len, uint64_t *out);
#else
#define PF_DEDUP_X86 0
#endif
int pf_dedup_hash_variant(int v, const unsigned char *buf, size_t len, uint64_t *out);

#endif /* PF_DEDUP_H */
