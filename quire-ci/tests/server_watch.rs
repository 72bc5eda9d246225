//! A server-mode quire-ci started by a server on its machine
//! (`QUIRE__SERVER_PID`) ends with that server: at once if it is gone
//! already, and soon after if it goes while quire-ci waits for it.

use std::process::{Command, Stdio};

/// quire-ci in server mode, against a server address that takes the
/// connection and never answers, watching `server_pid`.
fn executor(server_pid: u32, listener: &std::net::TcpListener) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quire-ci"));
    command
        .args(["run", "--sandbox", "none"])
        .env("QUIRE__SERVER_URL", format!("http://{}", listener.local_addr().unwrap()))
        .env("QUIRE__RUN_TOKEN", "0".repeat(64))
        .env("QUIRE__SERVER_PID", server_pid.to_string())
        .env("TMPDIR", std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

#[test]
fn a_server_gone_before_quire_ci_starts_ends_it_at_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let out = executor(pid, &listener).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the server that started this run is gone"), "{stderr}");
}

#[test]
fn quire_ci_ends_soon_after_its_server() {
    // The bootstrap request is taken and never answered: quire-ci would
    // wait 30 s for it were it not watching the server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut server = Command::new("sleep").arg("60").spawn().unwrap();
    let mut quire_ci = executor(server.id(), &listener).spawn().unwrap();
    // Once the request has arrived, quire-ci is waiting for the answer.
    let (_connection, _) = listener.accept().unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    // Ended by its watch (SIGTERM: 128 + 15), not by the bootstrap giving
    // up (1, after 30 s).
    let status = quire_ci.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}");
}
