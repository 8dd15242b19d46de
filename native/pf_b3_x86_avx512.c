/* BLAKE3's avx512 back end (official C sources, see pf_b3.h), compiled for that instruction set
 * only; blake3_dispatch.c calls it when the CPU has it. */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512vl")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-function"
#include <blake3_avx512.c>
#pragma GCC diagnostic pop
#else
typedef int pf_b3_x86_avx512_unused;
#endif
