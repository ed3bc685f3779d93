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

fn sys(path: &Path, op: &'static str) -> impl FnOnce(Errno) -> NetnsError {
    let path = path.to_path_buf();
    move |e| NetnsError::Sys {
        path,
        op,
        source: std::io::Error::from(e),
    }
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> NetnsError {
    let path = path.to_path_buf();
    move |source| NetnsError::Sys { path, op, source }
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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| NetnsError::ThreadPanicked(PathBuf::new()))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
}

/// Makes `dir` a mount point with shared propagation, so pins made in it show
/// up in other mount namespaces (what `ip netns add` does with /run/netns).
fn ensure_shared_dir(dir: &Path) -> Result<(), NetnsError> {
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

fn create_blocking(dir: &Path, name: &str) -> Result<NetNs, NetnsError> {
    if !valid_name(name) {
        return Err(NetnsError::InvalidName(name.into()));
    }
    ensure_shared_dir(dir)?;
    let path = dir.join(name);
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(NetnsError::Exists(path))
        }
        Err(e) => return Err(io(&path, "creating the pin file")(e)),
    }
    let target = path.clone();
    let joined = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> Result<(), NetnsError> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(sys(&target, "unshare(CLONE_NEWNET)"))?;
            let tid = nix::unistd::gettid();
            let src = PathBuf::from(format!("/proc/self/task/{tid}/ns/net"));
            mount(
                Some(&src),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys(&target, "bind-mounting the namespace"))
            // The thread exits here, taking its namespace membership with it;
            // the bind mount keeps the namespace alive.
        })
        .map_err(io(&path, "spawning the namespace thread"))?
        .join();
    let result = match joined {
        Ok(r) => r,
        Err(_) => Err(NetnsError::ThreadPanicked(path.clone())),
    };
    if let Err(e) = result {
        let _ = remove_blocking(&path);
        return Err(e);
    }
    Ok(NetNs { path })
}

fn remove_blocking(path: &Path) -> Result<(), NetnsError> {
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
}
