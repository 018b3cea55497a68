//! `bgproxy --check`: validate everything the daemon would read at start
//! (config, token file, TLS files, state file) without changing anything,
//! like `haproxy -c` or `nginx -t`.

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::controlplane::state;
use crate::daemon::build::read_token;

/// Why a token file is too open, if it is: readable by group or others.
fn readable_by_others(file: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file).ok()?.permissions().mode();
    (mode & 0o044 != 0).then(|| {
        format!(
            "readable by group or others (mode {:o}): chmod 600 {}",
            mode & 0o777,
            file.display()
        )
    })
}

/// Checks the config at `path`; returns every problem as one line.
pub fn check(path: &Path) -> Result<Config, Vec<String>> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(ConfigError::Invalid(problems)) => {
            return Err(problems.iter().map(|p| p.to_string()).collect())
        }
        Err(e) => return Err(vec![e.to_string()]),
    };
    let mut problems = Vec::new();
    if let Some(t) = &config.control.token_file {
        if let Err(e) = read_token(t) {
            problems.push(format!("{e:#}"));
        }
    }
    for (key, file) in [
        ("control.token_file", &config.control.token_file),
        (
            "control.requester_token_file",
            &config.control.requester_token_file,
        ),
    ] {
        let Some(file) = file else { continue };
        if key == "control.requester_token_file" {
            if let Err(e) = crate::config::preview::read_token(file, key) {
                problems.push(e);
            }
        }
        if let Some(warning) = readable_by_others(file) {
            eprintln!("warning: {key} {}: {warning}", file.display());
        }
    }
    if config.control.token_file.is_some()
        && config.control.token_file == config.control.requester_token_file
    {
        problems.push(
            "control.requester_token_file is the operator's control.token_file: the requester needs a token of its own".into(),
        );
    }
    if let Some(tls) = &config.proxy.tls {
        let (errors, warnings) = crate::dataplane::tls::check(tls);
        problems.extend(errors);
        for w in warnings {
            eprintln!("warning: {w}");
        }
    }
    match std::fs::read(&config.state.path) {
        Ok(bytes) => {
            if let Err(reason) = state::parse(&bytes) {
                problems.push(format!(
                    "state file {} is not valid: {reason} (at start bgproxy would move it aside and recover)",
                    config.state.path.display()
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.push(format!(
            "cannot read state file {}: {e}",
            config.state.path.display()
        )),
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}
