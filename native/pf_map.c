/* Block-map building blocks: see pf_map.h. */
#include "pf_map.h"

#include <stdlib.h>
#include <string.h>

/* Virtual clusters merged at a time: 64 Ki clusters of scratch (640 KiB). */
#define PF_MAP_WINDOW 65536u

static uint32_t load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

size_t pf_bat_nonzero(const unsigned char *raw, size_t n, uint32_t first, int64_t lowest,
                      int64_t highest, uint32_t *out_v, uint32_t *out_e, size_t *bad)
{
    size_t k = 0, nbad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t e = load_le32(raw + 4 * i);
        if (!e)
            continue;
        if ((int64_t)e < lowest || (int64_t)e > highest)
            nbad++;
        out_v[k] = first + (uint32_t)i;
        out_e[k] = e;
        k++;
    }
    *bad = nbad;
    return k;
}

/* First index of v[0..n) holding a value >= x. */
static size_t lower_bound(const uint32_t *v, size_t n, uint64_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if ((uint64_t)v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

size_t pf_map_merge(const pf_map_level *levels, size_t nlevels, uint64_t nclusters,
                    uint64_t cluster_size, uint32_t *vstart, uint32_t *count, uint8_t *level,
                    int64_t *offset, size_t cap)
{
    size_t *pos = calloc(nlevels ? nlevels : 1, sizeof *pos);
    size_t *end = calloc(nlevels ? nlevels : 1, sizeof *end);
    int16_t *owner = malloc(PF_MAP_WINDOW * sizeof *owner);
    int64_t *off = malloc(PF_MAP_WINDOW * sizeof *off);
    size_t out = 0;
    if (!pos || !end || !owner || !off) {
        out = (size_t)-1;
        goto done;
    }
    for (size_t l = 0; l < nlevels; l++)  /* clusters at or past nclusters are ignored */
        end[l] = levels[l].n ? lower_bound(levels[l].v, levels[l].n, nclusters) : 0;
    for (;;) {
        /* The next window any level touches (windows no level touches are skipped). */
        uint64_t lo = UINT64_MAX;
        for (size_t l = 0; l < nlevels; l++)
            if (pos[l] < end[l] && levels[l].v[pos[l]] < lo)
                lo = levels[l].v[pos[l]];
        if (lo == UINT64_MAX)
            break;
        uint64_t w0 = lo - lo % PF_MAP_WINDOW;
        uint64_t w1 = w0 + PF_MAP_WINDOW < nclusters ? w0 + PF_MAP_WINDOW : nclusters;
        size_t span = (size_t)(w1 - w0);
        memset(owner, 0xff, span * sizeof *owner);  /* -1: no level maps it */
        for (size_t l = 0; l < nlevels; l++) {  /* bottom to top: later stamps win */
            const pf_map_level *m = &levels[l];
            size_t p = pos[l];
            for (; p < end[l] && m->v[p] < w1; p++) {
                size_t i = (size_t)(m->v[p] - w0);
                owner[i] = (int16_t)m->level;
                off[i] = m->e ? (int64_t)((uint64_t)m->e[p] * m->unit)
                              : (int64_t)((uint64_t)m->v[p] * cluster_size);
            }
            pos[l] = p;
        }
        for (size_t i = 0; i < span; i++) {
            if (owner[i] < 0)
                continue;
            uint64_t x = w0 + i;
            if (out && (uint64_t)vstart[out - 1] + count[out - 1] == x &&
                level[out - 1] == (uint8_t)owner[i] &&
                offset[out - 1] + (int64_t)((uint64_t)count[out - 1] * cluster_size) == off[i]) {
                count[out - 1]++;
                continue;
            }
            if (out == cap) {  /* cannot happen when cap holds every level's clusters */
                out = (size_t)-1;
                goto done;
            }
            vstart[out] = (uint32_t)x;
            count[out] = 1;
            level[out] = (uint8_t)owner[i];
            offset[out] = off[i];
            out++;
        }
    }
done:
    free(pos);
    free(end);
    free(owner);
    free(off);
    return out;
}

/* Where cluster x of map m comes from: (file key, byte offset), key -1 for zeros; *next is the
 * first cluster after x where that may change. *p is the map's cursor (only moves forward). */
static void source_at(const pf_map_view *m, size_t *p, uint64_t x, uint64_t cluster_size,
                      int64_t *key, int64_t *off, uint64_t *next)
{
    while (*p < m->n && (uint64_t)m->vstart[*p] + m->count[*p] <= x)
        (*p)++;
    if (*p < m->n && m->vstart[*p] <= x) {
        size_t i = *p;
        *next = (uint64_t)m->vstart[i] + m->count[i];
        if (m->level[i] == m->zero_level) {
            *key = -1;
            *off = 0;
        } else {
            *key = m->key[m->level[i]];
            *off = m->offset[i] + (int64_t)((x - m->vstart[i]) * cluster_size);
        }
        return;
    }
    *next = *p < m->n ? m->vstart[*p] : UINT64_MAX;
    if (m->raw_base) {  /* format.md §4.1 rule 3: the raw base serves what no delta maps */
        *key = m->key[0];
        *off = (int64_t)(x * cluster_size);
    } else {
        *key = -1;
        *off = 0;
    }
}

size_t pf_candidate_runs(const pf_map_view *a, const pf_map_view *b, uint64_t common,
                         uint64_t cluster_size, int64_t *first, int64_t *runs, size_t cap)
{
    size_t pa = 0, pb = 0, k = 0;
    uint64_t x = 0;
    while (x < common) {
        int64_t ka, oa, kb, ob;
        uint64_t na, nb;
        source_at(a, &pa, x, cluster_size, &ka, &oa, &na);
        source_at(b, &pb, x, cluster_size, &kb, &ob, &nb);
        /* Both sides keep their source (and its offset steps by one cluster per cluster) up to
         * the nearer break: the whole piece is decided by its first cluster. */
        uint64_t y = na < nb ? na : nb;
        if (y > common)
            y = common;
        if (ka != kb || (ka >= 0 && oa != ob)) {
            if (k && first[k - 1] + runs[k - 1] == (int64_t)x) {
                runs[k - 1] += (int64_t)(y - x);
            } else {
                if (k == cap)
                    return (size_t)-1;
                first[k] = (int64_t)x;
                runs[k] = (int64_t)(y - x);
                k++;
            }
        }
        x = y;
    }
    return k;
}
