//! The state directory and how its files are opened.
//!
//! The directory holds the state file and its siblings (`.prev`, `.tmp`,
//! `.lock`), `audit.log` and `deploys/<id>.log`. bgproxy usually runs as
//! root or a service user, so a name in there that is a symbolic link would
//! let whoever planted it have bgproxy write (or read) another file. So:
//!
//! - the directory is created mode 0700 when bgproxy creates it
//!   ([`prepare`]); an existing one writable by group or others is reported
//!   (not changed: the operator may have reasons);
//! - every file in it is opened with `O_NOFOLLOW` ([`options`], [`read`]): a
//!   symbolic link is refused with an error that says so ([`explain`]),
//!   never followed. (The directory itself may be a link, e.g.
//!   `/var/lib/bgproxy -> /data/bgproxy`: only the last component is
//!   checked.)

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of a directory bgproxy creates for its state.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) mode 0700 when it does not exist.
/// An existing directory is kept as it is; when group or others may write
/// in it, the returned warning says so and how to fix it. Fails when `dir`
/// cannot be created or is not a directory.
pub fn prepare(dir: &Path) -> io::Result<Option<String>> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            let mode = m.permissions().mode() & 0o7777;
            Ok((mode & 0o022 != 0).then(|| {
                format!(
                    "state directory {} is writable by {} (mode {mode:04o}): whoever can write there can replace bgproxy's state and logs; run `chmod 700 {}`",
                    dir.display(),
                    if mode & 0o002 != 0 { "everyone" } else { "its group" },
                    dir.display()
                )
            }))
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", dir.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A sub-directory of the state directory (e.g. `deploys/`): created 0700
/// when missing; refused when it is a symbolic link or not a directory.
pub fn prepare_subdir(dir: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(link_refused(dir)),
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", dir.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
        }
        Err(e) => Err(e),
    }
}

/// `OpenOptions` with `O_NOFOLLOW`: opening a symbolic link fails (ELOOP)
/// instead of opening what it points to. Use [`explain`] on the error.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW);
    o
}

/// Reads a whole file of the state directory, refusing a symbolic link.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut f: File = options()
        .read(true)
        .open(path)
        .map_err(|e| explain(e, path))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Turns the ELOOP of an `O_NOFOLLOW` open of `path` into an error that
/// says what is wrong and what to do; other errors pass unchanged.
pub fn explain(e: io::Error, path: &Path) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        link_refused(path)
    } else {
        e
    }
}

fn link_refused(path: &Path) -> io::Error {
    io::Error::other(format!(
        "{} is a symbolic link, and bgproxy opens nothing in its state directory through a link: remove it (bgproxy creates its files itself)",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn creates_0700_and_warns_on_a_writable_one() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/state");
        assert_eq!(prepare(&dir).unwrap(), None);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(prepare(&dir).unwrap(), None, "an existing 0700 is fine");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let w = prepare(&dir).unwrap().expect("a warning");
        assert!(
            w.contains("writable by everyone") && w.contains("0777"),
            "{w}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(prepare(&dir).unwrap().unwrap().contains("its group"));
    }

    #[test]
    fn links_are_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "secret").unwrap();
        let link = dir.path().join("audit.log");
        symlink(&target, &link).unwrap();
        let e = options()
            .append(true)
            .create(true)
            .open(&link)
            .map_err(|e| explain(e, &link))
            .unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        let e = read(&link).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret");

        let sub = dir.path().join("deploys");
        symlink(dir.path(), &sub).unwrap();
        assert!(prepare_subdir(&sub)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
        let real = dir.path().join("real");
        prepare_subdir(&real).unwrap();
        prepare_subdir(&real).unwrap();
    }
}
