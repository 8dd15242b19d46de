/* XXH3-128 compiled for AVX-512 (see pf_dedup_x86.c). */
#include "pf_dedup.h"

#if PF_DEDUP_X86
#pragma GCC target("avx512f,avx512bw,avx2")
#define XXH_INLINE_ALL
#include <xxhash.h>

void pf_dedup_hash_avx512(const unsigned char *buf, size_t len, uint64_t *out)
{
    XXH128_hash_t h = XXH3_128bits(buf, len);
    out[0] = h.low64;
    out[1] = h.high64;
}
#endif
