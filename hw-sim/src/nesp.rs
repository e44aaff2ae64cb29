//! The pump side of the New Era NE-1000 RS-232 protocol (see `new-era-protocol.md`), on top of
//! [`Firmware`].
//!
//! Pure: no I/O and no clock. The caller owns the serial line and the pumps; it feeds received bytes
//! with the time they arrived ([`NespPort::feed`]), routes each [`Packet`] to the pump at
//! [`address_of`] (or, for a network burst, to every pump in [`burst_targets`]), writes the reply
//! [`NespPort::handle`] returns, and calls [`NespPort::poll`] for every address periodically.
//!
//! # Model choices (documented because the manual leaves them open)
//!
//! - **Rate limits per diameter.** The drive's top plunger speed moves the firmware's absolute maximum
//!   ([`PUMP_MAX_RATE_ML_H`], 1200 mL/h) on the widest syringe it accepts (40 mm), so the maximum rate
//!   is `1200 mL/h × (d / 40 mm)²` (530 mL/h on a 26.59 mm syringe: `RAT1200MH` → `?OOR`, as in the
//!   spec's example 5). The minimum is that maximum / 100 000. A rate of 0 is out of range.
//! - **Numbers in requests**: digits with at most one decimal point, at most 4 digits; anything else
//!   (`1e-05`, `12345`, `1.2.3`) is out of range (`?OOR`).
//! - **Addresses**: one or two leading digits; a packet without an address is for address 0.
//! - **One reply per packet, always** (except the empty packets and bursts the manual leaves silent): a
//!   client that waits for a reply never waits forever.
//! - **Empty packets** (a bare CR, an empty safe frame) are ignored (no reply).
//! - **Broken safe frames** (bad CRC, a length byte below 4, no ETX) are answered `?COM`, by the pump
//!   whose address the (untrusted) data starts with, or, when no address can be read (a bad length
//!   byte comes before any data), by the line's first pump ([`NespPort::target_of`]). After a bad
//!   length byte the rest of that frame is skipped up to its ETX or a [`SKIP_GAP_S`] silence.
//! - An STX arriving in the middle of a basic line discards that line (nesp-lib's safe frames carry no
//!   CR). A basic line longer than [`MAX_LINE`] bytes is kept to its end and answered `?` (no command is
//!   that long), by the address it starts with.
//! - An incomplete safe packet is discarded after a [`SAFE_GAP_S`] silence (the manual's rule).
//! - Every packet discarded or answered `?COM` / overlong is recorded in [`NespPort::rejects`] for the
//!   server's diagnostics.
//! - **Pumping program**: `DIA`, `DIR STK` and rate-unit changes are refused with `?NA` unless the
//!   program is stopped (paused counts as not stopped); `DIR` while running is allowed with continuous
//!   pumping (`VOL 0`) only. `VOL <value>` is accepted at any time; set while running or paused, the
//!   new target counts from that moment. `RUN` from stopped re-arms the volume target; from paused it
//!   resumes towards the same target. `PUR` infuses at the maximum rate until `STP` (→ stopped), then
//!   restores the programmed rate.
//! - **Recognised but not emulated** commands (`PHN FUN TRG IN ADR AL BUZ`) answer `?IGN`.
//! - **Alarms**: firmware `RESET` → `A?R`; `WATCHDOG` and the safe-mode timeout → `A?T`; `MOTOR_STALL`,
//!   `END_OF_TRAVEL`, `OVER_PRESSURE` → `A?S`. Reporting an alarm acknowledges the firmware; an alarm
//!   whose condition persists (e.g. end of travel) is reported once per latch, not on every command.
//! - **Firmware watchdog**: a New Era pump has no register heartbeat; motion it starts is not guarded
//!   by the register watchdog ([`Firmware::run_unwatched`]) — safe mode's timeout is its protection.
//!   Polling the port never feeds the register watchdog, so a Modbus client of the same simulated
//!   pump keeps its own guarantee.
//! - `DIS` counts **motor motion**, as a real NE-1000 does (it has no plunger sensor): the firmware's
//!   stepper counters ([`Firmware::motor_infused_ml`]) since the last `CLD INF` / `CLD WDR` (baselines
//!   held here, so the firmware counters are never cleared from this side); the `VOL` target counts the
//!   same way. Lead-screw slack therefore shows in the delivered volume, never in `DIS`.

use std::collections::BTreeMap;

use crate::firmware::{alarm, Firmware, RunMode, PUMP_MAX_RATE_ML_H};
use crate::regmap::ModbusException;
use crate::wire::RejectLog;

pub const STX: u8 = 0x02;
pub const ETX: u8 = 0x03;
pub const CR: u8 = 0x0D;
/// An incomplete safe packet is discarded after this inter-byte gap (s).
pub const SAFE_GAP_S: f64 = 0.5;
/// A basic line longer than this is answered `?` at its CR (only its first bytes are kept).
pub const MAX_LINE: usize = 256;
/// After a safe frame's impossible length byte, its remaining bytes are skipped up to an ETX or a
/// silence this long (s).
pub const SKIP_GAP_S: f64 = 0.05;
/// The `VER` reply.
pub const VERSION: &str = "NE1000V3.928";
/// Widest syringe the pump accepts (mm): the absolute maximum rate applies to it.
const MAX_DIAMETER_MM: f64 = 40.0;
/// Ratio between the maximum and the minimum rate for one syringe.
const RATE_SPAN: f64 = 1.0e5;

/// CRC-16/XMODEM (poly 0x1021, init 0, no reflection, no final xor).
pub fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// How a packet was (or a reply is) framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Host → pump `<data> CR`; pump → host `STX <data> ETX`.
    Basic,
    /// `STX <len> <data> <crc-hi> <crc-lo> ETX`.
    Safe,
}

/// One received packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// A command for one pump; `command` is upper-cased, stripped, without the address (empty: status).
    Command { framing: Framing, address: u8, command: String },
    /// A network command burst (`0 rat 100 * 1 rat 250 *`): `(address, command)` pairs, no replies.
    Burst { framing: Framing, commands: Vec<(u8, String)> },
    /// Bad CRC, bad length or missing ETX: answered `?COM` by `address`, or by the line's first pump if
    /// no address could be read (see [`NespPort::target_of`]).
    Broken { framing: Framing, address: Option<u8> },
    /// A basic line longer than [`MAX_LINE`]: answered `?` by the address it starts with.
    Overlong { address: u8 },
}

/// The address a packet names: `None` for a burst (see [`burst_targets`]) and for a broken packet
/// whose address could not be read ([`NespPort::target_of`] routes that one).
pub fn address_of(packet: &Packet) -> Option<u8> {
    match packet {
        Packet::Command { address, .. } | Packet::Overlong { address } => Some(*address),
        Packet::Broken { address, .. } => *address,
        Packet::Burst { .. } => None,
    }
}

/// The distinct addresses a burst line executes on, in first-seen order (empty for other packets).
pub fn burst_targets(packet: &Packet) -> Vec<u8> {
    let mut out = Vec::new();
    if let Packet::Burst { commands, .. } = packet {
        for (a, _) in commands {
            if !out.contains(a) {
                out.push(*a);
            }
        }
    }
    out
}

/// Breaks a reply for the "corrupt" communication fault: a safe frame gets a wrong CRC, a basic frame
/// a non-ASCII byte in place of its first data byte after the address.
pub fn corrupt(reply: &[u8]) -> Vec<u8> {
    let mut out = reply.to_vec();
    let n = out.len();
    let safe = n >= 5 && out[0] == STX && usize::from(out[1]) + 1 == n && out[n - 1] == ETX;
    if safe {
        out[n - 2] ^= 0xA5;
    } else if n >= 4 {
        out[3] = 0xFF;
    } else if let Some(last) = out.last_mut() {
        *last ^= 0xFF;
    }
    out
}

/// Frames reply data.
pub fn frame(framing: Framing, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 5);
    out.push(STX);
    match framing {
        Framing::Basic => out.extend_from_slice(data),
        Framing::Safe => {
            // Reply data is short (< 64 bytes), so the length always fits.
            out.push(u8::try_from(data.len() + 4).unwrap_or(u8::MAX));
            out.extend_from_slice(data);
            out.extend_from_slice(&crc16_xmodem(data).to_be_bytes());
        }
    }
    out.push(ETX);
    out
}

/// A number in the pump's 5-character style: at most 4 digits, always a decimal point
/// (`26.59`, `1000.`, `0.500`). Negative or non-finite values show as `0.000`.
pub fn format_number(v: f64) -> String {
    let v = if v.is_finite() && v > 0.0 { v } else { 0.0 };
    for decimals in (1..=3).rev() {
        let s = format!("{v:.decimals$}");
        if s.bytes().filter(u8::is_ascii_digit).count() <= 4 {
            return s;
        }
    }
    format!("{v:.0}.")
}

/// Parses a request number: digits with at most one decimal point, 1–4 digits.
pub fn parse_number(s: &str) -> Option<f64> {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    let points = s.bytes().filter(|&b| b == b'.').count();
    if digits == 0 || digits > 4 || points > 1 || digits + points != s.len() {
        return None;
    }
    s.parse().ok()
}

/// Volume units (`VOL UL` / `VOL ML`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeUnits {
    Ul,
    Ml,
}

impl VolumeUnits {
    fn ml(self) -> f64 {
        match self {
            VolumeUnits::Ul => 1.0e-3,
            VolumeUnits::Ml => 1.0,
        }
    }
    fn code(self) -> &'static str {
        match self {
            VolumeUnits::Ul => "UL",
            VolumeUnits::Ml => "ML",
        }
    }
}

/// Rate units (`UM` µL/min, `MM` mL/min, `UH` µL/h, `MH` mL/h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnits {
    UlPerMin,
    MlPerMin,
    UlPerHour,
    MlPerHour,
}

impl RateUnits {
    /// mL/h per unit.
    fn ml_h(self) -> f64 {
        match self {
            RateUnits::UlPerMin => 60.0e-3,
            RateUnits::MlPerMin => 60.0,
            RateUnits::UlPerHour => 1.0e-3,
            RateUnits::MlPerHour => 1.0,
        }
    }
    fn code(self) -> &'static str {
        match self {
            RateUnits::UlPerMin => "UM",
            RateUnits::MlPerMin => "MM",
            RateUnits::UlPerHour => "UH",
            RateUnits::MlPerHour => "MH",
        }
    }
    fn from_code(s: &str) -> Option<Self> {
        Some(match s {
            "UM" => RateUnits::UlPerMin,
            "MM" => RateUnits::MlPerMin,
            "UH" => RateUnits::UlPerHour,
            "MH" => RateUnits::MlPerHour,
            _ => return None,
        })
    }
}

/// Pumping direction of the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Infuse,
    Withdraw,
    /// "Sticky": continue the previous phase; the first phase follows the TTL pin (low → infuse).
    Sticky,
}

/// State of one pump's pumping program, as the port sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramState {
    Stopped,
    Running,
    Paused,
    Purging,
}

/// The rate range (mL/h) the pump accepts for a syringe diameter.
pub fn rate_range_ml_h(diameter_mm: f64) -> (f64, f64) {
    let ratio = diameter_mm / MAX_DIAMETER_MM;
    let max = PUMP_MAX_RATE_ML_H * ratio * ratio;
    (max / RATE_SPAN, max)
}

#[derive(Debug, Clone)]
struct AddressState {
    safe_timeout_s: u8,
    last_valid_s: f64,
    /// The safe-mode watchdog fired since the last valid packet.
    timed_out: bool,
    /// A safe-mode timeout alarm not yet reported.
    pending_timeout: bool,
    /// Firmware alarm bits already reported whose condition persists.
    reported_bits: u16,
    volume_units: Option<VolumeUnits>,
    rate_units: Option<RateUnits>,
    target_ml: f64,
    direction: Direction,
    program: ProgramState,
    /// The programmed rate, held while purging.
    purge_saved_rate_ml_h: Option<f64>,
    infused_base_ml: f64,
    withdrawn_base_ml: f64,
}

impl AddressState {
    fn new(now_s: f64) -> Self {
        Self {
            safe_timeout_s: 0,
            last_valid_s: now_s,
            timed_out: false,
            pending_timeout: false,
            reported_bits: 0,
            volume_units: None,
            rate_units: None,
            target_ml: 0.0,
            direction: Direction::Infuse,
            program: ProgramState::Stopped,
            purge_saved_rate_ml_h: None,
            infused_base_ml: 0.0,
            withdrawn_base_ml: 0.0,
        }
    }

    fn framing(&self) -> Framing {
        if self.safe_timeout_s > 0 {
            Framing::Safe
        } else {
            Framing::Basic
        }
    }

    fn volume_units(&self, pump: &Firmware) -> VolumeUnits {
        self.volume_units.unwrap_or(if pump.diameter_mm() <= 14.0 { VolumeUnits::Ul } else { VolumeUnits::Ml })
    }

    fn rate_units(&self, pump: &Firmware) -> RateUnits {
        self.rate_units.unwrap_or(if pump.diameter_mm() <= 14.0 { RateUnits::UlPerHour } else { RateUnits::MlPerHour })
    }

    fn run_mode(&self) -> RunMode {
        match self.direction {
            Direction::Withdraw => RunMode::Withdraw,
            Direction::Infuse | Direction::Sticky => RunMode::Infuse,
        }
    }

    /// Ends a purge: restores the programmed rate and volume target (the motor is already stopped).
    fn end_purge(&mut self, pump: &mut Firmware) {
        if let Some(rate) = self.purge_saved_rate_ml_h.take() {
            let _ = pump.set_rate_ml_h(rate);
            pump.set_volume_target(target(self.target_ml));
        }
    }

    /// Follows what the firmware did on its own (target reached, alarm stop, external start).
    fn sync(&mut self, pump: &mut Firmware) {
        let moving = pump.run_mode() != RunMode::Stop;
        match self.program {
            ProgramState::Running | ProgramState::Purging if !moving => {
                self.end_purge(pump);
                self.program = ProgramState::Stopped;
            }
            ProgramState::Stopped | ProgramState::Paused if moving => self.program = ProgramState::Running,
            _ => {}
        }
        self.reported_bits &= pump.alarms();
    }

    fn status_letter(&self, pump: &Firmware) -> char {
        match self.program {
            ProgramState::Stopped => 'S',
            ProgramState::Paused => 'P',
            ProgramState::Purging => 'X',
            ProgramState::Running => {
                if pump.run_mode() == RunMode::Withdraw {
                    'W'
                } else {
                    'I'
                }
            }
        }
    }

    /// The alarm to report, if any: R first, then T, then S.
    fn pending_alarm(&self, pump: &Firmware) -> Option<char> {
        let bits = pump.alarms() & !self.reported_bits;
        if bits & alarm::RESET != 0 {
            Some('R')
        } else if self.pending_timeout || bits & alarm::WATCHDOG != 0 {
            Some('T')
        } else if bits != 0 {
            Some('S')
        } else {
            None
        }
    }

    /// Stops the pump and the program (alarm, timeout).
    fn halt(&mut self, pump: &mut Firmware) {
        let _ = pump.run_unwatched(RunMode::Stop);
        self.end_purge(pump);
        self.program = ProgramState::Stopped;
    }
}

fn target(target_ml: f64) -> Option<f64> {
    (target_ml > 0.0).then_some(target_ml)
}

/// Outcome of one command.
enum Reply {
    /// Status only, or status followed by data.
    Data(String),
    /// `?`, `?NA`, `?OOR`, `?IGN` after the prompt.
    Error(&'static str),
}

fn na(e: ModbusException) -> Reply {
    match e {
        ModbusException::IllegalDataValue => Reply::Error("?OOR"),
        _ => Reply::Error("?NA"),
    }
}

/// Reassembly of incoming bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxState {
    Idle,
    Basic,
    /// A basic line past [`MAX_LINE`]: its first bytes are kept, the rest skipped up to the CR.
    BasicOverlong,
    Safe,
    /// The rest of a safe frame whose length byte was impossible, up to its ETX or a silence.
    Skip,
}

/// One serial line: receive buffer and per-address protocol state. The pumps are the caller's.
#[derive(Debug, Clone)]
pub struct NespPort {
    rx: Vec<u8>,
    rx_state: RxState,
    last_byte_s: f64,
    pumps: BTreeMap<u8, AddressState>,
    rejects: RejectLog,
}

impl Default for NespPort {
    fn default() -> Self {
        Self::new()
    }
}

impl NespPort {
    pub fn new() -> Self {
        Self {
            rx: Vec::new(),
            rx_state: RxState::Idle,
            last_byte_s: 0.0,
            pumps: BTreeMap::new(),
            rejects: RejectLog::default(),
        }
    }

    fn state(&mut self, now_s: f64, address: u8) -> &mut AddressState {
        self.pumps.entry(address).or_insert_with(|| AddressState::new(now_s))
    }

    /// What this line rejected since the last call.
    pub fn rejects(&mut self) -> &mut RejectLog {
        &mut self.rejects
    }

    /// The address that must answer `packet`: the one it names, or for a broken packet with no
    /// readable address the line's first pump (the lowest address this port has served or polled;
    /// 0 before any). `None` for a burst, which nobody answers.
    pub fn target_of(&self, packet: &Packet) -> Option<u8> {
        match packet {
            Packet::Broken { address: None, .. } => Some(self.pumps.keys().next().copied().unwrap_or(0)),
            Packet::Burst { .. } => None,
            _ => address_of(packet),
        }
    }

    /// Safe-mode timeout `n` (s) of an address; 0 = basic mode.
    pub fn safe_timeout_s(&self, address: u8) -> u8 {
        self.pumps.get(&address).map_or(0, |s| s.safe_timeout_s)
    }

    /// The framing replies of an address currently use.
    pub fn framing(&self, address: u8) -> Framing {
        self.pumps.get(&address).map_or(Framing::Basic, AddressState::framing)
    }

    /// Program state of an address as last seen (call [`NespPort::poll`] first to follow the firmware).
    pub fn program(&self, address: u8) -> ProgramState {
        self.pumps.get(&address).map_or(ProgramState::Stopped, |s| s.program)
    }

    /// Sets the rate units of an address, as stored in a real pump's non-volatile memory (e.g. to
    /// reproduce a capture taken from a pump left in µL/h).
    pub fn set_rate_units(&mut self, address: u8, units: RateUnits) {
        self.state(0.0, address).rate_units = Some(units);
    }

    /// Accepts received bytes (all arriving at `now_s`) and returns the completed packets.
    pub fn feed(&mut self, now_s: f64, bytes: &[u8]) -> Vec<Packet> {
        let mut out = Vec::new();
        if bytes.is_empty() {
            return out;
        }
        let silence = now_s - self.last_byte_s;
        if self.rx_state == RxState::Safe && silence > SAFE_GAP_S {
            let partial = std::mem::take(&mut self.rx);
            self.rejects.push(format!("incomplete safe packet (silent for over {SAFE_GAP_S} s)"), &partial);
            self.rx_state = RxState::Idle;
        }
        if self.rx_state == RxState::Skip && silence > SKIP_GAP_S {
            self.rx_state = RxState::Idle;
        }
        self.last_byte_s = now_s;
        for &b in bytes {
            match self.rx_state {
                RxState::Idle => {
                    if b == STX {
                        self.rx.push(b);
                        self.rx_state = RxState::Safe;
                    } else if b.is_ascii_graphic() || b >= 0x80 {
                        self.rx.push(b);
                        self.rx_state = RxState::Basic;
                    }
                }
                RxState::Basic | RxState::BasicOverlong => {
                    if b == CR {
                        let line = std::mem::take(&mut self.rx);
                        if self.rx_state == RxState::BasicOverlong {
                            self.rejects.push(format!("line longer than {MAX_LINE} bytes"), &line);
                            let (address, _) = split_address(&normalise(&line));
                            out.push(Packet::Overlong { address });
                        } else if let Some(p) = parse_body(Framing::Basic, &line) {
                            out.push(p);
                        }
                        self.rx_state = RxState::Idle;
                    } else if b == STX {
                        let line = std::mem::take(&mut self.rx);
                        self.rejects.push("basic line cut off by STX", &line);
                        self.rx.push(b);
                        self.rx_state = RxState::Safe;
                    } else if (b.is_ascii_graphic() || b >= 0x80) && self.rx_state == RxState::Basic {
                        if self.rx.len() >= MAX_LINE {
                            self.rx_state = RxState::BasicOverlong;
                        } else {
                            self.rx.push(b);
                        }
                    }
                }
                RxState::Safe => {
                    self.rx.push(b);
                    let len = usize::from(self.rx[1]);
                    if self.rx.len() == 2 && len < 4 {
                        let frame = std::mem::take(&mut self.rx);
                        self.rejects.push(format!("safe packet length byte {len} (at least 4)"), &frame);
                        self.rx_state = RxState::Skip;
                        out.push(Packet::Broken { framing: Framing::Safe, address: None });
                    } else if self.rx.len() == len + 1 {
                        let frame = std::mem::take(&mut self.rx);
                        self.rx_state = RxState::Idle;
                        if let Some(p) = parse_safe(&frame) {
                            if matches!(p, Packet::Broken { .. }) {
                                self.rejects.push("safe packet with a bad CRC or no ETX", &frame);
                            }
                            out.push(p);
                        }
                    }
                }
                RxState::Skip => {
                    if b == ETX {
                        self.rx_state = RxState::Idle;
                    }
                }
            }
        }
        out
    }

    /// Runs the safe-mode watchdog of one address and follows its firmware. Call periodically for every
    /// address. It never feeds the register watchdog (see the module notes).
    pub fn poll(&mut self, now_s: f64, address: u8, pump: &mut Firmware) {
        let st = self.state(now_s, address);
        st.sync(pump);
        if st.safe_timeout_s > 0 && !st.timed_out && now_s - st.last_valid_s >= f64::from(st.safe_timeout_s) {
            st.timed_out = true;
            st.pending_timeout = true;
            st.halt(pump);
        }
    }

    /// Executes one packet against the pump at [`NespPort::target_of`]`(packet)` and returns the reply
    /// bytes, or `None` for a burst (use [`NespPort::handle_burst`]).
    pub fn handle(&mut self, now_s: f64, packet: &Packet, pump: &mut Firmware) -> Option<Vec<u8>> {
        let address = self.target_of(packet)?;
        match packet {
            Packet::Command { command, .. } => Some(self.execute(now_s, address, command, pump)),
            Packet::Broken { .. } | Packet::Overlong { .. } => {
                let error = if matches!(packet, Packet::Broken { .. }) { "?COM" } else { "?" };
                self.poll(now_s, address, pump);
                let st = self.state(now_s, address);
                let data = format!("{address:02}{}{error}", st.status_letter(pump));
                Some(frame(st.framing(), data.as_bytes()))
            }
            Packet::Burst { .. } => None,
        }
    }

    /// Executes the commands of a burst line addressed to `address` on its pump (no reply).
    pub fn handle_burst(&mut self, now_s: f64, packet: &Packet, address: u8, pump: &mut Firmware) {
        if let Packet::Burst { commands, .. } = packet {
            for (a, command) in commands {
                if *a == address {
                    let _ = self.execute(now_s, address, command, pump);
                }
            }
        }
    }

    /// Runs one valid command and frames its reply.
    fn execute(&mut self, now_s: f64, address: u8, command: &str, pump: &mut Firmware) -> Vec<u8> {
        self.poll(now_s, address, pump);
        let st = self.state(now_s, address);
        st.last_valid_s = now_s;
        st.timed_out = false;
        if let Some(letter) = st.pending_alarm(pump) {
            // The command acknowledges the alarm and is not executed.
            st.pending_timeout = false;
            pump.acknowledge();
            st.reported_bits = pump.alarms();
            st.halt(pump);
            let data = format!("{address:02}A?{letter}");
            return frame(alarm_reply_framing(command, st.framing()), data.as_bytes());
        }
        let reply = run_command(st, now_s, command, pump);
        st.sync(pump);
        let prompt = format!("{address:02}{}", st.status_letter(pump));
        let data = match reply {
            Reply::Data(d) => prompt + &d,
            Reply::Error(e) => prompt + e,
        };
        frame(st.framing(), data.as_bytes())
    }
}

/// Framing of an alarm reply to a command that was not executed. A `SAF<n>` set is answered in the
/// framing it asks for (safe when n > 0), as the spec's capture shows for `SAF0` (basic) and as
/// nesp-lib requires for `SAF<n>` (it reads that reply as a safe frame even at power-up); any other
/// command in the current framing.
fn alarm_reply_framing(command: &str, current: Framing) -> Framing {
    match command.strip_prefix("SAF").and_then(|n| n.parse::<u16>().ok()) {
        Some(0) => Framing::Basic,
        Some(_) => Framing::Safe,
        None => current,
    }
}

/// Upper-cases and strips spaces and control characters; non-ASCII bytes become `~` (never valid).
fn normalise(bytes: &[u8]) -> String {
    bytes
        .iter()
        .filter(|b| b.is_ascii_graphic() || **b >= 0x80)
        .map(|&b| if b >= 0x80 { '~' } else { char::from(b.to_ascii_uppercase()) })
        .collect()
}

/// Splits `<address><command>`; no leading digits → address 0.
fn split_address(s: &str) -> (u8, String) {
    let digits = s.bytes().take(2).take_while(u8::is_ascii_digit).count();
    let address = s[..digits].parse().unwrap_or(0);
    (address, s[digits..].to_owned())
}

fn parse_body(framing: Framing, bytes: &[u8]) -> Option<Packet> {
    let s = normalise(bytes);
    if s.is_empty() {
        return None;
    }
    if s.contains('*') {
        let commands: Vec<(u8, String)> = s.split('*').filter(|p| !p.is_empty()).map(split_address).collect();
        return Some(Packet::Burst { framing, commands });
    }
    let (address, command) = split_address(&s);
    Some(Packet::Command { framing, address, command })
}

/// A complete safe frame (`STX len data crc crc ETX`, `len` ≥ 4, `frame.len() == len + 1`).
fn parse_safe(frame: &[u8]) -> Option<Packet> {
    let n = frame.len();
    let data = &frame[2..n - 3];
    let crc = u16::from_be_bytes([frame[n - 3], frame[n - 2]]);
    if frame[n - 1] != ETX || crc != crc16_xmodem(data) {
        let s = normalise(data);
        let digits = s.bytes().take(2).take_while(u8::is_ascii_digit).count();
        let address = if digits > 0 { s[..digits].parse().ok() } else { None };
        return Some(Packet::Broken { framing: Framing::Safe, address });
    }
    parse_body(Framing::Safe, data)
}

/// Executes one command (no pending alarm) and returns the reply after the prompt.
fn run_command(st: &mut AddressState, now_s: f64, command: &str, pump: &mut Firmware) -> Reply {
    let (name, arg) =
        if command.len() >= 3 && command.is_char_boundary(3) { command.split_at(3) } else { (command, "") };
    let stopped = st.program == ProgramState::Stopped;
    match name {
        "" => Reply::Data(String::new()),
        "SAF" => {
            if arg.is_empty() {
                return Reply::Data(st.safe_timeout_s.to_string());
            }
            if !arg.bytes().all(|b| b.is_ascii_digit()) || arg.len() > 3 {
                return Reply::Error("?OOR");
            }
            match arg.parse::<u8>() {
                Ok(n) => {
                    st.safe_timeout_s = n;
                    st.last_valid_s = now_s;
                    st.timed_out = false;
                    Reply::Data(String::new())
                }
                Err(_) => Reply::Error("?OOR"),
            }
        }
        "VER" if arg.is_empty() => Reply::Data(VERSION.to_owned()),
        "DIA" => {
            if arg.is_empty() {
                return Reply::Data(format_number(pump.diameter_mm()));
            }
            let Some(d) = parse_number(arg) else { return Reply::Error("?OOR") };
            if !stopped {
                return Reply::Error("?NA");
            }
            match pump.set_diameter_mm(d) {
                Ok(()) => {
                    st.volume_units = None;
                    Reply::Data(String::new())
                }
                Err(e) => na(e),
            }
        }
        "DIR" => {
            let new = match arg {
                "" => {
                    let code = match st.direction {
                        Direction::Infuse => "INF",
                        Direction::Withdraw => "WDR",
                        Direction::Sticky => "STK",
                    };
                    return Reply::Data(code.to_owned());
                }
                "INF" => Direction::Infuse,
                "WDR" => Direction::Withdraw,
                "REV" => match st.direction {
                    Direction::Withdraw => Direction::Infuse,
                    Direction::Infuse | Direction::Sticky => Direction::Withdraw,
                },
                "STK" => Direction::Sticky,
                _ => return Reply::Error("?"),
            };
            if !stopped && (new == Direction::Sticky || st.target_ml > 0.0 || st.program == ProgramState::Purging) {
                return Reply::Error("?NA");
            }
            st.direction = new;
            if st.program == ProgramState::Running {
                let mode = st.run_mode();
                if pump.run_unwatched(mode).is_err() {
                    return Reply::Error("?NA");
                }
            }
            Reply::Data(String::new())
        }
        "VOL" => {
            let units = st.volume_units(pump);
            match arg {
                "" => Reply::Data(format!("{}{}", format_number(st.target_ml / units.ml()), units.code())),
                "UL" | "ML" => {
                    st.volume_units = Some(if arg == "UL" { VolumeUnits::Ul } else { VolumeUnits::Ml });
                    Reply::Data(String::new())
                }
                _ => {
                    let Some(v) = parse_number(arg) else { return Reply::Error("?OOR") };
                    st.target_ml = v * units.ml();
                    // While purging the firmware has no target; the end of the purge restores it.
                    if st.program != ProgramState::Purging {
                        pump.set_volume_target(target(st.target_ml));
                    }
                    Reply::Data(String::new())
                }
            }
        }
        "RAT" => {
            let current_units = st.rate_units(pump);
            if arg.is_empty() {
                let rate = st.purge_saved_rate_ml_h.unwrap_or(pump.rate_ml_h());
                return Reply::Data(format!("{}{}", format_number(rate / current_units.ml_h()), current_units.code()));
            }
            let (number, units) = match arg.len().checked_sub(2).filter(|&i| arg.is_char_boundary(i)) {
                Some(i) => match RateUnits::from_code(&arg[i..]) {
                    Some(u) => (&arg[..i], u),
                    None => (arg, current_units),
                },
                None => (arg, current_units),
            };
            let Some(v) = parse_number(number) else { return Reply::Error("?OOR") };
            if units != current_units && !stopped {
                return Reply::Error("?NA");
            }
            let rate = v * units.ml_h();
            let (min, max) = rate_range_ml_h(pump.diameter_mm());
            if rate < min * (1.0 - 1e-9) || rate > max * (1.0 + 1e-9) || rate <= 0.0 {
                return Reply::Error("?OOR");
            }
            if st.program == ProgramState::Purging {
                st.purge_saved_rate_ml_h = Some(rate);
            } else if let Err(e) = pump.set_rate_ml_h(rate) {
                return na(e);
            }
            st.rate_units = Some(units);
            Reply::Data(String::new())
        }
        "DIS" if arg.is_empty() => {
            // A firmware counter below its baseline was cleared (power cycle, clear_counters).
            if pump.motor_infused_ml() < st.infused_base_ml {
                st.infused_base_ml = 0.0;
            }
            if pump.motor_withdrawn_ml() < st.withdrawn_base_ml {
                st.withdrawn_base_ml = 0.0;
            }
            let units = st.volume_units(pump);
            let i = (pump.motor_infused_ml() - st.infused_base_ml) / units.ml();
            let w = (pump.motor_withdrawn_ml() - st.withdrawn_base_ml) / units.ml();
            Reply::Data(format!("I{}W{}{}", format_number(i), format_number(w), units.code()))
        }
        "CLD" => match arg {
            "INF" => {
                st.infused_base_ml = pump.motor_infused_ml();
                Reply::Data(String::new())
            }
            "WDR" => {
                st.withdrawn_base_ml = pump.motor_withdrawn_ml();
                Reply::Data(String::new())
            }
            _ => Reply::Error("?"),
        },
        "RUN" if arg.is_empty() => match st.program {
            ProgramState::Running => Reply::Data(String::new()),
            ProgramState::Purging => Reply::Error("?NA"),
            ProgramState::Stopped | ProgramState::Paused => {
                let from_stop = stopped;
                if let Err(e) = pump.run_unwatched(st.run_mode()) {
                    return na(e);
                }
                if from_stop {
                    // A new start dispenses the whole target again (origin = counter now).
                    pump.set_volume_target(target(st.target_ml));
                }
                st.program = ProgramState::Running;
                Reply::Data(String::new())
            }
        },
        "PUR" if arg.is_empty() => match st.program {
            ProgramState::Purging => Reply::Data(String::new()),
            ProgramState::Running | ProgramState::Paused => Reply::Error("?NA"),
            ProgramState::Stopped => {
                let saved = pump.rate_ml_h();
                let (_, max) = rate_range_ml_h(pump.diameter_mm());
                if let Err(e) = pump.set_rate_ml_h(max) {
                    return na(e);
                }
                pump.set_volume_target(None);
                if let Err(e) = pump.run_unwatched(RunMode::Infuse) {
                    let _ = pump.set_rate_ml_h(saved);
                    pump.set_volume_target(target(st.target_ml));
                    return na(e);
                }
                st.purge_saved_rate_ml_h = Some(saved);
                st.program = ProgramState::Purging;
                Reply::Data(String::new())
            }
        },
        "STP" if arg.is_empty() => {
            match st.program {
                ProgramState::Running => {
                    let _ = pump.run_unwatched(RunMode::Stop);
                    st.program = ProgramState::Paused;
                }
                ProgramState::Paused | ProgramState::Stopped | ProgramState::Purging => st.halt(pump),
            }
            Reply::Data(String::new())
        }
        "PHN" | "FUN" | "TRG" | "ADR" | "BUZ" => Reply::Error("?IGN"),
        _ if command.starts_with("IN") || command.starts_with("AL") => Reply::Error("?IGN"),
        _ => Reply::Error("?"),
    }
}
