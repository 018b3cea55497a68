//! Pure validation: `FileConfig` -> [`Config`], collecting every problem with
//! its key and place. No I/O here except resolving `host:port` upstreams that
//! are not IP literals, and checking that referenced files exist.
//!
//! Every problem points at a place in the file, cross-field ones included:
//! where two keys clash (a listener address used twice, a host routed to two
//! apps) the problem points at the second and names the first one's line;
//! where a key needs another (`redirect_https` needs `[proxy.tls]`) it points
//! at the key that asks; where something is missing altogether (no
//! `[[app]]`) it points at the end of the file, where it would be added.
//! Absent keys take their value from [`defaults`](super::defaults).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::file::*;
use super::*;

/// Placeholders a deploy step may use.
pub const STEP_PLACEHOLDERS: [&str; 4] = ["app", "color", "host", "port"];

/// Collects problems, turning byte spans into line and column.
struct Problems<'a> {
    text: &'a str,
    file: &'a Path,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn at(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.list.push(Problem {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    /// The 1-based line of `span`, for messages that name another key's place.
    fn line(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }

    /// Where a missing table would be added: the start of the line after the
    /// last non-blank one (or the end of that line, without a final newline).
    fn end(&self) -> Range<usize> {
        let content = self.text.trim_end().len();
        let end = match self.text[content..].find('\n') {
            Some(nl) => content + nl + 1,
            None => content,
        };
        end..end
    }
}

/// 1-based line and column of byte offset `pos`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(pos, |nl| pos - nl - 1) + 1;
    (line, col)
}

/// Parses and validates a config file's text. `file` is used in messages and
/// to resolve relative paths (relative to the file's directory).
pub fn from_str(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let mut p = Problems {
        text,
        file,
        list: Vec::new(),
    };
    let raw: FileConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            // toml gives a span for every error it reports today (a missing
            // top-level table is 0..0: the top of the file), but no key:
            // bad values (an unknown enum variant, a wrong type) get theirs
            // from where they are.
            let span = e.span().unwrap_or(0..0);
            let key = super::key_path::at(text, &span);
            p.at(span, key, e.message().trim_end().to_string());
            return Err(ConfigError::Invalid(p.list));
        }
    };
    let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let config = build(raw, &base, file, &mut p);
    if p.list.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(p.list))
    }
}

/// A listening address as written, with its indexed key and place, for the
/// check that no two services share one.
struct Listener {
    addr: SocketAddr,
    key: String,
    span: Range<usize>,
}

fn build(raw: FileConfig, base: &Path, file: &Path, p: &mut Problems<'_>) -> Config {
    let fp = raw.proxy.into_inner();
    let mut listeners = Vec::new();
    let listen = addrs(&fp.listen, "proxy.listen", &mut listeners, p);
    let mut raw_acme = None;
    let tls = fp.tls.map(|t| {
        let span = t.span();
        let t = t.into_inner();
        let listen = addrs(&t.listen, "proxy.tls.listen", &mut listeners, p);
        let cert = t
            .cert
            .as_ref()
            .map(|c| existing_file(c, base, "proxy.tls.cert", p));
        let key = t
            .key
            .as_ref()
            .map(|k| existing_file(k, base, "proxy.tls.key", p));
        match (&t.cert, &t.key) {
            (Some(_), Some(_)) => {}
            (Some(c), None) => p.at(
                c.span(),
                "proxy.tls.key",
                "is missing: a default certificate needs both cert and key",
            ),
            (None, Some(k)) => p.at(
                k.span(),
                "proxy.tls.cert",
                "is missing: a default certificate needs both cert and key",
            ),
            (None, None) if t.acme.is_none() => p.at(
                span,
                "proxy.tls.cert",
                "is missing: set cert and key (the default certificate), or add [proxy.tls.acme] to have bgproxy obtain certificates",
            ),
            (None, None) => {}
        }
        raw_acme = t.acme;
        if t.listen.get_ref().is_empty() {
            p.at(
                t.listen.span(),
                "proxy.tls.listen",
                "is empty: list at least one \"ip:port\"",
            );
        }
        TlsConfig {
            listen,
            cert,
            key,
            certs: sni_certs(&t.certs, base, p),
            acme: None,
        }
    });
    if fp.listen.get_ref().is_empty() && tls.is_none() {
        p.at(
            fp.listen.span(),
            "proxy.listen",
            "no listener: set proxy.listen, or [proxy.tls] listen, or both",
        );
    }
    let threads = match fp.threads {
        None => defaults::threads(),
        Some(t) if (1..=1024).contains(t.get_ref()) => *t.get_ref() as usize,
        Some(t) => {
            p.at(t.span(), "proxy.threads", "must be between 1 and 1024");
            1
        }
    };
    let grace_period = dur_or(
        &fp.grace_period,
        defaults::GRACE_PERIOD,
        "proxy.grace_period",
        p,
    );
    let shutdown_timeout = dur_or(
        &fp.shutdown_timeout,
        defaults::SHUTDOWN_TIMEOUT,
        "proxy.shutdown_timeout",
        p,
    );

    let control_given = raw.control.as_ref().is_some_and(|c| c.listen.is_some());
    let control = match raw.control {
        None => ControlConfig {
            listen: defaults::CONTROL_LISTEN,
            token_file: None,
            watch_config: defaults::WATCH_CONFIG,
            nice: None,
            requester_token_file: None,
            request_ttl: defaults::REQUEST_TTL,
            public_read: false,
        },
        Some(c) => ControlConfig {
            listen: c
                .listen
                .as_ref()
                .and_then(|l| {
                    let a = addr(l, "control.listen", p)?;
                    listeners.push(Listener {
                        addr: a,
                        key: "control.listen".into(),
                        span: l.span(),
                    });
                    Some(a)
                })
                .unwrap_or(defaults::CONTROL_LISTEN),
            token_file: c
                .token_file
                .as_ref()
                .map(|t| existing_file(t, base, "control.token_file", p)),
            watch_config: c.watch_config.unwrap_or(defaults::WATCH_CONFIG),
            nice: c
                .nice
                .as_ref()
                .and_then(|n| match i32::try_from(*n.get_ref()) {
                    Ok(v) if (-20..=19).contains(&v) => Some(v),
                    _ => {
                        p.at(
                            n.span(),
                            "control.nice",
                            "must be between -20 and 19 (a nice value)",
                        );
                        None
                    }
                }),
            requester_token_file: c
                .requester_token_file
                .as_ref()
                .map(|t| existing_file(t, base, "control.requester_token_file", p)),
            request_ttl: positive(
                &c.request_ttl,
                defaults::REQUEST_TTL,
                "control.request_ttl",
                p,
            ),
            public_read: c.public_read.unwrap_or(false),
        },
    };
    let metrics = raw.metrics.and_then(|m| {
        let listen = addr(&m.listen, "metrics.listen", p)?;
        listeners.push(Listener {
            addr: listen,
            key: "metrics.listen".into(),
            span: m.listen.span(),
        });
        Some(MetricsConfig { listen })
    });
    listeners_distinct(&listeners, (!control_given).then_some(control.listen), p);
    let state = StateConfig {
        path: raw
            .state
            .map(|s| {
                if s.path.get_ref().trim().is_empty() {
                    p.at(s.path.span(), "state.path", "must not be empty");
                }
                resolve(base, s.path.get_ref())
            })
            .unwrap_or_else(|| PathBuf::from(defaults::STATE_PATH)),
    };

    let log = log(raw.log.as_ref(), p);
    let cluster = raw.cluster.as_ref().map(|c| cluster(c, base, p));
    if raw.app.is_empty() {
        p.at(
            p.end(),
            "app",
            "no [[app]] configured: add at least one [[app]] with a name, [app.blue] upstreams and [app.green] upstreams",
        );
    }
    let apps = apps(raw.app, tls.is_some(), base, p);
    let mut tls = tls;
    if let (Some(t), Some(a)) = (tls.as_mut(), raw_acme) {
        t.acme = Some(acme(a, &apps, !fp.listen.get_ref().is_empty(), base, p));
    }
    let max_header_size = size_or(
        &fp.max_header_size,
        defaults::MAX_HEADER_SIZE as u64,
        "proxy.max_header_size",
        p,
    ) as usize;
    if let Some(s) = &fp.max_header_size {
        if !(1024..=1024 * 1024).contains(&max_header_size) {
            p.at(
                s.span(),
                "proxy.max_header_size",
                "must be between 1KiB and 1MiB",
            );
        }
    }
    let max_headers = match &fp.max_headers {
        None => defaults::MAX_HEADERS,
        Some(n) if (1..=256).contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => {
            p.at(n.span(), "proxy.max_headers", "must be between 1 and 256");
            defaults::MAX_HEADERS
        }
    };
    let client_timeout = dur_or(
        &fp.client_timeout,
        defaults::CLIENT_TIMEOUT,
        "proxy.client_timeout",
        p,
    );
    let client_idle_timeout = dur_or(
        &fp.client_idle_timeout,
        defaults::CLIENT_IDLE_TIMEOUT,
        "proxy.client_idle_timeout",
        p,
    );
    if let Some(s) = &fp.client_idle_timeout {
        if client_idle_timeout < Duration::from_secs(1) {
            p.at(s.span(), "proxy.client_idle_timeout", "must be at least 1s");
        }
    }
    let read_buffer = size_or(
        &fp.read_buffer,
        defaults::READ_BUFFER as u64,
        "proxy.read_buffer",
        p,
    ) as usize;
    if let Some(s) = &fp.read_buffer {
        if read_buffer != 0 && !(4096..=1024 * 1024).contains(&read_buffer) {
            p.at(
                s.span(),
                "proxy.read_buffer",
                "must be 0 (unbuffered) or between 4KiB and 1MiB",
            );
        }
    }
    let request_header_timeout = positive(
        &fp.request_header_timeout,
        defaults::REQUEST_HEADER_TIMEOUT,
        "proxy.request_header_timeout",
        p,
    );
    let max_connections = connections(
        &fp.max_connections,
        defaults::MAX_CONNECTIONS,
        "proxy.max_connections",
        p,
    );
    let max_connections_per_ip = connections(
        &fp.max_connections_per_ip,
        defaults::MAX_CONNECTIONS_PER_IP,
        "proxy.max_connections_per_ip",
        p,
    );
    Config {
        path: file.to_path_buf(),
        proxy: ProxyConfig {
            listen,
            threads,
            work_stealing: fp.work_stealing.unwrap_or(defaults::WORK_STEALING),
            tls,
            grace_period,
            shutdown_timeout,
            max_header_size,
            max_headers,
            client_timeout,
            client_idle_timeout,
            read_buffer,
            request_header_timeout,
            max_connections,
            max_connections_per_ip,
        },
        control,
        metrics,
        state,
        log,
        cluster,
        apps,
    }
}

fn cluster(raw: &Spanned<FileCluster>, base: &Path, p: &mut Problems<'_>) -> ClusterConfig {
    let c = raw.get_ref();
    if c.etcd.get_ref().is_empty() {
        p.at(
            c.etcd.span(),
            "cluster.etcd",
            "needs at least one etcd client URL, like [\"http://10.0.0.5:2379\"]",
        );
    }
    for url in c.etcd.get_ref() {
        if let Err(m) = cluster::check_etcd_url(url.get_ref().trim()) {
            p.at(url.span(), "cluster.etcd", m);
        }
    }
    let prefix = match &c.prefix {
        None => defaults::CLUSTER_PREFIX.to_string(),
        Some(s) => {
            let v = s.get_ref().trim_end_matches('/');
            if !s.get_ref().starts_with('/') || v.is_empty() {
                p.at(
                    s.span(),
                    "cluster.prefix",
                    "must start with '/' and name more than the root, like \"/bgproxy/prod\"",
                );
            }
            v.to_string()
        }
    };
    let name = match &c.name {
        None => cluster::host_name(),
        Some(s) => {
            if !cluster::valid_instance_name(s.get_ref()) {
                p.at(
                    s.span(),
                    "cluster.name",
                    "must be 1 to 64 letters, digits, '.', '_' or '-', like \"lb1\"",
                );
            }
            s.get_ref().clone()
        }
    };
    let tls = cluster_tls(c, base, p);
    ClusterConfig {
        etcd: c
            .etcd
            .get_ref()
            .iter()
            .map(|u| u.get_ref().trim().trim_end_matches('/').to_string())
            .collect(),
        prefix,
        name,
        tls,
        ack_timeout: positive(
            &c.ack_timeout,
            defaults::CLUSTER_ACK_TIMEOUT,
            "cluster.ack_timeout",
            p,
        ),
    }
}

/// `[cluster]`'s TLS: every etcd URL `https://` (etcd-client has one TLS
/// setting for all) with `ca_file`, and `cert_file` with `key_file` or
/// neither; or every URL `http://` and none of the three.
fn cluster_tls(c: &FileCluster, base: &Path, p: &mut Problems<'_>) -> Option<ClusterTls> {
    let urls = c.etcd.get_ref();
    let https = urls
        .iter()
        .filter(|u| u.get_ref().trim().starts_with("https://"))
        .count();
    if https > 0 && https < urls.len() {
        let odd = urls
            .iter()
            .find(|u| !u.get_ref().trim().starts_with("https://"))
            .unwrap_or(&urls[0]);
        p.at(
            odd.span(),
            "cluster.etcd",
            "mixes http:// and https:// URLs: TLS is one setting for every etcd endpoint, make them all https://",
        );
    }
    let file = |f: &Option<Spanned<String>>, key: &str, p: &mut Problems<'_>| {
        f.as_ref()
            .filter(|s| !s.get_ref().is_empty())
            .map(|s| (s.span(), existing_file(s, base, key, p)))
    };
    let ca = file(&c.ca_file, "cluster.ca_file", p);
    let cert = file(&c.cert_file, "cluster.cert_file", p);
    let key = file(&c.key_file, "cluster.key_file", p);
    if https == 0 {
        for (given, key) in [(&ca, "ca_file"), (&cert, "cert_file"), (&key, "key_file")] {
            if let Some((span, _)) = given {
                p.at(
                    span.clone(),
                    format!("cluster.{key}"),
                    "is for TLS to etcd: the etcd URLs are http://, make them https:// or leave this out",
                );
            }
        }
        return None;
    }
    let Some((ca_span, ca_file)) = ca else {
        p.at(
            c.etcd.span(),
            "cluster.ca_file",
            "https:// etcd URLs need cluster.ca_file, the CA (PEM) that signed etcd's certificates (a public CA: /etc/ssl/certs/ca-certificates.crt)",
        );
        return None;
    };
    check_file(&ca_file, pem_certificates, ca_span, "cluster.ca_file", p);
    let identity = match (cert, key) {
        (None, None) => None,
        (Some((span, _)), None) => {
            p.at(
                span,
                "cluster.cert_file",
                "needs cluster.key_file, the key of that certificate",
            );
            None
        }
        (None, Some((span, _))) => {
            p.at(
                span,
                "cluster.key_file",
                "needs cluster.cert_file, the certificate of that key",
            );
            None
        }
        (Some((cert_span, cert)), Some((key_span, key))) => {
            check_file(&cert, pem_certificates, cert_span, "cluster.cert_file", p);
            check_file(&key, pem_private_key, key_span, "cluster.key_file", p);
            Some((cert, key))
        }
    };
    Some(ClusterTls { ca_file, identity })
}

/// Whether a PEM file holds a private key, or why not.
fn pem_private_key(path: &Path) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(&bytes)
        .map(drop)
        .map_err(|e| format!("{} holds no PEM private key: {e}", path.display()))
}

/// `[[proxy.tls.certs]]`: each name is served by one certificate.
fn sni_certs(raw: &[FileCert], base: &Path, p: &mut Problems<'_>) -> Vec<SniCert> {
    let mut seen: HashMap<String, (usize, Range<usize>)> = HashMap::new();
    raw.iter()
        .enumerate()
        .map(|(i, c)| {
            let k = format!("proxy.tls.certs[{i}]");
            if c.hosts.get_ref().is_empty() {
                p.at(
                    c.hosts.span(),
                    format!("{k}.hosts"),
                    "is empty: list the names this certificate serves",
                );
            }
            let hosts = c
                .hosts
                .get_ref()
                .iter()
                .enumerate()
                .filter_map(|(j, h)| {
                    let host = h.get_ref().trim().to_ascii_lowercase();
                    let plain = host.strip_prefix("*.").unwrap_or(&host);
                    if !valid_host(plain) || plain.contains('*') {
                        p.at(
                            h.span(),
                            format!("{k}.hosts[{j}]"),
                            format!("invalid name '{}': a DNS name, or *.name", h.get_ref()),
                        );
                        return None;
                    }
                    match seen.get(&host) {
                        Some((other, first)) => {
                            let line = p.line(first);
                            p.at(
                                h.span(),
                                format!("{k}.hosts[{j}]"),
                                format!(
                                    "'{host}' is already served by proxy.tls.certs[{other}] (line {line}): list each name under one certificate"
                                ),
                            );
                        }
                        None => {
                            seen.insert(host.clone(), (i, h.span()));
                        }
                    }
                    Some(host)
                })
                .collect();
            SniCert {
                hosts,
                cert: existing_file(&c.cert, base, &format!("{k}.cert"), p),
                key: existing_file(&c.key, base, &format!("{k}.key"), p),
            }
        })
        .collect()
}

fn log(raw: Option<&FileLog>, p: &mut Problems<'_>) -> LogConfig {
    let mut l = LogConfig::default();
    let Some(raw) = raw else { return l };
    if let Some(level) = &raw.level {
        match tracing_subscriber::EnvFilter::try_new(level.get_ref()) {
            Ok(_) => l.level = level.get_ref().clone(),
            Err(e) => p.at(
                level.span(),
                "log.level",
                format!(
                    "invalid level '{}': {e}; use error, warn, info, debug or trace",
                    level.get_ref()
                ),
            ),
        }
    }
    if let Some(f) = &raw.format {
        match f.get_ref().parse() {
            Ok(format) => l.format = format,
            Err(m) => p.at(f.span(), "log.format", m),
        }
    }
    l.access = raw.access.unwrap_or(l.access);
    if let Some(s) = &raw.access_sample {
        if (0.0..=1.0).contains(s.get_ref()) {
            l.access_sample = *s.get_ref();
        } else {
            p.at(
                s.span(),
                "log.access_sample",
                "must be between 0.0 (none) and 1.0 (every request)",
            );
        }
    }
    l
}

/// Two services on one address would fail at bind time with a vaguer error.
/// `listeners` are the addresses written in the file, in [`Config::listeners`]
/// order; `control_default` is `control.listen` when it was left out (it has
/// no place of its own, so a clash points at the key that took it).
fn listeners_distinct(
    listeners: &[Listener],
    control_default: Option<SocketAddr>,
    p: &mut Problems<'_>,
) {
    let mut seen: HashMap<SocketAddr, &Listener> = HashMap::new();
    for l in listeners {
        if let Some(first) = seen.get(&l.addr) {
            let line = p.line(&first.span);
            p.at(
                l.span.clone(),
                l.key.clone(),
                format!(
                    "address {} is also used by {} (line {line}): give each listener its own address",
                    l.addr, first.key
                ),
            );
        } else {
            seen.insert(l.addr, l);
        }
        if control_default == Some(l.addr) {
            p.at(
                l.span.clone(),
                l.key.clone(),
                format!(
                    "address {} is control.listen's default: use another address here, or set control.listen in [control]",
                    l.addr
                ),
            );
        }
    }
}

fn apps(
    raw: Vec<Spanned<FileApp>>,
    has_tls: bool,
    base: &Path,
    p: &mut Problems<'_>,
) -> Vec<AppConfig> {
    let mut names: HashMap<String, (usize, Range<usize>)> = HashMap::new();
    let mut hosts: HashMap<String, (String, Range<usize>)> = HashMap::new();
    let mut default_app: Option<(String, Range<usize>)> = None;
    let mut out = Vec::new();
    for (i, app) in raw.into_iter().enumerate() {
        let app_span = app.span();
        let a = app.into_inner();
        let k = format!("app[{i}]");
        let name = a.name.get_ref().clone();
        if !valid_name(&name) {
            p.at(
                a.name.span(),
                format!("{k}.name"),
                format!("invalid app name '{name}': use 1-64 letters, digits, '-', '_' or '.'"),
            );
        }
        match names.get(&name) {
            Some((first, span)) => {
                let line = p.line(span);
                p.at(
                    a.name.span(),
                    format!("{k}.name"),
                    format!(
                        "duplicate app name '{name}' (also app[{first}], line {line}): give each app its own name"
                    ),
                );
            }
            None => {
                names.insert(name.clone(), (i, a.name.span()));
            }
        }
        let mut app_hosts = Vec::new();
        for (j, h) in a.hosts.iter().enumerate() {
            let key = format!("{k}.hosts[{j}]");
            if let Some(host) = claim_host(&mut hosts, h, &key, &format!("app '{name}'"), p) {
                app_hosts.push(host);
            }
        }
        if a.hosts.is_empty() {
            // An app without hosts has no `hosts` key to point at: its
            // [[app]] header is where one would be added.
            match &default_app {
                Some((other, span)) => {
                    let line = p.line(span);
                    p.at(
                        app_span.clone(),
                        format!("{k}.hosts"),
                        format!(
                            "app '{name}' has no hosts, and neither has '{other}' (line {line}): only one app can be the default; give one of them hosts"
                        ),
                    );
                }
                None => default_app = Some((name.clone(), app_span.clone())),
            }
        }
        let redirect_https = match &a.redirect_https {
            Some(r) if *r.get_ref() && !has_tls => {
                p.at(
                    r.span(),
                    format!("{k}.redirect_https"),
                    format!(
                        "app '{name}' redirects to HTTPS, but no [proxy.tls] is configured: either add [proxy.tls] with listen, cert and key, or remove redirect_https"
                    ),
                );
                true
            }
            Some(r) => *r.get_ref(),
            None => defaults::REDIRECT_HTTPS,
        };
        let health = health(HealthConfig::default(), a.health.as_ref(), &k, p);
        let blue = pool(&a.blue, &format!("{k}.blue"), p);
        let green = pool(&a.green, &format!("{k}.green"), p);
        for (j, (u, span)) in green.iter().enumerate() {
            if let Some((_, first)) = blue.iter().find(|(b, _)| b == u) {
                let line = p.line(first);
                p.at(
                    span.clone(),
                    format!("{k}.green.upstreams[{j}]"),
                    format!(
                        "upstream {u} is in both blue and green (blue: line {line}): each color needs its own servers"
                    ),
                );
            }
        }
        let routes = routes(&a.routes, &k, &health, [&blue, &green], p);
        let rate_limit = a
            .rate_limit
            .as_ref()
            .map(|r| rate_limit(r.get_ref(), &k, p));
        let deploy = deploy(a.deploy.as_ref(), &k, p);
        let rollout = rollout(a.rollout.as_ref(), &k, p);
        let analysis = analysis(a.analysis.as_ref(), &k, p);
        let preview = preview(a.preview.as_ref(), &k, &name, base, &mut hosts, p);
        let mirror = mirror(a.mirror.as_ref(), &k, p);
        let verify = verify(&a.verify, &k, p);
        let _ = base;
        out.push(AppConfig {
            name,
            hosts: app_hosts,
            initial_live: a.initial_live.unwrap_or(defaults::INITIAL_LIVE),
            redirect_https,
            max_body: size_or(&a.max_body, defaults::MAX_BODY, &format!("{k}.max_body"), p),
            connect_timeout: positive(
                &a.connect_timeout,
                defaults::CONNECT_TIMEOUT,
                &format!("{k}.connect_timeout"),
                p,
            ),
            read_timeout: positive(
                &a.read_timeout,
                defaults::READ_TIMEOUT,
                &format!("{k}.read_timeout"),
                p,
            ),
            h2: a.h2.unwrap_or(defaults::H2),
            drain_timeout: limit_or(
                &a.drain_timeout,
                defaults::DRAIN_TIMEOUT,
                &format!("{k}.drain_timeout"),
                p,
            ),
            tunnel_timeout: limit_or(
                &a.tunnel_timeout,
                defaults::TUNNEL_TIMEOUT,
                &format!("{k}.tunnel_timeout"),
                p,
            ),
            health,
            pools: [strip(blue), strip(green)],
            deploy,
            rollout,
            analysis,
            preview,
            mirror,
            verify,
            routes,
            rate_limit,
        });
    }
    out
}

/// A route's name: it becomes a metric label value and part of a deploy
/// variable's name (`BG_UPSTREAMS_<NAME>`).
fn valid_route_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// `[[app.routes]]`: names unique (also as deploy variables), prefixes
/// paths and unique, each route's health inheriting every unset field from
/// the app's (`app_health`), and no upstream serving both colors anywhere
/// in the app: `app_pools` are the app's own upstreams (blue, green), each
/// with its place, already checked against each other.
fn routes(
    raw: &[Spanned<FileRoute>],
    k: &str,
    app_health: &HealthConfig,
    app_pools: [&[(SocketAddr, Range<usize>)]; 2],
    p: &mut Problems<'_>,
) -> Vec<RouteConfig> {
    // Every upstream of the app so far, per color, with its key and place.
    let mut seen: [Vec<(SocketAddr, String, Range<usize>)>; 2] = Color::ALL.map(|c| {
        app_pools[c.index()]
            .iter()
            .enumerate()
            .map(|(j, (a, span))| (*a, format!("{k}.{c}.upstreams[{j}]"), span.clone()))
            .collect()
    });
    let mut names: HashMap<String, (String, Range<usize>)> = HashMap::new();
    let mut prefixes: HashMap<String, Range<usize>> = HashMap::new();
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let r = r.get_ref();
        let rk = format!("{k}.routes[{i}]");
        let name = r.name.get_ref().trim().to_string();
        if !valid_route_name(&name) {
            p.at(
                r.name.span(),
                format!("{rk}.name"),
                format!("invalid route name '{name}': use 1-64 letters, digits, '-' or '_'"),
            );
        } else {
            let env = super::routes::env_name(&name);
            match names.get(&env) {
                Some((first, span)) => {
                    let line = p.line(span);
                    let message = if *first == name {
                        format!("duplicate route name '{name}' (also line {line}): give each route its own name")
                    } else {
                        format!("route names '{first}' (line {line}) and '{name}' give the same deploy variable {env}: give each route its own name")
                    };
                    p.at(r.name.span(), format!("{rk}.name"), message);
                }
                None => {
                    names.insert(env, (name.clone(), r.name.span()));
                }
            }
        }
        let prefix = r.path_prefix.get_ref().clone();
        let pk = format!("{rk}.path_prefix");
        if !prefix.starts_with('/')
            || prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
        {
            p.at(
                r.path_prefix.span(),
                pk,
                format!("invalid path prefix '{prefix}': it must start with '/' and hold no spaces, '?' or '#', like \"/api/\""),
            );
        } else if let Some(first) = prefixes.get(&prefix) {
            let line = p.line(first);
            p.at(
                r.path_prefix.span(),
                pk,
                format!("duplicate path prefix '{prefix}' (also line {line}): each prefix goes to one route"),
            );
        } else {
            prefixes.insert(prefix.clone(), r.path_prefix.span());
        }
        let health = health(app_health.clone(), r.health.as_ref(), &rk, p);
        let pools = [(&r.blue, Color::Blue), (&r.green, Color::Green)].map(|(raw, color)| {
            let ck = format!("{rk}.{color}");
            let list = pool(raw, &ck, p);
            let other = &seen[color.other().index()];
            for (j, (u, span)) in list.iter().enumerate() {
                if let Some((_, key, first)) = other.iter().find(|(a, _, _)| a == u) {
                    let line = p.line(first);
                    p.at(
                        span.clone(),
                        format!("{ck}.upstreams[{j}]"),
                        format!(
                            "upstream {u} is also {} in {key} (line {line}): an upstream serves one color of the app only, each color needs its own servers",
                            color.other()
                        ),
                    );
                }
            }
            seen[color.index()].extend(
                list.iter()
                    .enumerate()
                    .map(|(j, (a, span))| (*a, format!("{ck}.upstreams[{j}]"), span.clone())),
            );
            strip(list)
        });
        out.push(RouteConfig {
            name,
            path_prefix: prefix,
            strip_prefix: r.strip_prefix.unwrap_or(defaults::ROUTE_STRIP_PREFIX),
            health,
            pools,
        });
    }
    out
}

/// The largest `requests_per_second` and `burst` accepted.
const MAX_RATE: i64 = 1_000_000_000;

/// `[app.rate_limit]`.
fn rate_limit(raw: &FileRateLimit, k: &str, p: &mut Problems<'_>) -> RateLimitConfig {
    let mut whole = |v: &Spanned<i64>, key: &str, max: i64| -> Option<u64> {
        match *v.get_ref() {
            n if (1..=max).contains(&n) => Some(n as u64),
            _ => {
                p.at(
                    v.span(),
                    format!("{k}.rate_limit.{key}"),
                    format!("must be between 1 and {max}"),
                );
                None
            }
        }
    };
    let rate = |n: Option<u64>| n.and_then(|n| NonZeroU32::new(n as u32));
    let rps = rate(whole(
        &raw.requests_per_second,
        "requests_per_second",
        MAX_RATE,
    ))
    .unwrap_or(NonZeroU32::MIN);
    let burst = match &raw.burst {
        None => rps,
        Some(b) => rate(whole(b, "burst", MAX_RATE)).unwrap_or(rps),
    };
    let max_keys = raw
        .max_keys
        .as_ref()
        .and_then(|m| whole(m, "max_keys", 100_000_000))
        .map_or(defaults::RATE_LIMIT_MAX_KEYS, |n| n as usize);
    let key = match &raw.key {
        None => defaults::RATE_LIMIT_KEY,
        Some(s) => s.get_ref().trim().parse().unwrap_or_else(|m| {
            p.at(s.span(), format!("{k}.rate_limit.key"), m);
            defaults::RATE_LIMIT_KEY
        }),
    };
    RateLimitConfig {
        requests_per_second: rps,
        burst,
        key,
        max_keys,
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
        })
}

/// The path of a request bgproxy makes itself (a health check, a verify
/// check): it starts with `/` and holds no white space; else a problem at
/// the key.
fn request_path(v: &Spanned<String>, key: &str, p: &mut Problems<'_>) -> Option<String> {
    let path = v.get_ref();
    if path.starts_with('/') && !path.contains(char::is_whitespace) {
        Some(path.clone())
    } else {
        p.at(v.span(), key, "must start with '/' and contain no spaces");
        None
    }
}

/// An integer key within `range`, as a `T`; else a problem at the key.
fn int_in<T: TryFrom<i64>>(
    v: &Spanned<i64>,
    range: std::ops::RangeInclusive<i64>,
    key: &str,
    message: &str,
    p: &mut Problems<'_>,
) -> Option<T> {
    let n = *v.get_ref();
    let value = T::try_from(n).ok().filter(|_| range.contains(&n));
    if value.is_none() {
        p.at(v.span(), key, message);
    }
    value
}

/// Checks a host name and claims it for `owner`: a host is routed to one
/// place only. Returns it lowercase when valid and free.
fn claim_host(
    hosts: &mut HashMap<String, (String, Range<usize>)>,
    h: &Spanned<String>,
    key: &str,
    owner: &str,
    p: &mut Problems<'_>,
) -> Option<String> {
    let host = h.get_ref().trim().to_ascii_lowercase();
    if !valid_host(&host) {
        p.at(
            h.span(),
            key,
            format!(
                "invalid host name '{}': a DNS name without port or scheme",
                h.get_ref()
            ),
        );
        return None;
    }
    if let Some((first, span)) = hosts.get(&host) {
        let line = p.line(span);
        p.at(
            h.span(),
            key,
            format!("host '{host}' is already routed to {first} (line {line})"),
        );
        return None;
    }
    hosts.insert(host.clone(), (owner.to_string(), h.span()));
    Some(host)
}

fn preview(
    raw: Option<&FilePreview>,
    k: &str,
    app: &str,
    base: &Path,
    hosts: &mut HashMap<String, (String, Range<usize>)>,
    p: &mut Problems<'_>,
) -> PreviewConfig {
    let mut out = PreviewConfig::default();
    let Some(raw) = raw else { return out };
    if let Some(f) = &raw.token_file {
        let key = format!("{k}.preview.token_file");
        let path = existing_file(f, base, &key, p);
        if path.is_file() {
            match preview::read_token(&path, &key) {
                Ok(t) => out.token = Some(Secret::new(t)),
                Err(m) => p.at(f.span(), &key, m),
            }
        }
        out.token_file = Some(path);
    }
    for color in Color::ALL {
        let (list, field) = match color {
            Color::Blue => (&raw.blue_hosts, "blue_hosts"),
            Color::Green => (&raw.green_hosts, "green_hosts"),
        };
        for (j, h) in list.iter().enumerate() {
            let key = format!("{k}.preview.{field}[{j}]");
            let owner = format!("app '{app}' ({color} only)");
            if let Some(host) = claim_host(hosts, h, &key, &owner, p) {
                out.hosts[color.index()].push(host);
            }
        }
    }
    out
}

fn mirror(raw: Option<&FileMirror>, k: &str, p: &mut Problems<'_>) -> MirrorConfig {
    let mut m = MirrorConfig::default();
    let Some(raw) = raw else { return m };
    if let Some(v) = &raw.percent {
        let key = format!("{k}.mirror.percent");
        m.percent =
            int_in(v, 0..=100, &key, "must be a share between 0 and 100", p).unwrap_or(m.percent);
    }
    if let Some(methods) = &raw.methods {
        m.methods.clear();
        for (j, v) in methods.iter().enumerate() {
            let method = v.get_ref().trim().to_ascii_uppercase();
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                p.at(
                    v.span(),
                    format!("{k}.mirror.methods[{j}]"),
                    format!("invalid method '{}': like \"GET\"", v.get_ref()),
                );
            } else {
                m.methods.push(method);
            }
        }
    }
    m.max_body = size_or(
        &raw.max_body,
        m.max_body,
        &format!("{k}.mirror.max_body"),
        p,
    );
    if let Some(v) = &raw.max_in_flight {
        let key = format!("{k}.mirror.max_in_flight");
        m.max_in_flight = int_in(v, 1..=100_000, &key, "must be between 1 and 100000", p)
            .unwrap_or(m.max_in_flight);
    }
    m
}

fn verify(raw: &[Spanned<FileVerify>], k: &str, p: &mut Problems<'_>) -> Vec<VerifyCheck> {
    let mut out: Vec<VerifyCheck> = Vec::new();
    for (j, c) in raw.iter().enumerate() {
        let c = c.get_ref();
        let key = format!("{k}.verify[{j}]");
        let name = c.name.get_ref().trim().to_string();
        if name.is_empty() {
            p.at(c.name.span(), format!("{key}.name"), "must not be empty");
        } else if out.iter().any(|o| o.name == name) {
            p.at(
                c.name.span(),
                format!("{key}.name"),
                format!("duplicate check name '{name}': give each check its own name"),
            );
        }
        let path = c.path.get_ref().clone();
        request_path(&c.path, &format!("{key}.path"), p);
        let expect_status = c
            .expect_status
            .as_ref()
            .and_then(|s| {
                let key = format!("{key}.expect_status");
                int_in(
                    s,
                    100..=599,
                    &key,
                    "must be an HTTP status between 100 and 599",
                    p,
                )
            })
            .unwrap_or(defaults::VERIFY_EXPECT_STATUS);
        out.push(VerifyCheck {
            name,
            path,
            expect_status,
            expect_body: c.expect_body.clone(),
        });
    }
    out
}

fn rollout(raw: Option<&FileRollout>, k: &str, p: &mut Problems<'_>) -> RolloutConfig {
    let mut r = RolloutConfig::default();
    let Some(raw) = raw else { return r };
    if let Some(list) = &raw.steps {
        let key = format!("{k}.rollout.steps");
        let mut shares = Vec::new();
        for (j, s) in list.get_ref().iter().enumerate() {
            let text = s.get_ref().trim();
            match text.strip_suffix('%').unwrap_or(text).trim().parse::<u32>() {
                Ok(n) => shares.push(n),
                Err(_) => p.at(
                    s.span(),
                    format!("{key}[{j}]"),
                    format!("invalid share '{text}': expected a percent like \"25%\""),
                ),
            }
        }
        if shares.len() == list.get_ref().len() {
            match rollout::steps(&shares) {
                Ok(steps) => r.steps = steps,
                Err(m) => p.at(list.span(), key, m),
            }
        }
    }
    r.step_interval = positive(
        &raw.step_interval,
        r.step_interval,
        &format!("{k}.rollout.step_interval"),
        p,
    );
    if let Some(s) = &raw.sticky {
        match s.get_ref().parse::<Sticky>() {
            Ok(m) => r.sticky = m,
            Err(m) => p.at(s.span(), format!("{k}.rollout.sticky"), m),
        }
    }
    r
}

fn analysis(raw: Option<&FileAnalysis>, k: &str, p: &mut Problems<'_>) -> AnalysisConfig {
    let mut a = AnalysisConfig::default();
    let Some(raw) = raw else { return a };
    a.interval = positive(
        &raw.interval,
        a.interval,
        &format!("{k}.analysis.interval"),
        p,
    );
    if let Some(n) = &raw.min_requests {
        let key = format!("{k}.analysis.min_requests");
        a.min_requests =
            int_in(n, 1..=i64::MAX, &key, "must be at least 1", p).unwrap_or(a.min_requests);
    }
    if let Some(n) = &raw.max_inconclusive {
        let key = format!("{k}.analysis.max_inconclusive");
        a.max_inconclusive = int_in(n, 1..=1000, &key, "must be between 1 and 1000", p)
            .unwrap_or(a.max_inconclusive);
    }
    if let Some(r) = &raw.max_error_ratio {
        match *r.get_ref() {
            v if (0.0..=1.0).contains(&v) => a.max_error_ratio = v,
            _ => p.at(
                r.span(),
                format!("{k}.analysis.max_error_ratio"),
                "must be a ratio between 0 and 1, like 0.05",
            ),
        }
    }
    if let Some(r) = &raw.max_latency_ratio {
        match *r.get_ref() {
            v if v.is_finite() && v >= 1.0 => a.max_latency_ratio = v,
            _ => p.at(
                r.span(),
                format!("{k}.analysis.max_latency_ratio"),
                "must be at least 1.0 (the new color's p99 / the old color's)",
            ),
        }
    }
    a.watch = dur_or(&raw.watch, a.watch, &format!("{k}.analysis.watch"), p);
    if let Some(b) = raw.auto_rollback {
        a.auto_rollback = b;
    }
    a
}

/// `[app.health]` (from the defaults) or a route's `[health]` (from the
/// app's): every field `raw` does not set is `base`'s.
fn health(
    base: HealthConfig,
    raw: Option<&FileHealth>,
    k: &str,
    p: &mut Problems<'_>,
) -> HealthConfig {
    let mut h = base;
    let Some(raw) = raw else { return h };
    if let Some(path) = &raw.path {
        if let Some(path) = request_path(path, &format!("{k}.health.path"), p) {
            h.path = path;
        }
    }
    h.interval = positive(
        &raw.interval,
        h.interval,
        &format!("{k}.health.interval"),
        p,
    );
    h.timeout = positive(&raw.timeout, h.timeout, &format!("{k}.health.timeout"), p);
    for (field, value, slot) in [
        ("rise", &raw.rise, &mut h.rise),
        ("fall", &raw.fall, &mut h.fall),
    ] {
        if let Some(v) = value {
            match u32::try_from(*v.get_ref()).ok().and_then(NonZeroU32::new) {
                Some(n) if n.get() <= 100 => *slot = n,
                _ => p.at(
                    v.span(),
                    format!("{k}.health.{field}"),
                    "must be between 1 and 100",
                ),
            }
        }
    }
    if let Some(s) = &raw.expect_status {
        let key = format!("{k}.health.expect_status");
        h.expect_status = int_in(
            s,
            100..=599,
            &key,
            "must be an HTTP status between 100 and 599",
            p,
        )
        .unwrap_or(h.expect_status);
    }
    h
}

/// The upstreams of one color, each with its place (for the check across
/// colors).
fn pool(raw: &Spanned<FilePool>, k: &str, p: &mut Problems<'_>) -> Vec<(SocketAddr, Range<usize>)> {
    let ups = &raw.get_ref().upstreams;
    if ups.get_ref().is_empty() {
        p.at(
            ups.span(),
            format!("{k}.upstreams"),
            "is empty: list at least one \"host:port\"",
        );
        return Vec::new();
    }
    let mut out: Vec<(SocketAddr, Range<usize>)> = Vec::new();
    for (j, u) in ups.get_ref().iter().enumerate() {
        let key = format!("{k}.upstreams[{j}]");
        if let Some(a) = upstream_addr(u, &key, p) {
            match out.iter().find(|(b, _)| *b == a) {
                Some((_, first)) => {
                    let line = p.line(first);
                    p.at(
                        u.span(),
                        key,
                        format!("duplicate upstream {a} (also line {line})"),
                    );
                }
                None => out.push((a, u.span())),
            }
        }
    }
    out
}

/// Drops the places once every check across values is done.
fn strip<T>(spanned: Vec<(T, Range<usize>)>) -> Vec<T> {
    spanned.into_iter().map(|(v, _)| v).collect()
}

/// An upstream is `ip:port`, or `name:port` resolved once at load.
fn upstream_addr(u: &Spanned<String>, key: &str, p: &mut Problems<'_>) -> Option<SocketAddr> {
    let s = u.get_ref().trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let has_port = s
        .rsplit_once(':')
        .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
    if !has_port {
        p.at(
            u.span(),
            key,
            format!("invalid upstream '{s}': expected \"host:port\", like \"10.0.0.22:3001\""),
        );
        return None;
    }
    match s.to_socket_addrs().map(|mut it| it.next()) {
        Ok(Some(a)) => Some(a),
        _ => {
            p.at(u.span(), key, format!("cannot resolve upstream '{s}'"));
            None
        }
    }
}

fn deploy(raw: Option<&FileDeploy>, k: &str, p: &mut Problems<'_>) -> DeployConfig {
    let mut d = DeployConfig::default();
    let Some(raw) = raw else { return d };
    d.health_timeout = dur_or(
        &raw.health_timeout,
        d.health_timeout,
        &format!("{k}.deploy.health_timeout"),
        p,
    );
    let mut names: HashMap<&str, Range<usize>> = HashMap::new();
    for (i, s) in raw.steps.iter().enumerate() {
        let sk = format!("{k}.deploy.steps[{i}]");
        let st = s.get_ref();
        if st.name.get_ref().trim().is_empty() {
            p.at(st.name.span(), format!("{sk}.name"), "must not be empty");
        } else if let Some(first) = names.get(st.name.get_ref().as_str()) {
            let line = p.line(first);
            p.at(
                st.name.span(),
                format!("{sk}.name"),
                format!(
                    "duplicate step name '{}' (also line {line}): give each step its own name",
                    st.name.get_ref()
                ),
            );
        } else {
            names.insert(st.name.get_ref(), st.name.span());
        }
        if st.run.get_ref().trim().is_empty() {
            p.at(st.run.span(), format!("{sk}.run"), "must not be empty");
        }
        if let Err(m) = check_placeholders(st.run.get_ref()) {
            p.at(st.run.span(), format!("{sk}.run"), m);
        }
        let timeout = positive(
            &st.timeout,
            defaults::STEP_TIMEOUT,
            &format!("{sk}.timeout"),
            p,
        );
        d.steps.push(DeployStep {
            name: st.name.get_ref().clone(),
            run: st.run.get_ref().clone(),
            timeout,
            migrate: st.migrate.unwrap_or(defaults::STEP_MIGRATE),
            env: st.env.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
        });
    }
    d
}

/// Every `{name}` in a step must be a known placeholder.
fn check_placeholders(run: &str) -> Result<(), String> {
    let mut rest = run;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err("unclosed '{' in command".into());
        };
        let name = &after[..close];
        if !STEP_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder '{{{name}}}': use {{app}}, {{color}}, {{host}} or {{port}}"
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// The addresses of a `listen` list, each also recorded in `listeners` for
/// the check that no two services share one.
fn addrs(
    list: &Spanned<Vec<Spanned<String>>>,
    key: &str,
    listeners: &mut Vec<Listener>,
    p: &mut Problems<'_>,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for (i, s) in list.get_ref().iter().enumerate() {
        let key = format!("{key}[{i}]");
        if let Some(a) = addr(s, &key, p) {
            listeners.push(Listener {
                addr: a,
                key,
                span: s.span(),
            });
            out.push(a);
        }
    }
    out
}

fn addr(s: &Spanned<String>, key: &str, p: &mut Problems<'_>) -> Option<SocketAddr> {
    match s.get_ref().trim().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.at(
                s.span(),
                key,
                format!(
                    "invalid address '{}': expected \"ip:port\", like \"0.0.0.0:80\"",
                    s.get_ref()
                ),
            );
            None
        }
    }
}

/// A time limit where `"0"` means no limit (`None`).
fn limit_or(
    v: &Option<Spanned<String>>,
    default: Duration,
    key: &str,
    p: &mut Problems<'_>,
) -> Option<Duration> {
    Some(dur_or(v, default, key, p)).filter(|d| !d.is_zero())
}

fn dur_or(
    v: &Option<Spanned<String>>,
    default: Duration,
    key: &str,
    p: &mut Problems<'_>,
) -> Duration {
    match v {
        None => default,
        Some(s) => parse_duration(s.get_ref()).unwrap_or_else(|m| {
            p.at(s.span(), key, m);
            default
        }),
    }
}

/// A duration that must be more than zero (`default` is).
fn positive(
    v: &Option<Spanned<String>>,
    default: Duration,
    key: &str,
    p: &mut Problems<'_>,
) -> Duration {
    let d = dur_or(v, default, key, p);
    if let (Some(s), true) = (v, d.is_zero()) {
        p.at(s.span(), key, "must be more than 0");
    }
    d
}

/// A connection limit: a whole number from 1 to [`MAX_CONNECTIONS_LIMIT`].
fn connections(v: &Option<Spanned<i64>>, default: usize, key: &str, p: &mut Problems<'_>) -> usize {
    match v {
        None => default,
        Some(n) => match usize::try_from(*n.get_ref()) {
            Ok(n) if (1..=MAX_CONNECTIONS_LIMIT).contains(&n) => n,
            _ => {
                p.at(
                    n.span(),
                    key,
                    format!("must be between 1 and {MAX_CONNECTIONS_LIMIT}"),
                );
                default
            }
        },
    }
}

/// The largest connection limit accepted: well above what one process can
/// hold open (file descriptors).
const MAX_CONNECTIONS_LIMIT: usize = 10_000_000;

/// Parses a size: bytes, or a whole number with `KiB`, `MiB` or `GiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let bad = || {
        format!("invalid size '{s}': expected a whole number of bytes, or with KiB, MiB or GiB, like 512KiB or 10MiB")
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mul).ok_or_else(bad)
}

fn size_or(v: &Option<Spanned<String>>, default: u64, key: &str, p: &mut Problems<'_>) -> u64 {
    match v {
        None => default,
        Some(s) => parse_size(s.get_ref()).unwrap_or_else(|m| {
            p.at(s.span(), key, m);
            default
        }),
    }
}

fn resolve(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn existing_file(s: &Spanned<String>, base: &Path, key: &str, p: &mut Problems<'_>) -> PathBuf {
    let path = resolve(base, s.get_ref());
    if !path.is_file() {
        p.at(
            s.span(),
            key,
            format!(
                "file {} does not exist or is not a regular file",
                path.display()
            ),
        );
    }
    path
}

/// Reports at `span`, under `key`, why the file at `path` fails `check`
/// (when it exists: `existing_file` reports a missing one).
fn check_file<T>(
    path: &Path,
    check: impl Fn(&Path) -> Result<T, String>,
    span: Range<usize>,
    key: &str,
    p: &mut Problems<'_>,
) {
    if path.is_file() {
        if let Err(why) = check(path) {
            p.at(span, key, why);
        }
    }
}

/// `[proxy.tls.acme]`: the directory URL is https (http only on
/// loopback), the email an address, every host one an app serves (not a
/// wildcard), the challenge one bgproxy can answer with the listeners it
/// has, `ca_file` a readable PEM certificate.
fn acme(
    raw: Spanned<FileAcme>,
    apps: &[AppConfig],
    has_plain_listener: bool,
    base: &Path,
    p: &mut Problems<'_>,
) -> AcmeConfig {
    let span = raw.span();
    let raw = raw.into_inner();
    let directory = raw.directory.get_ref().trim().to_string();
    match directory.parse::<http::Uri>() {
        Ok(uri) => {
            let loopback = uri.host().is_some_and(|h| {
                h == "localhost"
                    || h.trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            match uri.scheme_str() {
                Some("https") if uri.host().is_some() => {}
                Some("http") if loopback => {}
                _ => p.at(
                    raw.directory.span(),
                    "proxy.tls.acme.directory",
                    format!("'{directory}' is not an https:// URL (http:// only on loopback): give the CA's directory URL, e.g. https://acme-v02.api.letsencrypt.org/directory"),
                ),
            }
        }
        Err(e) => p.at(
            raw.directory.span(),
            "proxy.tls.acme.directory",
            format!("'{directory}' is not a URL: {e}"),
        ),
    }
    let email = raw.email.as_ref().and_then(|e| {
        let v = e.get_ref().trim();
        let ok = v.split_once('@').is_some_and(|(user, domain)| {
            !user.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        }) && !v.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            p.at(
                e.span(),
                "proxy.tls.acme.email",
                format!("'{v}' is not an email address: give the operator's, e.g. ops@example.net (the CA writes there about expiring certificates)"),
            );
        }
        (!v.is_empty()).then(|| v.to_string())
    });
    let app_hosts: Vec<&String> = apps.iter().flat_map(|a| a.hosts.iter()).collect();
    let served = |h: &str| {
        app_hosts.iter().any(|a| {
            a.as_str() == h
                || a.strip_prefix("*.")
                    .is_some_and(|parent| h.split_once('.').is_some_and(|(_, rest)| rest == parent))
        })
    };
    let hosts = match &raw.hosts {
        Some(list) => {
            if list.get_ref().is_empty() {
                p.at(list.span(), "proxy.tls.acme.hosts", "is empty: list the names to order, or leave hosts out for every host of every app");
            }
            list.get_ref()
                .iter()
                .enumerate()
                .filter_map(|(i, h)| {
                    let host = h.get_ref().trim().to_ascii_lowercase();
                    let key = format!("proxy.tls.acme.hosts[{i}]");
                    if host.contains('*') {
                        p.at(h.span(), key, format!("'{host}' is a wildcard: http-01 and tls-alpn-01 cannot validate one; list each name, or serve the wildcard from [[proxy.tls.certs]]"));
                        None
                    } else if !valid_host(&host) {
                        p.at(h.span(), key, format!("invalid name '{host}': a DNS name"));
                        None
                    } else if !served(&host) {
                        p.at(h.span(), key, format!("'{host}' is not a host of any app: add it to an app's hosts, or remove it here"));
                        None
                    } else {
                        Some(host)
                    }
                })
                .collect()
        }
        None => {
            let all: Vec<String> = app_hosts
                .iter()
                .filter(|h| !h.contains('*'))
                .map(|h| h.to_string())
                .collect();
            if all.is_empty() {
                p.at(span.clone(), "proxy.tls.acme.hosts", "no app has a host name to order a certificate for: give the apps hosts, or list hosts here");
            }
            all
        }
    };
    let challenge = match &raw.challenge {
        None => defaults::ACME_CHALLENGE,
        Some(c) => match c.get_ref().as_str() {
            "http-01" => AcmeChallenge::Http01,
            "tls-alpn-01" => AcmeChallenge::TlsAlpn01,
            other => {
                p.at(
                    c.span(),
                    "proxy.tls.acme.challenge",
                    format!("unknown challenge '{other}': expected 'http-01' or 'tls-alpn-01'"),
                );
                defaults::ACME_CHALLENGE
            }
        },
    };
    if challenge == AcmeChallenge::Http01 && !has_plain_listener {
        p.at(
            raw.challenge.as_ref().map_or(span.clone(), |c| c.span()),
            "proxy.tls.acme.challenge",
            "http-01 is answered on the plain listeners, and proxy.listen is empty: add a plain listener (the CA connects to port 80), or use challenge = \"tls-alpn-01\"",
        );
    }
    let ca_file = raw
        .ca_file
        .as_ref()
        .filter(|c| !c.get_ref().is_empty())
        .map(|c| {
            let path = existing_file(c, base, "proxy.tls.acme.ca_file", p);
            check_file(
                &path,
                pem_certificates,
                c.span(),
                "proxy.tls.acme.ca_file",
                p,
            );
            path
        });
    let renew_before = dur_or(
        &raw.renew_before,
        defaults::ACME_RENEW_BEFORE,
        "proxy.tls.acme.renew_before",
        p,
    );
    if let Some(r) = &raw.renew_before {
        if renew_before.is_zero() {
            p.at(
                r.span(),
                "proxy.tls.acme.renew_before",
                "must be more than 0s",
            );
        }
    }
    AcmeConfig {
        directory,
        email,
        hosts,
        challenge,
        ca_file,
        renew_before,
    }
}

/// The certificates of a PEM file: at least one, or why not.
pub fn pem_certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[proxy]
listen = ["127.0.0.1:8080"]

[state]
path = "state.json"

[[app]]
name = "web"
hosts = ["Web.Example.net"]

[app.blue]
upstreams = ["127.0.0.1:3001"]

[app.green]
upstreams = ["127.0.0.1:3002"]
"#;

    fn problems(text: &str) -> Vec<Problem> {
        match from_str(text, Path::new("/etc/bgproxy/t.toml")) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(v)) => v,
            Err(e) => panic!("{e}"),
        }
    }

    fn one(text: &str) -> Problem {
        let mut v = problems(text);
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    #[test]
    fn good_config_has_defaults() {
        let c = from_str(GOOD, Path::new("/etc/bgproxy/t.toml")).unwrap();
        assert_eq!(c.apps[0].hosts, vec!["web.example.net"]);
        assert_eq!(c.apps[0].initial_live, Color::Blue);
        assert_eq!(c.apps[0].health, HealthConfig::default());
        assert_eq!(c.state.path, PathBuf::from("/etc/bgproxy/state.json"));
        assert_eq!(c.control.listen, defaults::CONTROL_LISTEN);
    }

    /// The defaults as they were before they were named: a change of
    /// behaviour must show here, not slip in through a constant.
    #[test]
    fn defaults_keep_their_values() {
        let c = from_str(GOOD, Path::new("/etc/bgproxy/t.toml")).unwrap();
        let secs = Duration::from_secs;
        assert_eq!(c.proxy.threads, defaults::threads());
        assert!(!c.proxy.work_stealing);
        assert_eq!(c.proxy.grace_period, secs(30));
        assert_eq!(c.proxy.shutdown_timeout, secs(5));
        assert_eq!(c.proxy.max_header_size, 32 * 1024);
        assert_eq!(c.proxy.max_headers, 100);
        assert_eq!(c.proxy.read_buffer, 0);
        assert_eq!(c.proxy.client_timeout, secs(60));
        assert_eq!(c.proxy.client_idle_timeout, secs(60));
        assert_eq!(c.control.listen, "127.0.0.1:9900".parse().unwrap());
        assert_eq!(c.control.token_file, None);
        assert!(c.control.watch_config);
        assert_eq!(c.control.nice, None);
        assert!(c.metrics.is_none());
        let log = from_str(
            &GOOD.replace("\n[state]", "\n[log]\n[state]"),
            Path::new("t.toml"),
        )
        .unwrap()
        .log;
        for l in [&c.log, &log] {
            assert_eq!(
                (l.level.as_str(), l.format, l.access, l.access_sample),
                ("info", LogFormat::Text, true, 1.0)
            );
        }
        let no_state = from_str(
            &GOOD.replace("[state]\npath = \"state.json\"\n", ""),
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(
            no_state.state.path,
            PathBuf::from("/var/lib/bgproxy/state.json")
        );
        let a = &c.apps[0];
        assert_eq!(a.initial_live, Color::Blue);
        assert!(!a.redirect_https && !a.h2);
        assert_eq!(a.max_body, 100 * 1024 * 1024);
        assert_eq!(a.connect_timeout, secs(3));
        assert_eq!(a.read_timeout, secs(60));
        assert_eq!(a.drain_timeout, Some(secs(30)));
        assert_eq!(a.tunnel_timeout, Some(secs(3600)));
        let h = &a.health;
        assert_eq!(h.path, "/health");
        assert_eq!(h.interval, secs(1));
        assert_eq!(h.timeout, Duration::from_millis(500));
        assert_eq!((h.rise.get(), h.fall.get()), (2, 3));
        assert_eq!(h.expect_status, 200);
        assert_eq!(a.deploy.health_timeout, secs(60));
        assert!(a.deploy.steps.is_empty());
        let with_step = from_str(
            &format!("{GOOD}\n[[app.deploy.steps]]\nname = \"a\"\nrun = \"true\"\n"),
            Path::new("t.toml"),
        )
        .unwrap();
        let d = &with_step.apps[0].deploy;
        assert_eq!(d.health_timeout, secs(60));
        assert_eq!((d.steps[0].timeout, d.steps[0].migrate), (secs(300), false));
    }

    #[test]
    fn unknown_key_is_named_with_line() {
        let p = one(&GOOD.replace("[state]", "[state]\nfsync = true"));
        assert_eq!(p.line, 6);
        assert!(p.message.contains("unknown field `fsync`"), "{}", p.message);
    }

    #[test]
    fn bad_duration_names_key_line_and_column() {
        let p = one(&format!("{GOOD}\n[app.health]\ninterval = \"soon\"\n"));
        assert_eq!(p.key, "app[0].health.interval");
        assert_eq!((p.line, p.column), (19, 12));
        assert!(p.message.contains("invalid duration 'soon'"));
    }

    #[test]
    fn bad_color() {
        let p = one(&GOOD.replace("hosts = [", "initial_live = \"purple\"\nhosts = ["));
        assert!(
            p.message.contains("unknown variant `purple`"),
            "{}",
            p.message
        );
        assert_eq!(p.line, 10);
    }

    #[test]
    fn empty_and_unparsable_upstreams() {
        let p = one(&GOOD.replace("upstreams = [\"127.0.0.1:3001\"]", "upstreams = []"));
        assert_eq!(p.key, "app[0].blue.upstreams");
        let p = one(&GOOD.replace("127.0.0.1:3002", "nope"));
        assert_eq!(p.key, "app[0].green.upstreams[0]");
        assert_eq!(p.line, 16);
        assert!(p.message.contains("expected \"host:port\""));
    }

    #[test]
    fn duplicate_names_hosts_and_defaults() {
        let second = GOOD.split("[[app]]").nth(1).unwrap();
        let two = format!("{GOOD}[[app]]{second}");
        let v = problems(&two);
        assert!(
            v.iter()
                .any(|p| p.key == "app[1].name" && p.message.contains("duplicate app name 'web'")),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|p| p.key == "app[1].hosts[0]" && p.message.contains("already routed")),
            "{v:?}"
        );
        let p = one(&GOOD.replace("127.0.0.1:3002", "127.0.0.1:3001"));
        assert!(p.message.contains("both blue and green"), "{p:?}");

        let no_hosts = GOOD.replace("hosts = [\"Web.Example.net\"]\n", "");
        let other = no_hosts
            .split("[[app]]")
            .nth(1)
            .unwrap()
            .replace("\"web\"", "\"api\"")
            .replace("300", "400");
        let v = problems(&format!("{no_hosts}[[app]]{other}"));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("only one app can be the default"));
        assert_eq!(v[0].key, "app[1].hosts");
    }

    #[test]
    fn deploy_steps_are_checked() {
        let text = format!(
            "{GOOD}\n[[app.deploy.steps]]\nname = \"pull\"\nrun = \"ssh {{hostname}} true\"\n"
        );
        let p = one(&text);
        assert_eq!(p.key, "app[0].deploy.steps[0].run");
        assert!(p.message.contains("unknown placeholder '{hostname}'"));
        let twice = format!("{GOOD}\n[[app.deploy.steps]]\nname = \"a\"\nrun = \"true\"\n[[app.deploy.steps]]\nname = \"a\"\nrun = \"true\"\ntimeout = \"0\"\n");
        let v = problems(&twice);
        assert!(
            v.iter()
                .any(|p| p.message.contains("duplicate step name 'a'")),
            "{v:?}"
        );
        assert!(
            v.iter().any(|p| p.key == "app[0].deploy.steps[1].timeout"),
            "{v:?}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("16KiB").unwrap(), 16 * 1024);
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert!(
            parse_size("10MB").is_err() && parse_size("lots").is_err() && parse_size("-1").is_err()
        );
        let p = one(&GOOD.replace("hosts = [", "max_body = \"big\"\nhosts = ["));
        assert_eq!(p.key, "app[0].max_body");
    }

    #[test]
    fn front_door_timeouts() {
        let cfg = from_str(
            &GOOD.replace("hosts = [", "h2 = true\ndrain_timeout = \"0\"\nhosts = ["),
            Path::new("t.toml"),
        )
        .unwrap();
        assert!(cfg.apps[0].h2);
        assert_eq!(cfg.apps[0].drain_timeout, None, "0 means never");
        let cfg = from_str(GOOD, Path::new("t.toml")).unwrap();
        assert_eq!(cfg.apps[0].drain_timeout, Some(Duration::from_secs(30)));
        assert_eq!(cfg.apps[0].tunnel_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(cfg.proxy.client_idle_timeout, Duration::from_secs(60));
        let p = one(&GOOD.replace("hosts = [", "drain_timeout = \"soon\"\nhosts = ["));
        assert_eq!(p.key, "app[0].drain_timeout");
        let p = one(&GOOD.replace(
            "listen = [\"127.0.0.1:8080\"]",
            "listen = [\"127.0.0.1:8080\"]\nclient_idle_timeout = \"500ms\"",
        ));
        assert_eq!(p.key, "proxy.client_idle_timeout");
        assert!(p.message.contains("at least 1s"), "{p}");
    }

    #[test]
    fn syntax_error_has_place() {
        let p = one("[proxy\nlisten = 1");
        assert_eq!(p.line, 1);
    }

    #[test]
    fn display_is_file_line_col_key() {
        let p = one(&GOOD.replace("127.0.0.1:8080", "localhost"));
        assert_eq!(
            p.to_string(),
            "/etc/bgproxy/t.toml:3:11: proxy.listen[0]: invalid address 'localhost': expected \"ip:port\", like \"0.0.0.0:80\""
        );
    }

    // Cross-field problems: each points at the key involved, not at 1:1.
    // GOOD's lines: 2 [proxy], 3 listen, 5 [state], 8 [[app]], 9 name,
    // 10 hosts, 12 [app.blue], 13 its upstreams, 15 [app.green], 16 its
    // upstreams; it ends with a newline after line 16.

    #[test]
    fn redirect_without_tls_points_at_redirect_https() {
        let p = one(&GOOD.replace("hosts = [", "redirect_https = true\nhosts = ["));
        assert_eq!(p.key, "app[0].redirect_https");
        assert_eq!((p.line, p.column), (10, 18), "{p}");
        assert!(p.message.contains("no [proxy.tls]"), "{p}");
        assert!(p.message.contains("either add [proxy.tls]"), "{p}");
        assert!(
            problems(&GOOD.replace("hosts = [", "redirect_https = false\nhosts = [")).is_empty()
        );
    }

    #[test]
    fn no_app_points_past_the_last_line() {
        let text = GOOD.split("[[app]]").next().unwrap().trim_end().to_string() + "\n\n\n";
        let p = one(&text);
        assert_eq!(p.key, "app");
        assert_eq!((p.line, p.column), (7, 1), "the line after path = ...: {p}");
        assert!(p.message.contains("add at least one [[app]]"), "{p}");
        let p = one(text.trim_end());
        assert_eq!(
            (p.line, p.column),
            (6, 20),
            "no final newline: end of the last line"
        );
    }

    #[test]
    fn duplicate_listener_points_at_the_second_and_names_the_first() {
        let p = one(&GOOD.replace(
            "listen = [\"127.0.0.1:8080\"]",
            "listen = [\"127.0.0.1:8080\",\n  \"127.0.0.1:8080\"]",
        ));
        assert_eq!(p.key, "proxy.listen[1]");
        assert_eq!((p.line, p.column), (4, 3), "{p}");
        assert!(
            p.message.contains("also used by proxy.listen[0] (line 3)"),
            "{p}"
        );
        let p = one(&GOOD.replace("[state]", "[metrics]\nlisten = \"127.0.0.1:8080\"\n[state]"));
        assert_eq!(p.key, "metrics.listen");
        assert_eq!((p.line, p.column), (6, 10), "{p}");
        assert!(p.message.contains("proxy.listen[0] (line 3)"), "{p}");
        let p = one(&GOOD.replace(
            "[state]",
            "[control]\nlisten = \"127.0.0.1:9901\"\n[metrics]\nlisten = \"127.0.0.1:9901\"\n[state]",
        ));
        assert_eq!(p.key, "metrics.listen");
        assert_eq!(p.line, 8, "{p}");
        assert!(p.message.contains("control.listen (line 6)"), "{p}");
    }

    #[test]
    fn listener_on_the_default_control_address_points_at_the_listener() {
        let p = one(&GOOD.replace("127.0.0.1:8080", "127.0.0.1:9900"));
        assert_eq!(p.key, "proxy.listen[0]");
        assert_eq!((p.line, p.column), (3, 11), "{p}");
        assert!(p.message.contains("control.listen's default"), "{p}");
        // Set control.listen elsewhere, and the address is free.
        let moved = GOOD
            .replace("127.0.0.1:8080", "127.0.0.1:9900")
            .replace("[state]", "[control]\nlisten = \"127.0.0.1:9999\"\n[state]");
        assert!(problems(&moved).is_empty());
    }

    #[test]
    fn no_listener_points_at_proxy_listen() {
        let p = one(&GOOD.replace("[\"127.0.0.1:8080\"]", "[]"));
        assert_eq!(p.key, "proxy.listen");
        assert_eq!((p.line, p.column), (3, 10), "{p}");
        assert!(p.message.contains("[proxy.tls] listen"), "{p}");
    }

    /// A file that exists, for keys that only need one (certificates).
    fn existing() -> String {
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").to_string()
    }

    #[test]
    fn empty_tls_listen_points_at_its_list() {
        let f = existing();
        let p = one(&GOOD.replace(
            "[state]",
            &format!("[proxy.tls]\nlisten = []\ncert = \"{f}\"\nkey = \"{f}\"\n[state]"),
        ));
        assert_eq!(p.key, "proxy.tls.listen");
        assert_eq!((p.line, p.column), (6, 10), "{p}");
    }

    #[test]
    fn tls_listener_clashing_with_plain_one() {
        let f = existing();
        let p = one(&GOOD.replace(
            "[state]",
            &format!(
                "[proxy.tls]\nlisten = [\"127.0.0.1:8080\"]\ncert = \"{f}\"\nkey = \"{f}\"\n[state]"
            ),
        ));
        assert_eq!(p.key, "proxy.tls.listen[0]");
        assert_eq!((p.line, p.column), (6, 11), "{p}");
        assert!(p.message.contains("proxy.listen[0] (line 3)"), "{p}");
    }

    #[test]
    fn certificate_name_served_twice_names_the_first() {
        let f = existing();
        let cert = |hosts: &str| {
            format!("[[proxy.tls.certs]]\nhosts = [{hosts}]\ncert = \"{f}\"\nkey = \"{f}\"\n")
        };
        let text = GOOD.replace(
            "[state]",
            &format!(
                "[proxy.tls]\nlisten = [\"127.0.0.1:8443\"]\ncert = \"{f}\"\nkey = \"{f}\"\n{}{}[state]",
                cert("\"a.example.net\""),
                cert("\"b.example.net\", \"A.example.net\""),
            ),
        );
        let p = one(&text);
        assert_eq!(p.key, "proxy.tls.certs[1].hosts[1]");
        assert_eq!((p.line, p.column), (14, 27), "{p}");
        assert!(p.message.contains("proxy.tls.certs[0] (line 10)"), "{p}");
    }

    #[test]
    fn duplicate_app_and_host_point_at_the_second() {
        let second = GOOD.split("[[app]]").nth(1).unwrap();
        let v = problems(&format!("{GOOD}[[app]]{second}"));
        // The second app starts at line 17.
        let name = v.iter().find(|p| p.key == "app[1].name").unwrap();
        assert_eq!((name.line, name.column), (18, 8), "{name}");
        assert!(name.message.contains("also app[0], line 9"), "{name}");
        let host = v.iter().find(|p| p.key == "app[1].hosts[0]").unwrap();
        assert_eq!((host.line, host.column), (19, 10), "{host}");
        assert!(host.message.contains("app 'web' (line 10)"), "{host}");
    }

    #[test]
    fn two_default_apps_point_at_the_second_header() {
        let no_hosts = GOOD.replace("hosts = [\"Web.Example.net\"]\n", "");
        let other = no_hosts
            .split("[[app]]")
            .nth(1)
            .unwrap()
            .replace("\"web\"", "\"api\"")
            .replace("300", "400");
        let p = one(&format!("{no_hosts}[[app]]{other}"));
        assert_eq!(p.key, "app[1].hosts");
        assert_eq!((p.line, p.column), (16, 1), "{p}");
        assert!(p.message.contains("neither has 'web' (line 8)"), "{p}");
    }

    #[test]
    fn upstream_in_both_colors_points_at_green() {
        let p = one(&GOOD.replace("127.0.0.1:3002", "127.0.0.1:3001"));
        assert_eq!(p.key, "app[0].green.upstreams[0]");
        assert_eq!((p.line, p.column), (16, 14), "{p}");
        assert!(
            p.message.contains("both blue and green (blue: line 13)"),
            "{p}"
        );
    }

    #[test]
    fn duplicate_upstream_and_step_name_name_the_first() {
        let p = one(&GOOD.replace(
            "[\"127.0.0.1:3001\"]",
            "[\"127.0.0.1:3001\",\n  \"127.0.0.1:3001\"]",
        ));
        assert_eq!(p.key, "app[0].blue.upstreams[1]");
        assert_eq!((p.line, p.column), (14, 3), "{p}");
        assert!(p.message.contains("also line 13"), "{p}");
        let step = "[[app.deploy.steps]]\nname = \"a\"\nrun = \"true\"\n";
        let p = one(&format!("{GOOD}{step}{step}"));
        assert_eq!(p.key, "app[0].deploy.steps[1].name");
        assert_eq!((p.line, p.column), (21, 8), "{p}");
        assert!(p.message.contains("also line 18"), "{p}");
    }

    #[test]
    fn zero_step_timeout_points_at_the_timeout() {
        let p = one(&format!(
            "{GOOD}[[app.deploy.steps]]\nname = \"a\"\nrun = \"true\"\ntimeout = \"0\"\n"
        ));
        assert_eq!(p.key, "app[0].deploy.steps[0].timeout");
        assert_eq!((p.line, p.column), (20, 11), "{p}");
    }

    /// GOOD plus an API route (lines 17-27) and a rate limit.
    const ROUTED: &str = r#"[[app.routes]]
name = "api"
path_prefix = "/api/"
strip_prefix = true
[app.routes.health]
path = "/api/health"
rise = 1
[app.routes.blue]
upstreams = ["127.0.0.1:4001"]
[app.routes.green]
upstreams = ["127.0.0.1:4002"]
"#;

    #[test]
    fn routes_inherit_the_apps_health_and_rate_limits_have_defaults() {
        let app_health = "[app.health]\ninterval = \"3s\"\nfall = 5\n";
        let text =
            format!("{GOOD}{ROUTED}{app_health}[app.rate_limit]\nrequests_per_second = 10\n");
        let c = from_str(&text, Path::new("t.toml")).unwrap();
        let a = &c.apps[0];
        let r = &a.routes[0];
        assert_eq!(
            (r.name.as_str(), r.path_prefix.as_str(), r.strip_prefix),
            ("api", "/api/", true)
        );
        assert_eq!(
            r.upstreams(Color::Green),
            ["127.0.0.1:4002".parse().unwrap()]
        );
        // Its own path and rise; the app's interval and fall; the defaults' rest.
        assert_eq!(r.health.path, "/api/health");
        assert_eq!(r.health.rise.get(), 1);
        assert_eq!(r.health.interval, Duration::from_secs(3));
        assert_eq!(r.health.fall.get(), 5);
        assert_eq!(r.health.timeout, defaults::HEALTH_TIMEOUT);
        assert_eq!(a.health.path, "/health", "the app keeps its own");
        let l = a.rate_limit.as_ref().unwrap();
        assert_eq!(
            (l.requests_per_second.get(), l.burst.get()),
            (10, 10),
            "burst defaults to the rate"
        );
        assert_eq!(
            (l.key.clone(), l.max_keys),
            (RateLimitKey::ClientIp, 100_000)
        );
        let no_strip = ROUTED.replace("strip_prefix = true\n", "");
        let c = from_str(&format!("{GOOD}{no_strip}"), Path::new("t.toml")).unwrap();
        assert!(!c.apps[0].routes[0].strip_prefix);
        assert!(c.apps[0].rate_limit.is_none());
    }

    #[test]
    fn bad_routes_are_named_with_their_place() {
        let two = |second: &str| format!("{GOOD}{ROUTED}{second}");
        let other = ROUTED.replace("4001", "5001").replace("4002", "5002");
        // Duplicate name (line 28 is the second route's name).
        let p = one(&two(&other.replace("/api/", "/v2/")));
        assert_eq!(
            (p.key.as_str(), p.line),
            ("app[0].routes[1].name", 29),
            "{p}"
        );
        assert!(
            p.message
                .contains("duplicate route name 'api' (also line 18)"),
            "{p}"
        );
        // Names that make the same deploy variable.
        let a = ROUTED.replace("\"api\"", "\"api-v2\"");
        let b = other
            .replace("\"api\"", "\"API_v2\"")
            .replace("/api/", "/v2/");
        let p = one(&format!("{GOOD}{a}{b}"));
        assert!(
            p.message
                .contains("same deploy variable BG_UPSTREAMS_API_V2"),
            "{p}"
        );
        // Duplicate prefix.
        let p = one(&two(&other.replace("\"api\"", "\"v2\"")));
        assert_eq!(p.key, "app[0].routes[1].path_prefix");
        assert!(
            p.message
                .contains("duplicate path prefix '/api/' (also line 19)"),
            "{p}"
        );
        // A prefix that is not a path.
        for bad in ["api/", "/a b/", "/api?x", ""] {
            let p = one(&format!(
                "{GOOD}{}",
                ROUTED.replace("\"/api/\"", &format!("\"{bad}\""))
            ));
            assert_eq!(
                (p.key.as_str(), p.line),
                ("app[0].routes[0].path_prefix", 19),
                "{p}"
            );
            assert!(p.message.contains("must start with '/'"), "{p}");
        }
        let p = one(&format!("{GOOD}{}", ROUTED.replace("\"api\"", "\"a.b\"")));
        assert_eq!(p.key, "app[0].routes[0].name");
        // Unknown keys in a route are errors too.
        let p = one(&format!(
            "{GOOD}{}",
            ROUTED.replace("strip_prefix", "strip")
        ));
        assert!(p.message.contains("unknown field `strip`"), "{p}");
    }

    #[test]
    fn an_upstream_serves_one_color_anywhere_in_the_app() {
        // The route's green is the app's blue.
        let p = one(&format!(
            "{GOOD}{}",
            ROUTED.replace("127.0.0.1:4002", "127.0.0.1:3001")
        ));
        assert_eq!(
            (p.key.as_str(), p.line),
            ("app[0].routes[0].green.upstreams[0]", 27),
            "{p}"
        );
        assert!(
            p.message
                .contains("also blue in app[0].blue.upstreams[0] (line 13)"),
            "{p}"
        );
        // The route's blue and green share one.
        let p = one(&format!(
            "{GOOD}{}",
            ROUTED.replace("127.0.0.1:4002", "127.0.0.1:4001")
        ));
        assert!(
            p.message
                .contains("also blue in app[0].routes[0].blue.upstreams[0] (line 25)"),
            "{p}"
        );
        // A second route's blue is the first route's green.
        let other = ROUTED
            .replace("\"api\"", "\"v2\"")
            .replace("/api/", "/v2/")
            .replace("127.0.0.1:4002", "127.0.0.1:5002")
            .replace("127.0.0.1:4001", "127.0.0.1:4002");
        let v = problems(&format!("{GOOD}{ROUTED}{other}"));
        assert!(
            v.iter()
                .any(|p| p.key == "app[0].routes[1].blue.upstreams[0]"
                    && p.message
                        .contains("also green in app[0].routes[0].green.upstreams[0]")),
            "{v:?}"
        );
        // The same color in two routes is allowed (one server, two services).
        let same = ROUTED.replace("\"api\"", "\"v2\"").replace("/api/", "/v2/");
        assert!(problems(&format!("{GOOD}{ROUTED}{same}")).is_empty());
    }

    #[test]
    fn bad_rate_limits_are_named() {
        let limit = |body: &str| format!("{GOOD}[app.rate_limit]\n{body}");
        for (body, key) in [
            (
                "requests_per_second = 0",
                "app[0].rate_limit.requests_per_second",
            ),
            (
                "requests_per_second = 5\nburst = -1",
                "app[0].rate_limit.burst",
            ),
            (
                "requests_per_second = 5\nmax_keys = 0",
                "app[0].rate_limit.max_keys",
            ),
            (
                "requests_per_second = 5\nkey = \"cookie:x\"",
                "app[0].rate_limit.key",
            ),
        ] {
            let p = one(&limit(body));
            assert_eq!(p.key, key, "{p}");
        }
        let p = one(&limit("burst = 5"));
        assert!(
            p.message.contains("missing field `requests_per_second`"),
            "{p}"
        );
        let c = from_str(
            &limit("requests_per_second = 1000000\nburst = 1000000\nkey = \"header:X-Api-Key\"\nmax_keys = 50"),
            Path::new("t.toml"),
        )
        .unwrap();
        let l = c.apps[0].rate_limit.clone().unwrap();
        assert_eq!(l.key.to_string(), "header:x-api-key");
        assert_eq!((l.burst.get(), l.max_keys), (1_000_000, 50));
    }

    #[test]
    fn front_door_limits_have_defaults_and_bounds() {
        let c = from_str(GOOD, Path::new("t.toml")).unwrap();
        assert_eq!(c.proxy.request_header_timeout, Duration::from_secs(10));
        assert_eq!(
            (c.proxy.max_connections, c.proxy.max_connections_per_ip),
            (20_000, 1_000)
        );
        let set = GOOD.replace(
            "listen = [\"127.0.0.1:8080\"]",
            "listen = [\"127.0.0.1:8080\"]\nrequest_header_timeout = \"2s\"\nmax_connections = 5\nmax_connections_per_ip = 2",
        );
        let c = from_str(&set, Path::new("t.toml")).unwrap();
        assert_eq!(c.proxy.request_header_timeout, Duration::from_secs(2));
        assert_eq!(
            (c.proxy.max_connections, c.proxy.max_connections_per_ip),
            (5, 2)
        );
        for (line, key) in [
            (
                "request_header_timeout = \"0\"",
                "proxy.request_header_timeout",
            ),
            ("max_connections = 0", "proxy.max_connections"),
            (
                "max_connections_per_ip = -1",
                "proxy.max_connections_per_ip",
            ),
        ] {
            let p = one(&GOOD.replace(
                "listen = [\"127.0.0.1:8080\"]",
                &format!("listen = [\"127.0.0.1:8080\"]\n{line}"),
            ));
            assert_eq!((p.key.as_str(), p.line), (key, 4), "{p}");
        }
    }

    /// Every rollout, analysis, mirror and verify value out of its range is
    /// named by key and line; good ones load.
    #[test]
    fn rollout_analysis_mirror_and_verify_values_name_their_key() {
        let good = format!(
            "{GOOD}[app.rollout]\nsteps = [\"20%\", \"100%\"]\nsticky = \"client_ip\"\n\
             [app.analysis]\nmin_requests = 5\nmax_inconclusive = 2\nwatch = \"30s\"\n\
             [app.mirror]\npercent = 10\n\
             [[app.verify]]\nname = \"home\"\npath = \"/\"\nexpect_status = 204\n"
        );
        let c = from_str(&good, Path::new("/etc/bgproxy/t.toml")).unwrap();
        let app = &c.apps[0];
        assert_eq!(app.rollout.steps, [20, 100]);
        assert_eq!(app.rollout.sticky, Sticky::ClientIp);
        assert_eq!(
            (app.analysis.min_requests, app.analysis.max_inconclusive),
            (5, 2)
        );
        assert_eq!(app.mirror.percent, 10);
        assert_eq!(app.verify[0].expect_status, 204);
        for (from, to, key) in [
            (
                "min_requests = 5",
                "min_requests = 0",
                "app[0].analysis.min_requests",
            ),
            (
                "max_inconclusive = 2",
                "max_inconclusive = 5000",
                "app[0].analysis.max_inconclusive",
            ),
            ("percent = 10", "percent = 101", "app[0].mirror.percent"),
            (
                "expect_status = 204",
                "expect_status = 99",
                "app[0].verify[0].expect_status",
            ),
            (
                "\"20%\", \"100%\"",
                "\"50%\", \"20%\", \"100%\"",
                "app[0].rollout.steps",
            ),
            ("\"client_ip\"", "\"sometimes\"", "app[0].rollout.sticky"),
        ] {
            let bad = good.replace(from, to);
            let p = one(&bad);
            assert_eq!(p.key, key, "{p}");
            let line = bad.lines().position(|l| l.contains(to)).unwrap() + 1;
            assert_eq!(p.line, line, "{p}");
        }
    }

    fn with_acme(acme: &str) -> String {
        GOOD.replace(
            "[state]",
            &format!(
                "[proxy.tls]\nlisten = [\"127.0.0.1:8443\"]\n[proxy.tls.acme]\n{acme}\n[state]"
            ),
        )
    }

    #[test]
    fn acme_takes_every_app_host_and_the_defaults() {
        let c = from_str(
            &with_acme("directory = \"https://ca.example/dir\""),
            Path::new("/etc/bgproxy/t.toml"),
        )
        .unwrap();
        let tls = c.proxy.tls.unwrap();
        assert_eq!((tls.cert, tls.key), (None, None));
        let acme = tls.acme.unwrap();
        assert_eq!(acme.hosts, ["web.example.net"]);
        assert_eq!(acme.challenge, AcmeChallenge::Http01);
        assert_eq!(acme.renew_before, Duration::from_secs(30 * 86_400));
        assert_eq!(acme.email, None);
        // http:// only on loopback (a CA on this host, in tests).
        assert!(problems(&with_acme("directory = \"http://127.0.0.1:14000/dir\"")).is_empty());
    }

    #[test]
    fn acme_problems_name_their_keys() {
        let key = |acme: &str| {
            let p = one(&with_acme(&format!(
                "directory = \"https://ca.example/dir\"\n{acme}"
            )));
            (p.key, p.message)
        };
        let (k, m) = key("email = \"ops\"");
        assert_eq!(k, "proxy.tls.acme.email", "{m}");
        let (k, m) = key("hosts = [\"other.example\"]");
        assert_eq!(k, "proxy.tls.acme.hosts[0]");
        assert!(m.contains("not a host of any app"), "{m}");
        let (k, m) = key("hosts = [\"*.web.example.net\"]");
        assert_eq!(k, "proxy.tls.acme.hosts[0]");
        assert!(m.contains("wildcard"), "{m}");
        let (k, m) = key("challenge = \"dns-01\"");
        assert_eq!(k, "proxy.tls.acme.challenge");
        assert!(m.contains("'http-01' or 'tls-alpn-01'"), "{m}");
        let (k, m) = key(&format!("ca_file = \"{}\"", existing()));
        assert_eq!(k, "proxy.tls.acme.ca_file");
        assert!(m.contains("no PEM certificate"), "{m}");
        let (k, _) = key("renew_before = \"0\"");
        assert_eq!(k, "proxy.tls.acme.renew_before");
        let p = one(&with_acme("directory = \"http://ca.example/dir\""));
        assert_eq!(p.key, "proxy.tls.acme.directory");
        assert!(p.message.contains("https://"), "{p}");
    }

    #[test]
    fn cluster_tls_is_all_https_with_a_ca_and_whole_client_identities() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["lb1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (ca, crt, k) = (
            dir.path().join("ca.pem"),
            dir.path().join("lb1.pem"),
            dir.path().join("lb1.key"),
        );
        std::fs::write(&ca, cert.pem()).unwrap();
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let with = |keys: &str| format!("{GOOD}\n[cluster]\n{keys}\n");
        let https = "etcd = [\"https://10.0.0.5:2379\", \"https://10.0.0.6:2379\"]";
        let files = format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            ca.display(),
            crt.display(),
            k.display()
        );
        let c = from_str(
            &with(&format!("{https}\n{files}")),
            Path::new("/etc/bgproxy/t.toml"),
        )
        .unwrap();
        let tls = c.cluster.unwrap().tls.unwrap();
        assert_eq!(tls.ca_file, ca);
        assert_eq!(tls.identity, Some((crt.clone(), k.clone())));
        // Plain http: no TLS, and TLS files are refused.
        let c = from_str(
            &with("etcd = [\"http://10.0.0.5:2379\"]"),
            Path::new("/etc/bgproxy/t.toml"),
        )
        .unwrap();
        assert_eq!(c.cluster.unwrap().tls, None);
        let p = one(&with(&format!(
            "etcd = [\"http://10.0.0.5:2379\"]\nca_file = \"{}\"",
            ca.display()
        )));
        assert_eq!(p.key, "cluster.ca_file");
        assert!(p.message.contains("https://"), "{p}");
        // Mixed schemes, named at the odd one out.
        let text = with(&format!(
            "etcd = [\"https://10.0.0.5:2379\", \"http://10.0.0.6:2379\"]\nca_file = \"{}\"",
            ca.display()
        ));
        let p = one(&text);
        assert_eq!(p.key, "cluster.etcd");
        assert!(p.message.contains("mixes"), "{p}");
        let line = text.lines().position(|l| l.contains("10.0.0.6")).unwrap() + 1;
        assert_eq!(p.line, line);
        // https without a CA; a certificate without its key; a key that is not one.
        let p = one(&with(https));
        assert_eq!(p.key, "cluster.ca_file");
        let p = one(&with(&format!(
            "{https}\nca_file = \"{}\"\ncert_file = \"{}\"",
            ca.display(),
            crt.display()
        )));
        assert_eq!(p.key, "cluster.cert_file");
        assert!(p.message.contains("key_file"), "{p}");
        let p = one(&with(&format!(
            "{https}\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            ca.display(),
            crt.display(),
            crt.display()
        )));
        assert_eq!(p.key, "cluster.key_file");
        assert!(p.message.contains("no PEM private key"), "{p}");
        let p = one(&with(&format!("{https}\nca_file = \"{}\"", k.display())));
        assert_eq!(p.key, "cluster.ca_file");
        assert!(p.message.contains("no PEM certificate"), "{p}");
    }

    #[test]
    fn tls_without_a_certificate_needs_acme() {
        let p = one(&GOOD.replace(
            "[state]",
            "[proxy.tls]\nlisten = [\"127.0.0.1:8443\"]\n[state]",
        ));
        assert_eq!(p.key, "proxy.tls.cert");
        assert!(p.message.contains("[proxy.tls.acme]"), "{p}");
    }

    #[test]
    fn http01_needs_a_plain_listener() {
        let text = with_acme("directory = \"https://ca.example/dir\"")
            .replace("listen = [\"127.0.0.1:8080\"]", "listen = []");
        let p = one(&text);
        assert_eq!(p.key, "proxy.tls.acme.challenge");
        assert!(p.message.contains("tls-alpn-01"), "{p}");
        let ok = text.replace(
            "[proxy.tls.acme]\n",
            "[proxy.tls.acme]\nchallenge = \"tls-alpn-01\"\n",
        );
        assert!(problems(&ok).is_empty(), "{:?}", problems(&ok));
    }
}
