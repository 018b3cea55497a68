//! Build script of bgproxy-control: records the git commit the binaries are
//! built from, so `bgproxy --version` and `bgctl --version` both say
//! `0.1.0 (commit 1a2b3c4)` (see `src/build_info.rs`).
//!
//! `git rev-parse --short HEAD` in the source tree; "unknown" outside a git
//! checkout (a source tarball) or without git. Reruns when HEAD moves: on
//! .git/HEAD, the branch's ref file and packed-refs.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BGPROXY_GIT_COMMIT");
    // A packager building from a tarball may say where it came from.
    let commit = std::env::var("BGPROXY_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
        // In a linked worktree the branch refs live in the common dir.
        let common = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .map(PathBuf::from)
            .unwrap_or_else(|| git_dir.clone());
        let mut watched = vec![git_dir.join("HEAD"), common.join("packed-refs")];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(common.join(branch));
        }
        // Only files that exist: cargo reruns the script on every build
        // for a missing one.
        for path in watched.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rustc-env=BGPROXY_GIT_COMMIT={commit}");
}
