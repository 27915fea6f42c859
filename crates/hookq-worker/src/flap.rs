//! Flap suppression (`webhooks.vacate_delay_ms`): a `channel_vacated` or
//! `member_removed` waits in the queue for the delay, and when the same
//! channel is occupied again (the same user re-added to the same presence
//! channel) within it, neither the vacate/leave nor the re-occupy/re-add is
//! sent — what Pusher does for clients that reconnect.
//!
//! The wait is durable: the first time a worker accepts a vacate it marks it
//! pending in the shared store ([`hookq_queue::limits`]: Redis for every
//! worker of a Redis queue, else this worker's memory) and pushes a *held
//! copy* of the event job — the same job with the same id, with
//! `not_before_ms` set to the time it was held, which is what marks it as
//! the copy — delayed by the delay; the job received is then acked. When
//! the copy comes back (to any worker), the marker says whether it is still
//! pending (sent) or was cancelled or superseded (dropped). An occupy that
//! finds a vacate pending cancels it and is dropped; any other occupy is
//! sent and remembered, so that a vacate enqueued before it but processed
//! after it (two workers, out of order) is dropped as stale instead of
//! leaving the receiver believing the channel empty. The rules, one step
//! each, are [`hookq_queue::limits::flap_step`]'s; docs/operations.md says
//! what a receiver sees.
//!
//! Events reach this the same way whether a producer or the ingest
//! enqueued them: it runs on every event job as it is accepted, before fan-out.

use crate::decide::Disposition;
use crate::worker::Shared;
use hookq_core::job::{EventJob, Job};
use hookq_core::{EventName, now_ms};
use hookq_queue::Outgoing;
use hookq_queue::limits::{Flap, FlapStep};
use std::time::Duration;

/// How long a marker outlives the delay: the held copy must find it even
/// when no worker could take it for a while. A marker gone lets the vacate
/// through (sent rather than lost).
const MARKER_GRACE: Duration = Duration::from_secs(600);

/// How long a job whose marker could not be read or written waits to come back.
const STORE_AWAY: Duration = Duration::from_secs(1);

/// The marker of an event's channel (and user, for presence members), per app.
fn marker(job: &EventJob) -> String {
    let e = &job.event;
    let app = &job.app_id;
    match e.name {
        EventName::MemberAdded | EventName::MemberRemoved => format!(
            "{}:{app}:m:{}:{}:{}",
            app.len(),
            e.channel.len(),
            e.channel,
            e.user_id.as_deref().unwrap_or_default()
        ),
        _ => format!("{}:{app}:c:{}", app.len(), e.channel),
    }
}

/// What flap suppression does with an accepted event job: `None` to fan
/// it out as usual, or the disposition that replaces its delivery (the
/// held copy pushed, or an ack for a suppressed event).
pub async fn filter(shared: &Shared, job: &EventJob) -> Option<Disposition> {
    let delay = shared.config.webhooks.vacate_delay?;
    if !shared.queue.delays_pushes() {
        // SQS FIFO cannot delay a push: nothing is held there (documented).
        return None;
    }
    let step = match job.event.name {
        EventName::ChannelVacated | EventName::MemberRemoved if job.not_before_ms.is_some() => {
            FlapStep::Due { token: &job.id }
        }
        EventName::ChannelVacated | EventName::MemberRemoved => FlapStep::Vacate {
            token: &job.id,
            enqueued_at_ms: job.enqueued_at_ms,
        },
        EventName::ChannelOccupied | EventName::MemberAdded => FlapStep::Occupy {
            enqueued_at_ms: job.enqueued_at_ms,
        },
        _ => return None,
    };
    let answer = match shared
        .limits
        .flap(&marker(job), step, delay + MARKER_GRACE)
        .await
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(app_id = %job.app_id, error = %e, "vacate marker store unavailable; the event comes back");
            return Some(Disposition::Release(STORE_AWAY));
        }
    };
    let name = job.event.name.as_str();
    match answer {
        Flap::Send => None,
        Flap::Drop => {
            tracing::debug!(app_id = %job.app_id, event = name, "flap suppressed");
            shared.metrics.flap("suppressed", name);
            Some(Disposition::Ack)
        }
        Flap::Hold => {
            shared.metrics.flap("held", name);
            let mut held = job.clone();
            held.not_before_ms = Some(now_ms());
            let message = Outgoing::now(&job.id, &job.app_id, Job::Event(held).encode())
                .delayed(delay.min(shared.queue.max_delay()));
            Some(Disposition::Push {
                message,
                retry: false,
            })
        }
    }
}
