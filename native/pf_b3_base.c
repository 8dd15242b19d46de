/* The BLAKE3 dispatcher (CPU features read once, the fastest back end chosen at run time) and
 * the portable back end, from the official C sources (see pf_b3.h). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-function"
#if !(defined(__x86_64__) || defined(__i386__))
#define BLAKE3_NO_SSE2
#define BLAKE3_NO_SSE41
#define BLAKE3_NO_AVX2
#define BLAKE3_NO_AVX512
#endif
#include <blake3_dispatch.c>
#include <blake3_portable.c>
#pragma GCC diagnostic pop
