/* BLAKE3's sse41 back end (official C sources, see pf_b3.h), compiled for that instruction set
 * only; blake3_dispatch.c calls it when the CPU has it. */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("sse4.1")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-function"
#include <blake3_sse41.c>
#pragma GCC diagnostic pop
#else
typedef int pf_b3_x86_sse41_unused;
#endif
