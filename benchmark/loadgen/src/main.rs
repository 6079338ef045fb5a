//! Load generator for the ignis-native-ws benchmarks. It speaks the helper's wire protocol
//! (authenticate, join, custom events), runs one scenario, and prints phase markers and a
//! result line for `benchmark/run.mjs`:
//!
//! ```text
//! PHASE measure-start | PHASE measure-end | PHASE idle (then waits for a line on stdin)
//! RESULT {"scenario":...}
//! ```
//!
//! Every loop is bounded by `--duration` (and a hard overall deadline); latencies are measured
//! from the scheduled send time, so a stalled server cannot hide behind a stalled sender.
//!
//! Scenarios:
//! - `connect`: `--clients` connections, `--concurrency` at a time, each until `connected`.
//! - `fanout`: `--clients` receivers; a driver asks for a broadcast `--rate` times a second.
//! - `rooms`: receivers spread over `--rooms` rooms; the driver asks for a room message.
//! - `cross`: receivers on `--url`, the driver on another instance (`--driver-url`) asks it for
//!   `send()` without destination, which reaches the receivers through Redis.
//! - `echo`: every client in a closed loop through the server's `messageHandler`.
//! - `saturate-fanout`, `saturate-rooms`: fan-out and rooms with raw receivers on `--threads`
//!   threads and a driver that writes each millisecond's requests at once, for sweeps past a
//!   server's capacity (see `saturate.rs`).
//!
//! `--slow N` (fanout, rooms, cross) adds N slow consumers: clients that authenticate on the
//! receivers' server with a 4 KB socket receive buffer and then never read, so the server's
//! queue for them fills. They are not counted as receivers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::LocalSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod saturate;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, Message>;
type Stream = SplitStream<Ws>;

static START: OnceLock<Instant> = OnceLock::new();

pub(crate) fn now_us() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

pub(crate) fn phase(name: &str) {
    println!("PHASE {name}");
    let _ = std::io::stdout().flush();
}

pub(crate) struct Args {
    scenario: String,
    url: String,
    /// Where the driver connects; `--url` unless given.
    driver_url: Option<String>,
    clients: usize,
    concurrency: usize,
    rate: u64,
    duration: Duration,
    warmup: Duration,
    rooms: usize,
    payload: usize,
    slow: usize,
    /// `saturate`: receiver threads.
    threads: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        scenario: String::new(),
        url: "ws://127.0.0.1:8080/ws".into(),
        driver_url: None,
        clients: 100,
        concurrency: 50,
        rate: 100,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        rooms: 10,
        payload: 64,
        slow: 0,
        threads: 1,
    };
    let mut raw = std::env::args().skip(1);
    args.scenario = raw.next().unwrap_or_else(|| usage("missing scenario"));
    while let Some(flag) = raw.next() {
        let value = raw
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = || {
            value
                .parse::<u64>()
                .unwrap_or_else(|_| usage(&format!("{flag}: not a number")))
        };
        match flag.as_str() {
            "--url" => args.url = value.clone(),
            "--driver-url" => args.driver_url = Some(value.clone()),
            "--clients" => args.clients = number() as usize,
            "--concurrency" => args.concurrency = number().max(1) as usize,
            "--rate" => args.rate = number().max(1),
            "--duration" => args.duration = Duration::from_secs(number()),
            "--warmup" => args.warmup = Duration::from_secs(number()),
            "--rooms" => args.rooms = number().max(1) as usize,
            "--payload" => args.payload = number() as usize,
            "--slow" => args.slow = number() as usize,
            "--threads" => args.threads = number().max(1) as usize,
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    args
}

fn usage(problem: &str) -> ! {
    eprintln!("loadgen: {problem}\nusage: loadgen connect|fanout|rooms|cross|echo|saturate-fanout|saturate-rooms [--url U] [--driver-url U] [--clients N] [--concurrency C] [--rate R] [--duration S] [--warmup S] [--rooms K] [--payload BYTES] [--slow N] [--threads T]");
    std::process::exit(2)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

fn latency_json(hist: &Histogram<u64>) -> serde_json::Value {
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({
        "samples": hist.len(),
        "p50_ms": ms(0.50),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": hist.max() as f64 / 1000.0,
    })
}

/// Reads a `"t":<micros>` field without a full JSON parse (the loadgen must stay cheap).
fn field_u64(text: &str, name: &str) -> Option<u64> {
    let key = format!("\"{name}\":");
    let start = text.find(&key)? + key.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// tungstenite zero-fills its read buffer (128 KB by default) before every read, and the
/// first fill of each connection's buffer faults its pages in: with the default, the load
/// generator spent half of its time in `memset` and page faults and saturated long before the
/// servers did. The messages here are small; a larger one still arrives in several reads.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

async fn connect_authenticated(url: &str, user: &str) -> Result<(Sink, Stream), String> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(client_config()), false)
        .await
        .map_err(|e| e.to_string())?;
    authenticate(ws, user).await
}

/// A client whose socket can buffer almost nothing: once it stops reading, the server's
/// queue for it fills within a few messages.
async fn connect_stalled(url: &str, user: &str) -> Result<(Sink, Stream), String> {
    let address = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("{e}"))?;
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .set_recv_buffer_size(4096)
        .map_err(|e| e.to_string())?;
    let tcp = socket.connect(address).await.map_err(|e| e.to_string())?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        url,
        MaybeTlsStream::Plain(tcp),
        Some(client_config()),
    )
    .await
    .map_err(|e| e.to_string())?;
    authenticate(ws, user).await
}

async fn authenticate(ws: Ws, user: &str) -> Result<(Sink, Stream), String> {
    let (mut sink, mut stream) = ws.split();
    let auth = format!(r#"{{"event":"authenticate","data":{{"user":"{user}"}}}}"#);
    sink.send(Message::text(auth))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(message) = stream.next().await {
        match message.map_err(|e| e.to_string())? {
            Message::Text(text) if text.contains(r#""event":"connected""#) => {
                return Ok((sink, stream))
            }
            Message::Close(frame) => {
                return Err(format!("closed during authentication: {frame:?}"))
            }
            _ => {}
        }
    }
    Err("connection ended during authentication".into())
}

/// Opens `count` authenticated connections, `concurrency` at a time.
async fn connect_many(
    args: &Args,
    count: usize,
    prefix: &str,
) -> (Vec<(Sink, Stream)>, Histogram<u64>, usize) {
    let semaphore = Rc::new(Semaphore::new(args.concurrency));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let semaphore = semaphore.clone();
        let url = args.url.clone();
        let user = format!("{prefix}{i}");
        tasks.push(tokio::task::spawn_local(async move {
            let _permit = semaphore.acquire().await.expect("semaphore open");
            let started = now_us();
            let result =
                tokio::time::timeout(Duration::from_secs(30), connect_authenticated(&url, &user))
                    .await;
            (result, now_us() - started)
        }));
    }
    let mut connections = Vec::with_capacity(count);
    let mut hist = histogram();
    let mut failures = 0;
    for task in tasks {
        match task.await {
            Ok((Ok(Ok(connection)), took)) => {
                hist.record(took.max(1)).ok();
                connections.push(connection);
            }
            Ok((Ok(Err(error)), _)) => {
                if failures == 0 {
                    eprintln!("loadgen: connection failed: {error}");
                }
                failures += 1;
            }
            _ => failures += 1,
        }
    }
    (connections, hist, failures)
}

async fn wait_for_stdin_line() {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let _ = tokio::time::timeout(Duration::from_secs(300), lines.next_line()).await;
}

async fn connect_scenario(args: &Args) -> serde_json::Value {
    phase("measure-start");
    let started = Instant::now();
    let (connections, hist, failures) = connect_many(args, args.clients, "c").await;
    let elapsed = started.elapsed().as_secs_f64();
    phase("measure-end");
    // The orchestrator reads the server's memory with every connection idle.
    phase("idle");
    wait_for_stdin_line().await;
    drop(connections);
    serde_json::json!({
        "connected": args.clients - failures,
        "failures": failures,
        "elapsed_s": elapsed,
        "connections_per_s": (args.clients - failures) as f64 / elapsed,
        "time_to_connected": latency_json(&hist),
    })
}

/// Where the run is: receivers only count what was sent inside the measured window.
#[derive(Default)]
struct Window {
    start_us: Cell<u64>,
    end_us: Cell<u64>,
}

impl Window {
    fn contains(&self, t: u64) -> bool {
        let start = self.start_us.get();
        start != 0 && t >= start && (self.end_us.get() == 0 || t < self.end_us.get())
    }
}

#[derive(Default)]
struct Tally {
    received: Cell<u64>,
    latency: RefCell<Option<Histogram<u64>>>,
}

impl Tally {
    fn record(&self, latency_us: u64) {
        self.received.set(self.received.get() + 1);
        self.latency
            .borrow_mut()
            .get_or_insert_with(histogram)
            .record(latency_us.max(1))
            .ok();
    }
}

/// Reads `tick` messages until the stream ends, tallying those sent inside the window.
fn spawn_receiver(mut stream: Stream, window: Rc<Window>, tally: Rc<Tally>) {
    tokio::task::spawn_local(async move {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Text(text) = message {
                if !text.contains(r#""event":"tick""#) {
                    continue;
                }
                if let Some(t) = field_u64(&text, "t") {
                    if window.contains(t) {
                        tally.record(now_us().saturating_sub(t));
                    }
                }
            }
        }
    });
}

/// What the driver of a fan-out scenario asks for.
#[derive(Clone, Copy)]
enum Fanout {
    /// `broadcast()` on the receivers' server.
    Broadcast,
    /// `sendToRoom()`, round robin over this many rooms.
    Rooms(usize),
    /// `send()` without destination on the driver's server, which publishes to Redis.
    CrossInstance,
}

/// `fanout`, `rooms` and `cross`: a driver asks for one message per tick at `--rate`.
async fn fanout_scenario(args: &Args, mode: Fanout) -> serde_json::Value {
    let rooms = match mode {
        Fanout::Rooms(rooms) => Some(rooms),
        _ => None,
    };
    let (connections, _, failures) = connect_many(args, args.clients, "r").await;
    let window = Rc::new(Window::default());
    let tally = Rc::new(Tally::default());
    let mut sinks = Vec::with_capacity(connections.len());
    let mut members: HashMap<usize, usize> = HashMap::new();
    for (i, (mut sink, stream)) in connections.into_iter().enumerate() {
        if let Some(rooms) = rooms {
            let room = i % rooms;
            *members.entry(room).or_default() += 1;
            let join = format!(r#"{{"event":"join","data":{{"rooms":["room-{room}"]}}}}"#);
            let _ = sink.send(Message::text(join)).await;
        }
        spawn_receiver(stream, window.clone(), tally.clone());
        sinks.push(sink);
    }
    // Held, never polled: nothing is read from these sockets again.
    let mut stalled = Vec::with_capacity(args.slow);
    for i in 0..args.slow {
        match connect_stalled(&args.url, &format!("slow-{i}")).await {
            Ok(connection) => stalled.push(connection),
            Err(error) => eprintln!("loadgen: slow consumer {i} could not connect: {error}"),
        }
    }
    let driver_url = args.driver_url.as_deref().unwrap_or(&args.url);
    let (mut driver, driver_stream) = connect_authenticated(driver_url, "driver")
        .await
        .unwrap_or_else(|error| panic!("driver could not connect: {error}"));
    // The driver is authenticated too, so broadcasts reach it; read and drop them.
    spawn_receiver(
        driver_stream,
        Rc::new(Window::default()),
        Rc::new(Tally::default()),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let pad = "x".repeat(args.payload);
    let period = Duration::from_nanos(1_000_000_000 / args.rate);
    let mut ticker = tokio::time::interval(period);
    let (mut sent, mut expected) = (0u64, 0u64);
    let warmup_end = Instant::now() + args.warmup;
    let mut measure_end = None;
    let mut seq = 0usize;
    loop {
        ticker.tick().await;
        let now = Instant::now();
        if measure_end.is_none() && now >= warmup_end {
            window.start_us.set(now_us());
            measure_end = Some(now + args.duration);
            phase("measure-start");
        }
        if measure_end.is_some_and(|end| now >= end) {
            window.end_us.set(now_us());
            phase("measure-end");
            break;
        }
        let t = now_us();
        let request = match rooms {
            Some(rooms) => {
                let room = seq % rooms;
                if window.contains(t) {
                    expected += members.get(&room).copied().unwrap_or(0) as u64;
                }
                format!(
                    r#"{{"event":"bench:room","data":{{"room":"room-{room}","t":{t},"pad":"{pad}"}}}}"#
                )
            }
            None => {
                if window.contains(t) {
                    expected += sinks.len() as u64;
                }
                let event = match mode {
                    Fanout::CrossInstance => "bench:send",
                    _ => "bench:broadcast",
                };
                format!(r#"{{"event":"{event}","data":{{"t":{t},"pad":"{pad}"}}}}"#)
            }
        };
        if window.contains(t) {
            sent += 1;
        }
        seq += 1;
        if driver.send(Message::text(request)).await.is_err() {
            eprintln!("loadgen: driver connection lost");
            break;
        }
    }
    // Let in-flight messages land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = tally.received.get();
    let measured = args.duration.as_secs_f64();
    let latency = tally.latency.borrow().clone().unwrap_or_else(histogram);
    drop(sinks);
    serde_json::json!({
        "receivers": args.clients - failures,
        "slow_consumers": stalled.len(),
        "failures": failures,
        "rate": args.rate,
        "requests_sent": sent,
        "deliveries_expected": expected,
        "deliveries_received": received,
        "loss": expected.saturating_sub(received),
        "deliveries_per_s": received as f64 / measured,
        "latency": latency_json(&latency),
    })
}

/// `echo`: each client sends, waits for its echo, and sends again.
async fn echo_scenario(args: &Args) -> serde_json::Value {
    let (connections, _, failures) = connect_many(args, args.clients, "e").await;
    let window = Rc::new(Window::default());
    let tally = Rc::new(Tally::default());
    let stop = Rc::new(Cell::new(false));
    let pad = "x".repeat(args.payload);
    let mut tasks = Vec::new();
    for (mut sink, mut stream) in connections {
        let (window, tally, stop, pad) = (window.clone(), tally.clone(), stop.clone(), pad.clone());
        tasks.push(tokio::task::spawn_local(async move {
            while !stop.get() {
                let t = now_us();
                let request = format!(r#"{{"event":"echo","data":{{"t":{t},"pad":"{pad}"}}}}"#);
                if sink.send(Message::text(request)).await.is_err() {
                    return;
                }
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                        Ok(Some(Ok(Message::Text(text)))) if text.contains(r#""event":"echo""#) => {
                            break
                        }
                        Ok(Some(Ok(_))) => {}
                        _ => return,
                    }
                }
                if window.contains(t) {
                    tally.record(now_us() - t);
                }
            }
        }));
    }
    tokio::time::sleep(args.warmup).await;
    window.start_us.set(now_us());
    phase("measure-start");
    tokio::time::sleep(args.duration).await;
    window.end_us.set(now_us());
    phase("measure-end");
    stop.set(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let latency = tally.latency.borrow().clone().unwrap_or_else(histogram);
    serde_json::json!({
        "clients": args.clients - failures,
        "failures": failures,
        "round_trips": tally.received.get(),
        "round_trips_per_s": tally.received.get() as f64 / args.duration.as_secs_f64(),
        "latency": latency_json(&latency),
    })
}

fn main() {
    let args = parse_args();
    now_us();
    if args.scenario.starts_with("saturate") {
        let mut value = saturate::run(&args);
        value["scenario"] = serde_json::Value::from(args.scenario.clone());
        println!("RESULT {value}");
        std::process::exit(0);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let deadline = args.warmup + args.duration + Duration::from_secs(400);
    let result = LocalSet::new().block_on(&runtime, async {
        let run = async {
            match args.scenario.as_str() {
                "connect" => connect_scenario(&args).await,
                "fanout" => fanout_scenario(&args, Fanout::Broadcast).await,
                "rooms" => fanout_scenario(&args, Fanout::Rooms(args.rooms)).await,
                "cross" => fanout_scenario(&args, Fanout::CrossInstance).await,
                "echo" => echo_scenario(&args).await,
                other => usage(&format!("unknown scenario {other}")),
            }
        };
        tokio::time::timeout(deadline, run).await
    });
    match result {
        Ok(mut value) => {
            value["scenario"] = serde_json::Value::from(args.scenario.clone());
            println!("RESULT {value}");
        }
        Err(_) => {
            eprintln!("loadgen: gave up after {deadline:?}");
            std::process::exit(1);
        }
    }
    // Connections are dropped with the runtime; no graceful closes needed for a benchmark.
    std::process::exit(0);
}
