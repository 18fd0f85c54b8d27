//! The replay worker: delivers queued writes in order once their upstream can take them.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use http_body_util::BodyExt;

use super::{backoff, now_ms, Outbox, QueueState};
use crate::config::ConflictPolicy;
use crate::proxy::Proxy;
use crate::store::{ItemState, OutboxRecord};

/// Longest idle sleep; enqueue, retry and state changes wake the worker earlier.
const IDLE: Duration = Duration::from_secs(30);
/// How often to look again while a due item's upstream is offline.
const OFFLINE_RECHECK: Duration = Duration::from_millis(500);
/// How much of a refusing answer is kept with a dead letter.
const KEPT_BODY: usize = 16 * 1024;

/// Replays the outbox through the proxy's forwarding path.
pub struct ReplayWorker {
    outbox: Arc<Outbox>,
    proxy: Arc<Proxy>,
}

/// What one attempt decided.
enum Verdict {
    Delivered,
    Retry {
        after: Duration,
        error: String,
    },
    Stop {
        state: ItemState,
        status: u16,
        body: String,
    },
    NeedsAuth {
        status: u16,
    },
}

impl ReplayWorker {
    /// A worker over `outbox`, sending through `proxy`.
    pub fn new(outbox: Arc<Outbox>, proxy: Arc<Proxy>) -> ReplayWorker {
        ReplayWorker { outbox, proxy }
    }

    /// Runs until `stop` resolves (an attempt in flight is finished first).
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let wait = match self.step().await {
                Some(w) => w,
                None => {
                    // Between deliveries of a long queue, a shutdown must still get through.
                    if futures_util::FutureExt::now_or_never(&mut stop).is_some() {
                        return;
                    }
                    continue;
                }
            };
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.outbox.woken() => {}
            }
        }
    }

    /// Attempts the most urgent due item; returns how long to wait when nothing was due.
    async fn step(&self) -> Option<Duration> {
        if self.outbox.state() != QueueState::Running {
            return Some(IDLE);
        }
        // The head of each line: the oldest pending item per ordering key.
        let items = match self.outbox.line_heads() {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox failed");
                return Some(Duration::from_secs(1));
            }
        };
        let heads: Vec<&OutboxRecord> = items.iter().filter(|i| i.state == ItemState::Pending).collect();
        if heads.is_empty() {
            return Some(IDLE);
        }
        let now = now_ms();
        let mut wait = IDLE;
        let mut due: Vec<&OutboxRecord> = Vec::new();
        for h in heads {
            if h.next_try_ms > now {
                wait = wait.min(Duration::from_millis(h.next_try_ms - now));
            } else if !self.proxy.upstream_online_for(h) {
                wait = wait.min(OFFLINE_RECHECK);
            } else {
                due.push(h);
            }
        }
        let Some(item) = due.into_iter().min_by_key(|i| (std::cmp::Reverse(i.priority), i.seq)) else {
            return Some(wait);
        };
        let item = item.clone();
        self.attempt(item).await;
        None
    }

    async fn attempt(&self, mut item: OutboxRecord) {
        let verdict = match self.proxy.replay(&item).await {
            Err(e) => Verdict::Retry {
                after: self.backoff(item.attempts),
                error: e.to_string(),
            },
            Ok(resp) => {
                let status = resp.status();
                let retry_after = backoff::retry_after(resp.headers(), SystemTime::now());
                let body = kept_body(resp.into_body()).await;
                self.judge(&item, status, retry_after, body)
            }
        };
        let was_pending = item.state == ItemState::Pending;
        match verdict {
            Verdict::Delivered => {
                tracing::info!(id = %item.id, method = %item.method, uri = %item.uri, attempts = item.attempts + 1, "queued write delivered");
                if let Err(e) = self.outbox.remove(&item) {
                    // It stays queued and is replayed again with the same key: at-least-once.
                    tracing::error!(id = %item.id, error = %e, "removing a delivered item failed");
                }
                self.proxy.after_replay(&item);
            }
            Verdict::Retry { after, error } => {
                item.attempts += 1;
                item.last_error = Some(error);
                item.next_try_ms = now_ms() + after.as_millis() as u64;
                let s = self.outbox.settings();
                let too_old = now_ms().saturating_sub(item.enqueued_ms) > s.max_age.as_millis() as u64;
                if item.attempts >= s.max_attempts || too_old {
                    tracing::warn!(id = %item.id, attempts = item.attempts, "giving up: dead letter");
                    item.state = ItemState::DeadLetter;
                } else {
                    tracing::debug!(id = %item.id, attempts = item.attempts, ?after, "replay failed; backing off");
                }
                self.save(&item, was_pending);
            }
            Verdict::Stop { state, status, body } => {
                item.attempts += 1;
                item.state = state;
                item.response = Some((status, body));
                item.last_error = Some(format!("upstream answered {status}"));
                tracing::warn!(id = %item.id, status, state = state.as_str(), "queued write stopped");
                self.save(&item, was_pending);
            }
            Verdict::NeedsAuth { status } => {
                item.last_error = Some(format!("upstream answered {status}: waiting for newer credentials"));
                self.save(&item, was_pending);
                self.outbox.set_state(QueueState::NeedsAuth {
                    partition: item.partition.clone(),
                });
            }
        }
    }

    fn save(&self, item: &OutboxRecord, was_pending: bool) {
        if let Err(e) = self.outbox.update(item, was_pending) {
            tracing::error!(id = %item.id, error = %e, "updating a queued item failed");
        }
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let s = self.outbox.settings();
        backoff::delay(attempts, s.backoff_base, s.backoff_cap, &mut rand::rng())
    }

    fn judge(&self, item: &OutboxRecord, status: StatusCode, retry_after: Option<Duration>, body: String) -> Verdict {
        let code = status.as_u16();
        if status.is_success() || status.is_redirection() {
            return Verdict::Delivered;
        }
        match code {
            409 | 412 => match self.proxy.conflict_policy(item) {
                ConflictPolicy::ServerWins => Verdict::Stop {
                    state: ItemState::Overridden,
                    status: code,
                    body,
                },
                ConflictPolicy::DeadLetter => Verdict::Stop {
                    state: ItemState::DeadLetter,
                    status: code,
                    body,
                },
                ConflictPolicy::Retry => Verdict::Retry {
                    after: self.backoff(item.attempts),
                    error: format!("conflict {code}"),
                },
            },
            401 | 403 => Verdict::NeedsAuth { status: code },
            408 | 425 | 429 => Verdict::Retry {
                after: retry_after.unwrap_or_else(|| self.backoff(item.attempts)),
                error: format!("upstream answered {code}"),
            },
            c if c >= 500 => Verdict::Retry {
                after: retry_after.unwrap_or_else(|| self.backoff(item.attempts)),
                error: format!("upstream answered {code}"),
            },
            _ => Verdict::Stop {
                state: ItemState::DeadLetter,
                status: code,
                body,
            },
        }
    }
}

/// The start of an answer's body, as text, for the record.
async fn kept_body(mut body: crate::body::ProxyBody) -> String {
    let mut kept = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(d) = frame.data_ref() {
            let room = KEPT_BODY.saturating_sub(kept.len());
            kept.extend_from_slice(&d[..d.len().min(room)]);
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}
