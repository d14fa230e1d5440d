/**
 * The sandbox's seccomp profile: an allowlist. Whatever is not listed here is refused
 * with EPERM, so syscalls the kernel gains later are refused until someone reads them
 * and adds them on purpose.
 *
 * How the list was chosen (x86_64 only):
 *  - everything an ordinary program needs: files, memory, signals, time, threads,
 *    processes, pipes, sockets, SysV/POSIX IPC, scheduling of its own threads;
 *  - the newer calls glibc tries first and falls back from only on ENOSYS (an EPERM
 *    would break it): faccessat2, close_range, rseq, statx, openat2, epoll_pwait2,
 *    pidfd_open, clone3 (which answers ENOSYS on purpose, so glibc uses clone, whose
 *    flags seccomp can inspect: clone3 passes them in memory, out of seccomp's reach);
 *  - nothing that Docker allows only together with a capability the sandbox does not
 *    have (mount, chroot, sethostname, clock setting, module loading, bpf...);
 *  - refused even though Docker allows them: namespaces (clone with CLONE_NEW*, unshare,
 *    setns: the kernel's user-namespace code is a large attack surface), io_uring (its
 *    operations bypass seccomp entirely), AF_ALG and AF_VSOCK sockets (a history of
 *    kernel bugs; no use in a sandbox), ptrace and process_vm_* (cross-process memory
 *    access), userfaultfd (a classic exploit helper), and every non-native architecture:
 *    only SCMP_ARCH_X86_64 is listed, so i386 (int 0x80) and x32 syscall numbers hit the
 *    filter's bad-architecture action.
 *
 * runc answers ENOSYS, rather than the default action, for syscall numbers above the
 * highest one this profile names: those are newer than the profile, and ENOSYS is what
 * lets a program fall back to an older call.
 */

export interface OciSeccompArg {
  index: number;
  value: number;
  valueTwo?: number;
  op:
    | "SCMP_CMP_EQ"
    | "SCMP_CMP_NE"
    | "SCMP_CMP_LT"
    | "SCMP_CMP_LE"
    | "SCMP_CMP_GE"
    | "SCMP_CMP_GT"
    | "SCMP_CMP_MASKED_EQ";
}

export interface OciSeccompRule {
  names: string[];
  action: "SCMP_ACT_ALLOW" | "SCMP_ACT_ERRNO";
  errnoRet?: number;
  args?: OciSeccompArg[];
}

export interface OciSeccomp {
  defaultAction: "SCMP_ACT_ERRNO";
  defaultErrnoRet: number;
  architectures: string[];
  syscalls: OciSeccompRule[];
}

export const EPERM = 1;
export const ENOSYS = 38;

/** fcntl's F_SETLEASE command (linux/fcntl.h: F_LINUX_SPECIFIC_BASE + 0). */
export const F_SETLEASE = 1024;

/** clone flags that create a namespace: CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET. */
export const CLONE_NEW_MASK = 0x7e020000;
/** Socket families 0..37 are allowed; 38 (AF_ALG), 40 (AF_VSOCK) and everything newer are not. */
export const AF_ALG = 38;
export const AF_VSOCK = 40;
/** personality(2) values a program may set: Linux, with or without ADDR_NO_RANDOMIZE/READ_IMPLIES_EXEC... as Docker. */
export const PERSONALITY_ALLOWED = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff] as const;

/** Allowed unconditionally. Sorted; a unit test keeps it sorted and disjoint from REFUSED_SYSCALLS. */
export const ALLOWED_SYSCALLS: readonly string[] = [
  "accept",
  "accept4",
  "access",
  "alarm",
  "arch_prctl",
  "bind",
  "brk",
  "capget",
  "capset",
  "chdir",
  "chmod",
  "chown",
  "clock_getres",
  "clock_gettime",
  "clock_nanosleep",
  "close",
  "close_range",
  "connect",
  "copy_file_range",
  "creat",
  "dup",
  "dup2",
  "dup3",
  "epoll_create",
  "epoll_create1",
  "epoll_ctl",
  "epoll_pwait",
  "epoll_pwait2",
  "epoll_wait",
  "eventfd",
  "eventfd2",
  "execve",
  "execveat",
  "exit",
  "exit_group",
  "faccessat",
  "faccessat2",
  "fadvise64",
  "fallocate",
  "fchdir",
  "fchmod",
  "fchmodat",
  "fchown",
  "fchownat",
  "fdatasync",
  "fgetxattr",
  "flistxattr",
  "flock",
  "fork",
  "fremovexattr",
  "fsetxattr",
  "fstat",
  "fstatfs",
  "fsync",
  "ftruncate",
  "futex",
  "futex_waitv",
  "futimesat",
  "get_robust_list",
  "get_thread_area",
  "getcpu",
  "getcwd",
  "getdents",
  "getdents64",
  "getegid",
  "geteuid",
  "getgid",
  "getgroups",
  "getitimer",
  "getpeername",
  "getpgid",
  "getpgrp",
  "getpid",
  "getppid",
  "getpriority",
  "getrandom",
  "getresgid",
  "getresuid",
  "getrlimit",
  "getrusage",
  "getsid",
  "getsockname",
  "getsockopt",
  "gettid",
  "gettimeofday",
  "getuid",
  "getxattr",
  "inotify_add_watch",
  "inotify_init",
  "inotify_init1",
  "inotify_rm_watch",
  "io_cancel",
  "io_destroy",
  "io_getevents",
  "io_pgetevents",
  "io_setup",
  "io_submit",
  "ioctl",
  "ioprio_get",
  "ioprio_set",
  "kill",
  "lchown",
  "lgetxattr",
  "link",
  "linkat",
  "listen",
  "listxattr",
  "llistxattr",
  "lremovexattr",
  "lseek",
  "lsetxattr",
  "lstat",
  "madvise",
  "membarrier",
  "memfd_create",
  "mincore",
  "mkdir",
  "mkdirat",
  "mknod",
  "mknodat",
  "mlock",
  "mlock2",
  "mlockall",
  "mmap",
  "mprotect",
  "mq_getsetattr",
  "mq_notify",
  "mq_open",
  "mq_timedreceive",
  "mq_timedsend",
  "mq_unlink",
  "mremap",
  "msgctl",
  "msgget",
  "msgrcv",
  "msgsnd",
  "msync",
  "munlock",
  "munlockall",
  "munmap",
  "nanosleep",
  "newfstatat",
  "open",
  "openat",
  "openat2",
  "pause",
  "pidfd_open",
  "pidfd_send_signal",
  "pipe",
  "pipe2",
  "pkey_alloc",
  "pkey_free",
  "pkey_mprotect",
  "poll",
  "ppoll",
  "prctl",
  "pread64",
  "preadv",
  "preadv2",
  "prlimit64",
  "pselect6",
  "pwrite64",
  "pwritev",
  "pwritev2",
  "read",
  "readahead",
  "readlink",
  "readlinkat",
  "readv",
  "recvfrom",
  "recvmmsg",
  "recvmsg",
  "remap_file_pages",
  "removexattr",
  "rename",
  "renameat",
  "renameat2",
  "restart_syscall",
  "rmdir",
  "rseq",
  "rt_sigaction",
  "rt_sigpending",
  "rt_sigprocmask",
  "rt_sigqueueinfo",
  "rt_sigreturn",
  "rt_sigsuspend",
  "rt_sigtimedwait",
  "rt_tgsigqueueinfo",
  "sched_get_priority_max",
  "sched_get_priority_min",
  "sched_getaffinity",
  "sched_getattr",
  "sched_getparam",
  "sched_getscheduler",
  "sched_rr_get_interval",
  "sched_setaffinity",
  "sched_setattr",
  "sched_setparam",
  "sched_setscheduler",
  "sched_yield",
  "seccomp",
  "select",
  "semctl",
  "semget",
  "semop",
  "semtimedop",
  "sendfile",
  "sendmmsg",
  "sendmsg",
  "sendto",
  "set_robust_list",
  "set_thread_area",
  "set_tid_address",
  "setfsgid",
  "setfsuid",
  "setgid",
  "setgroups",
  "setitimer",
  "setpgid",
  "setpriority",
  "setregid",
  "setresgid",
  "setresuid",
  "setreuid",
  "setrlimit",
  "setsid",
  "setsockopt",
  "setuid",
  "setxattr",
  "shmat",
  "shmctl",
  "shmdt",
  "shmget",
  "shutdown",
  "sigaltstack",
  "signalfd",
  "signalfd4",
  "socketpair",
  "splice",
  "stat",
  "statfs",
  "statx",
  "symlink",
  "symlinkat",
  "sync",
  "sync_file_range",
  "syncfs",
  "sysinfo",
  "tee",
  "tgkill",
  "time",
  "timer_create",
  "timer_delete",
  "timer_getoverrun",
  "timer_gettime",
  "timer_settime",
  "timerfd_create",
  "timerfd_gettime",
  "timerfd_settime",
  "times",
  "tkill",
  "truncate",
  "umask",
  "uname",
  "unlink",
  "unlinkat",
  "utime",
  "utimensat",
  "utimes",
  "vfork",
  "vmsplice",
  "wait4",
  "waitid",
  "write",
  "writev",
];

/**
 * Syscalls that are refused and worth naming: the default action refuses them anyway;
 * this list documents the decision, feeds `corral doctor`, and the tests assert that
 * none of them is ever allowed.
 */
export const REFUSED_SYSCALLS: readonly string[] = [
  // namespaces and mounts
  "unshare",
  "setns",
  "mount",
  "umount2",
  "pivot_root",
  "chroot",
  "mount_setattr",
  "fsopen",
  "fsconfig",
  "fsmount",
  "fspick",
  "move_mount",
  "open_tree",
  // io_uring: its operations are not seen by seccomp
  "io_uring_setup",
  "io_uring_enter",
  "io_uring_register",
  // the kernel itself
  "bpf",
  "perf_event_open",
  "init_module",
  "finit_module",
  "delete_module",
  "kexec_load",
  "kexec_file_load",
  "reboot",
  "swapon",
  "swapoff",
  "acct",
  "quotactl",
  "quotactl_fd",
  "syslog",
  "sysfs",
  "_sysctl",
  "ustat",
  "uselib",
  "lookup_dcookie",
  "nfsservctl",
  "vhangup",
  "iopl",
  "ioperm",
  "modify_ldt",
  // the host's identity and clocks
  "sethostname",
  "setdomainname",
  "settimeofday",
  "clock_settime",
  "clock_adjtime",
  "adjtimex",
  // keyrings, other processes' memory, exploit helpers
  "add_key",
  "request_key",
  "keyctl",
  "ptrace",
  "process_vm_readv",
  "process_vm_writev",
  "kcmp",
  "pidfd_getfd",
  "process_madvise",
  "userfaultfd",
  "open_by_handle_at",
  "name_to_handle_at",
  "fanotify_init",
  "fanotify_mark",
  // NUMA policy: Docker allows these only with CAP_SYS_NICE
  "mbind",
  "set_mempolicy",
  "get_mempolicy",
  "migrate_pages",
  "move_pages",
];

/** The profile: pure data, identical for every sandbox. */
export function buildSeccompProfile(): OciSeccomp {
  return {
    defaultAction: "SCMP_ACT_ERRNO",
    defaultErrnoRet: EPERM,
    architectures: ["SCMP_ARCH_X86_64"],
    syscalls: [
      { names: [...ALLOWED_SYSCALLS], action: "SCMP_ACT_ALLOW" },
      // fork and threads, but no namespace: every CLONE_NEW* bit must be clear.
      {
        names: ["clone"],
        action: "SCMP_ACT_ALLOW",
        args: [{ index: 0, value: CLONE_NEW_MASK, valueTwo: 0, op: "SCMP_CMP_MASKED_EQ" }],
      },
      // Every fcntl but F_SETLEASE: a lease on a file another process execs (a program of
      // the image, owned by the sandbox's root) blocks that execve for as long as the
      // holder likes, which let code stall the supervisor and tamper with a child before
      // exec. Ordinary programs take no leases (Samba and NFS servers do).
      {
        names: ["fcntl"],
        action: "SCMP_ACT_ALLOW",
        args: [{ index: 1, value: F_SETLEASE, op: "SCMP_CMP_NE" }],
      },
      // clone3's flags live in memory seccomp cannot read: ENOSYS makes glibc use clone.
      { names: ["clone3"], action: "SCMP_ACT_ERRNO", errnoRet: ENOSYS },
      // Families below AF_ALG only (unix, inet, inet6, netlink...): AF_ALG, AF_VSOCK and
      // every newer family are refused.
      {
        names: ["socket"],
        action: "SCMP_ACT_ALLOW",
        args: [{ index: 0, value: AF_ALG, op: "SCMP_CMP_LT" }],
      },
      ...PERSONALITY_ALLOWED.map(
        (value): OciSeccompRule => ({
          names: ["personality"],
          action: "SCMP_ACT_ALLOW",
          args: [{ index: 0, value, op: "SCMP_CMP_EQ" }],
        }),
      ),
    ],
  };
}
