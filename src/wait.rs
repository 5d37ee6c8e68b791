//! Waiting, with a deadline, for a condition kfsql's background tasks make true (views loaded, pipelines caught up).

use std::time::Duration;

/// Poll `done` every 20 ms until it holds (true) or `timeout` passes (false).
pub async fn until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
