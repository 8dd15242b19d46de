/* rdiff engine, weak sums (pf_rollsum.c): librsync's rollsum and RabinKarp over a whole
 * block. ploopfs matches aligned blocks only, so nothing here rolls byte by byte: a block's sum
 * is computed in one pass, 32 bytes per unrolled step (docs/rdiff.md).
 *
 * Only the declarations between the CDEF markers are fed to cffi's cdef() (no preprocessor
 * there); the rest is for the engine's other files.
 */
#ifndef PF_ROLLSUM_H
#define PF_ROLLSUM_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
/* Weak sums (bits 0xF0 of the signature magic: 0x30 = rollsum, 0x40 = RabinKarp). */
enum {
    PF_WEAK_ROLLSUM = 0,
    PF_WEAK_RABINKARP = 1
};

/* Weak sums over buf[0..len) exactly as librsync stores them: rollsum is
 * (s2 mod 2^16) << 16 | (s1 mod 2^16) with the +31 byte offset; RabinKarp starts at 1 and
 * multiplies by 0x08104225. buf may be NULL when len is 0. */
uint32_t pf_rollsum(const unsigned char *buf, size_t len);
uint32_t pf_rabinkarp(const unsigned char *buf, size_t len);
/* CDEF-END */

/* Streaming forms, for a block given in pieces (the zero block, pf_sig.c). */
#define PF_RK_SEED 1u

/* rollsum state: s1 = sum of (b + 31), s2 = sum of the running s1; kept mod 2^32, which
 * keeps them right mod 2^16. Start at {0, 0}. */
struct pf_rollsum_state {
    uint32_t s1, s2;
};

void pf_rollsum_update(struct pf_rollsum_state *r, const unsigned char *p, size_t n);
uint32_t pf_rollsum_digest(const struct pf_rollsum_state *r);
/* RabinKarp of h's bytes followed by p[0..n); start from PF_RK_SEED. */
uint32_t pf_rabinkarp_update(uint32_t h, const unsigned char *p, size_t n);
/* pf_rollsum or pf_rabinkarp, by kind (PF_WEAK_*). */
uint32_t pf_weak_sum(int weak, const unsigned char *p, size_t n);

#endif /* PF_ROLLSUM_H */
