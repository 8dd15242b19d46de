/* rdiff engine, the streaming patcher. See pf_patch.h and docs/rdiff.md. */
#define _GNU_SOURCE
#include "pf_patch.h"
#include "pf_emit.h"
#include "ploopfs_native.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PATCH_IO (1u << 20)
#define HOLE_GRAIN 65536u

enum { ST_HDR, ST_LIT, ST_DONE, ST_ERR };

struct pf_patch {
    int basis_fd, out_fd, sparse, state, err, err_no;
    uint64_t basis_size;
    unsigned char hdr[PF_CMD_MAX];
    size_t hlen, need;
    uint64_t lit_left;
    uint64_t fed;     /* bytes fed before the current piece */
    uint64_t cmd_off; /* offset of the current command's opcode */
    uint64_t pos;     /* output bytes produced */
    uint64_t commands;
    unsigned char *io;
};

pf_patch *pf_patch_new(int basis_fd, int out_fd, uint64_t basis_size, int sparse)
{
    pf_patch *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->io = malloc(PATCH_IO);
    if (!p->io) {
        free(p);
        return NULL;
    }
    p->basis_fd = basis_fd;
    p->out_fd = out_fd;
    p->basis_size = basis_size;
    p->sparse = sparse;
    p->state = ST_HDR;
    return p;
}

void pf_patch_free(pf_patch *p)
{
    if (!p)
        return;
    free(p->io);
    free(p);
}

static int fail(pf_patch *p, int err, int err_no)
{
    p->state = ST_ERR;
    p->err = err;
    p->err_no = err_no;
    return err;
}

/* Append data to the output: pwrite at our own position (all-zero grains are skipped, making
 * holes, when sparse), else a plain write loop (pipes, devices). */
static int out_write(pf_patch *p, const unsigned char *d, size_t n)
{
    while (n) {
        size_t k = n;
        if (p->sparse) {
            k = n < HOLE_GRAIN ? n : HOLE_GRAIN;
            if (pf_first_nonzero(d, k) == k) {
                p->pos += k;
                d += k;
                n -= k;
                continue;
            }
        }
        ssize_t w = p->sparse ? pwrite(p->out_fd, d, k, (off_t)p->pos) : write(p->out_fd, d, k);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return fail(p, PF_PATCH_EWRITE, errno);
        }
        if (w == 0)
            return fail(p, PF_PATCH_EWRITE, ENOSPC);
        p->pos += (uint64_t)w;
        d += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Bytes from `start` that are certainly a hole of the basis (0 if data or unknown). */
static uint64_t basis_hole(const pf_patch *p, uint64_t start, uint64_t len)
{
    off_t d = lseek(p->basis_fd, (off_t)start, SEEK_DATA);
    if (d < 0)
        return errno == ENXIO ? len : 0; /* ENXIO: no data after start */
    return (uint64_t)d - start < len ? (uint64_t)d - start : len;
}

static int do_copy(pf_patch *p, uint64_t start, uint64_t len)
{
    while (len) {
        size_t k = len < PATCH_IO ? (size_t)len : PATCH_IO;
        if (p->sparse) { /* a hole of the basis is a hole of the output: nothing to read */
            uint64_t h = basis_hole(p, start, len);
            if (h) {
                p->pos += h;
                start += h;
                len -= h;
                continue;
            }
        }
        ssize_t r = pread(p->basis_fd, p->io, k, (off_t)start);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return fail(p, PF_PATCH_EREAD, errno);
        }
        if (r == 0) /* the basis shrank under us */
            return fail(p, PF_PATCH_ERANGE, 0);
        int rc = out_write(p, p->io, (size_t)r);
        if (rc)
            return rc;
        start += (uint64_t)r;
        len -= (uint64_t)r;
    }
    return 0;
}

static uint64_t get_be(const unsigned char *q, size_t w)
{
    uint64_t v = 0;
    for (size_t i = 0; i < w; i++)
        v = (v << 8) | q[i];
    return v;
}

/* Execute the complete header in p->hdr. */
static int run_header(pf_patch *p)
{
    unsigned op = p->hdr[0];
    p->commands++;
    if (op >= 0x41 && op <= 0x44) {
        uint64_t len = get_be(p->hdr + 1, p->need - 1);
        if (len == 0)
            return fail(p, PF_PATCH_EZERO, 0);
        if (len >> 63)
            return fail(p, PF_PATCH_ERANGE, 0);
        p->lit_left = len;
        p->state = ST_LIT;
        return 0;
    }
    unsigned c = op - 0x45;
    size_t wa = (size_t)1 << (c / 4), wb = (size_t)1 << (c % 4);
    uint64_t start = get_be(p->hdr + 1, wa), len = get_be(p->hdr + 1 + wa, wb);
    if (len == 0)
        return fail(p, PF_PATCH_EZERO, 0);
    if ((start >> 63) || (len >> 63) || start > p->basis_size || len > p->basis_size - start)
        return fail(p, PF_PATCH_ERANGE, 0);
    p->state = ST_HDR;
    return do_copy(p, start, len);
}

int pf_patch_feed(pf_patch *p, const unsigned char *buf, size_t len, size_t *consumed)
{
    size_t i = 0;
    int rc = PF_PATCH_MORE;

    if (!p || (len && !buf))
        return PF_PATCH_ESTATE;
    if (p->state == ST_DONE || p->state == ST_ERR) {
        rc = PF_PATCH_ESTATE;
        goto out;
    }
    while (i < len) {
        if (p->state == ST_LIT) {
            size_t k = len - i < p->lit_left ? len - i : (size_t)p->lit_left;
            if ((rc = out_write(p, buf + i, k)) != 0)
                goto out;
            i += k;
            p->lit_left -= k;
            if (p->lit_left == 0)
                p->state = ST_HDR;
            continue;
        }
        if (p->hlen == 0) {
            unsigned op = buf[i];
            p->cmd_off = p->fed + i;
            p->hdr[0] = (unsigned char)op;
            p->hlen = 1;
            i++;
            if (op == 0) {
                p->state = ST_DONE;
                p->hlen = 0;
                rc = PF_PATCH_DONE;
                goto out;
            }
            if (op <= 0x40) {
                p->commands++;
                p->lit_left = op;
                p->state = ST_LIT;
                p->hlen = 0;
                continue;
            }
            if (op <= 0x44) {
                p->need = 1 + ((size_t)1 << (op - 0x41));
            } else if (op <= 0x54) {
                unsigned c = op - 0x45;
                p->need = 1 + ((size_t)1 << (c / 4)) + ((size_t)1 << (c % 4));
            } else {
                rc = fail(p, PF_PATCH_EBOGUS, 0);
                goto out;
            }
            continue;
        }
        size_t k = p->need - p->hlen;
        if (k > len - i)
            k = len - i;
        memcpy(p->hdr + p->hlen, buf + i, k);
        p->hlen += k;
        i += k;
        if (p->hlen == p->need) {
            p->hlen = 0;
            if ((rc = run_header(p)) != 0)
                goto out;
        }
    }
out:
    if (consumed)
        *consumed = i;
    p->fed += i;
    return rc;
}

int pf_patch_finish(pf_patch *p)
{
    if (!p)
        return PF_PATCH_ESTATE;
    if (p->sparse && ftruncate(p->out_fd, (off_t)p->pos) != 0)
        return fail(p, PF_PATCH_EWRITE, errno);
    return 0;
}

const char *pf_patch_error(const pf_patch *p, uint64_t *offset, int *err_no)
{
    if (offset)
        *offset = p ? p->cmd_off : 0;
    if (err_no)
        *err_no = p ? p->err_no : 0;
    if (!p)
        return "no patch state";
    switch (p->err) {
    case PF_PATCH_EBOGUS:
        return "bogus command (reserved opcode)";
    case PF_PATCH_EZERO:
        return "command with length 0";
    case PF_PATCH_ERANGE:
        return "COPY outside the basis, or a parameter of 2^63 or more";
    case PF_PATCH_EREAD:
        return "reading the basis failed";
    case PF_PATCH_EWRITE:
        return "writing the output failed";
    case PF_PATCH_ENOMEM:
        return "out of memory";
    default:
        return "no error";
    }
}

uint64_t pf_patch_written(const pf_patch *p)
{
    return p ? p->pos : 0;
}

uint64_t pf_patch_commands(const pf_patch *p)
{
    return p ? p->commands : 0;
}
