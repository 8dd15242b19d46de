/* BLAKE3's avx2 back end: the official x86-64 assembly (see pf_b3.h), through the C
 * preprocessor. Empty on other machines, where pf_b3_base.c leaves it out. */
#if defined(__x86_64__) && defined(__linux__)
#include <blake3_avx2_x86-64_unix.S>
#endif
