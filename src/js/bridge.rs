//! The JS end of the dispatcher: one threadsafe function that runs a batch on the JS thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use napi::threadsafe_function::ThreadsafeFunction;
use napi::Status;

use crate::dispatch::JsBridge;

/// `(batch: string) => string`, weak so it never keeps the process alive by itself: the
/// server refs it while listening and unrefs it on shutdown.
pub type DispatchFn = ThreadsafeFunction<String, String, String, Status, false, true>;

pub struct TsfnBridge {
    pub function: Arc<DispatchFn>,
}

impl JsBridge for TsfnBridge {
    fn deliver(
        &self,
        batch: String,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> {
        let function = self.function.clone();
        // `call_async_catch`: a throw in JS becomes an Err here instead of ending the process.
        Box::pin(async move {
            function
                .call_async_catch(batch)
                .await
                .map_err(|error| error.to_string())
        })
    }
}
