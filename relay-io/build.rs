//! Compiles the kernel fast path (bpf/fastpath.bpf.c) with clang for the
//! BPF target. Without clang the crate still builds: the object is empty,
//! `fastpath_missing` is set, and the relay runs on the socket path (the
//! fast path's tests then fail in CI, where clang is installed, and skip
//! elsewhere).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fastpath_missing)");
    println!("cargo::rerun-if-changed=bpf/fastpath.bpf.c");
    println!("cargo::rerun-if-changed=bpf/fastpath.h");
    println!("cargo::rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("fastpath.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "",
    };
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-c", "bpf/fastpath.bpf.c", "-o"]).arg(&out);
    if !arch.is_empty() {
        // Debian keeps asm/types.h under the multiarch directory.
        cmd.arg(format!("-I/usr/include/{arch}"));
    }
    let why = match cmd.output() {
        Ok(o) if o.status.success() => return,
        Ok(o) => format!("{clang} failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => format!("{clang} not found ({e}); install clang and libbpf-dev"),
    };
    println!("cargo::warning=kernel fast path not built: {}", why.lines().next().unwrap_or(""));
    println!("cargo::rustc-cfg=fastpath_missing");
    std::fs::write(&out, []).expect("write the empty object");
}
