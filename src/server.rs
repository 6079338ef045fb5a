//! The listener, the heartbeat sweep, shutdown, and the operations the JS API exposes.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::broker::{Broker, BrokerConfig, BrokerEvents, BrokerStatus, Incoming};
use crate::config::{ServerConfig, CLOSE_GRACE};
use crate::connection;
use crate::dispatch::{Dispatcher, JsBridge, JsNotice, LogLevel, Outcome};
use crate::error::Error;
use crate::frame::{close_code, OutboundText};
use crate::hub::{ClientId, EncryptedDelivery, Hub};
use crate::outbox::Push;
use crate::sender::{self, Sender};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds on a monotonic clock (since the first call): for durations that must not
/// jump with the wall clock.
pub fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// State shared by the listener, every connection and the JS-facing API.
pub(crate) struct Core {
    pub config: ServerConfig,
    pub hub: Arc<Hub>,
    pub dispatcher: Arc<Dispatcher>,
    pub sender: Arc<Sender>,
    pub broker: std::sync::OnceLock<Arc<Broker>>,
    shutting_down: AtomicBool,
    /// Tasks wait with `wait_for(|stopped| *stopped)`, never `changed()`: a task that
    /// subscribes after shutdown began must still see it.
    stop: watch::Sender<bool>,
    /// Each connection task holds a clone; shutdown drops the original and waits until the
    /// channel reports every clone gone.
    alive: Mutex<Option<ConnectionGuard>>,
}

/// Held by each connection task; see `Core::alive`.
pub(crate) type ConnectionGuard = mpsc::Sender<()>;

impl Core {
    /// Formats and queues a log line, unless no JS logger method takes its level.
    pub fn log(&self, level: LogLevel, text: std::fmt::Arguments<'_>) {
        if self.config.log_levels & level.bit() != 0 {
            self.dispatcher.log(level, &text.to_string());
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

/// Messages for encrypted clients go to JS's `outboundTransformer`, in delivery order.
struct TransformInJs(Arc<Dispatcher>);

impl EncryptedDelivery for TransformInJs {
    fn transform(&self, message: &str, clients: Vec<ClientId>) {
        self.0.notify(JsNotice::Transform {
            message,
            clients: &clients,
        });
    }
}

pub struct Server {
    core: Arc<Core>,
    all_gone: tokio::sync::Mutex<Option<mpsc::Receiver<()>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    port: u16,
}

/// Connections the kernel completes and queues before `accept` takes them. Rust's standard
/// listener asks for 128: a burst of clients reconnecting at once (after a deploy, say)
/// overflowed it, and each dropped handshake cost its client a 1-second SYN retry. 1024 is
/// tokio's own default (uWebSockets asks for 512, Node for 511); the kernel caps it at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 1024;

/// Binds synchronously, so a taken port is reported by the call that asked for it. Like the
/// standard library's `TcpListener::bind`, it tries each address the host resolves to, with
/// `SO_REUSEADDR`, so a restarted server can bind while old connections sit in TIME_WAIT.
pub fn bind(config: &ServerConfig) -> Result<std::net::TcpListener, Error> {
    let address = format!("{}:{}", config.host, config.port);
    let bind_error = |source| Error::Bind {
        address: address.clone(),
        source,
    };
    let mut last_error = None;
    for candidate in address.to_socket_addrs().map_err(bind_error)? {
        match listen_on(candidate) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(bind_error(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the host resolved to no address",
        )
    })))
}

fn listen_on(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    // As std does: on Windows SO_REUSEADDR would let a second process take the port.
    #[cfg(not(windows))]
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl Server {
    /// Starts serving on `listener`. Must run inside a tokio runtime.
    pub fn start(
        config: ServerConfig,
        listener: std::net::TcpListener,
        bridge: Arc<dyn JsBridge>,
    ) -> Result<Server, Error> {
        let address = listener
            .local_addr()
            .map(|address| address.to_string())
            .unwrap_or_default();
        let port = listener
            .local_addr()
            .map(|address| address.port())
            .unwrap_or(0);
        let listener =
            TcpListener::from_std(listener).map_err(|source| Error::Bind { address, source })?;
        let (stop, _) = watch::channel(false);
        let (alive, all_gone) = mpsc::channel(1);
        let hub = Arc::new(Hub::default());
        let sender = Sender::new(hub.clone(), !sender::has_more_than_one_core());
        let core = Arc::new(Core {
            config,
            hub,
            dispatcher: Dispatcher::start(bridge),
            sender,
            broker: std::sync::OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            stop,
            alive: Mutex::new(Some(alive)),
        });
        if let Some(target) = core.config.redis.clone() {
            let broker = Broker::start(
                BrokerConfig {
                    target,
                    server_id: core.config.server_id.clone(),
                    subscribe: true,
                    probe_interval: PROBE_INTERVAL,
                    probe_timeout: PROBE_TIMEOUT,
                },
                Arc::new(BrokerLink(Arc::downgrade(&core))),
            );
            let _ = core.broker.set(broker);
        }
        if core.config.has_outbound_transformer {
            core.hub
                .set_encrypted_delivery(Arc::new(TransformInJs(core.dispatcher.clone())));
        }
        let mut stop_sender = core.stop.subscribe();
        let tasks = vec![
            tokio::spawn(accept_loop(core.clone(), listener)),
            tokio::spawn(heartbeat_loop(core.clone())),
            tokio::spawn(idle_loop(core.clone())),
            tokio::spawn(core.sender.clone().run(async move {
                let _ = stop_sender.wait_for(|stopped| *stopped).await;
            })),
        ];
        Ok(Server {
            core,
            all_gone: tokio::sync::Mutex::new(Some(all_gone)),
            tasks: Mutex::new(tasks),
            port,
        })
    }

    #[cfg(test)]
    pub(crate) fn core_for_tests(&self) -> Arc<Core> {
        self.core.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn hub(&self) -> &Hub {
        &self.core.hub
    }

    pub fn broker(&self) -> Option<&Arc<Broker>> {
        self.core.broker.get()
    }

    /// Where sends issued by JavaScript go, in order.
    pub fn sender(&self) -> &Sender {
        &self.core.sender
    }

    pub fn settle(&self, token: u64, outcome: Outcome) -> bool {
        self.core.dispatcher.settle(token, outcome)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.core.is_shutting_down()
    }

    /// `socket.send(data)` of one client, or a message the transformer produced for it:
    /// a text frame as it is (never transformed), Bun's return convention.
    pub fn send_text(&self, client_id: &str, text: &str) -> i64 {
        let message = OutboundText::new(text);
        self.core
            .sender
            .now(|hub| hub.send_as_is(client_id, &message))
            .unwrap_or(Push::Closed)
            .as_bun_send_result()
    }

    /// `socket.close(code, reason)` of one client.
    /// Queued sends to the client go out before the close frame.
    pub fn close_client(&self, client_id: &str, code: u16, reason: &str) -> bool {
        self.core.sender.now(|hub| {
            hub.handle(client_id)
                .is_some_and(|handle| handle.close(code, reason))
        })
    }

    /// Closes every client with 1001, waits for their connections to end (each runs its
    /// disconnect path), stops the listener and the heartbeat, and waits until JS has
    /// received every queued callback, then releases the JS function. A second call returns
    /// at once.
    pub async fn shutdown(&self) {
        if self.core.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.core.stop.send(true);
        for handle in self.core.hub.all_handles() {
            handle.close(close_code::GOING_AWAY, "Server shutting down");
        }
        drop(
            self.core
                .alive
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        if let Some(mut all_gone) = self.all_gone.lock().await.take() {
            // Connections end within the close grace; the margin covers a stuck writer.
            let _ = tokio::time::timeout(CLOSE_GRACE * 3, all_gone.recv()).await;
        }
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for task in tasks {
            let _ = task.await;
        }
        self.core.hub.clear();
        if let Some(broker) = self.core.broker.get() {
            broker.shutdown();
        }
        self.core.dispatcher.stop().await;
    }
}

async fn accept_loop(core: Arc<Core>, listener: TcpListener) {
    let mut stop = core.stop.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(alive) = core.alive.lock().unwrap_or_else(|p| p.into_inner()).clone()
                else {
                    return;
                };
                let accepted = Box::new(connection::Accepted { stream, peer });
                tokio::spawn(connection::run(core.clone(), accepted, alive));
            }
            Err(error) => {
                // Typically out of file descriptors: back off instead of spinning.
                core.log(
                    LogLevel::Error,
                    format_args!("Accept failed | error: {error}"),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn heartbeat_loop(core: Arc<Core>) {
    let mut stop = core.stop.subscribe();
    let period = core.config.heartbeat_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout_ms = core.config.heartbeat_timeout.as_millis() as u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        for handle in core.hub.stale(now_ms(), timeout_ms) {
            core.log(
                LogLevel::Warn,
                format_args!(
                    "Heartbeat timeout | id: {} | lastActivity: {}",
                    handle.id,
                    crate::protocol::iso_time(handle.last_activity())
                ),
            );
            handle.close(close_code::HEARTBEAT_TIMEOUT, "Heartbeat timeout");
        }
    }
}

/// Transport idleness (`serverOptions.idleTimeout`, `sendPings`): a connection that sent
/// nothing for half the timeout gets a ping (with `sendPings`); one silent for the whole
/// timeout is closed with 1001. One sweep over all connections instead of a timer each:
/// connections stay small, and a sweep of 10,000 handles is a few microseconds of work
/// per tick.
async fn idle_loop(core: Arc<Core>) {
    let idle = core.config.idle_timeout;
    if idle.is_zero() {
        return;
    }
    let mut stop = core.stop.subscribe();
    let period = (idle / 8).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle_ms = idle.as_millis() as u64;
    // Below this much silence a connection needs nothing: neither a ping nor closing.
    let attention_after = if core.config.send_pings {
        idle_ms / 2
    } else {
        idle_ms
    };
    let ping = crate::frame::encode_frame(crate::frame::OP_PING, b"");
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let now = monotonic_ms();
        for handle in core
            .hub
            .handles_where(|handle| handle.silent_for(now) >= attention_after)
        {
            let silent = handle.silent_for(now);
            if silent >= idle_ms {
                if handle.close(close_code::GOING_AWAY, "Idle timeout") {
                    core.log(
                        LogLevel::Info,
                        format_args!("Idle timeout | id: {} | silentMs: {silent}", handle.id),
                    );
                }
            } else if core.config.send_pings && !handle.is_closing() && handle.start_ping() {
                handle.send(&ping);
            }
        }
    }
}

/// How often the subscription proves it still receives, and how long the proof may take.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The broker's view of the server. Weak: the broker's tasks must not keep a shut-down
/// server alive.
struct BrokerLink(std::sync::Weak<Core>);

impl BrokerEvents for BrokerLink {
    fn message(&self, incoming: Incoming) {
        let Some(core) = self.0.upgrade() else {
            return;
        };
        let hub = &core.hub;
        match incoming {
            Incoming::Broadcast { frame, exclude } => {
                hub.broadcast(&OutboundText::new(&frame), &exclude);
            }
            Incoming::Room {
                room,
                frame,
                exclude,
            } => {
                hub.send_to_room(&room, &OutboundText::new(&frame), &exclude);
            }
            Incoming::Client { client_id, frame } => {
                hub.send_to_client(&client_id, &OutboundText::new(&frame));
            }
            Incoming::User { user_id, frame } => {
                hub.send_to_user(&user_id, &OutboundText::new(&frame));
            }
            Incoming::Ignored => {}
        }
    }

    fn status(&self, status: BrokerStatus, detail: Option<&str>) {
        let Some(core) = self.0.upgrade() else {
            return;
        };
        match status {
            BrokerStatus::Reconnecting => core.log(
                LogLevel::Error,
                format_args!(
                    "Redis connection lost; local delivery continues, reconnecting | reason: {}",
                    detail.unwrap_or("unknown")
                ),
            ),
            BrokerStatus::Ready => core.log(LogLevel::Info, format_args!("Redis bridge ready")),
            _ => {}
        }
        core.dispatcher.notify(JsNotice::RedisStatus {
            status: status.as_str(),
            detail,
        });
    }

    fn log_error(&self, text: &str) {
        if let Some(core) = self.0.upgrade() {
            core.log(LogLevel::Error, format_args!("{text}"));
        }
    }
}

/// A server on a free loopback port whose JS side answers every batch with nothing.
#[cfg(test)]
pub(crate) fn start_for_tests() -> Server {
    struct NoJs;

    impl JsBridge for NoJs {
        fn deliver(&self, _: String, in_js: crate::dispatch::BatchInJs) {
            in_js.answer(Ok("[]".to_string()));
        }
    }

    let config = ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        ..Default::default()
    };
    let listener = bind(&config).expect("bind a free port");
    Server::start(config, listener, Arc::new(NoJs)).expect("start")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a current-thread runtime the spawned tasks have not run when `shutdown()` starts:
    /// they must still see the stop signal (they once waited for a change they had missed,
    /// and shutdown hung until the next heartbeat tick).
    #[tokio::test]
    async fn shutdown_right_after_start_completes() {
        let server = start_for_tests();
        let finished = tokio::time::timeout(Duration::from_secs(5), server.shutdown()).await;
        assert!(finished.is_ok(), "shutdown hung");
    }

    /// Nobody accepts here, so every completed handshake waits in the listen queue: with
    /// the standard library's backlog of 128 the later connects were dropped (the client
    /// retries its SYN after a second), with ours all of them complete at once.
    #[test]
    #[cfg(target_os = "linux")]
    fn the_listen_queue_holds_a_burst_of_connections() {
        let config = ServerConfig {
            host: "127.0.0.1".into(),
            port: 0,
            ..Default::default()
        };
        let listener = bind(&config).expect("bind a free port");
        let address = listener.local_addr().expect("bound address");
        // The kernel caps the backlog at net.core.somaxconn (4096 on current kernels).
        let burst = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok())
            .map_or(400, |cap| cap.min(400));
        let mut clients = Vec::new();
        for attempt in 0..burst {
            let client = std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500))
                .unwrap_or_else(|error| panic!("connection {attempt} not queued: {error}"));
            clients.push(client);
        }
    }
}
