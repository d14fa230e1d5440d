/*
 * layer-up and layer-down: the host-side mounts of a sandbox's root, done with direct
 * system calls in one short-lived process each way, instead of a mount(8) or umount(8)
 * process per mount (each of which costs more than all the system calls together).
 * These modes run as root on the host, never in a sandbox (where the supervisor has no
 * capabilities and seccomp refuses mount(2) anyway).
 *
 * This program decides nothing. The host's TypeScript plans every step (which file, which
 * mount point, which flags and options: src/sandbox/runtime/layer-plan.ts) and this
 * program checks the plan against a short, closed list of operations, then runs it:
 *
 *   corral-supervisor layer-up WITHIN STEP...
 *     loop-mount FILE TARGET ext4 FLAGS DATA   FILE on a free loop device (autoclear), mounted;
 *                                              DATA: nobarrier, noinit_itable or nothing
 *     mount SOURCE TARGET tmpfs|overlay FLAGS DATA
 *     mkdir PATH MODE UID GID                  exactly MODE (no umask), owned by UID:GID
 *   corral-supervisor layer-down WITHIN STEP...
 *     umount TARGET                            lazily if busy; a target already gone is fine
 *     loop-detach-under DIR                    every loop device whose backing file is under DIR
 *     loop-detach loopN DIR                    that one device, if its backing file is under DIR
 *
 * FLAGS is a comma-separated subset of nosuid,nodev,noatime (or empty). layer-up prints
 * "loop /dev/loopN" for each loop device it attached.
 *
 * Why it is safe to run as root on what it is given:
 *  - every path is absolute, canonical (no "//", ".", ".." or trailing "/") and of plain
 *    printable characters without ",", ":" or "\" (they would change the meaning of a
 *    mount option string); every path but an overlay's lower directory (the image, mounted
 *    read-only) lies strictly under WITHIN, which must be a directory of root's that no
 *    one else can write;
 *  - no symbolic link is ever followed: each path is resolved by openat2(2) with
 *    RESOLVE_NO_SYMLINKS; a mount target is then named by that descriptor
 *    (/proc/self/fd/N), an unmount target by one name below its resolved parent
 *    (UMOUNT_NOFOLLOW), a new directory by mkdirat(2) below its resolved parent, and a
 *    loop device's backing file is the descriptor that was opened and checked;
 *  - file systems, flags and option keys come from closed lists, and the whole plan is
 *    checked before its first step runs: a plan with anything else runs no step;
 *  - a layer-up that fails undoes the mounts it made (a loop device it attached then
 *    detaches itself: autoclear) before it exits.
 *
 * Exit status: 0 done; 1 a step failed (undone); 2 the plan was refused; 3 this kernel
 * lacks what these modes need (openat2, loop-control): the host then uses mount(8).
 * Every error is one line on stderr.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/loop.h>
#include <linux/openat2.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "layer-ops.h"

enum { EXIT_FAILED = 1, EXIT_REFUSED = 2, EXIT_UNSUPPORTED = 3 };

#define MAX_STEPS 16
#define MAX_DATA 8192
/* A loop device that another process takes between GET_FREE and CONFIGURE: try again. */
#define LOOP_ATTEMPTS 64
/* After a detach, how long a loop device may take to become free (another opener). */
#define LOOP_FREE_WAIT_MS 2000

static const char *mode_name = "layer";

/* One line on stderr, then the exit status: "corral-supervisor: layer-up: ...". */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    for (char *c = line; *c; c++)
        if (*c == '\n' || *c == '\r')
            *c = ' ';
    fprintf(stderr, "corral-supervisor: %s: %s\n", mode_name, line);
}

/* ------------------------------------------------------------ checking the plan */

/* Printable ASCII but space, and none of the characters that mean something in a
 * mount option string. */
static int plain_path_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != ',' && c != ':' && c != '\\';
}

/* Absolute, canonical, plain; not "/" itself. */
static int clean_path(const char *p)
{
    size_t n = strlen(p);
    if (n < 2 || n >= PATH_MAX || p[0] != '/' || p[n - 1] == '/')
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!plain_path_char((unsigned char)p[i]))
            return 0;
        if (p[i] == '/') {
            const char *c = p + i + 1; /* the next component */
            size_t len = strcspn(c, "/");
            if (len == 0 || (len == 1 && c[0] == '.') || (len == 2 && c[0] == '.' && c[1] == '.'))
                return 0;
        }
    }
    return 1;
}

/* Strictly below dir. */
static int strictly_under(const char *p, const char *dir)
{
    size_t n = strlen(dir);
    return strncmp(p, dir, n) == 0 && p[n] == '/' && p[n + 1] != '\0';
}

static int at_or_under(const char *p, const char *dir)
{
    return strcmp(p, dir) == 0 || strictly_under(p, dir);
}

static int parse_flags(const char *s, unsigned long *out)
{
    static const struct { const char *name; unsigned long flag; } known[] = {
        { "nosuid", MS_NOSUID }, { "nodev", MS_NODEV }, { "noatime", MS_NOATIME },
    };
    *out = 0;
    if (*s == '\0')
        return 1;
    char buf[64];
    if (strlen(s) >= sizeof buf)
        return 0;
    strcpy(buf, s);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        size_t i = 0;
        while (i < sizeof known / sizeof known[0] && strcmp(tok, known[i].name) != 0)
            i++;
        if (i == sizeof known / sizeof known[0] || (*out & known[i].flag))
            return 0;
        *out |= known[i].flag;
    }
    /* No empty items: "nosuid,,nodev" and a trailing comma are refused. */
    return strstr(s, ",,") == NULL && s[0] != ',' && s[strlen(s) - 1] != ',';
}

static int all_digits(const char *s, size_t max, int octal)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > (octal ? '7' : '9'))
            return 0;
    return 1;
}

static int parse_id(const char *s, unsigned *out)
{
    if (!all_digits(s, 10, 0))
        return 0;
    unsigned long long v = strtoull(s, NULL, 10);
    if (v >= 0xffffffffull) /* (uid_t)-1 means "no change" to chown */
        return 0;
    *out = (unsigned)v;
    return 1;
}

enum step_kind {
    STEP_LOOP_MOUNT,
    STEP_MOUNT,
    STEP_MKDIR,
    STEP_UMOUNT,
    STEP_LOOP_DETACH,
    STEP_LOOP_DETACH_ONE
};

struct step {
    enum step_kind kind;
    const char *source; /* loop-mount: the backing file; mount: a name */
    const char *target; /* loop-mount, mount, umount; mkdir: the directory; loop-detach: DIR */
    const char *fstype;
    unsigned long flags;
    const char *data;
    /* overlay: its directories (pointers into ovl_buf), checked again when it runs */
    char ovl_buf[MAX_DATA];
    const char *ovl_dirs[3];
    unsigned mode, uid, gid;
};

static struct step steps[MAX_STEPS];
static int nsteps;

/* The index of `tok` among the n `keys`, or n when it is none of them. */
static int key_index(const char *tok, const char *const *keys, int n)
{
    int k = 0;
    while (k < n && strcmp(tok, keys[k]) != 0)
        k++;
    return k;
}

/* Split "key=value" in place: the value, or NULL when there is no '='. */
static char *split_value(char *tok)
{
    char *eq = strchr(tok, '=');
    if (!eq)
        return NULL;
    *eq = '\0';
    return eq + 1;
}

/* No empty item in a comma-separated list (strtok_r would skip it unseen). */
static int no_empty_items(const char *data)
{
    return strstr(data, ",,") == NULL && data[0] != ',' && data[strlen(data) - 1] != ',';
}

/* tmpfs: size=N, nr_inodes=N, mode=OCTAL, each at most once. */
static int check_tmpfs_data(const char *data)
{
    static const char *const keys[] = { "size", "nr_inodes", "mode" };
    int seen[3] = { 0, 0, 0 };
    char buf[256];
    if (strlen(data) >= sizeof buf)
        return 0;
    strcpy(buf, data);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *value = split_value(tok);
        int k = value ? key_index(tok, keys, 3) : 3;
        if (k == 3 || seen[k]++)
            return 0;
        if (!all_digits(value, k == 2 ? 4 : 20, k == 2))
            return 0;
    }
    return no_empty_items(data);
}

/* ext4 (the layer of one sandbox, formatted for it): nobarrier and noinit_itable, each
 * at most once, or nothing. */
static int check_ext4_data(const char *data)
{
    static const char *const keys[] = { "nobarrier", "noinit_itable" };
    int seen[2] = { 0, 0 };
    char buf[64];
    if (data[0] == '\0')
        return 1;
    if (strlen(data) >= sizeof buf)
        return 0;
    strcpy(buf, data);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int k = key_index(tok, keys, 2);
        if (k == 2 || seen[k]++)
            return 0;
    }
    return no_empty_items(data);
}

/* overlay: lowerdir, upperdir and workdir, each exactly once, each a clean path; the
 * upper and work directories under WITHIN (the lower one is the read-only image). */
static int check_overlay_data(struct step *s, const char *within)
{
    static const char *const keys[] = { "lowerdir", "upperdir", "workdir" };
    if (strlen(s->data) >= sizeof s->ovl_buf)
        return 0;
    strcpy(s->ovl_buf, s->data);
    memset(s->ovl_dirs, 0, sizeof s->ovl_dirs);
    char *save = NULL;
    for (char *tok = strtok_r(s->ovl_buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *value = split_value(tok);
        int k = value ? key_index(tok, keys, 3) : 3;
        if (k == 3 || s->ovl_dirs[k] || !clean_path(value))
            return 0;
        if (k > 0 && !strictly_under(value, within))
            return 0;
        s->ovl_dirs[k] = value;
    }
    return s->ovl_dirs[0] && s->ovl_dirs[1] && s->ovl_dirs[2] && no_empty_items(s->data);
}

static int source_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 32)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return 0;
    return 1;
}

/* Parse and check every step; returns 0, or refuses with a message. */
static int is_loop_name(const char *n);

static int parse_plan(int up, const char *within, int argc, char **argv)
{
    int i = 0;
    nsteps = 0;
    while (i < argc) {
        if (nsteps == MAX_STEPS) {
            say("more than %d steps", MAX_STEPS);
            return -1;
        }
        struct step *s = &steps[nsteps];
        memset(s, 0, sizeof *s);
        const char *op = argv[i];
        int down_op = !strcmp(op, "umount") || !strcmp(op, "loop-detach-under") ||
                      !strcmp(op, "loop-detach");
        int need = !strcmp(op, "loop-mount") || !strcmp(op, "mount") ? 5
                   : !strcmp(op, "mkdir")                            ? 4
                   : !strcmp(op, "loop-detach")                      ? 2
                   : down_op                                         ? 1
                                                                     : -1;
        int known_here = up ? !down_op : down_op;
        if (need < 0 || !known_here) {
            say("unknown step '%s'", op);
            return -1;
        }
        if (i + need >= argc) {
            say("step '%s' needs %d arguments", op, need);
            return -1;
        }
        char **a = argv + i + 1;
        if (!strcmp(op, "loop-mount") || !strcmp(op, "mount")) {
            int loop = op[0] == 'l';
            s->kind = loop ? STEP_LOOP_MOUNT : STEP_MOUNT;
            s->source = a[0];
            s->target = a[1];
            s->fstype = a[2];
            s->data = a[4];
            if (loop ? !clean_path(s->source) || !strictly_under(s->source, within)
                     : !source_name(s->source)) {
                say("%s: bad source '%s'", op, s->source);
                return -1;
            }
            if (!clean_path(s->target) || !strictly_under(s->target, within)) {
                say("%s: the target must be a clean path under %s: '%s'", op, within, s->target);
                return -1;
            }
            if (!parse_flags(a[3], &s->flags)) {
                say("%s: bad flags '%s'", op, a[3]);
                return -1;
            }
            int ok = loop ? !strcmp(s->fstype, "ext4") && check_ext4_data(s->data)
                   : !strcmp(s->fstype, "tmpfs") ? check_tmpfs_data(s->data)
                   : !strcmp(s->fstype, "overlay") ? check_overlay_data(s, within)
                                                   : 0;
            if (!ok) {
                say("%s: file system '%s' with options '%s' is not one this runs", op, s->fstype,
                    s->data);
                return -1;
            }
        } else if (!strcmp(op, "mkdir")) {
            s->kind = STEP_MKDIR;
            s->target = a[0];
            if (!clean_path(s->target) || !strictly_under(s->target, within)) {
                say("mkdir: the path must be a clean path under %s: '%s'", within, s->target);
                return -1;
            }
            if (!all_digits(a[1], 4, 1) || (s->mode = (unsigned)strtoul(a[1], NULL, 8)) > 0777) {
                say("mkdir: bad mode '%s' (octal, at most 0777)", a[1]);
                return -1;
            }
            if (!parse_id(a[2], &s->uid) || !parse_id(a[3], &s->gid)) {
                say("mkdir: bad owner '%s:%s'", a[2], a[3]);
                return -1;
            }
        } else if (!strcmp(op, "loop-detach")) {
            s->kind = STEP_LOOP_DETACH_ONE;
            s->source = a[0];
            s->target = a[1];
            if (!is_loop_name(s->source)) {
                say("loop-detach: not a loop device name: '%s'", s->source);
                return -1;
            }
            if (!clean_path(s->target) || !at_or_under(s->target, within)) {
                say("%s: the path must be a clean path under %s: '%s'", op, within, s->target);
                return -1;
            }
        } else {
            s->kind = !strcmp(op, "umount") ? STEP_UMOUNT : STEP_LOOP_DETACH;
            s->target = a[0];
            if (!clean_path(s->target) ||
                (s->kind == STEP_UMOUNT ? !strictly_under(s->target, within)
                                        : !at_or_under(s->target, within))) {
                say("%s: the path must be a clean path under %s: '%s'", op, within, s->target);
                return -1;
            }
        }
        nsteps++;
        i += 1 + need;
    }
    return 0;
}

/* ------------------------------------------------------------ running it */

static int unsupported; /* set when the kernel lacks a system call these modes need */

/* Resolve a path without following any symbolic link (nor magic link). */
static int open_nofollow(const char *path, int flags)
{
    struct open_how how = {
        .flags = (uint64_t)(flags | O_CLOEXEC),
        .resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
    if (fd < 0 && errno == ENOSYS)
        unsupported = 1;
    return fd;
}

/* Open the parent of `path` (resolved without links); *name is its last component. */
static int open_parent(const char *path, const char **name, char *buf, size_t len)
{
    const char *slash = strrchr(path, '/');
    size_t n = (size_t)(slash - path);
    if (n == 0 || n >= len) {
        errno = EINVAL;
        return -1;
    }
    memcpy(buf, path, n);
    buf[n] = '\0';
    *name = slash + 1;
    return open_nofollow(buf, O_PATH | O_DIRECTORY);
}

static void fd_path(int fd, char *buf, size_t len) { snprintf(buf, len, "/proc/self/fd/%d", fd); }

static int check_within(const char *within)
{
    int fd = open_nofollow(within, O_PATH | O_DIRECTORY);
    if (fd < 0) {
        say("%s: %s", within, strerror(errno));
        return -1;
    }
    struct stat st;
    int rc = fstat(fd, &st);
    close(fd);
    if (rc < 0 || st.st_uid != 0 || (st.st_mode & 022)) {
        say("%s must be a directory of root's that no one else can write", within);
        return -1;
    }
    return 0;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* A free loop device bound to file_fd, with autoclear; returns its descriptor. */
static int loop_attach(int file_fd, const char *file, char *dev, size_t devlen)
{
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) {
        if (errno == ENOENT)
            unsupported = 1;
        say("/dev/loop-control: %s", strerror(errno));
        return -1;
    }
    for (int attempt = 0; attempt < LOOP_ATTEMPTS; attempt++) {
        int n = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0) {
            say("no free loop device: %s", strerror(errno));
            break;
        }
        snprintf(dev, devlen, "/dev/loop%d", n);
        int fd = -1;
        /* A device that GET_FREE just made may not have its node yet. */
        for (int wait = 0; wait < 100; wait++) {
            fd = open(dev, O_RDWR | O_CLOEXEC);
            if (fd >= 0 || errno != ENOENT)
                break;
            sleep_ms(1);
        }
        if (fd < 0) {
            say("%s: %s", dev, strerror(errno));
            break;
        }
        struct loop_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.fd = (uint32_t)file_fd;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        snprintf((char *)cfg.info.lo_file_name, LO_NAME_SIZE, "%s", file);
        if (ioctl(fd, LOOP_CONFIGURE, &cfg) == 0) {
            close(ctl);
            return fd;
        }
        if (errno == EINVAL || errno == ENOTTY) {
            /* Before Linux 5.8: attach, then set autoclear. */
            if (ioctl(fd, LOOP_SET_FD, file_fd) == 0) {
                if (ioctl(fd, LOOP_SET_STATUS64, &cfg.info) == 0) {
                    close(ctl);
                    return fd;
                }
                int e = errno;
                ioctl(fd, LOOP_CLR_FD, 0);
                errno = e;
            }
        }
        int e = errno;
        close(fd);
        if (e == EBUSY)
            continue; /* another process took it meanwhile: the next free one */
        say("attaching %s to %s: %s", file, dev, strerror(e));
        close(ctl);
        return -1;
    }
    close(ctl);
    if (!unsupported)
        say("attaching %s: no loop device stayed free", file);
    return -1;
}

/* Unmount one target named below its resolved parent; lazily if it is busy. Returns 0
 * when it is unmounted or was not mounted. */
static int umount_target(const char *target)
{
    char parent[PATH_MAX];
    const char *name;
    int pfd = open_parent(target, &name, parent, sizeof parent);
    if (pfd < 0) {
        if (errno == ENOENT)
            return 0; /* no such path: nothing mounted there */
        say("umount %s: %s", target, strerror(errno));
        return -1;
    }
    int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    int rc = fchdir(pfd);
    if (rc == 0) {
        rc = umount2(name, UMOUNT_NOFOLLOW);
        if (rc < 0 && errno == EBUSY)
            rc = umount2(name, UMOUNT_NOFOLLOW | MNT_DETACH);
        if (rc < 0 && (errno == EINVAL || errno == ENOENT))
            rc = 0; /* not a mount point (any more) */
    }
    int e = errno;
    if (cwd >= 0) {
        if (fchdir(cwd) < 0) { /* stay where we are: nothing below uses relative paths */
        }
        close(cwd);
    }
    close(pfd);
    if (rc < 0) {
        say("umount %s: %s", target, strerror(e));
        return -1;
    }
    return 0;
}

static int run_loop_mount(struct step *s)
{
    int file = open_nofollow(s->source, O_RDWR);
    if (file < 0) {
        say("%s: %s", s->source, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(file, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != 0) {
        say("%s must be a regular file of root's", s->source);
        close(file);
        return -1;
    }
    int target = open_nofollow(s->target, O_PATH | O_DIRECTORY);
    if (target < 0) {
        say("%s: %s", s->target, strerror(errno));
        close(file);
        return -1;
    }
    char dev[32];
    int loop = loop_attach(file, s->source, dev, sizeof dev);
    close(file); /* the loop device holds the file now */
    if (loop < 0) {
        close(target);
        return -1;
    }
    char at[64];
    fd_path(target, at, sizeof at);
    int rc = mount(dev, at, s->fstype, s->flags, s->data[0] ? s->data : NULL);
    int e = errno;
    close(target);
    /* The mount holds the device now; our close leaves autoclear to detach it at the
     * unmount (or at once, if the mount failed). */
    close(loop);
    if (rc < 0) {
        say("mounting %s (%s) on %s: %s", dev, s->source, s->target, strerror(e));
        return -1;
    }
    printf("loop %s\n", dev);
    return 0;
}

static int run_mount(struct step *s)
{
    if (!strcmp(s->fstype, "overlay")) {
        /* Its directories are named by path in the options: each must resolve to a
         * directory with no link on the way. */
        for (int k = 0; k < 3; k++) {
            int fd = open_nofollow(s->ovl_dirs[k], O_PATH | O_DIRECTORY);
            if (fd < 0) {
                say("%s: %s", s->ovl_dirs[k], strerror(errno));
                return -1;
            }
            close(fd);
        }
    }
    int target = open_nofollow(s->target, O_PATH | O_DIRECTORY);
    if (target < 0) {
        say("%s: %s", s->target, strerror(errno));
        return -1;
    }
    char at[64];
    fd_path(target, at, sizeof at);
    int rc = mount(s->source, at, s->fstype, s->flags, s->data);
    int e = errno;
    close(target);
    if (rc < 0) {
        say("mounting %s on %s: %s", s->fstype, s->target, strerror(e));
        return -1;
    }
    return 0;
}

static int run_mkdir(struct step *s)
{
    char parent[PATH_MAX];
    const char *name;
    int pfd = open_parent(s->target, &name, parent, sizeof parent);
    if (pfd < 0) {
        say("mkdir %s: %s", s->target, strerror(errno));
        return -1;
    }
    int rc = mkdirat(pfd, name, (mode_t)s->mode);
    int fd = rc < 0 ? -1 : openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0 && (s->uid != 0 || s->gid != 0))
        rc = fchown(fd, s->uid, s->gid);
    else if (fd < 0)
        rc = -1;
    int e = errno;
    if (fd >= 0)
        close(fd);
    close(pfd);
    if (rc < 0) {
        say("mkdir %s: %s", s->target, strerror(e));
        return -1;
    }
    return 0;
}

/* The backing file of /sys/block/NAME (bound devices only), without " (deleted)". */
static int loop_backing_file(const char *name, char *buf, size_t len)
{
    char p[320];
    snprintf(p, sizeof p, "/sys/block/%s/loop/backing_file", name);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    size_t l = strlen(buf);
    static const char deleted[] = " (deleted)";
    if (l >= sizeof deleted - 1 && !strcmp(buf + l - (sizeof deleted - 1), deleted))
        buf[l - (sizeof deleted - 1)] = '\0';
    return 0;
}

static int is_loop_name(const char *n)
{
    return !strncmp(n, "loop", 4) && all_digits(n + 4, 8, 0);
}

/*
 * Detach loop device NAME if its backing file lies under dir, and wait until it is free.
 * It is cleared only while it is still bound to the file that sysfs named (same device
 * and inode, when the file still exists), so a device that was freed and taken by
 * someone else meanwhile is left alone. 0 when it is free of dir (or never was bound to
 * it), -1 when it could not be freed.
 */
static int detach_one(const char *name, const char *dir)
{
    char file[PATH_MAX];
    if (loop_backing_file(name, file, sizeof file) < 0 || !strictly_under(file, dir))
        return 0;
    char dev[NAME_MAX + 8];
    snprintf(dev, sizeof dev, "/dev/%s", name);
    int fd = open(dev, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        say("%s: %s", dev, strerror(errno));
        return -1;
    }
    int failed = 0;
    struct loop_info64 info;
    int bound = ioctl(fd, LOOP_GET_STATUS64, &info) == 0;
    struct stat st;
    int fd_file = bound ? open_nofollow(file, O_PATH) : -1;
    int same = bound && (fd_file < 0 || (fstat(fd_file, &st) == 0 &&
                                         info.lo_device == (uint64_t)st.st_dev &&
                                         info.lo_inode == (uint64_t)st.st_ino));
    if (fd_file >= 0)
        close(fd_file);
    if (same && ioctl(fd, LOOP_CLR_FD, 0) < 0 && errno != ENXIO) {
        say("detaching %s (%s): %s", dev, file, strerror(errno));
        failed = 1;
    }
    close(fd);
    if (!same)
        return failed ? -1 : 0;
    /* Cleared at our close unless another opener holds it: wait for that one. */
    char now[PATH_MAX];
    int waited = 0;
    while (loop_backing_file(name, now, sizeof now) == 0 && !strcmp(now, file) &&
           waited < LOOP_FREE_WAIT_MS) {
        sleep_ms(1);
        waited++;
    }
    if (waited >= LOOP_FREE_WAIT_MS) {
        say("%s is still attached to %s (held open elsewhere)", dev, file);
        failed = 1;
    }
    return failed ? -1 : 0;
}

/* Detach every loop device whose backing file lies under the step's directory. */
static int run_loop_detach(struct step *s)
{
    if (s->kind == STEP_LOOP_DETACH_ONE)
        return detach_one(s->source, s->target);
    DIR *d = opendir("/sys/block");
    if (!d) {
        say("/sys/block: %s", strerror(errno));
        return -1;
    }
    int failed = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (is_loop_name(e->d_name) && detach_one(e->d_name, s->target) < 0)
            failed = 1;
    closedir(d);
    return failed ? -1 : 0;
}

int layer_main(int argc, char **argv)
{
    /* argv[1] is the mode, argv[2] WITHIN, then the steps. */
    int up = !strcmp(argv[1], "layer-up");
    mode_name = argv[1];
    if (argc < 4) {
        say("usage: corral-supervisor %s WITHIN STEP... (see layer-ops.c)", argv[1]);
        return EXIT_REFUSED;
    }
    const char *within = argv[2];
    if (!clean_path(within)) {
        say("WITHIN must be a clean absolute path: '%s'", within);
        return EXIT_REFUSED;
    }
    if (parse_plan(up, within, argc - 3, argv + 3) < 0)
        return EXIT_REFUSED;
    if (check_within(within) < 0)
        return unsupported ? EXIT_UNSUPPORTED : EXIT_REFUSED;
    /* Modes exactly as planned. */
    umask(0);
    if (!up) {
        int failed = 0;
        for (int i = 0; i < nsteps; i++) {
            int rc = steps[i].kind == STEP_UMOUNT ? umount_target(steps[i].target)
                                                  : run_loop_detach(&steps[i]);
            if (rc < 0 && unsupported)
                return EXIT_UNSUPPORTED;
            failed |= rc < 0; /* go on: undo as much as can be undone */
        }
        return failed ? EXIT_FAILED : 0;
    }
    for (int i = 0; i < nsteps; i++) {
        struct step *s = &steps[i];
        int rc = s->kind == STEP_LOOP_MOUNT ? run_loop_mount(s)
                 : s->kind == STEP_MOUNT    ? run_mount(s)
                                            : run_mkdir(s);
        if (rc == 0)
            continue;
        /* Undo the mounts made so far, the latest first. */
        for (int j = i - 1; j >= 0; j--)
            if (steps[j].kind == STEP_LOOP_MOUNT || steps[j].kind == STEP_MOUNT)
                umount_target(steps[j].target);
        fflush(stdout);
        return unsupported ? EXIT_UNSUPPORTED : EXIT_FAILED;
    }
    fflush(stdout);
    return 0;
}

/* ------------------------------------------------------------ layer-serve */

/*
 * layer-serve ROOT: the same plans, without a process of the host's per plan. The host
 * starts one per data directory and sends plans on our stdin; for each we fork a child
 * that runs it exactly as layer-up or layer-down would (layer_main, all its checks) and
 * send back its exit status and output. Forking this small static process costs a small
 * fraction of what the host's own fork and exec of a new one does (the host's process is
 * large), which is most of a layer-up's time. The host is our only peer: it holds both
 * ends of our stdio, and we exit when it closes our stdin.
 *
 * Request:  u32 length (big-endian), then the arguments (mode, WITHIN, steps), each
 *           ending with a NUL. The mode is layer-up or layer-down, WITHIN lies under ROOT.
 * Reply:    u32 length, u8 exit status (as the one-shot modes'), u32 length of what the
 *           plan wrote on stdout, that, then what it wrote on stderr.
 * One request at a time, answered in order.
 */
#define SERVE_MAX_REQUEST (64u << 10)
#define SERVE_MAX_ARGS 128
#define SERVE_MAX_OUTPUT (16u << 10)

static int read_full(int fd, unsigned char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return 0;
}

static int write_full(int fd, const unsigned char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Run one plan in a child; its status and output (each stream capped) come back. */
static int serve_one(char **args, int nargs, unsigned char *out, size_t *out_len,
                     unsigned char *err, size_t *err_len)
{
    int po[2], pe[2];
    if (pipe2(po, O_CLOEXEC) < 0)
        return -1;
    if (pipe2(pe, O_CLOEXEC) < 0) {
        close(po[0]);
        close(po[1]);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(po[0]);
        close(po[1]);
        close(pe[0]);
        close(pe[1]);
        return -1;
    }
    if (pid == 0) {
        int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (nul < 0 || dup2(nul, STDIN_FILENO) < 0 || dup2(po[1], STDOUT_FILENO) < 0 ||
            dup2(pe[1], STDERR_FILENO) < 0)
            _exit(EXIT_FAILED);
        signal(SIGPIPE, SIG_DFL);
        /* argv as the one-shot modes see it: argv[0] is the program. */
        char *argv[SERVE_MAX_ARGS + 2];
        argv[0] = "corral-supervisor";
        for (int i = 0; i < nargs; i++)
            argv[i + 1] = args[i];
        argv[nargs + 1] = NULL;
        int code = layer_main(nargs + 1, argv);
        fflush(stdout);
        fflush(stderr);
        _exit(code);
    }
    close(po[1]);
    close(pe[1]);
    *out_len = *err_len = 0;
    struct pollfd pf[2] = { { po[0], POLLIN, 0 }, { pe[0], POLLIN, 0 } };
    int open_fds = 2;
    while (open_fds > 0) {
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int k = 0; k < 2; k++) {
            if (pf[k].fd < 0 || !(pf[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            unsigned char *buf = k == 0 ? out : err;
            size_t *len = k == 0 ? out_len : err_len;
            unsigned char scratch[4096];
            size_t room = SERVE_MAX_OUTPUT - *len;
            ssize_t n = read(pf[k].fd, room > 0 ? buf + *len : scratch,
                             room > 0 ? room : sizeof scratch);
            if (n > 0 && room > 0)
                *len += (size_t)n;
            if (n == 0 || (n < 0 && errno != EINTR)) {
                close(pf[k].fd);
                pf[k].fd = -1;
                open_fds--;
            }
        }
    }
    for (int k = 0; k < 2; k++)
        if (pf[k].fd >= 0)
            close(pf[k].fd);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : EXIT_FAILED;
}

int layer_serve(int argc, char **argv)
{
    mode_name = "layer-serve";
    if (argc != 3 || !clean_path(argv[2])) {
        say("usage: corral-supervisor layer-serve ROOT (a clean absolute path)");
        return EXIT_REFUSED;
    }
    const char *root = argv[2];
    /* The host reading our replies may go away: its end of the pipe says so. */
    signal(SIGPIPE, SIG_IGN);
    static unsigned char req[SERVE_MAX_REQUEST + 1];
    static unsigned char out[SERVE_MAX_OUTPUT], err[SERVE_MAX_OUTPUT];
    for (;;) {
        unsigned char hdr[4];
        if (read_full(STDIN_FILENO, hdr, 4) < 0)
            return 0; /* the host closed our stdin: done */
        uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
        if (len == 0 || len > SERVE_MAX_REQUEST || read_full(STDIN_FILENO, req, len) < 0 ||
            req[len - 1] != '\0') {
            say("malformed request");
            return EXIT_REFUSED; /* the stream is out of step: the host starts over */
        }
        char *args[SERVE_MAX_ARGS];
        int nargs = 0;
        int refused = 0;
        for (uint32_t at = 0; at < len;) {
            if (nargs == SERVE_MAX_ARGS) {
                refused = 1;
                break;
            }
            args[nargs++] = (char *)req + at;
            at += (uint32_t)strlen((char *)req + at) + 1;
        }
        size_t out_len = 0, err_len = 0;
        int code;
        if (refused || nargs < 2 ||
            (strcmp(args[0], "layer-up") != 0 && strcmp(args[0], "layer-down") != 0) ||
            !clean_path(args[1]) || !strictly_under(args[1], root)) {
            err_len = (size_t)snprintf((char *)err, sizeof err,
                                       "corral-supervisor: layer-serve: refused: a plan is "
                                       "layer-up or layer-down of a directory under %s\n",
                                       root);
            code = EXIT_REFUSED;
        } else {
            code = serve_one(args, nargs, out, &out_len, err, &err_len);
            if (code < 0) {
                err_len = (size_t)snprintf((char *)err, sizeof err,
                                           "corral-supervisor: layer-serve: %s\n", strerror(errno));
                code = EXIT_FAILED;
            }
        }
        unsigned char head[9];
        put_be32(head, (uint32_t)(1 + 4 + out_len + err_len));
        head[4] = (unsigned char)code;
        put_be32(head + 5, (uint32_t)out_len);
        if (write_full(STDOUT_FILENO, head, sizeof head) < 0 ||
            write_full(STDOUT_FILENO, out, out_len) < 0 || write_full(STDOUT_FILENO, err, err_len) < 0)
            return 0; /* the host is gone */
    }
}
