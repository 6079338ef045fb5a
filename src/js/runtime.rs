//! The tokio runtime the addon runs on, handed to napi-rs at module load.
//!
//! Socket I/O runs on these workers, JS callbacks on the JS thread. When both share a busy
//! core, a worker woken by every arriving packet preempts the JS thread, handles one message
//! and sleeps again: a context switch pair per message, and batches of one. As SCHED_BATCH
//! threads the workers do not preempt on wake-up; packets accumulate while JS runs and are
//! handed over in larger batches. On an idle core a SCHED_BATCH thread runs at once, so light
//! load sees no added latency. (Measured: benchmark/RESULTS.md, echo.)

use napi::bindgen_prelude::create_custom_tokio_runtime;

#[napi_derive::module_init]
fn init() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ignis-ws-io")
        .on_thread_start(use_batch_scheduling)
        .build()
        .expect("cannot start the tokio runtime");
    create_custom_tokio_runtime(runtime);
}

#[cfg(target_os = "linux")]
fn use_batch_scheduling() {
    if std::env::var_os("IGNIS_NATIVE_WS_NORMAL_SCHEDULING").is_some() {
        return;
    }
    let param = libc::sched_param { sched_priority: 0 };
    // pid 0: the calling thread. Failure only costs the optimisation, so it is ignored.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
    }
}

#[cfg(not(target_os = "linux"))]
fn use_batch_scheduling() {}
