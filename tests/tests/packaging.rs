//! What the Debian package takes from the binaries, checked without
//! building the package (packaging/test-deb.sh installs the real one, as
//! root, in .ci/run): `--version` of both binaries names one version and a
//! real commit, `package-assets DIR` of each writes a man page per visible
//! command and the bash, zsh and fish completions, and the copies of those
//! files (and of the units) that `cargo deb -p bgproxy` packs from
//! packaging/assets/ are what the binaries and systemd/ say today.

use std::path::Path;
use std::process::Command;

use bgproxy_e2e::bin;

fn run(name: &str, args: &[&str]) -> String {
    let out = Command::new(bin(name))
        .args(args)
        .output()
        .expect("run the binary");
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// `bgproxy --version` and `bgctl --version`: "<name> <version> (commit
/// <id>)", the same after the name, and the id a commit of this repository
/// (or "unknown" outside a git checkout).
#[test]
fn both_binaries_print_one_version_and_the_commit() {
    let daemon = run("bgproxy", &["--version"]);
    let ctl = run("bgctl", &["--version"]);
    let daemon = daemon
        .trim()
        .strip_prefix("bgproxy ")
        .expect("bgproxy <version>");
    let ctl = ctl.trim().strip_prefix("bgctl ").expect("bgctl <version>");
    assert_eq!(daemon, ctl, "bgproxy and bgctl disagree on their version");
    assert!(
        daemon.starts_with(&format!("{} (commit ", env!("CARGO_PKG_VERSION"))),
        "{daemon}"
    );
    let commit = daemon
        .rsplit_once("(commit ")
        .and_then(|(_, c)| c.strip_suffix(')'))
        .expect("(commit <id>)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let in_git = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .current_dir(&root)
        .output()
        .is_ok_and(|o| o.status.success());
    if in_git {
        // HEAD may have moved since the build (a commit by someone else):
        // the id must name a commit, not necessarily today's HEAD.
        let known = Command::new("git")
            .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .current_dir(&root)
            .status()
            .expect("git cat-file");
        assert!(known.success(), "{commit} is not a commit of this checkout");
    } else {
        assert_eq!(commit, "unknown");
    }
}

/// The visible subcommands of `<name> --help` (clap's "Commands:" list),
/// without `help`.
fn subcommands(name: &str) -> Vec<String> {
    let help = run(name, &["--help"]);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// `package-assets DIR`: bgproxy(8) and bgctl(1) with a page for each
/// visible subcommand (and none for hidden ones or `help`), and completions
/// for bash, zsh and fish that know the subcommands.
#[test]
fn package_assets_writes_man_pages_and_completions() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, section) in [("bgproxy", "8"), ("bgctl", "1")] {
        let written = run(
            name,
            &["package-assets", dir.path().to_str().expect("utf-8")],
        );
        let subs = subcommands(name);
        assert!(!subs.is_empty(), "{name} --help lists no commands");
        assert!(
            !subs.iter().any(|s| s == "package-assets"),
            "package-assets is visible"
        );

        let page = std::fs::read_to_string(dir.path().join(format!("man/{name}.{section}")))
            .expect("main page");
        assert!(
            page.contains(&format!(".TH {name} {section} ")),
            "{name}: no title line"
        );
        for heading in [
            "NAME",
            "SYNOPSIS",
            "OPTIONS",
            "EXIT STATUS",
            "FILES",
            "SEE ALSO",
        ] {
            // roff quotes a heading with a space.
            let (bare, quoted) = (format!(".SH {heading}\n"), format!(".SH \"{heading}\"\n"));
            assert!(
                page.contains(&bare) || page.contains(&quoted),
                "{name}({section}): no {heading}"
            );
        }
        for sub in &subs {
            let path = dir.path().join(format!("man/{name}-{sub}.{section}"));
            assert!(path.exists(), "no page {}", path.display());
            assert!(
                page.contains(&format!("{name}\\-{sub}({section})")),
                "{name}({section}) does not name {sub}"
            );
        }
        let pages = std::fs::read_dir(dir.path().join("man"))
            .expect("man dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with(name) && f.ends_with(&format!(".{section}")))
            .count();
        assert_eq!(
            pages,
            subs.len() + 1,
            "{name}: pages for hidden commands or help"
        );

        for (file, marker) in [
            (format!("{name}.bash"), "complete -F".to_string()),
            (format!("_{name}"), format!("#compdef {name}")),
            (format!("{name}.fish"), format!("complete -c {name}")),
        ] {
            let text = std::fs::read_to_string(dir.path().join("completions").join(&file))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(text.contains(&marker), "{file}: no {marker}");
            assert!(text.contains(&subs[0]), "{file} does not know {}", subs[0]);
        }
        assert!(
            written.lines().count() >= subs.len() + 4,
            "{name} listed {written}"
        );
    }
}

/// Every file under `dir`, by its path relative to `dir`.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut all = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let rel = path.strip_prefix(dir).expect("under dir");
                all.insert(
                    rel.to_string_lossy().into_owned(),
                    std::fs::read(&path).expect("read"),
                );
            }
        }
    }
    all
}

/// packaging/assets/ (kept in git, packed by a bare `cargo deb -p bgproxy`)
/// holds exactly what the binaries write today, the units of systemd/ with
/// the package's paths (the rewrite of packaging/build-deb.sh), and a
/// changelog naming this version. After changing a command line or a unit:
/// `packaging/build-deb.sh` writes them again.
#[test]
fn the_packaged_assets_are_what_the_binaries_and_units_say_today() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let assets = root.join("packaging/assets");
    let fresh = tempfile::tempdir().expect("temp dir");
    for name in ["bgproxy", "bgctl"] {
        run(
            name,
            &["package-assets", fresh.path().to_str().expect("utf-8")],
        );
    }
    let unit_dir = fresh.path().join("systemd");
    std::fs::create_dir_all(&unit_dir).expect("systemd dir");
    for unit in ["bgproxy.service", "bgproxy.socket"] {
        let text = std::fs::read_to_string(root.join("systemd").join(unit)).expect("unit");
        let packaged: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("StateDirectoryMode=") {
                    "StateDirectoryMode=0700".to_string()
                } else {
                    l.replace("/usr/local/bin/", "/usr/bin/")
                }
            })
            .collect();
        std::fs::write(unit_dir.join(unit), packaged.join("\n") + "\n").expect("write unit");
    }
    let mut kept = files(&assets);
    let changelog = kept
        .remove("changelog")
        .expect("packaging/assets/changelog");
    let first = String::from_utf8_lossy(&changelog);
    let first = first.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("bgproxy ({}-1) ", env!("CARGO_PKG_VERSION"))),
        "packaging/assets/changelog names another version: {first}"
    );
    let want = files(fresh.path());
    let stale: Vec<&String> = want
        .keys()
        .chain(kept.keys())
        .filter(|f| want.get(*f) != kept.get(*f))
        .collect();
    assert!(
        stale.is_empty(),
        "packaging/assets/ differs from what the binaries and systemd/ say in {stale:?}: \
         run packaging/build-deb.sh and commit packaging/assets/"
    );
}
