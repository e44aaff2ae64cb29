//! Modbus RTU on the pump side: framing, CRC-16/MODBUS and the request handler of the simulated
//! firmware (functions 3, 4, 6 and 16).
//!
//! Like a real RS-485 device the pump stays **silent** for a frame with a bad CRC, a frame for another
//! unit id, and a broadcast (unit 0, which it executes without answering); it answers an unsupported
//! function with exception 1. Frames are cut by their length rules as bytes arrive; a silent gap longer
//! than 3.5 character times discards a partial frame.

use crate::firmware::Firmware;
use crate::regmap::ModbusException;

/// CRC-16/MODBUS (reflected 0xA001, init 0xFFFF), sent low byte first.
pub fn crc16_modbus(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &byte in data {
        crc ^= u16::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xA001 } else { crc >> 1 };
        }
    }
    crc
}

/// Appends the CRC to `frame`.
pub fn with_crc(mut frame: Vec<u8>) -> Vec<u8> {
    let crc = crc16_modbus(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}

/// Seconds one character takes on the wire at `baud` (11 bits: start, 8 data, parity or 2nd stop, stop
/// as Modbus specifies; 8N1 is 10 bits, the 11-bit figure keeps the gap conservative).
pub fn char_time_s(baud: u32) -> f64 {
    11.0 / f64::from(baud.max(1))
}

/// Handles one request PDU (function code + data) and returns the response PDU.
pub fn handle_pdu(fw: &mut Firmware, pdu: &[u8]) -> Vec<u8> {
    let Some(&function) = pdu.first() else {
        return vec![0x80, ModbusException::IllegalFunction as u8];
    };
    let exception = |e: ModbusException| vec![function | 0x80, e as u8];
    let word = |i: usize| u16::from_be_bytes([pdu[i], pdu[i + 1]]);
    match function {
        3 | 4 if pdu.len() == 5 => match fw.read_registers(word(1), word(3)) {
            Ok(words) => {
                let mut out = vec![function, (words.len() * 2) as u8];
                for w in words {
                    out.extend_from_slice(&w.to_be_bytes());
                }
                out
            }
            Err(e) => exception(e),
        },
        6 if pdu.len() == 5 => match fw.write_registers(word(1), &[word(3)]) {
            Ok(()) => pdu.to_vec(),
            Err(e) => exception(e),
        },
        16 if pdu.len() >= 6 => {
            let (address, count, bytes) = (word(1), word(3), usize::from(pdu[5]));
            if bytes != usize::from(count) * 2 || pdu.len() != 6 + bytes {
                return exception(ModbusException::IllegalDataValue);
            }
            let values: Vec<u16> = (0..usize::from(count)).map(|i| word(6 + 2 * i)).collect();
            match fw.write_registers(address, &values) {
                Ok(()) => pdu[..5].to_vec(),
                Err(e) => exception(e),
            }
        }
        3 | 4 | 6 | 16 => exception(ModbusException::IllegalDataValue),
        _ => exception(ModbusException::IllegalFunction),
    }
}

/// Expected length of a request frame (unit + PDU + CRC) from its first bytes, if known yet.
fn request_len(buf: &[u8]) -> Option<usize> {
    match *buf.get(1)? {
        3 | 4 | 6 => Some(8),
        16 => buf.get(6).map(|&n| 9 + usize::from(n)),
        // Unknown function: only the inter-frame gap can end it.
        _ => None,
    }
}

/// One RTU line (pump side).
#[derive(Debug, Clone)]
pub struct RtuPort {
    unit_id: u8,
    gap_s: f64,
    buf: Vec<u8>,
    last_byte_s: f64,
}

impl RtuPort {
    pub fn new(unit_id: u8, baud: u32) -> Self {
        // At least 1.75 ms, as the spec sets for rates above 19 200 baud.
        let gap_s = (3.5 * char_time_s(baud)).max(1.75e-3);
        Self { unit_id, gap_s, buf: Vec::new(), last_byte_s: f64::NEG_INFINITY }
    }

    /// Feeds received bytes; returns the complete frames (CRC checked, addressed to this unit or
    /// broadcast) as (unit, pdu).
    pub fn feed(&mut self, now_s: f64, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        if !bytes.is_empty() && now_s - self.last_byte_s > self.gap_s {
            // A silence ended the previous frame: an unknown-length frame is complete now.
            self.take_unknown(&mut frames);
            self.buf.clear();
        }
        for &b in bytes {
            self.buf.push(b);
            if request_len(&self.buf) == Some(self.buf.len()) {
                let frame = core::mem::take(&mut self.buf);
                self.accept(&frame, &mut frames);
            }
            if self.buf.len() > 256 {
                self.buf.clear();
            }
        }
        if !bytes.is_empty() {
            self.last_byte_s = now_s;
        }
        frames
    }

    /// Call when the line has been idle: completes a frame whose length only a gap can tell.
    pub fn idle(&mut self, now_s: f64) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        if now_s - self.last_byte_s > self.gap_s {
            self.take_unknown(&mut frames);
        }
        frames
    }

    fn take_unknown(&mut self, frames: &mut Vec<(u8, Vec<u8>)>) {
        if self.buf.len() >= 4 && request_len(&self.buf).is_none() {
            let frame = core::mem::take(&mut self.buf);
            self.accept(&frame, frames);
        }
        self.buf.clear();
    }

    fn accept(&self, frame: &[u8], frames: &mut Vec<(u8, Vec<u8>)>) {
        let (body, crc) = frame.split_at(frame.len() - 2);
        if crc16_modbus(body).to_le_bytes() != [crc[0], crc[1]] {
            return;
        }
        if body[0] == self.unit_id || body[0] == 0 {
            frames.push((body[0], body[1..].to_vec()));
        }
    }

    /// Executes a frame from [`RtuPort::feed`]: the reply frame, or `None` for a broadcast.
    pub fn execute(&self, fw: &mut Firmware, unit: u8, pdu: &[u8]) -> Option<Vec<u8>> {
        let reply = handle_pdu(fw, pdu);
        (unit != 0).then(|| {
            let mut frame = vec![unit];
            frame.extend(reply);
            with_crc(frame)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plant::PlantConfig;

    fn pump() -> Firmware {
        Firmware::new(PlantConfig::nominal_for("bd-plastipak-50").unwrap(), 7).unwrap()
    }

    #[test]
    fn crc_matches_the_spec_example() {
        // Modbus over serial line spec, §6.2.2 example: 02 07 → CRC 0x1241 (sent 41 12).
        assert_eq!(crc16_modbus(&[0x02, 0x07]), 0x1241);
    }

    #[test]
    fn reads_identity() {
        let mut fw = pump();
        let mut port = RtuPort::new(1, 19_200);
        let frames = port.feed(0.0, &with_crc(vec![1, 3, 0, 0, 0, 2]));
        assert_eq!(frames.len(), 1);
        let reply = port.execute(&mut fw, frames[0].0, &frames[0].1).unwrap();
        assert_eq!(&reply[..7], &[1, 3, 4, 0x4B, 0x50, 0, 1]);
        assert_eq!(crc16_modbus(&reply[..7]).to_le_bytes(), [reply[7], reply[8]]);
    }

    #[test]
    fn write_to_read_only_is_exception_2_and_out_of_range_is_3() {
        let mut fw = pump();
        assert_eq!(handle_pdu(&mut fw, &[6, 0, 0, 0, 1]), vec![0x86, 2]);
        assert_eq!(handle_pdu(&mut fw, &[6, 0, 22, 0, 9]), vec![0x86, 3]);
        assert_eq!(handle_pdu(&mut fw, &[6, 0, 25, 0, 100]), vec![6, 0, 25, 0, 100]);
    }

    #[test]
    fn unknown_function_is_exception_1() {
        let mut fw = pump();
        assert_eq!(handle_pdu(&mut fw, &[0x2B, 0x0E, 1, 0]), vec![0xAB, 1]);
    }

    #[test]
    fn silent_for_bad_crc_other_unit_and_broadcast_reply() {
        let mut fw = pump();
        let mut port = RtuPort::new(1, 19_200);
        let mut bad = with_crc(vec![1, 3, 0, 0, 0, 2]);
        bad[7] ^= 0xFF;
        assert!(port.feed(0.0, &bad).is_empty());
        assert!(port.feed(1.0, &with_crc(vec![2, 3, 0, 0, 0, 2])).is_empty());
        let frames = port.feed(2.0, &with_crc(vec![0, 6, 0, 25, 0, 200]));
        assert_eq!(frames.len(), 1);
        assert!(port.execute(&mut fw, frames[0].0, &frames[0].1).is_none());
        assert_eq!(fw.value("watchdog_ms"), 200.0);
    }

    #[test]
    fn a_gap_discards_a_partial_frame() {
        let mut port = RtuPort::new(1, 19_200);
        let frame = with_crc(vec![1, 3, 0, 0, 0, 2]);
        assert!(port.feed(0.0, &frame[..3]).is_empty());
        assert!(port.feed(1.0, &frame[3..]).is_empty());
        assert_eq!(port.feed(2.0, &frame).len(), 1);
    }

    #[test]
    fn fc16_writes_a_float() {
        let mut fw = pump();
        let words = crate::regmap::encode(crate::regmap::RegType::F32, 52.5);
        let mut pdu = vec![16, 0, 20, 0, 2, 4];
        for w in &words {
            pdu.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(handle_pdu(&mut fw, &pdu), vec![16, 0, 20, 0, 2]);
        assert_eq!(fw.rate_ml_h(), 52.5);
        // Half of a float is refused.
        assert_eq!(handle_pdu(&mut fw, &[16, 0, 20, 0, 1, 2, 0x42, 0x52]), vec![0x90, 2]);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut fw = pump();
        let mut port = RtuPort::new(1, 19_200);
        let mut rng = crate::rng::SplitMix64::new(42);
        for i in 0..20_000 {
            let len = (rng.next_u64() % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            for (unit, pdu) in port.feed(f64::from(i) * 1e-3, &bytes) {
                let _ = port.execute(&mut fw, unit, &pdu);
            }
            let pdu: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let _ = handle_pdu(&mut fw, &pdu);
        }
    }
}
