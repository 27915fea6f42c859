//! `event_limits`: Sockudo's limits on events, of which hookq reads the
//! payload size, so that an event over it is refused by the producer
//! instead of becoming an oversized job and request.

use super::Diagnostics;
use super::reader::Obj;

/// Room an event's other fields (name, channel, ids, a member's info) get
/// beside its payload, in bytes of JSON.
pub const FIELDS_ALLOWANCE: usize = 16 * 1024;

/// `event_limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// `max_payload_in_kb` × 1024: the largest payload (`data`) an event may carry.
    pub max_payload_bytes: usize,
}

impl EventLimits {
    /// The largest event job, in bytes of JSON: the payload limit plus
    /// [`FIELDS_ALLOWANCE`].
    pub fn max_job_bytes(&self) -> usize {
        self.max_payload_bytes + FIELDS_ALLOWANCE
    }
}

impl Default for EventLimits {
    /// Sockudo's default: 100 KiB.
    fn default() -> Self {
        Self {
            max_payload_bytes: 100 * 1024,
        }
    }
}

pub(super) fn read_event_limits(o: &mut Obj, d: &mut Diagnostics) -> EventLimits {
    let kb = o.u64("max_payload_in_kb", 100, 1, d);
    // Sockudo's other limits concern its own clients and API.
    o.ignore(&["max_channels_at_once", "max_name_length", "max_batch_size"]);
    o.finish(d);
    EventLimits {
        max_payload_bytes: usize::try_from(kb.saturating_mul(1024)).unwrap_or(usize::MAX),
    }
}
