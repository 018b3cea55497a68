//! Man pages and shell completions of a binary, generated from its clap
//! definition (feature `packaging`), for the Debian package.
//!
//! Each binary reaches its own `clap::Command`, so each writes its own files
//! when run as `bgproxy package-assets DIR` / `bgctl package-assets DIR`
//! ([`assets_dir`], read before clap parses: a clap subcommand, even hidden,
//! would be offered by the completions), which calls [`write_assets`];
//! `packaging/build-deb.sh` runs both before `cargo deb`. Layout under DIR:
//!
//! ```text
//! man/<name>.<section>            clap_mangen, plus the Page's extra sections
//! man/<name>-<sub>.<section>      one per visible subcommand (bgctl-switch.1, ...)
//! completions/<name>.bash         clap_complete, for /usr/share/bash-completion/completions/<name>
//! completions/_<name>             zsh, /usr/share/zsh/vendor-completions/
//! completions/<name>.fish         fish, /usr/share/fish/vendor_completions.d/
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap_complete::Shell;
use clap_mangen::roff::{roman, Roff};
use clap_mangen::Man;

/// The first argument that asks a binary for its man pages and completions.
pub const ASSETS_COMMAND: &str = "package-assets";

/// `Some(DIR)` when the command line (program name first) is exactly
/// `<bin> package-assets DIR`. Checked before clap parses, so the word is in
/// no `--help`, man page or completion; anything else is left to clap.
pub fn assets_dir(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    match args {
        [_, command, dir] if command == ASSETS_COMMAND => Some(PathBuf::from(dir)),
        _ => None,
    }
}

/// The version the pages name: the release alone (see [`write_assets`]).
const PAGE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a man page says beyond the clap definition.
pub struct Page<'a> {
    /// The manual section: "8" for the daemon, "1" for bgctl.
    pub section: &'a str,
    /// Subcommands with a page of their own (`<name>-<sub>.<section>`),
    /// listed in SEE ALSO of the main page. Empty: none.
    pub subcommand_pages: bool,
    /// Extra sections in order, each a title (EXIT STATUS, FILES, ...) and
    /// its paragraphs.
    pub sections: &'a [(&'a str, &'a [&'a str])],
    /// Pages named in SEE ALSO besides the subcommands', like "bgctl(1)".
    pub see_also: &'a [&'a str],
}

/// Writes the man page(s) and the bash, zsh and fish completions of `cmd`
/// into `dir` (created when missing), and returns the files written.
/// Fails with the I/O error of the first file that cannot be written.
pub fn write_assets(cmd: clap::Command, page: &Page<'_>, dir: &Path) -> io::Result<Vec<PathBuf>> {
    // No `help` subcommand: it would be listed without a page of its own.
    // The release, not the commit: the files are kept in git
    // (packaging/assets/), and a test compares them with what the binaries
    // write, which must not change with every commit.
    let mut cmd = cmd.disable_help_subcommand(true).version(PAGE_VERSION);
    cmd.build();
    let name = cmd.get_name().to_string();
    let man_dir = dir.join("man");
    let completions_dir = dir.join("completions");
    fs::create_dir_all(&man_dir)?;
    fs::create_dir_all(&completions_dir)?;
    let mut written = Vec::new();

    let subcommands: Vec<clap::Command> = if page.subcommand_pages {
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let mut see_also: Vec<String> = subcommands
        .iter()
        .map(|s| format!("{name}-{}({})", s.get_name(), page.section))
        .collect();
    see_also.extend(page.see_also.iter().map(|s| s.to_string()));

    let path = man_dir.join(format!("{name}.{}", page.section));
    let mut out = Vec::new();
    render(&cmd, page.section, page.sections, &see_also, &mut out)?;
    fs::write(&path, out)?;
    written.push(path);

    for sub in subcommands {
        // After `build()`, clap names a subcommand's page "bgctl-switch" and
        // its synopsis "bgctl switch".
        let sub = sub.version(PAGE_VERSION);
        let sub_name = sub.get_display_name().unwrap_or(sub.get_name()).to_string();
        let path = man_dir.join(format!("{sub_name}.{}", page.section));
        let mut out = Vec::new();
        let parent = format!("{name}({})", page.section);
        render(&sub, page.section, &[], &[parent], &mut out)?;
        fs::write(&path, out)?;
        written.push(path);
    }

    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let path = completions_dir.join(file);
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd, name.clone(), &mut out);
        fs::write(&path, out)?;
        written.push(path);
    }
    Ok(written)
}

/// One page: clap_mangen's sections, then the extra ones and SEE ALSO.
fn render(
    cmd: &clap::Command,
    section: &str,
    extra: &[(&str, &[&str])],
    see_also: &[String],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let man = Man::new(cmd.clone())
        .section(section)
        .source(format!("bgproxy {PAGE_VERSION}"))
        .manual("bgproxy manual");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(out)?;
    }
    // The extra sections replace the --help epilogue (bgctl's exit codes).
    if extra.is_empty() && cmd.get_after_long_help().or(cmd.get_after_help()).is_some() {
        man.render_extra_section(out)?;
    }
    let mut roff = Roff::new();
    for (title, paragraphs) in extra {
        roff.control("SH", [*title]);
        for (i, p) in paragraphs.iter().enumerate() {
            if i > 0 {
                roff.control("PP", []);
            }
            roff.text([roman(*p)]);
        }
    }
    if !see_also.is_empty() {
        roff.control("SH", ["SEE ALSO"]);
        roff.text([roman(see_also.join(", "))]);
    }
    roff.to_writer(out)?;
    man.render_version_section(out)?;
    Ok(())
}
