//! `saturate`: a fan-out load generator cheap enough to measure a server past its capacity.
//!
//! The `fanout` and `rooms` scenarios parse every frame with tungstenite, one message per
//! call, on one thread: at a few hundred thousand deliveries a second the load generator
//! saturates before the servers do. Here each receiver reads its socket in 64 KB chunks and
//! walks the frames itself (server frames are unmasked; only the `t` field of a tick is read),
//! takes the clock once per read, and receivers are spread over `--threads` threads.
//!
//! The driver asks for `--rate` messages a second (broadcasts, or room sends round robin over
//! `--rooms` rooms): every millisecond it writes the requests due by then in one write, each
//! stamped with its scheduled time, so latency counts from when a request was due even if
//! the driver's own socket was slow to take it. `driver_behind_ms` reports how far the
//! driver fell behind its schedule (a server that stops reading shows up there), and
//! `cpu_s` the load generator's own CPU time, to tell which side saturated.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{now_us, phase, Args};

/// What every receiver thread shares.
struct Shared {
    /// The measured window, in `now_us`; 0 until set.
    window_start: AtomicU64,
    window_end: AtomicU64,
    stop: AtomicBool,
    results: Mutex<Vec<Tally>>,
}

impl Shared {
    fn in_window(&self, t: u64) -> bool {
        let start = self.window_start.load(Ordering::Relaxed);
        let end = self.window_end.load(Ordering::Relaxed);
        start != 0 && t >= start && (end == 0 || t < end)
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 2).expect("valid histogram bounds")
}

/// A client frame: text, FIN, masked with a zero key (any key is valid, and zero leaves the
/// payload as it is).
fn client_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0x81);
    match payload.len() {
        len if len < 126 => out.push(0x80 | len as u8),
        len if len < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// One complete server frame at the start of `buffer`: (opcode, payload range, length).
fn server_frame(buffer: &[u8]) -> Option<(u8, std::ops::Range<usize>)> {
    if buffer.len() < 2 {
        return None;
    }
    let opcode = buffer[0] & 0x0f;
    let (len, header) = match buffer[1] & 0x7f {
        126 if buffer.len() >= 4 => (u16::from_be_bytes([buffer[2], buffer[3]]) as usize, 4),
        127 if buffer.len() >= 10 => (
            u64::from_be_bytes(buffer[2..10].try_into().expect("8 bytes")) as usize,
            10,
        ),
        126 | 127 => return None,
        len => (len as usize, 2),
    };
    (buffer.len() >= header + len).then_some((opcode, header..header + len))
}

/// The digits after `"t":` in a tick's payload.
fn tick_time(payload: &[u8]) -> Option<u64> {
    let at = payload.windows(4).position(|w| w == b"\"t\":")? + 4;
    let mut value = 0u64;
    let mut any = false;
    for &byte in &payload[at..] {
        if !byte.is_ascii_digit() {
            break;
        }
        value = value * 10 + u64::from(byte - b'0');
        any = true;
    }
    any.then_some(value)
}

/// Upgrades, authenticates as `user`, and returns once `connected` arrived, with any bytes
/// that followed it.
async fn connect(address: &str, path: &str, user: &str) -> Result<(TcpStream, Vec<u8>), String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buffer = Vec::with_capacity(4096);
    let header_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if stream
            .read_buf(&mut buffer)
            .await
            .map_err(|e| e.to_string())?
            == 0
        {
            return Err("closed during the upgrade".into());
        }
    };
    if !buffer.starts_with(b"HTTP/1.1 101") {
        return Err(String::from_utf8_lossy(&buffer[..header_end]).into_owned());
    }
    buffer.drain(..header_end);
    let mut auth = Vec::new();
    client_frame(
        &mut auth,
        format!(r#"{{"event":"authenticate","data":{{"user":"{user}"}}}}"#).as_bytes(),
    );
    stream.write_all(&auth).await.map_err(|e| e.to_string())?;
    loop {
        while let Some((opcode, payload)) = server_frame(&buffer) {
            let end = payload.end;
            let connected = opcode == 1
                && buffer[payload]
                    .windows(19)
                    .any(|w| w == br#""event":"connected""#);
            buffer.drain(..end);
            if connected {
                return Ok((stream, buffer));
            }
            if opcode == 8 {
                return Err("closed during authentication".into());
            }
        }
        if stream
            .read_buf(&mut buffer)
            .await
            .map_err(|e| e.to_string())?
            == 0
        {
            return Err("closed during authentication".into());
        }
    }
}

/// What a receiver thread counted.
struct Tally {
    received: u64,
    /// Ticks that arrived inside the window, whenever they were sent: the server's delivery
    /// rate, also past its capacity, where what arrives was sent long before.
    arrivals: u64,
    latency: Histogram<u64>,
    /// The latency of the first receiver alone, which the servers reach first: how long a
    /// request took to be read and handled, without the time the fan-out itself takes.
    first_latency: Histogram<u64>,
}

/// What one receiver has read and not yet parsed.
struct Receiver {
    stream: std::net::TcpStream,
    /// The first receiver connected (see `Tally::first_latency`).
    first: bool,
    /// The start of a frame that did not arrive whole.
    partial: Vec<u8>,
}

/// Walks the complete frames of `bytes`, counting ticks sent inside the window; returns how
/// many bytes it used, or `None` at a close frame.
fn count_ticks(
    bytes: &[u8],
    now: u64,
    shared: &Shared,
    first: bool,
    tally: &mut Tally,
) -> Option<usize> {
    let mut consumed = 0;
    while let Some((opcode, payload)) = server_frame(&bytes[consumed..]) {
        let range = consumed + payload.start..consumed + payload.end;
        consumed += payload.end;
        match opcode {
            8 => return None,
            1 => {
                if let Some(t) = tick_time(&bytes[range]) {
                    if shared.in_window(now) {
                        tally.arrivals += 1;
                    }
                    if shared.in_window(t) {
                        let latency = now.saturating_sub(t).max(1);
                        tally.received += 1;
                        tally.latency.record(latency).ok();
                        if first {
                            tally.first_latency.record(latency).ok();
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Some(consumed)
}

/// Receives on `receivers` with a level-triggered epoll loop (one `recv` per ready socket per
/// wake-up, no runtime in between) until `stop` is set.
fn receive_all(receivers: Vec<Receiver>, shared: &Shared) -> Tally {
    use std::os::fd::AsRawFd;
    let mut receivers: Vec<Option<Receiver>> = receivers.into_iter().map(Some).collect();
    let mut tally = Tally {
        received: 0,
        arrivals: 0,
        latency: histogram(),
        first_latency: histogram(),
    };
    // SAFETY: plain epoll calls on descriptors this thread owns.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    for (index, receiver) in receivers.iter().enumerate() {
        let fd = receiver.as_ref().expect("open").stream.as_raw_fd();
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: index as u64,
        };
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut chunk = vec![0u8; 256 * 1024];
    let mut open = receivers.len();
    while open > 0 && !shared.stop.load(Ordering::Relaxed) {
        let ready =
            unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 100) };
        if ready <= 0 {
            continue;
        }
        let now = now_us();
        for event in &events[..ready as usize] {
            let index = event.u64 as usize;
            let Some(receiver) = receivers[index].as_mut() else {
                continue;
            };
            let read = unsafe {
                libc::recv(
                    receiver.stream.as_raw_fd(),
                    chunk.as_mut_ptr().cast(),
                    chunk.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if read < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
            {
                continue;
            }
            let ended = if read <= 0 {
                true
            } else if receiver.partial.is_empty() {
                let bytes = &chunk[..read as usize];
                match count_ticks(bytes, now, shared, receiver.first, &mut tally) {
                    Some(used) => {
                        receiver.partial.extend_from_slice(&bytes[used..]);
                        false
                    }
                    None => true,
                }
            } else {
                receiver.partial.extend_from_slice(&chunk[..read as usize]);
                match count_ticks(&receiver.partial, now, shared, receiver.first, &mut tally) {
                    Some(used) => {
                        receiver.partial.drain(..used);
                        false
                    }
                    None => true,
                }
            };
            if ended {
                let fd = receiver.stream.as_raw_fd();
                unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
                receivers[index] = None;
                open -= 1;
            }
        }
    }
    unsafe { libc::close(epoll) };
    tally
}

/// A receiver thread: connects its share of the receivers (joining room `i % rooms` when
/// rooms are used), reports them connected, then receives until told to stop.
fn receiver_thread(
    address: String,
    path: String,
    users: Vec<usize>,
    rooms: Option<usize>,
    shared: Arc<Shared>,
    connected: std::sync::mpsc::Sender<usize>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let local = tokio::task::LocalSet::new();
        let receivers = local.block_on(&runtime, async move {
            let semaphore = Arc::new(tokio::sync::Semaphore::new(50));
            let mut tasks = Vec::new();
            for (at, user) in users.into_iter().enumerate() {
                let (address, path, semaphore) = (address.clone(), path.clone(), semaphore.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    let _permit = semaphore.acquire().await.expect("open");
                    let (mut stream, buffer) =
                        connect(&address, &path, &format!("r{user}")).await?;
                    if let Some(rooms) = rooms {
                        let mut join = Vec::new();
                        let text = format!(
                            r#"{{"event":"join","data":{{"rooms":["room-{}"]}}}}"#,
                            user % rooms
                        );
                        client_frame(&mut join, text.as_bytes());
                        stream.write_all(&join).await.map_err(|e| e.to_string())?;
                    }
                    Ok::<_, String>((stream, buffer, user == 0))
                }));
                if at == 0 {
                    // Receiver 0 is connected alone first, so it is first in every member
                    // list and its latency is the first recipient's.
                    tokio::task::yield_now().await;
                    while !tasks[0].is_finished() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            let mut connections = Vec::new();
            let mut failures = 0;
            for task in tasks {
                match task.await {
                    Ok(Ok(connection)) => connections.push(connection),
                    Ok(Err(error)) => {
                        if failures == 0 {
                            eprintln!("loadgen: receiver failed: {error}");
                        }
                        failures += 1;
                    }
                    Err(_) => failures += 1,
                }
            }
            let _ = connected.send(connections.len());
            connections
                .into_iter()
                .map(|(stream, partial, first)| Receiver {
                    stream: stream.into_std().expect("a plain socket"),
                    first,
                    partial,
                })
                .collect::<Vec<_>>()
        });
        let result = receive_all(receivers, &shared);
        shared.results.lock().expect("results").push(result);
    })
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

pub fn run(args: &Args) -> serde_json::Value {
    let url = args.url.trim_start_matches("ws://");
    let (address, path) = match url.find('/') {
        Some(at) => (url[..at].to_string(), url[at..].to_string()),
        None => (url.to_string(), "/".to_string()),
    };
    let rooms = (args.scenario == "saturate-rooms").then_some(args.rooms);
    let shared = Arc::new(Shared {
        window_start: AtomicU64::new(0),
        window_end: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        results: Mutex::new(Vec::new()),
    });
    let threads = args.threads.max(1);
    let (connected_tx, connected_rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for thread in 0..threads {
        let users: Vec<usize> = (0..args.clients)
            .filter(|i| i % threads == thread)
            .collect();
        handles.push(receiver_thread(
            address.clone(),
            path.clone(),
            users,
            rooms,
            shared.clone(),
            connected_tx.clone(),
        ));
    }
    let receivers: usize = (0..threads).map(|_| connected_rx.recv().unwrap_or(0)).sum();
    // Receiver i is in room i % rooms (exact when every receiver connected; failures are
    // reported).
    let room_count = rooms.unwrap_or(1);
    let mut members = vec![0u64; room_count];
    for i in 0..receivers {
        members[i % room_count] += 1;
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (sent, expected, behind_us, cpu) = runtime.block_on(async {
        let (driver, _) = connect(&address, &path, "driver")
            .await
            .unwrap_or_else(|error| panic!("driver could not connect: {error}"));
        let (mut driver_read, mut driver_write) = driver.into_split();
        // The driver is authenticated, so broadcasts reach it too: read and drop them.
        tokio::spawn(async move {
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(driver_read.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        // Joins are not acknowledged: give them time to be handled.
        tokio::time::sleep(Duration::from_secs(1)).await;

        let pad = "x".repeat(args.payload);
        let period_us = 1_000_000.0 / args.rate as f64;
        let started = Instant::now();
        let origin = now_us();
        let warmup_us = args.warmup.as_micros() as u64;
        let end_us = warmup_us + args.duration.as_micros() as u64;
        let (mut sent, mut expected, mut behind_us) = (0u64, 0u64, 0u64);
        let mut seq = 0u64;
        let mut cpu_at_start = 0.0;
        let mut batch = Vec::with_capacity(64 * 1024);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let elapsed = started.elapsed().as_micros() as u64;
            if shared.window_start.load(Ordering::Relaxed) == 0 && elapsed >= warmup_us {
                shared.window_start.store(origin + warmup_us, Ordering::Relaxed);
                cpu_at_start = cpu_seconds();
                phase("measure-start");
            }
            if elapsed >= end_us {
                shared.window_end.store(origin + end_us, Ordering::Relaxed);
                phase("measure-end");
                break;
            }
            batch.clear();
            while (seq as f64 * period_us) as u64 <= elapsed {
                let t = origin + (seq as f64 * period_us) as u64;
                let text = match rooms {
                    Some(rooms) => {
                        let room = seq as usize % rooms;
                        if t >= origin + warmup_us && t < origin + end_us {
                            expected += members[room];
                        }
                        format!(
                            r#"{{"event":"bench:room","data":{{"room":"room-{room}","t":{t},"pad":"{pad}"}}}}"#
                        )
                    }
                    None => {
                        if t >= origin + warmup_us && t < origin + end_us {
                            expected += receivers as u64;
                        }
                        format!(r#"{{"event":"bench:broadcast","data":{{"t":{t},"pad":"{pad}"}}}}"#)
                    }
                };
                if t >= origin + warmup_us && t < origin + end_us {
                    sent += 1;
                }
                client_frame(&mut batch, text.as_bytes());
                seq += 1;
            }
            if !batch.is_empty() {
                if driver_write.write_all(&batch).await.is_err() {
                    eprintln!("loadgen: driver connection lost");
                    break;
                }
                let late = (started.elapsed().as_micros() as u64).saturating_sub(elapsed);
                if elapsed >= warmup_us {
                    behind_us = behind_us.max(late);
                }
            }
        }
        let cpu = cpu_seconds() - cpu_at_start;
        // Let what is in flight land.
        tokio::time::sleep(Duration::from_secs(2)).await;
        (sent, expected, behind_us, cpu)
    });
    shared.stop.store(true, Ordering::Relaxed);
    for handle in handles {
        let _ = handle.join();
    }
    let results = std::mem::take(&mut *shared.results.lock().expect("results"));
    let mut latency = histogram();
    let mut first_latency = histogram();
    let (mut received, mut arrivals) = (0, 0);
    for tally in &results {
        received += tally.received;
        arrivals += tally.arrivals;
        latency.add(&tally.latency).ok();
        first_latency.add(&tally.first_latency).ok();
    }
    let measured = args.duration.as_secs_f64();
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    // Deliveries the server skipped are not distinguished from late ones: both are loss.
    let _ = std::io::stdout().flush();
    serde_json::json!({
        "receivers": receivers,
        "failures": args.clients - receivers,
        "rate": args.rate,
        "requests_sent": sent,
        "deliveries_expected": expected,
        "deliveries_received": received,
        "loss": expected.saturating_sub(received),
        "deliveries_per_s": received as f64 / measured,
        "arrivals_per_s": arrivals as f64 / measured,
        "offered_deliveries_per_s": expected as f64 / measured,
        "driver_behind_ms": behind_us as f64 / 1000.0,
        "loadgen_cpu_s": cpu,
        "loadgen_threads": threads,
        "latency": {
            "samples": latency.len(),
            "p50_ms": ms(0.50),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
            "max_ms": latency.max() as f64 / 1000.0,
        },
        "first_recipient_latency": {
            "p50_ms": first_latency.value_at_quantile(0.5) as f64 / 1000.0,
            "p99_ms": first_latency.value_at_quantile(0.99) as f64 / 1000.0,
        },
    })
}
