/* Multi-buffer BLAKE2b (RFC 7693), see pf_b2x.h.
 *
 * The compression function is written once, on GCC vector types (one 64-bit BLAKE2b state
 * word per lane), and compiled twice by including this file into itself: 4 lanes for AVX2 and
 * 8 lanes for AVX-512 (function target attributes; the running CPU is asked which to use).
 * Each message word of a block is fetched for all lanes with one gather.
 */
#ifndef PF_B2X_BODY

#include "pf_b2x.h"

#include <blake2.h>
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* RFC 7693 §2.6 (IV) and §2.7 (SIGMA; rounds 10 and 11 reuse rows 0 and 1). */
static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};

static const uint8_t B2_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

#define B2_BLOCK 128

typedef uint64_t b2v4 __attribute__((vector_size(32)));
typedef uint64_t b2v8 __attribute__((vector_size(64)));

#define B2_ROTR(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
#define B2_G(a, b, c, d, x, y)                                                                     \
    do {                                                                                           \
        a = a + b + (x);                                                                           \
        d = B2_ROTR(d ^ a, 32);                                                                    \
        c = c + d;                                                                                 \
        b = B2_ROTR(b ^ c, 24);                                                                    \
        a = a + b + (y);                                                                           \
        d = B2_ROTR(d ^ a, 16);                                                                    \
        c = c + d;                                                                                 \
        b = B2_ROTR(b ^ c, 63);                                                                    \
    } while (0)

/* 4 lanes, AVX2 */
#define PF_B2X_BODY 1
#define B2X_NAME b2x_avx2
#define B2X_VT b2v4
#define B2X_W 4
#define B2X_TARGET "avx2"
#define B2X_GATHER(base, idx) \
    ((b2v4)_mm256_i64gather_epi64((const long long *)(const void *)(base), (__m256i)(idx), 1))
#include "pf_b2x.c"
#undef B2X_NAME
#undef B2X_VT
#undef B2X_W
#undef B2X_TARGET
#undef B2X_GATHER

/* 8 lanes, AVX-512 */
#define B2X_NAME b2x_avx512
#define B2X_VT b2v8
#define B2X_W 8
#define B2X_TARGET "avx512f"
#define B2X_GATHER(base, idx) ((b2v8)_mm512_i64gather_epi64((__m512i)(idx), (const void *)(base), 1))
#include "pf_b2x.c"
#undef PF_B2X_BODY

static int lanes_limit = 8;

static int cpu_lanes(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return 8;
    if (__builtin_cpu_supports("avx2"))
        return 4;
    return 1;
}

int pf_blake2b_lanes(void)
{
    int cpu = cpu_lanes();
    int lim = __atomic_load_n(&lanes_limit, __ATOMIC_RELAXED);
    return cpu < lim ? cpu : lim;
}

int pf_blake2b_limit(int lanes)
{
    __atomic_store_n(&lanes_limit, lanes >= 8 ? 8 : lanes >= 4 ? 4 : 1, __ATOMIC_RELAXED);
    return pf_blake2b_lanes();
}

/* One batch of w lanes (w = 4 or 8) for n <= w messages: missing lanes repeat the last
 * message and their digests are dropped. */
static void batch(int w, const unsigned char *const *msgs, size_t n, size_t len, size_t outlen,
                  unsigned char *out)
{
    const unsigned char *lane[8];
    unsigned char tmp[8 * 64];
    for (int i = 0; i < w; i++)
        lane[i] = msgs[(size_t)i < n ? (size_t)i : n - 1];
    if (w == 8)
        b2x_avx512(lane, len, outlen, tmp);
    else
        b2x_avx2(lane, len, outlen, tmp);
    memcpy(out, tmp, n * outlen);
}

int pf_blake2b_many(const unsigned char *const *msgs, size_t count, size_t len, size_t outlen,
                    unsigned char *out)
{
    static const unsigned char empty[1] = {0};
    if (outlen < 1 || outlen > 64 || (count && (!msgs || !out)))
        return -1;
    for (size_t i = 0; i < count; i++)
        if (!msgs[i] && len)
            return -1;
    int lanes = pf_blake2b_lanes();
    size_t i = 0;
    while (i < count) {
        size_t left = count - i;
        if (lanes == 8 && left > 4) {
            size_t n = left < 8 ? left : 8;
            batch(8, msgs + i, n, len, outlen, out + i * outlen);
            i += n;
        } else if (lanes >= 4 && left > 1) {
            size_t n = left < 4 ? left : 4;
            batch(4, msgs + i, n, len, outlen, out + i * outlen);
            i += n;
        } else {
            blake2b(out + i * outlen, msgs[i] ? msgs[i] : empty, NULL, outlen, len, 0);
            i++;
        }
    }
    return 0;
}

#else /* PF_B2X_BODY: one lane width, included above */

__attribute__((target(B2X_TARGET))) static void
B2X_NAME(const unsigned char *const *msgs, size_t len, size_t outlen, unsigned char *out)
{
    B2X_VT h[8], m[16], v[16], idx;
    const unsigned char *base = msgs[0];
    _Alignas(64) unsigned char tail[B2X_W][B2_BLOCK];

    /* Each lane's byte offset from lane 0's message: one gather then reads a word of all. */
    for (int i = 0; i < B2X_W; i++)
        idx[i] = (uint64_t)((uintptr_t)msgs[i] - (uintptr_t)base);
    for (int i = 0; i < 8; i++)
        h[i] = (B2X_VT){0} + B2_IV[i];
    h[0] ^= 0x01010000u ^ (uint64_t)outlen; /* parameter block: fanout 1, depth 1, no key */

    /* Every block but the last is compressed with the running byte count; the last one
     * (zero-padded; a single zero block for an empty message) with the final flag. */
    size_t nonfinal = len ? (len - 1) / B2_BLOCK : 0;
    size_t rem = len - nonfinal * B2_BLOCK;
    uint64_t t = 0;
    for (size_t b = 0; b <= nonfinal; b++) {
        int last = b == nonfinal;
        if (!last || rem == B2_BLOCK) {
            const unsigned char *p = base + b * B2_BLOCK;
            for (int k = 0; k < 16; k++)
                m[k] = B2X_GATHER(p + 8 * k, idx);
            t += B2_BLOCK;
        } else {
            B2X_VT tidx;
            memset(tail, 0, sizeof tail);
            for (int i = 0; i < B2X_W; i++) {
                if (rem)
                    memcpy(tail[i], msgs[i] + b * B2_BLOCK, rem);
                tidx[i] = (uint64_t)i * B2_BLOCK;
            }
            for (int k = 0; k < 16; k++)
                m[k] = B2X_GATHER(&tail[0][0] + 8 * k, tidx);
            t += rem;
        }
        for (int i = 0; i < 8; i++) {
            v[i] = h[i];
            v[i + 8] = (B2X_VT){0} + B2_IV[i];
        }
        v[12] ^= t; /* the counter's high word stays 0: len < 2^64 */
        if (last)
            v[14] = ~v[14];
#pragma GCC unroll 12
        for (int r = 0; r < 12; r++) {
            const uint8_t *s = B2_SIGMA[r];
            B2_G(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);
            B2_G(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);
            B2_G(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);
            B2_G(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);
            B2_G(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);
            B2_G(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);
            B2_G(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);
            B2_G(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);
        }
        for (int i = 0; i < 8; i++)
            h[i] ^= v[i] ^ v[i + 8];
    }
    /* Digest: the state words little-endian, first outlen bytes, per lane. */
    for (int i = 0; i < B2X_W; i++) {
        unsigned char d[64];
        for (int k = 0; k < 8; k++)
            for (int j = 0; j < 8; j++)
                d[8 * k + j] = (unsigned char)(h[k][i] >> (8 * j));
        memcpy(out + (size_t)i * outlen, d, outlen);
    }
}

#endif /* PF_B2X_BODY */
