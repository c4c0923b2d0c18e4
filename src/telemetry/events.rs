//! A short, bounded list of what happened to the cluster as this node saw
//! it (nodes joining and leaving gossip, evictions applied), newest last,
//! for the admin dashboard's "recent events". It only records: whoever
//! observes an event calls [`RecentEvents::record`].

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How many events are kept; older ones are dropped.
const KEPT: usize = 64;

/// One event, as `/api/stats` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecentEvent {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `node_up`, `node_down` or `evicted`.
    pub kind: &'static str,
    /// The node the event is about.
    pub node: String,
    pub incarnation: u64,
    /// Human-readable detail (counts only; never user input).
    pub detail: String,
}

/// The bounded list; cheap to share (`Arc`) between the parts that record.
#[derive(Debug, Default)]
pub struct RecentEvents {
    events: Mutex<VecDeque<RecentEvent>>,
}

impl RecentEvents {
    pub fn record(&self, kind: &'static str, node: &str, incarnation: u64, detail: String) {
        let time_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let event = RecentEvent { time_ms, kind, node: node.to_string(), incarnation, detail };
        let mut events = self.events.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if events.len() == KEPT {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// The events kept, newest first.
    pub fn newest_first(&self) -> Vec<RecentEvent> {
        let events = self.events.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        events.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_events_are_kept_newest_first() {
        let events = RecentEvents::default();
        for i in 0..(KEPT as u64 + 3) {
            events.record("node_up", "node-1", i, String::new());
        }
        let kept = events.newest_first();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].incarnation, KEPT as u64 + 2);
        assert_eq!(kept[KEPT - 1].incarnation, 3);
    }
}
