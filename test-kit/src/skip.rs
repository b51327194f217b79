//! The rule for tests that cannot run here: a skip is printed, or is a
//! failure where every test must really run.

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

/// The io_uring run of the current test cannot start here: [`skip`], the
/// test named by its thread (the test harness names each test's thread).
pub fn skip_io_uring(why: &str) {
    let thread = std::thread::current();
    skip(thread.name().unwrap_or("an io_uring test"), &format!("io_uring run: {why}"));
}
