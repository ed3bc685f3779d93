//! SIGKILL berthd in the middle of bursts of metadata writes, many times, and
//! check that no acknowledged write is lost and no record is torn (issue 13,
//! "metadata durability"; sled 0.34 is the store under test). Each write is
//! an image tag through `berthctl`: acknowledged means berthctl exited 0.
//! `BERTH_DURABILITY_CYCLES` sets the number of kills (default 15 here;
//! `make durability` runs 1000).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use integration::daemon::Daemon;
use integration::fixtures;

fn names(d: &Daemon) -> Result<BTreeSet<String>> {
    Ok(d.ctl_ok(["images", "ls", "-q"])?
        .lines()
        .map(str::to_string)
        .collect())
}

#[test]
fn acknowledged_metadata_writes_survive_sigkill() -> Result<()> {
    let cycles: u32 = std::env::var("BERTH_DURABILITY_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let mut d = Daemon::start()?;
    let tar = d.dir().join("box.tar");
    fixtures::write_docker_archive(fixtures::busybox()?, "src:1", &tar)?;
    d.ctl_ok(["images", "import", tar.to_str().context("path")?])?;

    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut acked_total = 0usize;
    let mut expected: BTreeSet<String> = names(&d)?;
    let started = Instant::now();
    for cycle in 0..cycles {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (acked, stop) = (acked.clone(), stop.clone());
            let ctl = integration::daemon::bin_path("berthctl")?;
            let socket = d.socket_path();
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let name = format!("c{cycle}-{i}:t");
                    let ok = std::process::Command::new(&ctl)
                        .arg("--address")
                        .arg(&socket)
                        .args(["images", "tag", "src:1", &name])
                        .output()
                        .is_ok_and(|o| o.status.success());
                    if ok {
                        acked
                            .lock()
                            .unwrap()
                            .push(format!("docker.io/library/{name}"));
                    }
                    i += 1;
                }
            })
        };
        // A kill at a random moment inside the burst (20-250 ms in).
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(20 + (seed >> 33) % 230));
        d.kill9()?;
        stop.store(true, Ordering::SeqCst);
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
        d.restart()?;
        let have = names(&d)?;
        let acked = acked.lock().unwrap().clone();
        acked_total += acked.len();
        expected.extend(acked);
        let lost: Vec<&String> = expected.difference(&have).collect();
        ensure!(
            lost.is_empty(),
            "cycle {cycle}: acknowledged writes lost after SIGKILL: {lost:?}"
        );
        // Writes in flight at the kill may or may not be there; either way
        // they are whole records from now on.
        expected = have;
    }
    ensure!(
        !d.log().contains("quarantin"),
        "a record was torn: {}",
        integration::daemon::tail(&d.log(), 20)
    );
    eprintln!(
        "{cycles} SIGKILLs during metadata write bursts: {acked_total} acknowledged writes, 0 lost, \
         0 torn records ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
