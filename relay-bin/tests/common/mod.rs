//! Helpers shared by the tests that run processes: a guard that stops a
//! child by its pid, a bounded run, a tool lookup, and test-kit's skip
//! rule. Each test crate uses a subset.
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

/// The skip rule (test-kit's, shared with the other crates' tests); not
/// every test crate here uses it.
#[allow(unused_imports)]
pub use test_kit::skip;

/// Runs a short system command (`ip`, `nft`, …) bounded to 10 s; its
/// stderr is the error when it fails.
pub fn sh(args: &[&str]) -> Result<(), String> {
    let out = run_bounded(Command::new(args[0]).args(&args[1..]), Duration::from_secs(10));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}
