//! A fixed-size ring of state-machine events that Python drains for the audit log.
//!
//! Nothing is allocated. When the ring is full the oldest event is overwritten and counted in
//! [`TraceRing::dropped`], so a consumer can log that it lost events rather than lose them silently.

use crate::alarm::Alarm;
use crate::kernel::{Command, StateKind};

/// What caused a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// An operator command (load, start, pause, resume, stop, acknowledge, silence, unload, set_rate).
    Operator(Command),
    /// Take-up finished (the plunger engaged): still Running, now at the programmed rate.
    TakeUpDone,
    /// The programmed volume was delivered.
    DoseComplete,
    /// An alarm was raised (also recorded when already in `Alarm`, with `from == to`).
    Alarm(Alarm),
}

impl Cause {
    pub const fn as_str(self) -> &'static str {
        match self {
            Cause::Operator(command) => command.as_str(),
            Cause::TakeUpDone => "take_up_done",
            Cause::DoseComplete => "dose_complete",
            Cause::Alarm(a) => a.as_str(),
        }
    }
}

/// One recorded event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceEvent {
    /// Sequence number, from 0, never reused: a gap tells the consumer events were overwritten.
    pub seq: u64,
    /// Kernel time of the event (s).
    pub t_s: f64,
    pub from: StateKind,
    pub to: StateKind,
    pub cause: Cause,
    /// Measured delivered volume of the program at the event (mL).
    pub delivered_ml: f64,
}

/// Ring capacity: a few seconds of worst-case events at 1 kHz between two drains.
pub const TRACE_CAPACITY: usize = 64;

#[derive(Debug, Clone)]
pub struct TraceRing {
    events: [Option<TraceEvent>; TRACE_CAPACITY],
    /// Index of the oldest event.
    head: usize,
    len: usize,
    next_seq: u64,
    dropped: u64,
}

impl Default for TraceRing {
    fn default() -> Self {
        Self::new()
    }
}

impl TraceRing {
    pub const fn new() -> Self {
        Self { events: [None; TRACE_CAPACITY], head: 0, len: 0, next_seq: 0, dropped: 0 }
    }

    pub fn push(&mut self, t_s: f64, from: StateKind, to: StateKind, cause: Cause, delivered_ml: f64) {
        let event = TraceEvent { seq: self.next_seq, t_s, from, to, cause, delivered_ml };
        self.next_seq += 1;
        if self.len == TRACE_CAPACITY {
            self.events[self.head] = Some(event);
            self.head = (self.head + 1) % TRACE_CAPACITY;
            self.dropped += 1;
        } else {
            self.events[(self.head + self.len) % TRACE_CAPACITY] = Some(event);
            self.len += 1;
        }
    }

    /// Removes and returns the oldest event.
    pub fn pop(&mut self) -> Option<TraceEvent> {
        if self.len == 0 {
            return None;
        }
        let event = self.events[self.head].take();
        self.head = (self.head + 1) % TRACE_CAPACITY;
        self.len -= 1;
        event
    }

    pub const fn len(&self) -> usize {
        self.len
    }
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Events overwritten before they were drained.
    pub const fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_order() {
        let mut r = TraceRing::new();
        r.push(1.0, StateKind::Idle, StateKind::Armed, Cause::Operator(Command::Load), 0.0);
        r.push(2.0, StateKind::Armed, StateKind::Running, Cause::Operator(Command::Start), 0.0);
        assert_eq!(r.pop().unwrap().seq, 0);
        assert_eq!(r.pop().unwrap().seq, 1);
        assert!(r.pop().is_none());
    }

    #[test]
    fn overwrites_oldest_and_counts_drops() {
        let mut r = TraceRing::new();
        for i in 0..(TRACE_CAPACITY + 5) {
            r.push(i as f64, StateKind::Running, StateKind::Running, Cause::Operator(Command::SetRate), 0.0);
        }
        assert_eq!(r.len(), TRACE_CAPACITY);
        assert_eq!(r.dropped(), 5);
        assert_eq!(r.pop().unwrap().seq, 5);
    }
}
