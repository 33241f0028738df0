//! Throwaway network namespaces for a crate's own kernel tests and benchmarks (labs
//! with a server and agents are [`crate::Lab`]): run a command and fail loudly, run code
//! inside a namespace, remove the namespaces of earlier runs whose process is gone. The
//! caller names its namespaces `<prefix><pid>-...` and removes them (a `Drop` guard);
//! nothing here touches the root namespace.

use std::process::{Command, Output};

/// Run a command; panics when it cannot be started (is it installed?).
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e} (is it installed?)"))
}

/// Run a command, panicking with its output unless it succeeds; returns its stdout.
pub fn sh(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fail (never skip) unless running as root: `what` says why root is needed.
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "{what}: run as root");
}

/// Run `f` on a fresh thread inside namespace `ns` (a name under `/run/netns`) and
/// return its result.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let netns = trellis_net::Netns::open(&path).expect("open namespace");
        netns.run(f).expect("enter namespace")
    })
    .join()
    .expect("thread inside namespace panicked")
}

/// Delete the namespaces `<prefix><pid>-...` of runs whose process is gone.
pub fn sweep_stale(prefix: &str) {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("sweeping stale namespace {name}");
            let _ = run(&["ip", "netns", "del", &name]);
        }
    }
}
