/* rdiff engine, weak sums. See pf_rollsum.h and docs/rdiff.md. */
#include "pf_rollsum.h"

#include <pthread.h>

#define RS_CHAR_OFFSET 31u
#define RK_MULT 0x08104225u
#define BLK 32 /* bytes per unrolled step of the weak sums */

/* The weak sums' inner loops vectorise well with AVX2; build an AVX2 and a baseline clone and
 * let the loader pick (GCC function multi-versioning). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define WEAK_CLONES __attribute__((target_clones("avx2", "default"), optimize("O3")))
#else
#define WEAK_CLONES
#endif

/* RK_MULT^(BLK-1-j) for j = 0..BLK-1, and RK_MULT^BLK; filled once. */
static uint32_t rk_weights[BLK];
static uint32_t rk_mult_blk;
static pthread_once_t rk_once = PTHREAD_ONCE_INIT;

static void rk_init(void)
{
    uint32_t p = 1;
    for (int j = BLK - 1; j >= 0; j--) {
        rk_weights[j] = p;
        p *= RK_MULT;
    }
    rk_mult_blk = p;
}

/* All arithmetic is on unsigned, so wrapping is defined. */
WEAK_CLONES void pf_rollsum_update(struct pf_rollsum_state *r, const unsigned char *p, size_t n)
{
    uint32_t s1 = r->s1, s2 = r->s2;
    /* Per BLK-byte step: s2 += BLK*s1 + sum (BLK-j)*(b_j+31); s1 += sum (b_j+31). */
    const uint32_t off_s1 = RS_CHAR_OFFSET * BLK;
    const uint32_t off_s2 = RS_CHAR_OFFSET * (BLK * (BLK + 1) / 2);
    while (n >= BLK) {
        uint32_t a = 0, b = 0;
        for (int j = 0; j < BLK; j++) {
            a += p[j];
            b += (uint32_t)(BLK - j) * p[j];
        }
        s2 += BLK * s1 + b + off_s2;
        s1 += a + off_s1;
        p += BLK;
        n -= BLK;
    }
    while (n--) {
        s1 += (uint32_t)*p++ + RS_CHAR_OFFSET;
        s2 += s1;
    }
    r->s1 = s1;
    r->s2 = s2;
}

uint32_t pf_rollsum_digest(const struct pf_rollsum_state *r)
{
    return ((r->s2 & 0xffffu) << 16) | (r->s1 & 0xffffu);
}

WEAK_CLONES static uint32_t rk_blocks(uint32_t h, const unsigned char *p, size_t n)
{
    while (n >= BLK) {
        uint32_t s = 0;
        for (int j = 0; j < BLK; j++)
            s += rk_weights[j] * p[j];
        h = h * rk_mult_blk + s;
        p += BLK;
        n -= BLK;
    }
    return h;
}

uint32_t pf_rabinkarp_update(uint32_t h, const unsigned char *p, size_t n)
{
    pthread_once(&rk_once, rk_init);
    size_t whole = n - n % BLK;
    h = rk_blocks(h, p, whole);
    p += whole;
    n -= whole;
    while (n--)
        h = h * RK_MULT + *p++;
    return h;
}

uint32_t pf_rollsum(const unsigned char *buf, size_t len)
{
    struct pf_rollsum_state r = {0, 0};
    if (len)
        pf_rollsum_update(&r, buf, len);
    return pf_rollsum_digest(&r);
}

uint32_t pf_rabinkarp(const unsigned char *buf, size_t len)
{
    return len ? pf_rabinkarp_update(PF_RK_SEED, buf, len) : PF_RK_SEED;
}

uint32_t pf_weak_sum(int weak, const unsigned char *p, size_t n)
{
    return weak == PF_WEAK_ROLLSUM ? pf_rollsum(p, n) : pf_rabinkarp(p, n);
}
