//! Fault-injection points for the crash tests (`tests/api/crash.rs`), compiled in only with
//! the `fault-injection` feature; without it `point` is an empty inline function.
//!
//! With the feature, a process started with `COURIER_FAULT_POINT=<name>` stops for good at
//! that point — after writing the name to the file `COURIER_FAULT_MARK` names — so that a test
//! can SIGKILL it there.

#[cfg(feature = "fault-injection")]
pub async fn point(name: &str) {
    if std::env::var("COURIER_FAULT_POINT").as_deref() == Ok(name) {
        if let Ok(mark) = std::env::var("COURIER_FAULT_MARK") {
            let _ = std::fs::write(mark, name);
        }
        std::future::pending::<()>().await;
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub async fn point(_name: &str) {}
