//! The run's tables and its JSON form.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::faults::OTHER_KINDS;
use super::{Ctx, StatsInner};
use crate::bench::{median, percentile, print_table};

fn p(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(if q == 50.0 {
        median(&s)
    } else {
        percentile(&s, q)
    })
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{:.1}", x * 1000.0))
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.2}"))
}

/// Violations (or leaks) by kind: count and the first one.
fn by_kind<'a>(
    items: impl Iterator<Item = (&'a str, String)>,
) -> BTreeMap<&'a str, (usize, String)> {
    let mut m: BTreeMap<&str, (usize, String)> = BTreeMap::new();
    for (k, first) in items {
        let e = m.entry(k).or_insert((0, first));
        e.0 += 1;
    }
    m
}

pub fn print(ctx: &Ctx, wall: f64) {
    let st = ctx.stats();
    let rpcs: u64 = st.rpcs.values().sum();
    let errors: u64 = st
        .rpcs
        .iter()
        .filter(|((_, c), _)| c != "Ok")
        .map(|(_, n)| n)
        .sum();
    let rss_max = st.rss.iter().map(|r| r.1).max();
    let rows = vec![
        vec!["run time s".into(), format!("{wall:.0}")],
        vec![
            "pod workers / long-lived pods".into(),
            format!("{} / {}", ctx.opts.workers, ctx.opts.long_lived),
        ],
        vec!["pod cycles finished".into(), st.cycles.to_string()],
        vec![
            "pods abandoned and removed".into(),
            st.abandoned.to_string(),
        ],
        vec![
            "creates adopted after a lost answer".into(),
            st.adopted.to_string(),
        ],
        vec!["CRI calls / not OK".into(), format!("{rpcs} / {errors}")],
        vec![
            "pulls OK / failed".into(),
            format!("{} / {}", st.pulls_ok, st.pulls_failed),
        ],
        vec!["invariant checks".into(), st.checks.to_string()],
        vec!["log lines checked".into(), st.log_lines.to_string()],
        vec![
            "restart to serving p50 / max s".into(),
            format!(
                "{} / {}",
                secs(p(&st.restarts, 50.0)),
                secs(p(&st.restarts, 100.0))
            ),
        ],
        vec![
            "CRI latency p50 / p99 ms (normal)".into(),
            format!(
                "{} / {}",
                ms(p(&st.lat_normal, 50.0)),
                ms(p(&st.lat_normal, 99.0))
            ),
        ],
        vec![
            "CRI latency p50 / p99 ms (recovery)".into(),
            format!(
                "{} / {}",
                ms(p(&st.lat_recovery, 50.0)),
                ms(p(&st.lat_recovery, 99.0))
            ),
        ],
        vec![
            "lister round p50 / p99 / max ms".into(),
            format!(
                "{} / {} / {}",
                ms(p(&st.lat_lister, 50.0)),
                ms(p(&st.lat_lister, 99.0)),
                ms(p(&st.lat_lister, 100.0))
            ),
        ],
        vec![
            "berthd VmRSS first / last / max MiB".into(),
            format!(
                "{} / {} / {}",
                mib(st.rss.first().map(|r| r.1)),
                mib(st.rss.last().map(|r| r.1)),
                mib(rss_max)
            ),
        ],
        vec![
            "partial downloads kept for resume".into(),
            format!(
                "{} ({} MiB)",
                st.kept_ingests.0,
                mib(Some(st.kept_ingests.1 / 1024))
            ),
        ],
        vec!["violations".into(), st.violations.len().to_string()],
        vec!["leaks".into(), st.leaks.len().to_string()],
    ];
    println!();
    print_table(&["chaos run", "value"], &rows);

    println!();
    let mut kinds = vec!["berthd-kill"];
    kinds.extend(OTHER_KINDS);
    let rows: Vec<Vec<String>> = kinds
        .iter()
        .map(|k| {
            let f = st.faults.get(k).copied().unwrap_or_default();
            vec![k.to_string(), f.injected.to_string(), f.hit.to_string()]
        })
        .collect();
    print_table(&["fault", "injected", "hit"], &rows);

    println!();
    let v = by_kind(
        st.violations
            .iter()
            .map(|v| (v.kind, format!("{}: {}", v.object, v.detail))),
    );
    let l = by_kind(st.leaks.iter().map(|(k, w)| (*k, w.clone())));
    if v.is_empty() && l.is_empty() {
        println!("violations: 0, leaks: 0");
    } else {
        let mut rows: Vec<Vec<String>> = v
            .iter()
            .map(|(k, (n, first))| vec![format!("violation {k}"), n.to_string(), clip(first)])
            .collect();
        rows.extend(
            l.iter()
                .map(|(k, (n, first))| vec![format!("leak {k}"), n.to_string(), clip(first)]),
        );
        print_table(&["broken", "count", "first"], &rows);
    }

    println!();
    let mut methods: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for ((m, c), n) in &st.rpcs {
        *methods.entry(m).or_default().entry(c).or_default() += n;
    }
    let rows: Vec<Vec<String>> = methods
        .iter()
        .map(|(m, codes)| {
            let ok = codes.get("Ok").copied().unwrap_or(0);
            let other: Vec<String> = codes
                .iter()
                .filter(|(c, _)| **c != "Ok")
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            vec![m.to_string(), ok.to_string(), other.join(", ")]
        })
        .collect();
    print_table(&["CRI method", "OK", "other answers"], &rows);

    // What each kind of failed answer said (a kill's broken connection, an
    // injected fault's error, or a bug).
    println!();
    let rows: Vec<Vec<String>> = st
        .first_msg
        .iter()
        .flat_map(|((m, c), msgs)| {
            msgs.iter()
                .map(move |msg| vec![format!("{m} {c}"), clip(msg)])
        })
        .collect();
    if !rows.is_empty() {
        print_table(&["answer", "messages (first of each kind)"], &rows);
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn clip(s: &str) -> String {
    let one = s.replace('\n', " | ");
    if one.chars().count() > 110 {
        format!("{}...", one.chars().take(107).collect::<String>())
    } else {
        one
    }
}

pub fn json(ctx: &Ctx, wall: f64) -> Value {
    let st: &StatsInner = &ctx.stats();
    json!({
        "options": {
            "kills": ctx.opts.kills,
            "other_faults": ctx.opts.other_faults,
            "workers": ctx.opts.workers,
            "long_lived": ctx.opts.long_lived,
            "seed": ctx.opts.seed,
            "sandbox_mode": ctx.opts.sandbox_mode,
        },
        "run_secs": wall,
        "cycles": st.cycles,
        "abandoned": st.abandoned,
        "adopted": st.adopted,
        "rpcs": st.rpcs.iter().map(|((m, c), n)| json!({
            "method": m,
            "code": c,
            "count": n,
            "messages": st.first_msg.get(&(m.clone(), c.clone())),
        })).collect::<Vec<_>>(),
        "pulls_ok": st.pulls_ok,
        "pulls_failed": st.pulls_failed,
        "checks": st.checks,
        "log_lines": st.log_lines,
        "kept_ingests": {"count": st.kept_ingests.0, "bytes": st.kept_ingests.1},
        "restart_secs": {"p50": p(&st.restarts, 50.0), "max": p(&st.restarts, 100.0), "n": st.restarts.len()},
        "latency_secs": {
            "normal": {"p50": p(&st.lat_normal, 50.0), "p99": p(&st.lat_normal, 99.0)},
            "recovery": {"p50": p(&st.lat_recovery, 50.0), "p99": p(&st.lat_recovery, 99.0)},
            "lister_round": {"p50": p(&st.lat_lister, 50.0), "p99": p(&st.lat_lister, 99.0), "max": p(&st.lat_lister, 100.0)},
        },
        "rss_kib": st.rss.iter().map(|(t, k)| json!([t, k])).collect::<Vec<_>>(),
        "faults": st.faults.iter().map(|(k, f)| json!({"kind": k, "injected": f.injected, "hit": f.hit})).collect::<Vec<_>>(),
        "violations": st.violations.iter().map(|v| json!({"at": v.at, "kind": v.kind, "object": v.object, "detail": v.detail})).collect::<Vec<_>>(),
        "leaks": st.leaks.iter().map(|(k, w)| json!({"kind": k, "what": w})).collect::<Vec<_>>(),
    })
}

/// Whether the run passed: no violation, no leak.
pub fn passed(ctx: &Ctx) -> bool {
    let st = ctx.stats();
    st.violations.is_empty() && st.leaks.is_empty()
}
