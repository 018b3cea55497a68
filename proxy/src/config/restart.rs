//! The settings a reload cannot apply to a running process: listeners,
//! threads, TLS, limits baked into the front door, the control API, the
//! metrics endpoint, the state file, logging. `daemon::build` reads them
//! once at start; a reload that changes them is reported as needing a
//! restart, by key.
//!
//! One list, in `restart_settings!` below, declares each setting's key, field,
//! type and where it comes from in a [`Config`]; the struct, the extraction
//! and the per-key comparison are all generated from it, so a setting cannot
//! be held without being reported under its key. Whether a *new* `Config`
//! field belongs here is decided by hand: the tests name every field of
//! `Config` (no `..`), so adding one fails to compile until it is sorted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{ClusterConfig, Config, LogConfig, TlsConfig};

/// Declares [`RestartSettings`] from one list of
/// `"dotted.key" => field: Type = expression of the config;`.
macro_rules! restart_settings {
    (
        $config:ident;
        $(
            $(#[doc = $doc:literal])*
            $key:literal => $field:ident: $ty:ty = $get:expr;
        )*
    ) => {
        /// Every setting a reload cannot apply to a running process, taken
        /// from a [`Config`] by [`Config::restart_settings`]. Compare the one
        /// the daemon started with to a reloaded one with
        /// [`RestartSettings::changed`].
        #[derive(Clone, Debug, PartialEq)]
        pub struct RestartSettings {
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*
        }

        impl RestartSettings {
            /// The key of every setting, in the order [`Self::changed`]
            /// reports them.
            pub const KEYS: &'static [&'static str] = &[$($key),*];

            fn of($config: &Config) -> RestartSettings {
                RestartSettings {
                    $($field: $get,)*
                }
            }

            /// The keys whose settings differ, field by field.
            fn keys_changed(&self, new: &RestartSettings) -> Vec<String> {
                let mut keys = Vec::new();
                $(
                    if self.$field != new.$field {
                        keys.push($key.to_string());
                    }
                )*
                keys
            }
        }
    };
}

restart_settings! {
    config;
    /// Plain HTTP listeners: bound at start (or handed over on upgrade).
    "proxy.listen" => proxy_listen: Vec<SocketAddr> = config.proxy.listen.clone();
    /// pingora's worker threads.
    "proxy.threads" => proxy_threads: usize = config.proxy.threads;
    /// pingora's runtime flavour.
    "proxy.work_stealing" => proxy_work_stealing: bool = config.proxy.work_stealing;
    /// The HTTPS listeners and certificate paths (the files' contents are
    /// reloaded without a restart, by the certificate store).
    "proxy.tls" => proxy_tls: Option<TlsConfig> = config.proxy.tls.clone();
    /// Given to pingora's `ServerConf` at start.
    "proxy.grace_period" => proxy_grace_period: Duration = config.proxy.grace_period;
    /// Given to pingora's `ServerConf` at start.
    "proxy.shutdown_timeout" => proxy_shutdown_timeout: Duration =
        config.proxy.shutdown_timeout;
    /// The front door's limits are fixed when the data plane is built.
    "proxy.max_header_size" => proxy_max_header_size: usize = config.proxy.max_header_size;
    /// A front door limit.
    "proxy.max_headers" => proxy_max_headers: usize = config.proxy.max_headers;
    /// A front door limit.
    "proxy.client_timeout" => proxy_client_timeout: Duration = config.proxy.client_timeout;
    /// A front door limit, also HTTP/2's idle timeout.
    "proxy.client_idle_timeout" => proxy_client_idle_timeout: Duration =
        config.proxy.client_idle_timeout;
    /// Set on each plain listener when it is added.
    "proxy.read_buffer" => proxy_read_buffer: usize = config.proxy.read_buffer;
    /// A front door limit.
    "proxy.request_header_timeout" => proxy_request_header_timeout: Duration =
        config.proxy.request_header_timeout;
    /// The front door's connection gate is built once, at start.
    "proxy.max_connections" => proxy_max_connections: usize = config.proxy.max_connections;
    /// The front door's connection gate is built once, at start.
    "proxy.max_connections_per_ip" => proxy_max_connections_per_ip: usize =
        config.proxy.max_connections_per_ip;
    /// The control API's listener.
    "control.listen" => control_listen: SocketAddr = config.control.listen;
    /// The token is read once at start.
    "control.token_file" => control_token_file: Option<PathBuf> =
        config.control.token_file.clone();
    /// The requester token is read once at start, like the operator's.
    "control.requester_token_file" => control_requester_token_file: Option<PathBuf> =
        config.control.requester_token_file.clone();
    /// The watcher is started (or not) at start.
    "control.watch_config" => control_watch_config: bool = config.control.watch_config;
    /// Set on the control API's thread when it starts.
    "control.nice" => control_nice: Option<i32> = config.control.nice;
    /// The control API is built with it at start.
    "control.public_read" => control_public_read: bool = config.control.public_read;
    /// `None` without `[metrics]`: adding or removing it needs a restart too.
    "metrics.listen" => metrics_listen: Option<SocketAddr> =
        config.metrics.as_ref().map(|m| m.listen);
    /// Locked and loaded at start; its directory also holds the pid file
    /// and the upgrade socket.
    "state.path" => state_path: PathBuf = config.state.path.clone();
    /// The subscriber and the access log's sampling are set up at start.
    "log" => log: LogConfig = config.log.clone();
    /// The etcd connection and this instance's name are set up at start.
    "cluster" => cluster: Option<ClusterConfig> = config.cluster.clone();
}

impl Config {
    /// The settings of this config that only a restart applies.
    pub fn restart_settings(&self) -> RestartSettings {
        RestartSettings::of(self)
    }
}

impl RestartSettings {
    /// The keys (`"proxy.listen"`, `"proxy.tls"`, `"metrics.listen"`,
    /// `"log"`, ... see [`Self::KEYS`]) whose settings differ between `self`
    /// (what the process runs with) and `new` (a reloaded config), in the
    /// order of [`Self::KEYS`]; empty when a reload can apply everything.
    pub fn changed(&self, new: &RestartSettings) -> Vec<String> {
        if self == new {
            return Vec::new();
        }
        // The struct's equality and the per-key comparison are generated
        // from the same list, so a difference shows in at least one key.
        self.keys_changed(new)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{
        AppConfig, ControlConfig, LogFormat, MetricsConfig, ProxyConfig, StateConfig,
    };

    const TEXT: &str = r#"
[proxy]
listen = ["127.0.0.1:8080"]

[metrics]
listen = "127.0.0.1:9901"

[state]
path = "state.json"

[[app]]
name = "web"
hosts = ["web.example.net"]

[app.blue]
upstreams = ["127.0.0.1:3001"]

[app.green]
upstreams = ["127.0.0.1:3002"]
"#;

    fn loaded() -> Config {
        crate::config::from_str(TEXT, Path::new("/etc/bgproxy/t.toml")).unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    type Mutation = (&'static str, fn(&mut Config));

    /// One change per restart-only setting, with the key it must be
    /// reported under.
    const MUTATIONS: &[Mutation] = &[
        ("proxy.listen", |c| {
            c.proxy.listen.push(addr("127.0.0.1:8081"))
        }),
        ("proxy.threads", |c| c.proxy.threads += 1),
        ("proxy.work_stealing", |c| {
            c.proxy.work_stealing = !c.proxy.work_stealing
        }),
        ("proxy.tls", |c| {
            c.proxy.tls = Some(TlsConfig {
                listen: vec![addr("127.0.0.1:8443")],
                cert: Some("/etc/bgproxy/cert.pem".into()),
                key: Some("/etc/bgproxy/key.pem".into()),
                certs: Vec::new(),
                acme: None,
            })
        }),
        ("proxy.grace_period", |c| {
            c.proxy.grace_period += Duration::from_secs(1)
        }),
        ("proxy.shutdown_timeout", |c| {
            c.proxy.shutdown_timeout += Duration::from_secs(1)
        }),
        ("proxy.max_header_size", |c| c.proxy.max_header_size *= 2),
        ("proxy.max_headers", |c| c.proxy.max_headers += 1),
        ("proxy.client_timeout", |c| {
            c.proxy.client_timeout += Duration::from_secs(1)
        }),
        ("proxy.client_idle_timeout", |c| {
            c.proxy.client_idle_timeout += Duration::from_secs(1)
        }),
        ("proxy.read_buffer", |c| c.proxy.read_buffer = 16 * 1024),
        ("proxy.request_header_timeout", |c| {
            c.proxy.request_header_timeout += Duration::from_secs(1)
        }),
        ("proxy.max_connections", |c| c.proxy.max_connections += 1),
        ("proxy.max_connections_per_ip", |c| {
            c.proxy.max_connections_per_ip += 1
        }),
        ("control.listen", |c| {
            c.control.listen = addr("127.0.0.1:9999")
        }),
        ("control.token_file", |c| {
            c.control.token_file = Some("/etc/bgproxy/token".into())
        }),
        ("control.requester_token_file", |c| {
            c.control.requester_token_file = Some("/etc/bgproxy/requester.token".into())
        }),
        ("control.watch_config", |c| {
            c.control.watch_config = !c.control.watch_config
        }),
        ("control.nice", |c| c.control.nice = Some(-5)),
        ("control.public_read", |c| {
            c.control.public_read = !c.control.public_read
        }),
        ("metrics.listen", |c| {
            c.metrics = Some(MetricsConfig {
                listen: addr("127.0.0.1:9911"),
            })
        }),
        ("state.path", |c| c.state.path = "/tmp/other.json".into()),
        ("log", |c| c.log.format = LogFormat::Json),
        ("cluster", |c| {
            c.cluster = Some(crate::config::ClusterConfig {
                etcd: vec!["http://127.0.0.1:2379".into()],
                prefix: "/bgproxy".into(),
                name: "lb1".into(),
                ack_timeout: Duration::from_secs(1),
                tls: None,
            })
        }),
    ];

    #[test]
    fn every_setting_is_reported_under_its_key() {
        let boot = loaded();
        let keys: Vec<_> = MUTATIONS.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            RestartSettings::KEYS,
            "every restart-only setting needs a change in MUTATIONS, in KEYS order"
        );
        for (key, mutate) in MUTATIONS {
            let mut new = boot.clone();
            mutate(&mut new);
            let (old, new) = (boot.restart_settings(), new.restart_settings());
            assert_ne!(old, new, "changing {key} changes the settings");
            assert_eq!(old.changed(&new), vec![key.to_string()]);
            assert_eq!(new.changed(&old), vec![key.to_string()], "both ways");
        }
    }

    #[test]
    fn whole_struct_and_per_key_comparison_agree() {
        let boot = loaded().restart_settings();
        let mut all = loaded();
        for (_, mutate) in MUTATIONS {
            mutate(&mut all);
        }
        let all = all.restart_settings();
        let mut cases = vec![(boot.clone(), boot.clone()), (boot.clone(), all.clone())];
        for (_, mutate) in MUTATIONS {
            let mut c = loaded();
            mutate(&mut c);
            cases.push((boot.clone(), c.restart_settings()));
        }
        for (a, b) in &cases {
            assert_eq!(a == b, a.keys_changed(b).is_empty(), "{a:?}\n{b:?}");
            assert_eq!(a.changed(b), a.keys_changed(b));
        }
        assert_eq!(boot.changed(&all), RestartSettings::KEYS, "in KEYS order");
    }

    #[test]
    fn keys_of_the_old_hand_written_list_are_all_here() {
        // controller.rs's restart_required before RestartSettings, plus the
        // key it missed (proxy.read_buffer).
        for key in [
            "proxy.listen",
            "proxy.threads",
            "proxy.work_stealing",
            "proxy.tls",
            "proxy.grace_period",
            "proxy.shutdown_timeout",
            "proxy.max_header_size",
            "proxy.max_headers",
            "proxy.client_timeout",
            "proxy.client_idle_timeout",
            "control.listen",
            "control.token_file",
            "control.watch_config",
            "control.nice",
            "metrics.listen",
            "state.path",
            "log",
            "proxy.read_buffer",
        ] {
            assert!(RestartSettings::KEYS.contains(&key), "{key}");
        }
    }

    #[test]
    fn reloadable_changes_report_nothing() {
        let boot = loaded();
        let mut new = boot.clone();
        let app = &mut new.apps[0];
        app.pools[0].push(addr("127.0.0.1:3003"));
        app.hosts.push("www.example.net".into());
        app.health.interval = Duration::from_secs(5);
        app.max_body = 1;
        app.deploy.health_timeout = Duration::from_secs(1);
        let mut other = new.apps[0].clone();
        other.name = "api".into();
        new.apps.push(other);
        new.path = "/etc/bgproxy/other.toml".into();
        assert_eq!(boot.restart_settings(), new.restart_settings());
        assert!(boot
            .restart_settings()
            .changed(&new.restart_settings())
            .is_empty());
    }

    /// Names every field of `Config` and its parts, without `..`: a field
    /// added to any of them fails to compile here. Then decide: if only a
    /// restart applies it (`daemon::build` reads it once), add it to
    /// `restart_settings!` and to `MUTATIONS`; else list it as reloadable.
    #[test]
    fn every_config_field_is_sorted() {
        let config = loaded();
        let Config {
            path: _, // where the file is, not a setting
            proxy,
            control,
            metrics,
            state,
            log: _,     // restart: log
            cluster: _, // restart: cluster
            apps,
        } = &config;
        let ProxyConfig {
            listen: _,                 // restart
            threads: _,                // restart
            work_stealing: _,          // restart
            tls: _,                    // restart
            grace_period: _,           // restart
            shutdown_timeout: _,       // restart
            max_header_size: _,        // restart
            max_headers: _,            // restart
            read_buffer: _,            // restart
            client_timeout: _,         // restart
            client_idle_timeout: _,    // restart
            request_header_timeout: _, // restart
            max_connections: _,        // restart
            max_connections_per_ip: _, // restart
        } = proxy;
        let ControlConfig {
            listen: _,               // restart
            token_file: _,           // restart
            watch_config: _,         // restart
            nice: _,                 // restart
            requester_token_file: _, // restart
            request_ttl: _,          // reloadable: read when a request is made
            public_read: _,          // restart
        } = control;
        if let Some(MetricsConfig { listen: _ }) = metrics {} // restart
        let StateConfig { path: _ } = state; // restart
        for app in apps {
            // Reloadable: every app setting reaches the data plane through
            // the routing snapshot, rebuilt on reload.
            let AppConfig {
                name: _,
                hosts: _,
                initial_live: _,
                redirect_https: _,
                max_body: _,
                connect_timeout: _,
                read_timeout: _,
                h2: _,
                drain_timeout: _,
                tunnel_timeout: _,
                health: _,
                pools: _,
                deploy: _,
                rollout: _,
                analysis: _,
                preview: _,
                mirror: _,
                verify: _,
                routes: _,
                rate_limit: _,
            } = app;
        }
    }
}
