//! Real nginx on a free loopback port in front of mcpmux instances, configured with the
//! routing of the deployment guide: `docs/deploy/nginx.conf.template`, rendered for the
//! instances given, so the documented configuration is the tested one.
//!
//! nginx runs in the foreground (`daemon off`) with its prefix, error log, pid file and
//! temp directories in a temp dir; it is killed (and reaped) on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::binary::TempDir;
use crate::harness::root;

/// How long nginx may take to start its workers.
const START_WAIT: Duration = Duration::from_secs(20);

/// The nginx binary: `MCPMUX_NGINX`, or `nginx` on the `PATH` or in `/usr/sbin`.
fn binary() -> String {
    if let Ok(path) = std::env::var("MCPMUX_NGINX") {
        return path;
    }
    let sbin = std::path::Path::new("/usr/sbin/nginx");
    if sbin.exists() {
        return sbin.display().to_string();
    }
    "nginx".to_owned()
}

/// One mcpmux instance behind nginx: its `gateway.instance` and where it listens.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Its `gateway.instance`.
    pub name: String,
    /// Its listen address.
    pub addr: SocketAddr,
}

impl Instance {
    /// The instance `name` listening at `addr`.
    pub fn new(name: &str, addr: SocketAddr) -> Self {
        Self {
            name: name.to_owned(),
            addr,
        }
    }
}

/// The routing file of the deployment guide, as written.
pub fn template() -> String {
    let path = root().join("docs/deploy/nginx.conf.template");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Renders `template` for nginx listening at `listen`, in front of `instances`, as its
/// first paragraph says (which is left out): `{{listen}}` once; a line naming
/// `{{instance}}` or `{{address}}` once per instance, with `{{backups}}` the other
/// instances as backup servers.
pub fn render(template: &str, listen: &str, instances: &[Instance]) -> String {
    // The first paragraph says how to fill the template in: not part of the rendering.
    let body = template
        .split_once("\n\n")
        .map_or(template, |(_, body)| body);
    let mut out = String::new();
    for line in body.lines() {
        if line.contains("{{instance}}") || line.contains("{{address}}") {
            for instance in instances {
                let backups: Vec<String> = instances
                    .iter()
                    .filter(|other| other.name != instance.name)
                    .map(|other| format!("server {} backup;", other.addr))
                    .collect();
                let rendered = line
                    .replace("{{instance}}", &instance.name)
                    .replace("{{address}}", &instance.addr.to_string())
                    .replace("{{backups}}", &backups.join(" "));
                out.push_str(&rendered);
                out.push('\n');
            }
        } else {
            out.push_str(&line.replace("{{listen}}", listen));
            out.push('\n');
        }
    }
    out
}

/// A loopback port nobody listens on now (bound, then released for nginx).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// A running nginx in front of some mcpmux instances.
pub struct Nginx {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx on a free loopback port, routing to `instances` as the deployment
    /// guide says; returns once its workers run (it listens before it starts them).
    pub fn start(instances: &[Instance]) -> Self {
        assert!(!instances.is_empty(), "nginx needs at least one instance");
        let dir = TempDir::new();
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let routing = render(&template(), &addr.to_string(), instances);
        std::fs::write(dir.0.join("mcpmux.conf"), routing).expect("write routing");
        let prefix = dir.0.display();
        let main = format!(
            "pid {prefix}/nginx.pid;\n\
             error_log stderr notice;\n\
             error_log {prefix}/error.log info;\n\
             worker_processes 1;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             client_body_temp_path {prefix}/body;\n\
             proxy_temp_path {prefix}/proxy;\n\
             fastcgi_temp_path {prefix}/fastcgi;\n\
             uwsgi_temp_path {prefix}/uwsgi;\n\
             scgi_temp_path {prefix}/scgi;\n\
             include {prefix}/mcpmux.conf;\n\
             access_log {prefix}/access.log mcpmux;\n\
             }}\n"
        );
        let conf = dir.0.join("nginx.conf");
        std::fs::write(&conf, main).expect("write nginx.conf");
        let mut child = Command::new(binary())
            .arg("-p")
            .arg(&dir.0)
            .arg("-e")
            .arg(dir.0.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("nginx does not start ({e}): install it (scripts/setup --test)")
            });
        // Its log goes on being read (and shown) so that nginx never blocks on it.
        let stderr = child.stderr.take().expect("stderr");
        let (started, start) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("start worker process ") {
                    let _ = started.send(Ok(()));
                } else if line.contains("[emerg]") || line.contains("[alert]") {
                    lines.push(line);
                    let _ = started.send(Err(lines.join("\n")));
                } else {
                    lines.push(line);
                }
            }
            let _ = started.send(Err(format!("nginx exited: {}", lines.join("\n"))));
        });
        match start.recv_timeout(START_WAIT) {
            Ok(Ok(())) => {}
            Ok(Err(log)) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nginx did not start:\n{log}");
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nginx started no worker within {START_WAIT:?}");
            }
        }
        Self { child, addr, dir }
    }

    /// The WebSocket URL of the gateways behind it, with `?session=ID` when given.
    pub fn ws_url(&self, session: Option<&str>) -> String {
        match session {
            Some(id) => format!("ws://{}/ws?session={id}", self.addr),
            None => format!("ws://{}/ws", self.addr),
        }
    }

    /// Its access log so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("access.log")).unwrap_or_default()
    }

    /// Its error log so far (for a failing test's message).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: a fast shutdown, the master stopping its workers before it exits
        // (after a SIGKILL the workers would go on serving, orphaned).
        crate::binary::kill(self.child.id(), libc::SIGTERM);
        let _ = self.child.wait();
    }
}
