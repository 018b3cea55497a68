//! The TOML schema exactly as written by operators. Every table denies
//! unknown keys; values that need checking beyond their type are
//! [`Spanned`] so the validator can point at them.

use serde::Deserialize;
use toml::Spanned;

use bgproxy_control::api::Color;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub proxy: Spanned<FileProxy>,
    pub control: Option<FileControl>,
    pub metrics: Option<FileMetrics>,
    pub state: Option<FileState>,
    pub log: Option<FileLog>,
    pub cluster: Option<Spanned<FileCluster>>,
    #[serde(default)]
    pub app: Vec<Spanned<FileApp>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCluster {
    pub etcd: Spanned<Vec<Spanned<String>>>,
    pub prefix: Option<Spanned<String>>,
    pub name: Option<Spanned<String>>,
    pub ack_timeout: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    pub level: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub access: Option<bool>,
    pub access_sample: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProxy {
    pub listen: Spanned<Vec<Spanned<String>>>,
    pub threads: Option<Spanned<i64>>,
    pub work_stealing: Option<bool>,
    pub tls: Option<Spanned<FileTls>>,
    pub grace_period: Option<Spanned<String>>,
    pub shutdown_timeout: Option<Spanned<String>>,
    pub max_header_size: Option<Spanned<String>>,
    pub max_headers: Option<Spanned<i64>>,
    pub client_timeout: Option<Spanned<String>>,
    pub client_idle_timeout: Option<Spanned<String>>,
    pub read_buffer: Option<Spanned<String>>,
    pub request_header_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_ip: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub listen: Spanned<Vec<Spanned<String>>>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    #[serde(default)]
    pub certs: Vec<FileCert>,
    pub acme: Option<Spanned<FileAcme>>,
}

/// `[proxy.tls.acme]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAcme {
    pub directory: Spanned<String>,
    pub email: Option<Spanned<String>>,
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    pub challenge: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub renew_before: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCert {
    pub hosts: Spanned<Vec<Spanned<String>>>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileControl {
    pub listen: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub watch_config: Option<bool>,
    pub nice: Option<Spanned<i64>>,
    pub requester_token_file: Option<Spanned<String>>,
    pub request_ttl: Option<Spanned<String>>,
    pub public_read: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMetrics {
    pub listen: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileState {
    pub path: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileApp {
    pub name: Spanned<String>,
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    pub initial_live: Option<Color>,
    pub redirect_https: Option<Spanned<bool>>,
    pub max_body: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub read_timeout: Option<Spanned<String>>,
    pub h2: Option<bool>,
    pub drain_timeout: Option<Spanned<String>>,
    pub tunnel_timeout: Option<Spanned<String>>,
    pub health: Option<FileHealth>,
    pub blue: Spanned<FilePool>,
    pub green: Spanned<FilePool>,
    pub deploy: Option<FileDeploy>,
    pub rollout: Option<FileRollout>,
    pub analysis: Option<FileAnalysis>,
    pub preview: Option<FilePreview>,
    pub mirror: Option<FileMirror>,
    #[serde(default)]
    pub verify: Vec<Spanned<FileVerify>>,
    #[serde(default)]
    pub routes: Vec<Spanned<FileRoute>>,
    pub rate_limit: Option<Spanned<FileRateLimit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub name: Spanned<String>,
    pub path_prefix: Spanned<String>,
    pub strip_prefix: Option<bool>,
    pub health: Option<FileHealth>,
    pub blue: Spanned<FilePool>,
    pub green: Spanned<FilePool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimit {
    pub requests_per_second: Spanned<i64>,
    pub burst: Option<Spanned<i64>>,
    pub key: Option<Spanned<String>>,
    pub max_keys: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePreview {
    pub token_file: Option<Spanned<String>>,
    #[serde(default)]
    pub blue_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub green_hosts: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMirror {
    pub percent: Option<Spanned<i64>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub max_body: Option<Spanned<String>>,
    pub max_in_flight: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileVerify {
    pub name: Spanned<String>,
    pub path: Spanned<String>,
    pub expect_status: Option<Spanned<i64>>,
    pub expect_body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRollout {
    pub steps: Option<Spanned<Vec<Spanned<String>>>>,
    pub step_interval: Option<Spanned<String>>,
    pub sticky: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAnalysis {
    pub interval: Option<Spanned<String>>,
    pub min_requests: Option<Spanned<i64>>,
    pub max_error_ratio: Option<Spanned<f64>>,
    pub max_latency_ratio: Option<Spanned<f64>>,
    pub max_inconclusive: Option<Spanned<i64>>,
    pub watch: Option<Spanned<String>>,
    pub auto_rollback: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealth {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub expect_status: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePool {
    pub upstreams: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDeploy {
    #[serde(default)]
    pub steps: Vec<Spanned<FileStep>>,
    pub health_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStep {
    pub name: Spanned<String>,
    pub run: Spanned<String>,
    pub timeout: Option<Spanned<String>>,
    pub migrate: Option<bool>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}
