//! Fault-injection points for the crash tests (`tests/api/crash.rs`), compiled in only with
//! the `fault-injection` feature; without it `point` is an empty inline function.
//!
//! With the feature, a process started with `COURIER_FAULT_POINT=<name>` stops at that point —
//! after writing the name to the file `COURIER_FAULT_MARK` names — so that a test can SIGKILL
//! it there. With `COURIER_FAULT_RESUME=<file>` as well, it stalls there only until that file
//! exists, then goes on (an instance that stalls past its lease), once.

#[cfg(feature = "fault-injection")]
pub async fn point(name: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static RESUMED: AtomicBool = AtomicBool::new(false);
    if std::env::var("COURIER_FAULT_POINT").as_deref() != Ok(name) || RESUMED.load(Ordering::SeqCst)
    {
        return;
    }
    if let Ok(mark) = std::env::var("COURIER_FAULT_MARK") {
        let _ = std::fs::write(mark, name);
    }
    let Ok(resume) = std::env::var("COURIER_FAULT_RESUME") else {
        return std::future::pending::<()>().await;
    };
    while !std::path::Path::new(&resume).exists() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    RESUMED.store(true, Ordering::SeqCst);
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub async fn point(_name: &str) {}
