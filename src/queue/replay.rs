//! The replay worker: delivers queued writes in order once their upstream can take them.
//!
//! It knows nothing of routes, upstream clients or the cache: it holds a [`Delivery`] (the proxy's
//! replay adapter) that turns a record into an upstream exchange and says what the record's route wants.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;

use super::{backoff, Outbox, QueueState};
use super::{ItemState, OutboxRecord};
use crate::body::ProxyBody;
use crate::clock::now_ms;
use crate::routes::ConflictPolicy;

/// Longest idle sleep; enqueue, retry and state changes wake the worker earlier.
const IDLE: Duration = Duration::from_secs(30);
/// How often to look again while a due item's upstream is offline.
const OFFLINE_RECHECK: Duration = Duration::from_millis(500);
/// How much of a refusing answer is kept with a dead letter.
const KEPT_BODY: usize = 16 * 1024;
/// First and longest wait before writing again what the store did not take (disk full).
const BOOKS_FIRST: Duration = Duration::from_millis(500);
const BOOKS_CAP: Duration = Duration::from_secs(30);

/// Why a queued record was not answered by its upstream.
#[derive(Debug)]
pub enum SendError {
    /// The exchange failed (unreachable, timeout, broken): retried with backoff.
    Failed(String),
    /// Something other than the backend answered (a captive portal): retried once the upstream is
    /// reachable again, without counting as an attempt (a long hotel login must not make a dead letter).
    NotBackend(String),
    /// The record cannot be turned into a request (its method or target does not parse): it becomes a
    /// dead letter with this reason, never a guess.
    Invalid(String),
}

/// What the worker needs from the rest of Outpost to deliver a record.
pub trait Delivery: Send + Sync + 'static {
    /// Whether the record's upstream is reachable now.
    fn online(&self, item: &OutboxRecord) -> bool;
    /// Sends the record to its upstream (with the newest credentials known for its partition).
    fn send(&self, item: &OutboxRecord) -> impl Future<Output = Result<http::Response<ProxyBody>, SendError>> + Send;
    /// What the record's route does on a 409/412.
    fn conflict_policy(&self, item: &OutboxRecord) -> ConflictPolicy;
    /// The record was delivered: invalidate what it changed.
    fn delivered(&self, item: &OutboxRecord);
}

/// Replays the outbox through a [`Delivery`].
pub struct ReplayWorker<D> {
    outbox: Arc<Outbox>,
    delivery: Arc<D>,
    /// Outcomes the store did not take (disk full, I/O error). They are kept here and written again
    /// with backoff, and nothing is sent while any is outstanding: a delivered write whose removal
    /// failed is never sent again by this process (after a restart it would be, with the same
    /// Idempotency-Key), and a failed retry keeps its backoff even though the store lost it.
    unsettled: std::sync::Mutex<Unsettled>,
}

#[derive(Default)]
struct Unsettled {
    books: Vec<Book>,
    failures: u32,
    next: Option<tokio::time::Instant>,
}

/// One outcome to write.
enum Book {
    /// Delivered: remove.
    Remove(OutboxRecord),
    /// Retry later, stopped or dead letter: rewrite (was it pending before).
    Update(OutboxRecord, bool),
}

impl Book {
    fn seq(&self) -> u64 {
        match self {
            Book::Remove(i) | Book::Update(i, _) => i.seq,
        }
    }
}

/// What one attempt decided.
enum Verdict {
    Delivered {
        status: u16,
    },
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
    Invalid {
        reason: String,
    },
}

impl<D: Delivery> ReplayWorker<D> {
    /// A worker over `outbox`, sending through `delivery`.
    pub fn new(outbox: Arc<Outbox>, delivery: Arc<D>) -> ReplayWorker<D> {
        ReplayWorker {
            outbox,
            delivery,
            unsettled: std::sync::Mutex::new(Unsettled::default()),
        }
    }

    /// Runs until `stop` resolves (an attempt in flight is finished first).
    pub async fn run(self, stop: impl Future<Output = ()>) {
        /// Says the worker stopped however it stops (a panic included).
        struct Running(Arc<Outbox>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.set_replay_running(false);
            }
        }
        self.outbox.set_replay_running(true);
        let _running = Running(self.outbox.clone());
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
        if let Some(wait) = self.settle() {
            return Some(wait);
        }
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
        let heads: Vec<&OutboxRecord> = items
            .iter()
            .filter(|i| i.state == ItemState::Pending && !self.outbox.is_waiting(&i.partition))
            .collect();
        if heads.is_empty() {
            return Some(IDLE);
        }
        let now = now_ms();
        let mut wait = IDLE;
        let mut due: Vec<&OutboxRecord> = Vec::new();
        for h in heads {
            if h.next_try_ms > now {
                wait = wait.min(Duration::from_millis(h.next_try_ms - now));
            } else if !self.delivery.online(h) {
                wait = wait.min(OFFLINE_RECHECK);
            } else {
                due.push(h);
            }
        }
        let Some(item) = due.into_iter().min_by_key(|i| (std::cmp::Reverse(i.priority), i.seq)) else {
            return Some(wait);
        };
        // Marked in flight (a newer write to its target cannot take its place while it is sent), and
        // read again: it may have been superseded since the heads were read.
        let seq = item.seq;
        let item = match self.outbox.begin_send(seq) {
            Ok(Some(item)) => item,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox failed");
                return Some(Duration::from_secs(1));
            }
        };
        self.attempt(item).await;
        // An outcome the store did not take yet keeps the item in flight until it is written.
        if !self.unsettled().books.iter().any(|b| b.seq() == seq) {
            self.outbox.end_send(seq);
        }
        None
    }

    async fn attempt(&self, mut item: OutboxRecord) {
        let sent = self.delivery.send(&item).await;
        let not_backend = matches!(sent, Err(SendError::NotBackend(_)));
        let verdict = match sent {
            Err(SendError::Failed(error)) => Verdict::Retry {
                after: self.backoff(item.attempts),
                error,
            },
            Err(SendError::Invalid(reason)) => Verdict::Invalid { reason },
            Err(SendError::NotBackend(error)) => Verdict::Retry {
                after: self.backoff(item.attempts),
                error,
            },
            Ok(resp) => {
                let status = resp.status();
                let retry_after = backoff::retry_after(resp.headers(), crate::clock::now());
                let body = kept_body(resp.into_body()).await;
                self.judge(&item, status, retry_after, body)
            }
        };
        let was_pending = item.state == ItemState::Pending;
        match verdict {
            Verdict::Delivered {
                status: status_of_delivery,
            } => {
                tracing::info!(id = %item.id, method = %item.method, uri = %item.uri, attempts = item.attempts + 1, "queued write delivered");
                self.outbox.count_replay("delivered");
                if let Err(e) = self.outbox.remove(&item) {
                    tracing::error!(id = %item.id, error = %e, "removing a delivered item failed; replay holds back until it is removed");
                    self.hold(Book::Remove(item.clone()));
                }
                self.outbox.emit("delivered", &item, Some(status_of_delivery));
                self.delivery.delivered(&item);
            }
            Verdict::Retry { after, error } => {
                if !not_backend {
                    item.attempts += 1;
                }
                item.last_error = Some(error);
                item.next_try_ms = now_ms() + after.as_millis() as u64;
                let s = self.outbox.settings();
                let too_old = now_ms().saturating_sub(item.enqueued_ms) > s.max_age.as_millis() as u64;
                if item.attempts >= s.max_attempts || too_old {
                    tracing::warn!(id = %item.id, attempts = item.attempts, "giving up: dead letter");
                    item.state = ItemState::DeadLetter;
                    self.outbox.count_replay("dead_letter");
                } else {
                    self.outbox
                        .count_replay(if not_backend { "not_backend" } else { "retry" });
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
                self.outbox.count_replay(match (state, status) {
                    (ItemState::Overridden, _) => "overridden",
                    (_, 409 | 412) => "conflict",
                    _ => "dead_letter",
                });
                self.save(&item, was_pending);
            }
            Verdict::Invalid { reason } => {
                tracing::error!(id = %item.id, %reason, "queued write cannot be sent: dead letter");
                self.outbox.count_replay("dead_letter");
                item.attempts += 1;
                item.state = ItemState::DeadLetter;
                item.last_error = Some(format!("cannot be sent: {reason}"));
                self.save(&item, was_pending);
            }
            Verdict::NeedsAuth { status } => {
                self.outbox.count_replay("needs_auth");
                item.last_error = Some(format!("upstream answered {status}: waiting for newer credentials"));
                self.save(&item, was_pending);
                // Only this user waits; everyone else's writes go on.
                self.outbox.wait_for_credentials(&item.partition);
            }
        }
    }

    fn save(&self, item: &OutboxRecord, was_pending: bool) {
        if let Err(e) = self.outbox.update(item, was_pending) {
            tracing::error!(id = %item.id, error = %e, "updating a queued item failed; replay holds back until it is written");
            self.hold(Book::Update(item.clone(), was_pending));
        }
    }

    fn unsettled(&self) -> std::sync::MutexGuard<'_, Unsettled> {
        self.unsettled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps an outcome the store did not take, to be written again after a backoff.
    fn hold(&self, book: Book) {
        let mut u = self.unsettled();
        u.books.push(book);
        if u.next.is_none() {
            u.next = Some(tokio::time::Instant::now() + BOOKS_FIRST);
        }
    }

    /// Writes held outcomes once due; `Some(wait)` while any is still outstanding (nothing is sent).
    fn settle(&self) -> Option<Duration> {
        let mut u = self.unsettled();
        let next = u.next?;
        let now = tokio::time::Instant::now();
        if next > now {
            return Some(next - now);
        }
        let books = std::mem::take(&mut u.books);
        let total = books.len();
        for book in books {
            let written = match &book {
                Book::Remove(item) => self.outbox.remove(item),
                Book::Update(item, was_pending) => self.outbox.update(item, *was_pending),
            };
            if written.is_err() {
                u.books.push(book);
            } else {
                self.outbox.end_send(book.seq());
            }
        }
        if u.books.is_empty() {
            tracing::warn!(
                outcomes = total,
                failures = u.failures,
                "held replay outcomes written; replay goes on"
            );
            *u = Unsettled::default();
            return None;
        }
        u.failures += 1;
        let wait = BOOKS_FIRST.saturating_mul(1 << u.failures.min(16)).min(BOOKS_CAP);
        u.next = Some(now + wait);
        tracing::debug!(
            outstanding = u.books.len(),
            ?wait,
            "the store still does not take replay outcomes"
        );
        Some(wait)
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let s = self.outbox.settings();
        backoff::delay(attempts, s.backoff_base, s.backoff_cap, &mut rand::rng())
    }

    fn judge(&self, item: &OutboxRecord, status: StatusCode, retry_after: Option<Duration>, body: String) -> Verdict {
        let code = status.as_u16();
        if status.is_success() || status.is_redirection() {
            return Verdict::Delivered { status: code };
        }
        // A DELETE of something already gone asked for the state the server is in (a DELETE that
        // superseded the PUT creating the resource gets exactly this answer).
        if item.method == "DELETE" && matches!(code, 404 | 410) {
            return Verdict::Delivered { status: code };
        }
        match code {
            409 | 412 => match self.delivery.conflict_policy(item) {
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
            // A write without credentials cannot get newer ones: it stops, with the answer kept.
            401 | 403 if item.partition == crate::cache::key::ANONYMOUS => Verdict::Stop {
                state: ItemState::DeadLetter,
                status: code,
                body,
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
async fn kept_body(mut body: ProxyBody) -> String {
    let mut kept = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(d) = frame.data_ref() {
            let room = KEPT_BODY.saturating_sub(kept.len());
            kept.extend_from_slice(&d[..d.len().min(room)]);
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config::QueueSettings;
    use crate::store::Store;

    /// A delivery whose upstream always fails (or whose records never parse), recording when it was
    /// called on tokio's clock.
    struct Failing {
        attempts: Mutex<Vec<tokio::time::Instant>>,
        invalid: bool,
    }

    impl Delivery for Failing {
        fn online(&self, _: &OutboxRecord) -> bool {
            true
        }
        async fn send(&self, _: &OutboxRecord) -> Result<http::Response<ProxyBody>, SendError> {
            self.attempts.lock().unwrap().push(tokio::time::Instant::now());
            if self.invalid {
                Err(SendError::Invalid("invalid method \"P UT\"".into()))
            } else {
                Err(SendError::Failed("connection refused".into()))
            }
        }
        fn conflict_policy(&self, _: &OutboxRecord) -> ConflictPolicy {
            ConflictPolicy::DeadLetter
        }
        fn delivered(&self, _: &OutboxRecord) {}
    }

    fn setup(settings: QueueSettings, invalid: bool) -> (tempfile::TempDir, Arc<Outbox>, Arc<Failing>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let outbox = Arc::new(Outbox::open(store, settings).unwrap());
        outbox
            .enqueue(OutboxRecord {
                method: if invalid { "P UT".into() } else { "PUT".into() },
                uri: "/api/v1/x".into(),
                ..Default::default()
            })
            .unwrap();
        let failing = Arc::new(Failing {
            attempts: Mutex::new(Vec::new()),
            invalid,
        });
        (dir, outbox, failing)
    }

    /// Backoff on tokio's paused clock: the whole schedule runs in virtual time, every gap stays under
    /// its full-jitter ceiling, and the item becomes a dead letter after `max_attempts`.
    #[tokio::test(start_paused = true)]
    async fn failed_replays_back_off_within_the_ceiling_until_a_dead_letter() {
        let settings = QueueSettings {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(8),
            max_attempts: 6,
            max_age: Duration::from_secs(86_400),
        };
        let (_dir, outbox, failing) = setup(settings, false);
        let stop = crate::server::ShutdownSignal::new();
        let worker = tokio::spawn(ReplayWorker::new(outbox.clone(), failing.clone()).run(stop.triggered()));
        let started = tokio::time::Instant::now();
        while failing.attempts.lock().unwrap().len() < 6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(started.elapsed() < Duration::from_secs(3600), "replay stalled");
        }
        stop.trigger();
        worker.await.unwrap();
        let times = failing.attempts.lock().unwrap().clone();
        for (n, pair) in times.windows(2).enumerate() {
            let gap = pair[1] - pair[0];
            let ceiling = backoff::ceiling(n as u32, settings.backoff_base, settings.backoff_cap);
            assert!(
                gap <= ceiling + Duration::from_millis(150),
                "gap {n}: {gap:?} > {ceiling:?}"
            );
        }
        let items = outbox.list().unwrap();
        assert_eq!(items[0].state, ItemState::DeadLetter);
        assert_eq!(items[0].attempts, 6);
        assert_eq!(outbox.depth(), 0);
    }

    /// A delivery that always succeeds, counting sends per record.
    struct Accepting {
        sends: Mutex<Vec<String>>,
    }

    impl Delivery for Accepting {
        fn online(&self, _: &OutboxRecord) -> bool {
            true
        }
        async fn send(&self, item: &OutboxRecord) -> Result<http::Response<ProxyBody>, SendError> {
            self.sends.lock().unwrap().push(item.uri.clone());
            Ok(http::Response::new(crate::body::empty()))
        }
        fn conflict_policy(&self, _: &OutboxRecord) -> ConflictPolicy {
            ConflictPolicy::DeadLetter
        }
        fn delivered(&self, _: &OutboxRecord) {}
    }

    /// Delivered, but the store does not take the removal (disk full): the write is not sent again in
    /// a loop (it was 578 arrivals in 10 s); replay holds back with backoff, and once the store takes
    /// writes the removal lands and the rest of the queue goes, each write sent once.
    #[tokio::test(start_paused = true)]
    async fn a_delivered_write_the_store_cannot_remove_is_not_sent_again() {
        let (_dir, outbox, _) = setup(QueueSettings::default(), false);
        outbox
            .enqueue(OutboxRecord {
                method: "PUT".into(),
                uri: "/api/v1/y".into(),
                ..Default::default()
            })
            .unwrap();
        let store = outbox.store_for_tests();
        store.inject_queue_write_failures(true);
        let accepting = Arc::new(Accepting {
            sends: Mutex::new(Vec::new()),
        });
        let stop = crate::server::ShutdownSignal::new();
        let worker = tokio::spawn(ReplayWorker::new(outbox.clone(), accepting.clone()).run(stop.triggered()));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            *accepting.sends.lock().unwrap(),
            vec!["/api/v1/x"],
            "sent once, then held back"
        );
        assert!(store.troubled());
        store.inject_queue_write_failures(false);
        let started = tokio::time::Instant::now();
        while outbox.depth() > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            started.elapsed() <= BOOKS_CAP + Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        stop.trigger();
        worker.await.unwrap();
        assert_eq!(*accepting.sends.lock().unwrap(), vec!["/api/v1/x", "/api/v1/y"]);
        assert!(outbox.list().unwrap().is_empty());
    }

    /// A record that cannot be turned into a request is a dead letter with the reason, at once.
    #[tokio::test(start_paused = true)]
    async fn a_record_that_does_not_parse_is_a_dead_letter_with_its_reason() {
        let (_dir, outbox, failing) = setup(QueueSettings::default(), true);
        let stop = crate::server::ShutdownSignal::new();
        let worker = tokio::spawn(ReplayWorker::new(outbox.clone(), failing.clone()).run(stop.triggered()));
        while outbox.depth() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.trigger();
        worker.await.unwrap();
        assert_eq!(failing.attempts.lock().unwrap().len(), 1, "never retried");
        let item = &outbox.list().unwrap()[0];
        assert_eq!(item.state, ItemState::DeadLetter);
        assert!(
            item.last_error.as_deref().unwrap_or("").contains("invalid method"),
            "{:?}",
            item.last_error
        );
    }
}
