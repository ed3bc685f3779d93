//! A pod's shared IPC and UTS namespaces without a pause process: new
//! namespaces are pinned by bind-mounting their nsfs files under
//! `<dir>/<sandbox_id>/{ipc,uts}`, exactly as the pod network namespace is
//! (see [`berth_network::netns`], whose helpers this reuses). Containers then
//! join them by path in their OCI spec.
//!
//! The UTS namespace gets the pod's hostname before it is pinned, so every
//! container that joins it sees that name without needing CAP_SYS_ADMIN.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::CloneFlags;

use crate::netns::{
    create_pin_file, ensure_shared_dir, pin_new_namespaces, remove_pin, valid_name, PinError,
};

/// Linux's HOST_NAME_MAX: sethostname fails with EINVAL beyond it.
const HOST_NAME_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PodNsError {
    #[error("invalid sandbox id {0:?}")]
    InvalidSandboxId(String),
    #[error("invalid hostname {0:?}")]
    InvalidHostname(String),
    #[error("pod namespace {} already exists", .0.display())]
    Exists(PathBuf),
    #[error("pod namespace {}: {op}", path.display())]
    Sys {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("pod namespace {}: the namespace thread panicked", .0.display())]
    ThreadPanicked(PathBuf),
}

impl From<PinError> for PodNsError {
    fn from(e: PinError) -> PodNsError {
        match e {
            PinError::Sys { path, op, source } => PodNsError::Sys { path, op, source },
            PinError::Exists(p) => PodNsError::Exists(p),
            PinError::ThreadPanicked(p) => PodNsError::ThreadPanicked(p),
        }
    }
}

/// Paths of a pod's pinned namespaces (`None`: not pinned, the pod shares the
/// host's or each container gets its own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNamespaces {
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

/// Pins new IPC and/or UTS namespaces under `dir/<sandbox_id>/{ipc,uts}`;
/// `uts` carries the hostname to set in the new UTS namespace. `dir` is made a
/// shared mount (like the netns dir) so the pins are visible to runc and the
/// shims in other mount namespaces. On error nothing is left behind.
pub async fn pin(
    dir: &Path,
    sandbox_id: &str,
    ipc: bool,
    uts: Option<&str>,
) -> Result<PodNamespaces, PodNsError> {
    let dir = dir.to_path_buf();
    let sandbox_id = sandbox_id.to_string();
    let hostname = uts.map(str::to_string);
    tokio::task::spawn_blocking(move || pin_blocking(&dir, &sandbox_id, ipc, hostname))
        .await
        .map_err(|_| PodNsError::ThreadPanicked(PathBuf::new()))?
}

/// Unmounts and removes the pins and the pod's directory; anything already
/// missing is fine, so this is safe to repeat.
pub async fn unpin(dir: &Path, sandbox_id: &str) -> Result<(), PodNsError> {
    let dir = dir.to_path_buf();
    let sandbox_id = sandbox_id.to_string();
    tokio::task::spawn_blocking(move || unpin_blocking(&dir, &sandbox_id))
        .await
        .map_err(|_| PodNsError::ThreadPanicked(PathBuf::new()))?
}

fn valid_hostname(h: &str) -> bool {
    // The kernel takes any bytes; reject what no valid pod hostname (an RFC
    // 1123 label, already checked by the API server) contains.
    !h.is_empty()
        && h.len() <= HOST_NAME_MAX
        && h.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

fn pin_blocking(
    dir: &Path,
    sandbox_id: &str,
    ipc: bool,
    hostname: Option<String>,
) -> Result<PodNamespaces, PodNsError> {
    if !valid_name(sandbox_id) {
        return Err(PodNsError::InvalidSandboxId(sandbox_id.into()));
    }
    if let Some(h) = &hostname {
        if !valid_hostname(h) {
            return Err(PodNsError::InvalidHostname(h.clone()));
        }
    }
    if !ipc && hostname.is_none() {
        return Ok(PodNamespaces::default());
    }
    ensure_shared_dir(dir)?;
    let pod_dir = dir.join(sandbox_id);
    let created_dir = match std::fs::create_dir(&pod_dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(source) => {
            return Err(PodNsError::Sys {
                path: pod_dir,
                op: "creating the pod directory",
                source,
            })
        }
    };
    let mut created: Vec<PathBuf> = Vec::new();
    let result = pin_into(&pod_dir, ipc, hostname, &mut created);
    match result {
        Ok(ns) => Ok(ns),
        Err(e) => {
            // Undo only what this call made: an existing pin (Exists) belongs
            // to someone else.
            for p in &created {
                if let Err(err) = remove_pin(p) {
                    tracing::warn!(path = %p.display(), error = ?err, "cleaning up a pod namespace pin");
                }
            }
            if created_dir {
                let _ = std::fs::remove_dir(&pod_dir);
            }
            Err(e)
        }
    }
}

fn pin_into(
    pod_dir: &Path,
    ipc: bool,
    hostname: Option<String>,
    created: &mut Vec<PathBuf>,
) -> Result<PodNamespaces, PodNsError> {
    let mut flags = CloneFlags::empty();
    let mut pins = Vec::new();
    let mut out = PodNamespaces::default();
    if ipc {
        let p = pod_dir.join("ipc");
        create_pin_file(&p)?;
        created.push(p.clone());
        flags |= CloneFlags::CLONE_NEWIPC;
        pins.push(("ipc", p.clone()));
        out.ipc = Some(p);
    }
    if hostname.is_some() {
        let p = pod_dir.join("uts");
        create_pin_file(&p)?;
        created.push(p.clone());
        flags |= CloneFlags::CLONE_NEWUTS;
        pins.push(("uts", p.clone()));
        out.uts = Some(p);
    }
    let uts_path = out.uts.clone().unwrap_or_default();
    pin_new_namespaces(
        "podns-create",
        flags,
        move || match hostname {
            Some(h) => set_hostname(&h).map_err(|e| PinError::Sys {
                path: uts_path,
                op: "sethostname",
                source: e.into(),
            }),
            None => Ok(()),
        },
        pins,
    )?;
    Ok(out)
}

/// Sets the calling thread's UTS namespace hostname. (nix's wrapper sits
/// behind a feature the workspace does not enable.)
fn set_hostname(h: &str) -> Result<(), Errno> {
    // SAFETY: the pointer and length describe `h`'s bytes, which outlive the
    // call; sethostname only reads them and needs no NUL terminator.
    let rc = unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) };
    Errno::result(rc).map(drop)
}

fn unpin_blocking(dir: &Path, sandbox_id: &str) -> Result<(), PodNsError> {
    if !valid_name(sandbox_id) {
        return Err(PodNsError::InvalidSandboxId(sandbox_id.into()));
    }
    let pod_dir = dir.join(sandbox_id);
    for kind in ["ipc", "uts"] {
        remove_pin(&pod_dir.join(kind))?;
    }
    // The directory may hold the pod's other files; its owner removes it.
    match std::fs::remove_dir(&pod_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => Ok(()),
        Err(source) => Err(PodNsError::Sys {
            path: pod_dir,
            op: "removing the pod directory",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mounts_under(dir: &Path) -> Vec<String> {
        let prefix = format!("{}/", dir.display());
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|mp| mp.starts_with(&prefix))
            .collect()
    }

    #[test]
    fn hostnames_are_checked() {
        assert!(valid_hostname("pod-1.example"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("a b"));
        assert!(!valid_hostname("a\nb"));
        assert!(!valid_hostname(&"x".repeat(65)));
    }

    #[tokio::test]
    async fn bad_input_is_rejected_and_nothing_pinned_is_a_noop() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            pin(tmp.path(), "../x", true, None).await,
            Err(PodNsError::InvalidSandboxId(_))
        ));
        assert!(matches!(
            pin(tmp.path(), "sb", false, Some("bad host")).await,
            Err(PodNsError::InvalidHostname(_))
        ));
        let ns = pin(tmp.path(), "sb", false, None).await.unwrap();
        assert_eq!(ns, PodNamespaces::default());
        assert!(!tmp.path().join("sb").exists());
        unpin(tmp.path(), "sb").await.unwrap();
    }

    #[tokio::test]
    async fn pin_and_unpin() {
        if !nix::unistd::geteuid().is_root() {
            berth_sysutil::testing::precondition_missing("pin_and_unpin", "needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("podns");
        let ns = pin(&dir, "sb1", true, Some("berth-pod-host"))
            .await
            .unwrap();
        let ipc = ns.ipc.clone().unwrap();
        let uts = ns.uts.clone().unwrap();
        assert_eq!(ipc, dir.join("sb1/ipc"));
        assert_eq!(uts, dir.join("sb1/uts"));

        let out = std::process::Command::new("nsenter")
            .arg(format!("--uts={}", uts.display()))
            .arg("hostname")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "berth-pod-host"
        );
        // Our own hostname is untouched.
        assert_ne!(
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap()
                .trim(),
            "berth-pod-host"
        );

        let ours = std::fs::metadata("/proc/self/ns/ipc").unwrap().ino();
        let pinned = std::fs::metadata(&ipc).unwrap().ino();
        assert_ne!(ours, pinned);

        // A second pin for the same sandbox fails and leaves the first alone.
        assert!(matches!(
            pin(&dir, "sb1", true, None).await,
            Err(PodNsError::Exists(_))
        ));
        assert_eq!(std::fs::metadata(&ipc).unwrap().ino(), pinned);

        unpin(&dir, "sb1").await.unwrap();
        assert!(mounts_under(&dir).is_empty(), "{:?}", mounts_under(&dir));
        assert!(!dir.join("sb1").exists());
        unpin(&dir, "sb1").await.unwrap();

        // Only uts.
        let ns = pin(&dir, "sb2", false, Some("h2")).await.unwrap();
        assert_eq!(ns.ipc, None);
        assert!(!dir.join("sb2/ipc").exists());
        unpin(&dir, "sb2").await.unwrap();
        assert!(mounts_under(&dir).is_empty());

        // `dir` itself became a (shared) mount point: take it away so the
        // temp dir can be removed.
        nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
}
