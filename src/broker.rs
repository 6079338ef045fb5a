//! The Redis bridge: publishes this instance's cross-instance messages and delivers what
//! other instances (TypeScript or native) and emitters publish.
//!
//! Two connections, as the TypeScript helper has: a publisher and a subscriber. Both
//! reconnect by themselves with backoff; the subscriber restores `ws:broadcast` and the three
//! patterns on every reconnect. A probe published to this instance's own client channel must
//! come back through the subscription within `probe_timeout`: a subscription that is
//! connected but no longer receiving is detected and rebuilt. Outages and recoveries are
//! logged once each and reported as status changes.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};

use crate::outbox::Cork;

pub const CHANNEL_BROADCAST: &str = "ws:broadcast";
pub const PATTERNS: [&str; 3] = ["ws:room:*", "ws:client:*", "ws:user:*"];
const PROBE_EVENT: &str = "__ignis_native_ws_probe__";

/// Where Redis is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub nodes: RedisNodes,
    /// TLS settings beyond what a `rediss://` URL says by itself.
    pub tls: Option<RedisTls>,
}

/// One server, or the seed nodes of a cluster, as `redis://` or `rediss://` URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisNodes {
    Single(String),
    Cluster(Vec<String>),
}

/// TLS as ioredis' `tls` option describes it (the URLs are `rediss://` then).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// PEM certificates to trust instead of the bundled Mozilla roots.
    pub ca: Option<String>,
    /// PEM client certificate and key, for servers that require them.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// `rejectUnauthorized: false`: the server's certificate is not checked at all.
    pub insecure: bool,
}

impl RedisTls {
    fn certificates(&self) -> Option<redis::TlsCertificates> {
        let client_tls = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: cert.clone().into_bytes(),
                client_key: key.clone().into_bytes(),
            }),
            _ => None,
        };
        if client_tls.is_none() && self.ca.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls,
            root_cert: self.ca.clone().map(String::into_bytes),
        })
    }
}

impl RedisTarget {
    /// The URLs to open a subscriber connection with, one at a time until one answers.
    fn node_urls(&self) -> &[String] {
        match &self.nodes {
            RedisNodes::Single(url) => std::slice::from_ref(url),
            // In a cluster every node relays every PUBLISH: any one node will do.
            RedisNodes::Cluster(nodes) => nodes.as_slice(),
        }
    }

    fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        let Some(tls) = &self.tls else {
            return redis::Client::open(url);
        };
        // The redis crate reads "no certificate checks" from the URL's fragment.
        let url = if tls.insecure && !url.contains('#') {
            format!("{url}#insecure")
        } else {
            url.to_string()
        };
        match tls.certificates() {
            Some(certificates) => redis::Client::build_with_tls(url.as_str(), certificates),
            None => redis::Client::open(url.as_str()),
        }
    }

    fn cluster_client(
        &self,
        nodes: &[String],
    ) -> redis::RedisResult<redis::cluster::ClusterClient> {
        let mut builder = redis::cluster::ClusterClient::builder(nodes.to_vec());
        if let Some(tls) = &self.tls {
            if let Some(certificates) = tls.certificates() {
                builder = builder.certs(certificates);
            }
            builder = builder.tls(if tls.insecure {
                redis::TlsMode::Insecure
            } else {
                redis::TlsMode::Secure
            });
        }
        builder.build()
    }
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub target: RedisTarget,
    pub server_id: String,
    /// Subscribe (server) or only publish (emitter).
    pub subscribe: bool,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerStatus {
    Connecting,
    Ready,
    Reconnecting,
    Closed,
}

impl BrokerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerStatus::Connecting => "connecting",
            BrokerStatus::Ready => "ready",
            BrokerStatus::Reconnecting => "reconnecting",
            BrokerStatus::Closed => "closed",
        }
    }
}

/// A message from another instance, ready for local delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Broadcast {
        frame: String,
        exclude: Vec<String>,
    },
    Room {
        room: String,
        frame: String,
        exclude: Vec<String>,
    },
    Client {
        client_id: String,
        frame: String,
    },
    User {
        user_id: String,
        frame: String,
    },
    /// Our own message or probe, or a type this version does not know: nothing to do.
    Ignored,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "serverId", borrow)]
    server_id: Cow<'a, str>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    target: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: &'a RawValue,
    /// `None` only when the key is absent: `"data": null` must stay `null`.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    exclude: Option<Vec<String>>,
}

fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// Reads an `IRedisSocketMessage`. `Err` names what is wrong with a malformed one.
///
/// The client frame reuses the envelope's own `event` and `data` JSON: envelopes are made
/// by `JSON.stringify`, whose output re-parses and re-stringifies to the same bytes, so
/// clients receive exactly what the TypeScript helper would send them.
pub fn parse_envelope(payload: &[u8], own_server_id: &str) -> Result<Incoming, &'static str> {
    let text = std::str::from_utf8(payload).map_err(|_| "not UTF-8")?;
    let envelope: Envelope<'_> =
        serde_json::from_str(text).map_err(|_| "not an envelope object")?;
    if !envelope.event.get().starts_with('"') {
        return Err("event is not a string");
    }
    if envelope.server_id == own_server_id {
        return Ok(Incoming::Ignored);
    }
    if envelope.event.get() == format!("\"{PROBE_EVENT}\"") {
        return Ok(Incoming::Ignored);
    }
    let frame = match envelope.data {
        Some(data) => format!(
            r#"{{"event":{},"data":{}}}"#,
            envelope.event.get(),
            data.get()
        ),
        None => format!(r#"{{"event":{}}}"#, envelope.event.get()),
    };
    let exclude = envelope.exclude.unwrap_or_default();
    let target = envelope.target.map(Cow::into_owned);
    Ok(match (envelope.kind.as_deref(), target) {
        (Some("broadcast"), _) => Incoming::Broadcast { frame, exclude },
        (Some("room"), Some(room)) => Incoming::Room {
            room,
            frame,
            exclude,
        },
        (Some("client"), Some(client_id)) => Incoming::Client { client_id, frame },
        (Some("user"), Some(user_id)) => Incoming::User { user_id, frame },
        // The TypeScript helper ignores these too (a targeted type without target, or an
        // unknown type).
        _ => Incoming::Ignored,
    })
}

/// The channel a probe goes to: one only this instance listens for by id.
fn probe_channel(server_id: &str) -> String {
    format!("ws:client:__probe__{server_id}")
}

fn probe_envelope(server_id: &str, sequence: u64) -> String {
    // A valid envelope, so other instances (of either implementation) drop it quietly: it
    // targets a client id nobody has.
    format!(
        r#"{{"serverId":{},"type":"client","target":{},"event":"{PROBE_EVENT}","data":{sequence}}}"#,
        crate::protocol::json_string(server_id),
        crate::protocol::json_string(&format!("__probe__{server_id}"))
    )
}

type PublishReply = oneshot::Sender<Result<(), String>>;

struct Publish {
    channel: String,
    payload: String,
    reply: Option<PublishReply>,
}

/// Callbacks into the owner (the server, or the emitter's JS wrapper).
pub trait BrokerEvents: Send + Sync + 'static {
    fn message(&self, incoming: Incoming);
    fn status(&self, status: BrokerStatus, detail: Option<&str>);
    fn log_error(&self, text: &str);
}

pub struct Broker {
    config: BrokerConfig,
    publish: mpsc::UnboundedSender<Publish>,
    publisher_ready: watch::Receiver<bool>,
    subscriber_ready: watch::Receiver<bool>,
    status: Mutex<BrokerStatus>,
    stop: watch::Sender<bool>,
    last_probe_seen: AtomicU64,
    connect_failure_logged: AtomicBool,
    events: Arc<dyn BrokerEvents>,
}

enum Connection {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Connection {
    async fn open(target: &RedisTarget) -> redis::RedisResult<Connection> {
        Ok(match &target.nodes {
            RedisNodes::Single(url) => {
                let client = target.client(url)?;
                Connection::Single(client.get_multiplexed_async_connection().await?)
            }
            RedisNodes::Cluster(nodes) => {
                let client = target.cluster_client(nodes)?;
                Connection::Cluster(client.get_async_connection().await?)
            }
        })
    }

    async fn publish(&mut self, channel: &str, payload: &str) -> redis::RedisResult<()> {
        let mut command = redis::cmd("PUBLISH");
        command.arg(channel).arg(payload);
        match self {
            Connection::Single(connection) => {
                command.query_async::<i64>(connection).await.map(drop)
            }
            Connection::Cluster(connection) => {
                command.query_async::<i64>(connection).await.map(drop)
            }
        }
    }
}

/// Redis messages already received are delivered together up to this many.
const MESSAGES_PER_BATCH: usize = 256;

const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A PUBLISH (of the emitter) that Redis does not accept in this time is reported as failed.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

impl Broker {
    /// Starts the publisher (and subscriber) tasks on the current runtime.
    pub fn start(config: BrokerConfig, events: Arc<dyn BrokerEvents>) -> Arc<Broker> {
        let (publish, publish_rx) = mpsc::unbounded_channel();
        let (publisher_ready_tx, publisher_ready) = watch::channel(false);
        let (subscriber_ready_tx, subscriber_ready) = watch::channel(!config.subscribe);
        let (stop, _) = watch::channel(false);
        let broker = Arc::new(Broker {
            config,
            publish,
            publisher_ready,
            subscriber_ready,
            status: Mutex::new(BrokerStatus::Connecting),
            stop,
            last_probe_seen: AtomicU64::new(0),
            connect_failure_logged: AtomicBool::new(false),
            events,
        });
        tokio::spawn(broker.clone().run_publisher(publish_rx, publisher_ready_tx));
        if broker.config.subscribe {
            tokio::spawn(broker.clone().run_subscriber(subscriber_ready_tx));
        }
        broker
    }

    pub fn status(&self) -> BrokerStatus {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a status and reports changes (once per change, so an outage is one line).
    fn set_status(&self, status: BrokerStatus, detail: Option<&str>) {
        let mut current = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if *current == status || *current == BrokerStatus::Closed {
            return;
        }
        *current = status;
        drop(current);
        self.events.status(status, detail);
    }

    fn update_status(&self) {
        let ready = *self.publisher_ready.borrow() && *self.subscriber_ready.borrow();
        if ready {
            self.set_status(BrokerStatus::Ready, None);
        }
    }

    /// Waits until both connections are up (and subscribed), or `timeout`.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let mut publisher = self.publisher_ready.clone();
        let mut subscriber = self.subscriber_ready.clone();
        tokio::time::timeout(timeout, async {
            let _ = publisher.wait_for(|ready| *ready).await;
            let _ = subscriber.wait_for(|ready| *ready).await;
        })
        .await
        .is_ok()
    }

    /// Fire and forget: a failure is logged by the publisher, once per outage.
    pub fn publish(&self, channel: String, payload: String) {
        let _ = self.publish.send(Publish {
            channel,
            payload,
            reply: None,
        });
    }

    /// Resolves when Redis accepted the PUBLISH; fails when it cannot be reached in time.
    pub async fn publish_confirmed(&self, channel: String, payload: String) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.publish
            .send(Publish {
                channel,
                payload,
                reply: Some(reply),
            })
            .map_err(|_| "the Redis publisher is shut down".to_string())?;
        match tokio::time::timeout(PUBLISH_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the Redis publisher is shut down".to_string()),
            Err(_) => Err(format!(
                "Redis did not accept the PUBLISH within {} ms",
                PUBLISH_TIMEOUT.as_millis()
            )),
        }
    }

    pub fn shutdown(&self) {
        self.set_status(BrokerStatus::Closed, None);
        let _ = self.stop.send(true);
    }

    async fn run_publisher(
        self: Arc<Self>,
        mut requests: mpsc::UnboundedReceiver<Publish>,
        ready: watch::Sender<bool>,
    ) {
        let mut stop = self.stop.subscribe();
        let mut connection: Option<Connection> = None;
        let mut backoff = BACKOFF_START;
        let mut failing_since_logged = false;
        loop {
            if connection.is_none() {
                match tokio::select! {
                    opened = Connection::open(&self.config.target) => Some(opened),
                    _ = stop.wait_for(|stopped| *stopped) => None,
                } {
                    None => return,
                    Some(Ok(opened)) => {
                        connection = Some(opened);
                        backoff = BACKOFF_START;
                        failing_since_logged = false;
                        let _ = ready.send(true);
                        self.update_status();
                    }
                    Some(Err(error)) => {
                        let _ = ready.send(false);
                        self.connection_lost(&format!("publisher: {error}"));
                        // While Redis is away, fail waiting publishes instead of queueing them.
                        while let Ok(request) = requests.try_recv() {
                            self.publish_failed(
                                request,
                                &error.to_string(),
                                &mut failing_since_logged,
                            );
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.wait_for(|stopped| *stopped) => return,
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            let request = tokio::select! {
                request = requests.recv() => match request {
                    Some(request) => request,
                    None => return,
                },
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            let live = connection.as_mut().expect("connected above");
            match live.publish(&request.channel, &request.payload).await {
                Ok(()) => {
                    if let Some(reply) = request.reply {
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(error) => {
                    connection = None;
                    let _ = ready.send(false);
                    self.connection_lost(&format!("publisher: {error}"));
                    self.publish_failed(request, &error.to_string(), &mut failing_since_logged);
                }
            }
        }
    }

    fn publish_failed(&self, request: Publish, error: &str, logged: &mut bool) {
        if !*logged {
            *logged = true;
            self.events.log_error(&format!(
                "Redis publish failed; cross-instance messages are dropped until Redis is back | error: {error}"
            ));
        }
        if let Some(reply) = request.reply {
            let _ = reply.send(Err(format!("Redis is unreachable: {error}")));
        }
    }

    /// Hands one message from another instance to the server.
    fn deliver(&self, message: &redis::Msg) {
        match parse_envelope(message.get_payload_bytes(), &self.config.server_id) {
            Ok(incoming) => self.events.message(incoming),
            Err(problem) => self.events.log_error(&format!(
                "Invalid Redis message dropped | channel: {} | reason: {problem}",
                message.get_channel_name()
            )),
        }
    }

    fn connection_lost(&self, detail: &str) {
        match self.status() {
            BrokerStatus::Ready => self.set_status(BrokerStatus::Reconnecting, Some(detail)),
            // Never connected yet: say why once (a wrong port, password or certificate would
            // otherwise only show as "did not become ready").
            BrokerStatus::Connecting
                if !self.connect_failure_logged.swap(true, Ordering::Relaxed) =>
            {
                self.events.log_error(&format!(
                    "Redis connection failed; retrying | error: {detail}"
                ))
            }
            _ => {}
        }
    }

    async fn open_pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let target = &self.config.target;
        let mut last_error = None;
        for url in target.node_urls() {
            match target.client(url) {
                Ok(client) => match client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        pubsub.subscribe(CHANNEL_BROADCAST).await?;
                        for pattern in PATTERNS {
                            pubsub.psubscribe(pattern).await?;
                        }
                        return Ok(pubsub);
                    }
                    Err(error) => last_error = Some(error),
                },
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "no Redis node configured"))
        }))
    }

    async fn run_subscriber(self: Arc<Self>, ready: watch::Sender<bool>) {
        let mut stop = self.stop.subscribe();
        let mut backoff = BACKOFF_START;
        let probe_channel = probe_channel(&self.config.server_id);
        let mut sequence = 0u64;
        loop {
            let opened = tokio::select! {
                opened = self.open_pubsub() => opened,
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            let pubsub = match opened {
                Ok(pubsub) => pubsub,
                Err(error) => {
                    let _ = ready.send(false);
                    self.connection_lost(&format!("subscriber: {error}"));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|stopped| *stopped) => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_START;
            let _ = ready.send(true);
            self.update_status();
            let mut messages = pubsub.into_on_message();
            let mut probe = tokio::time::interval(self.config.probe_interval);
            probe.tick().await;
            let mut awaiting: Option<(u64, tokio::time::Instant)> = None;
            let mut ended = false;
            let reason = loop {
                if ended {
                    break "subscription connection closed".to_string();
                }
                tokio::select! {
                    message = messages.next() => {
                        let Some(message) = message else {
                            break "subscription connection closed".to_string();
                        };
                        // Messages that arrived together are delivered as one batch, so the
                        // frames they produce for the same socket leave in one write.
                        let _cork = Cork::new();
                        let mut next = Some(message);
                        let mut taken = 0;
                        while let Some(message) = next.take() {
                            if message.get_channel_name() == probe_channel {
                                self.last_probe_seen.store(sequence, Ordering::Relaxed);
                                awaiting = None;
                            } else {
                                self.deliver(&message);
                            }
                            taken += 1;
                            if taken < MESSAGES_PER_BATCH {
                                match messages.next().now_or_never() {
                                    Some(Some(message)) => next = Some(message),
                                    Some(None) => ended = true,
                                    None => {}
                                }
                            }
                        }
                    }
                    _ = probe.tick() => {
                        if let Some((_, sent_at)) = awaiting {
                            if sent_at.elapsed() >= self.config.probe_timeout {
                                break "subscription stopped receiving (probe not echoed)".to_string();
                            }
                            continue;
                        }
                        sequence += 1;
                        awaiting = Some((sequence, tokio::time::Instant::now()));
                        self.publish(probe_channel.clone(), probe_envelope(&self.config.server_id, sequence));
                    }
                    _ = stop.wait_for(|stopped| *stopped) => return,
                }
            };
            let _ = ready.send(false);
            self.connection_lost(&format!("subscriber: {reason}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_envelopes_of_every_type() {
        let parse = |text: &str| parse_envelope(text.as_bytes(), "me");
        assert_eq!(
            parse(
                r#"{"serverId":"other","type":"room","target":"lobby","event":"chat","data":{"a":1},"exclude":["x"]}"#
            ),
            Ok(Incoming::Room {
                room: "lobby".into(),
                frame: r#"{"event":"chat","data":{"a":1}}"#.into(),
                exclude: vec!["x".into()],
            })
        );
        assert_eq!(
            parse(r#"{"serverId":"emitter","type":"broadcast","event":"news","data":[1]}"#),
            Ok(Incoming::Broadcast {
                frame: r#"{"event":"news","data":[1]}"#.into(),
                exclude: vec![],
            })
        );
        assert_eq!(
            parse(r#"{"serverId":"o","type":"client","target":"c1","event":"e"}"#),
            Ok(Incoming::Client {
                client_id: "c1".into(),
                frame: r#"{"event":"e"}"#.into(),
            })
        );
        assert_eq!(
            parse(r#"{"serverId":"o","type":"user","target":"u1","event":"e","data":null}"#),
            Ok(Incoming::User {
                user_id: "u1".into(),
                frame: r#"{"event":"e","data":null}"#.into(),
            })
        );
    }

    #[test]
    fn ignores_own_messages_probes_and_untargeted_ones() {
        let parse = |text: &str| parse_envelope(text.as_bytes(), "me");
        assert_eq!(
            parse(r#"{"serverId":"me","type":"broadcast","event":"x","data":1}"#),
            Ok(Incoming::Ignored)
        );
        assert_eq!(parse(&probe_envelope("other", 3)), Ok(Incoming::Ignored));
        assert_eq!(
            parse(r#"{"serverId":"o","type":"room","event":"x"}"#),
            Ok(Incoming::Ignored)
        );
        assert_eq!(
            parse(r#"{"serverId":"o","type":"nope","target":"t","event":"x"}"#),
            Ok(Incoming::Ignored)
        );
    }

    #[test]
    fn rejects_malformed_envelopes() {
        let parse = |text: &[u8]| parse_envelope(text, "me");
        assert!(parse(b"not json").is_err());
        assert!(parse(b"[1]").is_err());
        assert!(parse(br#"{"type":"broadcast","event":"x"}"#).is_err());
        assert!(parse(br#"{"serverId":"o","type":"broadcast","event":5}"#).is_err());
        assert!(parse(br#"{"serverId":1,"type":"broadcast","event":"x"}"#).is_err());
        assert!(parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn the_probe_is_a_valid_envelope_for_other_instances() {
        let probe = probe_envelope("srv", 7);
        let value: serde_json::Value = serde_json::from_str(&probe).unwrap();
        assert_eq!(value["serverId"], "srv");
        assert_eq!(value["type"], "client");
        assert_eq!(value["target"], "__probe__srv");
        assert_eq!(probe_channel("srv"), "ws:client:__probe__srv");
    }
}
