//! Every crictl 1.29 verb, run as the upstream `crictl` binary (cri-tools v1.29 from
//! `../shared/conformance/bin`, or `$CRICTL`) against a real berthd with a CNI network
//! and a real registry, its output checked the way a user reads it: `-o json` parsed
//! where crictl offers it, the tables of `images`, `pods`, `ps`, `stats` and `statsp`
//! cut into columns, streams (`logs -f`, `events`, `port-forward`) read as they come,
//! and `exec -it` / `attach -it` on a pseudo-terminal.
//!
//! The tests are ignored by default (`make test` must work without ../shared); `make
//! conformance` runs them:
//!
//! ```sh
//! cargo build --release -p berthd -p berth-shim -p berthctl
//! cargo test --release -p integration --test crictl -- --ignored --test-threads=1
//! ```
//!
//! Run with `--ignored` and no crictl, each test fails saying where crictl was looked for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use integration::cri::{self, is_rfc3339, Env};
use integration::crictl::{
    crictl_bin, json_stream, lines, parse_table, table_header, unix_timestamp_now, write_json,
    Crictl,
};
use integration::fixtures;
use integration::registry::Registry;
use integration::util::{free_port, wait_for};
use serde_json::{json, Value};

/// Deadline for anything asynchronous.
const T: Duration = Duration::from_secs(30);

/// One suite at a time: they share the host's iptables and CNI state.
static LOCK: Mutex<()> = Mutex::new(());

/// A berthd with a per-test CNI network and the busybox fixture imported
/// (`docker.io/berth-e2e/busybox:latest`), crictl pointed at its socket, and a
/// directory for config files.
struct Suite {
    env: Env,
    c: Crictl,
    _lock: MutexGuard<'static, ()>,
}

impl Suite {
    fn new() -> Result<Self> {
        let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // Before anything is started: no crictl is a clear failure, never a pass.
        crictl_bin()?;
        let env = Env::start()?;
        let c = Crictl::new(&env.d().socket_path(), env.files.path())?;
        Ok(Suite {
            env,
            c,
            _lock: lock,
        })
    }

    fn dir(&self) -> &Path {
        self.env.files.path()
    }

    /// A pod config file (JSON, as crictl reads it); returns its path.
    fn pod_file(&self, name: &str, namespace: &str, labels: &[(&str, &str)]) -> Result<String> {
        let uid = cri::unique("uid");
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let v = json!({
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "attempt": 0},
            "hostname": name,
            "log_directory": self.env.log_dir(name)?,
            "labels": labels,
            "annotations": {"berth.test/suite": "crictl"},
            "linux": {
                "cgroup_parent": format!("{}/pod{uid}", self.env.cgroup_parent),
                "security_context": {"namespace_options": {"network": 0, "pid": 1, "ipc": 0}}
            }
        });
        write_json(self.dir(), &format!("pod-{}.json", cri::unique(name)), &v)
    }

    /// A container config file for `image` (the imported busybox if `None`); `extra`
    /// is merged in at the top level.
    fn ctr_file(
        &self,
        name: &str,
        attempt: u32,
        image: Option<&str>,
        cmd: &[&str],
        extra: Value,
    ) -> Result<String> {
        let mut v = json!({
            "metadata": {"name": name, "attempt": attempt},
            "image": {"image": image.unwrap_or(&self.env.image)},
            "command": cmd,
            "log_path": format!("{name}/{attempt}.log"),
            "labels": {"ctr": name, "suite": "crictl"},
            "annotations": {"berth.test/ctr": name},
            "linux": {}
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        write_json(self.dir(), &format!("ctr-{}.json", cri::unique(name)), &v)
    }

    /// `crictl runp FILE`: the new pod's id.
    fn runp(&self, pod_file: &str) -> Result<String> {
        full_id(&self.c.ok(&["runp", pod_file])?)
    }

    /// `crictl create POD CTR-FILE POD-FILE`: the new container's id.
    fn create(&self, pod: &str, ctr_file: &str, pod_file: &str) -> Result<String> {
        full_id(&self.c.ok(&["create", pod, ctr_file, pod_file])?)
    }

    /// `crictl start ID`, which prints the id.
    fn start(&self, id: &str) -> Result<()> {
        let out = self.c.ok(&["start", id])?;
        ensure!(out.trim() == id, "start printed {out:?}, not the id {id}");
        Ok(())
    }

    /// `crictl inspect ID` (JSON).
    fn inspect(&self, id: &str) -> Result<Value> {
        self.c.json(&["inspect", id])
    }

    /// Polls `crictl inspect` until the container's state is `state`.
    fn wait_state(&self, id: &str, state: &str) -> Result<Value> {
        let mut last = Value::Null;
        let r = wait_for(&format!("container {id} {state}"), T, || {
            last = self.inspect(id)?;
            Ok((last["status"]["state"] == state).then(|| last.clone()))
        });
        r.with_context(|| format!("last inspect: {last:#}"))
    }

    /// Polls `crictl logs ID` until its stdout contains `needle`; returns stdout.
    fn wait_logs(&self, id: &str, needle: &str) -> Result<String> {
        let mut last = String::new();
        let r = wait_for(&format!("{needle:?} in the logs of {id}"), T, || {
            let out = self.c.run(&["logs", id])?;
            ensure!(out.status.success(), "crictl logs failed:\n{out}");
            last = out.stdout.clone();
            Ok(out.stdout.contains(needle).then_some(out.stdout))
        });
        r.with_context(|| format!("last logs: {last:?}"))
    }

    fn ids(&self, args: &[&str]) -> Result<Vec<String>> {
        Ok(lines(&self.c.ok(args)?))
    }
}

/// The one 64-hex id crictl printed.
fn full_id(out: &str) -> Result<String> {
    let id = out.trim();
    ensure!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "expected one 64-hex id, got {out:?}"
    );
    Ok(id.to_string())
}

/// crictl's truncated id (13 characters, `sha256:` removed).
fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..13.min(id.len())]
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

fn set_of(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A protobuf-JSON integer (uint64 fields are strings).
fn num(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// A timestamp as crictl prints it: nanoseconds (as a number or string) or RFC 3339
/// (`inspect` converts them), after 2020.
fn is_time(v: &Value) -> bool {
    match v.as_str() {
        Some(t) if t.contains('T') => is_rfc3339(t) && t > "2020",
        _ => num(v).is_some_and(|n| n > 1_577_836_800_000_000_000),
    }
}

/// A CREATED column: "N seconds ago" and the like, never hours or years (which
/// would mean a wrong createdAt unit).
fn recent(created: &str) -> bool {
    created.ends_with(" ago")
        && ["hour", "day", "week", "month", "year"]
            .iter()
            .all(|u| !created.contains(u))
}

/// `key: value` lines (crictl version, -v output) as a map (first occurrence wins).
fn key_values(out: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for l in out.lines() {
        if let Some((k, v)) = l.split_once(':') {
            m.entry(k.trim().to_string())
                .or_insert_with(|| v.trim().to_string());
        }
    }
    m
}

fn rows_where<'a>(
    rows: &'a [BTreeMap<String, String>],
    col: &str,
    val: &str,
) -> Vec<&'a BTreeMap<String, String>> {
    rows.iter().filter(|r| r[col] == val).collect()
}

// ============================================================ images and runtime

#[test]
#[ignore = "needs upstream crictl (../shared/conformance): make conformance runs them"]
fn crictl_runtime_info_and_images() -> Result<()> {
    let s = Suite::new()?;
    let c = &s.c;
    let reg = Registry::start_default()?;
    let multi = fixtures::multilayer()?;
    let pause = fixtures::pause()?;
    reg.push_layout(multi, "crictl/multi:1")?;
    reg.push_layout(multi, "crictl/multi:2")?;
    reg.push_layout(pause, "crictl/pause:1")?;
    let multi1 = reg.reference("crictl/multi:1");
    let multi2 = reg.reference("crictl/multi:2");
    let pause1 = reg.reference("crictl/pause:1");
    let busybox_id = s.env.image_id.clone();

    // ---- version
    let out = c.ok(&["version"])?;
    let kv = key_values(&out);
    ensure!(
        kv.get("Version").map(String::as_str) == Some("0.1.0"),
        "version:\n{out}"
    );
    ensure!(
        kv.get("RuntimeName").map(String::as_str) == Some("berth"),
        "version:\n{out}"
    );
    ensure!(
        kv.get("RuntimeVersion").is_some_and(|v| !v.is_empty()),
        "version:\n{out}"
    );
    ensure!(
        kv.get("RuntimeApiVersion").map(String::as_str) == Some("v1"),
        "version:\n{out}"
    );

    // ---- info: runtime and network ready
    let info = c.json(&["info"])?;
    let conds = info["status"]["conditions"]
        .as_array()
        .with_context(|| format!("info without status.conditions: {info:#}"))?;
    for ty in ["RuntimeReady", "NetworkReady"] {
        ensure!(
            conds.iter().any(|c| c["type"] == ty && c["status"] == true),
            "info: {ty} is not true: {info:#}"
        );
    }
    let quiet = c.json(&["info", "-q"])?;
    ensure!(
        quiet["status"]["conditions"].is_array(),
        "info -q: {quiet:#}"
    );

    // ---- runtime-config
    let out = c.ok(&["runtime-config"])?;
    ensure!(
        out.contains("cgroup driver:") && out.contains("CGROUPFS"),
        "runtime-config:\n{out}"
    );

    // ---- images before any pull: the imported fixture only
    let out = c.ok(&["images"])?;
    ensure!(
        table_header(&out) == ["IMAGE", "TAG", "IMAGE ID", "SIZE"],
        "images header:\n{out}"
    );
    let rows = parse_table(&out)?;
    ensure!(rows.len() == 1, "images:\n{out}");
    ensure!(
        rows[0]["IMAGE"] == "docker.io/berth-e2e/busybox"
            && rows[0]["TAG"] == "latest"
            && rows[0]["IMAGE ID"] == short(&busybox_id),
        "images:\n{out}"
    );

    // ---- pull: "Image is up to date for <id>", the id being the config digest
    for (r, id) in [
        (&multi1, &multi.config_digest),
        (&multi2, &multi.config_digest),
        (&pause1, &pause.config_digest),
    ] {
        let out = c.ok(&["pull", r])?;
        ensure!(
            out.trim() == format!("Image is up to date for {id}"),
            "pull {r}: {out:?}"
        );
    }
    let missing = reg.reference("crictl/nope:1");
    let out = c.fails(&["pull", &missing])?;
    ensure!(
        out.stderr.contains("crictl/nope") && out.stderr.to_lowercase().contains("not found"),
        "pull of a missing image should say it is not found:\n{out}"
    );

    // ---- images: one row per name, the same id for both tags
    let out = c.ok(&["images"])?;
    let rows = parse_table(&out)?;
    let repo = format!("{}/crictl/multi", reg.addr());
    let multi_rows = rows_where(&rows, "IMAGE", &repo);
    ensure!(
        multi_rows
            .iter()
            .map(|r| r["TAG"].as_str())
            .collect::<BTreeSet<_>>()
            == BTreeSet::from(["1", "2"]),
        "images: tags 1 and 2 of {repo} expected:\n{out}"
    );
    for r in &multi_rows {
        ensure!(
            r["IMAGE ID"] == short(&multi.config_digest),
            "images:\n{out}"
        );
        ensure!(
            r["SIZE"].ends_with('B') && r["SIZE"] != "0B",
            "images: size {:?}:\n{out}",
            r["SIZE"]
        );
    }
    let prow = rows_where(&rows, "IMAGE", &format!("{}/crictl/pause", reg.addr()));
    ensure!(
        prow.len() == 1
            && prow[0]["TAG"] == "1"
            && prow[0]["IMAGE ID"] == short(&pause.config_digest),
        "images:\n{out}"
    );
    ensure!(rows.len() == 4, "images: 4 names expected:\n{out}");

    // -q: each image id once, in full
    let ids = s.ids(&["images", "-q"])?;
    ensure!(ids.len() == 3, "images -q: {ids:?}");
    ensure!(
        set(&ids) == set_of(&[&busybox_id, &multi.config_digest, &pause.config_digest]),
        "images -q: {ids:?}"
    );
    // --no-trunc: full ids in the table
    let rows = parse_table(&c.ok(&["images", "--no-trunc"])?)?;
    ensure!(
        rows_where(&rows, "IMAGE", &repo)
            .iter()
            .all(|r| r["IMAGE ID"] == multi.config_digest),
        "images --no-trunc: {rows:?}"
    );
    // --digests: the manifest digest column
    let out = c.ok(&["images", "--digests"])?;
    ensure!(
        table_header(&out) == ["IMAGE", "TAG", "DIGEST", "IMAGE ID", "SIZE"],
        "images --digests header:\n{out}"
    );
    let rows = parse_table(&out)?;
    for r in rows_where(&rows, "IMAGE", &repo) {
        ensure!(
            r["DIGEST"] == short(&multi.manifest_digest),
            "images --digests: digest {:?}, manifest {}:\n{out}",
            r["DIGEST"],
            multi.manifest_digest
        );
    }
    // -o json
    let v = c.json(&["images", "-o", "json"])?;
    let imgs = v["images"]
        .as_array()
        .context("images -o json: no images")?;
    ensure!(imgs.len() == 3, "images -o json: {v:#}");
    let m = imgs
        .iter()
        .find(|i| i["id"] == multi.config_digest.as_str())
        .with_context(|| format!("images -o json: no {}: {v:#}", multi.config_digest))?;
    let tags: BTreeSet<&str> = m["repoTags"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    ensure!(
        tags == BTreeSet::from([multi1.as_str(), multi2.as_str()]),
        "images -o json repoTags: {m:#}"
    );
    let want_digest = format!("{repo}@{}", multi.manifest_digest);
    ensure!(
        m["repoDigests"]
            .as_array()
            .is_some_and(|a| a.iter().any(|d| d == want_digest.as_str())),
        "images -o json repoDigests should hold {want_digest}: {m:#}"
    );
    ensure!(
        num(&m["size"]).is_some_and(|n| n > 0),
        "images -o json size: {m:#}"
    );
    // an image argument filters
    let rows = parse_table(&c.ok(&["images", &multi1])?)?;
    ensure!(
        !rows.is_empty() && rows.iter().all(|r| r["IMAGE"] == repo),
        "images {multi1}: {rows:?}"
    );
    // -v
    let out = c.ok(&["images", "-v"])?;
    ensure!(
        out.contains(&format!("ID: {}", multi.config_digest)) && out.contains(&multi1),
        "images -v:\n{out}"
    );

    // ---- inspecti
    let v = c.json(&["inspecti", &multi1])?;
    ensure!(
        v["status"]["id"] == multi.config_digest.as_str(),
        "inspecti: {v:#}"
    );
    ensure!(
        v["status"]["repoTags"]
            .as_array()
            .is_some_and(|a| a.iter().any(|t| t == multi2.as_str())),
        "inspecti: repoTags: {v:#}"
    );
    ensure!(
        num(&v["status"]["size"]).is_some_and(|n| n > 0),
        "inspecti: {v:#}"
    );
    let out = c.fails(&["inspecti", &missing])?;
    ensure!(
        out.stderr.contains("no such image"),
        "inspecti of a missing image:\n{out}"
    );
    // by id, too
    let v = c.json(&["inspecti", "-q", &multi.config_digest])?;
    ensure!(
        v["status"]["id"] == multi.config_digest.as_str(),
        "inspecti by id: {v:#}"
    );

    // ---- imagefsinfo
    let v = c.json(&["imagefsinfo"])?;
    for key in ["imageFilesystems", "containerFilesystems"] {
        let fs = v["status"][key]
            .as_array()
            .and_then(|a| a.first())
            .with_context(|| format!("imagefsinfo: no {key}: {v:#}"))?;
        ensure!(
            fs["fsId"]["mountpoint"]
                .as_str()
                .is_some_and(|m| m.starts_with('/')),
            "imagefsinfo {key} mountpoint: {v:#}"
        );
        ensure!(
            num(&fs["usedBytes"]["value"]).is_some_and(|n| n > 0),
            "imagefsinfo {key} usedBytes: {v:#}"
        );
        ensure!(
            num(&fs["timestamp"]).is_some_and(|n| n > 0),
            "imagefsinfo: {v:#}"
        );
    }

    // ---- rmi by name: prints "Deleted: <name>"
    let out = c.ok(&["rmi", &pause1])?;
    ensure!(lines(&out) == [format!("Deleted: {pause1}")], "rmi:\n{out}");
    ensure!(
        !s.ids(&["images", "-q"])?.contains(&pause.config_digest),
        "rmi left the image listed"
    );
    let out = c.fails(&["rmi", &missing])?;
    ensure!(
        out.stderr.contains("no such image"),
        "rmi of a missing image:\n{out}"
    );

    // ---- rmi --prune: only images no container uses
    c.ok(&["pull", &pause1])?;
    let pod = s.pod_file("crictl-prune", "crictl-img", &[("app", "prune")])?;
    let p = s.runp(&pod)?;
    let ctr = s.ctr_file(
        "user",
        0,
        Some(&multi1),
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done",
        ],
        json!({}),
    )?;
    let cid = s.create(&p, &ctr, &pod)?;
    s.start(&cid)?;
    let out = c.ok(&["rmi", "--prune"])?;
    let deleted = set(&lines(&out));
    ensure!(
        deleted
            == set_of(&[
                &format!("Deleted: {pause1}"),
                "Deleted: docker.io/berth-e2e/busybox:latest",
            ]),
        "rmi --prune should delete the two unused images only:\n{out}"
    );
    ensure!(
        s.ids(&["images", "-q"])? == [multi.config_digest.clone()],
        "after rmi --prune"
    );
    c.ok(&["rmp", "-f", &p])?;

    // ---- rmi --all
    c.ok(&["pull", &pause1])?;
    let out = c.ok(&["rmi", "--all"])?;
    ensure!(
        set(&lines(&out))
            == set_of(&[
                &format!("Deleted: {multi1}"),
                &format!("Deleted: {multi2}"),
                &format!("Deleted: {pause1}"),
            ]),
        "rmi --all:\n{out}"
    );
    ensure!(
        s.ids(&["images", "-q"])?.is_empty(),
        "images left after rmi --all"
    );
    let out = c.ok(&["images"])?;
    ensure!(
        parse_table(&out)?.is_empty() && table_header(&out)[0] == "IMAGE",
        "images after rmi --all:\n{out}"
    );

    // ---- client-side verbs: config, completion
    c.ok(&["config", "--set", "pull-image-on-create=false"])?;
    let out = c.ok(&["config", "--get", "pull-image-on-create"])?;
    ensure!(out.trim() == "false", "config --get: {out:?}");
    let out = c.ok(&["completion", "bash"])?;
    ensure!(out.contains("crictl"), "completion bash:\n{out}");
    Ok(())
}

// ============================================================ pods and containers

/// A container that runs until SIGTERM, then exits 0 (busybox `sh` as PID 1 ignores
/// signals it has no handler for).
const SERVE: &[&str] = &[
    "sh",
    "-c",
    "echo out-1; echo err-1 >&2; trap 'exit 0' TERM; while :; do sleep 3600 & wait; done",
];

#[test]
#[ignore = "needs upstream crictl (../shared/conformance): make conformance runs them"]
fn crictl_pods_and_containers() -> Result<()> {
    let s = Suite::new()?;
    let c = &s.c;

    // ---- events: started first, read at the end
    let mut events = c.spawn(&["events", "-o", "json"])?;

    // ---- runp: two pods in two namespaces
    let web_file = s.pod_file(
        "crictl-web",
        "crictl-a",
        &[("app", "web"), ("tier", "front")],
    )?;
    let db_file = s.pod_file("crictl-db", "crictl-b", &[("app", "db")])?;
    let web = s.runp(&web_file)?;
    let db = s.runp(&db_file)?;

    // ---- pods: table
    let out = c.ok(&["pods"])?;
    ensure!(
        table_header(&out)
            == [
                "POD ID",
                "CREATED",
                "STATE",
                "NAME",
                "NAMESPACE",
                "ATTEMPT",
                "RUNTIME"
            ],
        "pods header:\n{out}"
    );
    let rows = parse_table(&out)?;
    ensure!(rows.len() == 2, "pods:\n{out}");
    for (id, name, ns) in [
        (&web, "crictl-web", "crictl-a"),
        (&db, "crictl-db", "crictl-b"),
    ] {
        let r = rows_where(&rows, "POD ID", short(id));
        ensure!(r.len() == 1, "pods: no row for {id}:\n{out}");
        let r = r[0];
        ensure!(
            r["STATE"] == "Ready"
                && r["NAME"] == name
                && r["NAMESPACE"] == ns
                && r["ATTEMPT"] == "0"
                && recent(&r["CREATED"]),
            "pods row for {name}: {r:?}\n{out}"
        );
        ensure!(r["RUNTIME"] == "(default)", "pods RUNTIME: {r:?}");
    }
    // --no-trunc
    let rows = parse_table(&c.ok(&["pods", "--no-trunc"])?)?;
    ensure!(
        rows_where(&rows, "POD ID", &web).len() == 1,
        "pods --no-trunc: {rows:?}"
    );
    // -q and the filters
    let q = |args: &[&str]| -> Result<Vec<String>> {
        let mut a = vec!["pods", "-q"];
        a.extend_from_slice(args);
        s.ids(&a)
    };
    ensure!(set(&q(&[])?) == set_of(&[&web, &db]), "pods -q");
    ensure!(
        q(&["--name", "crictl-web"])? == [web.clone()],
        "pods --name"
    );
    ensure!(
        set(&q(&["--name", "crictl-(web|db)"])?) == set_of(&[&web, &db]),
        "pods --name regex"
    );
    ensure!(
        q(&["--name", "^nothing$"])?.is_empty(),
        "pods --name nothing"
    );
    ensure!(
        q(&["--namespace", "crictl-b"])? == [db.clone()],
        "pods --namespace"
    );
    ensure!(
        set(&q(&["--namespace", "crictl-.*"])?) == set_of(&[&web, &db]),
        "pods --namespace regex"
    );
    ensure!(q(&["--label", "app=web"])? == [web.clone()], "pods --label");
    ensure!(
        q(&["--label", "app=web", "--label", "tier=front"])? == [web.clone()],
        "pods --label x2"
    );
    ensure!(q(&["--label", "app=nope"])?.is_empty(), "pods --label nope");
    ensure!(q(&["--id", &web])? == [web.clone()], "pods --id");
    ensure!(
        q(&["--id", &web[..12]])? == [web.clone()],
        "pods --id prefix"
    );
    ensure!(q(&["--latest"])? == [db.clone()], "pods --latest");
    ensure!(q(&["--last", "1"])? == [db.clone()], "pods --last 1");
    ensure!(
        q(&["--last", "2"])? == [db.clone(), web.clone()],
        "pods --last 2 (newest first)"
    );
    ensure!(
        set(&q(&["--state", "ready"])?) == set_of(&[&web, &db]),
        "pods --state ready"
    );
    ensure!(
        q(&["--state", "notready"])?.is_empty(),
        "pods --state notready"
    );
    // -v
    let out = c.ok(&["pods", "-v", "--id", &web])?;
    let kv = key_values(&out);
    ensure!(
        kv.get("ID") == Some(&web)
            && kv.get("Name").map(String::as_str) == Some("crictl-web")
            && kv.get("Namespace").map(String::as_str) == Some("crictl-a")
            && kv.get("Status").map(String::as_str) == Some("Ready")
            && out.contains("app -> web")
            && out.contains("tier -> front")
            && out.contains("berth.test/suite -> crictl"),
        "pods -v:\n{out}"
    );
    // -o json
    let v = c.json(&["pods", "-o", "json"])?;
    let items = v["items"].as_array().context("pods -o json: no items")?;
    let w = items
        .iter()
        .find(|i| i["id"] == web.as_str())
        .with_context(|| format!("pods -o json: no {web}: {v:#}"))?;
    ensure!(
        w["state"] == "SANDBOX_READY"
            && w["metadata"]["name"] == "crictl-web"
            && w["metadata"]["namespace"] == "crictl-a"
            && w["labels"]["tier"] == "front"
            && is_time(&w["createdAt"]),
        "pods -o json: {w:#}"
    );

    // ---- inspectp
    let v = c.json(&["inspectp", &web])?;
    let st = &v["status"];
    ensure!(
        st["id"] == web.as_str() && st["state"] == "SANDBOX_READY",
        "inspectp: {v:#}"
    );
    ensure!(st["metadata"]["name"] == "crictl-web", "inspectp: {v:#}");
    let ip = st["network"]["ip"].as_str().unwrap_or_default().to_string();
    ensure!(
        ip.starts_with(&format!("{}.", s.env.net.prefix)),
        "inspectp: pod ip {ip:?} not in {}.0/24: {v:#}",
        s.env.net.prefix
    );
    ensure!(
        v["info"].is_object(),
        "inspectp (verbose) without info: {v:#}"
    );
    let v = c.json(&["inspectp", "-q", &web])?;
    ensure!(
        v["status"]["id"] == web.as_str() && v.get("info").is_none(),
        "inspectp -q: {v:#}"
    );
    let out = c.ok(&["inspectp", "-o", "table", &web])?;
    ensure!(
        out.contains(&web) && out.contains(&ip) && out.to_lowercase().contains("ready"),
        "inspectp -o table:\n{out}"
    );

    // ---- create, start
    // ps's POD column is the pod name kubelet puts in a container's labels.
    let web_ctr_file = s.ctr_file(
        "crictl-web-ctr",
        0,
        None,
        SERVE,
        json!({"labels": {"ctr": "crictl-web-ctr", "io.kubernetes.pod.name": "crictl-web"}}),
    )?;
    let c1 = s.create(&web, &web_ctr_file, &web_file)?;
    let v = s.inspect(&c1)?;
    ensure!(
        v["status"]["state"] == "CONTAINER_CREATED",
        "after create: {v:#}"
    );
    ensure!(
        s.ids(&["ps", "-q"])?.is_empty(),
        "ps lists a created container"
    );
    ensure!(
        s.ids(&["ps", "-a", "-q"])? == [c1.clone()],
        "ps -a should list the created container"
    );
    ensure!(
        s.ids(&["ps", "-q", "--state", "created"])? == [c1.clone()],
        "ps --state created"
    );
    s.start(&c1)?;
    let done_file = s.ctr_file(
        "crictl-done",
        0,
        None,
        &["sh", "-c", "echo done"],
        json!({}),
    )?;
    let c2 = s.create(&web, &done_file, &web_file)?;
    s.start(&c2)?;
    let db_ctr_file = s.ctr_file(
        "crictl-db-ctr",
        0,
        None,
        SERVE,
        json!({"labels": {"ctr": "crictl-db-ctr", "role": "db"}}),
    )?;
    let c3 = s.create(&db, &db_ctr_file, &db_file)?;
    s.start(&c3)?;
    let v = s.wait_state(&c2, "CONTAINER_EXITED")?;
    ensure!(
        num(&v["status"]["exitCode"]).unwrap_or(0) == 0
            && v["status"]["reason"] == "Completed"
            && is_time(&v["status"]["finishedAt"]),
        "an exited container: {v:#}"
    );

    // ---- ps: table
    let out = c.ok(&["ps"])?;
    ensure!(
        table_header(&out)
            == [
                "CONTAINER",
                "IMAGE",
                "CREATED",
                "STATE",
                "NAME",
                "ATTEMPT",
                "POD ID",
                "POD"
            ],
        "ps header:\n{out}"
    );
    let rows = parse_table(&out)?;
    ensure!(rows.len() == 2, "ps: two running containers:\n{out}");
    let r = rows_where(&rows, "CONTAINER", short(&c1));
    ensure!(r.len() == 1, "ps: no row for {c1}:\n{out}");
    let r = r[0];
    ensure!(
        r["STATE"] == "Running"
            && r["NAME"] == "crictl-web-ctr"
            && r["ATTEMPT"] == "0"
            && r["POD ID"] == short(&web)
            && r["POD"] == "crictl-web"
            && rows_where(&rows, "NAME", "crictl-db-ctr")
                .first()
                .is_some_and(|d| d["POD"] == "unknown")
            && !r["IMAGE"].is_empty()
            && recent(&r["CREATED"]),
        "ps row: {r:?}\n{out}"
    );
    let rows = parse_table(&c.ok(&["ps", "-a"])?)?;
    let r = rows_where(&rows, "CONTAINER", short(&c2));
    ensure!(
        r.len() == 1 && r[0]["STATE"] == "Exited" && r[0]["NAME"] == "crictl-done",
        "ps -a: {rows:?}"
    );
    // -q and the filters
    let q = |args: &[&str]| -> Result<Vec<String>> {
        let mut a = vec!["ps", "-q"];
        a.extend_from_slice(args);
        s.ids(&a)
    };
    ensure!(set(&q(&[])?) == set_of(&[&c1, &c3]), "ps -q");
    ensure!(set(&q(&["-a"])?) == set_of(&[&c1, &c2, &c3]), "ps -a -q");
    ensure!(
        q(&["--state", "exited"])? == [c2.clone()],
        "ps --state exited"
    );
    ensure!(
        set(&q(&["--state", "running"])?) == set_of(&[&c1, &c3]),
        "ps --state running"
    );
    ensure!(q(&["--state", "created"])?.is_empty(), "ps --state created");
    ensure!(
        q(&["--name", "crictl-web-ctr"])? == [c1.clone()],
        "ps --name"
    );
    ensure!(
        set(&q(&["--name", "crictl-(web|db)-ctr"])?) == set_of(&[&c1, &c3]),
        "ps --name regex"
    );
    ensure!(q(&["--pod", &db])? == [c3.clone()], "ps --pod");
    ensure!(
        set(&q(&["-a", "--pod", &web])?) == set_of(&[&c1, &c2]),
        "ps -a --pod"
    );
    ensure!(q(&["--label", "role=db"])? == [c3.clone()], "ps --label");
    ensure!(
        q(&["-a", "--label", "ctr=crictl-done"])? == [c2.clone()],
        "ps -a --label"
    );
    ensure!(q(&["--id", &c1[..12]])? == [c1.clone()], "ps --id prefix");
    ensure!(
        set(&q(&["--image", &s.env.image])?) == set_of(&[&c1, &c3]),
        "ps --image"
    );
    ensure!(
        q(&["--image", "nothing:1"])?.is_empty(),
        "ps --image nothing"
    );
    ensure!(q(&["--latest"])? == [c3.clone()], "ps --latest");
    ensure!(
        q(&["--last", "2"])? == [c3.clone(), c2.clone()],
        "ps --last 2 (newest first, any state)"
    );
    // -v, -o json
    let out = c.ok(&["ps", "-v", "--id", &c1])?;
    let kv = key_values(&out);
    ensure!(
        kv.get("ID") == Some(&c1)
            && kv.get("PodID") == Some(&web)
            && kv.get("Name").map(String::as_str) == Some("crictl-web-ctr")
            && kv.get("State").map(String::as_str) == Some("Running")
            && kv.get("Image") == Some(&s.env.image)
            && kv.get("Created").is_some_and(|c| recent(c))
            && out.contains("ctr -> crictl-web-ctr")
            && out.contains("berth.test/ctr -> crictl-web-ctr"),
        "ps -v:\n{out}"
    );
    let v = c.json(&["ps", "-a", "-o", "json"])?;
    let cs = v["containers"]
        .as_array()
        .context("ps -o json: no containers")?;
    ensure!(cs.len() == 3, "ps -a -o json: {v:#}");
    let j = cs
        .iter()
        .find(|x| x["id"] == c1.as_str())
        .with_context(|| format!("ps -o json: no {c1}"))?;
    ensure!(
        j["podSandboxId"] == web.as_str()
            && j["state"] == "CONTAINER_RUNNING"
            && j["metadata"]["name"] == "crictl-web-ctr"
            && j["labels"]["ctr"] == "crictl-web-ctr"
            && j["imageRef"].as_str().is_some_and(|r| !r.is_empty())
            && is_time(&j["createdAt"]),
        "ps -o json: {j:#}"
    );

    // ---- inspect
    let v = s.inspect(&c1)?;
    let st = &v["status"];
    ensure!(
        st["id"] == c1.as_str()
            && st["state"] == "CONTAINER_RUNNING"
            && st["metadata"]["name"] == "crictl-web-ctr"
            && is_time(&st["startedAt"])
            && st["image"]["image"].as_str().is_some_and(|i| !i.is_empty())
            && st["logPath"]
                .as_str()
                .is_some_and(|p| p.ends_with("crictl-web-ctr/0.log")),
        "inspect: {v:#}"
    );
    ensure!(
        num(&v["info"]["pid"]).is_some_and(|p| p > 0),
        "inspect (verbose): info.pid: {v:#}"
    );
    let v = c.json(&["inspect", "-q", &c1])?;
    ensure!(v.get("info").is_none(), "inspect -q: {v:#}");
    let out = c.ok(&["inspect", "-o", "table", &c1])?;
    ensure!(
        out.contains(&c1) && out.to_lowercase().contains("running"),
        "inspect -o table:\n{out}"
    );

    // ---- logs: stdout to stdout, stderr to stderr
    s.wait_logs(&c1, "out-1")?;
    let out = wait_for("err-1 in crictl logs' stderr", T, || {
        let o = c.run(&["logs", &c1])?;
        Ok(o.stderr.contains("err-1").then_some(o))
    })?;
    ensure!(
        out.status.success() && out.stdout == "out-1\n" && out.stderr == "err-1\n",
        "logs:\n{out}"
    );
    logs_verbs(&s, &web, &web_file)?;

    // ---- stats
    let out = c.ok(&["stats"])?;
    ensure!(
        table_header(&out) == ["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"],
        "stats header:\n{out}"
    );
    let rows = parse_table(&out)?;
    let r = rows_where(&rows, "CONTAINER", short(&c1));
    ensure!(
        r.len() == 1 && r[0]["NAME"] == "crictl-web-ctr" && r[0]["MEM"].ends_with('B'),
        "stats:\n{out}"
    );
    let v = c.json(&["stats", "-o", "json"])?;
    let st = v["stats"].as_array().context("stats -o json: no stats")?;
    let ids: BTreeSet<String> = st
        .iter()
        .filter_map(|x| x["attributes"]["id"].as_str().map(str::to_string))
        .collect();
    ensure!(ids == set_of(&[&c1, &c3]), "stats -o json ids: {v:#}");
    let x = st
        .iter()
        .find(|x| x["attributes"]["id"] == c1.as_str())
        .context("stats c1")?;
    ensure!(
        x["attributes"]["metadata"]["name"] == "crictl-web-ctr"
            && num(&x["cpu"]["usageCoreNanoSeconds"]["value"]).is_some_and(|n| n > 0)
            && num(&x["memory"]["workingSetBytes"]["value"]).is_some_and(|n| n > 0)
            && num(&x["cpu"]["timestamp"]).is_some_and(|n| n > 0),
        "stats -o json: {x:#}"
    );
    let one = |args: &[&str]| -> Result<Vec<String>> {
        let mut a = vec!["stats", "-o", "json"];
        a.extend_from_slice(args);
        let v = c.json(&a)?;
        Ok(v["stats"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["attributes"]["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    };
    ensure!(one(&["--id", &c1])? == [c1.clone()], "stats --id");
    ensure!(one(&["--pod", &db])? == [c3.clone()], "stats --pod");
    ensure!(
        one(&["--label", "role=db"])? == [c3.clone()],
        "stats --label"
    );
    let all = set(&one(&["-a"])?);
    ensure!(all.contains(&c1) && all.contains(&c3), "stats -a: {all:?}");

    // ---- statsp
    let out = c.ok(&["statsp"])?;
    ensure!(
        table_header(&out) == ["POD", "POD ID", "CPU %", "MEM"],
        "statsp header:\n{out}"
    );
    let rows = parse_table(&out)?;
    ensure!(
        rows_where(&rows, "POD ID", short(&web)).len() == 1
            && rows_where(&rows, "POD", "crictl-db").len() == 1,
        "statsp:\n{out}"
    );
    let v = c.json(&["statsp", "-o", "json"])?;
    let st = v["stats"].as_array().context("statsp -o json: no stats")?;
    let w = st
        .iter()
        .find(|x| x["attributes"]["id"] == web.as_str())
        .with_context(|| format!("statsp -o json: no {web}: {v:#}"))?;
    ensure!(
        w["attributes"]["metadata"]["name"] == "crictl-web"
            && num(&w["linux"]["cpu"]["usageCoreNanoSeconds"]["value"]).is_some_and(|n| n > 0)
            && num(&w["linux"]["memory"]["workingSetBytes"]["value"]).is_some_and(|n| n > 0)
            && w["linux"]["containers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["attributes"]["id"] == c1.as_str())),
        "statsp -o json: {w:#}"
    );
    let v = c.json(&["statsp", "-o", "json", "--id", &db])?;
    ensure!(
        v["stats"]
            .as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["attributes"]["id"] == db.as_str()),
        "statsp --id: {v:#}"
    );
    let v = c.json(&["statsp", "-o", "json", "--label", "app=web"])?;
    ensure!(
        v["stats"]
            .as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["attributes"]["id"] == web.as_str()),
        "statsp --label: {v:#}"
    );

    // ---- metricsp
    let v = c.json(&["metricsp"])?;
    let pm = v["podMetrics"]
        .as_array()
        .with_context(|| format!("metricsp: no podMetrics: {v:#}"))?;
    ensure!(
        pm.iter().any(|m| m["podSandboxId"] == web.as_str()),
        "metricsp: no metrics for {web}: {v:#}"
    );

    // ---- update
    let out = c.ok(&[
        "update",
        "--memory",
        "67108864",
        "--cpu-period",
        "100000",
        "--cpu-quota",
        "50000",
        "--cpu-share",
        "512",
        &c1,
    ])?;
    ensure!(out.trim() == c1, "update printed {out:?}");
    let lim = c.ok(&[
        "exec",
        "-s",
        &c1,
        "cat",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ])?;
    ensure!(
        lim.trim() == "67108864",
        "memory limit after update: {lim:?}"
    );
    let quota = c.ok(&[
        "exec",
        "-s",
        &c1,
        "cat",
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    ])?;
    ensure!(quota.trim() == "50000", "cfs quota after update: {quota:?}");
    let shares = c.ok(&["exec", "-s", &c1, "cat", "/sys/fs/cgroup/cpu/cpu.shares"])?;
    ensure!(
        shares.trim() == "512",
        "cpu shares after update: {shares:?}"
    );
    let v = s.inspect(&c1)?;
    let res = &v["status"]["resources"]["linux"];
    ensure!(
        num(&res["memoryLimitInBytes"]) == Some(67108864) && num(&res["cpuQuota"]) == Some(50000),
        "inspect after update: status.resources.linux should show the new limits: {v:#}"
    );

    // ---- checkpoint: not implemented, and it says so (crictl 1.29 itself insists on
    // --export before it calls the runtime)
    let out = c.fails(&["checkpoint", &c1])?;
    ensure!(
        out.stderr.contains("--export"),
        "checkpoint without --export:\n{out}"
    );
    let tar = s.dir().join("ckpt.tar");
    let out = c.fails(&[
        "checkpoint",
        "--export",
        tar.to_str().context("utf-8")?,
        &c1,
    ])?;
    ensure!(
        out.stderr.contains("Unimplemented")
            && out.stderr.contains("berth does not checkpoint")
            && !tar.exists(),
        "checkpoint --export should fail with a clear Unimplemented message:\n{out}"
    );

    // ---- stop: SIGTERM, exit 0 well before the timeout
    let t0 = Instant::now();
    let out = c.ok(&["stop", "--timeout", "20", &c1])?;
    ensure!(out.trim() == c1, "stop printed {out:?}");
    ensure!(
        t0.elapsed() < Duration::from_secs(15),
        "stop took {:?}: SIGTERM was not delivered",
        t0.elapsed()
    );
    let v = s.inspect(&c1)?;
    ensure!(
        v["status"]["state"] == "CONTAINER_EXITED"
            && num(&v["status"]["exitCode"]).unwrap_or(0) == 0
            && v["status"]["reason"] == "Completed",
        "after stop: {v:#}"
    );
    // stopping again is fine
    c.ok(&["stop", &c1])?;

    // ---- rm
    let out = c.ok(&["rm", &c1])?;
    ensure!(out.trim() == c1, "rm printed {out:?}");
    ensure!(
        !s.ids(&["ps", "-a", "-q"])?.contains(&c1),
        "rm left it listed"
    );
    let out = c.fails(&["inspect", &c1])?;
    ensure!(
        out.stderr.to_lowercase().contains("not found"),
        "inspect of a removed container:\n{out}"
    );
    // a running container needs -f
    let out = c.fails(&["rm", &c3])?;
    ensure!(
        out.stderr.contains("running") || out.stderr.contains("stop"),
        "rm of a running container without -f:\n{out}"
    );
    let out = c.ok(&["rm", "-f", &c3])?;
    ensure!(lines(&out).contains(&c3), "rm -f printed {out:?}");
    ensure!(!s.ids(&["ps", "-a", "-q"])?.contains(&c3), "rm -f left it");

    // ---- events: created, started, stopped, deleted for c1, in that order
    let evs = events.wait_stdout("the events of c1", T, |o| {
        json_stream(o).iter().any(|e| {
            e["containerId"] == c1.as_str() && e["containerEventType"] == "CONTAINER_DELETED_EVENT"
        })
    })?;
    let evs = json_stream(&evs);
    let c1_types: Vec<&str> = evs
        .iter()
        .filter(|e| e["containerId"] == c1.as_str())
        .filter_map(|e| e["containerEventType"].as_str())
        .collect();
    ensure!(
        c1_types
            == [
                "CONTAINER_CREATED_EVENT",
                "CONTAINER_STARTED_EVENT",
                "CONTAINER_STOPPED_EVENT",
                "CONTAINER_DELETED_EVENT"
            ],
        "events for {c1}: {c1_types:?}\n{evs:#?}"
    );
    let started = evs
        .iter()
        .find(|e| {
            e["containerId"] == c1.as_str() && e["containerEventType"] == "CONTAINER_STARTED_EVENT"
        })
        .context("no started event")?;
    ensure!(
        started["podSandboxStatus"]["id"] == web.as_str()
            && is_time(&started["createdAt"])
            && started["containersStatuses"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["id"] == c1.as_str())),
        "started event: {started:#}"
    );

    // ---- stopp, rmp
    let out = c.ok(&["stopp", &db])?;
    ensure!(
        out.trim() == format!("Stopped sandbox {db}"),
        "stopp: {out:?}"
    );
    ensure!(
        q_pods(&s, &["--state", "notready"])? == [db.clone()],
        "pods --state notready"
    );
    ensure!(
        q_pods(&s, &["--state", "ready"])? == [web.clone()],
        "pods --state ready"
    );
    let rows = parse_table(&c.ok(&["pods"])?)?;
    ensure!(
        rows_where(&rows, "POD ID", short(&db))
            .first()
            .is_some_and(|r| r["STATE"] == "NotReady"),
        "pods after stopp: {rows:?}"
    );
    let v = c.json(&["inspectp", &db])?;
    ensure!(
        v["status"]["state"] == "SANDBOX_NOTREADY",
        "inspectp after stopp: {v:#}"
    );
    let out = c.ok(&["rmp", &db])?;
    ensure!(
        out.trim() == format!("Removed sandbox {db}"),
        "rmp: {out:?}"
    );
    let out = c.fails(&["inspectp", &db])?;
    ensure!(
        out.stderr.to_lowercase().contains("not found") && out.stderr.contains(&db[..12]),
        "inspectp of a removed pod should say it is not found:\n{out}"
    );
    // a ready pod needs -f
    let out = c.fails(&["rmp", &web])?;
    ensure!(
        out.stderr.contains("ready") || out.stderr.contains("stop"),
        "rmp of a ready pod without -f:\n{out}"
    );
    let out = c.ok(&["rmp", "-f", &web])?;
    ensure!(
        lines(&out).contains(&format!("Removed sandbox {web}")),
        "rmp -f: {out:?}"
    );
    ensure!(q_pods(&s, &[])?.is_empty(), "pods left after rmp");

    // ---- events for the pods (ids of sandboxes in containerId, as containerd
    // sends them): stopped, then deleted
    let evs = events.wait_stdout("the events of the removed pods", T, |o| {
        let evs = json_stream(o);
        [&web, &db].iter().all(|p| {
            evs.iter().any(|e| {
                e["containerId"] == p.as_str()
                    && e["containerEventType"] == "CONTAINER_DELETED_EVENT"
            })
        })
    })?;
    let evs = json_stream(&evs);
    for p in [&web, &db] {
        let types: Vec<&str> = evs
            .iter()
            .filter(|e| e["containerId"] == p.as_str())
            .filter_map(|e| e["containerEventType"].as_str())
            .collect();
        ensure!(
            types.ends_with(&["CONTAINER_STOPPED_EVENT", "CONTAINER_DELETED_EVENT"]),
            "events for pod {p}: {types:?}\n{evs:#?}"
        );
        let stopped = evs
            .iter()
            .find(|e| {
                e["containerId"] == p.as_str()
                    && e["containerEventType"] == "CONTAINER_STOPPED_EVENT"
            })
            .context("no stopped event")?;
        ensure!(
            stopped["podSandboxStatus"]["id"] == p.as_str()
                && stopped["podSandboxStatus"]["state"] == "SANDBOX_NOTREADY",
            "pod stopped event: {stopped:#}"
        );
    }
    ensure!(
        events.try_status()?.is_none(),
        "crictl events ended:\n{}",
        events.stderr()
    );
    events.kill();
    ensure!(
        s.ids(&["ps", "-a", "-q"])?.is_empty(),
        "containers left after rmp"
    );

    // ---- run: pulls the image, runs a pod and a container
    let reg = Registry::start_default()?;
    reg.push_layout(fixtures::busybox()?, "crictl/busybox:1")?;
    let image = reg.reference("crictl/busybox:1");
    let run_pod = s.pod_file("crictl-run", "crictl-a", &[("app", "run")])?;
    let run_ctr = s.ctr_file(
        "crictl-run-ctr",
        0,
        Some(&image),
        &[
            "sh",
            "-c",
            "echo hello-from-run; trap 'exit 0' TERM; while :; do sleep 3600 & wait; done",
        ],
        json!({}),
    )?;
    let rc = full_id(&c.ok(&["run", &run_ctr, &run_pod])?)?;
    s.wait_state(&rc, "CONTAINER_RUNNING")?;
    s.wait_logs(&rc, "hello-from-run")?;
    let v = c.json(&["ps", "-o", "json", "--id", &rc])?;
    let run_pod_id = v["containers"][0]["podSandboxId"]
        .as_str()
        .with_context(|| format!("ps: {v:#}"))?
        .to_string();
    ensure!(
        q_pods(&s, &[])? == [run_pod_id.clone()],
        "run: its pod is listed"
    );
    ensure!(
        s.ids(&["images", "-q"])?
            .contains(&fixtures::busybox()?.config_digest),
        "run: the image was pulled"
    );
    c.ok(&["rmp", "-f", &run_pod_id])?;
    ensure!(q_pods(&s, &[])?.is_empty(), "pods left after the run pod");

    // ---- rm -a and rmp -a
    let a = s.runp(&s.pod_file("crictl-all-1", "crictl-a", &[])?)?;
    let a_file = s.pod_file("crictl-all-2", "crictl-a", &[])?;
    let b = s.runp(&a_file)?;
    let x = s.create(
        &b,
        &s.ctr_file("crictl-x", 0, None, &["true"], json!({}))?,
        &a_file,
    )?;
    s.start(&x)?;
    s.wait_state(&x, "CONTAINER_EXITED")?;
    let out = c.ok(&["rm", "-a"])?;
    ensure!(lines(&out).contains(&x), "rm -a: {out:?}");
    ensure!(
        s.ids(&["ps", "-a", "-q"])?.is_empty(),
        "rm -a left containers"
    );
    let out = c.ok(&["rmp", "-a", "-f"])?;
    for p in [&a, &b] {
        ensure!(
            lines(&out).contains(&format!("Removed sandbox {p}")),
            "rmp -a -f: {out:?}"
        );
    }
    ensure!(q_pods(&s, &[])?.is_empty(), "rmp -a left pods");
    Ok(())
}

fn q_pods(s: &Suite, args: &[&str]) -> Result<Vec<String>> {
    let mut a = vec!["pods", "-q"];
    a.extend_from_slice(args);
    s.ids(&a)
}

/// logs --tail, --timestamps, --since, -f (until the container exits), -p.
fn logs_verbs(s: &Suite, pod: &str, pod_file: &str) -> Result<()> {
    let c = &s.c;
    // Five lines, then one per line written to the FIFO /tmp/go (by `exec`), then exit.
    // The last read waits for the writer's end of file, which comes only as the writer
    // exits (it execs the applet that holds the FIFO): were the container to exit while
    // the exec is still running, the exec would be killed with it (exit 137).
    let cmd = "mkfifo /tmp/go; for i in 1 2 3 4 5; do echo line-$i; done; \
               read x < /tmp/go; echo after-$x; y=$(cat /tmp/go); echo bye-$y";
    let f = s.ctr_file("crictl-logger", 0, None, &["sh", "-c", cmd], json!({}))?;
    let l = s.create(pod, &f, pod_file)?;
    s.start(&l)?;
    let all = s.wait_logs(&l, "line-5")?;
    ensure!(
        all == "line-1\nline-2\nline-3\nline-4\nline-5\n",
        "logs: {all:?}"
    );
    let out = c.ok(&["logs", "--tail", "2", &l])?;
    ensure!(out == "line-4\nline-5\n", "logs --tail 2: {out:?}");
    let out = c.ok(&["logs", "--tail", "0", &l])?;
    ensure!(out.is_empty(), "logs --tail 0: {out:?}");
    let out = c.ok(&["logs", "--timestamps", &l])?;
    let ls: Vec<&str> = out.lines().collect();
    ensure!(ls.len() == 5, "logs --timestamps: {out:?}");
    for (i, line) in ls.iter().enumerate() {
        let (ts, text) = line
            .split_once(' ')
            .with_context(|| format!("logs -t line without a timestamp: {line:?}"))?;
        ensure!(
            is_rfc3339(ts) && text == format!("line-{}", i + 1),
            "logs --timestamps line {line:?}"
        );
    }
    let out = c.ok(&["logs", "-t", "--tail", "1", &l])?;
    ensure!(
        out.lines().count() == 1 && out.trim_end().ends_with(" line-5"),
        "logs -t --tail 1: {out:?}"
    );
    let out = c.ok(&["logs", "--limit-bytes", "10", &l])?;
    ensure!(out == "line-1\nlin", "logs --limit-bytes 10: {out:?}");

    // --since: a time after line-5 was logged shows only what came later.
    let since = unix_timestamp_now();
    c.ok(&["exec", "-s", &l, "sh", "-c", "echo go > /tmp/go"])?;
    s.wait_logs(&l, "after-go")?;
    let out = c.ok(&["logs", "--since", &since, &l])?;
    ensure!(out == "after-go\n", "logs --since {since}: {out:?}");
    let out = c.ok(&["logs", "--since", "1h", &l])?;
    ensure!(out.lines().count() == 6, "logs --since 1h: {out:?}");

    // -f: prints what is there, then what comes, and ends when the container does.
    let mut follow = c.spawn(&["logs", "-f", &l])?;
    follow.wait_stdout("logs -f to print the existing lines", T, |o| {
        o.contains("after-go")
    })?;
    c.ok(&["exec", "-s", &l, "sh", "-c", "exec echo end > /tmp/go"])?;
    follow.wait_stdout("logs -f to print a new line", T, |o| o.contains("bye-end"))?;
    let st = follow
        .wait_exit(T)
        .context("logs -f did not end with its container")?;
    let out = follow.into_out();
    ensure!(st.success(), "logs -f:\n{out}");
    ensure!(
        out.stdout == "line-1\nline-2\nline-3\nline-4\nline-5\nafter-go\nbye-end\n",
        "logs -f:\n{out}"
    );
    let v = s.wait_state(&l, "CONTAINER_EXITED")?;
    ensure!(
        num(&v["status"]["exitCode"]).unwrap_or(0) == 0,
        "logger: {v:#}"
    );

    // -p: the log of attempt N-1 of the same container name.
    let f0 = s.ctr_file(
        "crictl-prev",
        0,
        None,
        &["echo", "from-attempt-0"],
        json!({}),
    )?;
    let a0 = s.create(pod, &f0, pod_file)?;
    s.start(&a0)?;
    s.wait_state(&a0, "CONTAINER_EXITED")?;
    let f1 = s.ctr_file(
        "crictl-prev",
        1,
        None,
        &["echo", "from-attempt-1"],
        json!({}),
    )?;
    let a1 = s.create(pod, &f1, pod_file)?;
    s.start(&a1)?;
    s.wait_state(&a1, "CONTAINER_EXITED")?;
    let out = c.ok(&["logs", &a1])?;
    ensure!(out == "from-attempt-1\n", "logs of attempt 1: {out:?}");
    let out = c.ok(&["logs", "-p", &a1])?;
    ensure!(out == "from-attempt-0\n", "logs -p of attempt 1: {out:?}");
    let out = c.ok(&["logs", "--previous", &a1])?;
    ensure!(out == "from-attempt-0\n", "logs --previous: {out:?}");
    let out = c.fails(&["logs", "-p", &a0])?;
    ensure!(
        out.stderr
            .contains("Previous terminated container crictl-prev not found"),
        "logs -p of attempt 0:\n{out}"
    );
    for id in [&l, &a0, &a1] {
        c.ok(&["rm", id])?;
    }
    Ok(())
}

// ============================================================ streaming

#[test]
#[ignore = "needs upstream crictl (../shared/conformance): make conformance runs them"]
fn crictl_exec_attach_port_forward() -> Result<()> {
    let s = Suite::new()?;
    let c = &s.c;
    let pod_file = s.pod_file("crictl-stream", "crictl-a", &[("app", "stream")])?;
    let p = s.runp(&pod_file)?;
    let web = s.create(
        &p,
        &s.ctr_file(
            "web",
            0,
            None,
            &[
                "sh",
                "-c",
                "mkdir -p /www && echo hello-from-crictl > /www/index.html && exec httpd -f -p 80 -h /www",
            ],
            json!({}),
        )?,
        &pod_file,
    )?;
    s.start(&web)?;
    s.wait_state(&web, "CONTAINER_RUNNING")?;

    // ---- exec -s (ExecSync)
    let out = wait_for("httpd's page", T, || {
        let o = c.run(&["exec", "-s", &web, "cat", "/www/index.html"])?;
        Ok(o.stdout.contains("hello-from-crictl").then_some(o))
    })?;
    ensure!(out.status.success(), "exec -s:\n{out}");
    let out = c.run(&[
        "exec",
        "-s",
        &web,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ])?;
    // crictl 1.29 turns a non-zero exit into an error carrying the code and stderr.
    ensure!(
        out.code() == Some(1) && out.stderr.contains("exited with 3: err"),
        "exec -s of a command exiting 3 should fail saying so:\n{out}"
    );
    // --timeout: the command is stopped after it, crictl fails
    let t0 = Instant::now();
    let out = c.run(&["exec", "-s", "--timeout", "1", &web, "sleep", "600"])?;
    let took = t0.elapsed();
    ensure!(
        !out.status.success(),
        "exec -s --timeout 1 of sleep 600 succeeded:\n{out}"
    );
    ensure!(
        took < Duration::from_secs(20),
        "exec -s --timeout 1 took {took:?}:\n{out}"
    );
    ensure!(
        out.stderr.to_lowercase().contains("timeout")
            || out.stderr.to_lowercase().contains("deadline"),
        "exec --timeout should say it timed out:\n{out}"
    );
    // the timed-out command is gone
    wait_for("the timed-out sleep to be killed", T, || {
        let o = c.ok(&["exec", "-s", &web, "ps"])?;
        Ok((!o.contains("sleep 600")).then_some(()))
    })?;

    // ---- exec (streaming, SPDY): stdout and stderr apart, exit codes
    let out = c.run(&["exec", &web, "sh", "-c", "echo out; echo err >&2"])?;
    ensure!(
        out.status.success() && out.stdout == "out\n" && out.stderr == "err\n",
        "exec:\n{out}"
    );
    let out = c.run(&["exec", &web, "sh", "-c", "exit 3"])?;
    ensure!(
        !out.status.success() && out.stderr.contains("exit code 3"),
        "exec of a command exiting 3:\n{out}"
    );
    // -i: stdin to the command, EOF ends it
    let out = c.run_input(
        &[
            "exec",
            "-i",
            &web,
            "sh",
            "-c",
            "while read l; do echo got:$l; done; echo eof",
        ],
        Some(b"one\ntwo\n"),
        T,
    )?;
    ensure!(
        out.status.success() && out.stdout == "got:one\ngot:two\neof\n",
        "exec -i:\n{out}"
    );
    // -it: a shell on a terminal
    let mut t = c.spawn_pty(&["exec", "-it", &web, "sh"])?;
    t.send(b"echo typed-$((6*7))\r")?;
    t.wait_output("typed-42", T)?;
    t.send(b"stty size\r")?;
    t.wait_output("40 120", T)?;
    // a resize of the local terminal reaches the remote one
    t.resize(50, 100)?;
    let deadline = Instant::now() + T;
    loop {
        t.send(b"stty size\r")?;
        if t.wait_output("50 100", Duration::from_secs(1)).is_ok() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "exec -it: the resize to 50x100 never reached the container: {:?}",
            t.output()
        );
    }
    t.send(b"[ -t 0 ] && echo is-a-$((1+1))-tty\r")?;
    t.wait_output("is-a-2-tty", T)?;
    t.send(b"exit 0\r")?;
    let st = t.wait_exit(T)?;
    ensure!(st.success(), "exec -it exited {st}:\n{:?}", t.output());
    // --timeout on a streaming exec is accepted; a short command finishes
    let out = c.run(&["exec", "--timeout", "5", &web, "echo", "in-time"])?;
    ensure!(
        out.status.success() && out.stdout == "in-time\n",
        "exec --timeout:\n{out}"
    );

    // ---- attach -it: a container with a terminal
    let tty_ctr = s.create(
        &p,
        &s.ctr_file("tty", 0, None, &["sh"], json!({"stdin": true, "tty": true}))?,
        &pod_file,
    )?;
    s.start(&tty_ctr)?;
    s.wait_state(&tty_ctr, "CONTAINER_RUNNING")?;
    let mut t = c.spawn_pty(&["attach", "-it", &tty_ctr])?;
    // The stream may not be up when the first line is typed: type until it answers.
    let deadline = Instant::now() + T;
    loop {
        t.send(b"echo attached-$((2*3))\r")?;
        if t.wait_output("attached-6", Duration::from_secs(2)).is_ok() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "attach -it: the shell never answered: {:?}",
            t.output()
        );
    }
    t.send(b"exit\r")?;
    t.wait_exit(T)?;
    s.wait_state(&tty_ctr, "CONTAINER_EXITED")?;

    // ---- attach (output only) and attach -i (stdin without a terminal)
    let reader = s.create(
        &p,
        &s.ctr_file(
            "reader",
            0,
            None,
            &["sh", "-c", "echo ready; while read l; do echo got:$l; done"],
            json!({"stdin": true}),
        )?,
        &pod_file,
    )?;
    s.start(&reader)?;
    s.wait_logs(&reader, "ready")?;
    let watcher = c.spawn(&["attach", &reader])?;
    let mut a = c.spawn(&["attach", "-i", &reader])?;
    // Each attach sees output from when its stream is up: type until both show it.
    let mut n = 0;
    wait_for(
        "attach -i to pass stdin through, attach to show it",
        T,
        || {
            n += 1;
            a.write_stdin(format!("hello-{n}\n").as_bytes())?;
            Ok(
                (a.stdout().contains("got:hello-") && watcher.stdout().contains("got:hello-"))
                    .then_some(()),
            )
        },
    )
    .with_context(|| {
        format!(
            "attach -i: stdout {:?} stderr {:?}; attach: stdout {:?} stderr {:?}",
            a.stdout(),
            a.stderr(),
            watcher.stdout(),
            watcher.stderr()
        )
    })?;
    ensure!(
        !a.stdout().contains("ready"),
        "attach printed output from before it attached: {:?}",
        a.stdout()
    );
    drop(a);
    drop(watcher);
    s.wait_logs(&reader, "got:hello-1")?;

    // ---- port-forward to httpd on the pod's port 80
    let port = free_port()?;
    let mut pf = c.spawn(&["port-forward", &p, &format!("{port}:80")])?;
    pf.wait_stdout("port-forward to listen", T, |o| {
        o.contains(&format!("Forwarding from 127.0.0.1:{port} -> 80"))
    })?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let pf_out = |pf: &integration::crictl::Background| {
        format!(
            "port-forward stdout: {:?}\nstderr: {:?}",
            pf.stdout(),
            pf.stderr()
        )
    };
    // Responses read up to their Content-Length: the forwarding itself.
    for i in 0..3 {
        let (head, body) = http_get_sized(addr, "/index.html")
            .with_context(|| format!("GET #{i} through crictl port-forward\n{}", pf_out(&pf)))?;
        ensure!(
            head.starts_with("HTTP/1.") && head.contains(" 200 ") && body == "hello-from-crictl\n",
            "GET #{i} through crictl port-forward: {head:?} {body:?}\n{}",
            pf_out(&pf)
        );
    }
    // The pod's side closes first (busybox httpd closes after each response) while
    // the local client keeps its side open, as HTTP/1.0 clients reading to EOF do:
    // the local connection must then end too (kubelet's and containerd's servers
    // close the stream pair once one direction is done, after at most 1 s).
    // Checked last, after the remaining verbs ran.
    let eof_check = match cri::http_get_raw(addr, "/index.html") {
        Ok(resp) if resp.contains(" 200 ") && resp.ends_with("hello-from-crictl\n") => Ok(()),
        Ok(resp) => Err(anyhow::anyhow!("GET read to EOF: {resp:?}")),
        Err(e) => Err(anyhow::anyhow!(
            "port-forward: the pod closed the connection after its response, but the \
             local connection never reached EOF (read to EOF failed after 5 s: {e})\n{}",
            pf_out(&pf)
        )),
    };
    ensure!(
        !pf.stderr().contains("error copying"),
        "port-forward printed errors: {}",
        pf.stderr()
    );
    pf.kill();

    let out = c.ok(&["rmp", "-f", &p])?;
    ensure!(
        lines(&out).contains(&format!("Removed sandbox {p}")),
        "rmp -f: {out:?}"
    );
    eof_check
}

/// GET `path` over a fresh TCP connection; reads the head and exactly
/// Content-Length bytes of body (not waiting for EOF).
fn http_get_sized(addr: std::net::SocketAddr, path: &str) -> Result<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).context("reading the response head")?;
        ensure!(
            n > 0,
            "EOF before the end of the head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .with_context(|| format!("no Content-Length in {head:?}"))?;
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).context("reading the response body")?;
        ensure!(n > 0, "EOF inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((
        head,
        String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned(),
    ))
}

/// Guard against a silently empty run: the suite's own checks of its helpers.
#[test]
fn crictl_helpers_parse_what_crictl_prints() -> Result<()> {
    ensure!(recent("2 seconds ago") && recent("About a minute ago"));
    ensure!(!recent("54 years ago") && !recent("Running"));
    ensure!(is_rfc3339("2024-01-02T03:04:05.123456789Z"));
    ensure!(!is_rfc3339("line-1"));
    let kv = key_values("Version:  0.1.0\nRuntimeName:  berth\n");
    ensure!(kv["RuntimeName"] == "berth");
    ensure!(short("sha256:0123456789abcdef") == "0123456789abc");
    ensure!(num(&json!("12")) == Some(12) && num(&json!(3)) == Some(3));
    if full_id("abc").is_ok() {
        bail!("a short id was accepted");
    }
    Ok(())
}
