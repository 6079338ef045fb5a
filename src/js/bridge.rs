//! The JS end of the dispatcher: one threadsafe function that runs a batch on the JS thread.

use std::sync::Arc;

use std::cell::RefCell;

use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;

use crate::dispatch::{BatchInJs, JsBridge};
use crate::outbox::Cork;

thread_local! {
    /// Held on the JS thread while it runs a batch: what the batch's callbacks send
    /// synchronously (a `messageHandler` broadcasting, replies) leaves when the batch is done,
    /// every socket's frames in one write.
    static BATCH_CORK: RefCell<Option<Cork>> = const { RefCell::new(None) };
}

/// Called on the JS thread right before a batch runs.
pub fn batch_starting() {
    BATCH_CORK.with(|cork| {
        cork.borrow_mut().get_or_insert_with(Cork::new);
    });
}

/// Called on the JS thread once the batch returned (or threw).
fn batch_done() {
    // Dropped outside the borrow: releasing it writes to sockets.
    let cork = BATCH_CORK.with(|cork| cork.borrow_mut().take());
    drop(cork);
}

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
                // The batch's frames go out before its answer lets the next batch be cut:
                // requests that arrive while they are written join the next batch instead of
                // waiting behind a smaller one cut in the middle of the writing.
                batch_done();
                in_js.answer(answer.map_err(|error| error.to_string()));
                Ok(())
            },
        );
    }
}
