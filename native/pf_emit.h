/* rdiff engine, command encoding (pf_emit.c): the headers of a librsync delta's COPY and
 * LITERAL commands (docs/rdiff.md). Which commands to write is the caller's (DeltaWriter in
 * ploopfs/services/rdiff.py merges contiguous copies and gathers short literals).
 *
 * Only the declarations between the CDEF markers are fed to cffi's cdef().
 */
#ifndef PF_EMIT_H
#define PF_EMIT_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
enum {
    PF_CMD_MAX = 17 /* longest command header: opcode + 8 + 8 */
};

/* Delta command headers with minimal-width big-endian parameters. Return the header
 * length (<= PF_CMD_MAX), or 0 when len is 0. A LITERAL header is followed by len payload
 * bytes. */
size_t pf_cmd_copy(unsigned char *out, uint64_t start, uint64_t len);
size_t pf_cmd_literal(unsigned char *out, uint64_t len);
/* CDEF-END */

#endif /* PF_EMIT_H */
