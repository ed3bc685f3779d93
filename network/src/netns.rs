//! Named network namespaces, pinned by bind-mounting a thread's nsfs file onto
//! a file under a directory (as `ip netns add` does), without shelling out.
//!
//! Everything that changes a thread's namespace runs on a dedicated OS thread
//! that exits afterwards, so no pooled thread (tokio's or anyone's) is ever
//! left in a pod's namespace.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("invalid network namespace name {0:?}")]
    InvalidName(String),
    #[error("network namespace {} already exists", .0.display())]
    Exists(PathBuf),
    #[error("network namespace {}: {op}", path.display())]
    Sys {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {}: the namespace thread panicked", .0.display())]
    ThreadPanicked(PathBuf),
}

/// How pinning a namespace failed. The pinning helpers below are shared with
/// [`crate::podns`] (a pod's IPC and UTS namespaces are pinned the same way), and
/// each caller turns this into its own error type.
#[derive(Debug)]
pub(crate) enum PinError {
    Sys {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    Exists(PathBuf),
    ThreadPanicked(PathBuf),
}

impl From<PinError> for NetnsError {
    fn from(e: PinError) -> NetnsError {
        match e {
            PinError::Sys { path, op, source } => NetnsError::Sys { path, op, source },
            PinError::Exists(p) => NetnsError::Exists(p),
            PinError::ThreadPanicked(p) => NetnsError::ThreadPanicked(p),
        }
    }
}

pub(crate) fn sys(path: &Path, op: &'static str) -> impl FnOnce(Errno) -> PinError {
    let path = path.to_path_buf();
    move |e| PinError::Sys {
        path,
        op,
        source: std::io::Error::from(e),
    }
}

pub(crate) fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> PinError {
    let path = path.to_path_buf();
    move |source| PinError::Sys { path, op, source }
}

/// A pinned network namespace: its path is what CNI_NETNS and the OCI spec get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    /// A handle on an existing pinned namespace (e.g. from a persisted record).
    pub fn from_path(path: impl Into<PathBuf>) -> NetNs {
        NetNs { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the pin file still exists.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Creates a new network namespace pinned at `<dir>/<name>`.
    pub async fn create(dir: &Path, name: &str) -> Result<NetNs, NetnsError> {
        let dir = dir.to_path_buf();
        let name = name.to_string();
        blocking(move || create_blocking(&dir, &name)).await?
    }

    /// Unmounts and unlinks the pin; a namespace that is already gone is fine.
    pub async fn remove(&self) -> Result<(), NetnsError> {
        let path = self.path.clone();
        blocking(move || remove_blocking(&path)).await?
    }

    /// Runs `f` on a dedicated thread that has joined this namespace.
    /// Processes `f` spawns start in the namespace too.
    pub async fn run<F, T>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let path = self.path.clone();
        blocking(move || run_in_blocking(&path, f)).await?
    }
}

/// Brings the calling thread's network namespace's `lo` up (as containerd
/// does for every pod, whatever the CNI config): port-forwarding and
/// containers talking to themselves go through it.
pub fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain datagram socket used only for two interface ioctls on
    // a zeroed, NUL-terminated ifreq that lives for the whole call; the fd is
    // owned by an OwnedFd and closed on return.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let _owned = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| NetnsError::ThreadPanicked(PathBuf::new()))
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
}

/// Makes `dir` a mount point with shared propagation, so pins made in it show
/// up in other mount namespaces (what `ip netns add` does with /run/netns).
pub(crate) fn ensure_shared_dir(dir: &Path) -> Result<(), PinError> {
    std::fs::create_dir_all(dir).map_err(io(dir, "creating the directory"))?;
    let flags = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, flags, None::<&str>) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then make it shared.
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(sys(dir, "bind-mounting the directory onto itself"))?;
            mount(None::<&str>, dir, None::<&str>, flags, None::<&str>)
                .map_err(sys(dir, "making the directory a shared mount"))
        }
        Err(e) => Err(sys(dir, "making the directory a shared mount")(e)),
    }
}

/// Undoes [`ensure_shared_dir`] when nothing is pinned below `dir` any more
/// (a clean shutdown with no pods left): true if it was unmounted. With pins
/// below it stays, because the pods outlive the daemon.
pub fn release_shared_dir(dir: &Path) -> Result<bool, NetnsError> {
    let mount_points = || {
        berth_sysutil::mount::mount_points()
            .map_err(io(Path::new(berth_sysutil::mount::MOUNTINFO), "reading"))
    };
    let points = mount_points()?;
    if !points.iter().any(|p| p == dir) || points.iter().any(|p| p != dir && p.starts_with(dir)) {
        return Ok(false);
    }
    // The self-bind may be stacked (a daemon that died between the bind and
    // recording it, then bound again): every layer goes, within reason.
    for _ in 0..8 {
        umount2(dir, MntFlags::empty())
            .map_err(sys(dir, "unmounting the directory's self-bind"))?;
        if !mount_points()?.iter().any(|p| p == dir) {
            break;
        }
    }
    Ok(true)
}

/// Creates the empty file a namespace gets bind-mounted onto; an existing
/// one is [`PinError::Exists`] (never reuse a pin someone else owns).
pub(crate) fn create_pin_file(path: &Path) -> Result<(), PinError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(PinError::Exists(path.to_path_buf()))
        }
        Err(e) => Err(io(path, "creating the pin file")(e)),
    }
}

/// On a dedicated OS thread: unshares the namespaces in `flags`, runs `setup`
/// inside them (e.g. sethostname), then bind-mounts each
/// `/proc/self/task/<tid>/ns/<kind>` onto its (already created) pin file.
/// The thread exits afterwards, taking its membership with it; the bind
/// mounts keep the namespaces alive. Pins already mounted when a later step
/// fails stay mounted: the caller removes all of them with [`remove_pin`].
pub(crate) fn pin_new_namespaces<F>(
    thread_name: &str,
    flags: CloneFlags,
    setup: F,
    pins: Vec<(&'static str, PathBuf)>,
) -> Result<(), PinError>
where
    F: FnOnce() -> Result<(), PinError> + Send + 'static,
{
    // Errors name the first pin: the namespaces are created together.
    let first = pins.first().map(|(_, p)| p.clone()).unwrap_or_default();
    let first_in = first.clone();
    let joined = std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || -> Result<(), PinError> {
            unshare(flags).map_err(sys(&first_in, "unshare"))?;
            setup()?;
            let tid = nix::unistd::gettid();
            for (kind, target) in &pins {
                let src = PathBuf::from(format!("/proc/self/task/{tid}/ns/{kind}"));
                mount(
                    Some(&src),
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(sys(target, "bind-mounting the namespace"))?;
            }
            Ok(())
        })
        .map_err(io(&first, "spawning the namespace thread"))?
        .join();
    match joined {
        Ok(r) => r,
        Err(_) => Err(PinError::ThreadPanicked(first)),
    }
}

fn create_blocking(dir: &Path, name: &str) -> Result<NetNs, NetnsError> {
    if !valid_name(name) {
        return Err(NetnsError::InvalidName(name.into()));
    }
    ensure_shared_dir(dir)?;
    let path = dir.join(name);
    create_pin_file(&path)?;
    let result = pin_new_namespaces(
        "netns-create",
        CloneFlags::CLONE_NEWNET,
        || Ok(()),
        vec![("net", path.clone())],
    );
    if let Err(e) = result {
        let _ = remove_pin(&path);
        return Err(e.into());
    }
    Ok(NetNs { path })
}

/// Whether `path` still holds a namespace (nsfs mounted there). A pin whose
/// mount is gone (a crash between its unmount and its unlink) is a plain
/// empty file: to CNI, the namespace no longer exists.
pub(crate) fn holds_namespace(path: &Path) -> bool {
    use nix::sys::statfs::{statfs, NSFS_MAGIC};
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == NSFS_MAGIC)
}

/// Unmounts and unlinks a pin; one that is already gone is fine.
pub(crate) fn remove_pin(path: &Path) -> Result<(), PinError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (already unmounted); ENOENT: gone.
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(sys(path, "unmounting the namespace")(e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path, "removing the pin file")(e)),
    }
}

fn remove_blocking(path: &Path) -> Result<(), NetnsError> {
    Ok(remove_pin(path)?)
}

fn run_in_blocking<F, T>(path: &Path, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let ns = File::open(path).map_err(io(path, "opening the namespace"))?;
    let target = path.to_path_buf();
    let joined = std::thread::Builder::new()
        .name("netns-run".into())
        .spawn(move || -> Result<T, NetnsError> {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(sys(&target, "setns(CLONE_NEWNET)"))?;
            drop(ns);
            // This thread is never returned to a pool: it exits after `f`.
            Ok(f())
        })
        .map_err(io(path, "spawning the namespace thread"))?
        .join();
    match joined {
        Ok(r) => r,
        Err(_) => Err(NetnsError::ThreadPanicked(path.to_path_buf())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("pod-abc"));
        assert!(!valid_name(""));
        assert!(!valid_name(".."));
        assert!(!valid_name("a/b"));
    }

    #[tokio::test]
    async fn remove_of_missing_namespace_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let ns = NetNs::from_path(dir.path().join("gone"));
        ns.remove().await.unwrap();
        ns.remove().await.unwrap();
    }

    #[tokio::test]
    async fn create_run_remove() {
        if !nix::unistd::geteuid().is_root() {
            berth_sysutil::testing::precondition_missing("create_run_remove", "needs root");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("netns");
        let ns = NetNs::create(&dir, "pod1").await.unwrap();
        assert!(matches!(
            NetNs::create(&dir, "pod1").await,
            Err(NetnsError::Exists(_))
        ));
        let pinned = std::fs::metadata(ns.path()).unwrap().ino();
        let inside = ns
            .run(|| std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino())
            .await
            .unwrap();
        assert_eq!(inside, pinned);
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_ne!(ours, pinned);
        ns.remove().await.unwrap();
        assert!(!ns.exists());
        umount2(&dir, MntFlags::MNT_DETACH).unwrap();
    }
}
