//! What the pump side of a line did with bytes it could not use: the rejected frames every codec
//! records for the server's diagnostics.
//!
//! Bounded twice, so a flood of garbage can neither grow memory nor fill a disk: each rejection keeps
//! only the first [`HEAD_BYTES`] bytes of the frame, and a log holds at most [`MAX_HELD`] rejections
//! between two [`RejectLog::take`] calls (the rest are counted, not kept).

/// Bytes of a rejected frame kept for the diagnostics.
pub const HEAD_BYTES: usize = 16;
/// Rejections a log holds until the server takes them.
pub const MAX_HELD: usize = 64;

/// One frame (or run of bytes) the codec discarded or refused to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Why, in words (`"bad CRC"`, `"protocol id 7 is not Modbus"`).
    pub reason: String,
    /// The first bytes of what was rejected (at most [`HEAD_BYTES`]).
    pub head: Vec<u8>,
    /// How many bytes were rejected in all.
    pub len: usize,
}

/// The rejections of one line or connection since the server last took them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectLog {
    held: Vec<Reject>,
    /// Rejections beyond [`MAX_HELD`], counted only.
    overflow: u64,
}

impl RejectLog {
    /// Records a rejection of `bytes` for `reason`.
    pub fn push(&mut self, reason: impl Into<String>, bytes: &[u8]) {
        if self.held.len() >= MAX_HELD {
            self.overflow += 1;
            return;
        }
        let head = bytes[..bytes.len().min(HEAD_BYTES)].to_vec();
        self.held.push(Reject { reason: reason.into(), head, len: bytes.len() });
    }

    /// The held rejections and the number that did not fit, emptying the log.
    pub fn take(&mut self) -> (Vec<Reject>, u64) {
        (core::mem::take(&mut self.held), core::mem::take(&mut self.overflow))
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.overflow == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_heads_and_counts_what_does_not_fit() {
        let mut log = RejectLog::default();
        log.push("long", &[7u8; 300]);
        let (held, overflow) = log.take();
        assert_eq!(held, vec![Reject { reason: "long".into(), head: vec![7; HEAD_BYTES], len: 300 }]);
        assert_eq!(overflow, 0);
        for _ in 0..MAX_HELD + 5 {
            log.push("x", &[1]);
        }
        let (held, overflow) = log.take();
        assert_eq!((held.len(), overflow), (MAX_HELD, 5));
        assert!(log.is_empty());
    }
}
