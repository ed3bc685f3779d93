//! Store tests, including simulated crashes (files left as a crash would
//! leave them) and concurrent writers.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use crate::{ContentStore, Digest, Error, Expected};

fn store() -> (TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("content")).unwrap();
    (dir, store)
}

/// Deterministic pseudo-random bytes, so corruption is detectable.
fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn exp(d: &[u8]) -> Expected {
    Expected::new(Digest::of(d), Some(d.len() as u64))
}

fn ingest_dir(store: &ContentStore, reference: &str) -> PathBuf {
    store
        .root()
        .join("ingest")
        .join(hex::encode(Sha256::digest(reference.as_bytes())))
}

fn blob_entries(store: &ContentStore) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn ingest_entries(store: &ContentStore) -> usize {
    fs::read_dir(store.root().join("ingest")).unwrap().count()
}

fn set_mtime(path: &Path, t: SystemTime) {
    File::open(path).unwrap().set_modified(t).unwrap();
}

#[test]
fn open_creates_layout_and_is_reopenable() {
    let (tmp, s) = store();
    assert!(tmp.path().join("content/blobs/sha256").is_dir());
    assert!(tmp.path().join("content/ingest").is_dir());
    let d = s.write_blob(b"hello", None).unwrap();
    let s2 = ContentStore::open(tmp.path().join("content")).unwrap();
    assert!(s2.exists(&d));
}

#[test]
fn write_commit_read_roundtrip() {
    let (_tmp, s) = store();
    let bytes = data(1_000_003, 1);
    let digest = Digest::of(&bytes);
    let mut w = s.writer("layer-sha256:abc", Some(exp(&bytes))).unwrap();
    assert_eq!(w.offset(), 0);
    assert!(!s.exists(&digest));
    for chunk in bytes.chunks(7_919) {
        w.write_all(chunk).unwrap();
    }
    assert_eq!(w.offset(), bytes.len() as u64);
    // Not visible until committed.
    assert!(!s.exists(&digest));
    assert!(s.list().unwrap().is_empty());
    let info = w.commit(Some(bytes.len() as u64), Some(&digest)).unwrap();
    assert_eq!(info.digest, digest);
    assert_eq!(info.size, bytes.len() as u64);

    assert!(s.exists(&digest));
    let path = s.blob_path(&digest);
    assert_eq!(path, s.root().join("blobs/sha256").join(digest.hex()));
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444);
    assert_eq!(s.info(&digest).unwrap().size, bytes.len() as u64);
    assert_eq!(s.read_all(&digest, u64::MAX).unwrap(), bytes);
    // The ingest is gone.
    assert!(s.list_ingests().unwrap().is_empty());
    assert_eq!(ingest_entries(&s), 0);
}

#[test]
fn commit_without_expectations_names_blob_by_content() {
    let (_tmp, s) = store();
    let bytes = data(5000, 2);
    let mut w = s.writer("anon", None).unwrap();
    w.write_all(&bytes).unwrap();
    let so_far = w.digest_so_far();
    let info = w.commit(None, None).unwrap();
    assert_eq!(info.digest, Digest::of(&bytes));
    assert_eq!(so_far, info.digest, "known before the commit");
    assert_eq!(s.read_all(&info.digest, 5000).unwrap(), bytes);
}

#[test]
fn wrong_digest_fails_and_removes_ingest() {
    let (_tmp, s) = store();
    let bytes = data(4096, 3);
    let wrong = Digest::of(b"something else");
    let mut w = s
        .writer("ref-wrong-digest", Some(Expected::new(wrong.clone(), None)))
        .unwrap();
    w.write_all(&bytes).unwrap();
    match w.commit(None, None) {
        Err(Error::DigestMismatch {
            reference,
            expected,
            actual,
        }) => {
            assert_eq!(reference, "ref-wrong-digest");
            assert_eq!(expected, wrong);
            assert_eq!(actual, Digest::of(&bytes));
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert!(!s.exists(&wrong));
    assert!(!s.exists(&Digest::of(&bytes)));
    assert!(blob_entries(&s).is_empty());
    assert!(s.list_ingests().unwrap().is_empty());
    assert_eq!(ingest_entries(&s), 0);

    // Digest given only at commit time.
    let mut w = s.writer("ref-wrong-digest-2", None).unwrap();
    w.write_all(&bytes).unwrap();
    assert!(matches!(
        w.commit(None, Some(&wrong)),
        Err(Error::DigestMismatch { .. })
    ));
    assert!(blob_entries(&s).is_empty());
    assert_eq!(ingest_entries(&s), 0);
}

#[test]
fn wrong_size_fails_and_removes_ingest() {
    let (_tmp, s) = store();
    let bytes = data(4096, 4);
    let digest = Digest::of(&bytes);
    // Short write against an expected size.
    let mut w = s.writer("short", Some(exp(&bytes))).unwrap();
    w.write_all(&bytes[..4000]).unwrap();
    match w.commit(None, None) {
        Err(Error::SizeMismatch {
            expected, actual, ..
        }) => {
            assert_eq!(expected, 4096);
            assert_eq!(actual, 4000);
        }
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
    assert!(!s.exists(&digest));
    assert_eq!(ingest_entries(&s), 0);

    // Size given only at commit time, with the right digest.
    let mut w = s.writer("size-at-commit", None).unwrap();
    w.write_all(&bytes).unwrap();
    assert!(matches!(
        w.commit(Some(4095), Some(&digest)),
        Err(Error::SizeMismatch {
            expected: 4095,
            actual: 4096,
            ..
        })
    ));
    assert!(!s.exists(&digest));
    assert!(blob_entries(&s).is_empty());
    assert_eq!(ingest_entries(&s), 0);
}

#[test]
fn write_past_expected_size_is_rejected() {
    let (_tmp, s) = store();
    let bytes = data(100, 5);
    let mut w = s.writer("too-long", Some(exp(&bytes))).unwrap();
    w.write_all(&bytes).unwrap();
    let err = w.write_all(b"x").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert_eq!(w.offset(), 100);
    // The writer is still usable; the right bytes commit.
    let info = w.commit(None, None).unwrap();
    assert_eq!(info.digest, Digest::of(&bytes));
}

#[test]
fn resume_after_drop() {
    let (_tmp, s) = store();
    let bytes = data(300_000, 6);
    let e = exp(&bytes);
    let mut w = s.writer("resume", Some(e.clone())).unwrap();
    w.write_all(&bytes[..123_456]).unwrap();
    drop(w);

    let ingests = s.list_ingests().unwrap();
    assert_eq!(ingests.len(), 1);
    assert_eq!(ingests[0].reference, "resume");
    assert_eq!(ingests[0].offset, 123_456);
    assert_eq!(ingests[0].total, Some(300_000));
    assert_eq!(ingests[0].expected.as_ref(), Some(&e.digest));
    assert!(ingests[0].started <= ingests[0].updated);
    assert!(!s.exists(&e.digest));

    let mut w = s.writer("resume", Some(e.clone())).unwrap();
    assert_eq!(w.offset(), 123_456);
    w.write_all(&bytes[123_456..]).unwrap();
    let info = w.commit(None, None).unwrap();
    assert_eq!(info.digest, e.digest);
    assert_eq!(s.read_all(&e.digest, u64::MAX).unwrap(), bytes);
}

#[test]
fn resume_after_crash_with_truncated_data_file() {
    let (_tmp, s) = store();
    let bytes = data(200_000, 7);
    let e = exp(&bytes);
    let mut w = s.writer("crash", Some(e.clone())).unwrap();
    w.write_all(&bytes[..150_000]).unwrap();
    drop(w);
    // Simulate a crash that lost the tail of the data file.
    let data_path = ingest_dir(&s, "crash").join("data");
    OpenOptions::new()
        .write(true)
        .open(&data_path)
        .unwrap()
        .set_len(90_001)
        .unwrap();

    let mut w = s.writer("crash", Some(e.clone())).unwrap();
    assert_eq!(w.offset(), 90_001);
    w.write_all(&bytes[90_001..]).unwrap();
    let info = w.commit(None, None).unwrap();
    assert_eq!(info.digest, e.digest);
    assert_eq!(s.read_all(&e.digest, u64::MAX).unwrap(), bytes);
}

#[test]
fn crash_with_corrupt_data_is_caught_then_retry_succeeds() {
    let (_tmp, s) = store();
    let bytes = data(50_000, 8);
    let e = exp(&bytes);
    let mut w = s.writer("corrupt", Some(e.clone())).unwrap();
    w.write_all(&bytes[..30_000]).unwrap();
    drop(w);
    // A crash left zeroes instead of the real bytes in the middle.
    let data_path = ingest_dir(&s, "corrupt").join("data");
    let f = OpenOptions::new().write(true).open(&data_path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 1000], 10_000).unwrap();
    drop(f);

    let mut w = s.writer("corrupt", Some(e.clone())).unwrap();
    assert_eq!(w.offset(), 30_000);
    w.write_all(&bytes[30_000..]).unwrap();
    assert!(matches!(
        w.commit(None, None),
        Err(Error::DigestMismatch { .. })
    ));
    assert!(!s.exists(&e.digest));
    // The bad bytes are not kept: a retry starts from zero and succeeds.
    let mut w = s.writer("corrupt", Some(e.clone())).unwrap();
    assert_eq!(w.offset(), 0);
    w.write_all(&bytes).unwrap();
    w.commit(None, None).unwrap();
    assert_eq!(s.read_all(&e.digest, u64::MAX).unwrap(), bytes);
}

#[test]
fn uncommitted_complete_ingest_is_not_a_blob() {
    // Crash after the last byte but before rename.
    let (_tmp, s) = store();
    let bytes = data(10_000, 9);
    let e = exp(&bytes);
    let mut w = s.writer("almost", Some(e.clone())).unwrap();
    w.write_all(&bytes).unwrap();
    drop(w);
    assert!(!s.exists(&e.digest));
    assert!(matches!(s.info(&e.digest), Err(Error::NotFound { .. })));
    assert!(s.list().unwrap().is_empty());
    // Reopening resumes at the end; commit needs no further bytes.
    let w = s.writer("almost", Some(e.clone())).unwrap();
    assert_eq!(w.offset(), 10_000);
    w.commit(None, None).unwrap();
    assert!(s.exists(&e.digest));
}

#[test]
fn truncate_to_zero_restarts_hash() {
    let (_tmp, s) = store();
    let bytes = data(20_000, 10);
    let e = exp(&bytes);
    let mut w = s.writer("trunc", Some(e.clone())).unwrap();
    w.write_all(&data(15_000, 99)).unwrap(); // wrong bytes
    w.truncate(0).unwrap();
    assert_eq!(w.offset(), 0);
    w.write_all(&bytes).unwrap();
    let info = w.commit(None, None).unwrap();
    assert_eq!(info.digest, e.digest);
    assert_eq!(s.read_all(&e.digest, u64::MAX).unwrap(), bytes);
}

#[test]
fn a_resumed_ingest_truncated_to_zero_takes_new_bytes() {
    // A registry that ignores the range of a resume: the ingest restarts at 0
    // (this panicked, "attempt to subtract with overflow", in debug builds).
    let (_tmp, s) = store();
    let bytes = data(300_000, 11);
    let e = exp(&bytes);
    let mut w = s.writer("resume-trunc", Some(e.clone())).unwrap();
    w.write_all(&bytes[..200_000]).unwrap();
    drop(w);
    let mut w = s.writer("resume-trunc", Some(e.clone())).unwrap();
    assert_eq!(w.offset(), 200_000);
    w.truncate(0).unwrap();
    w.write_all(&bytes[..1000]).unwrap();
    w.write_all(&bytes[1000..]).unwrap();
    let info = w.commit(None, None).unwrap();
    assert_eq!(info.digest, e.digest);
}

#[test]
fn truncate_nonzero_rehashes_prefix() {
    let (_tmp, s) = store();
    let bytes = data(20_000, 11);
    let mut w = s.writer("trunc-mid", Some(exp(&bytes))).unwrap();
    w.write_all(&bytes[..12_000]).unwrap();
    w.truncate(5_000).unwrap();
    assert_eq!(w.offset(), 5_000);
    w.write_all(&bytes[5_000..]).unwrap();
    let info = w.commit(None, None).unwrap();
    assert_eq!(info.digest, Digest::of(&bytes));

    let mut w = s.writer("trunc-beyond", None).unwrap();
    w.write_all(b"abc").unwrap();
    assert!(matches!(w.truncate(10), Err(Error::Io { .. })));
    assert_eq!(w.offset(), 3);
}

#[test]
fn reopen_with_different_expected_discards_old_bytes() {
    let (_tmp, s) = store();
    let a = data(10_000, 12);
    let b = data(8_000, 13);
    let mut w = s.writer("reused-ref", Some(exp(&a))).unwrap();
    w.write_all(&a[..6_000]).unwrap();
    drop(w);
    let mut w = s.writer("reused-ref", Some(exp(&b))).unwrap();
    assert_eq!(w.offset(), 0);
    w.write_all(&b).unwrap();
    assert_eq!(w.commit(None, None).unwrap().digest, Digest::of(&b));
}

#[test]
fn same_ref_is_locked() {
    let (_tmp, s) = store();
    let bytes = data(1000, 14);
    let mut w = s.writer("locked", Some(exp(&bytes))).unwrap();
    w.write_all(&bytes[..500]).unwrap();
    match s.writer("locked", Some(exp(&bytes))) {
        Err(Error::Locked { reference }) => assert_eq!(reference, "locked"),
        other => panic!("expected Locked, got {other:?}"),
    }
    // A bounded wait times out with Locked too.
    let start = Instant::now();
    assert!(matches!(
        s.writer_wait("locked", None, Duration::from_millis(100)),
        Err(Error::Locked { .. })
    ));
    assert!(start.elapsed() >= Duration::from_millis(100));
    // abort of a locked ingest is refused; a sweep leaves it alone.
    assert!(matches!(s.abort("locked"), Err(Error::Locked { .. })));
    assert_eq!(s.cleanup_ingests(Duration::ZERO).unwrap(), 0);
    // The holder was not disturbed.
    w.write_all(&bytes[500..]).unwrap();
    w.commit(None, None).unwrap();
    // After the writer is gone the ref is free again.
    let w2 = s.writer("locked", None).unwrap();
    assert_eq!(w2.offset(), 0);
}

#[test]
fn writer_wait_gets_lock_after_release_and_resumes() {
    let (_tmp, s) = store();
    let bytes = data(10_000, 15);
    let mut w = s.writer("wait", Some(exp(&bytes))).unwrap();
    w.write_all(&bytes[..4_000]).unwrap();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(150));
        drop(w);
    });
    let mut w2 = s
        .writer_wait("wait", Some(exp(&bytes)), Duration::from_secs(10))
        .unwrap();
    t.join().unwrap();
    assert_eq!(w2.offset(), 4_000);
    w2.write_all(&bytes[4_000..]).unwrap();
    w2.commit(None, None).unwrap();
    assert_eq!(s.read_all(&Digest::of(&bytes), u64::MAX).unwrap(), bytes);
}

#[test]
fn many_waiters_on_one_ref_get_already_exists() {
    let (_tmp, s) = store();
    let bytes = Arc::new(data(64_000, 16));
    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (s, bytes, barrier) = (s.clone(), bytes.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                match s.writer_wait("shared", Some(exp(&bytes)), Duration::from_secs(30)) {
                    Ok(mut w) => {
                        let off = usize::try_from(w.offset()).unwrap();
                        for chunk in bytes[off..].chunks(1000) {
                            w.write_all(chunk).unwrap();
                        }
                        w.commit(None, None).map(|_| true)
                    }
                    Err(Error::AlreadyExists { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            })
        })
        .collect();
    let results: Vec<bool> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    assert!(results.contains(&true));
    assert_eq!(s.read_all(&Digest::of(&bytes), u64::MAX).unwrap(), *bytes);
    assert_eq!(s.list().unwrap().len(), 1);
    assert!(s.list_ingests().unwrap().is_empty());
    assert_eq!(ingest_entries(&s), 0);
}

#[test]
fn same_digest_through_different_refs() {
    let (_tmp, s) = store();
    let bytes = Arc::new(data(500_000, 17));
    let digest = Digest::of(&bytes);
    // Both writers are open before either commits.
    let w1 = s.writer("ref-a", Some(exp(&bytes))).unwrap();
    let w2 = s.writer("ref-b", Some(exp(&bytes))).unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = [w1, w2]
        .into_iter()
        .map(|mut w| {
            let (bytes, barrier) = (bytes.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                for chunk in bytes.chunks(4096) {
                    w.write_all(chunk).unwrap();
                }
                w.commit(None, None)
            })
        })
        .collect();
    for h in handles {
        let info = h.join().unwrap().unwrap();
        assert_eq!(info.digest, digest);
        assert_eq!(info.size, bytes.len() as u64);
    }
    assert_eq!(blob_entries(&s), vec![digest.hex().to_owned()]);
    assert_eq!(s.read_all(&digest, u64::MAX).unwrap(), *bytes);
    assert_eq!(ingest_entries(&s), 0);
}

#[test]
fn commit_when_blob_appeared_meanwhile() {
    let (_tmp, s) = store();
    let bytes = data(3000, 18);
    let digest = Digest::of(&bytes);
    let mut w = s.writer("late", Some(exp(&bytes))).unwrap();
    w.write_all(&bytes).unwrap();
    s.write_blob(&bytes, Some(&digest)).unwrap();
    let before = s.info(&digest).unwrap();
    let info = w.commit(None, None).unwrap();
    assert_eq!(info, before);
    assert_eq!(ingest_entries(&s), 0);
    // And a new writer for it is refused up front.
    assert!(matches!(
        s.writer("again", Some(exp(&bytes))),
        Err(Error::AlreadyExists { digest: d }) if d == digest
    ));
    assert_eq!(ingest_entries(&s), 0);
}

#[test]
fn stray_files_are_ignored_and_cleaned() {
    let (_tmp, s) = store();
    let good = s.write_blob(b"good blob", None).unwrap();
    let blobs = s.root().join("blobs/sha256");
    let hex_a = "a".repeat(64);
    // Partial renames / temp files / junk.
    fs::write(blobs.join(".tmp-123"), b"junk").unwrap();
    fs::write(blobs.join(format!("{hex_a}.partial")), b"junk").unwrap();
    fs::write(blobs.join("A".repeat(64)), b"junk").unwrap();
    fs::create_dir(blobs.join("b".repeat(64))).unwrap();
    std::os::unix::fs::symlink(s.blob_path(&good), blobs.join("c".repeat(64))).unwrap();
    // An ingest with data but no metadata, and a stray file in the ingest root.
    let orphan = s.root().join("ingest").join("d".repeat(64));
    fs::create_dir(&orphan).unwrap();
    fs::write(orphan.join("data"), b"orphan bytes").unwrap();
    fs::write(s.root().join("ingest").join("stray.tmp"), b"x").unwrap();

    let list = s.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].digest, good);
    for h in ["a", "b", "c"] {
        let d = Digest::from_hex(&h.repeat(64)).unwrap();
        assert!(!s.exists(&d), "{h}");
        assert!(matches!(s.info(&d), Err(Error::NotFound { .. })), "{h}");
        assert!(matches!(s.reader(&d), Err(Error::NotFound { .. })), "{h}");
    }
    assert!(s.list_ingests().unwrap().is_empty());
    let usage = s.usage().unwrap();
    assert_eq!(usage.blobs, 1);
    assert_eq!(usage.ingests, 1);
    assert_eq!(usage.ingest_bytes, 12);

    // A sweep with a long threshold keeps fresh strays, but not an ingest
    // without its ref (nobody can ever resume it: a crash or a full disk
    // right after its mkdir).
    assert_eq!(s.cleanup_ingests(Duration::from_secs(3600)).unwrap(), 1);
    assert!(!orphan.exists());
    // A startup sweep removes all of them, and not the good blob.
    assert_eq!(s.cleanup_ingests(Duration::ZERO).unwrap(), 6);
    assert_eq!(blob_entries(&s), vec![good.hex().to_owned()]);
    assert_eq!(ingest_entries(&s), 0);
    assert_eq!(s.read_all(&good, 100).unwrap(), b"good blob");
}

#[test]
fn cleanup_ingests_removes_only_old_unlocked() {
    let (_tmp, s) = store();
    let old = SystemTime::now() - Duration::from_secs(7200);
    for r in ["old", "old-locked", "fresh"] {
        let mut w = s.writer(r, None).unwrap();
        w.write_all(r.as_bytes()).unwrap();
    }
    for r in ["old", "old-locked"] {
        let dir = ingest_dir(&s, r);
        set_mtime(&dir.join("data"), old);
        set_mtime(&dir, old);
    }
    // Locking does not touch the timestamps if we re-age after opening.
    let held = s.writer("old-locked", None).unwrap();
    set_mtime(&ingest_dir(&s, "old-locked").join("data"), old);
    set_mtime(&ingest_dir(&s, "old-locked"), old);

    assert_eq!(s.cleanup_ingests(Duration::from_secs(3600)).unwrap(), 1);
    let refs: Vec<String> = s
        .list_ingests()
        .unwrap()
        .into_iter()
        .map(|i| i.reference)
        .collect();
    assert_eq!(refs, vec!["fresh".to_owned(), "old-locked".to_owned()]);
    drop(held);
    assert_eq!(s.cleanup_ingests(Duration::ZERO).unwrap(), 2);
    assert!(s.list_ingests().unwrap().is_empty());
    assert_eq!(ingest_entries(&s), 0);
}

#[test]
fn abort_removes_ingest() {
    let (_tmp, s) = store();
    assert!(matches!(
        s.abort("nope"),
        Err(Error::IngestNotFound { reference }) if reference == "nope"
    ));
    let mut w = s.writer("to-abort", None).unwrap();
    w.write_all(b"some bytes").unwrap();
    drop(w);
    s.abort("to-abort").unwrap();
    assert!(s.list_ingests().unwrap().is_empty());
    assert_eq!(ingest_entries(&s), 0);
    assert!(s.abort("to-abort").unwrap_err().is_not_found());

    let mut w = s.writer("writer-abort", None).unwrap();
    w.write_all(&data(200_000, 19)).unwrap();
    w.abort().unwrap();
    assert_eq!(ingest_entries(&s), 0);
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn delete_blob() {
    let (_tmp, s) = store();
    let d = s.write_blob(b"to delete", None).unwrap();
    let mut r = s.reader(&d).unwrap();
    s.delete(&d).unwrap();
    assert!(!s.exists(&d));
    assert!(matches!(s.delete(&d), Err(Error::NotFound { digest }) if digest == d));
    assert!(matches!(s.info(&d), Err(Error::NotFound { .. })));
    // An open reader keeps working.
    let mut buf = String::new();
    r.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "to delete");
    // It can be written again.
    s.write_blob(b"to delete", Some(&d)).unwrap();
    assert!(s.exists(&d));
}

#[test]
fn list_is_sorted_and_usage_counts() {
    let (_tmp, s) = store();
    let mut digests: Vec<Digest> = (0..20u8)
        .map(|i| s.write_blob(&data(100 + usize::from(i), i), None).unwrap())
        .collect();
    digests.sort();
    let list = s.list().unwrap();
    let listed: Vec<Digest> = list.iter().map(|i| i.digest.clone()).collect();
    assert_eq!(listed, digests);

    let mut w = s.writer("pending", None).unwrap();
    w.write_all(&[1u8; 777]).unwrap();
    w.flush().unwrap();
    let usage = s.usage().unwrap();
    assert_eq!(usage.blobs, 20);
    assert_eq!(usage.bytes, (100..120).sum::<u64>());
    assert_eq!(usage.ingests, 1);
    assert_eq!(usage.ingest_bytes, 777);
    let ingests = s.list_ingests().unwrap();
    assert_eq!(ingests[0].offset, 777);
    assert_eq!(ingests[0].total, None);
}

#[test]
fn reader_read_at_read_and_seek() {
    let (_tmp, s) = store();
    let bytes = data(10_000, 20);
    let d = s.write_blob(&bytes, None).unwrap();
    let mut r = s.reader(&d).unwrap();
    assert_eq!(r.size(), 10_000);
    assert_eq!(r.digest(), &d);

    let mut buf = [0u8; 100];
    assert_eq!(r.read_at(&mut buf, 5_000).unwrap(), 100);
    assert_eq!(&buf[..], &bytes[5_000..5_100]);
    assert_eq!(r.read_at(&mut buf, 9_950).unwrap(), 50);
    assert_eq!(&buf[..50], &bytes[9_950..]);
    assert_eq!(r.read_at(&mut buf, 10_000).unwrap(), 0);
    assert_eq!(r.read_at(&mut buf, u64::MAX).unwrap(), 0);

    // read_at does not move the cursor.
    let mut head = [0u8; 10];
    r.read_exact(&mut head).unwrap();
    assert_eq!(&head[..], &bytes[..10]);
    assert_eq!(r.stream_position().unwrap(), 10);
    assert_eq!(r.seek(SeekFrom::End(-20)).unwrap(), 9_980);
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, &bytes[9_980..]);
    r.seek(SeekFrom::Start(1_234)).unwrap();
    r.read_exact(&mut head).unwrap();
    assert_eq!(&head[..], &bytes[1_234..1_244]);
    assert!(r.seek(SeekFrom::Current(-100_000)).is_err());

    let missing = Digest::of(b"missing");
    assert!(matches!(s.reader(&missing), Err(Error::NotFound { .. })));
}

#[test]
fn read_all_respects_max() {
    let (_tmp, s) = store();
    let d = s.write_blob(&[7u8; 1000], None).unwrap();
    assert_eq!(s.read_all(&d, 1000).unwrap().len(), 1000);
    match s.read_all(&d, 999) {
        Err(Error::TooLarge { digest, size, max }) => {
            assert_eq!((digest, size, max), (d, 1000, 999));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn write_blob_verifies_and_is_idempotent() {
    let (_tmp, s) = store();
    let body = br#"{"schemaVersion":2}"#;
    let d = Digest::of(body);
    assert_eq!(s.write_blob(body, Some(&d)).unwrap(), d);
    let first = s.info(&d).unwrap();
    assert_eq!(s.write_blob(body, Some(&d)).unwrap(), d);
    assert_eq!(s.write_blob(body, None).unwrap(), d);
    assert_eq!(s.info(&d).unwrap(), first);
    assert_eq!(s.list().unwrap().len(), 1);

    let wrong = Digest::of(b"other");
    assert!(matches!(
        s.write_blob(body, Some(&wrong)),
        Err(Error::DigestMismatch { expected, .. }) if expected == wrong
    ));
    assert!(!s.exists(&wrong));
    assert_eq!(ingest_entries(&s), 0);
    // Empty blobs are valid.
    let empty = s.write_blob(b"", None).unwrap();
    assert_eq!(s.read_all(&empty, 0).unwrap(), b"");
}

#[test]
fn store_is_clone_send_sync() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<ContentStore>();
    fn assert_send<T: Send>() {}
    assert_send::<crate::Writer>();
    assert_send::<crate::Reader>();
}

#[test]
fn large_streaming_write() {
    let (_tmp, s) = store();
    let chunk = data(64 * 1024, 21);
    let mut hasher = Sha256::new();
    let mut w = s.writer("big", None).unwrap();
    for _ in 0..128 {
        w.write_all(&chunk).unwrap();
        hasher.update(&chunk);
    }
    let want = Digest::from_sha256_bytes(hasher.finalize().into());
    let info = w.commit(Some(8 * 1024 * 1024), Some(&want)).unwrap();
    assert_eq!(info.size, 8 * 1024 * 1024);
    let mut r = s.reader(&want).unwrap();
    let mut check = Sha256::new();
    std::io::copy(&mut r, &mut check).unwrap();
    assert_eq!(Digest::from_sha256_bytes(check.finalize().into()), want);
}

#[test]
fn remove_idle_ingests_takes_only_idle_unlocked_ones_with_the_prefix() {
    let (_tmp, s) = store();
    let old = SystemTime::now() - Duration::from_secs(600);
    for r in ["fetch-a", "fetch-held", "fetch-fresh", "import-a"] {
        let mut w = s.writer(r, None).unwrap();
        w.write_all(&data(10_000, 3)).unwrap();
    }
    let held = s.writer("fetch-held", None).unwrap();
    for r in ["fetch-a", "fetch-held", "import-a"] {
        let dir = ingest_dir(&s, r);
        set_mtime(&dir.join("data"), old);
        set_mtime(&dir, old);
    }

    let removed = s
        .remove_idle_ingests("fetch-", Duration::from_secs(300))
        .unwrap();
    assert_eq!(removed, vec!["fetch-a".to_owned()]);
    let refs: Vec<String> = s
        .list_ingests()
        .unwrap()
        .into_iter()
        .map(|i| i.reference)
        .collect();
    assert_eq!(refs, ["fetch-fresh", "fetch-held", "import-a"]);

    // Released, the held one goes too; another prefix is never touched.
    drop(held);
    let removed = s.remove_idle_ingests("fetch-", Duration::ZERO).unwrap();
    assert_eq!(removed, ["fetch-fresh", "fetch-held"]);
    let refs: Vec<String> = s
        .list_ingests()
        .unwrap()
        .into_iter()
        .map(|i| i.reference)
        .collect();
    assert_eq!(refs, ["import-a"]);
}

#[test]
fn space_is_the_free_space_of_the_store() {
    let (_tmp, s) = store();
    let before = s.space().unwrap();
    assert!(
        before.total > 0 && before.available <= before.total,
        "{before:?}"
    );
    // statvfs of a path that is gone is an error naming it, not a zero.
    let gone = TempDir::new().unwrap();
    let s2 = ContentStore::open(gone.path().join("c")).unwrap();
    fs::remove_dir_all(gone.path().join("c")).unwrap();
    let err = s2.space().unwrap_err();
    assert!(err.to_string().contains("statvfs"), "{err}");
}
