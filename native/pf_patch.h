/* rdiff engine, patcher (pf_patch.c): applies any librsync delta, streaming, with bounded
 * memory (docs/rdiff.md).
 *
 * Only the declarations between the CDEF markers are fed to cffi's cdef().
 */
#ifndef PF_PATCH_H
#define PF_PATCH_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
/* Streaming patcher. Feed the delta (after its 4-byte magic) in pieces of any size; it
 * writes the new file to out_fd (a regular file: all-zero runs become holes, so call
 * pf_patch_finish to set the final length) from the literals and from basis_fd (read with
 * pread). pf_patch_feed returns PF_PATCH_MORE (all input consumed, feed more),
 * PF_PATCH_DONE (END seen; *consumed says how much of this piece it used) or an error
 * (< 0); pf_patch_error gives a message and the offset of the failing command relative to
 * the first byte fed. */
enum {
    PF_PATCH_MORE = 0,
    PF_PATCH_DONE = 1,
    PF_PATCH_EBOGUS = -1,  /* reserved opcode */
    PF_PATCH_EZERO = -2,   /* zero length */
    PF_PATCH_ERANGE = -3,  /* offset or length >= 2^63, or COPY past end of basis */
    PF_PATCH_EREAD = -4,   /* pread of the basis failed (errno kept) */
    PF_PATCH_EWRITE = -5,  /* write of the output failed (errno kept) */
    PF_PATCH_ENOMEM = -6,
    PF_PATCH_ESTATE = -7   /* fed after DONE or after an error */
};
typedef struct pf_patch pf_patch;
pf_patch *pf_patch_new(int basis_fd, int out_fd, uint64_t basis_size, int sparse);
void pf_patch_free(pf_patch *p);
int pf_patch_feed(pf_patch *p, const unsigned char *buf, size_t len, size_t *consumed);
/* Sets the output length (holes at the end) and returns 0, or PF_PATCH_EWRITE. */
int pf_patch_finish(pf_patch *p);
const char *pf_patch_error(const pf_patch *p, uint64_t *offset, int *err_no);
uint64_t pf_patch_written(const pf_patch *p);
uint64_t pf_patch_commands(const pf_patch *p);
/* CDEF-END */

#endif /* PF_PATCH_H */
