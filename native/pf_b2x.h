/* Multi-buffer BLAKE2b: the digests of several equal-length messages at once, one message per
 * SIMD lane (8 lanes with AVX-512, 4 with AVX2), for the signature and delta engine, which hash
 * thousands of independent equal-sized blocks (pf_sig.c, pf_search.c).
 *
 * Why our own code: libb2 and libsodium hash one message at a time (0.62 / 0.85 GB/s per core
 * here); a block's strong sum is the delta engine's bottleneck (docs/diff.md), and no packaged
 * library offers multi-buffer BLAKE2b. The algorithm is RFC 7693's, unkeyed, any digest length
 * 1..64; the digests are byte-identical to libb2's (C tests compare them for every length class,
 * tests/test_native.py with hypothesis). CPUs without AVX2 use libb2.
 *
 * Only the declarations between the CDEF markers are fed to cffi's cdef().
 */
#ifndef PF_B2X_H
#define PF_B2X_H

#include <stddef.h>

/* CDEF-BEGIN */
/* BLAKE2b (unkeyed, digest length outlen 1..64 bytes) of count messages msgs[0..count), each
 * len bytes long, into out + i * outlen. Returns 0, or -1 on bad arguments. */
int pf_blake2b_many(const unsigned char *const *msgs, size_t count, size_t len, size_t outlen,
                    unsigned char *out);
/* Lanes per batch of the implementation in use: 8 (AVX-512), 4 (AVX2) or 1 (libb2). */
int pf_blake2b_lanes(void);
/* For tests: use at most `lanes` lanes (8, 4 or 1; fewer than the CPU offers is allowed).
 * Returns the lanes now in use. */
int pf_blake2b_limit(int lanes);
/* CDEF-END */

#endif /* PF_B2X_H */
