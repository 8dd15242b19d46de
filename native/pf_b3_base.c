/* The BLAKE3 dispatcher (CPU features read once, the fastest back end chosen at run time) and
 * the portable back end, from the official C sources (see pf_b3.h). The SIMD back ends are the
 * project's x86-64 assembly (pf_b3_*.S); other machines use the portable code alone. */
#if !(defined(__x86_64__) && defined(__linux__))
#define BLAKE3_NO_SSE2
#define BLAKE3_NO_SSE41
#define BLAKE3_NO_AVX2
#define BLAKE3_NO_AVX512
#endif
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-function"
#include <blake3_dispatch.c>
#include <blake3_portable.c>
#pragma GCC diagnostic pop
