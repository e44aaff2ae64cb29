//! Modbus on the pump side: one request handler ([`handle_pdu`]) behind two framings, RTU
//! ([`RtuPort`]: CRC-16, unit ids, silent gaps) and TCP ([`MbapStream`]: the MBAP header), so both
//! endpoints answer every request byte for byte alike.
//!
//! The handler answers exactly what the register map lists (`function_codes`): any other function
//! code gets exception 1 and changes nothing. A request whose structure is wrong for its function (a
//! length, a quantity outside 1..=125 registers to read or 1..=123 to write, a byte count that does
//! not match) gets exception 3, as the Modbus application protocol specifies, before any address is
//! looked at; then an unmapped or read-only address gets 2, a value the register refuses 3, a command
//! the pump cannot run now 4. Exception replies are `function | 0x80` and the code.
//!
//! **RTU.** Like a real RS-485 device the pump stays **silent** for a frame with a bad CRC, a frame for
//! another unit id, and a broadcast (unit 0, which it executes without answering). Frames are cut by
//! their length rules as bytes arrive; a silent gap longer than 3.5 character times ends a frame whose
//! length only the gap can tell and discards a partial one.
//!
//! **TCP.** The MBAP header carries the framing: a header that cannot be valid (protocol id other than
//! 0, a length outside 2..=254) means the stream is lost, and the connection is closed rather than
//! guessed at. Unit ids: the pump's own, 0 and 255 (the values the Modbus TCP implementation guide
//! gives for a device addressed by its IP address) are served; any other unit is answered with
//! exception 0x0B (gateway target device failed to respond), never silence, so a client that names the
//! wrong unit learns it at once.

use crate::firmware::Firmware;
use crate::regmap::{ModbusException, MAX_READ_REGISTERS, MAX_READ_WRITE_WRITE_REGISTERS, MAX_WRITE_REGISTERS};
use crate::wire::RejectLog;

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

/// The RTU inter-frame silence at `baud`: 3.5 character times, at least 1.75 ms (the spec's fixed value
/// above 19 200 baud).
pub fn frame_gap_s(baud: u32) -> f64 {
    (3.5 * char_time_s(baud)).max(1.75e-3)
}

/// Exception 0x0B: the gateway's target device did not respond (a TCP request for another unit).
pub const GATEWAY_TARGET_FAILED: u8 = 0x0B;

fn exception(function: u8, code: u8) -> Vec<u8> {
    vec![function | 0x80, code]
}

/// Handles one request PDU (function code + data) and returns the response PDU.
pub fn handle_pdu(fw: &mut Firmware, pdu: &[u8]) -> Vec<u8> {
    let Some(&function) = pdu.first() else {
        return exception(0, ModbusException::IllegalFunction as u8);
    };
    let refuse = |e: ModbusException| exception(function, e as u8);
    if !fw.wire_map().serves_function(function) {
        return refuse(ModbusException::IllegalFunction);
    }
    let word = |i: usize| u16::from_be_bytes([pdu[i], pdu[i + 1]]);
    match function {
        3 | 4 => {
            if pdu.len() != 5 {
                return refuse(ModbusException::IllegalDataValue);
            }
            match fw.read_registers(word(1), word(3)) {
                Ok(words) => read_reply(function, &words),
                Err(e) => refuse(e),
            }
        }
        6 => {
            if pdu.len() != 5 {
                return refuse(ModbusException::IllegalDataValue);
            }
            match fw.write_registers(word(1), &[word(3)]) {
                Ok(()) => pdu.to_vec(),
                Err(e) => refuse(e),
            }
        }
        16 => {
            if pdu.len() < 6 {
                return refuse(ModbusException::IllegalDataValue);
            }
            let (address, count, bytes) = (word(1), word(3), usize::from(pdu[5]));
            if count == 0 || count > MAX_WRITE_REGISTERS || bytes != usize::from(count) * 2 || pdu.len() != 6 + bytes {
                return refuse(ModbusException::IllegalDataValue);
            }
            let values: Vec<u16> = (0..usize::from(count)).map(|i| word(6 + 2 * i)).collect();
            match fw.write_registers(address, &values) {
                Ok(()) => pdu[..5].to_vec(),
                Err(e) => refuse(e),
            }
        }
        23 => {
            // Read/write multiple registers: the write is applied first, then the read answers (so a
            // read may see the value just written). Both ranges are checked before anything is
            // written: a request one of whose halves would be refused changes nothing.
            if pdu.len() < 10 {
                return refuse(ModbusException::IllegalDataValue);
            }
            let (read_address, read_count) = (word(1), word(3));
            let (write_address, write_count, bytes) = (word(5), word(7), usize::from(pdu[9]));
            if read_count == 0
                || read_count > MAX_READ_REGISTERS
                || write_count == 0
                || write_count > MAX_READ_WRITE_WRITE_REGISTERS
                || bytes != usize::from(write_count) * 2
                || pdu.len() != 10 + bytes
            {
                return refuse(ModbusException::IllegalDataValue);
            }
            if let Err(e) = fw.read_registers(read_address, read_count) {
                return refuse(e);
            }
            let values: Vec<u16> = (0..usize::from(write_count)).map(|i| word(10 + 2 * i)).collect();
            if let Err(e) = fw.write_registers(write_address, &values) {
                return refuse(e);
            }
            match fw.read_registers(read_address, read_count) {
                Ok(words) => read_reply(function, &words),
                Err(e) => refuse(e),
            }
        }
        // Listed in a map but not implemented: RegisterMap::parse refuses such a map.
        _ => refuse(ModbusException::IllegalFunction),
    }
}

/// A read's normal reply: the function code, the byte count and the registers, big-endian.
fn read_reply(function: u8, words: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 2 * words.len());
    out.extend_from_slice(&[function, (words.len() * 2) as u8]);
    for w in words {
        out.extend_from_slice(&w.to_be_bytes());
    }
    out
}

// ----- RTU -----------------------------------------------------------------------------------------

/// Longest RTU frame (unit + 253-byte PDU + CRC).
pub const MAX_RTU_FRAME: usize = 256;

/// Expected length of a request frame (unit + PDU + CRC) from its first bytes, if known yet.
fn request_len(buf: &[u8]) -> Option<usize> {
    match *buf.get(1)? {
        3 | 4 | 6 => Some(8),
        16 => buf.get(6).map(|&n| 9 + usize::from(n)),
        23 => buf.get(10).map(|&n| 13 + usize::from(n)),
        // Any other function: only the inter-frame gap can end it.
        _ => None,
    }
}

/// One RTU line (pump side).
#[derive(Debug, Clone)]
pub struct RtuPort {
    unit_id: u8,
    gap_s: f64,
    buf: Vec<u8>,
    /// An overlong frame is being skipped until the next silent gap.
    skipping: bool,
    last_byte_s: f64,
    rejects: RejectLog,
}

impl RtuPort {
    pub fn new(unit_id: u8, baud: u32) -> Self {
        Self {
            unit_id,
            gap_s: frame_gap_s(baud),
            buf: Vec::new(),
            skipping: false,
            last_byte_s: f64::NEG_INFINITY,
            rejects: RejectLog::default(),
        }
    }

    /// Feeds received bytes; returns the complete frames (CRC checked, addressed to this unit or
    /// broadcast) as (unit, pdu). Everything else is recorded in [`RtuPort::rejects`].
    pub fn feed(&mut self, now_s: f64, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        if bytes.is_empty() {
            return frames;
        }
        if now_s - self.last_byte_s > self.gap_s {
            // A silence ended the previous frame.
            self.end_of_frame(&mut frames);
        }
        self.last_byte_s = now_s;
        for &b in bytes {
            if self.skipping {
                continue;
            }
            self.buf.push(b);
            if request_len(&self.buf) == Some(self.buf.len()) {
                let frame = core::mem::take(&mut self.buf);
                self.accept(&frame, &mut frames);
            } else if self.buf.len() > MAX_RTU_FRAME {
                let frame = core::mem::take(&mut self.buf);
                self.rejects.push(format!("frame longer than {MAX_RTU_FRAME} bytes"), &frame);
                self.skipping = true;
            }
        }
        frames
    }

    /// Call when the line has been idle: completes a frame whose length only a gap can tell, and
    /// reports a partial one.
    pub fn idle(&mut self, now_s: f64) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        if now_s - self.last_byte_s > self.gap_s {
            self.end_of_frame(&mut frames);
        }
        frames
    }

    /// The bytes received since the last gap form a frame now (or a rejected fragment).
    fn end_of_frame(&mut self, frames: &mut Vec<(u8, Vec<u8>)>) {
        self.skipping = false;
        let frame = core::mem::take(&mut self.buf);
        if frame.is_empty() {
            return;
        }
        if frame.len() >= 4 && request_len(&frame).is_none() {
            self.accept(&frame, frames);
        } else {
            self.rejects.push("incomplete frame (ended by a silent gap)", &frame);
        }
    }

    fn accept(&mut self, frame: &[u8], frames: &mut Vec<(u8, Vec<u8>)>) {
        let (body, crc) = frame.split_at(frame.len() - 2);
        if crc16_modbus(body).to_le_bytes() != [crc[0], crc[1]] {
            self.rejects.push("bad CRC", frame);
        } else if body[0] == self.unit_id || body[0] == 0 {
            frames.push((body[0], body[1..].to_vec()));
        } else {
            self.rejects.push(format!("for unit {} (this pump is unit {})", body[0], self.unit_id), frame);
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

    /// What this line rejected since the last call.
    pub fn rejects(&mut self) -> &mut RejectLog {
        &mut self.rejects
    }
}

// ----- TCP -----------------------------------------------------------------------------------------

/// Bytes of the MBAP header: transaction id, protocol id, length (each 2), unit id.
pub const MBAP_HEADER: usize = 7;
/// Largest MBAP length field: the unit id and the longest PDU (253 bytes).
pub const MAX_MBAP_LENGTH: usize = 254;

/// One request received over TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MbapRequest {
    pub transaction: u16,
    pub unit: u8,
    pub pdu: Vec<u8>,
}

/// The byte stream of one Modbus TCP connection (pump side).
#[derive(Debug, Clone, Default)]
pub struct MbapStream {
    buf: Vec<u8>,
    closed: bool,
    rejects: RejectLog,
}

impl MbapStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds received bytes; returns the complete requests. A header that cannot be valid closes the
    /// stream ([`MbapStream::is_closed`]): nothing after it is parsed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<MbapRequest> {
        let mut requests = Vec::new();
        if self.closed {
            return requests;
        }
        self.buf.extend_from_slice(bytes);
        while self.buf.len() >= 4 {
            let protocol = u16::from_be_bytes([self.buf[2], self.buf[3]]);
            if protocol != 0 {
                return self.close(format!("protocol id {protocol} is not Modbus (0)"), requests);
            }
            if self.buf.len() < 6 {
                break;
            }
            let length = usize::from(u16::from_be_bytes([self.buf[4], self.buf[5]]));
            if !(2..=MAX_MBAP_LENGTH).contains(&length) {
                return self.close(format!("MBAP length {length} outside 2..={MAX_MBAP_LENGTH}"), requests);
            }
            if self.buf.len() < 6 + length {
                break;
            }
            let frame: Vec<u8> = self.buf.drain(..6 + length).collect();
            requests.push(MbapRequest {
                transaction: u16::from_be_bytes([frame[0], frame[1]]),
                unit: frame[6],
                pdu: frame[MBAP_HEADER..].to_vec(),
            });
        }
        requests
    }

    fn close(&mut self, reason: String, requests: Vec<MbapRequest>) -> Vec<MbapRequest> {
        let rest = core::mem::take(&mut self.buf);
        self.rejects.push(reason, &rest);
        self.closed = true;
        requests
    }

    /// The stream lost its framing: the connection must be closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Bytes received that do not yet form a request (a client that stops mid-frame).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The reply frame to `request` for a pump with unit id `unit_id` (see the module notes).
    pub fn answer(fw: &mut Firmware, unit_id: u8, request: &MbapRequest) -> Vec<u8> {
        let served = request.unit == unit_id || request.unit == 0 || request.unit == 0xFF;
        let pdu = if served {
            handle_pdu(fw, &request.pdu)
        } else {
            exception(request.pdu.first().copied().unwrap_or(0), GATEWAY_TARGET_FAILED)
        };
        let length = u16::try_from(pdu.len() + 1).unwrap_or(u16::MAX);
        let mut frame = Vec::with_capacity(MBAP_HEADER + pdu.len());
        frame.extend_from_slice(&request.transaction.to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&length.to_be_bytes());
        frame.push(request.unit);
        frame.extend(pdu);
        frame
    }

    /// What this connection rejected since the last call.
    pub fn rejects(&mut self) -> &mut RejectLog {
        &mut self.rejects
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
    fn only_the_maps_function_codes_are_served_and_others_change_nothing() {
        let mut fw = pump();
        fw.acknowledge();
        // fc5 "write coil 22 ON" would start the motor on a server that mapped coils onto registers.
        assert_eq!(handle_pdu(&mut fw, &[5, 0, 22, 0xFF, 0]), vec![0x85, 1]);
        assert_eq!(handle_pdu(&mut fw, &[15, 0, 22, 0, 1, 1, 1]), vec![0x8F, 1]);
        for code in [1u8, 2, 8, 11, 17, 20, 24, 43, 200, 255] {
            assert_eq!(handle_pdu(&mut fw, &[code, 0, 0, 0, 1]), vec![code | 0x80, 1], "fc {code}");
        }
        assert_eq!(fw.run_mode(), crate::firmware::RunMode::Stop);
    }

    #[test]
    fn quantities_and_structure_are_exception_3_before_any_address() {
        let mut fw = pump();
        assert_eq!(handle_pdu(&mut fw, &[3, 0, 0, 0, 0]), vec![0x83, 3]);
        assert_eq!(handle_pdu(&mut fw, &[4, 0, 0, 0, 126]), vec![0x84, 3]);
        assert_eq!(handle_pdu(&mut fw, &[3, 0xFF, 0xFF, 0, 126]), vec![0x83, 3]); // not 2
        assert_eq!(handle_pdu(&mut fw, &[3, 0, 0, 0]), vec![0x83, 3]); // short
        assert_eq!(handle_pdu(&mut fw, &[6, 0, 25, 0, 100, 0]), vec![0x86, 3]); // long
        assert_eq!(handle_pdu(&mut fw, &[16, 0, 25, 0, 0, 0]), vec![0x90, 3]); // zero registers
        assert_eq!(handle_pdu(&mut fw, &[16, 0, 25, 0, 1, 3, 0, 100]), vec![0x90, 3]); // byte count
        assert_eq!(handle_pdu(&mut fw, &[3, 0, 8, 0, 1]), vec![0x83, 2]);
        // Addresses before values: clear_counters = 9 is out of range, but word 27 is unmapped: 2.
        assert_eq!(handle_pdu(&mut fw, &[16, 0, 26, 0, 2, 4, 0, 9, 0, 0]), vec![0x90, 2]);
        assert_eq!(handle_pdu(&mut fw, &[16, 0, 25, 0, 2, 4, 0, 100, 0, 9]), vec![0x90, 3]);
    }

    #[test]
    fn fc23_writes_then_reads_in_one_transaction() {
        let mut fw = pump();
        // Write the heartbeat (24) to 7 and read registers 24–25 back: the read sees the write.
        let reply = handle_pdu(&mut fw, &[23, 0, 24, 0, 2, 0, 24, 0, 1, 2, 0, 7]);
        assert_eq!(reply, vec![23, 4, 0, 7, 0x01, 0xF4]); // heartbeat 7, watchdog 500 ms
                                                          // Read the telemetry block (30, 19 registers) while writing the heartbeat.
        let reply = handle_pdu(&mut fw, &[23, 0, 30, 0, 19, 0, 24, 0, 1, 2, 0, 8]);
        assert_eq!((reply[0], reply[1], reply.len()), (23, 38, 40));
        assert_eq!(handle_pdu(&mut fw, &[3, 0, 24, 0, 1]), vec![3, 2, 0, 8]);
    }

    #[test]
    fn fc23_refuses_as_a_whole_and_writes_nothing() {
        let mut fw = pump();
        let heartbeat = |fw: &mut Firmware| handle_pdu(fw, &[3, 0, 24, 0, 1]);
        let before = heartbeat(&mut fw);
        let refused: [(&[u8], u8); 7] = [
            (&[23, 0, 30, 0, 0, 0, 24, 0, 1, 2, 0, 9], 3),   // read quantity 0
            (&[23, 0, 30, 0, 126, 0, 24, 0, 1, 2, 0, 9], 3), // read quantity 126
            (&[23, 0, 30, 0, 19, 0, 24, 0, 0, 0], 3),        // write quantity 0
            (&[23, 0, 30, 0, 19, 0, 24, 0, 1, 3, 0, 9], 3),  // byte count
            (&[23, 0, 30, 0, 19, 0, 24, 0, 1, 2, 0], 3),     // short
            (&[23, 0xFF, 0, 0, 1, 0, 24, 0, 1, 2, 0, 9], 2), // the read range is outside the map
            (&[23, 0, 30, 0, 19, 0, 30, 0, 1, 2, 0, 9], 2),  // the write is to a read-only register
        ];
        for (pdu, code) in refused {
            assert_eq!(handle_pdu(&mut fw, pdu), vec![23 | 0x80, code], "{pdu:?}");
            assert_eq!(heartbeat(&mut fw), before, "{pdu:?} wrote");
        }
        // 122 registers to write: one more than function 23 allows.
        let mut long = vec![23, 0, 30, 0, 1, 0, 24, 0, 122, 244];
        long.extend(std::iter::repeat_n(0, 244));
        assert_eq!(handle_pdu(&mut fw, &long), vec![0x97, 3]);
    }

    #[test]
    fn an_rtu_fc23_frame_ends_at_its_byte_count() {
        let mut port = RtuPort::new(1, 19_200);
        let frame = with_crc(vec![1, 23, 0, 30, 0, 19, 0, 24, 0, 1, 2, 0, 9]);
        let (head, tail) = frame.split_at(7);
        assert!(port.feed(0.0, head).is_empty());
        let frames = port.feed(0.0001, tail);
        assert_eq!(frames, vec![(1, frame[1..frame.len() - 2].to_vec())]);
    }

    #[test]
    fn fc6_echoes_write_only_registers_exactly() {
        let mut fw = pump();
        for (address, value) in [(23u8, 1u8), (26, 1), (113, 1)] {
            assert_eq!(handle_pdu(&mut fw, &[6, 0, address, 0, value]), vec![6, 0, address, 0, value]);
        }
    }

    fn mbap(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut out = transaction.to_be_bytes().to_vec();
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
        out.push(unit);
        out.extend_from_slice(pdu);
        out
    }

    #[test]
    fn mbap_requests_split_or_joined_are_cut_by_their_length() {
        let mut stream = MbapStream::new();
        let mut bytes = mbap(7, 1, &[3, 0, 0, 0, 2]);
        bytes.extend(mbap(8, 1, &[3, 0, 2, 0, 1]));
        let (head, tail) = bytes.split_at(10);
        assert!(stream.feed(head).len() == 1 || stream.pending() > 0);
        let mut requests = stream.feed(tail);
        if requests.len() == 1 {
            // The first came with the head.
            requests.insert(0, MbapRequest { transaction: 7, unit: 1, pdu: vec![3, 0, 0, 0, 2] });
        }
        assert_eq!(requests[1], MbapRequest { transaction: 8, unit: 1, pdu: vec![3, 0, 2, 0, 1] });
        let mut fw = pump();
        assert_eq!(
            MbapStream::answer(&mut fw, 1, &requests[0]),
            [&[0u8, 7, 0, 0, 0, 7, 1][..], &[3, 4, 0x4B, 0x50, 0, 1]].concat()
        );
        assert!(!stream.is_closed() && stream.pending() == 0);
    }

    #[test]
    fn an_impossible_mbap_header_closes_the_stream() {
        for bad in [vec![0u8, 1, 0, 9], vec![0, 1, 0, 0, 0, 0], vec![0, 1, 0, 0, 0, 1], vec![0, 1, 0, 0, 0, 255]] {
            let mut stream = MbapStream::new();
            let mut bytes = bad.clone();
            bytes.extend(mbap(2, 1, &[3, 0, 0, 0, 1]));
            assert!(stream.feed(&bytes).is_empty(), "{bad:?}");
            assert!(stream.is_closed());
            assert!(stream.feed(&mbap(3, 1, &[3, 0, 0, 0, 1])).is_empty());
            let (rejects, _) = stream.rejects().take();
            assert_eq!(rejects.len(), 1);
        }
        // 254 is the longest valid length.
        let mut stream = MbapStream::new();
        let mut pdu = vec![16, 0, 100, 0, 123, 246];
        pdu.extend([0u8; 246]);
        assert_eq!(stream.feed(&mbap(1, 1, &pdu)).len(), 1);
        assert!(!stream.is_closed());
    }

    #[test]
    fn tcp_serves_its_unit_0_and_255_and_answers_others_with_exception_0x0b() {
        let mut fw = pump();
        for unit in [1u8, 0, 255] {
            let reply = MbapStream::answer(&mut fw, 1, &MbapRequest { transaction: 5, unit, pdu: vec![3, 0, 0, 0, 1] });
            assert_eq!(reply, vec![0, 5, 0, 0, 0, 5, unit, 3, 2, 0x4B, 0x50]);
        }
        let reply = MbapStream::answer(&mut fw, 1, &MbapRequest { transaction: 6, unit: 7, pdu: vec![6, 0, 22, 0, 1] });
        assert_eq!(reply, vec![0, 6, 0, 0, 0, 3, 7, 0x86, 0x0B]);
    }

    #[test]
    fn rtu_rejections_are_recorded_with_their_reason() {
        let mut port = RtuPort::new(1, 19_200);
        let mut bad = with_crc(vec![1, 3, 0, 0, 0, 2]);
        bad[7] ^= 0xFF;
        port.feed(0.0, &bad);
        port.feed(1.0, &with_crc(vec![2, 3, 0, 0, 0, 2]));
        port.feed(2.0, &[1, 3, 0]);
        port.idle(3.0);
        port.feed(4.0, &[0x55; 300]);
        port.idle(5.0);
        let (rejects, overflow) = port.rejects().take();
        let reasons: Vec<&str> = rejects.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "bad CRC",
                "for unit 2 (this pump is unit 1)",
                "incomplete frame (ended by a silent gap)",
                "frame longer than 256 bytes"
            ]
        );
        assert_eq!((rejects[3].len, rejects[3].head.len(), overflow), (257, crate::wire::HEAD_BYTES, 0));
        // After the gap the line serves again.
        assert_eq!(port.feed(6.0, &with_crc(vec![1, 3, 0, 0, 0, 2])).len(), 1);
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
            let mut stream = MbapStream::new();
            for request in stream.feed(&pdu) {
                let _ = MbapStream::answer(&mut fw, 1, &request);
            }
        }
    }
}
