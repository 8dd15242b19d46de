/* rdiff engine, command encoding. See pf_emit.h and docs/rdiff.md. */
#include "pf_emit.h"

/* Minimal big-endian width of v: 1, 2, 4 or 8 (like librsync's rs_int_len). */
static int int_width(uint64_t v)
{
    if (v <= 0xffu)
        return 1;
    if (v <= 0xffffu)
        return 2;
    if (v <= 0xffffffffu)
        return 4;
    return 8;
}

static int log2_width(int w)
{
    return w == 1 ? 0 : w == 2 ? 1 : w == 4 ? 2 : 3;
}

static void put_be(unsigned char *p, uint64_t v, int w)
{
    for (int i = w - 1; i >= 0; i--) {
        p[i] = (unsigned char)v;
        v >>= 8;
    }
}

size_t pf_cmd_copy(unsigned char *out, uint64_t start, uint64_t len)
{
    if (len == 0)
        return 0;
    int wa = int_width(start), wb = int_width(len);
    out[0] = (unsigned char)(0x45 + 4 * log2_width(wa) + log2_width(wb));
    put_be(out + 1, start, wa);
    put_be(out + 1 + wa, len, wb);
    return (size_t)(1 + wa + wb);
}

size_t pf_cmd_literal(unsigned char *out, uint64_t len)
{
    if (len == 0)
        return 0;
    if (len <= 64) {
        out[0] = (unsigned char)len;
        return 1;
    }
    int w = int_width(len);
    out[0] = (unsigned char)(0x41 + log2_width(w));
    put_be(out + 1, len, w);
    return (size_t)(1 + w);
}
