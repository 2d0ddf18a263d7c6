//! Bounded retries for idempotent calls.

use std::future::Future;
use std::time::Duration;

use crate::Transition;
use crate::error::ApiError;

/// How often and how patiently an idempotent call is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first.
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    pub const NONE: RetryPolicy = RetryPolicy {
        attempts: 1,
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
    };

    fn delay(&self, attempt: u32) -> Duration {
        self.base_delay
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_delay)
    }

    /// Runs an idempotent call, retrying transient failures.
    pub(crate) async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut attempt = 0;
        loop {
            match call().await {
                Err(e) if e.is_transient() && attempt + 1 < self.attempts => {
                    tracing::debug!("retrying after transient error: {e}");
                    tokio::time::sleep(self.delay(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Runs a state change towards `state`. A refusal because the VM already is
    /// in `state` is success, and is recognised *before* any retry decision:
    /// the retry of a pause whose first attempt timed out after being applied
    /// must report success, not the second attempt's refusal.
    pub(crate) async fn transition<F, Fut>(
        &self,
        state: &str,
        mut call: F,
    ) -> Result<Transition, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), ApiError>>,
    {
        let mut attempt = 0;
        loop {
            match call().await {
                Ok(()) => return Ok(Transition::Applied),
                Err(e) if e.is_same_state(state) => return Ok(Transition::AlreadyInState),
                Err(e) if e.is_transient() && attempt + 1 < self.attempts => {
                    tracing::debug!("retrying after transient error: {e}");
                    tokio::time::sleep(self.delay(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::VmmError;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        }
    }

    fn timeout() -> ApiError {
        ApiError::Timeout {
            op: "vm.pause".into(),
            after: Duration::from_millis(1),
        }
    }

    fn same_state() -> ApiError {
        ApiError::Vmm {
            op: "vm.pause".into(),
            status: 500,
            error: VmmError::parse(
                br#"["Invalid transition: InvalidStateTransition(Paused, Paused)"]"#,
            ),
        }
    }

    #[tokio::test]
    async fn a_retry_that_meets_the_applied_pause_succeeds() {
        let calls = AtomicU32::new(0);
        let result = fast()
            .transition("Paused", || async {
                // First attempt: applied by the VMM, but the answer was lost.
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(timeout())
                } else {
                    Err(same_state())
                }
            })
            .await;
        assert_eq!(result.unwrap(), Transition::AlreadyInState);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        let calls = AtomicU32::new(0);
        let result = fast()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(timeout())
            })
            .await;
        assert!(matches!(result, Err(ApiError::Timeout { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn refusals_are_not_retried() {
        let calls = AtomicU32::new(0);
        let result = fast()
            .transition("Paused", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ApiError::Vmm {
                    op: "vm.pause".into(),
                    status: 500,
                    error: VmmError::parse(
                        br#"["Invalid transition: InvalidStateTransition(Created, Paused)"]"#,
                    ),
                })
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(0), Duration::from_millis(100));
        assert_eq!(p.delay(1), Duration::from_millis(200));
        assert_eq!(p.delay(5), Duration::from_secs(1));
    }
}
