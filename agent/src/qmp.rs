//! VM control: the agent speaks QMP to its own QEMU (`--qmp unix:PATH`, QEMU's
//! `-qmp unix:PATH,server=on,wait=off`; only Unix sockets, so control never goes over a network).
//!
//! **One task** owns the QMP connection (like the VNC task): it reads the greeting, negotiates
//! capabilities, then runs one command at a time with a timeout, asks `query-status` every
//! [`POLL`] (QEMU's run state, and a liveness check), and reads events in between: `RESET`,
//! `SHUTDOWN`, `STOP`, `RESUME`, `POWERDOWN` ask for a fresh status at once. When the socket goes
//! away, sends something that is not QMP, or QEMU does not answer in time, the connection is
//! dropped (a late answer would be taken for the next command's) and made anew with capped
//! backoff (100 ms → 2 s). Each new kind of failure is logged once; `GET /control` shows the
//! latest. The video never waits for any of this.
//!
//! [`Vm`] is what HTTP uses: the state for `GET /control` and `/healthz`, and the actions
//! (reset, ACPI power-down, power-on, snapshot, revert) with their preconditions. Power-on after
//! an ACPI power-off needs QEMU started with `-no-shutdown` (it then stays alive in status
//! `shutdown`); the revert point is an internal qcow2 snapshot named [`SNAPSHOT`] (HMP
//! `savevm`/`loadvm`: the VM needs a writable qcow2 disk; under TCG QEMU stops for seconds).
//!
//! QEMU serves one client per QMP socket at a time, so the agent gets a socket of its own
//! (`./loco up`, the runner and the chart give QEMU a second `-qmp` for it).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;
use crate::pipeline::lock;

/// The name of the revert point (an internal qcow2 snapshot).
pub const SNAPSHOT: &str = "loco-revert";
/// How often the task asks `query-status` when nothing else happens.
pub const POLL: Duration = Duration::from_secs(2);
/// The longest QMP line read; more is not QMP.
const MAX_LINE: u64 = 1 << 20;

/// Parses `--qmp` values for clap: `unix:PATH` only.
pub fn parse_qmp_addr(s: &str) -> Result<PathBuf, String> {
    match s.strip_prefix("unix:") {
        Some("") => Err("unix: needs a socket path, e.g. unix:/run/loco/qmp.sock".into()),
        Some(path) => Ok(PathBuf::from(path)),
        None => Err(format!("{s:?} is not unix:PATH (QMP is only spoken over a Unix socket, never over the network)")),
    }
}

#[derive(Debug, Clone)]
pub struct QmpConfig {
    pub path: PathBuf,
    /// Connect + greeting + capabilities, and each ordinary command.
    pub timeout: Duration,
    /// `savevm`/`loadvm`: QEMU is busy for seconds under TCG.
    pub long_timeout: Duration,
    pub max_backoff: Duration,
}

impl QmpConfig {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            timeout: Duration::from_secs(5),
            long_timeout: Duration::from_secs(120),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// What `GET /control` and `/healthz` show.
#[derive(Debug, Clone, Default)]
pub struct QmpState {
    pub connected: bool,
    /// QEMU's run state (`query-status`): running, paused, shutdown, inmigrate, ...
    pub status: Option<String>,
    /// Whether the revert point exists.
    pub snapshot: bool,
    /// Why QMP is not connected, or the last thing that went wrong.
    pub error: Option<String>,
    pub last: Option<LastAction>,
}

#[derive(Debug, Clone)]
pub struct LastAction {
    pub action: Action,
    pub result: String,
    pub at: Instant,
}

/// A VM action a viewer may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Reset,
    Powerdown,
    Poweron,
    Snapshot,
    Revert,
}

impl Action {
    pub const ALL: [Action; 5] = [Action::Reset, Action::Powerdown, Action::Poweron, Action::Snapshot, Action::Revert];

    pub fn label(self) -> &'static str {
        match self {
            Action::Reset => "reset",
            Action::Powerdown => "powerdown",
            Action::Poweron => "poweron",
            Action::Snapshot => "snapshot",
            Action::Revert => "revert",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.label() == s)
    }
}

/// Why an action was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// 409: it makes no sense in the VM's state, or QEMU refused it.
    #[error("{0}")]
    Conflict(String),
    /// 503: QMP is not connected, or QEMU did not answer in time.
    #[error("{0}")]
    Unavailable(String),
}

/// A QMP failure of one command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QmpError {
    /// QEMU answered with an error (its `desc`).
    #[error("{0}")]
    Qemu(String),
    /// No answer (not connected, timed out, connection lost).
    #[error("{0}")]
    Unavailable(String),
}

/// One message from QEMU, classified (pure: unit-tested without I/O).
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Greeting,
    Return(Value),
    Error(String),
    Event(String),
}

/// Classifies one line QEMU sent; `Err` says in words why it is not QMP.
pub fn classify(line: &[u8]) -> Result<Message, String> {
    let shown = || {
        let s = String::from_utf8_lossy(&line[..line.len().min(60)]).trim().to_owned();
        if s.is_empty() {
            "an empty line".to_owned()
        } else {
            format!("{s:?}")
        }
    };
    let v: Value =
        serde_json::from_slice(line).map_err(|_| format!("QMP sent something that is not JSON: {}", shown()))?;
    let Some(obj) = v.as_object() else {
        return Err(format!("QMP sent JSON that is not an object: {}", shown()));
    };
    if obj.contains_key("QMP") {
        return Ok(Message::Greeting);
    }
    if let Some(r) = obj.get("return") {
        return Ok(Message::Return(r.clone()));
    }
    if let Some(e) = obj.get("error") {
        let desc = e.get("desc").and_then(Value::as_str).unwrap_or("an error without a description");
        return Ok(Message::Error(desc.to_owned()));
    }
    if let Some(ev) = obj.get("event").and_then(Value::as_str) {
        return Ok(Message::Event(ev.to_owned()));
    }
    Err(format!("QMP sent an object that is no greeting, answer or event: {}", shown()))
}

/// One command for the task.
struct Request {
    command: Value,
    timeout: Duration,
    reply: oneshot::Sender<Result<Value, QmpError>>,
}

/// The agent's side of QMP: state, and commands to QEMU through the task.
pub struct Vm {
    /// None without `--qmp`.
    tx: Option<mpsc::Sender<Request>>,
    state: Arc<Mutex<QmpState>>,
    /// One action at a time, and which one it is.
    busy: tokio::sync::Mutex<()>,
    current: Mutex<Option<Action>>,
    config: Option<QmpConfig>,
}

/// What an action answers when QEMU took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub action: Action,
    pub status: String,
}

pub const NO_QMP: &str = "no QMP socket (--qmp)";

impl Vm {
    /// Control without a QMP socket: every action is unavailable.
    pub fn disabled() -> Arc<Self> {
        Arc::new(Self {
            tx: None,
            state: Arc::new(Mutex::new(QmpState { error: Some(NO_QMP.into()), ..Default::default() })),
            busy: tokio::sync::Mutex::new(()),
            current: Mutex::new(None),
            config: None,
        })
    }

    /// Starts the QMP task for `config`; it ends with `shutdown`.
    pub fn start(config: QmpConfig, metrics: Arc<Metrics>, shutdown: watch::Receiver<bool>) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(4);
        let state = Arc::new(Mutex::new(QmpState {
            error: Some("connecting to QEMU's QMP socket".into()),
            ..Default::default()
        }));
        let task = QmpTask { config: config.clone(), state: state.clone(), metrics, requests: rx, shutdown };
        tokio::spawn(task.run());
        Arc::new(Self {
            tx: Some(tx),
            state,
            busy: tokio::sync::Mutex::new(()),
            current: Mutex::new(None),
            config: Some(config),
        })
    }

    /// Runs the QMP task over streams the caller makes (tests play QEMU over in-memory streams).
    pub fn start_with<C, F, S>(
        config: QmpConfig,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
        connect: C,
    ) -> Arc<Self>
    where
        C: FnMut() -> F + Send + 'static,
        F: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(4);
        let state = Arc::new(Mutex::new(QmpState::default()));
        let task = QmpTask { config: config.clone(), state: state.clone(), metrics, requests: rx, shutdown };
        tokio::spawn(task.run_with(connect));
        Arc::new(Self {
            tx: Some(tx),
            state,
            busy: tokio::sync::Mutex::new(()),
            current: Mutex::new(None),
            config: Some(config),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn state(&self) -> QmpState {
        lock(&self.state).clone()
    }

    /// `/healthz`'s `vm`: QEMU's run state, or `unavailable`.
    pub fn health_label(&self) -> String {
        let s = lock(&self.state);
        match (&s.status, s.connected) {
            (Some(st), true) => st.clone(),
            _ => "unavailable".into(),
        }
    }

    /// `GET /control`'s JSON.
    pub fn control_json(&self) -> Value {
        let s = self.state();
        json!({
            "qmp": if s.connected { "connected" } else { "unavailable" },
            "status": if s.connected { s.status.clone() } else { None },
            "snapshot": s.snapshot,
            "last": s.last.as_ref().map(|l| json!({
                "action": l.action.label(),
                "result": l.result,
                "at_ms_ago": l.at.elapsed().as_millis() as u64,
            })),
            "error": s.error,
        })
    }

    /// Sends one command and waits for its answer (at most `timeout`, plus the wait in line).
    async fn execute(&self, command: Value, timeout: Duration) -> Result<Value, QmpError> {
        let Some(tx) = &self.tx else { return Err(QmpError::Unavailable(NO_QMP.into())) };
        let (reply, rx) = oneshot::channel();
        let what = command.get("execute").and_then(Value::as_str).unwrap_or("?").to_owned();
        let req = Request { command, timeout, reply };
        match tokio::time::timeout(timeout, tx.send(req)).await {
            Ok(Ok(())) => {}
            _ => return Err(QmpError::Unavailable(format!("the QMP task did not take {what}"))),
        }
        // The task times the command out itself; this only guards against a task that is gone.
        match tokio::time::timeout(timeout + Duration::from_secs(5), rx).await {
            Ok(Ok(r)) => r,
            _ => Err(QmpError::Unavailable(format!("no answer to {what} from the QMP task"))),
        }
    }

    async fn hmp(&self, line: &str, timeout: Duration) -> Result<String, QmpError> {
        let r = self
            .execute(json!({"execute": "human-monitor-command", "arguments": {"command-line": line}}), timeout)
            .await?;
        Ok(r.as_str().unwrap_or_default().to_owned())
    }

    async fn status_now(&self) -> Result<String, QmpError> {
        let timeout = self.config.as_ref().map_or(Duration::from_secs(5), |c| c.timeout);
        let r = self.execute(json!({"execute": "query-status"}), timeout).await?;
        let status = r.get("status").and_then(Value::as_str).unwrap_or("unknown").to_owned();
        lock(&self.state).status = Some(status.clone());
        Ok(status)
    }

    /// Carries out `action` (one at a time), records it as the last action, and says how it went.
    pub async fn act(&self, action: Action) -> Result<Done, ActionError> {
        let Some(config) = self.config.clone() else { return Err(ActionError::Unavailable(NO_QMP.into())) };
        let Ok(_guard) = self.busy.try_lock() else {
            let now = lock(&self.current).map_or("another action", Action::label);
            return Err(ActionError::Conflict(format!("{now} is still in progress; try again when it is done")));
        };
        *lock(&self.current) = Some(action);
        let result = self.act_now(action, &config).await;
        *lock(&self.current) = None;
        let label = match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        lock(&self.state).last = Some(LastAction { action, result: label, at: Instant::now() });
        result
    }

    async fn act_now(&self, action: Action, config: &QmpConfig) -> Result<Done, ActionError> {
        {
            let s = lock(&self.state);
            if !s.connected {
                let why = s.error.clone().unwrap_or_else(|| "not connected".into());
                return Err(ActionError::Unavailable(format!("QMP is unavailable: {why}")));
            }
        }
        let unavailable = |e: QmpError| match e {
            QmpError::Unavailable(m) => ActionError::Unavailable(m),
            QmpError::Qemu(m) => ActionError::Conflict(format!("QEMU refused: {m}")),
        };
        let status = self.status_now().await.map_err(unavailable)?;
        let cmd = |name: &str| json!({"execute": name});
        if status == "inmigrate" {
            return Err(ActionError::Conflict("the VM is still loading its saved state; try again in a moment".into()));
        }
        match action {
            Action::Reset => {
                if status == "shutdown" {
                    return Err(ActionError::Conflict("the VM is powered off: power it on instead".into()));
                }
                self.execute(cmd("system_reset"), config.timeout).await.map_err(unavailable)?;
            }
            Action::Powerdown => {
                if status != "running" {
                    return Err(ActionError::Conflict(format!(
                        "the VM is {status}, not running: an ACPI power-off needs a running guest"
                    )));
                }
                self.execute(cmd("system_powerdown"), config.timeout).await.map_err(unavailable)?;
            }
            Action::Poweron => {
                if status == "running" {
                    return Err(ActionError::Conflict("the VM is already running".into()));
                }
                // A cold start: reset the machine, then let it run (-no-shutdown kept QEMU alive).
                // QEMU carries the reset out in its main loop; a `cont` before that is refused
                // ("Resetting the Virtual Machine is required"), so it is asked again a few times.
                self.execute(cmd("system_reset"), config.timeout).await.map_err(unavailable)?;
                let mut tries = 0;
                loop {
                    match self.execute(cmd("cont"), config.timeout).await {
                        Err(QmpError::Qemu(m)) if m.contains("Reset") && tries < 20 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        r => {
                            r.map_err(unavailable)?;
                            break;
                        }
                    }
                }
            }
            Action::Snapshot => {
                let out = self.hmp(&format!("savevm {SNAPSHOT}"), config.long_timeout).await.map_err(unavailable)?;
                if let Some(err) = hmp_error(&out) {
                    return Err(ActionError::Conflict(format!(
                        "QEMU could not take the snapshot: {err} (the revert point needs a writable qcow2 disk)"
                    )));
                }
                lock(&self.state).snapshot = true;
            }
            Action::Revert => {
                if !lock(&self.state).snapshot {
                    return Err(ActionError::Conflict(format!(
                        "there is no revert point yet: take one first (POST /control/snapshot makes snapshot {SNAPSHOT})"
                    )));
                }
                let out = self.hmp(&format!("loadvm {SNAPSHOT}"), config.long_timeout).await.map_err(unavailable)?;
                if let Some(err) = hmp_error(&out) {
                    return Err(ActionError::Conflict(format!("QEMU could not go back to the revert point: {err}")));
                }
                // loadvm leaves a VM that was not running stopped: a revert ends running.
                if self.status_now().await.map_err(unavailable)? != "running" {
                    self.execute(cmd("cont"), config.timeout).await.map_err(unavailable)?;
                }
            }
        }
        let status = self.status_now().await.map_err(unavailable)?;
        Ok(Done { action, status })
    }
}

/// HMP answers errors as text; `None` when `out` says nothing went wrong.
fn hmp_error(out: &str) -> Option<String> {
    let t = out.trim();
    if t.is_empty() {
        return None;
    }
    let lower = t.to_ascii_lowercase();
    if lower.contains("error")
        || lower.contains("could not")
        || lower.contains("not found")
        || lower.contains("no block device")
    {
        Some(t.lines().next().unwrap_or(t).trim_start_matches("Error: ").to_owned())
    } else {
        None
    }
}

struct QmpTask {
    config: QmpConfig,
    state: Arc<Mutex<QmpState>>,
    metrics: Arc<Metrics>,
    requests: mpsc::Receiver<Request>,
    shutdown: watch::Receiver<bool>,
}

/// Why a QMP connection ended.
enum End {
    Shutdown,
    Failed(String),
}

impl QmpTask {
    async fn run(self) {
        let path = self.config.path.clone();
        self.run_with(move || {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(&path).await }
        })
        .await
    }

    async fn run_with<C, F, S>(mut self, mut connect: C)
    where
        C: FnMut() -> F,
        F: std::future::Future<Output = std::io::Result<S>>,
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut backoff = Duration::from_millis(100);
        let mut last_error = String::new();
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            let started = Instant::now();
            let end = match tokio::time::timeout(self.config.timeout, connect()).await {
                Err(_) => End::Failed("connecting timed out".into()),
                Ok(Err(e)) => End::Failed(format!("cannot connect to {}: {e}", self.config.path.display())),
                Ok(Ok(stream)) => self.session(stream).await,
            };
            self.set_disconnected();
            let msg = match end {
                End::Shutdown => return,
                End::Failed(msg) => msg,
            };
            lock(&self.state).error = Some(msg.clone());
            // Say each new kind of failure once; repeats while QEMU is away are noise.
            if msg != last_error {
                tracing::warn!(qmp = %self.config.path.display(), "QMP: {msg}; retrying");
                last_error = msg;
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            let deadline = tokio::time::sleep(backoff);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    req = self.requests.recv() => match req {
                        None => return,
                        Some(r) => {
                            let why = lock(&self.state).error.clone().unwrap_or_default();
                            let _ = r.reply.send(Err(QmpError::Unavailable(format!("QMP is unavailable: {why}"))));
                        }
                    },
                    _ = self.shutdown.changed() => return,
                }
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    fn set_disconnected(&self) {
        let mut s = lock(&self.state);
        s.connected = false;
        self.metrics.qmp_connected.set(0);
    }

    /// One connection: greeting, capabilities, then commands, polls and events until it ends.
    async fn session<S: AsyncRead + AsyncWrite + Unpin>(&mut self, stream: S) -> End {
        let (read, mut write) = tokio::io::split(stream);
        let mut reader = Lines::new(read);
        let t = self.config.timeout;
        let path = self.config.path.display().to_string();
        // The greeting, then qmp_capabilities (events before the answer are only noted).
        match self.next_message(&mut reader, t, "its QMP greeting").await {
            Ok(Message::Greeting) => {}
            Ok(other) => return End::Failed(format!("{path} is not a QMP socket: it began with {other:?}")),
            Err(end) => return end,
        }
        let setup = [
            json!({"execute": "qmp_capabilities"}),
            json!({"execute": "query-status"}),
            json!({"execute": "human-monitor-command", "arguments": {"command-line": "info snapshots"}}),
        ];
        let mut answers = Vec::new();
        for cmd in setup {
            if let Err(e) = write_line(&mut write, &cmd).await {
                return End::Failed(format!("writing to QMP: {e}"));
            }
            let what = cmd["execute"].as_str().unwrap_or("?").to_owned();
            loop {
                match self.next_message(&mut reader, t, &format!("an answer to {what}")).await {
                    Ok(Message::Return(v)) => {
                        answers.push(v);
                        break;
                    }
                    Ok(Message::Error(e)) => return End::Failed(format!("QEMU refused {what}: {e}")),
                    Ok(Message::Event(_)) => {}
                    Ok(Message::Greeting) => return End::Failed("QMP sent a second greeting".into()),
                    Err(end) => return end,
                }
            }
        }
        let status = answers[1].get("status").and_then(Value::as_str).unwrap_or("unknown").to_owned();
        let snapshot = answers[2].as_str().is_some_and(has_snapshot);
        {
            let mut s = lock(&self.state);
            s.connected = true;
            s.status = Some(status.clone());
            s.snapshot = snapshot;
            s.error = None;
        }
        self.metrics.qmp_connected.set(1);
        tracing::info!(qmp = %path, status, snapshot, "QMP connected");

        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        let mut refresh = false;
        loop {
            // A command from HTTP, or our own status poll; then its answer (events meanwhile
            // ask for a fresh status afterwards).
            let (command, timeout, reply) = tokio::select! {
                req = self.requests.recv() => match req {
                    None => return End::Shutdown,
                    Some(r) => (r.command, r.timeout, Some(r.reply)),
                },
                _ = poll.tick() => (json!({"execute": "query-status"}), t, None),
                _ = std::future::ready(()), if refresh => {
                    refresh = false;
                    (json!({"execute": "query-status"}), t, None)
                }
                line = reader.next() => match line {
                    Err(e) => return End::Failed(e),
                    Ok(line) => match classify(&line) {
                        Ok(Message::Event(ev)) => {
                            refresh |= self.event(&ev);
                            continue;
                        }
                        Ok(other) => return End::Failed(format!("QMP sent {other:?} that answers nothing")),
                        Err(e) => return End::Failed(e),
                    },
                },
                _ = self.shutdown.changed() => return End::Shutdown,
            };
            let what = command.get("execute").and_then(Value::as_str).unwrap_or("?").to_owned();
            let is_poll = reply.is_none() && what == "query-status";
            if let Err(e) = write_line(&mut write, &command).await {
                let msg = format!("writing to QMP: {e}");
                if let Some(r) = reply {
                    let _ = r.send(Err(QmpError::Unavailable(msg.clone())));
                }
                return End::Failed(msg);
            }
            let answer = loop {
                match self.next_message(&mut reader, timeout, &format!("an answer to {what}")).await {
                    Ok(Message::Return(v)) => break Ok(v),
                    Ok(Message::Error(e)) => break Err(QmpError::Qemu(e)),
                    Ok(Message::Event(ev)) => refresh |= self.event(&ev),
                    Ok(Message::Greeting) => {
                        let msg = "QMP sent a second greeting".to_owned();
                        if let Some(r) = reply {
                            let _ = r.send(Err(QmpError::Unavailable(msg.clone())));
                        }
                        return End::Failed(msg);
                    }
                    Err(end) => {
                        if let Some(r) = reply {
                            let msg = match &end {
                                End::Failed(m) => m.clone(),
                                End::Shutdown => "the agent is shutting down".into(),
                            };
                            let _ = r.send(Err(QmpError::Unavailable(msg)));
                        }
                        return end;
                    }
                }
            };
            if is_poll {
                if let Ok(v) = &answer {
                    let st = v.get("status").and_then(Value::as_str).unwrap_or("unknown").to_owned();
                    lock(&self.state).status = Some(st);
                }
            }
            if let Some(r) = reply {
                let _ = r.send(answer);
            }
        }
    }

    /// Notes an event; true when the run state may have changed.
    fn event(&self, ev: &str) -> bool {
        match ev {
            "RESET" | "SHUTDOWN" | "STOP" | "RESUME" | "POWERDOWN" | "GUEST_PANICKED" | "SUSPEND" | "WAKEUP" => {
                tracing::info!(event = ev, "QEMU event");
                // The obvious states at once; query-status confirms.
                let mut s = lock(&self.state);
                match ev {
                    "STOP" => s.status = Some("paused".into()),
                    "RESUME" => s.status = Some("running".into()),
                    _ => {}
                }
                true
            }
            _ => false,
        }
    }

    /// The next message within `timeout`; what ends the connection otherwise.
    async fn next_message<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut Lines<R>,
        timeout: Duration,
        what: &str,
    ) -> Result<Message, End> {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            r = tokio::time::timeout(timeout, reader.next()) => match r {
                Err(_) => Err(End::Failed(format!(
                    "QEMU did not send {what} within {:.0} s (a QEMU that hangs, or another client holding its \
                     QMP socket: QEMU serves one at a time)",
                    timeout.as_secs_f64()
                ))),
                Ok(Err(e)) => Err(End::Failed(e)),
                Ok(Ok(line)) => classify(&line).map_err(End::Failed),
            },
            _ = shutdown.changed() => Err(End::Shutdown),
        }
    }
}

/// Whether HMP `info snapshots` lists the revert point.
fn has_snapshot(info: &str) -> bool {
    info.lines().any(|l| l.split_whitespace().any(|w| w == SNAPSHOT))
}

async fn write_line<W: AsyncWrite + Unpin>(w: &mut W, v: &Value) -> std::io::Result<()> {
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

/// QEMU's lines, read so that a read dropped half-way (in a `select!`) loses nothing.
struct Lines<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    fn new(read: R) -> Self {
        Self { reader: BufReader::new(read), buf: Vec::new() }
    }

    /// One line (without its end), at most [`MAX_LINE`] bytes; blank lines are skipped.
    async fn next(&mut self) -> Result<Vec<u8>, String> {
        loop {
            let room = (MAX_LINE + 1).saturating_sub(self.buf.len() as u64);
            let n = (&mut self.reader)
                .take(room)
                .read_until(b'\n', &mut self.buf)
                .await
                .map_err(|e| format!("reading QMP: {e}"))?;
            if self.buf.last() != Some(&b'\n') {
                if self.buf.len() as u64 > MAX_LINE {
                    return Err(format!("QMP sent a line over {} KiB: not QMP", MAX_LINE / 1024));
                }
                if n == 0 {
                    return Err(if self.buf.is_empty() {
                        "QEMU closed the QMP connection".into()
                    } else {
                        "QEMU closed the QMP connection mid-line".into()
                    });
                }
                continue;
            }
            let line = std::mem::take(&mut self.buf);
            let line = line.trim_ascii();
            if !line.is_empty() {
                return Ok(line.to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, DuplexStream};

    #[test]
    fn parses_addresses() {
        assert_eq!(parse_qmp_addr("unix:/run/q.sock"), Ok(PathBuf::from("/run/q.sock")));
        assert!(parse_qmp_addr("unix:").is_err());
        assert!(parse_qmp_addr("127.0.0.1:4444").unwrap_err().contains("Unix socket"));
        assert!(parse_qmp_addr("tcp:127.0.0.1:4444").is_err());
    }

    #[test]
    fn classifies_messages() {
        assert_eq!(classify(br#"{"QMP": {"version": {}, "capabilities": []}}"#), Ok(Message::Greeting));
        assert_eq!(classify(br#"{"return": {}}"#), Ok(Message::Return(json!({}))));
        assert_eq!(
            classify(br#"{"error": {"class": "GenericError", "desc": "nope"}}"#),
            Ok(Message::Error("nope".into()))
        );
        assert_eq!(
            classify(br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESET", "data": {}}"#),
            Ok(Message::Event("RESET".into()))
        );
        assert!(classify(b"hello").unwrap_err().contains("not JSON: \"hello\""));
        assert!(classify(b"[1]").unwrap_err().contains("not an object"));
        assert!(classify(br#"{"x": 1}"#).unwrap_err().contains("no greeting"));
    }

    #[test]
    fn hmp_answers() {
        assert_eq!(hmp_error(""), None);
        assert_eq!(hmp_error("\r\n"), None);
        assert_eq!(
            hmp_error("Error: No block device can accept snapshots\r\n"),
            Some("No block device can accept snapshots".into())
        );
        assert!(hmp_error("Snapshot 'loco-revert' does not exist in one or more devices\r\n").is_none());
        let info = "List of snapshots present on all disks:\r\nID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\r\n--        loco-revert       134 MiB 2026-12-03 23:40:00  00:00:41.532\r\n";
        assert!(has_snapshot(info));
        assert!(!has_snapshot("There is no snapshot available.\r\n"));
        assert!(!has_snapshot("No block device supports snapshots\r\n"));
    }

    fn config() -> QmpConfig {
        QmpConfig {
            path: "/fake/qmp".into(),
            timeout: Duration::from_secs(5),
            long_timeout: Duration::from_secs(120),
            max_backoff: Duration::from_secs(2),
        }
    }

    /// A fake QEMU on the other end of `io`: greets, then answers each command with `answer`.
    async fn fake_qemu(io: DuplexStream, status: &'static str, mut answer: impl FnMut(&Value) -> Vec<String> + Send) {
        let (r, mut w) = tokio::io::split(io);
        let mut r = tokio::io::BufReader::new(r);
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": [\"oob\"]}}\r\n").await.unwrap();
        let mut line = String::new();
        while r.read_line(&mut line).await.unwrap_or(0) > 0 {
            let cmd: Value = serde_json::from_str(line.trim()).unwrap();
            line.clear();
            let out = match cmd["execute"].as_str().unwrap() {
                "qmp_capabilities" => vec![r#"{"return": {}}"#.to_owned()],
                "query-status" => vec![format!(r#"{{"return": {{"status": "{status}", "running": true}}}}"#)],
                "human-monitor-command" if cmd["arguments"]["command-line"] == "info snapshots" => {
                    vec![r#"{"return": "There is no snapshot available.\r\n"}"#.to_owned()]
                }
                _ => answer(&cmd),
            };
            for l in out {
                if w.write_all(format!("{l}\r\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn connects_and_resets() {
        let metrics = Arc::new(Metrics::new());
        let (_stx, srx) = watch::channel(false);
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen2 = seen.clone();
        let vm = Vm::start_with(config(), metrics.clone(), srx, move || {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let seen = seen2.clone();
            tokio::spawn(fake_qemu(b, "running", move |cmd| {
                lock(&seen).push(cmd["execute"].as_str().unwrap().to_owned());
                vec![
                    r#"{"timestamp": {"seconds": 1, "microseconds": 0}, "event": "RESET", "data": {"guest": false}}"#
                        .to_owned(),
                    r#"{"return": {}}"#.to_owned(),
                ]
            }));
            async move { Ok(a) }
        });
        settle().await;
        let s = vm.state();
        assert!(s.connected, "{s:?}");
        assert_eq!(s.status.as_deref(), Some("running"));
        assert!(!s.snapshot);
        assert_eq!(metrics.qmp_connected.get(), 1);
        assert_eq!(vm.health_label(), "running");
        let done = vm.act(Action::Reset).await.unwrap();
        assert_eq!(done, Done { action: Action::Reset, status: "running".into() });
        assert_eq!(*lock(&seen), vec!["system_reset"]);
        // Power-on while running makes no sense; revert without a snapshot neither.
        assert!(matches!(vm.act(Action::Poweron).await, Err(ActionError::Conflict(_))));
        let e = vm.act(Action::Revert).await.unwrap_err();
        assert!(e.to_string().contains("no revert point"), "{e}");
        let j = vm.control_json();
        assert_eq!(j["qmp"], "connected");
        assert_eq!(j["last"]["action"], "revert");
    }

    #[tokio::test(start_paused = true)]
    async fn power_on_from_shutdown_resets_and_continues() {
        let metrics = Arc::new(Metrics::new());
        let (_stx, srx) = watch::channel(false);
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen2 = seen.clone();
        let vm = Vm::start_with(config(), metrics, srx, move || {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let seen = seen2.clone();
            tokio::spawn(fake_qemu(b, "shutdown", move |cmd| {
                lock(&seen).push(cmd["execute"].as_str().unwrap().to_owned());
                vec![r#"{"return": {}}"#.to_owned()]
            }));
            async move { Ok(a) }
        });
        settle().await;
        assert!(matches!(vm.act(Action::Reset).await, Err(ActionError::Conflict(_))));
        assert!(matches!(vm.act(Action::Powerdown).await, Err(ActionError::Conflict(_))));
        vm.act(Action::Poweron).await.unwrap();
        assert_eq!(*lock(&seen), vec!["system_reset", "cont"]);
    }

    #[tokio::test(start_paused = true)]
    async fn savevm_errors_are_conflicts() {
        let metrics = Arc::new(Metrics::new());
        let (_stx, srx) = watch::channel(false);
        let vm = Vm::start_with(config(), metrics, srx, move || {
            let (a, b) = tokio::io::duplex(64 * 1024);
            tokio::spawn(fake_qemu(b, "running", |_| {
                vec![r#"{"return": "Error: No block device can accept snapshots\r\n"}"#.to_owned()]
            }));
            async move { Ok(a) }
        });
        settle().await;
        let e = vm.act(Action::Snapshot).await.unwrap_err();
        assert!(matches!(&e, ActionError::Conflict(m) if m.contains("No block device can accept snapshots")), "{e}");
        assert!(!vm.state().snapshot);
    }

    #[tokio::test(start_paused = true)]
    async fn garbage_and_silence_are_clear_errors() {
        let metrics = Arc::new(Metrics::new());
        let (_stx, srx) = watch::channel(false);
        let vm = Vm::start_with(config(), metrics.clone(), srx, move || {
            let (a, mut b) = tokio::io::duplex(1024);
            tokio::spawn(async move {
                let _ = b.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
            async move { Ok(a) }
        });
        settle().await;
        let s = vm.state();
        assert!(!s.connected);
        assert!(s.error.as_deref().unwrap_or("").contains("not JSON"), "{s:?}");
        let e = vm.act(Action::Reset).await.unwrap_err();
        assert!(matches!(e, ActionError::Unavailable(_)), "{e}");
        assert_eq!(vm.health_label(), "unavailable");
        assert_eq!(metrics.qmp_connected.get(), 0);

        let (_stx, srx) = watch::channel(false);
        let vm = Vm::start_with(config(), metrics, srx, move || {
            let (a, b) = tokio::io::duplex(1024);
            tokio::spawn(async move {
                let _b = b;
                tokio::time::sleep(Duration::from_secs(600)).await;
            });
            async move { Ok(a) }
        });
        tokio::time::sleep(Duration::from_secs(6)).await;
        let s = vm.state();
        assert!(!s.connected);
        assert!(s.error.as_deref().unwrap_or("").contains("did not send its QMP greeting"), "{s:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_qemu_never_answers_times_out_and_reconnects() {
        let metrics = Arc::new(Metrics::new());
        let (_stx, srx) = watch::channel(false);
        let connects = Arc::new(Mutex::new(0));
        let c2 = connects.clone();
        let vm = Vm::start_with(config(), metrics, srx, move || {
            *lock(&c2) += 1;
            let (a, b) = tokio::io::duplex(64 * 1024);
            tokio::spawn(fake_qemu(b, "running", |_| vec![]));
            async move { Ok(a) }
        });
        settle().await;
        assert!(vm.state().connected);
        let e = vm.act(Action::Reset).await.unwrap_err();
        assert!(
            matches!(&e, ActionError::Unavailable(m) if m.contains("did not send an answer to system_reset")),
            "{e}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(vm.state().connected, "reconnected");
        assert!(*lock(&connects) >= 2);
    }

    #[tokio::test]
    async fn without_qmp_everything_is_unavailable() {
        let vm = Vm::disabled();
        assert!(!vm.enabled());
        assert_eq!(vm.act(Action::Reset).await, Err(ActionError::Unavailable(NO_QMP.into())));
        assert_eq!(vm.control_json()["error"], NO_QMP);
        assert_eq!(vm.health_label(), "unavailable");
        assert_eq!(Action::parse("revert"), Some(Action::Revert));
        assert_eq!(Action::parse("format"), None);
    }
}
