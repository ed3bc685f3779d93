//! Seccomp profiles of CRI containers: berth's built-in default profile (the
//! allow-list containerd and Docker ship: everything a normal program needs,
//! `EPERM` for the rest, and the privileged syscalls only for a container
//! whose bounding set holds the capability that guards them) and loading a
//! node-local profile (`Localhost`) from a JSON file.
//!
//! Profiles are OCI `linux.seccomp` objects (`defaultAction`, `architectures`,
//! `syscalls[{names, action, args}]`), as runc reads them.

use std::path::Path;

use serde_json::{json, Value};

/// Syscalls every container may make, whatever its capabilities.
/// Names the running kernel or libseccomp does not know are skipped by runc.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
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
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
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
    "_newselect",
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
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
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
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
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
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
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
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls allowed only when the bounding set holds the capability.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The namespace flags a `clone` without CAP_SYS_ADMIN may not pass:
/// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET.
const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The seccomp architectures of this build's target (the native one and
/// the compat ABIs the kernel runs on it).
fn architectures() -> Vec<&'static str> {
    if cfg!(target_arch = "x86_64") {
        vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        vec!["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"]
    } else if cfg!(target_arch = "x86") {
        vec!["SCMP_ARCH_X86"]
    } else if cfg!(target_arch = "s390x") {
        vec!["SCMP_ARCH_S390", "SCMP_ARCH_S390X"]
    } else if cfg!(target_arch = "riscv64") {
        vec!["SCMP_ARCH_RISCV64"]
    } else if cfg!(target_arch = "powerpc64") {
        vec!["SCMP_ARCH_PPC64LE"]
    } else {
        vec![]
    }
}

/// Architecture-specific syscalls every container may make.
fn arch_syscalls() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["arch_prctl", "modify_ldt"]
    } else if cfg!(target_arch = "x86") {
        &["modify_ldt"]
    } else if cfg!(any(target_arch = "aarch64", target_arch = "arm")) {
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ]
    } else if cfg!(target_arch = "s390x") {
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ]
    } else if cfg!(target_arch = "riscv64") {
        &["riscv_flush_icache"]
    } else if cfg!(target_arch = "powerpc64") {
        &["sync_file_range2", "swapcontext"]
    } else {
        &[]
    }
}

fn allow(names: &[&str]) -> Value {
    json!({ "names": names, "action": "SCMP_ACT_ALLOW" })
}

/// berth's default profile (CRI `RuntimeDefault`) for a container whose
/// bounding capability set is `bounding` (names with the `CAP_` prefix).
pub fn default_profile(bounding: &[String]) -> Value {
    let has = |c: &str| bounding.iter().any(|b| b == c);
    let mut syscalls = vec![allow(ALLOWED)];
    // personality(2) only with the harmless personas: PER_LINUX,
    // UNAME26, PER_LINUX32, UNAME26|PER_LINUX32, and the query 0xffffffff.
    for persona in [0x0u64, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(json!({
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": persona, "op": "SCMP_CMP_EQ" }],
        }));
    }
    let arch = arch_syscalls();
    if !arch.is_empty() {
        syscalls.push(allow(arch));
    }
    for (cap, names) in BY_CAPABILITY {
        if has(cap) {
            syscalls.push(allow(names));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        // clone(2) without namespace flags (s390 swaps the first two args).
        let index = if cfg!(target_arch = "s390x") { 1 } else { 0 };
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{
                "index": index,
                "value": CLONE_NAMESPACE_FLAGS,
                "valueTwo": 0,
                "op": "SCMP_CMP_MASKED_EQ",
            }],
        }));
        // clone3's flags live in a struct seccomp cannot read: answer ENOSYS
        // so that libcs fall back to clone(2), which the rule above checks.
        syscalls.push(json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": architectures(),
        "syscalls": syscalls,
    })
}

/// Reads a node-local seccomp profile (OCI `linux.seccomp` JSON) and checks
/// its shape: an object with a `defaultAction`, optional `architectures` (a
/// list of strings) and `syscalls` (objects with `names` and `action`).
pub fn load_profile(path: &Path) -> Result<Value, String> {
    if !path.is_absolute() {
        return Err(format!(
            "seccomp profile path {} is not absolute",
            path.display()
        ));
    }
    let body = read_profile_file(path)
        .map_err(|e| format!("cannot read seccomp profile {}: {e}", path.display()))?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("seccomp profile {} is not valid JSON: {e}", path.display()))?;
    validate_profile(&v).map_err(|e| format!("seccomp profile {}: {e}", path.display()))?;
    Ok(v)
}

/// Largest localhost profile read (Docker's default profile is ~20 KiB).
const MAX_PROFILE_BYTES: u64 = 4 << 20;

/// Reads a profile file: only a regular file, at most [`MAX_PROFILE_BYTES`].
/// The path comes from the CRI request: opened without blocking (a FIFO
/// would wait for a writer forever) and never read from a device
/// (`/dev/zero` would grow the buffer until berthd is OOM-killed).
fn read_profile_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let md = file.metadata()?;
    if !md.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if md.len() > MAX_PROFILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {MAX_PROFILE_BYTES} bytes"),
        ));
    }
    let mut body = Vec::with_capacity(md.len() as usize);
    file.take(MAX_PROFILE_BYTES + 1).read_to_end(&mut body)?;
    if body.len() as u64 > MAX_PROFILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {MAX_PROFILE_BYTES} bytes"),
        ));
    }
    Ok(body)
}

fn validate_profile(v: &Value) -> Result<(), String> {
    let obj = v.as_object().ok_or("not a JSON object")?;
    match obj.get("defaultAction").and_then(Value::as_str) {
        Some(a) if a.starts_with("SCMP_ACT_") => {}
        Some(a) => return Err(format!("unknown defaultAction {a:?}")),
        None => return Err("no defaultAction".into()),
    }
    if let Some(archs) = obj.get("architectures") {
        let ok = archs
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string));
        if !ok {
            return Err("architectures is not a list of strings".into());
        }
    }
    if let Some(calls) = obj.get("syscalls") {
        let calls = calls.as_array().ok_or("syscalls is not a list")?;
        for (i, c) in calls.iter().enumerate() {
            let names_ok = c
                .get("names")
                .and_then(Value::as_array)
                .is_some_and(|n| n.iter().all(Value::is_string));
            let action_ok = c
                .get("action")
                .and_then(Value::as_str)
                .is_some_and(|a| a.starts_with("SCMP_ACT_"));
            if !names_ok || !action_ok {
                return Err(format!(
                    "syscalls[{i}] needs names (a list of strings) and an SCMP_ACT_* action"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_of(p: &Value) -> Vec<String> {
        p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(|r| r["names"].as_array().unwrap().clone())
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn default_profile_shape() {
        let p = default_profile(&["CAP_CHOWN".into(), "CAP_SYS_CHROOT".into()]);
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                p["architectures"],
                json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
            );
            assert!(names_of(&p).contains(&"arch_prctl".to_string()));
        }
        let names = names_of(&p);
        for n in ["read", "execve", "exit_group", "chroot"] {
            assert!(names.contains(&n.to_string()), "{n}");
        }
        for n in ["mount", "unshare", "setns", "reboot", "bpf", "kexec_load"] {
            assert!(!names.contains(&n.to_string()), "{n}");
        }
        // clone is allowed only without namespace flags; clone3 says ENOSYS.
        let rules = p["syscalls"].as_array().unwrap();
        let clone = rules
            .iter()
            .find(|r| r["names"] == json!(["clone"]))
            .unwrap();
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], 0x7E02_0000u64);
        let clone3 = rules
            .iter()
            .find(|r| r["names"] == json!(["clone3"]))
            .unwrap();
        assert_eq!(clone3["errnoRet"], 38);
        assert_eq!(
            rules
                .iter()
                .filter(|r| r["names"] == json!(["personality"]))
                .count(),
            5
        );
    }

    #[test]
    fn capabilities_open_their_syscalls() {
        let p = default_profile(&["CAP_SYS_ADMIN".into(), "CAP_SYS_PTRACE".into()]);
        let names = names_of(&p);
        for n in ["mount", "unshare", "setns", "clone", "clone3", "kcmp"] {
            assert!(names.contains(&n.to_string()), "{n}");
        }
        let rules = p["syscalls"].as_array().unwrap();
        assert!(!rules.iter().any(|r| r["action"] == "SCMP_ACT_ERRNO"));
        assert!(!names.contains(&"chroot".to_string()));
    }

    #[test]
    fn localhost_profiles_load_or_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(
            &good,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        assert_eq!(
            load_profile(&good).unwrap()["defaultAction"],
            "SCMP_ACT_ALLOW"
        );

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        assert!(load_profile(&bad).unwrap_err().contains("not valid JSON"));
        std::fs::write(&bad, r#"{"syscalls":[]}"#).unwrap();
        assert!(load_profile(&bad).unwrap_err().contains("defaultAction"));
        std::fs::write(
            &bad,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":"x"}]}"#,
        )
        .unwrap();
        assert!(load_profile(&bad).unwrap_err().contains("syscalls[0]"));
        let missing = dir.path().join("missing.json");
        assert!(load_profile(&missing).unwrap_err().contains("cannot read"));
        assert!(load_profile(Path::new("rel.json"))
            .unwrap_err()
            .contains("not absolute"));
    }

    /// A profile path naming a FIFO, a device or a huge file fails at once
    /// instead of blocking on the FIFO or reading /dev/zero until OOM.
    #[test]
    fn localhost_profiles_are_regular_bounded_files() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(load_profile(&fifo)
            .unwrap_err()
            .contains("not a regular file"));
        assert!(load_profile(Path::new("/dev/zero"))
            .unwrap_err()
            .contains("not a regular file"));
        let big = dir.path().join("big.json");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_PROFILE_BYTES + 1).unwrap();
        assert!(load_profile(&big).unwrap_err().contains("larger than"));
        assert!(load_profile(dir.path()).is_err());
    }
}
