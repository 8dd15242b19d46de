/* The floor of what any FUSE daemon can reach on this machine, for tools/bench/mount_bench.py
 * only (never used by ploopfs): a minimal single-threaded libfuse3 low-level server exposing one
 * read-only file "disk" whose reads are a plain pread() of a backing file into one reused buffer,
 * answered with fuse_reply_buf(). What it costs per request is the kernel round trip + libfuse +
 * pread; everything a Python server spends above that is interpreter, pyfuse3, trio and ploopfs.
 *
 * Same mount options and caching as `ploopfs mount`: ro, default_permissions, auto_unmount,
 * keep_cache (or direct_io), attribute/entry timeouts of a day. SIGTERM/SIGINT unmount cleanly.
 *
 *   cfuse_floor BACKING_FILE MOUNTPOINT DIRECT_IO(0|1)
 *   cc -O2 -o cfuse_floor cfuse_floor.c $(pkg-config --cflags --libs fuse3)
 */
#define FUSE_USE_VERSION 34
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DISK_INO 2
#define TIMEOUT 86400.0

static int backing_fd;
static off_t disk_size;
static int direct_io;
static char *buf;
static size_t buf_size;

static void fill_stat(fuse_ino_t ino, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    if (ino == FUSE_ROOT_ID) {
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
    } else {
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_size = disk_size;
        st->st_blksize = 1 << 20;
        st->st_blocks = (disk_size + 511) / 512;
    }
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct fuse_entry_param e;
    if (parent != FUSE_ROOT_ID || strcmp(name, "disk") != 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    memset(&e, 0, sizeof e);
    e.ino = DISK_INO;
    e.attr_timeout = TIMEOUT;
    e.entry_timeout = TIMEOUT;
    fill_stat(DISK_INO, &e.attr);
    fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct stat st;
    (void)fi;
    if (ino != FUSE_ROOT_ID && ino != DISK_INO) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    fill_stat(ino, &st);
    fuse_reply_attr(req, &st, TIMEOUT);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (ino != DISK_INO) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    if ((fi->flags & O_ACCMODE) != O_RDONLY) {
        fuse_reply_err(req, EROFS);
        return;
    }
    fi->keep_cache = !direct_io;
    fi->direct_io = direct_io;
    fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    size_t got = 0;
    (void)ino;
    (void)fi;
    if (off >= disk_size) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if ((off_t)size > disk_size - off)
        size = (size_t)(disk_size - off);
    if (size > buf_size) {
        char *nb = realloc(buf, size);
        if (!nb) {
            fuse_reply_err(req, ENOMEM);
            return;
        }
        buf = nb;
        buf_size = size;
    }
    while (got < size) {
        ssize_t n = pread(backing_fd, buf + got, size - got, off + (off_t)got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fuse_reply_err(req, EIO);
            return;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    fuse_reply_buf(req, buf, got);
}

int main(int argc, char **argv)
{
    struct stat st;
    struct fuse_session *se;
    struct fuse_lowlevel_ops ops;
    char *fargv[] = {argv[0], "-o", "ro,default_permissions,fsname=cfuse_floor,auto_unmount"};
    struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
    int ret;

    if (argc != 4) {
        fprintf(stderr, "usage: %s BACKING_FILE MOUNTPOINT DIRECT_IO(0|1)\n", argv[0]);
        return 2;
    }
    backing_fd = open(argv[1], O_RDONLY);
    if (backing_fd < 0 || fstat(backing_fd, &st) != 0) {
        perror(argv[1]);
        return 1;
    }
    disk_size = st.st_size;
    direct_io = atoi(argv[3]) != 0;
    buf_size = 1 << 20;
    buf = malloc(buf_size);
    if (!buf)
        return 1;

    memset(&ops, 0, sizeof ops);
    ops.lookup = op_lookup;
    ops.getattr = op_getattr;
    ops.open = op_open;
    ops.read = op_read;
    se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (!se)
        return 1;
    if (fuse_set_signal_handlers(se) != 0 || fuse_session_mount(se, argv[2]) != 0) {
        fuse_session_destroy(se);
        return 1;
    }
    ret = fuse_session_loop(se);
    fuse_session_unmount(se);
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    free(buf);
    close(backing_fd);
    return ret ? 1 : 0;
}
