//! Helpers shared by the tests that run processes: a guard that stops a
//! child by its pid, a bounded run, and a tool lookup. Each test crate uses
//! a subset.
#![allow(dead_code)]

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (by its pid) and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command for at most `limit`, killing it after; returns its output.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
        }
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
    let out = child.wait_with_output().unwrap();
    let _ = watchdog.join();
    out
}

/// True when `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

/// True when the environment says every test must really run: CI
/// (`CI=true`, as `.ci/run` is started) or `TURN_RELAY_REQUIRE_ALL=1`.
pub fn skips_fail() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("TURN_RELAY_REQUIRE_ALL").as_deref() == Ok("1")
}

/// A test that cannot run here (no root, no namespaces, no io_uring, no
/// Chromium): prints `SKIPPED test: why` and returns, or fails the test
/// where skips are not allowed ([`skips_fail`]), so that CI proves what
/// it claims.
pub fn skip(test: &str, why: &str) {
    if skips_fail() {
        panic!("{test}: cannot run here and skipping is not allowed in CI: {why}");
    }
    // Written to the stream itself: the harness captures print!/eprint!,
    // and a skip must show even when the test passes.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}
