use std::fs::File;
use std::io::{Read, Write};

use super::*;

#[test]
fn uris() {
    assert_eq!(parse_dest("").unwrap(), Dest::Null);
    assert_eq!(
        parse_dest("/run/x/c-stdout").unwrap(),
        Dest::Fifo("/run/x/c-stdout".into())
    );
    assert_eq!(
        parse_dest("file:///var/log/a.log").unwrap(),
        Dest::File("/var/log/a.log".into())
    );
    assert_eq!(
        parse_dest("cri-log:///var/log/pods/ns_p_uid/c/0.log").unwrap(),
        Dest::CriLog("/var/log/pods/ns_p_uid/c/0.log".into())
    );
    assert!(parse_dest("binary:///usr/bin/logger").is_err());
    assert!(parse_dest("relative/path").is_err());
    assert!(parse_dest("cri-log:///var/log/../../etc/x").is_err());
    assert!(parse_stdin("file:///x").is_err());
    assert_eq!(parse_stdin("").unwrap(), None);
}

fn fifo(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    p
}

/// Writes through the container's ends by hand (no runc) and checks what arrives.
#[test]
fn cri_log_and_fifo_copy() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("0.log");
    let cfg = StdioConfig {
        stdin: fifo(d.path(), "in").display().to_string(),
        stdout: format!("cri-log://{}", log.display()),
        stderr: format!("cri-log://{}", log.display()),
        terminal: false,
    };
    let mut p = PreparedIo::prepare(&cfg, (0, 0), d.path()).unwrap();
    let fds = (
        p.child_stdin.take().unwrap(),
        p.child_stdout.take().unwrap(),
        p.child_stderr.take().unwrap(),
    );
    let io = p.start().unwrap();
    assert!(io.has_cri_logs());
    let (cin, cout, cerr) = fds;
    let mut out = File::from(cout);
    let mut err = File::from(cerr);
    out.write_all(b"hello\nwor").unwrap();
    err.write_all(b"oops\n").unwrap();
    out.write_all(b"ld\nno newline").unwrap();
    drop(out);
    drop(err);
    assert!(io.wait_drained(Duration::from_secs(5)));
    let text = fs::read_to_string(&log).unwrap();
    let recs: Vec<(&str, &str, &str)> = text
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let _ts = f.next().unwrap();
            (f.next().unwrap(), f.next().unwrap(), f.next().unwrap_or(""))
        })
        .collect();
    assert!(recs.contains(&("stdout", "F", "hello")), "{text}");
    assert!(recs.contains(&("stdout", "F", "world")), "{text}");
    assert!(recs.contains(&("stderr", "F", "oops")), "{text}");
    // stdout and stderr are separate pipes: no order between them.
    assert!(recs.contains(&("stdout", "P", "no newline")), "{text}");
    assert_eq!(recs.len(), 4, "{text}");

    // stdin: a client writes to the FIFO; CloseIO makes the container see EOF.
    let mut w = OpenOptions::new()
        .write(true)
        .open(d.path().join("in"))
        .unwrap();
    w.write_all(b"input").unwrap();
    let mut cin = File::from(cin);
    let mut got = [0u8; 5];
    cin.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"input");
    io.close_stdin();
    let mut rest = Vec::new();
    cin.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    drop(w);
}

#[test]
fn fifo_output_and_eof() {
    let d = tempfile::tempdir().unwrap();
    let out_fifo = fifo(d.path(), "out");
    let cfg = StdioConfig {
        stdout: out_fifo.display().to_string(),
        ..Default::default()
    };
    // The client opens its read side before the task is created (like ctr); it
    // must not block on open nor see EOF before the shim opened its side.
    let client = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&out_fifo)
        .unwrap();
    let mut p = PreparedIo::prepare(&cfg, (0, 0), d.path()).unwrap();
    let fl = OFlag::from_bits_truncate(fcntl(&client, FcntlArg::F_GETFL).unwrap());
    fcntl(&client, FcntlArg::F_SETFL(fl - OFlag::O_NONBLOCK)).unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let mut client = client;
        client.read_to_string(&mut s).unwrap();
        s
    });
    assert!(p.child_stdin.is_none() && p.child_stderr.is_none());
    let cout = p.child_stdout.take().unwrap();
    let io = p.start().unwrap();
    File::from(cout).write_all(b"hello\n").unwrap();
    assert!(io.wait_drained(Duration::from_secs(5)));
    // The shim's copier closed its FIFO fd: the client read EOF.
    assert_eq!(reader.join().unwrap(), "hello\n");
    drop(io);
}

/// More output than a FIFO holds, read late: the I/O thread keeps what the FIFO
/// cannot take, stops reading the container meanwhile, and loses nothing.
#[test]
fn slow_fifo_reader_gets_everything() {
    let d = tempfile::tempdir().unwrap();
    let out_fifo = fifo(d.path(), "out");
    let cfg = StdioConfig {
        stdout: out_fifo.display().to_string(),
        ..Default::default()
    };
    let client = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&out_fifo)
        .unwrap();
    let mut p = PreparedIo::prepare(&cfg, (0, 0), d.path()).unwrap();
    let cout = p.child_stdout.take().unwrap();
    let io = p.start().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let want = data.clone();
    let writer = std::thread::spawn(move || File::from(cout).write_all(&data).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let fl = OFlag::from_bits_truncate(fcntl(&client, FcntlArg::F_GETFL).unwrap());
    fcntl(&client, FcntlArg::F_SETFL(fl - OFlag::O_NONBLOCK)).unwrap();
    let mut client = client;
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert!(io.wait_drained(Duration::from_secs(5)));
    assert_eq!(got.len(), want.len());
    assert!(got == want);
}

#[test]
fn file_uri_creates_dirs_and_appends() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("a/b/out.log");
    fs::create_dir_all(f.parent().unwrap()).unwrap();
    fs::write(&f, b"old\n").unwrap();
    let cfg = StdioConfig {
        stdout: format!("file://{}", f.display()),
        stderr: format!("file://{}", d.path().join("c/err.log").display()),
        ..Default::default()
    };
    let mut p = PreparedIo::prepare(&cfg, (0, 0), d.path()).unwrap();
    let (o, e) = (
        p.child_stdout.take().unwrap(),
        p.child_stderr.take().unwrap(),
    );
    let io = p.start().unwrap();
    File::from(o).write_all(b"new").unwrap();
    File::from(e).write_all(b"err").unwrap();
    assert!(io.wait_drained(Duration::from_secs(5)));
    assert_eq!(fs::read_to_string(&f).unwrap(), "old\nnew");
    assert_eq!(
        fs::read_to_string(d.path().join("c/err.log")).unwrap(),
        "err"
    );
}

#[test]
fn missing_fifo_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let cfg = StdioConfig {
        stdout: d.path().join("nope").display().to_string(),
        ..Default::default()
    };
    assert!(PreparedIo::prepare(&cfg, (0, 0), d.path()).is_err());
}
