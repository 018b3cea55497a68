//! A real etcd cluster for the `[cluster]` tests: [`Etcd`] starts three
//! members of Debian's `etcd` (`etcd-server`) on 127.0.0.1 with ports the
//! OS picks and data in a temp dir, and kills them on drop. [`Relay`] is a
//! TCP relay the test controls, to cut one bgproxy off from etcd and let
//! it back.
//!
//! The tests talk to etcd through its JSON gateway (`/v3/kv/...`): keys and
//! values are base64 there.
//!
//! [`TlsEtcd`] is one member that speaks only TLS to clients and wants
//! their certificate (`--client-cert-auth`), from a CA the test makes.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::ports::Port;
use crate::wait_until;

/// The etcd binary: `$ETCD_BIN`, else Debian's `/usr/bin/etcd`.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// Runs an etcd command with its output in `log`.
fn spawn(cmd: &mut Command, log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (install Debian's etcd-server)",
                etcd_bin().display()
            )
        })
}

/// A three-member etcd cluster on loopback.
pub struct Etcd {
    _dir: tempfile::TempDir,
    /// Client addresses, one per member.
    pub clients: Vec<SocketAddr>,
    children: Vec<Child>,
    _ports: Vec<Port>,
    http: reqwest::blocking::Client,
}

impl Etcd {
    /// Starts three members and waits until the cluster answers.
    pub fn start() -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<Port> = (0..6).map(|_| Port::reserve()).collect();
        let clients: Vec<SocketAddr> = (0..3).map(|i| ports[i].addr()).collect();
        let peers: Vec<SocketAddr> = (3..6).map(|i| ports[i].addr()).collect();
        let initial = (0..3)
            .map(|i| format!("m{i}=http://{}", peers[i]))
            .collect::<Vec<_>>()
            .join(",");
        let children = (0..3)
            .map(|i| {
                let log = dir.path().join(format!("m{i}.log"));
                // etcd's default timing (100 ms heartbeat, 1 s election):
                // shorter ones flap under a loaded CI machine.
                let mut cmd = Command::new(etcd_bin());
                cmd.arg("--name")
                    .arg(format!("m{i}"))
                    .arg("--data-dir")
                    .arg(dir.path().join(format!("m{i}")))
                    .arg("--listen-client-urls")
                    .arg(format!("http://{}", clients[i]))
                    .arg("--advertise-client-urls")
                    .arg(format!("http://{}", clients[i]))
                    .arg("--listen-peer-urls")
                    .arg(format!("http://{}", peers[i]))
                    .arg("--initial-advertise-peer-urls")
                    .arg(format!("http://{}", peers[i]))
                    .arg("--initial-cluster")
                    .arg(&initial)
                    .arg("--initial-cluster-state")
                    .arg("new")
                    .arg("--initial-cluster-token")
                    .arg(format!("bgproxy-e2e-{}", std::process::id()));
                spawn(&mut cmd, &log)
            })
            .collect();
        let etcd = Etcd {
            _dir: dir,
            clients,
            children,
            _ports: ports,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        let up = wait_until(Duration::from_secs(30), || {
            etcd.clients.iter().all(|c| {
                etcd.http
                    .get(format!("http://{c}/health"))
                    .send()
                    .and_then(|r| r.json::<Value>())
                    .is_ok_and(|v| v["health"] == "true")
            })
        });
        assert!(up, "etcd did not come up");
        etcd
    }

    /// The client URLs as a TOML array's items.
    pub fn urls(&self) -> Vec<String> {
        self.clients.iter().map(|c| format!("http://{c}")).collect()
    }

    fn call(&self, path: &str, body: Value) -> Value {
        for c in &self.clients {
            if let Ok(r) = self
                .http
                .post(format!("http://{c}{path}"))
                .json(&body)
                .send()
            {
                if r.status().is_success() {
                    return r.json().unwrap();
                }
            }
        }
        panic!("no etcd member answered {path}");
    }

    /// The value of `key` and its mod_revision, if it exists.
    pub fn get(&self, key: &str) -> Option<(String, i64)> {
        let v = self.call("/v3/kv/range", json!({"key": b64(key.as_bytes())}));
        let kv = v["kvs"].as_array()?.first()?.clone();
        let value = unb64(kv["value"].as_str().unwrap_or(""));
        let rev = kv["mod_revision"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Some((String::from_utf8_lossy(&value).into_owned(), rev))
    }

    /// The cluster's current revision.
    pub fn revision(&self) -> i64 {
        let v = self.call("/v3/kv/range", json!({"key": b64(b"\0")}));
        v["header"]["revision"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Puts `key` = `value`.
    pub fn put(&self, key: &str, value: &str) {
        self.call(
            "/v3/kv/put",
            json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes())}),
        );
    }

    /// Compacts the history up to `revision`.
    pub fn compact(&self, revision: i64) {
        self.call(
            "/v3/kv/compaction",
            json!({"revision": revision.to_string(), "physical": true}),
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (etcd's gateway encodes bytes so).
pub fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional).
pub fn unb64(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let Some(v) = B64.iter().position(|&x| x == c) else {
            continue;
        };
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// A TCP relay from a port of its own to `target`, that the test can cut
/// (every connection closed, new ones closed as they come) and restore.
pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Starts relaying to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (o, cs, st) = (open.clone(), conns.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                if !o.load(Ordering::Acquire) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                {
                    let mut list = cs.lock().unwrap();
                    list.push(client.try_clone().unwrap());
                    list.push(upstream.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), upstream.try_clone().unwrap());
                pipe(upstream, client);
            }
        });
        Relay {
            addr,
            open,
            conns,
            stop,
        }
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::Release);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.cut();
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to` on a thread until either side ends.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// One etcd member whose client URL is https, with a CA, a server
/// certificate for 127.0.0.1 and a client certificate made with rcgen;
/// clients must show a certificate of that CA (`--client-cert-auth`).
pub struct TlsEtcd {
    dir: tempfile::TempDir,
    /// The client address (`https://` it).
    pub client: SocketAddr,
    child: Child,
    _ports: Vec<Port>,
}

impl TlsEtcd {
    /// Starts the member and waits until it accepts connections.
    pub fn start() -> TlsEtcd {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "bgproxy e2e etcd CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        write("ca.pem", ca.as_ref().pem());
        for (name, sans, usage) in [
            (
                "server",
                vec!["127.0.0.1".to_string()],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            (
                "client",
                vec!["lb1".to_string()],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        let ports: Vec<Port> = (0..2).map(|_| Port::reserve()).collect();
        let (client, peer) = (ports[0].addr(), ports[1].addr());
        let mut cmd = Command::new(etcd_bin());
        cmd.args(["--name", "m0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(format!("https://{client}"))
            .arg("--advertise-client-urls")
            .arg(format!("https://{client}"))
            .arg("--listen-peer-urls")
            .arg(format!("http://{peer}"))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{peer}"))
            .arg("--initial-cluster")
            .arg(format!("m0=http://{peer}"))
            .arg("--cert-file")
            .arg(dir.path().join("server.pem"))
            .arg("--key-file")
            .arg(dir.path().join("server.key"))
            .arg("--trusted-ca-file")
            .arg(dir.path().join("ca.pem"))
            .arg("--client-cert-auth");
        let child = spawn(&mut cmd, &dir.path().join("etcd.log"));
        let etcd = TlsEtcd {
            dir,
            client,
            child,
            _ports: ports,
        };
        let up = wait_until(Duration::from_secs(30), || {
            TcpStream::connect_timeout(&client, Duration::from_secs(1)).is_ok()
        });
        assert!(up, "etcd did not come up: {}", etcd.log());
        etcd
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.client)
    }

    /// A file the test made: `ca.pem`, `client.pem`, `client.key`, ...
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// etcd's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
