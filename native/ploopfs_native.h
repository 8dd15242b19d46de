/* ploopfs native helpers, exposed to Python through cffi (API mode) as ploopfs._native.
 *
 * Keep this header free of preprocessor directives other than the include guard and
 * system includes: build_native.py feeds the declarations between the markers to cdef().
 */
#ifndef PLOOPFS_NATIVE_H
#define PLOOPFS_NATIVE_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
/* ABI version of this module; bumped whenever a signature changes. */
int pf_version(void);

/* Index of the first non-zero byte of buf[0..len), or len if all bytes are zero.
 * buf may be NULL when len is 0. No alignment requirement. */
size_t pf_first_nonzero(const unsigned char *buf, size_t len);

/* Number of non-zero entries in v[0..n). v may be NULL when n is 0. */
size_t pf_count_nonzero_u32(const uint32_t *v, size_t n);
/* CDEF-END */

#endif /* PLOOPFS_NATIVE_H */
