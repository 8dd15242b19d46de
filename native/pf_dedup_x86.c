/* XXH3-128 compiled for AVX2 and for AVX-512 (pf_dedup.c picks one at run time with
 * __builtin_cpu_supports; the module itself is built for baseline x86-64, i.e. SSE2). XXH3's
 * output does not depend on the vector unit used; test_dedup.c checks that all variants agree.
 * Declarations: pf_dedup.h, outside the cffi section. */
#include "pf_dedup.h"

#if PF_DEDUP_X86
#pragma GCC target("avx2")
#define XXH_INLINE_ALL
#include <xxhash.h>

void pf_dedup_hash_avx2(const unsigned char *buf, size_t len, uint64_t *out)
{
    XXH128_hash_t h = XXH3_128bits(buf, len);
    out[0] = h.low64;
    out[1] = h.high64;
}
#endif
