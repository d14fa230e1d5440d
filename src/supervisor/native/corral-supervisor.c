/*
 * corral-supervisor: PID 1 of every Corral sandbox.
 *
 * The host talks to it over the listening unix socket that runc hands in as fd 3
 * (see docs/protocol.md). It accepts a closed set of typed requests: spawn a
 * process, feed its stdin, signal it, write a file, probe the sandbox, kill
 * everything, run a stateful kernel, and the file API of a live sandbox (read,
 * write, list, stat, mkdir, remove, rename, confined to the sandbox's root). It
 * forwards output, reaps every child and enforces timeouts.
 *
 * Design rules, in order of importance:
 *   - the host is the only peer; nothing in the sandbox can reach fd 3, and no
 *     child inherits any descriptor of ours (everything is O_CLOEXEC);
 *   - a malformed frame closes the connection; it never crashes the supervisor;
 *   - reaping and timeouts make progress even while a write to the host blocks.
 *
 * Second mode, used on the host only:
 *   corral-supervisor host-listen SOCKET_PATH -- PROGRAM ARGS...
 * binds the socket, runs PROGRAM (runc) with it at fd 3, and stays behind as the
 * sandbox's shim: a subreaper that reaps the container's init, and exits once nothing
 * of the sandbox is left (see host_listen).
 * Third and fourth, on the host only: layer-up and layer-down mount and unmount a
 * sandbox's root as the host planned it (layer-ops.c).
 *
 * Build: gcc -std=c11 -static -O2 -Wall -Wextra -Werror (scripts/build-supervisor.mjs).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "layer-ops.h"

#ifndef CORRAL_VERSION
#define CORRAL_VERSION "0.0.0-dev"
#endif

#define PROTOCOL_VERSION 1u
#define HEADER_SIZE 9u
#define MAX_PAYLOAD (16u << 20)
#define CHUNK (64u << 10)          /* largest STDOUT/STDERR payload */
#define MAX_PROCS 1024
#define LISTEN_FD 3
/* Above this much stdin buffered for children, stop reading the host (flow control). */
#define STDIN_HIGH_WATER ((size_t)8 << 20)
/* At EXIT, forward at most this much still-buffered output per stream: a descendant
 * that keeps the pipe full must not keep the supervisor draining forever. */
#define DRAIN_CAP ((size_t)4 << 20)
#define RBUF_MIN ((size_t)64 << 10)
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

enum {
    REQ_HELLO = 0x01, REQ_PROBE = 0x02, REQ_SPAWN = 0x10, REQ_STDIN = 0x11,
    REQ_STDIN_CLOSE = 0x12, REQ_SIGNAL = 0x13, REQ_WRITE_FILE = 0x14,
    REQ_KILL_ALL = 0x15, REQ_SHUTDOWN = 0x16,
    REQ_CTX_START = 0x20, REQ_CTX_EXEC = 0x21, REQ_CTX_STOP = 0x22,
    REQ_FILE_STAT = 0x30, REQ_FILE_LIST = 0x31, REQ_FILE_READ = 0x32, REQ_FILE_CREDIT = 0x33,
    REQ_FILE_WRITE = 0x34, REQ_FILE_CHUNK = 0x35, REQ_FILE_COMMIT = 0x36, REQ_FILE_CANCEL = 0x37,
    REQ_FILE_MKDIR = 0x38, REQ_FILE_REMOVE = 0x39, REQ_FILE_RENAME = 0x3A,
    EV_HELLO_OK = 0x81, EV_PROBE_REPORT = 0x82, EV_STARTED = 0x90, EV_OK = 0x91,
    EV_STDOUT = 0x92, EV_STDERR = 0x93, EV_EXIT = 0x94,
    EV_CTX_MSG = 0x95, EV_CTX_DONE = 0x96, EV_CTX_EXIT = 0x97,
    EV_FILE_INFO = 0x98, EV_FILE_ENTRIES = 0x99, EV_FILE_DATA = 0x9A, EV_FILE_DONE = 0x9B,
    EV_ERROR = 0xA0,
};

/* Frames a kernel writes on its event pipe (fd 4): u32 length, u8 type, payload. */
enum { KMSG_EVENT = 1, KMSG_END = 2 };
/* CTX_DONE flags. */
enum { DONE_TIMED_OUT = 1, DONE_KERNEL_LOST = 2, DONE_SANDBOX_KILLED = 4 };
/* After a call's deadline: sweep the call's new processes this often, for this long. */
#define SWEEP_INTERVAL_MS 50
#define SWEEP_WINDOW_MS 1000
/* The largest frame a kernel may send; a larger one is a broken kernel. */
#define MAX_KERNEL_FRAME (MAX_PAYLOAD - 64)
#define SPAWN_STDIN_PIPE 1u
/* SPAWN carries a u64 output cap after its header: bytes past it are read and counted,
 * not sent. */
#define SPAWN_OUTPUT_CAP 2u
/* EXIT and CTX_EXIT payloads (see docs/protocol.md). */
#define EXIT_LEN 56

/* Where a child failed before exec; reported through the status pipe. A context's
 * keeper first reports its kernel's pid (STAGE_PID). */
enum { STAGE_SETUP = 1, STAGE_CHDIR = 2, STAGE_EXEC = 3, STAGE_PID = 4 };

struct proc {
    int used;
    int attached;            /* belongs to the current connection: output and EXIT are sent */
    int has_stdin_pipe;
    int close_stdin_pending; /* STDIN_CLOSE arrived while data was still buffered */
    int timed_out;
    int reaped;
    uint32_t channel;
    pid_t pid;
    int out_fd, err_fd, in_fd;
    unsigned char *in_buf;
    size_t in_len, in_off;
    int64_t start_us, end_us;
    int64_t deadline_ms;     /* CLOCK_MONOTONIC; 0 = no timeout */
    uint64_t out_cap;        /* per stream; 0 = send everything */
    uint64_t out_total[2];   /* bytes read from stdout, stderr */
    uint64_t out_sent[2];    /* of those, bytes sent to the host */
    int status;
    struct rusage ru;

    /* A context (CTX_START): `pid` is its keeper, a child subreaper under which the
     * kernel and everything the kernel starts lives; in_fd feeds the kernel's request
     * pipe (fd 3 in the kernel) and evt_fd reads its event pipe (fd 4). */
    int is_ctx;
    pid_t kernel_pid;
    int interrupt_sig;       /* sent to the kernel at a call's deadline; 0 = none */
    int evt_fd;
    unsigned char *evt_buf;
    size_t evt_len, evt_cap;
    /* The call in progress (at most one per context). */
    int call_active, call_end_seen, call_timed_out, call_last_swept;
    uint32_t call_swept;     /* processes killed by the sweeps */
    int64_t call_start_us, call_deadline_ms, call_sweep_until_ms, call_next_sweep_ms;
    unsigned long long call_start_ticks; /* CLOCK_BOOTTIME in clock ticks, as /proc/PID/stat */
};

static struct proc procs[MAX_PROCS];
static int conn_fd = -1;
static int conn_failed;      /* close the connection at the next safe point */
static int sig_fd = -1;
static int devnull_fd = -1;
static unsigned char *rbuf;
static size_t rbuf_len, rbuf_cap;
static size_t stdin_buffered; /* over all processes */
static unsigned char iobuf[CHUNK];
static int root_fd = -1;     /* our "/": where the file API resolves paths (see FILE_*) */
static void drop_fileops(void);
static void close_fileop_fds(void);
static int reads_waiting(void);
static void pump_reads(void);

/* ------------------------------------------------------------------ helpers */

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t now_ms(void) { return now_us() / 1000; }

static void put_u16(unsigned char *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xff; }

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = (v >> 16) & 0xff; p[2] = (v >> 8) & 0xff; p[3] = v & 0xff;
}

static void put_u64(unsigned char *p, uint64_t v)
{
    put_u32(p, (uint32_t)(v >> 32));
    put_u32(p + 4, (uint32_t)v);
}

static uint16_t get_u16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_u64(const unsigned char *p) { return (uint64_t)get_u32(p) << 32 | get_u32(p + 4); }

static uint64_t timeval_us(struct timeval tv)
{
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* ------------------------------------------------------------ bookkeeping */

static struct proc *find_channel(uint32_t channel)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i].used && procs[i].attached && procs[i].channel == channel)
            return &procs[i];
    return NULL;
}

static struct proc *find_pid(pid_t pid)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i].used && procs[i].pid == pid)
            return &procs[i];
    return NULL;
}

static void reset_slot(struct proc *p)
{
    memset(p, 0, sizeof *p);
    p->out_fd = p->err_fd = p->in_fd = p->evt_fd = -1;
}

static void discard_stdin(struct proc *p)
{
    stdin_buffered -= p->in_len - p->in_off;
    free(p->in_buf);
    p->in_buf = NULL;
    p->in_len = p->in_off = 0;
    close_fd(&p->in_fd);
}

/* Record reaped children. Never sends anything, so it is safe to call while a
 * write to the host is in progress. Orphans are reaped and forgotten. */
static void reap_children(void)
{
    for (;;) {
        int status;
        struct rusage ru;
        pid_t pid = wait4(-1, &status, WNOHANG, &ru);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid <= 0)
            return;
        struct proc *p = find_pid(pid);
        if (p && !p->reaped) {
            p->reaped = 1;
            p->status = status;
            p->ru = ru;
            p->end_us = now_us();
        }
    }
}

static void on_sigchld(void)
{
    struct signalfd_siginfo si;
    while (read(sig_fd, &si, sizeof si) > 0) {
    }
    reap_children();
}

static unsigned long long boottime_ticks(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0)
        hz = 100;
    return (unsigned long long)ts.tv_sec * (unsigned long long)hz +
           (unsigned long long)ts.tv_nsec / (1000000000ull / (unsigned long long)hz);
}

/* One process as /proc/PID/stat tells it: state, parent, start time (clock ticks). */
struct proc_stat {
    pid_t pid, ppid;
    char state;
    unsigned long long start;
};

/*
 * Read /proc/NAME/stat for a /proc entry NAME; 0 when it is a process and was read.
 * The command name may hold spaces and parentheses: the fields resume after the last ')'.
 */
static int read_proc_stat(const char *name, struct proc_stat *out)
{
    if (name[0] < '0' || name[0] > '9')
        return -1;
    char path[300], buf[1024];
    snprintf(path, sizeof path, "/proc/%s/stat", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t len = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (len <= 0)
        return -1;
    buf[len] = '\0';
    char *rp = strrchr(buf, ')');
    if (!rp || strlen(rp) < 4)
        return -1;
    char *f = rp + 2; /* field 3, the state */
    int field = 3;
    long ppid = -1;
    unsigned long long start = 0;
    for (char *tok = f; tok && *tok; field++) {
        if (field == 4)
            ppid = strtol(tok, NULL, 10);
        if (field == 22) {
            start = strtoull(tok, NULL, 10);
            break;
        }
        tok = strchr(tok, ' ');
        if (tok)
            tok++;
    }
    if (field != 22 || ppid < 0)
        return -1;
    out->pid = (pid_t)strtol(name, NULL, 10);
    out->ppid = (pid_t)ppid;
    out->state = *f;
    out->start = start;
    return 0;
}

/*
 * Kill the processes that a context's current call started: every descendant of the
 * context's keeper, other than the kernel itself, whose start time is not before the
 * call's. Orphans are reparented to the keeper (a child subreaper), so the ancestry
 * walk finds daemons that setsid'd and double-forked too. Processes that earlier calls
 * started (a server in the background) are older and left alone. Returns how many
 * processes were signalled. Kills only; never sends.
 */
#define SWEEP_MAX 65536
static int sweep_call(struct proc *ctx)
{
    static pid_t pids[SWEEP_MAX], ppids[SWEEP_MAX];
    static unsigned long long starts[SWEEP_MAX];
    static char zombie[SWEEP_MAX];
    int n = 0;
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    struct dirent *e;
    struct proc_stat ps;
    while ((e = readdir(d)) != NULL && n < SWEEP_MAX) {
        if (read_proc_stat(e->d_name, &ps) < 0)
            continue;
        pids[n] = ps.pid;
        ppids[n] = ps.ppid;
        starts[n] = ps.start;
        /* A zombie is already dead (its parent has yet to wait for it): it links the
         * ancestry but is neither killed nor counted as a survivor. */
        zombie[n] = (char)(ps.state == 'Z' || ps.state == 'X');
        n++;
    }
    closedir(d);
    int killed = 0;
    for (int i = 0; i < n; i++) {
        if (pids[i] == ctx->pid || pids[i] == ctx->kernel_pid || zombie[i] ||
            starts[i] < ctx->call_start_ticks)
            continue;
        /* Is the keeper an ancestor? Walk up at most 256 links (a cycle cannot occur, but
         * a process list read over time is not a consistent snapshot). */
        pid_t up = ppids[i];
        int found = 0;
        for (int depth = 0; depth < 256 && up > 1; depth++) {
            if (up == ctx->pid) {
                found = 1;
                break;
            }
            int j = 0;
            while (j < n && pids[j] != up)
                j++;
            if (j == n)
                break;
            up = ppids[j];
        }
        if (found && kill(pids[i], SIGKILL) == 0)
            killed++;
    }
    return killed;
}

/* A context's call passed its deadline, or is being swept after it: interrupt the kernel
 * once, then kill the call's new processes every SWEEP_INTERVAL_MS. Kills only. */
static void enforce_call_deadline(struct proc *p, int64_t now)
{
    if (!p->call_active || p->reaped)
        return;
    if (!p->call_timed_out) {
        if (p->call_deadline_ms == 0 || now < p->call_deadline_ms)
            return;
        p->call_timed_out = 1;
        p->call_sweep_until_ms = now + SWEEP_WINDOW_MS;
        if (p->interrupt_sig > 0)
            kill(p->kernel_pid, p->interrupt_sig);
    } else if (now < p->call_next_sweep_ms) {
        return;
    }
    p->call_last_swept = sweep_call(p);
    p->call_swept += (uint32_t)p->call_last_swept;
    p->call_next_sweep_ms = now + SWEEP_INTERVAL_MS;
}

/* Kills only; never sends. The EXIT (timed_out = 1) follows when the child is reaped. */
static void enforce_timeouts(void)
{
    int64_t now = now_ms();
    for (int i = 0; i < MAX_PROCS; i++) {
        struct proc *p = &procs[i];
        if (p->used && p->is_ctx)
            enforce_call_deadline(p, now);
        if (!p->used || p->reaped || p->deadline_ms == 0 || now < p->deadline_ms)
            continue;
        /* The group catches its descendants; the pid catches a child that left its group. */
        kill(-p->pid, SIGKILL);
        kill(p->pid, SIGKILL);
        p->timed_out = 1;
        p->deadline_ms = 0;
    }
}

static int next_timeout_ms(void)
{
    int64_t best = -1, now = now_ms();
    for (int i = 0; i < MAX_PROCS; i++) {
        struct proc *p = &procs[i];
        if (!p->used || p->reaped)
            continue;
        int64_t at = p->deadline_ms;
        if (p->is_ctx && p->call_active)
            at = p->call_timed_out ? p->call_next_sweep_ms : p->call_deadline_ms;
        if (at == 0)
            continue;
        int64_t left = at > now ? at - now : 0;
        if (best < 0 || left < best)
            best = left;
    }
    return best > INT_MAX ? INT_MAX : (int)best;
}

/* ------------------------------------------------------------ host socket */

/* Wait until the host socket is writable. Meanwhile keep reaping and enforcing
 * timeouts, so a slow host delays output but never stalls the sandbox's
 * housekeeping. A pending new connection means a host wants to take over:
 * give up on the stalled one. */
static int wait_host_writable(void)
{
    for (;;) {
        struct pollfd pf[3] = {
            { .fd = conn_fd, .events = POLLOUT },
            { .fd = sig_fd, .events = POLLIN },
            { .fd = LISTEN_FD, .events = POLLIN },
        };
        int n = poll(pf, 3, next_timeout_ms());
        if (n < 0 && errno != EINTR)
            return -1;
        if (pf[1].revents & POLLIN)
            on_sigchld();
        enforce_timeouts();
        if (pf[2].revents & POLLIN)
            return -1;
        if (pf[0].revents)
            return 0; /* writable, or an error that the next sendmsg reports */
    }
}

/* Send one frame. On failure the connection is marked failed (closed later, at a
 * point where no caller holds pointers into the read buffer). */
static void send_frame(uint8_t type, uint32_t channel, const struct iovec *parts, int nparts)
{
    if (conn_fd < 0 || conn_failed)
        return;
    unsigned char hdr[HEADER_SIZE];
    struct iovec iov[4];
    size_t total = 0;
    iov[0].iov_base = hdr;
    iov[0].iov_len = HEADER_SIZE;
    for (int i = 0; i < nparts; i++) {
        iov[1 + i] = parts[i];
        total += parts[i].iov_len;
    }
    put_u32(hdr, (uint32_t)total);
    hdr[4] = type;
    put_u32(hdr + 5, channel);

    struct iovec *cur = iov;
    int left = 1 + nparts;
    while (left > 0) {
        struct msghdr mh = { .msg_iov = cur, .msg_iovlen = (size_t)left };
        ssize_t w = sendmsg(conn_fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if ((errno == EAGAIN || errno == EWOULDBLOCK) && wait_host_writable() == 0)
                continue;
            conn_failed = 1;
            return;
        }
        size_t done = (size_t)w;
        while (left > 0 && done >= cur->iov_len) {
            done -= cur->iov_len;
            cur++;
            left--;
        }
        if (left > 0) {
            cur->iov_base = (char *)cur->iov_base + done;
            cur->iov_len -= done;
        }
    }
}

static void send_simple(uint8_t type, uint32_t channel, const void *data, size_t len)
{
    struct iovec part = { .iov_base = (void *)data, .iov_len = len };
    send_frame(type, channel, &part, 1);
}

__attribute__((format(printf, 3, 4)))
static void send_error(uint32_t channel, int err, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    size_t len = (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1;
    /* The message is one line even when it quotes a path or argv[0] from the host. */
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)msg[i] < 0x20 || msg[i] == 0x7f)
            msg[i] = '?';
    unsigned char code[4];
    put_u32(code, (uint32_t)err);
    struct iovec parts[2] = { { code, 4 }, { msg, len } };
    send_frame(EV_ERROR, channel, parts, 2);
}

static void close_connection(void)
{
    close_fd(&conn_fd);
    conn_failed = 0;
    rbuf_len = 0;
    if (rbuf_cap > RBUF_MIN) {
        free(rbuf);
        rbuf = NULL;
        rbuf_cap = 0;
    }
    drop_fileops();
    /* Processes outlive their connection, but nobody can feed their stdin any more
     * and a new host's channel ids must not collide with theirs. */
    for (int i = 0; i < MAX_PROCS; i++) {
        if (procs[i].used && procs[i].attached) {
            procs[i].attached = 0;
            discard_stdin(&procs[i]);
        }
    }
}

static void accept_connection(void)
{
    int fd = accept4(LISTEN_FD, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    if (conn_fd >= 0)
        close_connection();
    conn_fd = fd;
}

/* --------------------------------------------------------- child output */

/* Count what a process wrote and send it, up to its cap: output past the cap is
 * still read (the writer must not block) but costs the host nothing. */
static void emit_output(struct proc *p, uint8_t type, const unsigned char *buf, size_t n)
{
    int i = type == EV_STDERR;
    p->out_total[i] += n;
    if (!p->attached)
        return;
    if (p->out_cap > 0) {
        uint64_t room = p->out_sent[i] >= p->out_cap ? 0 : p->out_cap - p->out_sent[i];
        if (room == 0)
            return;
        if ((uint64_t)n > room)
            n = (size_t)room;
    }
    p->out_sent[i] += n;
    send_simple(type, p->channel, buf, n);
}

static void forward_output(struct proc *p, int *fd, uint8_t type)
{
    ssize_t n = read(*fd, iobuf, CHUNK);
    if (n > 0) {
        emit_output(p, type, iobuf, (size_t)n);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    close_fd(fd);
}

/* Non-blocking drain at EXIT: forward what is already in the pipe, then close our
 * end. A background descendant still holding the pipe does not delay EXIT; its
 * later writes get EPIPE. */
static void drain_output(struct proc *p, int *fd, uint8_t type)
{
    size_t total = 0;
    while (*fd >= 0 && total < DRAIN_CAP) {
        ssize_t n = read(*fd, iobuf, CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        total += (size_t)n;
        emit_output(p, type, iobuf, (size_t)n);
    }
    close_fd(fd);
}

static void encode_exit(unsigned char ev[EXIT_LEN], const struct proc *p)
{
    int signaled = WIFSIGNALED(p->status);
    ev[0] = signaled ? 1 : 0;
    ev[1] = p->timed_out ? 1 : 0;
    put_u16(ev + 2, 0);
    put_u32(ev + 4, (uint32_t)(signaled ? WTERMSIG(p->status) : WEXITSTATUS(p->status)));
    put_u64(ev + 8, (uint64_t)(p->end_us - p->start_us));
    put_u64(ev + 16, timeval_us(p->ru.ru_utime));
    put_u64(ev + 24, timeval_us(p->ru.ru_stime));
    put_u64(ev + 32, (uint64_t)p->ru.ru_maxrss); /* KiB on Linux */
    put_u64(ev + 40, p->out_total[0]);
    put_u64(ev + 48, p->out_total[1]);
}

/* Forward what is already in a pipe without waiting or closing it: a context's output
 * written before its kernel said END must reach the host before CTX_DONE does. */
static void drain_available(struct proc *p, int fd, uint8_t type)
{
    size_t total = 0;
    while (fd >= 0 && total < DRAIN_CAP) {
        ssize_t n = read(fd, iobuf, CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        total += (size_t)n;
        emit_output(p, type, iobuf, (size_t)n);
    }
}

static void send_call_done(struct proc *p, unsigned flags)
{
    drain_available(p, p->out_fd, EV_STDOUT);
    drain_available(p, p->err_fd, EV_STDERR);
    if (p->call_timed_out)
        flags |= DONE_TIMED_OUT;
    p->call_active = 0;
    if (!p->attached)
        return;
    unsigned char ev[16];
    put_u32(ev, flags);
    put_u32(ev + 4, p->call_swept);
    put_u64(ev + 8, (uint64_t)(now_us() - p->call_start_us));
    send_simple(EV_CTX_DONE, p->channel, ev, sizeof ev);
}

static void finish_reaped(void)
{
    for (int i = 0; i < MAX_PROCS; i++) {
        struct proc *p = &procs[i];
        if (!p->used || !p->reaped)
            continue;
        if (p->is_ctx) {
            /* The keeper exits only once its whole tree is gone. Should user code have
             * killed the keeper itself, its kernel was reparented to us: end it too. */
            kill(p->kernel_pid, SIGKILL);
            if (p->call_active)
                send_call_done(p, DONE_KERNEL_LOST);
            close_fd(&p->evt_fd);
            free(p->evt_buf);
        }
        drain_output(p, &p->out_fd, EV_STDOUT);
        drain_output(p, &p->err_fd, EV_STDERR);
        discard_stdin(p);
        if (p->attached) {
            unsigned char ev[EXIT_LEN];
            encode_exit(ev, p);
            send_simple(p->is_ctx ? EV_CTX_EXIT : EV_EXIT, p->channel, ev, sizeof ev);
        }
        reset_slot(p);
    }
}

/* Kill a context's kernel; its keeper then kills what is left of the tree and exits. */
static void kill_context(struct proc *p)
{
    kill(-p->kernel_pid, SIGKILL);
    kill(p->kernel_pid, SIGKILL);
}

/*
 * Decisions about a context's call that send frames (never called while a send is in
 * progress): the call is done when the kernel said END and, after a deadline, a sweep
 * found nothing left to kill. If the kernel does not answer within the sweep window it
 * is killed (its state is lost); if the call's processes outlive the window (a fork
 * bomb outrunning the sweeps), the whole sandbox is killed: the supervisor exits, and
 * the container with it.
 */
static void advance_calls(void)
{
    int64_t now = now_ms();
    for (int i = 0; i < MAX_PROCS; i++) {
        struct proc *p = &procs[i];
        if (!p->used || !p->is_ctx || !p->call_active || p->reaped)
            continue;
        if (p->call_end_seen && (!p->call_timed_out || p->call_last_swept == 0)) {
            send_call_done(p, 0);
            continue;
        }
        if (!p->call_timed_out || now < p->call_sweep_until_ms)
            continue;
        if (!p->call_end_seen) {
            kill_context(p);
            send_call_done(p, DONE_KERNEL_LOST);
        } else {
            send_call_done(p, DONE_SANDBOX_KILLED);
            if (getpid() == 1) {
                kill(-1, SIGKILL);
                exit(3);
            }
            kill_context(p);
        }
    }
}

/* Read a kernel's event pipe: forward EVENT frames, note END. A malformed frame (user
 * code wrote garbage to fd 4) ends the context: nothing the kernel says can be trusted. */
static void read_kernel_events(struct proc *p)
{
    if (p->evt_cap - p->evt_len < CHUNK) {
        size_t cap = p->evt_cap ? p->evt_cap * 2 : 2 * CHUNK;
        while (cap - p->evt_len < CHUNK)
            cap *= 2;
        unsigned char *nb = realloc(p->evt_buf, cap);
        if (!nb) {
            kill_context(p);
            return;
        }
        p->evt_buf = nb;
        p->evt_cap = cap;
    }
    ssize_t n = read(p->evt_fd, p->evt_buf + p->evt_len, p->evt_cap - p->evt_len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        close_fd(&p->evt_fd); /* the kernel is gone; the keeper's exit follows */
        return;
    }
    p->evt_len += (size_t)n;
    size_t off = 0;
    while (p->evt_len - off >= 5) {
        uint32_t len = get_u32(p->evt_buf + off);
        uint8_t type = p->evt_buf[off + 4];
        if (len > MAX_KERNEL_FRAME || (type != KMSG_EVENT && type != KMSG_END)) {
            kill_context(p);
            close_fd(&p->evt_fd);
            p->evt_len = 0;
            return;
        }
        if (p->evt_len - off < 5 + (size_t)len)
            break;
        /* Forwarded with its type byte: END carries the call's outcome as the kernel
         * sees it (an exit status, an execution count). */
        if (p->attached) {
            struct iovec parts[2] = { { p->evt_buf + off + 4, 1 }, { p->evt_buf + off + 5, len } };
            send_frame(EV_CTX_MSG, p->channel, parts, 2);
        }
        if (type == KMSG_END && p->call_active)
            p->call_end_seen = 1;
        off += 5 + (size_t)len;
    }
    memmove(p->evt_buf, p->evt_buf + off, p->evt_len - off);
    p->evt_len -= off;
    /* A big image came through: do not keep its buffer for the rest of the session. */
    if (p->evt_len == 0 && p->evt_cap > 4 * CHUNK) {
        free(p->evt_buf);
        p->evt_buf = NULL;
        p->evt_cap = 0;
    }
}

/* ------------------------------------------------------------ child stdin */

static void flush_stdin(struct proc *p)
{
    while (p->in_fd >= 0 && p->in_off < p->in_len) {
        ssize_t w = write(p->in_fd, p->in_buf + p->in_off, p->in_len - p->in_off);
        if (w > 0) {
            p->in_off += (size_t)w;
            stdin_buffered -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        discard_stdin(p); /* EPIPE: the reader is gone, the rest is undeliverable */
        return;
    }
    free(p->in_buf);
    p->in_buf = NULL;
    p->in_len = p->in_off = 0;
    if (p->close_stdin_pending)
        close_fd(&p->in_fd);
}

static int append_stdin(struct proc *p, const unsigned char *data, size_t len)
{
    if (p->in_off > 0) {
        memmove(p->in_buf, p->in_buf + p->in_off, p->in_len - p->in_off);
        p->in_len -= p->in_off;
        p->in_off = 0;
    }
    unsigned char *nb = realloc(p->in_buf, p->in_len + len);
    if (!nb)
        return -1;
    memcpy(nb + p->in_len, data, len);
    p->in_buf = nb;
    p->in_len += len;
    stdin_buffered += len;
    return 0;
}

/* ------------------------------------------------------------- the child */

static int exec_lookup(const char *file, char *const argv[], char *const envp[], const char *path)
{
    if (*file == '\0')
        return ENOENT;
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return errno;
    }
    size_t flen = strlen(file);
    int seen_eacces = 0;
    char buf[PATH_MAX];
    for (const char *p = path;;) {
        const char *colon = strchr(p, ':');
        size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
        if (dlen + 1 + flen + 1 <= sizeof buf) {
            size_t off = 0;
            if (dlen > 0) { /* an empty PATH entry means the current directory */
                memcpy(buf, p, dlen);
                buf[dlen] = '/';
                off = dlen + 1;
            }
            memcpy(buf + off, file, flen + 1);
            execve(buf, argv, envp);
            switch (errno) {
            case EACCES:
                seen_eacces = 1;
                break;
            case ENOENT: case ENOTDIR: case ESTALE: case ENODEV: case ETIMEDOUT:
            case ELOOP: case ENAMETOOLONG:
                break;
            default:
                return errno; /* found but unusable (ENOEXEC, E2BIG...): report it */
            }
        }
        if (!colon)
            break;
        p = colon + 1;
    }
    return seen_eacces ? EACCES : ENOENT;
}

static void report_child_failure(int status_fd, int stage, int err)
{
    int32_t msg[2] = { stage, err };
    ssize_t ignored = write(status_fd, msg, sizeof msg);
    (void)ignored;
    _exit(127);
}

/* The descriptors a child starts with: 0..2, and for a kernel 3 (requests) and 4
 * (events). Each is first moved above them all, so that no dup2 clobbers a source. */
struct child_fds {
    int fd[5];
    int count;
};

static void child_exec(int status_fd, struct child_fds fds, const char *cwd, char *const argv[],
                       char *const envp[], const char *path)
{
    /* First of all, before anything can stop or slow us: keep only the child's own pipes
     * (at 0..count-1) and the status pipe (at count), and close every other descriptor.
     * The supervisor's connection to the host, its listening socket and other processes'
     * pipes are then gone from this process before user code could reach it (it can
     * signal a process of its own uid, or read its memory once it is dumpable). */
    status_fd = fcntl(status_fd, F_DUPFD_CLOEXEC, 16);
    if (status_fd < 0)
        _exit(127);
    for (int i = 0; i < fds.count; i++)
        if ((fds.fd[i] = fcntl(fds.fd[i], F_DUPFD_CLOEXEC, 16)) < 0)
            report_child_failure(status_fd, STAGE_SETUP, errno);
    for (int i = 0; i < fds.count; i++)
        if (dup2(fds.fd[i], i) < 0)
            report_child_failure(status_fd, STAGE_SETUP, errno);
    /* The status pipe stays open until exec (CLOEXEC), at fd `count`. */
    if (dup3(status_fd, fds.count, O_CLOEXEC) < 0)
        report_child_failure(status_fd, STAGE_SETUP, errno);
    status_fd = fds.count;
    if (close_range((unsigned)fds.count + 1, ~0U, 0) < 0) {
        for (int fd = fds.count + 1; fd < 65536; fd++)
            close(fd);
    }

    /* Non-dumpable /proc files belong to root, which would make our own oom_score_adj
     * unwritable for the sandbox's root: dumpable for just that write (we hold nothing
     * of the supervisor's now), then not again until exec makes the program dumpable. */
    prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
    int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (oom >= 0) {
        ssize_t ignored = write(oom, "1000", 4); /* the OOM killer picks user code first */
        (void)ignored;
        close(oom);
    }
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    if (setsid() < 0)
        report_child_failure(status_fd, STAGE_SETUP, errno);
    /* Ignored signals (SIGPIPE!) and the blocked mask survive exec: reset both. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++)
        sigaction(s, &dfl, NULL);
    sigset_t empty;
    sigemptyset(&empty);
    sigprocmask(SIG_SETMASK, &empty, NULL);
    if (chdir(cwd) < 0)
        report_child_failure(status_fd, STAGE_CHDIR, errno);
    report_child_failure(status_fd, STAGE_EXEC, exec_lookup(argv[0], argv, envp, path));
}

/*
 * Read a child's start-up report from its status pipe without waiting for ever: a child
 * that user code stopped (SIGSTOP, same uid) before it could exec must not freeze the
 * supervisor. Returns the bytes read, 0 at end of file (exec succeeded), or -1 when
 * nothing came within START_TIMEOUT_MS (the caller then kills the child).
 */
#define START_TIMEOUT_MS 5000
static ssize_t read_start_report(int fd, void *buf, size_t len, int64_t deadline_ms)
{
    for (;;) {
        int64_t left = deadline_ms - now_ms();
        if (left <= 0)
            return -1;
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int r = poll(&pfd, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        ssize_t n = read(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 ? 0 : n;
    }
}

/* ------------------------------------------------------------- requests */

static void mark_malformed(void) { conn_failed = 1; }

static void handle_hello(uint32_t channel, const unsigned char *p, uint32_t len)
{
    if (len != 4)
        return mark_malformed();
    uint32_t version = get_u32(p);
    if (channel != 0)
        return send_error(channel, EINVAL, "HELLO must use channel 0");
    if (version != PROTOCOL_VERSION)
        return send_error(0, EPROTONOSUPPORT, "unsupported protocol version %u (supervisor speaks %u)",
                          version, PROTOCOL_VERSION);
    unsigned char v[4];
    put_u32(v, PROTOCOL_VERSION);
    struct iovec parts[2] = { { v, 4 }, { (void *)CORRAL_VERSION, strlen(CORRAL_VERSION) } };
    send_frame(EV_HELLO_OK, 0, parts, 2);
}

struct text {
    char buf[8192];
    size_t len;
};

__attribute__((format(printf, 2, 3)))
static void text_add(struct text *t, const char *fmt, ...)
{
    if (t->len >= sizeof t->buf)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->buf + t->len, sizeof t->buf - t->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        t->len += (size_t)n < sizeof t->buf - t->len ? (size_t)n : sizeof t->buf - t->len - 1;
}

static ssize_t read_small_file(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = 0;
    while (len + 1 < size) {
        ssize_t n = read(fd, buf + len, size - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return (ssize_t)len;
}

/* Value of "Key:\tvalue" in /proc/self/status, or "unknown". */
static void status_field(const char *status, const char *key, char *out, size_t size)
{
    size_t klen = strlen(key);
    for (const char *line = status; line && *line;) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            const char *v = line + klen + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            size_t n = strcspn(v, "\n");
            if (n >= size)
                n = size - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    snprintf(out, size, "unknown");
}

/* An id map with whitespace collapsed and lines joined by ';'. */
static void probe_map(struct text *t, const char *key, const char *path)
{
    char raw[2048], out[2048];
    size_t o = 0;
    if (read_small_file(path, raw, sizeof raw) < 0) {
        text_add(t, "%s=unknown\n", key);
        return;
    }
    int pending_space = 0, pending_semi = 0;
    for (const char *c = raw; *c && o + 2 < sizeof out; c++) {
        if (*c == '\n') {
            pending_semi = o > 0;
            pending_space = 0;
        } else if (*c == ' ' || *c == '\t') {
            pending_space = o > 0 && !pending_semi;
        } else {
            if (pending_semi)
                out[o++] = ';';
            else if (pending_space)
                out[o++] = ' ';
            pending_semi = pending_space = 0;
            out[o++] = *c;
        }
    }
    out[o] = '\0';
    text_add(t, "%s=%s\n", key, out);
}

static void probe_rlimit(struct text *t, const char *key, int resource)
{
    struct rlimit rl;
    if (getrlimit(resource, &rl) < 0) {
        text_add(t, "%s=unknown\n", key);
        return;
    }
    char soft[32], hard[32];
    if (rl.rlim_cur == RLIM_INFINITY)
        snprintf(soft, sizeof soft, "unlimited");
    else
        snprintf(soft, sizeof soft, "%llu", (unsigned long long)rl.rlim_cur);
    if (rl.rlim_max == RLIM_INFINITY)
        snprintf(hard, sizeof hard, "unlimited");
    else
        snprintf(hard, sizeof hard, "%llu", (unsigned long long)rl.rlim_max);
    text_add(t, "%s=%s/%s\n", key, soft, hard);
}

static void handle_probe(uint32_t channel, uint32_t len)
{
    if (len != 0)
        return mark_malformed();
    if (channel != 0)
        return send_error(channel, EINVAL, "PROBE must use channel 0");
    static struct text t;
    static char status[8192];
    char v[128];
    t.len = 0;
    text_add(&t, "version=%s\n", CORRAL_VERSION);
    text_add(&t, "pid=%d\n", (int)getpid());
    text_add(&t, "uid=%u\n", (unsigned)getuid());
    text_add(&t, "gid=%u\n", (unsigned)getgid());
    probe_map(&t, "uid_map", "/proc/self/uid_map");
    probe_map(&t, "gid_map", "/proc/self/gid_map");
    static const char *const ns[] = { "user", "pid", "mnt", "net", "ipc", "uts", "cgroup" };
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        char path[64];
        struct stat st;
        snprintf(path, sizeof path, "/proc/self/ns/%s", ns[i]);
        if (stat(path, &st) == 0)
            text_add(&t, "ns.%s=%llu\n", ns[i], (unsigned long long)st.st_ino);
        else
            text_add(&t, "ns.%s=unknown\n", ns[i]);
    }
    if (read_small_file("/proc/self/status", status, sizeof status) < 0)
        status[0] = '\0';
    static const char *const fields[][2] = {
        { "cap.eff", "CapEff" }, { "cap.prm", "CapPrm" }, { "cap.inh", "CapInh" },
        { "cap.bnd", "CapBnd" }, { "cap.amb", "CapAmb" }, { "no_new_privs", "NoNewPrivs" },
        { "seccomp", "Seccomp" }, { "seccomp_filters", "Seccomp_filters" },
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        status_field(status, fields[i][1], v, sizeof v);
        text_add(&t, "%s=%s\n", fields[i][0], v);
    }
    text_add(&t, "dumpable=%d\n", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
    probe_rlimit(&t, "rlimit.nofile", RLIMIT_NOFILE);
    probe_rlimit(&t, "rlimit.fsize", RLIMIT_FSIZE);
    probe_rlimit(&t, "rlimit.nproc", RLIMIT_NPROC);
    char host[256];
    if (gethostname(host, sizeof host) < 0)
        snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    text_add(&t, "hostname=%s\n", host);
    send_simple(EV_PROBE_REPORT, 0, t.buf, t.len);
}

static struct proc *free_slot(void)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (!procs[i].used)
            return &procs[i];
    return NULL;
}

static void close_pair(int fds[2])
{
    close_fd(&fds[0]);
    close_fd(&fds[1]);
}

/* cwd, argv and env of a SPAWN or CTX_START, pointing into the request payload. */
struct exec_args {
    const char *cwd;
    char **argv;
    char **envp;
    const char *path; /* the request's PATH, else DEFAULT_PATH */
};

static void free_exec_args(struct exec_args *a)
{
    free(a->argv);
    free(a->envp);
    a->argv = a->envp = NULL;
}

/* The strings are cwd, argv[], env[]: each must end inside the payload, and nothing may
 * follow the last one. Returns 0, -1 for a malformed payload, or an errno. */
static int parse_exec_args(const unsigned char *cur, const unsigned char *end, unsigned argc,
                           unsigned envc, struct exec_args *a)
{
    static const char *strs[1 + 65535 + 65535]; /* 1 MiB: too large for the stack */
    for (unsigned i = 0; i < 1 + argc + envc; i++) {
        const unsigned char *nul = memchr(cur, 0, (size_t)(end - cur));
        if (!nul)
            return -1;
        strs[i] = (const char *)cur;
        cur = nul + 1;
    }
    if (cur != end)
        return -1;
    if (argc == 0)
        return EINVAL;
    a->argv = calloc(argc + 1, sizeof *a->argv);
    a->envp = calloc(envc + 1, sizeof *a->envp);
    if (!a->argv || !a->envp) {
        free_exec_args(a);
        return ENOMEM;
    }
    a->cwd = strs[0];
    a->path = DEFAULT_PATH;
    for (unsigned i = 0; i < argc; i++)
        a->argv[i] = (char *)strs[1 + i];
    for (unsigned i = 0; i < envc; i++) {
        a->envp[i] = (char *)strs[1 + argc + i];
        if (strncmp(a->envp[i], "PATH=", 5) == 0)
            a->path = a->envp[i] + 5;
    }
    return 0;
}

static void handle_spawn(uint32_t channel, const unsigned char *p, uint32_t len)
{
    if (len < 12)
        return mark_malformed();
    uint32_t flags = get_u32(p), timeout_ms = get_u32(p + 4);
    unsigned argc = get_u16(p + 8), envc = get_u16(p + 10);
    uint32_t head = (flags & SPAWN_OUTPUT_CAP) ? 20 : 12;
    if (len < head)
        return mark_malformed();
    uint64_t out_cap = head == 20 ? get_u64(p + 12) : 0;
    struct exec_args a = { 0 };
    int perr = parse_exec_args(p + head, p + len, argc, envc, &a);
    if (perr < 0)
        return mark_malformed();

    const uint32_t known = SPAWN_STDIN_PIPE | SPAWN_OUTPUT_CAP;
    if (channel == 0 || find_channel(channel) || (flags & ~known) || perr) {
        free_exec_args(&a);
        if (channel == 0)
            return send_error(channel, EINVAL, "SPAWN needs a non-zero channel");
        if (find_channel(channel))
            return send_error(channel, EBUSY, "channel %u is in use", channel);
        if (flags & ~known)
            return send_error(channel, EINVAL, "unknown SPAWN flags 0x%x", flags);
        return send_error(channel, perr, perr == EINVAL ? "argv is empty" : "out of memory");
    }
    struct proc *slot = free_slot();
    if (!slot) {
        free_exec_args(&a);
        return send_error(channel, EAGAIN, "too many processes (limit %d)", MAX_PROCS);
    }
    char **argv = a.argv, **envp = a.envp;
    const char *path = a.path;
    const char *strs0 = a.cwd, *argv0 = a.argv[0]; /* both point into the payload */

    int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 }, st[2] = { -1, -1 };
    if (((flags & SPAWN_STDIN_PIPE) && pipe2(in, O_CLOEXEC) < 0) || pipe2(out, O_CLOEXEC) < 0 ||
        pipe2(err, O_CLOEXEC) < 0 || pipe2(st, O_CLOEXEC) < 0) {
        int e = errno;
        close_pair(in), close_pair(out), close_pair(err), close_pair(st);
        free(argv), free(envp);
        return send_error(channel, e, "pipe: %s", strerror(e));
    }
    int64_t start = now_us();
    pid_t pid = fork();
    if (pid == 0)
        child_exec(st[1], (struct child_fds){ { in[0] >= 0 ? in[0] : devnull_fd, out[1], err[1] }, 3 },
                   strs0, argv, envp, path);
    int fork_err = errno;
    free(argv);
    free(envp);
    close_fd(&in[0]), close_fd(&out[1]), close_fd(&err[1]), close_fd(&st[1]);
    if (pid < 0) {
        close_pair(in), close_pair(out), close_pair(err), close_pair(st);
        return send_error(channel, fork_err, "fork: %s", strerror(fork_err));
    }

    /* EOF on the CLOEXEC status pipe means exec succeeded. */
    int32_t msg[2];
    ssize_t n = read_start_report(st[0], msg, sizeof msg, now_ms() + START_TIMEOUT_MS);
    close_fd(&st[0]);
    if (n < 0) {
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        close_pair(in), close_pair(out), close_pair(err);
        return send_error(channel, ETIMEDOUT, "%s did not start within %d ms (stopped before exec?)",
                          argv0, START_TIMEOUT_MS);
    }
    if (n == (ssize_t)sizeof msg) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        close_pair(in), close_pair(out), close_pair(err);
        int e = msg[1];
        if (msg[0] == STAGE_EXEC)
            return send_error(channel, e, "exec %s: %s", argv0, strerror(e));
        if (msg[0] == STAGE_CHDIR)
            return send_error(channel, e, "chdir %s: %s", strs0, strerror(e));
        return send_error(channel, e, "spawn setup: %s", strerror(e));
    }

    /* Our ends never block: a child that does not read stdin or a burst of output
     * must not stall the loop. */
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    if (in[1] >= 0)
        fcntl(in[1], F_SETFL, O_NONBLOCK);
    reset_slot(slot);
    slot->used = 1;
    slot->attached = 1;
    slot->channel = channel;
    slot->pid = pid;
    slot->has_stdin_pipe = in[1] >= 0;
    slot->out_fd = out[0];
    slot->err_fd = err[0];
    slot->in_fd = in[1];
    slot->start_us = start;
    slot->deadline_ms = timeout_ms ? now_ms() + timeout_ms : 0;
    slot->out_cap = out_cap;
    unsigned char pidbuf[4];
    put_u32(pidbuf, (uint32_t)pid);
    send_simple(EV_STARTED, channel, pidbuf, 4);
}

static void handle_stdin(uint32_t channel, const unsigned char *p, uint32_t len)
{
    struct proc *proc = find_channel(channel);
    if (!proc)
        return; /* the process exited; its EXIT is on the way */
    if (!proc->has_stdin_pipe)
        return send_error(channel, EINVAL, "process was spawned without a stdin pipe");
    if (proc->in_fd < 0 || proc->close_stdin_pending || len == 0)
        return; /* stdin was closed, or the reader went away: drop, as a pipe would */
    if (append_stdin(proc, p, len) < 0)
        return send_error(channel, ENOMEM, "out of memory buffering stdin");
    flush_stdin(proc);
}

static void handle_stdin_close(uint32_t channel, uint32_t len)
{
    if (len != 0)
        return mark_malformed();
    struct proc *proc = find_channel(channel);
    if (!proc)
        return;
    proc->close_stdin_pending = 1;
    if (proc->in_off >= proc->in_len)
        close_fd(&proc->in_fd);
}

static void handle_signal(uint32_t channel, const unsigned char *p, uint32_t len)
{
    if (len != 4)
        return mark_malformed();
    uint32_t sig = get_u32(p);
    if (sig < 1 || sig >= (uint32_t)NSIG)
        return send_error(channel, EINVAL, "invalid signal number %u", sig);
    struct proc *proc = find_channel(channel);
    if (!proc || proc->reaped)
        return; /* already exited: a race, not an error */
    if (proc->is_ctx)
        kill(proc->kernel_pid, (int)sig); /* an interrupt is for the kernel, not its keeper */
    else
        kill(-proc->pid, (int)sig);
}

/* mkdir -p of every parent of an absolute path. */
static int make_parents(const char *path)
{
    char buf[PATH_MAX];
    size_t len = strlen(path);
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i < len; i++) {
        if (buf[i] != '/')
            continue;
        buf[i] = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return errno;
        buf[i] = '/';
    }
    return 0;
}

static void handle_write_file(uint32_t channel, const unsigned char *p, uint32_t len)
{
    if (len < 6)
        return mark_malformed();
    uint32_t mode = get_u32(p);
    uint16_t plen = get_u16(p + 4);
    if ((uint32_t)6 + plen > len)
        return mark_malformed();
    const unsigned char *data = p + 6 + plen;
    size_t dlen = len - 6 - plen;
    char path[PATH_MAX];
    if (channel == 0)
        return send_error(channel, EINVAL, "WRITE_FILE needs a non-zero channel");
    if (plen == 0 || plen >= sizeof path || memchr(p + 6, 0, plen))
        return send_error(channel, EINVAL, "invalid path");
    memcpy(path, p + 6, plen);
    path[plen] = '\0';
    if (path[0] != '/')
        return send_error(channel, EINVAL, "path must be absolute: %s", path);
    if (mode & ~0777u)
        return send_error(channel, EINVAL, "mode %o is outside 0777", mode);
    int e = make_parents(path);
    if (e)
        return send_error(channel, e, "mkdir for %s: %s", path, strerror(e));
    /* O_NOFOLLOW: never write through a symlink planted by sandbox code. O_NONBLOCK:
     * a FIFO planted at the path must not hang the supervisor (open fails with ENXIO). */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC,
                  (mode_t)mode);
    if (fd < 0) {
        e = errno;
        return send_error(channel, e, "open %s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return send_error(channel, EINVAL, "not a regular file: %s", path);
    }
    /* The mode is exact, whatever the umask or the mode of a file we truncated. */
    if (fchmod(fd, (mode_t)mode) < 0) {
        e = errno;
        close(fd);
        return send_error(channel, e, "chmod %s: %s", path, strerror(e));
    }
    size_t done = 0;
    while (done < dlen) {
        ssize_t w = write(fd, data + done, dlen - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            e = w < 0 ? errno : EIO;
            close(fd);
            return send_error(channel, e, "write %s: %s", path, strerror(e));
        }
        done += (size_t)w;
    }
    if (close(fd) < 0) {
        e = errno;
        return send_error(channel, e, "close %s: %s", path, strerror(e));
    }
    send_simple(EV_OK, channel, NULL, 0);
}

static void handle_kill_all(uint32_t channel, uint32_t len)
{
    if (len != 0)
        return mark_malformed();
    if (channel != 0)
        return send_error(channel, EINVAL, "KILL_ALL must use channel 0");
    /* kill(-1) from PID 1 of a pid namespace hits exactly the sandbox. Anywhere else
     * (a supervisor run directly on the host, in tests) it would hit the whole host. */
    if (getpid() != 1)
        return send_error(0, EPERM, "KILL_ALL refused: the supervisor is not PID 1");
    kill(-1, SIGKILL);
    send_simple(EV_OK, 0, NULL, 0);
}

static void handle_shutdown(uint32_t len)
{
    if (len != 0)
        return mark_malformed();
    if (getpid() == 1) {
        kill(-1, SIGKILL);
    } else {
        for (int i = 0; i < MAX_PROCS; i++) {
            if (procs[i].used && !procs[i].reaped) {
                kill(-procs[i].pid, SIGKILL);
                kill(procs[i].pid, SIGKILL);
            }
        }
    }
    exit(0);
}

/* ---------------------------------------------------------------- contexts */

/* Children of this process, by a scan of /proc (the keeper kills what is left). */
static int kill_own_children(void)
{
    int killed = 0;
    pid_t self = getpid();
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    struct dirent *e;
    struct proc_stat ps;
    while ((e = readdir(d)) != NULL) {
        if (read_proc_stat(e->d_name, &ps) == 0 && ps.ppid == self && kill(ps.pid, SIGKILL) == 0)
            killed++;
    }
    closedir(d);
    return killed;
}

/*
 * A context's keeper: a child subreaper between the supervisor and the kernel. Every
 * process the kernel starts that loses its parent is reparented here, not to PID 1, so
 * the supervisor can tell one context's processes from another's (on cgroup v1 the
 * sandbox cannot make sub-cgroups) and a context's death takes all of them along. It
 * reaps everything; when the kernel dies it kills the rest, waits until nothing is
 * left, and dies the way the kernel did.
 */
static void keeper_main(pid_t kernel)
{
    prctl(PR_SET_NAME, "corral-keeper", 0, 0, 0);
    int kstatus = 0, kernel_done = 0;
    for (;;) {
        int status;
        pid_t pid = wait(&status);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            break; /* ECHILD: the tree is empty */
        }
        if (pid == kernel) {
            kstatus = status;
            kernel_done = 1;
        }
        if (kernel_done)
            kill_own_children();
    }
    if (WIFSIGNALED(kstatus)) {
        signal(WTERMSIG(kstatus), SIG_DFL);
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, WTERMSIG(kstatus));
        sigprocmask(SIG_UNBLOCK, &set, NULL);
        kill(getpid(), WTERMSIG(kstatus));
    }
    _exit(WIFEXITED(kstatus) ? WEXITSTATUS(kstatus) : 127);
}

static void handle_ctx_start(uint32_t channel, const unsigned char *p, uint32_t len)
{
    if (len < 12)
        return mark_malformed();
    uint32_t flags = get_u32(p), isig = get_u32(p + 4);
    unsigned argc = get_u16(p + 8), envc = get_u16(p + 10);
    struct exec_args a = { 0 };
    int perr = parse_exec_args(p + 12, p + len, argc, envc, &a);
    if (perr < 0)
        return mark_malformed();
    if (channel == 0 || find_channel(channel) || flags != 0 || isig >= (uint32_t)NSIG || perr) {
        free_exec_args(&a);
        if (channel == 0)
            return send_error(channel, EINVAL, "CTX_START needs a non-zero channel");
        if (find_channel(channel))
            return send_error(channel, EBUSY, "channel %u is in use", channel);
        if (flags != 0)
            return send_error(channel, EINVAL, "unknown CTX_START flags 0x%x", flags);
        if (isig >= (uint32_t)NSIG)
            return send_error(channel, EINVAL, "invalid interrupt signal %u", isig);
        return send_error(channel, perr, perr == EINVAL ? "argv is empty" : "out of memory");
    }
    struct proc *slot = free_slot();
    if (!slot) {
        free_exec_args(&a);
        return send_error(channel, EAGAIN, "too many processes (limit %d)", MAX_PROCS);
    }
    const char *argv0 = a.argv[0], *cwd = a.cwd;
    int req[2] = { -1, -1 }, evt[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 };
    int st[2] = { -1, -1 };
    if (pipe2(req, O_CLOEXEC) < 0 || pipe2(evt, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 ||
        pipe2(err, O_CLOEXEC) < 0 || pipe2(st, O_CLOEXEC) < 0) {
        int e = errno;
        close_pair(req), close_pair(evt), close_pair(out), close_pair(err), close_pair(st);
        free_exec_args(&a);
        return send_error(channel, e, "pipe: %s", strerror(e));
    }
    int64_t start = now_us();
    pid_t keeper = fork();
    if (keeper == 0) {
        /* The keeper holds nothing of the host's: not the socket, not the other pipes. */
        close_fd(&conn_fd);
        close(LISTEN_FD);
        close_fd(&sig_fd);
        close_fileop_fds();
        close_fd(&req[1]), close_fd(&evt[0]), close_fd(&out[0]), close_fd(&err[0]);
        for (int i = 0; i < MAX_PROCS; i++) {
            if (procs[i].used) {
                close_fd(&procs[i].out_fd), close_fd(&procs[i].err_fd);
                close_fd(&procs[i].in_fd), close_fd(&procs[i].evt_fd);
            }
        }
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        pid_t kernel = fork();
        if (kernel == 0)
            child_exec(st[1], (struct child_fds){ { devnull_fd, out[1], err[1], req[0], evt[1] }, 5 },
                       cwd, a.argv, a.envp, a.path);
        if (kernel < 0)
            report_child_failure(st[1], STAGE_SETUP, errno);
        int32_t msg[2] = { STAGE_PID, kernel };
        ssize_t ignored = write(st[1], msg, sizeof msg);
        (void)ignored;
        /* Only the kernel may hold its pipes: their EOF must mean the kernel is gone. */
        close_fd(&st[1]), close_fd(&req[0]), close_fd(&evt[1]), close_fd(&out[1]), close_fd(&err[1]);
        close_fd(&devnull_fd);
        keeper_main(kernel);
    }
    int fork_err = errno;
    free_exec_args(&a);
    close_fd(&req[0]), close_fd(&evt[1]), close_fd(&out[1]), close_fd(&err[1]), close_fd(&st[1]);
    if (keeper < 0) {
        close_pair(req), close_pair(evt), close_pair(out), close_pair(err), close_pair(st);
        return send_error(channel, fork_err, "fork: %s", strerror(fork_err));
    }
    /* The keeper reports the kernel's pid; then EOF means exec succeeded, or the kernel
     * reports where it failed. */
    int32_t msg[2] = { 0, 0 }, fail[2];
    ssize_t n, m = 0;
    int64_t deadline = now_ms() + START_TIMEOUT_MS;
    n = read_start_report(st[0], msg, sizeof msg, deadline);
    if (n == (ssize_t)sizeof msg && msg[0] == STAGE_PID)
        m = read_start_report(st[0], fail, sizeof fail, deadline);
    close_fd(&st[0]);
    if (n < 0 || m < 0) {
        /* Stopped before exec: the keeper's tree goes (it kills the kernel as it dies). */
        if (n == (ssize_t)sizeof msg && msg[0] == STAGE_PID && msg[1] > 0)
            kill(msg[1], SIGKILL);
        kill(keeper, SIGKILL);
        while (waitpid(keeper, NULL, 0) < 0 && errno == EINTR) {
        }
        close_pair(req), close_pair(evt), close_pair(out), close_pair(err);
        return send_error(channel, ETIMEDOUT, "the kernel did not start within %d ms (stopped before exec?)",
                          START_TIMEOUT_MS);
    }
    if (n != (ssize_t)sizeof msg || msg[0] != STAGE_PID || m == (ssize_t)sizeof fail) {
        while (waitpid(keeper, NULL, 0) < 0 && errno == EINTR) {
        }
        close_pair(req), close_pair(evt), close_pair(out), close_pair(err);
        if (n != (ssize_t)sizeof msg || msg[0] != STAGE_PID)
            return send_error(channel, n == (ssize_t)sizeof msg ? msg[1] : EIO, "context keeper failed");
        int e = fail[1];
        if (fail[0] == STAGE_EXEC)
            return send_error(channel, e, "exec %s: %s", argv0, strerror(e));
        if (fail[0] == STAGE_CHDIR)
            return send_error(channel, e, "chdir %s: %s", cwd, strerror(e));
        return send_error(channel, e, "kernel setup: %s", strerror(e));
    }
    fcntl(req[1], F_SETFL, O_NONBLOCK);
    fcntl(evt[0], F_SETFL, O_NONBLOCK);
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    reset_slot(slot);
    slot->used = 1;
    slot->attached = 1;
    slot->channel = channel;
    slot->pid = keeper;
    slot->is_ctx = 1;
    slot->kernel_pid = msg[1];
    slot->interrupt_sig = (int)isig;
    slot->has_stdin_pipe = 1;
    slot->in_fd = req[1];
    slot->evt_fd = evt[0];
    slot->out_fd = out[0];
    slot->err_fd = err[0];
    slot->start_us = start;
    unsigned char pidbuf[4];
    put_u32(pidbuf, (uint32_t)msg[1]);
    send_simple(EV_STARTED, channel, pidbuf, 4);
}

static struct proc *find_context(uint32_t channel, const char *what)
{
    struct proc *ctx = find_channel(channel);
    if (!ctx || !ctx->is_ctx) {
        send_error(channel, ENOENT, "%s: no context on channel %u", what, channel);
        return NULL;
    }
    return ctx;
}

static void handle_ctx_exec(uint32_t channel, const unsigned char *p, uint32_t len)
{
    if (len < 4)
        return mark_malformed();
    struct proc *ctx = find_context(channel, "CTX_EXEC");
    if (!ctx)
        return;
    if (ctx->call_active)
        return send_error(channel, EBUSY, "the context is running a call");
    if (ctx->reaped || ctx->in_fd < 0)
        return send_error(channel, EPIPE, "the context's kernel is gone");
    uint32_t timeout_ms = get_u32(p);
    if (append_stdin(ctx, p + 4, len - 4) < 0)
        return send_error(channel, ENOMEM, "out of memory buffering the request");
    ctx->call_active = 1;
    ctx->call_end_seen = ctx->call_timed_out = ctx->call_last_swept = 0;
    ctx->call_swept = 0;
    ctx->call_start_us = now_us();
    ctx->call_start_ticks = boottime_ticks();
    ctx->call_deadline_ms = timeout_ms ? now_ms() + timeout_ms : 0;
    flush_stdin(ctx);
}

static void handle_ctx_stop(uint32_t channel, uint32_t len)
{
    if (len != 0)
        return mark_malformed();
    struct proc *ctx = find_context(channel, "CTX_STOP");
    if (ctx && !ctx->reaped)
        kill_context(ctx); /* CTX_EXIT follows once the keeper's tree is gone */
}

/* ------------------------------------------------------------------ file API */

/*
 * FILE_* requests: the file API of a live sandbox (docs/protocol.md). They run here, in
 * PID 1 of the sandbox: a process whose root is the sandbox's root, with no capabilities,
 * under the sandbox's seccomp filter and rlimits. The host never opens a live sandbox's
 * files by path: /proc/PID/root/... resolves absolute symlinks against the *host's* root,
 * and any host-side check followed by an open races a symlink swap inside the sandbox.
 *
 * Confinement: every path from the host is resolved by openat2(2) from root_fd (our "/",
 * opened at start) with
 *   RESOLVE_IN_ROOT        absolute paths, absolute symlinks and ".." stay below root_fd,
 *                          whatever our own root and cwd are;
 *   RESOLVE_NO_MAGICLINKS  /proc/self/fd/N, /proc/1/root and their kind are never followed;
 *   RESOLVE_NO_XDEV        the walk never crosses a mount point (nor does a symlink or
 *                          ".." make it cross one).
 * RESOLVE_NO_XDEV is the exact policy, not an approximation of one: the OCI plan
 * (oci-spec.ts, layer.ts) mounts the writable layer once, as the overlay at "/", and /tmp,
 * /root and /work are plain directories of it (one mount, one st_dev). Every other mount
 * is one the API must not serve: /proc (other processes' memory, environ and fds), /sys,
 * /dev and /dev/shm (devices, another tmpfs), and the read-only binds of the supervisor
 * and the kernel drivers (host files). Walking component by component with mount-id
 * checks would implement the same rule in more code. Should a later plan mount /tmp or
 * /work on their own, the API fails closed there (EXDEV), and files.test.ts notices.
 * Symlinks within the root are followed; the kernel keeps them inside it.
 *
 * Walks below a directory already resolved (list, recursive remove, mkdir -p) go one
 * name at a time with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS: they follow no link and
 * cannot leave that directory.
 *
 * Only regular files and directories are served: opens use O_NONBLOCK (a FIFO, or a file
 * under a lease, cannot block the loop) and the type is checked with fstat on the opened
 * descriptor, never before the open. A write goes to a new file in the target's directory
 * (O_CREAT | O_EXCL: never an existing inode), which is renamed over the target at the
 * end: a hard link planted at the target is replaced, never written through, and a reader
 * never sees a half-written file.
 *
 * These run in the event loop; they are bounded (a read or write moves one chunk per
 * frame, a listing stops at MAX_LIST_ENTRIES) and touch only the sandbox's own local
 * filesystem, which holds no FUSE or network mount. A recursive remove, which may take
 * long, runs in a child (remove_in_child).
 */
#define MAX_FILE_OPS 128
#define FILE_CHUNK ((size_t)256 << 10)  /* largest FILE_DATA payload we send */
#define MAX_LIST_DEPTH 64
#define MAX_LIST_ENTRIES 100000
#define MAX_WALK_DEPTH 128              /* recursive remove: directory levels */
#define MAX_SYMLINK_HOPS 40             /* as the kernel's own limit */
#define ENTRY_HEAD 33

enum { FOP_READ = 1, FOP_WRITE = 2, FOP_REMOVE = 3 };
enum { FT_OTHER = 0, FT_FILE = 1, FT_DIR = 2, FT_SYMLINK = 3 };
/* Request flags. */
#define FSTAT_FOLLOW 1u
#define FWRITE_PARENTS 1u
#define FWRITE_KEEP_MODE 2u
#define FMKDIR_PARENTS 1u
#define FREMOVE_RECURSIVE 1u
#define FRENAME_NOREPLACE 1u

/* A read streaming to the host, a write streaming from it, or a recursive remove. */
struct fileop {
    int used;
    int kind;
    uint32_t channel;
    int fd;                 /* the file read, the temporary file written, or the remover's pipe */
    int dir_fd;             /* write: the target's directory (O_PATH) */
    uint64_t done;          /* bytes sent or written so far */
    uint64_t max;           /* the size cap */
    uint64_t credit;        /* read: bytes the host is ready to take, in all */
    mode_t mode;            /* write: the final file's mode */
    char tmp[64];           /* write: the temporary file's name in dir_fd */
    char name[NAME_MAX + 1]; /* write: the final name in dir_fd */
    char path[PATH_MAX];    /* remove: the path, for the answer */
};

static struct fileop fileops[MAX_FILE_OPS];
static unsigned char filebuf[FILE_CHUNK];

/* openat2 refuses O_PATH with any flag but O_DIRECTORY, O_NOFOLLOW and O_CLOEXEC. */
static uint64_t how_flags(int flags)
{
    return (uint64_t)(flags | O_CLOEXEC | (flags & O_PATH ? 0 : O_NOCTTY));
}

/* Resolve an absolute path of the sandbox under the rules above. */
static int resolve_in_root(const char *path, int flags)
{
    struct open_how how = {
        .flags = how_flags(flags),
        .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
    };
    return (int)syscall(SYS_openat2, root_fd, path, &how, sizeof how);
}

/* Open one name inside an already resolved directory: no link, no "..", no mount crossed. */
static int open_beneath(int dir_fd, const char *name, int flags)
{
    struct open_how how = {
        .flags = how_flags(flags | O_NOFOLLOW),
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
    };
    return (int)syscall(SYS_openat2, dir_fd, name, &how, sizeof how);
}

/* "/a/b/c" -> parent "/a/b", name "c". The name must be a plain one: the root, ".", ".."
 * and a trailing slash name no entry that could be created, removed or renamed. */
static int split_path(const char *path, char parent[PATH_MAX], char name[NAME_MAX + 1])
{
    size_t len = strlen(path);
    if (len > 1 && path[len - 1] == '/')
        return EINVAL; /* "dir/": the host never sends it */
    const char *slash = memrchr(path, '/', len);
    if (!slash)
        return EINVAL;
    size_t nlen = len - (size_t)(slash + 1 - path);
    if (nlen == 0 || (nlen == 1 && slash[1] == '.') || (nlen == 2 && slash[1] == '.' && slash[2] == '.'))
        return EINVAL;
    if (nlen > NAME_MAX)
        return ENAMETOOLONG;
    size_t plen = (size_t)(slash - path);
    if (plen == 0)
        plen = 1; /* the parent of "/x" is "/" */
    memcpy(parent, path, plen);
    parent[plen] = '\0';
    memcpy(name, slash + 1, nlen);
    name[nlen] = '\0';
    return 0;
}

/*
 * Open a directory of the sandbox (O_PATH). With `create`, missing directories are made
 * (mode 0755 less the umask) like mkdir -p: the deepest existing ancestor is resolved
 * under the rules above, and each missing name below it is created and opened one at a
 * time without following links.
 */
static int open_dir(const char *dir, int create)
{
    int fd = resolve_in_root(dir, O_PATH | O_DIRECTORY);
    if (fd >= 0 || errno != ENOENT || !create)
        return fd;
    char buf[PATH_MAX];
    size_t len = strlen(dir);
    memcpy(buf, dir, len + 1);
    size_t end = len;
    for (;;) {
        while (end > 0 && buf[end - 1] != '/')
            end--;
        while (end > 1 && buf[end - 1] == '/')
            end--;
        if (end == 0)
            return -1; /* not absolute: cannot happen, the request was checked */
        char saved = buf[end];
        buf[end] = '\0';
        fd = resolve_in_root(buf, O_PATH | O_DIRECTORY);
        buf[end] = saved;
        if (fd >= 0)
            break;
        if (errno != ENOENT || end <= 1)
            return -1;
    }
    for (size_t i = end; i < len;) {
        while (i < len && buf[i] == '/')
            i++;
        size_t j = i;
        while (j < len && buf[j] != '/')
            j++;
        if (j == i)
            break;
        if (j - i > NAME_MAX) {
            close(fd);
            errno = ENAMETOOLONG;
            return -1;
        }
        char comp[NAME_MAX + 1];
        memcpy(comp, buf + i, j - i);
        comp[j - i] = '\0';
        if (mkdirat(fd, comp, 0755) < 0 && errno != EEXIST) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        int next = open_beneath(fd, comp, O_PATH | O_DIRECTORY);
        int e = errno;
        close(fd);
        if (next < 0) {
            errno = e;
            return -1;
        }
        fd = next;
        i = j;
    }
    return fd;
}

static int file_type(mode_t m)
{
    return S_ISREG(m) ? FT_FILE : S_ISDIR(m) ? FT_DIR : S_ISLNK(m) ? FT_SYMLINK : FT_OTHER;
}

static const char *type_name(mode_t m)
{
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISSOCK(m)) return "a socket";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISLNK(m)) return "a symlink";
    return "not a regular file";
}

/* One entry as the host decodes it (protocol.ts decodeEntries): u8 type, u16 name
 * length, u16 target length, u32 mode, u32 uid, u32 gid, u64 size, i64 mtime in ns,
 * then the name and the symlink's target. Returns the bytes written (at most
 * ENTRY_HEAD + 2 * PATH_MAX). */
static size_t encode_entry(unsigned char *out, const struct stat *st, const char *name, size_t nlen,
                           const char *target, size_t tlen)
{
    out[0] = (unsigned char)file_type(st->st_mode);
    put_u16(out + 1, (uint16_t)nlen);
    put_u16(out + 3, (uint16_t)tlen);
    put_u32(out + 5, (uint32_t)st->st_mode);
    put_u32(out + 9, (uint32_t)st->st_uid);
    put_u32(out + 13, (uint32_t)st->st_gid);
    put_u64(out + 17, (uint64_t)st->st_size);
    put_u64(out + 25, (uint64_t)((int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec));
    memcpy(out + ENTRY_HEAD, name, nlen);
    memcpy(out + ENTRY_HEAD + nlen, target, tlen);
    return ENTRY_HEAD + nlen + tlen;
}

/* An errno from a path operation, as one line that says what happened. */
static void send_path_error(uint32_t channel, int e, const char *what, const char *path)
{
    if (e == EXDEV)
        return send_error(channel, e, "%s %s: outside the sandbox's own filesystem "
                          "(/proc, /sys, /dev and the supervisor's mounts are not served)", what, path);
    if (e == ELOOP)
        return send_error(channel, e, "%s %s: too many symlinks, or a /proc magic link (not followed)",
                          what, path);
    send_error(channel, e, "%s %s: %s", what, path, strerror(e));
}

static struct fileop *find_fileop(uint32_t channel)
{
    for (int i = 0; i < MAX_FILE_OPS; i++)
        if (fileops[i].used && fileops[i].channel == channel)
            return &fileops[i];
    return NULL;
}

static void free_fileop(struct fileop *op)
{
    if (op->kind == FOP_WRITE && op->tmp[0] && op->dir_fd >= 0)
        unlinkat(op->dir_fd, op->tmp, 0); /* an unfinished write leaves nothing behind */
    close_fd(&op->fd);
    close_fd(&op->dir_fd);
    memset(op, 0, sizeof *op);
    op->fd = op->dir_fd = -1;
}

/* Common checks of a FILE_* request that starts something on a channel. */
static int file_channel_ok(uint32_t channel, const char *what)
{
    if (channel == 0) {
        send_error(channel, EINVAL, "%s needs a non-zero channel", what);
        return 0;
    }
    if (find_channel(channel) || find_fileop(channel)) {
        send_error(channel, EBUSY, "channel %u is in use", channel);
        return 0;
    }
    return 1;
}

/* A path from the host: 1 to PATH_MAX - 1 bytes, no NUL, absolute. */
static int take_path(uint32_t channel, const unsigned char *p, size_t len, char out[PATH_MAX])
{
    if (len == 0 || len >= PATH_MAX || memchr(p, 0, len)) {
        send_error(channel, EINVAL, "invalid path (1 to %d bytes, no NUL)", PATH_MAX - 1);
        return 0;
    }
    memcpy(out, p, len);
    out[len] = '\0';
    if (out[0] != '/') {
        send_error(channel, EINVAL, "path must be absolute: %s", out);
        return 0;
    }
    return 1;
}

static struct fileop *new_fileop(uint32_t channel, int kind)
{
    for (int i = 0; i < MAX_FILE_OPS; i++) {
        struct fileop *op = &fileops[i];
        if (!op->used) {
            memset(op, 0, sizeof *op);
            op->used = 1;
            op->kind = kind;
            op->channel = channel;
            op->fd = op->dir_fd = -1;
            return op;
        }
    }
    send_error(channel, EAGAIN, "too many file transfers in progress (limit %d)", MAX_FILE_OPS);
    return NULL;
}

static void send_file_done(uint32_t channel, uint64_t value)
{
    unsigned char v[8];
    put_u64(v, value);
    send_simple(EV_FILE_DONE, channel, v, 8);
}

/* FILE_STAT: u32 flags (FOLLOW), path -> FILE_INFO. Without FOLLOW a symlink at the last
 * component is described itself (type symlink, with its target). */
static void handle_file_stat(uint32_t channel, const unsigned char *p, uint32_t len)
{
    if (len < 4)
        return mark_malformed();
    uint32_t flags = get_u32(p);
    char path[PATH_MAX];
    if (!file_channel_ok(channel, "FILE_STAT") || !take_path(channel, p + 4, len - 4, path))
        return;
    if (flags & ~FSTAT_FOLLOW)
        return send_error(channel, EINVAL, "unknown FILE_STAT flags 0x%x", flags);
    int fd = resolve_in_root(path, O_PATH | (flags & FSTAT_FOLLOW ? 0 : O_NOFOLLOW));
    if (fd < 0)
        return send_path_error(channel, errno, "stat", path);
    struct stat st;
    char target[PATH_MAX];
    ssize_t tlen = 0;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return send_path_error(channel, e, "stat", path);
    }
    if (S_ISLNK(st.st_mode) && (tlen = readlinkat(fd, "", target, sizeof target - 1)) < 0)
        tlen = 0;
    close(fd);
    static unsigned char out[ENTRY_HEAD + PATH_MAX];
    send_simple(EV_FILE_INFO, channel, out, encode_entry(out, &st, "", 0, target, (size_t)tlen));
}

/* A listing in progress: entries are batched into FILE_ENTRIES frames. */
struct listing {
    uint32_t channel;
    uint64_t count;
    int too_many;
    size_t len;
    unsigned char buf[CHUNK];
    char rel[PATH_MAX];
};

static void flush_listing(struct listing *ls)
{
    if (ls->len > 0)
        send_simple(EV_FILE_ENTRIES, ls->channel, ls->buf, ls->len);
    ls->len = 0;
}

/* List the directory `fd` (owned: closed here) and, below depth 1, its subdirectories.
 * ls->rel holds the path of `fd` relative to the listed directory ("" at the top). A
 * subdirectory that cannot be entered (a mount point, no permission, gone) is listed but
 * not entered; symlinks are listed, never followed. */
static void list_dir(struct listing *ls, int fd, unsigned depth)
{
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return;
    }
    size_t base = strlen(ls->rel);
    struct dirent *e;
    while (!ls->too_many && !conn_failed && (e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0')))
            continue;
        size_t nlen = strlen(n);
        size_t rlen = base + (base > 0) + nlen;
        if (rlen >= PATH_MAX)
            continue; /* deeper than any path the host could name */
        if (base > 0)
            ls->rel[base] = '/';
        memcpy(ls->rel + base + (base > 0), n, nlen + 1);
        struct stat st;
        if (fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            ls->rel[base] = '\0';
            continue; /* removed meanwhile */
        }
        char target[PATH_MAX];
        ssize_t tlen = 0;
        if (S_ISLNK(st.st_mode) && (tlen = readlinkat(dirfd(d), n, target, sizeof target - 1)) < 0)
            tlen = 0;
        if (++ls->count > MAX_LIST_ENTRIES) {
            ls->too_many = 1;
            break;
        }
        if (ls->len + ENTRY_HEAD + rlen + (size_t)tlen > sizeof ls->buf)
            flush_listing(ls);
        ls->len += encode_entry(ls->buf + ls->len, &st, ls->rel, rlen, target, (size_t)tlen);
        if (S_ISDIR(st.st_mode) && depth > 1) {
            int sub = open_beneath(dirfd(d), n, O_RDONLY | O_DIRECTORY);
            if (sub >= 0)
                list_dir(ls, sub, depth - 1);
        }
        ls->rel[base] = '\0';
    }
    closedir(d);
}

/* FILE_LIST: u32 depth (1..MAX_LIST_DEPTH), u32 flags (0), path -> FILE_ENTRIES*, then
 * FILE_DONE (the entry count). The path itself may be reached through symlinks. */
static void handle_file_list(uint32_t channel, const unsigned char *p, uint32_t len)
{
    if (len < 8)
        return mark_malformed();
    uint32_t depth = get_u32(p), flags = get_u32(p + 4);
    char path[PATH_MAX];
    if (!file_channel_ok(channel, "FILE_LIST") || !take_path(channel, p + 8, len - 8, path))
        return;
    if (flags != 0)
        return send_error(channel, EINVAL, "unknown FILE_LIST flags 0x%x", flags);
    if (depth < 1 || depth > MAX_LIST_DEPTH)
        return send_error(channel, EINVAL, "list depth %u is outside 1..%d", depth, MAX_LIST_DEPTH);
    int fd = resolve_in_root(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return send_path_error(channel, errno, "list", path);
    static struct listing ls;
    ls.channel = channel;
    ls.count = 0;
    ls.too_many = 0;
    ls.len = 0;
    ls.rel[0] = '\0';
    list_dir(&ls, fd, depth);
    if (ls.too_many)
        return send_error(channel, E2BIG, "list %s: more than %d entries (list with a smaller depth)",
                          path, MAX_LIST_ENTRIES);
    flush_listing(&ls);
    send_file_done(channel, ls.count);
}

/* Send what the host has room for, at most `chunks` frames; end the read at end of file.
 * Returns 1 if the op is still streaming. */
static int pump_read(struct fileop *op, int chunks)
{
    while (chunks-- > 0 && op->credit > op->done && !conn_failed) {
        uint64_t room = op->credit - op->done;
        size_t want = room < FILE_CHUNK ? (size_t)room : FILE_CHUNK;
        ssize_t n = read(op->fd, filebuf, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            send_error(op->channel, e, "read: %s", strerror(e));
            free_fileop(op);
            return 0;
        }
        if (n == 0) {
            send_file_done(op->channel, op->done);
            free_fileop(op);
            return 0;
        }
        if (op->done + (uint64_t)n > op->max) {
            send_error(op->channel, EFBIG, "the file grew past the %llu-byte cap while being read",
                       (unsigned long long)op->max);
            free_fileop(op);
            return 0;
        }
        op->done += (uint64_t)n;
        send_simple(EV_FILE_DATA, op->channel, filebuf, (size_t)n);
    }
    return 1;
}

/* FILE_READ: u64 cap, u32 window (initial credit), path -> FILE_INFO (of the opened
 * file), FILE_DATA* (never more than the credit), FILE_DONE (the byte count). */
static void handle_file_read(uint32_t channel, const unsigned char *p, uint32_t len)
{
    if (len < 12)
        return mark_malformed();
    uint64_t max = get_u64(p);
    uint32_t window = get_u32(p + 8);
    char path[PATH_MAX];
    if (!file_channel_ok(channel, "FILE_READ") || !take_path(channel, p + 12, len - 12, path))
        return;
    int fd = resolve_in_root(path, O_RDONLY | O_NONBLOCK);
    struct stat st;
    if (fd < 0 && errno == ENXIO && (fd = resolve_in_root(path, O_PATH)) >= 0) {
        /* A socket cannot be opened for reading at all: say what it is. */
        int ok = fstat(fd, &st) == 0;
        close(fd);
        if (ok)
            return send_error(channel, EINVAL, "read %s: %s, not a regular file (refused)", path,
                              type_name(st.st_mode));
        errno = ENXIO;
        fd = -1;
    }
    if (fd < 0)
        return send_path_error(channel, errno, "read", path);
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return send_path_error(channel, e, "read", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return send_error(channel, S_ISDIR(st.st_mode) ? EISDIR : EINVAL,
                          "read %s: %s, not a regular file (refused)", path, type_name(st.st_mode));
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return send_error(channel, EFBIG, "read %s: %lld bytes, over the %llu-byte cap", path,
                          (long long)st.st_size, (unsigned long long)max);
    }
    struct fileop *op = new_fileop(channel, FOP_READ);
    if (!op) {
        close(fd);
        return;
    }
    op->fd = fd;
    op->max = max;
    op->credit = window;
    static unsigned char out[ENTRY_HEAD];
    send_simple(EV_FILE_INFO, channel, out, encode_entry(out, &st, "", 0, "", 0));
    pump_read(op, 2); /* a small file is done at once: its data and the end of file */
}

static void handle_file_credit(uint32_t channel, const unsigned char *p, uint32_t len)
{
    if (len != 4)
        return mark_malformed();
    struct fileop *op = find_fileop(channel);
    if (op && op->kind == FOP_READ)
        op->credit += get_u32(p); /* else the read ended already: nothing to do */
}

/* Called by the event loop when the host socket is writable: one frame per read. */
static int reads_waiting(void)
{
    for (int i = 0; i < MAX_FILE_OPS; i++)
        if (fileops[i].used && fileops[i].kind == FOP_READ && fileops[i].credit > fileops[i].done)
            return 1;
    return 0;
}

static void pump_reads(void)
{
    for (int i = 0; i < MAX_FILE_OPS && !conn_failed; i++)
        if (fileops[i].used && fileops[i].kind == FOP_READ)
            pump_read(&fileops[i], 1);
}

/*
 * Where a write to `path` lands: its directory (O_PATH, in *dir_fd) and final name. A
 * symlink at the last component is followed, as open(2) would follow it, at most
 * MAX_SYMLINK_HOPS times; each step is resolved by open_dir, so none can leave the root.
 * On return *st describes what is at the final name now (st_mode 0: nothing).
 */
static int locate_write_target(const char *path, int parents, int *dir_fd, char name[NAME_MAX + 1],
                               struct stat *st)
{
    char cur[PATH_MAX], parent[PATH_MAX], link[PATH_MAX];
    snprintf(cur, sizeof cur, "%s", path);
    for (int hops = 0;; hops++) {
        int e = split_path(cur, parent, name);
        if (e)
            return e == EINVAL ? EISDIR : e;
        int fd = open_dir(parent, parents);
        if (fd < 0)
            return errno;
        if (fstatat(fd, name, st, AT_SYMLINK_NOFOLLOW) < 0) {
            e = errno;
            if (e != ENOENT) {
                close(fd);
                return e;
            }
            memset(st, 0, sizeof *st);
        }
        if (!S_ISLNK(st->st_mode)) {
            *dir_fd = fd;
            return 0;
        }
        if (hops >= MAX_SYMLINK_HOPS) {
            close(fd);
            return ELOOP;
        }
        ssize_t n = readlinkat(fd, name, link, sizeof link - 1);
        e = errno;
        close(fd);
        if (n < 0)
            return e;
        link[n] = '\0';
        /* A relative target is relative to the link's directory. */
        int w = link[0] == '/' ? snprintf(cur, sizeof cur, "%s", link)
                               : snprintf(cur, sizeof cur, "%s/%s", strcmp(parent, "/") ? parent : "", link);
        if (w < 0 || (size_t)w >= sizeof cur)
            return ENAMETOOLONG;
    }
}

/* FILE_WRITE: u32 flags (PARENTS, KEEP_MODE), u32 mode, u64 cap, path. No answer when it
 * succeeds (the host sends FILE_CHUNKs at once); FILE_COMMIT then answers FILE_DONE. */
static void handle_file_write(uint32_t channel, const unsigned char *p, uint32_t len)
{
    if (len < 16)
        return mark_malformed();
    uint32_t flags = get_u32(p), mode = get_u32(p + 4);
    uint64_t max = get_u64(p + 8);
    char path[PATH_MAX];
    if (!file_channel_ok(channel, "FILE_WRITE") || !take_path(channel, p + 16, len - 16, path))
        return;
    if (flags & ~(FWRITE_PARENTS | FWRITE_KEEP_MODE))
        return send_error(channel, EINVAL, "unknown FILE_WRITE flags 0x%x", flags);
    if (mode & ~0777u)
        return send_error(channel, EINVAL, "mode %o is outside 0777", mode);
    int dir_fd = -1;
    char name[NAME_MAX + 1];
    struct stat st;
    int e = locate_write_target(path, flags & FWRITE_PARENTS, &dir_fd, name, &st);
    if (e)
        return send_path_error(channel, e, "write", path);
    if (st.st_mode != 0 && !S_ISREG(st.st_mode)) {
        close(dir_fd);
        return send_error(channel, S_ISDIR(st.st_mode) ? EISDIR : EINVAL,
                          "write %s: %s, not a regular file (refused)", path, type_name(st.st_mode));
    }
    struct fileop *op = new_fileop(channel, FOP_WRITE);
    if (!op) {
        close(dir_fd);
        return;
    }
    op->dir_fd = dir_fd;
    op->max = max;
    op->mode = (flags & FWRITE_KEEP_MODE) && S_ISREG(st.st_mode) ? (st.st_mode & 0777) : (mode_t)mode;
    memcpy(op->name, name, sizeof op->name);
    static uint32_t serial;
    for (int attempt = 0; attempt < 64 && op->fd < 0; attempt++) {
        snprintf(op->tmp, sizeof op->tmp, ".corral-write-%x-%x", (unsigned)now_us(), ++serial);
        op->fd = openat(dir_fd, op->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY,
                        0600);
        if (op->fd < 0 && errno != EEXIST)
            break;
    }
    if (op->fd < 0) {
        e = errno;
        op->tmp[0] = '\0';
        free_fileop(op);
        return send_path_error(channel, e, "write", path);
    }
}

static void fail_write(struct fileop *op, int e, const char *what)
{
    uint32_t channel = op->channel;
    free_fileop(op); /* removes the temporary file */
    send_error(channel, e, "write: %s: %s", what, strerror(e));
}

/* FILE_CHUNK: bytes for a write in progress. For an unknown channel (the write failed,
 * and its ERROR is on the way to the host) the bytes are dropped. */
static void handle_file_chunk(uint32_t channel, const unsigned char *p, uint32_t len)
{
    struct fileop *op = find_fileop(channel);
    if (!op || op->kind != FOP_WRITE)
        return;
    if (op->done + len > op->max)
        return fail_write(op, EFBIG, "over the size cap");
    for (uint32_t off = 0; off < len;) {
        ssize_t w = write(op->fd, p + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return fail_write(op, w < 0 ? errno : EIO, "writing");
        off += (uint32_t)w;
    }
    op->done += len;
}

/* FILE_COMMIT: u64 total bytes sent. Set the mode, close, rename over the target. */
static void handle_file_commit(uint32_t channel, const unsigned char *p, uint32_t len)
{
    if (len != 8)
        return mark_malformed();
    struct fileop *op = find_fileop(channel);
    if (!op || op->kind != FOP_WRITE)
        return;
    uint64_t total = get_u64(p);
    if (total != op->done)
        return fail_write(op, EIO, "the host's byte count does not match");
    if (fchmod(op->fd, op->mode) < 0)
        return fail_write(op, errno, "chmod");
    int fd = op->fd;
    op->fd = -1;
    if (close(fd) < 0)
        return fail_write(op, errno, "close");
    if (renameat(op->dir_fd, op->tmp, op->dir_fd, op->name) < 0)
        return fail_write(op, errno, "rename into place");
    op->tmp[0] = '\0';
    uint64_t done = op->done;
    free_fileop(op);
    send_file_done(channel, done);
}

/* FILE_CANCEL: stop a read or drop a write (its temporary file is removed). No answer. */
static void handle_file_cancel(uint32_t channel, uint32_t len)
{
    if (len != 0)
        return mark_malformed();
    struct fileop *op = find_fileop(channel);
    if (op)
        free_fileop(op);
}

/* FILE_MKDIR: u32 flags (PARENTS), u32 mode, path -> FILE_DONE (1 created, 0 it was a
 * directory already). */
static void handle_file_mkdir(uint32_t channel, const unsigned char *p, uint32_t len)
{
    if (len < 8)
        return mark_malformed();
    uint32_t flags = get_u32(p), mode = get_u32(p + 4);
    char path[PATH_MAX], parent[PATH_MAX], name[NAME_MAX + 1];
    if (!file_channel_ok(channel, "FILE_MKDIR") || !take_path(channel, p + 8, len - 8, path))
        return;
    if (flags & ~FMKDIR_PARENTS)
        return send_error(channel, EINVAL, "unknown FILE_MKDIR flags 0x%x", flags);
    if (mode & ~0777u)
        return send_error(channel, EINVAL, "mode %o is outside 0777", mode);
    if (strcmp(path, "/") == 0)
        return send_file_done(channel, 0);
    int e = split_path(path, parent, name);
    if (e)
        return send_path_error(channel, e, "mkdir", path);
    int dir_fd = open_dir(parent, flags & FMKDIR_PARENTS);
    if (dir_fd < 0)
        return send_path_error(channel, errno, "mkdir", path);
    if (mkdirat(dir_fd, name, 0700) == 0) {
        /* The exact mode (whatever the umask) is set through a descriptor, never by name. */
        int fd = open_beneath(dir_fd, name, O_RDONLY | O_DIRECTORY);
        e = errno;
        close(dir_fd);
        if (fd < 0)
            return send_path_error(channel, e, "mkdir", path);
        if (fchmod(fd, (mode_t)mode) < 0) {
            e = errno;
            close(fd);
            return send_path_error(channel, e, "chmod", path);
        }
        close(fd);
        return send_file_done(channel, 1);
    }
    e = errno;
    close(dir_fd);
    if (e != EEXIST)
        return send_path_error(channel, e, "mkdir", path);
    /* Something is there: fine if it is a directory, or a symlink that leads to one. */
    int fd = resolve_in_root(path, O_PATH | O_DIRECTORY);
    if (fd < 0)
        return send_error(channel, EEXIST, "mkdir %s: exists and is not a directory", path);
    close(fd);
    send_file_done(channel, 0);
}

/* Remove `name` in `dir_fd` and everything below it, never following a link nor entering
 * another mount. Counts what it removed; returns 0 or an errno. */
static int remove_tree(int dir_fd, const char *name, int level, uint64_t *count)
{
    if (unlinkat(dir_fd, name, 0) == 0) {
        (*count)++;
        return 0;
    }
    if (errno != EISDIR && errno != EPERM)
        return errno;
    if (unlinkat(dir_fd, name, AT_REMOVEDIR) == 0) {
        (*count)++;
        return 0;
    }
    if (errno != ENOTEMPTY && errno != EEXIST)
        return errno;
    if (level >= MAX_WALK_DEPTH)
        return ELOOP;
    int fd = open_beneath(dir_fd, name, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        int e = errno;
        close(fd);
        return e;
    }
    int e = 0;
    struct dirent *ent;
    while (!e && (ent = readdir(d)) != NULL) {
        const char *n = ent->d_name;
        if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0')))
            continue;
        e = remove_tree(dirfd(d), n, level + 1, count);
        if (e == ENOENT)
            e = 0; /* removed meanwhile */
    }
    closedir(d);
    if (e)
        return e;
    if (unlinkat(dir_fd, name, AT_REMOVEDIR) < 0)
        return errno;
    (*count)++;
    return 0;
}

static void send_remove_result(uint32_t channel, const char *path, int e, uint64_t count)
{
    if (e == ENOTEMPTY || e == EEXIST)
        return send_error(channel, ENOTEMPTY, "remove %s: directory not empty (remove it recursively)",
                          path);
    if (e)
        return send_path_error(channel, e, "remove", path);
    send_file_done(channel, count);
}

/*
 * A recursive remove of a large tree takes a while (about 14 ms per 1,000 entries), so
 * it runs in a child, whose root and credentials are ours, while the loop goes on; the
 * child reports u32 errno and u64 count on a pipe, which the loop polls (finish_remove).
 * Returns 0 when the child took over, -1 when no process could be made (the sandbox's
 * pids limit): then the caller removes the tree itself.
 */
static int remove_in_child(uint32_t channel, int dir_fd, const char *name, const char *path)
{
    struct fileop *op = new_fileop(channel, FOP_REMOVE);
    if (!op)
        return 0; /* EAGAIN was sent */
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0) {
        free_fileop(op);
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        uint64_t count = 0;
        int e = remove_tree(dir_fd, name, 0, &count);
        unsigned char msg[12];
        put_u32(msg, (uint32_t)e);
        put_u64(msg + 4, count);
        ssize_t ignored = write(pfd[1], msg, sizeof msg);
        (void)ignored;
        _exit(0);
    }
    close(pfd[1]);
    if (pid < 0) {
        close(pfd[0]);
        free_fileop(op);
        return -1;
    }
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);
    op->fd = pfd[0];
    snprintf(op->path, sizeof op->path, "%s", path);
    return 0; /* the child is reaped like any orphan */
}

/* The remover's pipe is readable: its result, or EOF if it died (KILL_ALL). */
static void finish_remove(struct fileop *op)
{
    unsigned char msg[12];
    ssize_t n = read(op->fd, msg, sizeof msg);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    int e = n == (ssize_t)sizeof msg ? (int)get_u32(msg) : EIO;
    uint64_t count = n == (ssize_t)sizeof msg ? get_u64(msg + 4) : 0;
    uint32_t channel = op->channel;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", op->path);
    free_fileop(op);
    send_remove_result(channel, path, e, count);
}

/* FILE_REMOVE: u32 flags (RECURSIVE), path -> FILE_DONE (entries removed). A symlink is
 * removed itself, not what it points to. */
static void handle_file_remove(uint32_t channel, const unsigned char *p, uint32_t len)
{
    if (len < 4)
        return mark_malformed();
    uint32_t flags = get_u32(p);
    char path[PATH_MAX], parent[PATH_MAX], name[NAME_MAX + 1];
    if (!file_channel_ok(channel, "FILE_REMOVE") || !take_path(channel, p + 4, len - 4, path))
        return;
    if (flags & ~FREMOVE_RECURSIVE)
        return send_error(channel, EINVAL, "unknown FILE_REMOVE flags 0x%x", flags);
    int e = split_path(path, parent, name);
    if (e)
        return send_error(channel, e, "remove %s: not a name that can be removed", path);
    int dir_fd = open_dir(parent, 0);
    if (dir_fd < 0)
        return send_path_error(channel, errno, "remove", path);
    uint64_t count = 0;
    if (unlinkat(dir_fd, name, 0) == 0) {
        count = 1;
    } else if ((e = errno) == EISDIR || e == EPERM) {
        /* unlink of a directory fails with EISDIR (EPERM on some filesystems): rmdir it,
         * or, when it is not empty and that was asked for, everything below it first. */
        if (unlinkat(dir_fd, name, AT_REMOVEDIR) == 0) {
            e = 0;
            count = 1;
        } else if (errno != ENOTDIR) {
            e = errno;
            if ((e == ENOTEMPTY || e == EEXIST) && (flags & FREMOVE_RECURSIVE) &&
                remove_in_child(channel, dir_fd, name, path) == 0) {
                close(dir_fd);
                return;
            }
            if ((e == ENOTEMPTY || e == EEXIST) && (flags & FREMOVE_RECURSIVE))
                e = remove_tree(dir_fd, name, 0, &count);
        }
    }
    close(dir_fd);
    send_remove_result(channel, path, e, count);
}

/* FILE_RENAME: u32 flags (NOREPLACE), u16 source length, source, destination -> FILE_DONE. */
static void handle_file_rename(uint32_t channel, const unsigned char *p, uint32_t len)
{
    if (len < 6)
        return mark_malformed();
    uint32_t flags = get_u32(p);
    uint16_t slen = get_u16(p + 4);
    if ((uint32_t)6 + slen > len)
        return mark_malformed();
    char from[PATH_MAX], to[PATH_MAX], fparent[PATH_MAX], tparent[PATH_MAX];
    char fname[NAME_MAX + 1], tname[NAME_MAX + 1];
    if (!file_channel_ok(channel, "FILE_RENAME") || !take_path(channel, p + 6, slen, from) ||
        !take_path(channel, p + 6 + slen, len - 6 - slen, to))
        return;
    if (flags & ~FRENAME_NOREPLACE)
        return send_error(channel, EINVAL, "unknown FILE_RENAME flags 0x%x", flags);
    int e = split_path(from, fparent, fname);
    if (!e)
        e = split_path(to, tparent, tname);
    if (e)
        return send_error(channel, e, "rename %s to %s: not names that can be renamed", from, to);
    int ffd = open_dir(fparent, 0);
    if (ffd < 0)
        return send_path_error(channel, errno, "rename", from);
    int tfd = open_dir(tparent, 0);
    if (tfd < 0) {
        e = errno;
        close(ffd);
        return send_path_error(channel, e, "rename to", to);
    }
    int r = renameat2(ffd, fname, tfd, tname, flags & FRENAME_NOREPLACE ? RENAME_NOREPLACE : 0);
    e = errno;
    close(ffd);
    close(tfd);
    if (r < 0)
        return send_path_error(channel, e, "rename", from);
    send_file_done(channel, 0);
}

/* The connection is gone: its transfers end with it (unfinished writes leave nothing). */
static void drop_fileops(void)
{
    for (int i = 0; i < MAX_FILE_OPS; i++)
        if (fileops[i].used)
            free_fileop(&fileops[i]);
}

/* In a forked child (a keeper): let go of the descriptors, leave the files alone. */
static void close_fileop_fds(void)
{
    close_fd(&root_fd);
    for (int i = 0; i < MAX_FILE_OPS; i++) {
        if (fileops[i].used) {
            close_fd(&fileops[i].fd);
            close_fd(&fileops[i].dir_fd);
        }
    }
}


static void handle_frame(uint8_t type, uint32_t channel, const unsigned char *p, uint32_t len)
{
    switch (type) {
    case REQ_HELLO: return handle_hello(channel, p, len);
    case REQ_PROBE: return handle_probe(channel, len);
    case REQ_SPAWN: return handle_spawn(channel, p, len);
    case REQ_STDIN: return handle_stdin(channel, p, len);
    case REQ_STDIN_CLOSE: return handle_stdin_close(channel, len);
    case REQ_SIGNAL: return handle_signal(channel, p, len);
    case REQ_WRITE_FILE: return handle_write_file(channel, p, len);
    case REQ_KILL_ALL: return handle_kill_all(channel, len);
    case REQ_SHUTDOWN: return handle_shutdown(len);
    case REQ_CTX_START: return handle_ctx_start(channel, p, len);
    case REQ_CTX_EXEC: return handle_ctx_exec(channel, p, len);
    case REQ_CTX_STOP: return handle_ctx_stop(channel, len);
    case REQ_FILE_STAT: return handle_file_stat(channel, p, len);
    case REQ_FILE_LIST: return handle_file_list(channel, p, len);
    case REQ_FILE_READ: return handle_file_read(channel, p, len);
    case REQ_FILE_CREDIT: return handle_file_credit(channel, p, len);
    case REQ_FILE_WRITE: return handle_file_write(channel, p, len);
    case REQ_FILE_CHUNK: return handle_file_chunk(channel, p, len);
    case REQ_FILE_COMMIT: return handle_file_commit(channel, p, len);
    case REQ_FILE_CANCEL: return handle_file_cancel(channel, len);
    case REQ_FILE_MKDIR: return handle_file_mkdir(channel, p, len);
    case REQ_FILE_REMOVE: return handle_file_remove(channel, p, len);
    case REQ_FILE_RENAME: return handle_file_rename(channel, p, len);
    default: return send_error(channel, EINVAL, "unknown request type 0x%02x", type);
    }
}

static int rbuf_reserve(size_t need)
{
    if (rbuf_cap >= need)
        return 0;
    size_t cap = need < RBUF_MIN ? RBUF_MIN : need;
    unsigned char *nb = realloc(rbuf, cap);
    if (!nb)
        return -1;
    rbuf = nb;
    rbuf_cap = cap;
    return 0;
}

static void read_from_host(void)
{
    if (rbuf_reserve(RBUF_MIN) < 0)
        return mark_malformed();
    if (rbuf_len >= HEADER_SIZE) {
        /* Grow to the whole frame announced by the pending header (already validated). */
        if (rbuf_reserve(HEADER_SIZE + get_u32(rbuf)) < 0)
            return mark_malformed();
    }
    ssize_t n = recv(conn_fd, rbuf + rbuf_len, rbuf_cap - rbuf_len, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0)
        return mark_malformed(); /* EOF or error: the host is gone */
    rbuf_len += (size_t)n;

    size_t off = 0;
    while (!conn_failed && rbuf_len - off >= HEADER_SIZE) {
        uint32_t plen = get_u32(rbuf + off);
        if (plen > MAX_PAYLOAD)
            return mark_malformed();
        if (rbuf_len - off < HEADER_SIZE + plen)
            break;
        handle_frame(rbuf[off + 4], get_u32(rbuf + off + 5), rbuf + off + HEADER_SIZE, plen);
        off += HEADER_SIZE + plen;
    }
    if (conn_failed)
        return;
    memmove(rbuf, rbuf + off, rbuf_len - off);
    rbuf_len -= off;
    if (rbuf_len >= HEADER_SIZE && get_u32(rbuf) > MAX_PAYLOAD)
        return mark_malformed();
    if (rbuf_len == 0 && rbuf_cap > RBUF_MIN) {
        /* Do not keep a 16 MiB buffer around after one large WRITE_FILE. */
        free(rbuf);
        rbuf = NULL;
        rbuf_cap = 0;
    }
}

/* ------------------------------------------------------------- main loop */

enum { PF_OUT, PF_ERR, PF_IN, PF_EVT, PF_REMOVER };

/* Which process and stream each polled descriptor belongs to. */
struct poll_meta {
    int slot, kind, fd;
};

static void event_loop(void)
{
    static struct pollfd pf[3 + 4 * MAX_PROCS + MAX_FILE_OPS];
    static struct poll_meta meta[4 * MAX_PROCS + MAX_FILE_OPS];
    for (;;) {
        finish_reaped();
        enforce_timeouts();
        advance_calls();
        if (conn_failed)
            close_connection();

        int n = 0;
        pf[n++] = (struct pollfd){ .fd = LISTEN_FD, .events = POLLIN };
        pf[n++] = (struct pollfd){ .fd = sig_fd, .events = POLLIN };
        /* Flow control: while children's stdin is backed up, leave the host's frames in
         * the socket (a negative fd is skipped by poll). While a file read has credit,
         * wait for room in the socket to send its next chunk. */
        int host_in = conn_fd >= 0 && stdin_buffered < STDIN_HIGH_WATER;
        int host_out = conn_fd >= 0 && reads_waiting();
        short host_events = (short)((host_in ? POLLIN : 0) | (host_out ? POLLOUT : 0));
        int host = host_events ? conn_fd : -1;
        pf[n++] = (struct pollfd){ .fd = host, .events = host_events };
        int m = 0;
        for (int i = 0; i < MAX_PROCS; i++) {
            struct proc *p = &procs[i];
            if (!p->used)
                continue;
            int fds[4] = { p->out_fd, p->err_fd, p->in_off < p->in_len ? p->in_fd : -1, p->evt_fd };
            for (int k = 0; k < 4; k++) {
                if (fds[k] < 0)
                    continue;
                meta[m++] = (struct poll_meta){ i, k, fds[k] };
                pf[n++] = (struct pollfd){ .fd = fds[k], .events = k == PF_IN ? POLLOUT : POLLIN };
            }
        }
        for (int i = 0; i < MAX_FILE_OPS; i++) {
            if (fileops[i].used && fileops[i].kind == FOP_REMOVE) {
                meta[m++] = (struct poll_meta){ i, PF_REMOVER, fileops[i].fd };
                pf[n++] = (struct pollfd){ .fd = fileops[i].fd, .events = POLLIN };
            }
        }

        int ready = poll(pf, (nfds_t)n, next_timeout_ms());
        if (ready < 0)
            continue; /* EINTR */
        if (ready == 0)
            continue; /* a deadline passed */
        if (pf[1].revents)
            on_sigchld();
        for (int j = 0; j < m; j++) {
            if (!pf[3 + j].revents)
                continue;
            if (meta[j].kind == PF_REMOVER) {
                struct fileop *op = &fileops[meta[j].slot];
                if (op->used && op->kind == FOP_REMOVE && op->fd == meta[j].fd)
                    finish_remove(op);
                continue;
            }
            struct proc *p = &procs[meta[j].slot];
            /* The fd may have been closed since poll (EPIPE, a write to the host that
             * failed...): act only if it is still the same descriptor. */
            if (meta[j].kind == PF_OUT && p->out_fd == meta[j].fd)
                forward_output(p, &p->out_fd, EV_STDOUT);
            else if (meta[j].kind == PF_ERR && p->err_fd == meta[j].fd)
                forward_output(p, &p->err_fd, EV_STDERR);
            else if (meta[j].kind == PF_IN && p->in_fd == meta[j].fd)
                flush_stdin(p);
            else if (meta[j].kind == PF_EVT && p->evt_fd == meta[j].fd)
                read_kernel_events(p);
        }
        if (host >= 0 && (pf[2].revents & POLLOUT) && !conn_failed && conn_fd == host)
            pump_reads();
        if (host >= 0 && host_in && (pf[2].revents & ~POLLOUT) && !conn_failed && conn_fd == host)
            read_from_host();
        if (pf[0].revents & POLLIN) {
            if (conn_failed)
                close_connection();
            accept_connection();
        }
    }
}

static int run_supervisor(void)
{
    /* Sandbox processes share our uid: non-dumpable keeps them from ptracing us or
     * reading our memory through /proc. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    int accepting = 0;
    socklen_t alen = sizeof accepting;
    if (getsockopt(LISTEN_FD, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &alen) < 0 || !accepting) {
        fprintf(stderr, "corral-supervisor: fd 3 is not a listening socket "
                        "(start it through 'host-listen' or runc --preserve-fds 1)\n");
        return 2;
    }
    /* fd 3 never reaches a child; non-blocking so a connection aborted between poll
     * and accept cannot block the loop. */
    fcntl(LISTEN_FD, F_SETFD, FD_CLOEXEC);
    fcntl(LISTEN_FD, F_SETFL, O_NONBLOCK);
    if (close_range(LISTEN_FD + 1, ~0U, 0) < 0) {
        for (int fd = LISTEN_FD + 1; fd < 4096; fd++)
            close(fd);
    }
    int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (nul < 0) {
        fprintf(stderr, "corral-supervisor: open /dev/null: %s\n", strerror(errno));
        return 2;
    }
    for (int fd = 0; fd <= 2; fd++)
        if (nul != fd)
            dup2(nul, fd);
    if (nul > 2)
        close(nul);
    devnull_fd = open("/dev/null", O_RDONLY | O_CLOEXEC); /* stdin of children without a pipe */
    if (devnull_fd < 0)
        return 2;
    root_fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0)
        return 2;
    for (int i = 0; i < MAX_FILE_OPS; i++)
        fileops[i].fd = fileops[i].dir_fd = -1;

    /* On the host (tests) we are not PID 1: still collect orphans. */
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    /* A write past RLIMIT_FSIZE (the sandbox's file size limit, which binds us too) must
     * fail with EFBIG, not kill PID 1 and the sandbox with it. Children get SIG_DFL back. */
    signal(SIGXFSZ, SIG_IGN);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sig_fd < 0)
        return 2;
    for (int i = 0; i < MAX_PROCS; i++)
        reset_slot(&procs[i]);
    event_loop();
    return 0;
}

/* ------------------------------------------------------------ host-listen */

/*
 * SIGTERM to the shim means "stop the sandbox": SIGKILL every child of ours, which once
 * runc has returned is the container's init alone (PID 1 of the sandbox's PID namespace,
 * so the kernel then kills everything else in it). Our children cannot be reaped by
 * anyone else, so their pids are safe to signal; the caller only has to wait for us to
 * exit, and then has a stopped container to delete instead of a running one to poll.
 * Done in the handler itself, with async-signal-safe calls only (open, read, kill),
 * so a signal that lands just before wait() cannot be missed.
 */
static void shim_on_term(int sig)
{
    (void)sig;
    int saved = errno;
    char path[64] = "/proc/self/task/";
    size_t n = strlen(path);
    char digits[16];
    size_t d = 0;
    for (pid_t self = getpid(); self > 0 && d < sizeof digits; self /= 10)
        digits[d++] = (char)('0' + self % 10);
    while (d > 0 && n < sizeof path - 1)
        path[n++] = digits[--d];
    const char *tail = "/children";
    for (size_t i = 0; tail[i] && n < sizeof path - 1; i++)
        path[n++] = tail[i];
    path[n] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char buf[4096];
        ssize_t len = read(fd, buf, sizeof buf - 1);
        close(fd);
        long pid = 0;
        for (ssize_t i = 0; i < (len > 0 ? len : 0) + 1; i++) {
            char c = i < len ? buf[i] : ' ';
            if (c >= '0' && c <= '9') {
                pid = pid * 10 + (c - '0');
            } else {
                if (pid > 0)
                    kill((pid_t)pid, SIGKILL);
                pid = 0;
            }
        }
    }
    errno = saved;
}

/*
 * host-listen is the sandbox's shim on the host, like containerd-shim: it binds the
 * listening socket, starts `runc run --detach` with the socket at fd 3, and stays
 * behind as a child subreaper. When runc returns, the container's init has been
 * reparented to us: we report runc's exit status on stdout ("runc N\n"), close our
 * stdio, and reap until no child is left. So the container's init is reaped the moment
 * it dies, whatever the host's PID 1 does with orphans, and the caller (our parent)
 * learns that the sandbox is fully gone when we exit.
 *
 * A stop (SIGTERM, see shim_on_term) ends the same way: we exit once everything is
 * reaped, so our exit tells the caller that no process of the sandbox is left, and the
 * caller then removes the container's bookkeeping (runc's state, its cgroups).
 */
static int host_listen(int argc, char **argv)
{
    int at = 3;
    if (argc < at + 2 || strcmp(argv[at], "--") != 0) {
        fprintf(stderr, "usage: corral-supervisor host-listen SOCKET_PATH -- PROGRAM [ARGS...]\n");
        return 2;
    }
    char **program = argv + at + 1;
    const char *path = argv[2];
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (strlen(path) == 0 || strlen(path) >= sizeof sa.sun_path) {
        fprintf(stderr, "corral-supervisor: socket path must be 1 to %zu bytes: %s\n",
                sizeof sa.sun_path - 1, path);
        return 2;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "corral-supervisor: socket: %s\n", strerror(errno));
        return 1;
    }
    /* The socket is born 0600: no window in which another user could connect. */
    mode_t old = umask(0177);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    int e = errno;
    umask(old);
    if (rc < 0) {
        if (e == EADDRINUSE)
            fprintf(stderr, "corral-supervisor: %s already exists (a stale socket? remove it first)\n",
                    path);
        else
            fprintf(stderr, "corral-supervisor: bind %s: %s\n", path, strerror(e));
        return 1;
    }
    if (chmod(path, 0600) < 0 || listen(fd, 16) < 0) {
        fprintf(stderr, "corral-supervisor: %s: %s\n", path, strerror(errno));
        unlink(path);
        return 1;
    }
    /* Orphans below us (the container's init, once runc exits) become our children. */
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    /* A sandbox lives no longer than the process that owns it: if the caller dies (a
     * crash, SIGKILL) without destroying it, its death is our SIGTERM, which stops the
     * sandbox (once runc has returned; until then the signal waits, blocked below). The
     * caller's gc later removes the mounts and layer it left. A parent that died before
     * the prctl took effect is caught by the getppid check. */
    pid_t owner = getppid();
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
    /* The caller's terminal signals (Ctrl-C) are for the caller, which then destroys the
     * sandbox; the shim must outlive it long enough to reap. */
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    /* Blocked until runc has returned: a stop before the container exists is not ours to
     * carry out (the caller then deletes through runc). exec resets it for runc. */
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, NULL);
    struct sigaction on_term;
    memset(&on_term, 0, sizeof on_term);
    on_term.sa_handler = shim_on_term;
    sigemptyset(&on_term.sa_mask);
    sigaction(SIGTERM, &on_term, NULL);
    if (getppid() != owner)
        kill(getpid(), SIGTERM);
    pid_t runc = fork();
    if (runc < 0) {
        fprintf(stderr, "corral-supervisor: fork: %s\n", strerror(errno));
        unlink(path);
        return 1;
    }
    if (runc == 0) {
        signal(SIGINT, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        sigprocmask(SIG_UNBLOCK, &term, NULL);
        /* dup2 leaves the copy at fd 3 inheritable (the original stays close-on-exec);
         * when the socket already is fd 3, dup2 does nothing, so clear the flag. */
        if (fd == LISTEN_FD ? fcntl(fd, F_SETFD, 0) < 0 : dup2(fd, LISTEN_FD) < 0) {
            fprintf(stderr, "corral-supervisor: dup2: %s\n", strerror(errno));
            _exit(127);
        }
        /* runc's stdout is not our report channel: the container must not hold it. */
        int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (nul >= 0)
            dup2(nul, STDOUT_FILENO);
        execvp(program[0], program);
        fprintf(stderr, "corral-supervisor: exec %s: %s\n", program[0], strerror(errno));
        _exit(127);
    }
    close(fd);
    int status = 0;
    for (;;) {
        pid_t pid = waitpid(runc, &status, 0);
        if (pid == runc)
            break;
        if (pid < 0 && errno != EINTR) {
            status = 127 << 8;
            break;
        }
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("runc %d\n", code);
    fflush(stdout);
    /* Our stdio belongs to the caller: release it, so its pipes see end of file. */
    int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (nul >= 0) {
        dup2(nul, STDIN_FILENO);
        dup2(nul, STDOUT_FILENO);
        dup2(nul, STDERR_FILENO);
        close(nul);
    }
    if (code != 0)
        unlink(path);
    /* A caller that stopped reading must not kill us with SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    /* From now on a SIGTERM stops the sandbox (see shim_on_term). */
    sigprocmask(SIG_UNBLOCK, &term, NULL);
    /* Reap the container's init (and anything else runc left) until none is left. */
    for (;;) {
        pid_t pid = wait(NULL);
        if (pid < 0 && errno == ECHILD)
            break;
    }
    return code;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf("corral-supervisor %s (protocol %u)\n", CORRAL_VERSION, PROTOCOL_VERSION);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "host-listen") == 0)
        return host_listen(argc, argv);
    if (argc >= 2 && (strcmp(argv[1], "layer-up") == 0 || strcmp(argv[1], "layer-down") == 0))
        return layer_main(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "layer-serve") == 0)
        return layer_serve(argc, argv);
    if (argc != 1) {
        fprintf(stderr, "usage: corral-supervisor [--version | host-listen SOCKET_PATH -- PROGRAM ARGS...\n"
                        "                          | layer-up|layer-down WITHIN STEP... | layer-serve ROOT]\n"
                        "(without arguments: serve the listening socket at fd 3)\n");
        return 2;
    }
    return run_supervisor();
}
