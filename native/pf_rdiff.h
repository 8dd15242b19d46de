/* ploopfs rdiff engine: librsync-compatible signatures, aligned block matching, delta command
 * encoding and a streaming patcher (docs: docs/rdiff.md, ploopfs/services/rdiff.py through the
 * wrappers of ploopfs/native.py). Split by concern, as librsync is:
 *
 *   pf_rollsum.{c,h}  weak sums (rollsum, RabinKarp)
 *   pf_sig.{c,h}      strong sums, block records, the signature writer (and the block hashing
 *                     and threads the matcher shares)
 *   pf_search.{c,h}   hash index over a signature + aligned matching of new blocks
 *   pf_emit.{c,h}     delta command encoding (COPY / LITERAL headers)
 *   pf_patch.{c,h}    streaming patcher
 *
 * Hash primitives come from libraries: MD4 from nettle, BLAKE2b from libb2 (and pf_b2x.h for
 * 8 blocks at once). This header only gathers the five for the C tests and readers; cffi takes
 * each one's declarations from its own CDEF section (build_native.py lists them).
 */
#ifndef PF_RDIFF_H
#define PF_RDIFF_H

#include "pf_emit.h"
#include "pf_patch.h"
#include "pf_rollsum.h"
#include "pf_search.h"
#include "pf_sig.h"

#endif /* PF_RDIFF_H */
