/* rdiff engine, search (pf_search.c): a hash index over a signature's records and the aligned
 * matcher: each block of the new file is tried against the basis block at the same index
 * first, then looked up in the index (moved blocks). No rolling search: data in a ploop image
 * never moves by less than a cluster (docs/rdiff.md).
 *
 * Only the declarations between the CDEF markers are fed to cffi's cdef().
 */
#ifndef PF_SEARCH_H
#define PF_SEARCH_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
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
 * prefixes shorter than 16 bytes, an equal weak sum), or -1. The block at the same index is
 * tried first, then the hash index. Returns the number of blocks, or -1. */
int64_t pf_match_chunk(const pf_index *ix, const unsigned char *buf, size_t len,
                       uint64_t first_block, int64_t *match);
/* CDEF-END */

#endif /* PF_SEARCH_H */
