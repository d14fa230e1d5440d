/*
 * corral-supervisor: PID 1 of every Corral sandbox.
 *
 * The host talks to it over the listening unix socket that runc hands in as fd 3
 * (see docs/protocol.md). It accepts a closed set of typed requests: spawn a
 * process, feed its stdin, signal it, write a file, probe the sandbox, kill
 * everything. It forwards output, reaps every child and enforces timeouts.
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
 * sandbox's shim: a subreaper that reaps the container's init (see host_listen).
 *
 * Build: gcc -std=c11 -static -O2 -Wall -Wextra -Werror (scripts/build-supervisor.mjs).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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
    EV_HELLO_OK = 0x81, EV_PROBE_REPORT = 0x82, EV_STARTED = 0x90, EV_OK = 0x91,
    EV_STDOUT = 0x92, EV_STDERR = 0x93, EV_EXIT = 0x94,
    EV_CTX_MSG = 0x95, EV_CTX_DONE = 0x96, EV_CTX_EXIT = 0x97, EV_ERROR = 0xA0,
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
    char path[300], buf[1024];
    while ((e = readdir(d)) != NULL && n < SWEEP_MAX) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t len = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (len <= 0)
            continue;
        buf[len] = '\0';
        /* The command name may hold spaces and parentheses: fields resume after the last ')'. */
        char *rp = strrchr(buf, ')');
        if (!rp)
            continue;
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
            continue;
        pids[n] = (pid_t)strtol(e->d_name, NULL, 10);
        ppids[n] = (pid_t)ppid;
        starts[n] = start;
        /* A zombie is already dead (its parent has yet to wait for it): it links the
         * ancestry but is neither killed nor counted as a survivor. */
        zombie[n] = (char)(*f == 'Z' || *f == 'X');
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

static void forward_output(struct proc *p, int *fd, uint8_t type)
{
    ssize_t n = read(*fd, iobuf, CHUNK);
    if (n > 0) {
        if (p->attached)
            send_simple(type, p->channel, iobuf, (size_t)n);
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
        if (p->attached)
            send_simple(type, p->channel, iobuf, (size_t)n);
    }
    close_fd(fd);
}

static void encode_exit(unsigned char ev[40], const struct proc *p)
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
        if (p->attached)
            send_simple(type, p->channel, iobuf, (size_t)n);
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
            unsigned char ev[40];
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
    /* Non-dumpable /proc files belong to root, which would make our own
     * oom_score_adj unwritable for a non-root sandbox user. This process is about to
     * exec user code; the supervisor memory it still holds has nothing that other
     * processes of the same uid cannot already read through /proc. */
    prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
    int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (oom >= 0) {
        ssize_t ignored = write(oom, "1000", 4); /* the OOM killer picks user code first */
        (void)ignored;
        close(oom);
    }
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

    status_fd = fcntl(status_fd, F_DUPFD_CLOEXEC, 16);
    if (status_fd < 0)
        _exit(127);
    for (int i = 0; i < fds.count; i++)
        if ((fds.fd[i] = fcntl(fds.fd[i], F_DUPFD_CLOEXEC, 16)) < 0)
            report_child_failure(status_fd, STAGE_SETUP, errno);
    for (int i = 0; i < fds.count; i++)
        if (dup2(fds.fd[i], i) < 0)
            report_child_failure(status_fd, STAGE_SETUP, errno);
    if (chdir(cwd) < 0)
        report_child_failure(status_fd, STAGE_CHDIR, errno);
    /* Everything of ours is already O_CLOEXEC; this also covers anything we missed.
     * The status pipe must stay open until exec, hence CLOEXEC, not close. */
    if (close_range((unsigned)fds.count, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
        for (int fd = fds.count; fd < 4096; fd++)
            if (fd != status_fd)
                fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    report_child_failure(status_fd, STAGE_EXEC, exec_lookup(argv[0], argv, envp, path));
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
    struct exec_args a = { 0 };
    int perr = parse_exec_args(p + 12, p + len, argc, envc, &a);
    if (perr < 0)
        return mark_malformed();

    if (channel == 0 || find_channel(channel) || (flags & ~SPAWN_STDIN_PIPE) || perr) {
        free_exec_args(&a);
        if (channel == 0)
            return send_error(channel, EINVAL, "SPAWN needs a non-zero channel");
        if (find_channel(channel))
            return send_error(channel, EBUSY, "channel %u is in use", channel);
        if (flags & ~SPAWN_STDIN_PIPE)
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
    ssize_t n;
    do
        n = read(st[0], msg, sizeof msg);
    while (n < 0 && errno == EINTR);
    close_fd(&st[0]);
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
    char path[300], buf[512];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t len = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (len <= 0)
            continue;
        buf[len] = '\0';
        char *rp = strrchr(buf, ')');
        if (!rp || strlen(rp) < 4)
            continue;
        long ppid = strtol(strchr(rp + 2, ' ') ? strchr(rp + 2, ' ') + 1 : "", NULL, 10);
        if (ppid == self && kill((pid_t)strtol(e->d_name, NULL, 10), SIGKILL) == 0)
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
    do
        n = read(st[0], msg, sizeof msg);
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof msg && msg[0] == STAGE_PID) {
        do
            m = read(st[0], fail, sizeof fail);
        while (m < 0 && errno == EINTR);
    }
    close_fd(&st[0]);
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

enum { PF_OUT, PF_ERR, PF_IN, PF_EVT };

/* Which process and stream each polled descriptor belongs to. */
struct poll_meta {
    int slot, kind, fd;
};

static void event_loop(void)
{
    static struct pollfd pf[3 + 4 * MAX_PROCS];
    static struct poll_meta meta[4 * MAX_PROCS];
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
         * the socket (a negative fd is skipped by poll). */
        int host = conn_fd >= 0 && stdin_buffered < STDIN_HIGH_WATER ? conn_fd : -1;
        pf[n++] = (struct pollfd){ .fd = host, .events = POLLIN };
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
        if (host >= 0 && pf[2].revents && !conn_failed && conn_fd == host)
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

    /* On the host (tests) we are not PID 1: still collect orphans. */
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
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
 * exit, and `runc delete` then finds a stopped container instead of polling a running
 * one. Done in the handler itself, with async-signal-safe calls only (open, read, kill),
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
 */
static int host_listen(int argc, char **argv)
{
    if (argc < 5 || strcmp(argv[3], "--") != 0) {
        fprintf(stderr, "usage: corral-supervisor host-listen SOCKET_PATH -- PROGRAM [ARGS...]\n");
        return 2;
    }
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
        execvp(argv[4], argv + 4);
        fprintf(stderr, "corral-supervisor: exec %s: %s\n", argv[4], strerror(errno));
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
    if (argc != 1) {
        fprintf(stderr, "usage: corral-supervisor [--version | host-listen SOCKET_PATH -- PROGRAM ARGS...]\n"
                        "(without arguments: serve the listening socket at fd 3)\n");
        return 2;
    }
    return run_supervisor();
}
