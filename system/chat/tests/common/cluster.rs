//! A cluster of real processes on 127.0.0.1 for integration tests: its own `redis-server`
//! on a free port, one app server, connection servers and a gateway, all the `chat` binary.
//! Same topology as `ci/cluster up`, with handles to kill and restart each part.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ClusterOptions {
    pub conns: usize,
    pub gateway_args: Vec<String>,
    /// How often connection servers refresh the registry.
    pub registry_refresh_ms: u64,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            conns: 3,
            // Contract tests make hundreds of calls from one address within a second.
            gateway_args: vec![
                "--rate-user-per-sec".into(),
                "1000".into(),
                "--rate-user-burst".into(),
                "5000".into(),
                "--rate-ip-per-sec".into(),
                "5000".into(),
                "--rate-ip-burst".into(),
                "20000".into(),
            ],
            registry_refresh_ms: 500,
        }
    }
}

struct Proc(Child);

impl Proc {
    fn sigkill(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sigkill();
    }
}

pub struct Cluster {
    pub base: String,
    pub secret_hex: String,
    dir: tempfile::TempDir,
    redis_port: u16,
    redis: Option<Proc>,
    app_addr: SocketAddr,
    app: Option<Proc>,
    conn_addrs: Vec<SocketAddr>,
    conns: Vec<Option<Proc>>,
    options: ClusterOptions,
    _gateway: Proc,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn chat(args: &[String], secret: &str) -> (Proc, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(args)
        .env("CHAT_TOKEN_SECRET", secret)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start chat");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .trim()
        .split_once(": listening on ")
        .and_then(|(_, a)| a.parse().ok())
        .unwrap_or_else(|| panic!("chat {args:?} printed {line:?}"));
    (Proc(child), addr)
}

impl Cluster {
    pub fn start(options: ClusterOptions) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret_hex: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        // The port was free a moment ago; someone may take it before redis-server binds it,
        // and then redis-server exits: try another.
        let mut failures = Vec::new();
        let (redis_port, redis) = loop {
            let port = free_port();
            match try_start_redis(port, dir.path()) {
                Ok(redis) => break (port, Some(redis)),
                Err(e) if failures.len() < 4 => failures.push(e),
                Err(e) => panic!("{failures:?}; {e}"),
            }
        };
        let redis_arg = format!("127.0.0.1:{redis_port}");
        let app_args = |listen: &str| -> Vec<String> {
            vec![
                "app".into(),
                "--listen".into(),
                listen.into(),
                "--store".into(),
                format!("redb:{}", dir.path().join("app/messages.redb").display()),
                "--redis".into(),
                redis_arg.clone(),
                "--password-memory-kib".into(),
                "64".into(),
            ]
        };
        let (app, app_addr) = chat(&app_args("127.0.0.1:0"), &secret_hex);
        let mut conns = Vec::new();
        let mut conn_addrs = Vec::new();
        for id in 1..=options.conns {
            let (proc, addr) = chat(
                &conn_args(
                    id,
                    "127.0.0.1:0",
                    app_addr,
                    &redis_arg,
                    options.registry_refresh_ms,
                ),
                &secret_hex,
            );
            conns.push(Some(proc));
            conn_addrs.push(addr);
        }
        let conn_list = conn_addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut gateway_args = vec![
            "gateway".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--app".into(),
            app_addr.to_string(),
            "--conn".into(),
            conn_list,
        ];
        gateway_args.extend(options.gateway_args.iter().cloned());
        let (gateway, gateway_addr) = chat(&gateway_args, &secret_hex);
        let cluster = Cluster {
            base: format!("http://{gateway_addr}"),
            secret_hex,
            dir,
            redis_port,
            redis,
            app_addr,
            app: Some(app),
            conn_addrs,
            conns,
            options,
            _gateway: gateway,
        };
        cluster.wait_until_linked();
        cluster
    }

    pub fn secret(&self) -> Vec<u8> {
        (0..self.secret_hex.len() / 2)
            .map(|i| u8::from_str_radix(&self.secret_hex[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect()
    }

    /// Links connect in the background; wait until the gateway answers a REST call.
    fn wait_until_linked(&self) {
        // Only a guard against hanging: generous for a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(30);
        let gateway: SocketAddr = self
            .base
            .trim_start_matches("http://")
            .parse()
            .expect("gateway addr");
        while Instant::now() < deadline {
            if let Ok(mut stream) = TcpStream::connect(gateway) {
                use std::io::{Read, Write};
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let body = r#"{"username":"nobody","password":"xxxxxxxx"}"#;
                let request = format!(
                    "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(request.as_bytes());
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                // 401: the app server answered through the link. 503: not linked yet.
                if answer.starts_with("HTTP/1.1 401") || answer.starts_with("HTTP/1.1 400") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster did not come up");
    }

    /// The app server's link address.
    pub fn app_addr(&self) -> SocketAddr {
        self.app_addr
    }

    pub fn conn_addrs(&self) -> &[SocketAddr] {
        &self.conn_addrs
    }

    pub fn kill_conn(&mut self, index: usize) {
        if let Some(mut proc) = self.conns[index].take() {
            proc.sigkill();
        }
    }

    pub fn restart_conn(&mut self, index: usize) {
        let redis_arg = format!("127.0.0.1:{}", self.redis_port);
        let args = conn_args(
            index + 1,
            &self.conn_addrs[index].to_string(),
            self.app_addr,
            &redis_arg,
            self.options.registry_refresh_ms,
        );
        let (proc, _) = chat(&args, &self.secret_hex);
        self.conns[index] = Some(proc);
    }

    /// Kills Redis and starts it again on the same port, empty (no persistence).
    pub fn restart_redis_empty(&mut self) {
        if let Some(mut redis) = self.redis.take() {
            redis.sigkill();
        }
        self.redis = Some(start_redis(self.redis_port, self.dir.path()));
    }

    pub fn stop_redis(&mut self) {
        if let Some(mut redis) = self.redis.take() {
            redis.sigkill();
        }
    }

    pub fn start_redis(&mut self) {
        if self.redis.is_none() {
            self.redis = Some(start_redis(self.redis_port, self.dir.path()));
        }
    }

    pub fn kill_app(&mut self) {
        if let Some(mut app) = self.app.take() {
            app.sigkill();
        }
    }

    /// Keys in Redis (the registry's entries), through a raw RESP call.
    pub fn redis_dbsize(&self) -> u64 {
        resp_call(self.redis_port, "DBSIZE")
            .trim_start_matches(':')
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

fn conn_args(
    id: usize,
    listen: &str,
    app: SocketAddr,
    redis: &str,
    refresh_ms: u64,
) -> Vec<String> {
    vec![
        "conn".into(),
        "--id".into(),
        id.to_string(),
        "--listen".into(),
        listen.into(),
        "--app".into(),
        app.to_string(),
        "--redis".into(),
        redis.into(),
        "--registry-refresh-ms".into(),
        refresh_ms.to_string(),
    ]
}

fn start_redis(port: u16, dir: &std::path::Path) -> Proc {
    try_start_redis(port, dir).unwrap_or_else(|e| panic!("{e}"))
}

/// Starts redis-server on `port`; an error if it exits (the port is taken) or never answers.
fn try_start_redis(port: u16, dir: &std::path::Path) -> Result<Proc, String> {
    let mut redis = Proc(Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (apt-get install redis-server); ci/test's .ci/run installs it"));
    // Only a guard against hanging: generous for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = redis.0.try_wait() {
            return Err(format!(
                "redis-server on port {port} exited at start: {status}"
            ));
        }
        if resp_call(port, "PING").starts_with("+PONG") {
            // Ours, and not another test's that took the port first (ours then exits): each
            // runs in its own directory.
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if resp_call(port, "CONFIG GET dir").contains(&name) {
                return Ok(redis);
            }
            return Err(format!("port {port} is another redis-server's"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("redis-server did not start on port {port}"))
}

fn resp_call(port: u16, command: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    // A loaded machine can be slow to answer; an empty answer reads as 0 keys.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(format!("{command}\r\n").as_bytes());
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
