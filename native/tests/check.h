/* Shared counters and CHECK() for the C unit tests (test_native.c holds main()). */
#ifndef PF_TEST_CHECK_H
#define PF_TEST_CHECK_H

#include <stddef.h>
#include <stdio.h>

extern unsigned passed, failed;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (cond) {                                                        \
            passed++;                                                      \
        } else {                                                           \
            failed++;                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
        }                                                                  \
    } while (0)

/* malloc(n), or exit(2) when there is no memory (n == 0 allowed). */
void *xmalloc(size_t n);

void test_rdiff_all(void);
void test_dedup_all(void);
void test_b3_all(void);
void test_map_all(void);

#endif
