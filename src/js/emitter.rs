//! `NativeEmitter`: the native half of `WebSocketEmitter` (lib/emitter.js): a publisher only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use napi::Result;
use napi_derive::napi;

use super::server::RedisConnection;
use crate::broker::{Broker, BrokerConfig, BrokerEvents, BrokerStatus, Incoming};

/// The emitter subscribes to nothing and reports failures through its promises.
struct Quiet;

impl BrokerEvents for Quiet {
    fn message(&self, _: Incoming) {}
    fn status(&self, _: BrokerStatus, _: Option<&str>) {}
    fn log_error(&self, _: &str) {}
}

#[napi]
pub struct NativeEmitter {
    config: BrokerConfig,
    broker: Mutex<Option<Arc<Broker>>>,
}

#[napi]
impl NativeEmitter {
    #[napi(constructor)]
    pub fn new(connection: RedisConnection) -> Result<Self> {
        let target = connection.into_target().ok_or_else(|| {
            napi::Error::new(
                napi::Status::InvalidArg,
                "[WebSocketEmitter] Invalid redis connection!",
            )
        })?;
        Ok(NativeEmitter {
            config: BrokerConfig {
                target,
                server_id: "emitter".into(),
                subscribe: false,
                probe_interval: Duration::from_secs(3600),
                probe_timeout: Duration::from_secs(3600),
            },
            broker: Mutex::new(None),
        })
    }

    fn broker(&self) -> Option<Arc<Broker>> {
        self.broker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Connects; resolves true once the publisher is up, false after `timeout_ms`.
    #[napi]
    pub async fn configure(&self, timeout_ms: u32) -> bool {
        let broker = {
            let mut slot = self.broker.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| Broker::start(self.config.clone(), Arc::new(Quiet)))
                .clone()
        };
        broker
            .ready(Duration::from_millis(u64::from(timeout_ms)))
            .await
    }

    /// Resolves once Redis accepted the PUBLISH; rejects when it cannot be reached in time.
    #[napi]
    pub async fn publish(&self, channel: String, envelope: String) -> Result<()> {
        let broker = self.broker().ok_or_else(|| {
            napi::Error::new(
                napi::Status::GenericFailure,
                "[WebSocketEmitter] not configured: call configure() first",
            )
        })?;
        broker
            .publish_confirmed(channel, envelope)
            .await
            .map_err(|error| {
                napi::Error::new(
                    napi::Status::GenericFailure,
                    format!("[WebSocketEmitter] {error}"),
                )
            })
    }

    /// Closes the connection; later publishes fail. Calling it twice is fine.
    #[napi]
    pub fn shutdown(&self) {
        if let Some(broker) = self.broker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            broker.shutdown();
        }
    }
}
