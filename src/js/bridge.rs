//! The JS end of the dispatcher: one threadsafe function that runs a batch on the JS thread.

use std::sync::Arc;

use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;

use crate::dispatch::{BatchInJs, JsBridge};

/// `(batch: string) => string`, weak so it never keeps the process alive by itself: the
/// server refs it while listening and unrefs it on shutdown.
pub type DispatchFn = ThreadsafeFunction<String, String, String, Status, false, true>;

pub struct TsfnBridge {
    pub function: Arc<DispatchFn>,
}

impl JsBridge for TsfnBridge {
    fn deliver(&self, batch: String, in_js: BatchInJs) {
        // The answer is acted on right there on the JS thread. A throw in JS arrives as an
        // Err instead of ending the process. If the call cannot be queued (the environment
        // is shutting down), napi-rs drops the closure and with it `in_js`, which releases
        // the batch.
        self.function.call_with_return_value(
            batch,
            ThreadsafeFunctionCallMode::NonBlocking,
            move |answer, _env| {
                in_js.answer(answer.map_err(|error| error.to_string()));
                Ok(())
            },
        );
    }
}
