//! `[cluster]`: several LB hosts sharing one state in etcd.
//!
//! Without the table bgproxy keeps its state in the local file alone (the
//! default). With it, the shared state lives under `prefix` in the etcd
//! cluster at `etcd`, and the local file is the last applied copy
//! (`controlplane::cluster` says how).

use std::path::PathBuf;
use std::time::Duration;

/// The validated `[cluster]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://host:port`, or all `https://`), at least
    /// one.
    pub etcd: Vec<String>,
    /// The keys of this site start with it; no trailing `/`
    /// (default [`super::defaults::CLUSTER_PREFIX`]).
    pub prefix: String,
    /// This instance's name among the others (default: the host name).
    pub name: String,
    /// How long the answer to a change waits for every instance to apply it
    /// (default [`super::defaults::CLUSTER_ACK_TIMEOUT`]).
    pub ack_timeout: Duration,
    /// With `https://` URLs: whom to trust and who bgproxy is.
    pub tls: Option<ClusterTls>,
}

/// TLS to etcd (`https://` URLs): the files are read again at every
/// connect, so renewed certificates are taken up without a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterTls {
    /// The CA (PEM) that signed the etcd servers' certificates.
    pub ca_file: PathBuf,
    /// A client certificate and its key (PEM), for etcd's
    /// `--client-cert-auth`.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The host name, for `cluster.name` when it is not given.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "bgproxy".into())
}

/// Whether `name` may name an instance: letters, digits, `.`, `_`, `-`.
pub fn valid_instance_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks one etcd URL: `http://host:port` or `https://host:port`.
pub fn check_etcd_url(url: &str) -> Result<(), String> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err(format!(
            "'{url}' is not an etcd client URL: expected \"http://host:2379\" or \"https://host:2379\""
        ));
    };
    let hostport = rest.trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(format!(
            "'{url}' has no port: expected \"http://host:2379\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_names() {
        assert!(check_etcd_url("http://10.0.0.5:2379").is_ok());
        assert!(check_etcd_url("http://etcd1:2379/").is_ok());
        assert!(check_etcd_url("https://10.0.0.5:2379").is_ok());
        assert!(check_etcd_url("https://10.0.0.5").is_err());
        assert!(check_etcd_url("grpc://10.0.0.5:2379").is_err());
        assert!(check_etcd_url("10.0.0.5:2379").is_err());
        assert!(check_etcd_url("http://10.0.0.5").is_err());
        assert!(valid_instance_name("lb1"));
        assert!(valid_instance_name("lb-1.example.net"));
        assert!(!valid_instance_name("lb 1"));
        assert!(!valid_instance_name("a/b"));
        assert!(!valid_instance_name(""));
    }
}
