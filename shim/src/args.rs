//! Command-line flags in the style containerd passes them (Go's `flag` package:
//! `-name value`, `-name=value`, `--name value`, boolean `-debug`), followed by the
//! action (`start`, `delete`, `serve`; none means `serve`, like containerd's shims).

use std::fmt;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    pub namespace: String,
    pub id: String,
    /// containerd's (or berthd's) gRPC address; part of the socket hash.
    pub address: String,
    pub publish_binary: String,
    /// Bundle path (`delete`); defaults to the working directory.
    pub bundle: String,
    /// The shim's own socket path (`serve`, set by `start`).
    pub socket: String,
    pub debug: bool,
    pub version: bool,
    pub info: bool,
    pub action: String,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ArgError(pub String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArgError {}

/// Parses the arguments after argv[0].
pub fn parse<I, S>(args: I) -> Result<Flags, ArgError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let args: Vec<String> = args.into_iter().map(Into::into).collect();
    let mut f = Flags::default();
    let mut i = 0;
    let mut positional = Vec::new();
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            positional.extend(args[i..].iter().cloned());
            break;
        }
        let Some(stripped) = a.strip_prefix('-').filter(|s| !s.is_empty()) else {
            // Go's flag package stops at the first non-flag argument.
            positional.push(a.clone());
            positional.extend(args[i..].iter().cloned());
            break;
        };
        let stripped = stripped.strip_prefix('-').unwrap_or(stripped);
        let (name, inline) = match stripped.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (stripped, None),
        };
        match name {
            "debug" | "v" | "version" | "info" => {
                let v = match inline.as_deref() {
                    None | Some("true") | Some("1") => true,
                    Some("false") | Some("0") => false,
                    Some(other) => {
                        return Err(ArgError(format!(
                            "invalid boolean value {other:?} for -{name}"
                        )))
                    }
                };
                match name {
                    "debug" => f.debug = v,
                    "info" => f.info = v,
                    _ => f.version = v,
                }
            }
            "namespace" | "id" | "address" | "publish-binary" | "bundle" | "socket" => {
                let v = match inline {
                    Some(v) => v,
                    None => {
                        let v = args
                            .get(i)
                            .cloned()
                            .ok_or_else(|| ArgError(format!("flag needs an argument: -{name}")))?;
                        i += 1;
                        v
                    }
                };
                match name {
                    "namespace" => f.namespace = v,
                    "id" => f.id = v,
                    "address" => f.address = v,
                    "publish-binary" => f.publish_binary = v,
                    "bundle" => f.bundle = v,
                    _ => f.socket = v,
                }
            }
            other => return Err(ArgError(format!("flag provided but not defined: -{other}"))),
        }
    }
    if let Some(action) = positional.first() {
        f.action = action.clone();
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_start_invocation() {
        let f = parse([
            "-namespace",
            "default",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "c1",
            "-debug",
            "start",
        ])
        .unwrap();
        assert_eq!(f.namespace, "default");
        assert_eq!(f.address, "/run/containerd/containerd.sock");
        assert_eq!(f.publish_binary, "/usr/bin/containerd");
        assert_eq!(f.id, "c1");
        assert!(f.debug);
        assert_eq!(f.action, "start");
    }

    #[test]
    fn equals_and_double_dash_forms() {
        let f = parse(["--id=x", "-bundle=/b", "-debug=false", "delete"]).unwrap();
        assert_eq!(f.id, "x");
        assert_eq!(f.bundle, "/b");
        assert!(!f.debug);
        assert_eq!(f.action, "delete");
        assert!(parse(["-v"]).unwrap().version);
        assert!(parse(["--version"]).unwrap().version);
        assert_eq!(parse(Vec::<String>::new()).unwrap().action, "");
    }

    #[test]
    fn errors() {
        assert!(parse(["-id"]).is_err());
        assert!(parse(["-bogus", "x"]).is_err());
        assert!(parse(["-debug=maybe"]).is_err());
    }
}
