//! The store worker: one thread that owns a [`Store`] and runs jobs in the
//! order the state machine queued them. It blocks for the first job, then
//! takes whatever else is already queued (up to a batch limit) and runs the
//! lot in one transaction: group commit. A lone message commits at once.
//!
//! Any failure inside a batch rolls the whole batch back and answers every
//! job in it with a failure, so an `OK MSG` is only ever sent for a message
//! whose commit succeeded: a COMMIT whose answer never came (the connection
//! died or timed out under it) counts as failed, although the database may
//! have applied it. A client sees `ERROR` and may send again; an
//! acknowledged message is never missing.
//!
//! When the database is unreachable or stops answering
//! ([`StoreError::is_unavailable`]), waiting out a connect or read timeout
//! for every batch would make each `MSG` wait seconds for its `ERROR` and
//! let the queue grow. The worker instead marks the store down: batches
//! fail at once, without touching it, until the next retry, 200 ms after
//! the failure and doubling up to 1 s; the first batch after that tries
//! for real (the backend reconnects), so the store is back within about a
//! second of the database. Going down and coming back are logged once each.
//!
//! The backlog of pending messages goes out in pages of [`PENDING_PAGE`]
//! rows: [`StoreJob::Online`] answers with the first, and the state machine
//! asks for each next one ([`StoreJob::Backlog`]) once it has queued the
//! previous one to the session, so neither this thread nor the machine ever
//! holds more than a page of a user's backlog.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use whelm_daemon::logging::RateLimited;
use whelm_shared::line::{Status, UserId};

use super::{NewMessage, PENDING_PAGE, Stamp, Store, StoreError};
use crate::jobs::{Input, MsgFailure, MsgJob, StoreJob, StoreResult, StoredMessage};
use crate::metrics::Metrics;

/// First wait after the store went down before it is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(200);
/// Longest wait between tries while it stays down.
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The store is unreachable: since when, and when to try again.
struct Down {
    since: Instant,
    wait: Duration,
    retry_at: Instant,
}

/// Runs jobs until the job channel closes; answers go to `answers`. Each
/// transaction's latency and failure is recorded in `metrics`.
pub fn run(
    mut store: Box<dyn Store>,
    jobs: Receiver<StoreJob>,
    answers: Sender<Input>,
    batch_max: usize,
    metrics: Arc<Metrics>,
) {
    let mut errors = RateLimited::new(Duration::from_secs(10));
    let batch_max = batch_max.max(1);
    let mut batch = Vec::with_capacity(batch_max);
    let mut down: Option<Down> = None;
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < batch_max {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let results = match &down {
            Some(d) if Instant::now() < d.retry_at => {
                // Down: fail at once, without waiting on the database.
                metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                std::mem::take(&mut batch)
                    .into_iter()
                    .filter_map(failure)
                    .collect()
            }
            _ => {
                let started = Instant::now();
                let (results, failed) =
                    try_batch(store.as_mut(), std::mem::take(&mut batch), &Stamp::now());
                metrics.store_latency.observe(started.elapsed());
                let now = Instant::now();
                match failed {
                    Some((e, n)) => {
                        metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                        let went_down = e.is_unavailable() && down.is_none();
                        if e.is_unavailable() {
                            let d = down.get_or_insert(Down {
                                since: now,
                                wait: RETRY_FIRST / 2,
                                retry_at: now,
                            });
                            d.wait = (d.wait * 2).min(RETRY_MAX);
                            d.retry_at = now + d.wait;
                        } else {
                            back_up(&mut down, &*store);
                        }
                        if went_down {
                            tracing::error!(error = %e, store = store.describe(), jobs = n,
                                "store unavailable: failing its jobs at once (MSG gets ERROR) \
                                 and trying it again every second at most");
                        } else if let Some(held) = errors.allow(now) {
                            tracing::warn!(error = %e, store = store.describe(), jobs = n,
                                similar_errors_not_logged = held, "store batch failed");
                        }
                    }
                    None => back_up(&mut down, &*store),
                }
                results
            }
        };
        for r in results {
            if answers.send(Input::Store(r)).is_err() {
                return;
            }
        }
    }
}

/// The store answered: leaves the down state, saying so once.
fn back_up(down: &mut Option<Down>, store: &dyn Store) {
    if let Some(d) = down.take() {
        tracing::warn!(
            store = store.describe(),
            down_for_ms = d.since.elapsed().as_millis() as u64,
            "store reachable again"
        );
    }
}

/// Runs one batch in one transaction and returns the answers, in job order.
pub fn run_batch(store: &mut dyn Store, jobs: Vec<StoreJob>, at: &Stamp) -> Vec<StoreResult> {
    let (results, failed) = try_batch(store, jobs, at);
    if let Some((e, n)) = failed {
        tracing::warn!(error = %e, store = store.describe(), jobs = n, "store batch failed");
    }
    results
}

/// [`run_batch`] without the log line: the answers, and the error and
/// batch size when it was rolled back.
fn try_batch(
    store: &mut dyn Store,
    jobs: Vec<StoreJob>,
    at: &Stamp,
) -> (Vec<StoreResult>, Option<(StoreError, usize)>) {
    let n = jobs.len();
    let outcome = store.begin().and_then(|()| {
        let answers = run_jobs(store, &jobs, at)?;
        store.commit()?;
        Ok(answers)
    });
    match outcome {
        Ok(answers) => {
            if n > 1 {
                tracing::trace!(jobs = n, "batch committed");
            }
            (answers, None)
        }
        Err(e) => {
            store.rollback();
            (jobs.into_iter().filter_map(failure).collect(), Some((e, n)))
        }
    }
}

/// The answer to a job whose batch failed (`None` for jobs without one).
fn failure(job: StoreJob) -> Option<StoreResult> {
    match job {
        StoreJob::Lookup { session, .. } => Some(StoreResult::Lookup {
            session,
            user: Err(()),
        }),
        StoreJob::Online { session, user } | StoreJob::Backlog { session, user, .. } => {
            Some(StoreResult::Backlog {
                session,
                user,
                page: Err(()),
            })
        }
        StoreJob::Msg(m) => Some(StoreResult::Msg {
            session: m.session,
            seq: m.seq,
            recipient: m.recipient,
            pending: m.pending,
            result: Err(MsgFailure::Database),
        }),
        _ => None,
    }
}

fn run_jobs(
    store: &mut dyn Store,
    jobs: &[StoreJob],
    at: &Stamp,
) -> Result<Vec<StoreResult>, StoreError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < jobs.len() {
        match &jobs[i] {
            StoreJob::Msg(_) => {
                let mut run = Vec::new();
                while let Some(StoreJob::Msg(m)) = jobs.get(i) {
                    run.push(m);
                    i += 1;
                }
                insert_run(store, &run, at, &mut out)?;
                continue;
            }
            StoreJob::Lookup { session, token } => out.push(StoreResult::Lookup {
                session: *session,
                user: Ok(store.user_by_token(token)?),
            }),
            StoreJob::Online { session, user } => {
                store.set_presence(&[*user], Some(Status::Online), at)?;
                out.push(StoreResult::Backlog {
                    session: *session,
                    user: *user,
                    page: Ok(store.pending_for(*user, i64::MIN, PENDING_PAGE)?),
                });
            }
            StoreJob::Backlog {
                session,
                user,
                after,
            } => out.push(StoreResult::Backlog {
                session: *session,
                user: *user,
                page: Ok(store.pending_for(*user, *after, PENDING_PAGE)?),
            }),
            StoreJob::Heartbeat { user, status } => store.set_presence(&[*user], *status, at)?,
            StoreJob::Offline { users } => store.set_presence(users, Some(Status::Offline), at)?,
            StoreJob::AddPending {
                recipient,
                message_id,
            } => store.add_pending(&[(*recipient, *message_id)])?,
            StoreJob::Delivered { recipient, upto } => store.mark_delivered(*recipient, *upto)?,
        }
        i += 1;
    }
    Ok(out)
}

/// Consecutive MSG jobs: one recipient check, one multi-row insert.
fn insert_run(
    store: &mut dyn Store,
    run: &[&MsgJob],
    at: &Stamp,
    out: &mut Vec<StoreResult>,
) -> Result<(), StoreError> {
    let mut to_check: Vec<UserId> = run
        .iter()
        .filter(|m| m.check_recipient)
        .map(|m| m.recipient)
        .collect();
    to_check.sort();
    to_check.dedup();
    let known: HashSet<UserId> = if to_check.is_empty() {
        HashSet::new()
    } else {
        store.existing_users(&to_check)?.into_iter().collect()
    };
    let ok = |m: &MsgJob| !m.check_recipient || known.contains(&m.recipient);
    let new: Vec<NewMessage<'_>> = run
        .iter()
        .filter(|m| ok(m))
        .map(|m| NewMessage {
            sender: m.sender,
            recipient: m.recipient,
            content: &m.content,
        })
        .collect();
    let ids = store.insert_messages(&new, at)?;
    if ids.len() != new.len() {
        return Err(StoreError::Other(format!(
            "inserted {} messages, got {} ids",
            new.len(),
            ids.len()
        )));
    }
    let mut ids = ids.into_iter();
    let mut pending = Vec::new();
    for m in run {
        let result = if ok(m) {
            let id = ids.next().unwrap_or_default();
            if m.pending {
                pending.push((m.recipient, id));
            }
            Ok(StoredMessage {
                id,
                sender: m.sender,
                recipient: m.recipient,
                content: m.content.clone(),
                timestamp: at.rfc3339.clone(),
            })
        } else {
            Err(MsgFailure::UnknownRecipient)
        };
        out.push(StoreResult::Msg {
            session: m.session,
            seq: m.seq,
            recipient: m.recipient,
            pending: m.pending,
            result,
        });
    }
    if !pending.is_empty() {
        store.add_pending(&pending)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::jobs::{SessionId, UserRecord};
    use crate::store::UserRow;

    /// How the fake database behaves, and what was asked of it.
    #[derive(Default)]
    struct State {
        /// `begin` fails as an unreachable database does.
        unreachable: bool,
        /// `commit` fails as a COMMIT whose answer never came.
        commit_lost: bool,
        begins: usize,
        next_id: i64,
    }

    struct Fake(Arc<Mutex<State>>);

    impl Store for Fake {
        fn describe(&self) -> String {
            "fake".into()
        }
        fn migrate(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
        fn add_user(&mut self, _: &str, _: &str) -> Result<UserId, StoreError> {
            Err(StoreError::Other("no".into()))
        }
        fn list_users(&mut self) -> Result<Vec<UserRow>, StoreError> {
            Ok(Vec::new())
        }
        fn begin(&mut self) -> Result<(), StoreError> {
            let mut s = self.0.lock().unwrap();
            s.begins += 1;
            if s.unreachable {
                Err(StoreError::NoAnswer(Duration::from_secs(5)))
            } else {
                Ok(())
            }
        }
        fn commit(&mut self) -> Result<(), StoreError> {
            if self.0.lock().unwrap().commit_lost {
                Err(StoreError::NoAnswer(Duration::from_secs(5)))
            } else {
                Ok(())
            }
        }
        fn rollback(&mut self) {}
        fn user_by_token(&mut self, _: &str) -> Result<Option<UserRecord>, StoreError> {
            Ok(None)
        }
        fn existing_users(&mut self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError> {
            Ok(ids.to_vec())
        }
        fn set_presence(
            &mut self,
            _: &[UserId],
            _: Option<Status>,
            _: &Stamp,
        ) -> Result<(), StoreError> {
            Ok(())
        }
        fn insert_messages(
            &mut self,
            msgs: &[NewMessage<'_>],
            _: &Stamp,
        ) -> Result<Vec<i64>, StoreError> {
            let mut s = self.0.lock().unwrap();
            Ok(msgs
                .iter()
                .map(|_| {
                    s.next_id += 1;
                    s.next_id
                })
                .collect())
        }
        fn add_pending(&mut self, _: &[(UserId, i64)]) -> Result<(), StoreError> {
            Ok(())
        }
        fn pending_for(
            &mut self,
            _: UserId,
            _: i64,
            _: usize,
        ) -> Result<crate::jobs::PendingPage, StoreError> {
            Ok(crate::jobs::PendingPage::default())
        }
        fn mark_delivered(&mut self, _: UserId, _: i64) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn msg(seq: u64) -> StoreJob {
        let u = |v| UserId::new(v).unwrap();
        StoreJob::Msg(MsgJob {
            session: SessionId(1),
            seq,
            sender: u(1),
            recipient: u(2),
            content: format!("m{seq}"),
            pending: false,
            check_recipient: false,
        })
    }

    /// `Some(true)` for a stored MSG, `Some(false)` for a failed one.
    fn stored(i: Input) -> Option<bool> {
        match i {
            Input::Store(StoreResult::Msg { result, .. }) => Some(result.is_ok()),
            _ => None,
        }
    }

    #[test]
    fn a_commit_without_answer_acknowledges_nothing() {
        let state = Arc::new(Mutex::new(State {
            commit_lost: true,
            ..State::default()
        }));
        let mut fake = Fake(state);
        let jobs = (0..5).map(msg).collect();
        let results = run_batch(&mut fake, jobs, &Stamp::now());
        assert_eq!(results.len(), 5);
        for r in results {
            assert!(
                matches!(
                    r,
                    StoreResult::Msg {
                        result: Err(MsgFailure::Database),
                        ..
                    }
                ),
                "{r:?}"
            );
        }
    }

    #[test]
    fn an_unreachable_store_fails_jobs_at_once_then_is_retried() {
        let state = Arc::new(Mutex::new(State {
            unreachable: true,
            ..State::default()
        }));
        let (job_tx, job_rx) = crossbeam_channel::unbounded();
        let (ans_tx, ans_rx) = crossbeam_channel::unbounded();
        let store = Box::new(Fake(state.clone()));
        let worker = std::thread::spawn(move || {
            run(store, job_rx, ans_tx, 16, Arc::new(Metrics::default()));
        });
        let answer = || stored(ans_rx.recv_timeout(Duration::from_secs(5)).unwrap());
        job_tx.send(msg(1)).unwrap();
        assert_eq!(answer(), Some(false));
        // Down: the next batch fails without a try.
        job_tx.send(msg(2)).unwrap();
        assert_eq!(answer(), Some(false));
        assert_eq!(state.lock().unwrap().begins, 1);
        // The database is back; after the retry wait the store is tried.
        state.lock().unwrap().unreachable = false;
        std::thread::sleep(RETRY_FIRST + Duration::from_millis(50));
        job_tx.send(msg(3)).unwrap();
        assert_eq!(answer(), Some(true));
        assert_eq!(state.lock().unwrap().begins, 2);
        drop(job_tx);
        worker.join().unwrap();
    }
}
