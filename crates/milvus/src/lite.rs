//! A Milvus Lite server on loopback, for tests and local runs.
//!
//! Milvus Lite 3 (PyPI `milvus-lite`) is Milvus's gRPC API served by a Python process over a local
//! data folder: `milvus-lite server --data-dir DIR --host 127.0.0.1 --port PORT`. [`LiteServer`]
//! starts it on a free loopback port, waits until the port accepts connections, and kills it when
//! dropped.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A running Milvus Lite server, killed on drop.
#[derive(Debug)]
pub struct LiteServer {
    child: Child,
    uri: String,
    log: PathBuf,
}

impl LiteServer {
    /// Starts `program` on a free port of 127.0.0.1, its data in `data_dir/db` and its output in
    /// `data_dir/milvus-lite.log`, and waits up to `wait` for it to listen.
    ///
    /// `program` is the `milvus-lite` script of the environment Milvus Lite was installed into, or
    /// that environment's Python (any file whose name starts with `python`: it is run as
    /// `python -m milvus_lite`).
    pub fn start(program: &Path, data_dir: &Path, wait: Duration) -> Result<Self> {
        let lite_error = |message: String| Error::Lite {
            program: program.to_path_buf(),
            message,
        };
        let port = free_port().map_err(|e| lite_error(format!("no free loopback port: {e}")))?;
        let log = data_dir.join("milvus-lite.log");
        let output = File::create(&log)
            .map_err(|e| lite_error(format!("cannot create {}: {e}", log.display())))?;
        let errors = output
            .try_clone()
            .map_err(|e| lite_error(format!("cannot share {}: {e}", log.display())))?;
        let mut command = Command::new(program);
        let is_python = program
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("python"));
        if is_python {
            command.args(["-m", "milvus_lite"]);
        }
        command
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir.join("db"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors);
        let child = command
            .spawn()
            .map_err(|e| lite_error(format!("cannot run it: {e}")))?;
        // From here on, dropping `server` kills the process.
        let mut server = Self {
            child,
            uri: format!("http://127.0.0.1:{port}"),
            log,
        };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(lite_error(format!(
                    "it exited ({status}) before listening; its output ends with:\n{}",
                    server.log_tail()
                )));
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(server);
            }
            if started.elapsed() >= wait {
                return Err(lite_error(format!(
                    "not listening on {address} after {:?}; its output ends with:\n{}",
                    started.elapsed(),
                    server.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT`, for [`crate::ClientConfig::new`].
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The last lines of the server's output.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for LiteServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}
