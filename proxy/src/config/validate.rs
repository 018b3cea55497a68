//! Pure validation: `FileConfig` -> [`Config`], collecting every problem with
//! its key and place. No I/O here except resolving `host:port` upstreams that
//! are not IP literals, and checking that referenced files exist. Absent keys
//! take their value from [`defaults`](super::defaults).

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
            let span = e.span().unwrap_or(0..0);
            p.at(span, "", e.message().trim_end().to_string());
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

fn build(raw: FileConfig, base: &Path, file: &Path, p: &mut Problems<'_>) -> Config {
    let proxy_span = raw.proxy.span();
    let fp = raw.proxy.into_inner();
    let no_plain = fp.listen.get_ref().is_empty();
    let listen = addrs(&fp.listen, "proxy.listen", p);
    let tls = fp.tls.map(|t| {
        let span = t.span();
        let t = t.into_inner();
        let listen = addrs(&t.listen, "proxy.tls.listen", p);
        let cert = existing_file(&t.cert, base, "proxy.tls.cert", p);
        let key = existing_file(&t.key, base, "proxy.tls.key", p);
        if listen.is_empty() {
            p.at(
                span,
                "proxy.tls.listen",
                "is empty: list at least one \"ip:port\"",
            );
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let certs = t
            .certs
            .iter()
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
                        if let Some(other) = seen.insert(host.clone(), i) {
                            p.at(
                                h.span(),
                                format!("{k}.hosts[{j}]"),
                                format!("'{host}' is already served by proxy.tls.certs[{other}]"),
                            );
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
            .collect();
        TlsConfig {
            listen,
            cert,
            key,
            certs,
        }
    });
    if no_plain && tls.is_none() {
        p.at(
            proxy_span,
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

    let control = match raw.control {
        None => ControlConfig {
            listen: defaults::CONTROL_LISTEN,
            token_file: None,
            watch_config: defaults::WATCH_CONFIG,
            nice: None,
        },
        Some(c) => ControlConfig {
            listen: c
                .listen
                .as_ref()
                .and_then(|l| addr(l, "control.listen", p))
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
        },
    };
    let metrics = raw
        .metrics
        .and_then(|m| addr(&m.listen, "metrics.listen", p).map(|listen| MetricsConfig { listen }));
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
    let apps = apps(raw.app, base, p);
    if tls.is_none() {
        for (i, a) in apps.iter().enumerate() {
            if a.redirect_https {
                p.at(
                    0..0,
                    format!("app[{i}].redirect_https"),
                    format!(
                        "app '{}' redirects to HTTPS, but no [proxy.tls] is configured",
                        a.name
                    ),
                );
            }
        }
    }
    let max_header_size = size_or(
        &fp.max_header_size,
        defaults::MAX_HEADER_SIZE as u64,
        "proxy.max_header_size",
        p,
    ) as usize;
    if !(1024..=1024 * 1024).contains(&max_header_size) {
        p.at(
            fp.max_header_size.as_ref().map_or(0..0, |s| s.span()),
            "proxy.max_header_size",
            "must be between 1KiB and 1MiB",
        );
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
    if client_idle_timeout < Duration::from_secs(1) {
        p.at(
            fp.client_idle_timeout.as_ref().map_or(0..0, |s| s.span()),
            "proxy.client_idle_timeout",
            "must be at least 1s",
        );
    }
    let read_buffer = size_or(
        &fp.read_buffer,
        defaults::READ_BUFFER as u64,
        "proxy.read_buffer",
        p,
    ) as usize;
    if read_buffer != 0 && !(4096..=1024 * 1024).contains(&read_buffer) {
        p.at(
            fp.read_buffer.as_ref().map_or(0..0, |s| s.span()),
            "proxy.read_buffer",
            "must be 0 (unbuffered) or between 4KiB and 1MiB",
        );
    }
    let mut config = Config {
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
        },
        control,
        metrics,
        state,
        log,
        apps,
    };
    if config.apps.is_empty() {
        p.at(0..0, "app", "no [[app]] configured: add at least one");
    }
    listeners_distinct(&mut config, p);
    config
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
fn listeners_distinct(config: &mut Config, p: &mut Problems<'_>) {
    let mut seen: HashMap<SocketAddr, &str> = HashMap::new();
    for (addr, key) in config.listeners() {
        if let Some(other) = seen.insert(addr, key) {
            p.at(0..0, key, format!("address {addr} is also used by {other}"));
        }
    }
}

fn apps(raw: Vec<Spanned<FileApp>>, base: &Path, p: &mut Problems<'_>) -> Vec<AppConfig> {
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut hosts: HashMap<String, String> = HashMap::new();
    let mut default_app: Option<String> = None;
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
        if let Some(first) = names.insert(name.clone(), i) {
            p.at(
                a.name.span(),
                format!("{k}.name"),
                format!("duplicate app name '{name}' (also app[{first}])"),
            );
        }
        let mut app_hosts = Vec::new();
        for (j, h) in a.hosts.iter().enumerate() {
            let host = h.get_ref().trim().to_ascii_lowercase();
            if !valid_host(&host) {
                p.at(
                    h.span(),
                    format!("{k}.hosts[{j}]"),
                    format!(
                        "invalid host name '{}': a DNS name without port or scheme",
                        h.get_ref()
                    ),
                );
                continue;
            }
            if let Some(owner) = hosts.insert(host.clone(), name.clone()) {
                p.at(
                    h.span(),
                    format!("{k}.hosts[{j}]"),
                    format!("host '{host}' is already routed to app '{owner}'"),
                );
            }
            app_hosts.push(host);
        }
        if a.hosts.is_empty() {
            if let Some(other) = default_app.replace(name.clone()) {
                p.at(
                    app_span.clone(),
                    format!("{k}.hosts"),
                    format!(
                        "app '{name}' has no hosts, and neither has '{other}': only one app can be the default; give one of them hosts"
                    ),
                );
            }
        }
        let health = health(a.health.as_ref(), &k, p);
        let blue = pool(&a.blue, &format!("{k}.blue"), p);
        let green = pool(&a.green, &format!("{k}.green"), p);
        for u in &blue {
            if green.contains(u) {
                p.at(
                    a.green.span(),
                    format!("{k}.green.upstreams"),
                    format!(
                        "upstream {u} is in both blue and green: each color needs its own servers"
                    ),
                );
            }
        }
        let deploy = deploy(a.deploy.as_ref(), &k, p);
        let _ = base;
        out.push(AppConfig {
            name,
            hosts: app_hosts,
            initial_live: a.initial_live.unwrap_or(defaults::INITIAL_LIVE),
            redirect_https: a.redirect_https.unwrap_or(defaults::REDIRECT_HTTPS),
            max_body: size_or(&a.max_body, defaults::MAX_BODY, &format!("{k}.max_body"), p),
            connect_timeout: positive(
                dur_or(
                    &a.connect_timeout,
                    defaults::CONNECT_TIMEOUT,
                    &format!("{k}.connect_timeout"),
                    p,
                ),
                &a.connect_timeout,
                &format!("{k}.connect_timeout"),
                p,
            ),
            read_timeout: positive(
                dur_or(
                    &a.read_timeout,
                    defaults::READ_TIMEOUT,
                    &format!("{k}.read_timeout"),
                    p,
                ),
                &a.read_timeout,
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
            pools: [blue, green],
            deploy,
        });
    }
    out
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

fn health(raw: Option<&FileHealth>, k: &str, p: &mut Problems<'_>) -> HealthConfig {
    let mut h = HealthConfig::default();
    let Some(raw) = raw else { return h };
    if let Some(path) = &raw.path {
        if path.get_ref().starts_with('/') && !path.get_ref().contains(char::is_whitespace) {
            h.path = path.get_ref().clone();
        } else {
            p.at(
                path.span(),
                format!("{k}.health.path"),
                "must start with '/' and contain no spaces",
            );
        }
    }
    h.interval = dur_or(
        &raw.interval,
        h.interval,
        &format!("{k}.health.interval"),
        p,
    );
    h.timeout = dur_or(&raw.timeout, h.timeout, &format!("{k}.health.timeout"), p);
    if h.interval.is_zero() {
        p.at(
            raw.interval.as_ref().map_or(0..0, |s| s.span()),
            format!("{k}.health.interval"),
            "must be more than 0",
        );
    }
    if h.timeout.is_zero() {
        p.at(
            raw.timeout.as_ref().map_or(0..0, |s| s.span()),
            format!("{k}.health.timeout"),
            "must be more than 0",
        );
    }
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
        match u16::try_from(*s.get_ref()) {
            Ok(code) if (100..=599).contains(&code) => h.expect_status = code,
            _ => p.at(
                s.span(),
                format!("{k}.health.expect_status"),
                "must be an HTTP status between 100 and 599",
            ),
        }
    }
    h
}

fn pool(raw: &Spanned<FilePool>, k: &str, p: &mut Problems<'_>) -> Vec<SocketAddr> {
    let ups = &raw.get_ref().upstreams;
    if ups.get_ref().is_empty() {
        p.at(
            ups.span(),
            format!("{k}.upstreams"),
            "is empty: list at least one \"host:port\"",
        );
        return Vec::new();
    }
    let mut out: Vec<SocketAddr> = Vec::new();
    for (j, u) in ups.get_ref().iter().enumerate() {
        let key = format!("{k}.upstreams[{j}]");
        if let Some(a) = upstream_addr(u, &key, p) {
            if out.contains(&a) {
                p.at(u.span(), key, format!("duplicate upstream {a}"));
            } else {
                out.push(a);
            }
        }
    }
    out
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
    for (i, s) in raw.steps.iter().enumerate() {
        let sk = format!("{k}.deploy.steps[{i}]");
        let st = s.get_ref();
        if st.name.get_ref().trim().is_empty() {
            p.at(st.name.span(), format!("{sk}.name"), "must not be empty");
        } else if d
            .steps
            .iter()
            .any(|s: &DeployStep| s.name == *st.name.get_ref())
        {
            p.at(
                st.name.span(),
                format!("{sk}.name"),
                format!("duplicate step name '{}'", st.name.get_ref()),
            );
        }
        if st.run.get_ref().trim().is_empty() {
            p.at(st.run.span(), format!("{sk}.run"), "must not be empty");
        }
        if let Err(m) = check_placeholders(st.run.get_ref()) {
            p.at(st.run.span(), format!("{sk}.run"), m);
        }
        let timeout = dur_or(
            &st.timeout,
            defaults::STEP_TIMEOUT,
            &format!("{sk}.timeout"),
            p,
        );
        if timeout.is_zero() {
            p.at(s.span(), format!("{sk}.timeout"), "must be more than 0");
        }
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

fn addrs(list: &Spanned<Vec<Spanned<String>>>, key: &str, p: &mut Problems<'_>) -> Vec<SocketAddr> {
    list.get_ref()
        .iter()
        .enumerate()
        .filter_map(|(i, s)| addr(s, &format!("{key}[{i}]"), p))
        .collect()
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

/// A duration that must be more than zero.
fn positive(d: Duration, v: &Option<Spanned<String>>, key: &str, p: &mut Problems<'_>) -> Duration {
    if d.is_zero() {
        p.at(
            v.as_ref().map_or(0..0, |s| s.span()),
            key,
            "must be more than 0",
        );
    }
    d
}

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
}
