//! The one user resolver: which uid, gid and supplementary groups a
//! container's process runs with, with containerd's CRI semantics
//! (`WithUser`, `WithUserID`, `WithUsername`, `WithAdditionalGIDs`), for the
//! CRI and the native Tasks API alike.

use std::path::Path;

/// What a caller asks for. The native Tasks API fills only `image_user`.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserRequest<'a> {
    /// CRI `run_as_username` ("" = not set); wins over `run_as_user`.
    pub run_as_username: &'a str,
    /// CRI `run_as_user`.
    pub run_as_user: Option<i64>,
    /// CRI `run_as_group`: needs `run_as_user` or `run_as_username`.
    pub run_as_group: Option<i64>,
    /// CRI `supplemental_groups`, added after the /etc/group ones.
    pub supplemental_groups: &'a [i64],
    /// CRI `supplemental_groups_policy` Strict: /etc/group memberships are
    /// not merged in.
    pub strict_supplemental_groups: bool,
    /// The image config's `User` ("", "uid", "name", with ":gid"/":group").
    pub image_user: &'a str,
}

/// The resolved process user (OCI `process.user`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    /// The primary group first, then the /etc/group memberships and the
    /// requested supplemental groups, without duplicates.
    pub additional_gids: Vec<u32>,
}

/// Why a user cannot be resolved: `field` names what asked for it (e.g.
/// `security_context.run_as_user`, `image User`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct UserError {
    pub field: String,
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> UserError {
    UserError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Reads a small file of the container's rootfs without following symlinks
/// anywhere on the way: a name lookup must not read the host's files.
pub(crate) fn read_rootfs_file(rootfs: &Path, rel: &str) -> Option<String> {
    let mut p = rootfs.to_path_buf();
    for part in rel.split('/').filter(|s| !s.is_empty()) {
        p.push(part);
        let md = std::fs::symlink_metadata(&p).ok()?;
        if md.file_type().is_symlink() {
            return None;
        }
    }
    let md = std::fs::metadata(&p).ok()?;
    if !md.is_file() || md.len() > 16 << 20 {
        return None;
    }
    std::fs::read_to_string(&p).ok()
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

fn passwd_entries(rootfs: &Path) -> Vec<PasswdEntry> {
    read_rootfs_file(rootfs, "etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn group_entries(rootfs: &Path) -> Vec<GroupEntry> {
    read_rootfs_file(rootfs, "etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn id_value(field: &str, v: i64) -> Result<u32, UserError> {
    u32::try_from(v).map_err(|_| err(field, format!("{v} is not a valid id")))
}

/// The process user as containerd resolves it: run_as_username, else
/// run_as_user, else the image's User ("", "uid", "name", with ":group"),
/// else root; the primary group from run_as_group, the image's group, or
/// the user's /etc/passwd entry (root's group for a uid without one); the
/// supplementary groups = the primary group, the /etc/group groups listing
/// the user (unless strict) and the requested supplemental groups.
/// `rootfs` is only read (/etc/passwd, /etc/group, symlinks not followed).
pub fn resolve(req: &UserRequest, rootfs: &Path) -> Result<ProcessUser, UserError> {
    let run_as_group = match req.run_as_group {
        Some(g) => Some(id_value("security_context.run_as_group", g)?),
        None => None,
    };
    let (user_field, user, group): (&str, String, Option<String>) =
        if !req.run_as_username.is_empty() {
            (
                "security_context.run_as_username",
                req.run_as_username.to_string(),
                None,
            )
        } else if let Some(u) = req.run_as_user {
            let uid = id_value("security_context.run_as_user", u)?;
            ("security_context.run_as_user", uid.to_string(), None)
        } else {
            if run_as_group.is_some() {
                return Err(err(
                    "security_context.run_as_group",
                    "run_as_group needs run_as_user or run_as_username",
                ));
            }
            let image_user = req.image_user.trim();
            match image_user.split_once(':') {
                Some((u, g)) => ("image User", u.to_string(), Some(g.to_string())),
                None if image_user.is_empty() => ("image User", "0".into(), None),
                None => ("image User", image_user.to_string(), None),
            }
        };
    let passwd = passwd_entries(rootfs);
    let (uid, name, passwd_gid) = match user.parse::<u32>() {
        Ok(uid) => {
            let e = passwd.iter().find(|e| e.uid == uid);
            (uid, e.map(|e| e.name.clone()), e.map(|e| e.gid))
        }
        Err(_) => {
            let e = passwd.iter().find(|e| e.name == user).ok_or_else(|| {
                err(
                    user_field,
                    format!("user {user:?} is not in the image's /etc/passwd"),
                )
            })?;
            (e.uid, Some(e.name.clone()), Some(e.gid))
        }
    };
    let groups = group_entries(rootfs);
    let gid = match (run_as_group, group.as_deref()) {
        (Some(g), _) => g,
        (None, Some(g)) if !g.is_empty() => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    err(
                        user_field,
                        format!("group {g:?} is not in the image's /etc/group"),
                    )
                })?,
        },
        _ => passwd_gid.unwrap_or(0),
    };
    let mut additional = vec![gid];
    if let (Some(name), false) = (&name, req.strict_supplemental_groups) {
        for g in &groups {
            if g.name != *name && g.members.iter().any(|m| m == name) {
                additional.push(g.gid);
            }
        }
    }
    for (i, g) in req.supplemental_groups.iter().enumerate() {
        additional.push(id_value(
            &format!("security_context.supplemental_groups[{i}]"),
            *g,
        )?);
    }
    let mut seen = std::collections::HashSet::new();
    additional.retain(|g| seen.insert(*g));
    Ok(ProcessUser {
        uid,
        gid,
        additional_gids: additional,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rootfs with busybox-like /etc/passwd and /etc/group.
    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\n\
             daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
             app:x:1000:1000:app:/home/app:/bin/sh\n\
             www:x:33:34::/var/www:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("group"),
            "root:x:0:\nwheel:x:10:root\napp:x:1000:\nextra:x:2000:app,daemon\nvideo:x:44:app\nstaff:x:50:\n",
        )
        .unwrap();
        dir
    }

    fn user(uid: u32, gid: u32, extra: &[u32]) -> ProcessUser {
        ProcessUser {
            uid,
            gid,
            additional_gids: extra.to_vec(),
        }
    }

    fn image(u: &str) -> UserRequest<'_> {
        UserRequest {
            image_user: u,
            ..Default::default()
        }
    }

    #[test]
    fn image_users() {
        let r = rootfs();
        let r = r.path();
        assert_eq!(resolve(&image(""), r).unwrap(), user(0, 0, &[0, 10]));
        // A uid without a passwd entry: root's group, no memberships.
        assert_eq!(resolve(&image("4242"), r).unwrap(), user(4242, 0, &[0]));
        // A uid with one: its primary group and memberships.
        assert_eq!(
            resolve(&image("1000"), r).unwrap(),
            user(1000, 1000, &[1000, 2000, 44])
        );
        assert_eq!(
            resolve(&image("1000:7"), r).unwrap(),
            user(1000, 7, &[7, 2000, 44])
        );
        assert_eq!(resolve(&image("www"), r).unwrap(), user(33, 34, &[34]));
        assert_eq!(
            resolve(&image("www:staff"), r).unwrap(),
            user(33, 50, &[50])
        );
        assert_eq!(
            resolve(&image(" app:video "), r).unwrap(),
            user(1000, 44, &[44, 2000])
        );
        let e = resolve(&image("nobody"), r).unwrap_err();
        assert_eq!(e.field, "image User");
        assert!(e.message.contains("\"nobody\""), "{e}");
        let e = resolve(&image("1:nogroup"), r).unwrap_err();
        assert!(e.message.contains("/etc/group"), "{e}");
    }

    #[test]
    fn cri_fields_win_over_the_image() {
        let r = rootfs();
        let r = r.path();
        let by_name = UserRequest {
            run_as_username: "app",
            run_as_user: Some(1),
            supplemental_groups: &[3000, 44],
            image_user: "daemon",
            ..Default::default()
        };
        assert_eq!(
            resolve(&by_name, r).unwrap(),
            user(1000, 1000, &[1000, 2000, 44, 3000])
        );
        let by_id = UserRequest {
            run_as_user: Some(1),
            run_as_group: Some(50),
            image_user: "app:video",
            ..Default::default()
        };
        assert_eq!(resolve(&by_id, r).unwrap(), user(1, 50, &[50, 2000]));
        let strict = UserRequest {
            strict_supplemental_groups: true,
            supplemental_groups: &[7],
            ..by_id
        };
        assert_eq!(resolve(&strict, r).unwrap(), user(1, 50, &[50, 7]));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let r = rootfs();
        let r = r.path();
        let field = |req: UserRequest| resolve(&req, r).unwrap_err().field;
        assert_eq!(
            field(UserRequest {
                run_as_group: Some(5),
                ..Default::default()
            }),
            "security_context.run_as_group"
        );
        assert_eq!(
            field(UserRequest {
                run_as_user: Some(-1),
                ..Default::default()
            }),
            "security_context.run_as_user"
        );
        assert_eq!(
            field(UserRequest {
                run_as_user: Some(0),
                run_as_group: Some(1 << 40),
                ..Default::default()
            }),
            "security_context.run_as_group"
        );
        assert_eq!(
            field(UserRequest {
                run_as_user: Some(0),
                supplemental_groups: &[1, -3],
                ..Default::default()
            }),
            "security_context.supplemental_groups[1]"
        );
        assert_eq!(
            field(UserRequest {
                run_as_username: "ghost",
                ..Default::default()
            }),
            "security_context.run_as_username"
        );
    }

    #[test]
    fn lookups_do_not_follow_symlinks_out_of_the_rootfs() {
        let r = rootfs();
        let passwd = r.path().join("etc/passwd");
        std::fs::remove_file(&passwd).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &passwd).unwrap();
        assert!(resolve(&image("root"), r.path()).is_err());
        // Numeric ids still work, without a passwd entry.
        assert_eq!(resolve(&image("0"), r.path()).unwrap().gid, 0);
        let r = rootfs();
        std::fs::remove_dir_all(r.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", r.path().join("etc")).unwrap();
        assert!(resolve(&image("root"), r.path()).is_err());
    }
}
