//! Build script of bgproxy-control: records the git commit the binaries are
//! built from, so `bgproxy --version` and `bgctl --version` both say
//! `0.1.0 (commit 1a2b3c4)` (see `src/build_info.rs`).
//!
//! `git rev-parse --short HEAD` in the source tree; "unknown" outside a git
//! checkout (a source tarball) or without git. Reruns when HEAD moves: on
//! .git/HEAD, the branch's ref file and packed-refs, found without git when
//! git fails.

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
    let watched = watched();
    if commit == "unknown" && !watched.is_empty() {
        let why = Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
            .unwrap_or_else(|e| e.to_string());
        println!("cargo:warning=--version will say commit unknown: git rev-parse failed in a git checkout: {why}");
    }
    // Only files that exist: cargo reruns the script on every build for a
    // missing one.
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rustc-env=BGPROXY_GIT_COMMIT={commit}");
}

/// The files that change when HEAD moves: .git/HEAD, packed-refs and the
/// branch's ref file. Found without git when git fails (then the commit is
/// "unknown", and the next commit reruns the script rather than keeping
/// "unknown" until build.rs changes).
fn watched() -> Vec<PathBuf> {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"])
        .map(PathBuf::from)
        .or_else(|| Some(manifest_dir.join("../.git")).filter(|d| d.is_dir()))
    else {
        return Vec::new();
    };
    // In a linked worktree the branch refs live in the common dir.
    let common = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
        .map(PathBuf::from)
        .unwrap_or_else(|| git_dir.clone());
    let mut watched = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    // "ref: refs/heads/main", or a commit id when detached.
    if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD")) {
        if let Some(branch) = head.trim().strip_prefix("ref: ") {
            watched.push(common.join(branch));
        }
    }
    watched
}
