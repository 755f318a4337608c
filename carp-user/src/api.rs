//! The control socket: a Unix stream socket that `carp status` (and later other commands)
//! talks to.
//!
//! Protocol: newline-delimited JSON, one request per line, one reply line per request,
//! several requests per connection allowed.
//!
//! | request | reply |
//! |---|---|
//! | `{"cmd":"status"}` | a [`NodeStatus`] object |
//! | `{"cmd":"sync_resync"}` | `{"ok":"..."}`: the sync engine asks its peers for their whole tables |
//! | `{"cmd":"demote","by":N}` | `{"ok":"..."}`: N (may be negative) added to the operator demotion |
//! | `{"cmd":"demote_reset"}` | `{"ok":"..."}`: operator demotion back to 0 |
//! | `{"cmd":"maintenance","on":true}` | `{"ok":"..."}`: persistent maintenance mode on (or off) |
//! | `{"cmd":"disable"}`, `{"cmd":"enable"}` | `{"ok":"..."}`: CARP off (every VHID INIT, silent) or on again |
//! | anything else | `{"error":"..."}` |
//!
//! The operator commands (`crate::operator`) are answered by the election's
//! thread once it has applied them (at most [`OPERATOR_TIMEOUT`] later).
//!
//! The socket is created with mode 0600: demote, maintenance and disable change
//! which router forwards traffic, so only root may talk to it.

use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::demotion::DemoteChange;
use crate::operator::{Command, Reply};
use crate::status::NodeStatus;

/// Longest request line the server reads; anything longer is answered with an error and
/// the connection is closed (a request is a few dozen bytes).
const MAX_REQUEST: usize = 64 * 1024;
/// At most this many clients at once; more are told so and closed (a client
/// that never reads must not park tasks without bound).
pub const MAX_CONNECTIONS: usize = 16;
/// A request line must arrive, and its reply be taken, within this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an operator command may wait for the election's thread to apply
/// it; less than [`IO_TIMEOUT`], so the client hears why.
pub const OPERATOR_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest reply the client reads: a status of 255 VHIDs × many addresses stays far below.
const MAX_REPLY: usize = 16 * 1024 * 1024;

/// A request line. Tagged by `cmd`, so `{"cmd":"status"}`; new commands are new variants.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    SyncResync,
    /// `carp demote +N|-N`: `{"cmd":"demote","by":-50}`.
    Demote {
        by: i32,
    },
    /// `carp demote reset`.
    DemoteReset,
    /// `carp maintenance on|off`: `{"cmd":"maintenance","on":true}`.
    Maintenance {
        on: bool,
    },
    /// `carp disable`.
    Disable,
    /// `carp enable`.
    Enable,
}

impl Request {
    /// The operator command this request carries, if it is one.
    pub fn operator_command(&self) -> Option<Command> {
        Some(match *self {
            Request::Status | Request::SyncResync => return None,
            Request::Demote { by } => Command::Demote(DemoteChange::By(by)),
            Request::DemoteReset => Command::Demote(DemoteChange::Reset),
            Request::Maintenance { on } => Command::Maintenance(on),
            Request::Disable => Command::Disable,
            Request::Enable => Command::Enable,
        })
    }
}

/// What the control socket can do: its answers come from these.
pub struct Handlers {
    pub status: Box<dyn Fn() -> NodeStatus + Send + Sync>,
    /// `Ok(message)` or `Err(reason)`.
    pub sync_resync: Box<dyn Fn() -> Result<String, String> + Send + Sync>,
    /// Operator commands: hands the command to the election's thread and
    /// returns where its answer will come, or `Err(reason)` at once.
    pub operator: Box<dyn Fn(Command) -> Result<OperatorAnswer, String> + Send + Sync>,
}

/// Where the answer to an operator command comes from.
pub type OperatorAnswer = tokio::sync::oneshot::Receiver<Reply>;

/// The reply to a command that changes something and succeeded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OkReply {
    pub ok: String,
}

/// The reply to a request that failed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot create the directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("another controller is already listening on {}", path.display())]
    AlreadyRunning { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot remove the stale socket {}: {source}", path.display())]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot listen on {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot set mode 0600 on {}: {source}", path.display())]
    SetMode { path: PathBuf, source: io::Error },
    #[error("no controller is listening on {}: is `carp run` running?", path.display())]
    NotListening { path: PathBuf },
    #[error(
        "connection refused on {}: the socket is stale (the controller died?) or not accepting",
        path.display()
    )]
    Refused { path: PathBuf },
    #[error("permission denied on {}: the control socket is root-only (mode 0600)", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("no reply from the controller on {} within {timeout:?}", path.display())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("talking to the controller on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("bad reply from the controller on {}: {reason}", path.display())]
    BadReply { path: PathBuf, reason: String },
    #[error("the controller on {} answered with an error: {message}", path.display())]
    Server { path: PathBuf, message: String },
}

/// A listening control socket. Dropping it stops accepting, ends open connections and
/// removes the socket file.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    /// `None` only inside `shutdown`, which takes it to await it.
    task: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Path of the socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the server, waits until its tasks have ended and removes the socket file.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // The JoinError is the cancellation we asked for.
            let _ = task.await;
        }
        // Drop removes the file.
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        // Two controllers on one path are refused at bind time, so the file is ours.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket at `path` and answers requests with `status()` until the
/// returned [`ApiServer`] is dropped.
///
/// A stale socket file (left by a controller that died) is removed; a live one (another
/// controller answers on it) is an error, as is a file that is not a socket.
/// Must be called inside a tokio runtime.
pub async fn serve(
    path: &Path,
    status: impl Fn() -> NodeStatus + Send + Sync + 'static,
) -> Result<ApiServer, ApiError> {
    serve_with(
        path,
        Handlers {
            status: Box::new(status),
            sync_resync: Box::new(|| Err("this controller has no [sync] section".into())),
            operator: Box::new(|_| Err("this controller takes no operator commands".into())),
        },
    )
    .await
}

/// [`serve`] with every command's handler.
pub async fn serve_with(path: &Path, handlers: Handlers) -> Result<ApiServer, ApiError> {
    let path = path.to_path_buf();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ApiError::CreateDir {
            path: dir.into(),
            source,
        })?;
    }
    remove_stale(&path).await?;
    let listener = UnixListener::bind(&path).map_err(|source| ApiError::Bind {
        path: path.clone(),
        source,
    })?;
    // chmod after bind leaves a short window with the umask's mode, but connecting to a
    // Unix socket needs write permission, which a umask of 022 or stricter already denies
    // to others. Changing the umask instead would race with other threads.
    if let Err(source) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(&path);
        return Err(ApiError::SetMode { path, source });
    }
    let task = tokio::spawn(accept_loop(listener, Arc::new(handlers)));
    Ok(ApiServer {
        path,
        task: Some(task),
    })
}

async fn remove_stale(path: &Path) -> Result<(), ApiError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ApiError::Bind {
                path: path.into(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket { path: path.into() });
    }
    // Only a refused connection proves the socket is dead. EAGAIN (a live server with a
    // full backlog) or EACCES must not make us delete another controller's socket.
    match UnixStream::connect(path).await {
        Ok(_) => Err(ApiError::AlreadyRunning { path: path.into() }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|source| ApiError::RemoveStale {
                path: path.into(),
                source,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ApiError::Bind {
            path: path.into(),
            source,
        }),
    }
}

async fn accept_loop(listener: UnixListener, status: Arc<Handlers>) {
    // Connection tasks live in a JoinSet so that aborting this task ends them too.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if connections.len() >= MAX_CONNECTIONS => {
                    // Told, not left hanging; bounded by the write timeout.
                    connections.spawn(async move {
                        let mut stream = stream;
                        let line = error_line(format!("too many connections (at most {MAX_CONNECTIONS})"));
                        let _ = tokio::time::timeout(IO_TIMEOUT, stream.write_all(line.as_bytes())).await;
                    });
                }
                Ok((stream, _)) => {
                    connections.spawn(handle_connection(stream, Arc::clone(&status)));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle_connection(stream: UnixStream, status: Arc<Handlers>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        // An idle or trickling client is closed after IO_TIMEOUT.
        let n = match tokio::time::timeout(
            IO_TIMEOUT,
            (&mut lines)
                .take(MAX_REQUEST as u64 + 1)
                .read_until(b'\n', &mut line),
        )
        .await
        {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return,
        };
        if n == 0 {
            return;
        }
        let too_long = line.len() > MAX_REQUEST;
        let reply = if too_long {
            error_line(format!("request longer than {MAX_REQUEST} bytes"))
        } else {
            answer(&line, &status).await
        };
        // A client that never reads its reply is closed, not waited for.
        let written = tokio::time::timeout(IO_TIMEOUT, write.write_all(reply.as_bytes())).await;
        if !matches!(written, Ok(Ok(()))) || too_long {
            return;
        }
    }
}

/// The reply line (with its newline) to one request line.
async fn answer(line: &[u8], handlers: &Handlers) -> String {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t.trim(),
        Err(_) => return error_line("request is not UTF-8".into()),
    };
    if text.is_empty() {
        return error_line("empty request; try {\"cmd\":\"status\"}".into());
    }
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return error_line(format!("request is not JSON: {e}")),
    };
    let request = match serde_json::from_value::<Request>(value.clone()) {
        Ok(r) => r,
        Err(e) => {
            return error_line(match value.get("cmd") {
                Some(serde_json::Value::String(cmd))
                    if e.to_string().contains("unknown variant") =>
                {
                    format!("unknown command \"{cmd}\"")
                }
                Some(serde_json::Value::String(cmd)) => format!("bad \"{cmd}\" request: {e}"),
                Some(_) => "\"cmd\" must be a string".into(),
                None if value.is_object() => "request has no \"cmd\"".into(),
                None => format!("bad request: {e}"),
            })
        }
    };
    if let Some(command) = request.operator_command() {
        return match (handlers.operator)(command) {
            Ok(answer) => match tokio::time::timeout(OPERATOR_TIMEOUT, answer).await {
                Ok(Ok(Ok(ok))) => ok_line(ok),
                Ok(Ok(Err(e))) => error_line(e),
                Ok(Err(_)) => error_line("the controller dropped the command (stopping?)".into()),
                Err(_) => error_line(format!(
                    "the controller did not apply the command within {OPERATOR_TIMEOUT:?}"
                )),
            },
            Err(e) => error_line(e),
        };
    }
    match request {
        Request::SyncResync => match (handlers.sync_resync)() {
            Ok(ok) => ok_line(ok),
            Err(e) => error_line(e),
        },
        Request::Status => match serde_json::to_string(&(handlers.status)()) {
            Ok(mut s) => {
                s.push('\n');
                s
            }
            Err(e) => error_line(format!("cannot encode the status: {e}")),
        },
        // Answered above.
        Request::Demote { .. }
        | Request::DemoteReset
        | Request::Maintenance { .. }
        | Request::Disable
        | Request::Enable => error_line("unhandled operator command".into()),
    }
}

fn ok_line(ok: String) -> String {
    let mut s = serde_json::to_string(&OkReply { ok }).unwrap_or_else(|_| "{\"ok\":\"\"}".into());
    s.push('\n');
    s
}

fn error_line(error: String) -> String {
    let mut s = serde_json::to_string(&ErrorReply { error })
        .unwrap_or_else(|_| "{\"error\":\"unencodable error\"}".into());
    s.push('\n');
    s
}

/// Asks the controller listening on `path` for its status, waiting at most `timeout`
/// for the whole exchange. Blocking.
pub fn request_status(path: &Path, timeout: Duration) -> Result<NodeStatus, ApiError> {
    let value = request(path, &Request::Status, timeout)?;
    serde_json::from_value(value).map_err(|e| ApiError::BadReply {
        path: path.into(),
        reason: format!("not a status: {e}"),
    })
}

/// Sends one request and returns the reply as JSON (an `{"error"}` reply is
/// [`ApiError::Server`]). Blocking, bounded by `timeout` overall.
pub fn request(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, ApiError> {
    let deadline = Instant::now() + timeout;
    let p = || path.to_path_buf();
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            ApiError::Timeout { path: p(), timeout }
        }
        _ => ApiError::Io { path: p(), source },
    };
    let mut stream = StdUnixStream::connect(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ApiError::NotListening { path: p() },
        io::ErrorKind::ConnectionRefused => ApiError::Refused { path: p() },
        io::ErrorKind::PermissionDenied => ApiError::PermissionDenied { path: p() },
        _ => ApiError::Io { path: p(), source },
    })?;
    let mut line = serde_json::to_vec(request).map_err(|e| ApiError::Io {
        path: p(),
        source: e.into(),
    })?;
    line.push(b'\n');
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    stream.write_all(&line).map_err(io_err)?;

    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    while !reply.contains(&b'\n') {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ApiError::Timeout { path: p(), timeout });
        }
        stream.set_read_timeout(Some(left)).map_err(io_err)?;
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(ApiError::BadReply {
                    path: p(),
                    reason: if reply.is_empty() {
                        "the connection closed without a reply".into()
                    } else {
                        "the connection closed in the middle of the reply".into()
                    },
                })
            }
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
        if reply.len() > MAX_REPLY {
            return Err(ApiError::BadReply {
                path: p(),
                reason: format!("reply longer than {MAX_REPLY} bytes"),
            });
        }
    }
    let end = reply
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(reply.len());
    let value: serde_json::Value =
        serde_json::from_slice(&reply[..end]).map_err(|e| ApiError::BadReply {
            path: p(),
            reason: format!("not JSON: {e}"),
        })?;
    if let Some(serde_json::Value::String(message)) = value.get("error") {
        return Err(ApiError::Server {
            path: p(),
            message: message.clone(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{VhidStatus, STATE_MASTER};
    use std::os::unix::net::UnixListener as StdUnixListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "carp-api-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sample() -> NodeStatus {
        NodeStatus {
            node: "fw1".into(),
            demotion: 0,
            sync: None,
            vhids: vec![VhidStatus {
                id: 1,
                interface: "lan0".into(),
                state: STATE_MASTER.into(),
                advbase: 1,
                advskew: 0,
                effective_advskew: 0,
                addresses: vec!["10.77.0.1/24".into()],
                preempt: true,
                xdp_mode: "generic".into(),
                link_up: true,
                last_transition_secs_ago: Some(1.5),
                master_expires_in_ms: None,
                adverts_sent: 3,
                adverts_received: 0,
                advbase_ms: None,
                ..VhidStatus::default()
            }],
            ..NodeStatus::default()
        }
    }

    async fn status_blocking(path: PathBuf) -> Result<NodeStatus, ApiError> {
        tokio::task::spawn_blocking(move || request_status(&path, Duration::from_secs(2)))
            .await
            .expect("client thread")
    }

    #[tokio::test]
    async fn api_status_round_trip_and_cleanup() {
        let dir = TempDir::new();
        // A parent directory that does not exist yet is created.
        let path = dir.0.join("run/carp/fw1.sock");
        let server = serve(&path, sample).await.expect("serve");
        let mode = std::fs::metadata(&path)
            .expect("socket exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

        for _ in 0..2 {
            assert_eq!(
                status_blocking(path.clone()).await.expect("status"),
                sample()
            );
        }

        drop(server);
        assert!(!path.exists(), "socket file removed on drop");
        let err = status_blocking(path.clone())
            .await
            .expect_err("server gone");
        assert!(matches!(err, ApiError::NotListening { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "no controller is listening on {}: is `carp run` running?",
                path.display()
            )
        );
    }

    #[tokio::test]
    async fn api_answers_several_requests_per_connection_and_rejects_unknown_ones() {
        let dir = TempDir::new();
        let path = dir.0.join("carp.sock");
        let server = serve(&path, sample).await.expect("serve");
        let p = path.clone();
        let replies = tokio::task::spawn_blocking(move || {
            let mut s = StdUnixStream::connect(&p).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            s.write_all(b"{\"cmd\":\"status\"}\n{\"cmd\":\"reboot\"}\nnot json\n{\"x\":1}\n\n")
                .expect("write");
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let mut all = String::new();
            s.read_to_string(&mut all).expect("read");
            all
        })
        .await
        .expect("client thread");
        let lines: Vec<&str> = replies.lines().collect();
        assert_eq!(lines.len(), 5, "{replies}");
        let status: NodeStatus = serde_json::from_str(lines[0]).expect("status reply");
        assert_eq!(status, sample());
        assert_eq!(lines[1], r#"{"error":"unknown command \"reboot\""}"#);
        assert!(
            lines[2].starts_with(r#"{"error":"request is not JSON: "#),
            "{}",
            lines[2]
        );
        assert_eq!(lines[3], r#"{"error":"request has no \"cmd\""}"#);
        assert!(
            lines[4].starts_with(r#"{"error":"empty request"#),
            "{}",
            lines[4]
        );
        server.shutdown().await;
        assert!(!path.exists());
    }

    #[test]
    fn api_operator_requests_have_their_wire_form() {
        for (req, text) in [
            (Request::Demote { by: -50 }, r#"{"cmd":"demote","by":-50}"#),
            (Request::DemoteReset, r#"{"cmd":"demote_reset"}"#),
            (
                Request::Maintenance { on: true },
                r#"{"cmd":"maintenance","on":true}"#,
            ),
            (Request::Disable, r#"{"cmd":"disable"}"#),
            (Request::Enable, r#"{"cmd":"enable"}"#),
        ] {
            assert_eq!(serde_json::to_string(&req).unwrap(), text);
            assert_eq!(serde_json::from_str::<Request>(text).unwrap(), req);
        }
        assert_eq!(Request::Status.operator_command(), None);
        assert_eq!(
            Request::Demote { by: 5 }.operator_command(),
            Some(Command::Demote(DemoteChange::By(5)))
        );
    }

    #[tokio::test]
    async fn api_operator_commands_reach_the_controller_and_its_answer_comes_back() {
        let dir = TempDir::new();
        let path = dir.0.join("carp.sock");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<crate::operator::Request>();
        let handlers = Handlers {
            status: Box::new(sample),
            sync_resync: Box::new(|| Err("no sync".into())),
            operator: Box::new(move |command| {
                let (reply, answer) = tokio::sync::oneshot::channel();
                tx.send(crate::operator::Request { command, reply })
                    .map_err(|_| "the controller is gone".to_string())?;
                Ok(answer)
            }),
        };
        let _server = serve_with(&path, handlers).await.expect("serve");
        // A stand-in for the controller: answers with the command it got,
        // refuses Enable, drops the answer to Disable.
        let controller = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(r) = rx.recv().await {
                seen.push(r.command);
                match r.command {
                    Command::Enable => drop(r.reply.send(Err("stopping".into()))),
                    Command::Disable => drop(r.reply),
                    c => drop(r.reply.send(Ok(format!("{c:?}")))),
                }
                if seen.len() == 6 {
                    break;
                }
            }
            seen
        });
        let p = path.clone();
        let replies = tokio::task::spawn_blocking(move || {
            [
                Request::Demote { by: 50 },
                Request::Demote { by: -7 },
                Request::DemoteReset,
                Request::Maintenance { on: true },
                Request::Disable,
                Request::Enable,
            ]
            .iter()
            .map(|r| match request(&p, r, Duration::from_secs(2)) {
                Ok(v) => Ok(v["ok"].as_str().unwrap_or("").to_owned()),
                Err(ApiError::Server { message, .. }) => Err(message),
                Err(e) => panic!("{e}"),
            })
            .collect::<Vec<_>>()
        })
        .await
        .expect("client thread");
        assert_eq!(
            replies,
            vec![
                Ok("Demote(By(50))".to_owned()),
                Ok("Demote(By(-7))".to_owned()),
                Ok("Demote(Reset)".to_owned()),
                Ok("Maintenance(true)".to_owned()),
                Err("the controller dropped the command (stopping?)".to_owned()),
                Err("stopping".to_owned()),
            ]
        );
        assert_eq!(controller.await.expect("controller").len(), 6);
        // The default handlers refuse operator commands.
        let other = dir.0.join("plain.sock");
        let _plain = serve(&other, sample).await.expect("serve");
        let err = tokio::task::spawn_blocking(move || {
            request(&other, &Request::Disable, Duration::from_secs(2)).expect_err("refused")
        })
        .await
        .expect("client thread");
        assert!(
            err.to_string().contains("takes no operator commands"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn api_status_is_read_at_each_request() {
        let dir = TempDir::new();
        let path = dir.0.join("carp.sock");
        let (tx, rx) = tokio::sync::watch::channel(sample());
        let _server = serve(&path, move || rx.borrow().clone())
            .await
            .expect("serve");
        let mut changed = sample();
        changed.demotion = 240;
        tx.send(changed.clone()).expect("send");
        assert_eq!(status_blocking(path).await.expect("status"), changed);
    }

    #[tokio::test]
    async fn api_replaces_a_stale_socket_but_not_a_live_one_or_a_file() {
        let dir = TempDir::new();
        let path = dir.0.join("carp.sock");
        // A controller that died leaves its socket file behind.
        drop(StdUnixListener::bind(&path).expect("bind stale"));
        assert!(path.exists());
        let first = serve(&path, sample).await.expect("stale socket replaced");

        let err = serve(&path, sample).await.expect_err("live socket");
        assert!(matches!(err, ApiError::AlreadyRunning { .. }), "{err:?}");
        // The refused second server must not have removed the first one's socket.
        assert_eq!(
            status_blocking(path.clone())
                .await
                .expect("first still serves"),
            sample()
        );
        drop(first);

        let file = dir.0.join("not-a-socket");
        std::fs::write(&file, b"keep me").expect("write");
        let err = serve(&file, sample).await.expect_err("regular file");
        assert!(matches!(err, ApiError::NotASocket { .. }), "{err:?}");
        assert_eq!(std::fs::read(&file).expect("file kept"), b"keep me");
    }

    #[test]
    fn api_client_errors_are_clear() {
        let dir = TempDir::new();

        // Nobody listens behind a socket file: refused.
        let stale = dir.0.join("stale.sock");
        drop(StdUnixListener::bind(&stale).expect("bind"));
        let err = request_status(&stale, Duration::from_secs(1)).expect_err("refused");
        assert!(matches!(err, ApiError::Refused { .. }), "{err:?}");

        // A peer that accepts and never answers: timeout, close to the limit.
        let silent = dir.0.join("silent.sock");
        let listener = StdUnixListener::bind(&silent).expect("bind");
        let start = Instant::now();
        let err = request_status(&silent, Duration::from_millis(200)).expect_err("timeout");
        let took = start.elapsed();
        assert!(matches!(err, ApiError::Timeout { .. }), "{err:?}");
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
        drop(listener);

        // Peers that answer nonsense.
        for (reply, want) in [
            (&b"hello\n"[..], "not JSON"),
            (b"{\"node\":1}\n", "not a status"),
            (b"", "closed without a reply"),
            (b"{\"node\":", "closed in the middle of the reply"),
        ] {
            let path = dir.0.join("bad.sock");
            let _ = std::fs::remove_file(&path);
            let listener = StdUnixListener::bind(&path).expect("bind");
            let peer = std::thread::spawn(move || {
                let (mut s, _) = listener.accept().expect("accept");
                let mut req = [0u8; 64];
                let _ = s.read(&mut req);
                s.write_all(reply).expect("reply");
            });
            let err = request_status(&path, Duration::from_secs(2)).expect_err("bad reply");
            peer.join().expect("peer");
            assert!(matches!(err, ApiError::BadReply { .. }), "{err:?}");
            assert!(err.to_string().contains(want), "{err} (wanted {want:?})");
        }

        // An error reply is passed on as such.
        let path = dir.0.join("err.sock");
        let listener = StdUnixListener::bind(&path).expect("bind");
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut req = [0u8; 64];
            let _ = s.read(&mut req);
            s.write_all(b"{\"error\":\"busy\"}\n").expect("reply");
        });
        let err = request_status(&path, Duration::from_secs(2)).expect_err("server error");
        peer.join().expect("peer");
        assert!(
            matches!(&err, ApiError::Server { message, .. } if message == "busy"),
            "{err:?}"
        );
    }
}
