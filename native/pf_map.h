/* Block-map building blocks (format.md §2.2, §2.3, §4.1), for the volume layer and the
 * diff's candidate walk: the loops over every BAT entry and every extent of a chain, which
 * numpy did before (importing numpy cost every command ~75 ms of its start).
 *
 * Keep this header free of preprocessor directives other than the include guard and
 * system includes: build_native.py feeds the declarations between the markers to cdef().
 */
#ifndef PF_MAP_H
#define PF_MAP_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
/* The non-zero slots of a piece of a BAT: `raw` holds n little-endian u32 entries, the first
 * one being slot `first`. For every non-zero entry, out_v[k] = its slot and out_e[k] = the
 * entry (k counting up from 0); returns k. *bad = how many of them are unreadable, i.e.
 * outside [lowest, highest] in entry units (the caller passes bounds that exclude the reserved
 * value 0xffffffff, format.md §2.3). out_v and out_e hold n each. */
size_t pf_bat_nonzero(const unsigned char *raw, size_t n, uint32_t first, int64_t lowest,
                      int64_t highest, uint32_t *out_v, uint32_t *out_e, size_t *bad);

/* One level of a chain for pf_map_merge: n mapped virtual clusters v[] (sorted, distinct),
 * their entries e[] (file byte offset e * unit), stamped as `level`. e == NULL: a zero-mask
 * level (salvage): offset v * cluster_size (made up, so that runs still merge). */
typedef struct {
    const uint32_t *v;
    const uint32_t *e;
    size_t n;
    uint64_t unit;
    int level;
} pf_map_level;

/* Merge the levels, bottom (first) to top (last; later levels win, format.md §4.1), over virtual
 * clusters [0, nclusters) into extents: runs of consecutive clusters served by one level from
 * consecutive file offsets (cluster_size apart). Writes extent i as vstart[i], count[i],
 * level[i], offset[i]; returns the number of extents, or (size_t)-1 if scratch memory could
 * not be had. cap (the room of each output) must be at least the sum of the levels' n. */
size_t pf_map_merge(const pf_map_level *levels, size_t nlevels, uint64_t nclusters,
                    uint64_t cluster_size, uint32_t *vstart, uint32_t *count, uint8_t *level,
                    int64_t *offset, size_t cap);

/* A merged map (pf_map_merge's output) seen by pf_candidate_runs: key[level] names the file
 * of each level (equal keys: the same file); zero_level marks extents that read as zeros;
 * raw_base: clusters no extent covers are served by level 0 at their own offset (format.md §4.1 rule
 * 3), else they read as zeros. */
typedef struct {
    const uint32_t *vstart;
    const uint32_t *count;
    const uint8_t *level;
    const int64_t *offset;
    size_t n;
    const int64_t *key;
    int zero_level;
    int raw_base;
} pf_map_view;

/* The runs of clusters [0, common) whose source differs between the two maps: not the same
 * file and offset, and not zeros on both sides. Adjacent runs are merged. Writes run i as
 * first[i], runs[i] (cluster count); returns the number of runs. cap must be at least
 * 2 * (a->n + b->n) + 1. */
size_t pf_candidate_runs(const pf_map_view *a, const pf_map_view *b, uint64_t common,
                         uint64_t cluster_size, int64_t *first, int64_t *runs, size_t cap);
/* CDEF-END */

#endif /* PF_MAP_H */
