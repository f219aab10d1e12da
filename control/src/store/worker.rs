//! The store worker: one thread that owns a [`Store`] and runs jobs in the
//! order the state machine queued them. It blocks for the first job, then
//! takes whatever else is already queued (up to a batch limit) and runs the
//! lot in one transaction: group commit. A lone message commits at once.
//!
//! Any failure inside a batch rolls the whole batch back and answers every
//! job in it with a failure, so an `OK MSG` is only ever sent for a message
//! whose commit succeeded.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use whelm_daemon::logging::RateLimited;
use whelm_shared::line::{Status, UserId};

use super::{NewMessage, Stamp, Store, StoreError};
use crate::jobs::{Input, MsgFailure, MsgJob, StoreJob, StoreResult, StoredMessage};
use crate::metrics::Metrics;

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
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < batch_max {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let (results, failed) =
            try_batch(store.as_mut(), std::mem::take(&mut batch), &Stamp::now());
        metrics.store_latency.observe(started.elapsed());
        if let Some((e, n)) = failed {
            metrics.store_errors.fetch_add(1, Ordering::Relaxed);
            if let Some(held) = errors.allow(Instant::now()) {
                tracing::warn!(error = %e, store = store.describe(), jobs = n,
                    similar_errors_not_logged = held, "store batch failed");
            }
        }
        for r in results {
            if answers.send(Input::Store(r)).is_err() {
                return;
            }
        }
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
        StoreJob::Online { session, user } => Some(StoreResult::Backlog {
            session,
            user,
            messages: Err(()),
        }),
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
                    messages: Ok(store.pending_for(*user)?),
                });
            }
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
