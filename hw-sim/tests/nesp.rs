//! The pump side of the New Era protocol, through the public API: the spec's byte examples, the typical
//! nesp-lib exchange, the state machine, alarms, errors, several addresses, bursts, the safe-mode
//! watchdog, and seeded random garbage.

use std::collections::BTreeMap;

use ketapump_hwsim::nesp::{corrupt, format_number, frame, parse_number, rate_range_ml_h, SAFE_GAP_S};
use ketapump_hwsim::{
    address_of, burst_targets, crc16_xmodem, Firmware, Framing, NespPort, Packet, PlantConfig, ProgramState, RateUnits,
    RunMode, SplitMix64,
};

fn pump() -> Firmware {
    Firmware::new(PlantConfig::nominal_for("bd-plastipak-50").unwrap(), 1).unwrap()
}

/// A pump whose power-up reset alarm has been acknowledged.
fn acked() -> Firmware {
    let mut p = pump();
    p.acknowledge();
    p
}

fn basic(cmd: &str) -> Vec<u8> {
    let mut v = cmd.as_bytes().to_vec();
    v.push(0x0D);
    v
}

fn safe(data: &str) -> Vec<u8> {
    frame(Framing::Safe, data.as_bytes())
}

fn rb(data: &str) -> Vec<u8> {
    frame(Framing::Basic, data.as_bytes())
}

fn rs(data: &str) -> Vec<u8> {
    frame(Framing::Safe, data.as_bytes())
}

/// Feeds one packet's bytes at `now` and handles the single packet they make.
fn ask(port: &mut NespPort, pump: &mut Firmware, now: f64, bytes: &[u8]) -> Option<Vec<u8>> {
    pump.advance_to(now).unwrap();
    let packets = port.feed(now, bytes);
    assert_eq!(packets.len(), 1, "{bytes:02X?} gave {packets:?}");
    port.handle(now, &packets[0], pump)
}

/// Human-readable reply for assertion messages.
fn show(reply: &Option<Vec<u8>>) -> String {
    reply.as_ref().map_or("<silence>".into(), |r| String::from_utf8_lossy(r).escape_debug().to_string())
}

/// Advances the pump in 0.1 s steps to `until`, polling the port.
fn run_for(port: &mut NespPort, pump: &mut Firmware, address: u8, from: f64, until: f64) -> f64 {
    let mut t = from;
    while t < until {
        t = (t + 0.1).min(until);
        pump.advance_to(t).unwrap();
        port.poll(t, address, pump);
    }
    t
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|h| u8::from_str_radix(h, 16).unwrap()).collect()
}

// ----- byte examples ------------------------------------------------------------------------------

#[test]
fn crc_and_frame_examples() {
    assert_eq!(crc16_xmodem(b"SAF0"), 0x5543);
    assert_eq!(safe("SAF0"), hex("02 08 53 41 46 30 55 43 03"));
    assert_eq!(safe("0SAF0"), hex("02 09 30 53 41 46 30 59 AD 03")); // 1
    assert_eq!(rb("00A?R"), hex("02 30 30 41 3F 52 03")); // 2
    assert_eq!(rb("00S"), hex("02 30 30 53 03")); // 3
    assert_eq!(basic("0RAT1200MH"), hex("30 52 41 54 31 32 30 30 4D 48 0D")); // 4
    assert_eq!(rb("00S?OOR"), hex("02 30 30 53 3F 4F 4F 52 03")); // 5
    assert_eq!(safe("3SAF10"), hex("02 0A 33 53 41 46 31 30 AD 5E 03")); // 6
    assert_eq!(rs("03S"), hex("02 07 30 33 53 FF F5 03")); // 7
    assert_eq!(safe("3"), hex("02 05 33 06 30 03")); // 8
    assert_eq!(rs("00A?T"), hex("02 09 30 30 41 3F 54 05 40 03")); // 9
}

#[test]
fn examples_reproduced_by_the_port() {
    // 1 → 2: nesp-lib's first packet to a freshly powered pump.
    let (mut port, mut p0) = (NespPort::new(), pump());
    let r = ask(&mut port, &mut p0, 0.0, &hex("02 09 30 53 41 46 30 59 AD 03"));
    assert_eq!(r.unwrap(), hex("02 30 30 41 3F 52 03"));
    // 4 → 5: 1200 mL/h is above the maximum for the 26.59 mm syringe.
    let r = ask(&mut port, &mut p0, 0.1, &hex("30 52 41 54 31 32 30 30 4D 48 0D"));
    assert_eq!(r.unwrap(), hex("02 30 30 53 3F 4F 4F 52 03"));
    // Status only (3).
    assert_eq!(ask(&mut port, &mut p0, 0.2, b"0\r").unwrap(), hex("02 30 30 53 03"));

    // 6 → 7, 8 → 7: address 3 enters safe mode and is polled.
    let mut p3 = acked();
    let r = ask(&mut port, &mut p3, 0.3, &hex("02 0A 33 53 41 46 31 30 AD 5E 03"));
    assert_eq!(r.unwrap(), hex("02 07 30 33 53 FF F5 03"));
    let r = ask(&mut port, &mut p3, 0.4, &hex("02 05 33 06 30 03"));
    assert_eq!(r.unwrap(), hex("02 07 30 33 53 FF F5 03"));

    // 9: address 0 in safe mode, silent for longer than its timeout.
    let r = ask(&mut port, &mut p0, 1.0, &safe("0SAF1"));
    assert_eq!(r.unwrap(), rs("00S"));
    run_for(&mut port, &mut p0, 0, 1.0, 2.5);
    let r = ask(&mut port, &mut p0, 2.5, &safe("0"));
    assert_eq!(r.unwrap(), hex("02 09 30 30 41 3F 54 05 40 03"));
}

#[test]
fn typical_nesp_lib_exchange() {
    let (mut port, mut p) = (NespPort::new(), pump());
    // State left in the pump's non-volatile memory by an earlier session (the capture's `0RAT` reply).
    p.set_rate_ml_h(3.0).unwrap();
    port.set_rate_units(0, RateUnits::UlPerHour);
    let steps: [(&[u8], &str); 17] = [
        (&safe("0SAF0"), "00A?R"),
        (&safe("0SAF0"), "00S"),
        (b"0VER\r", "00SNE1000V3.928"),
        (b"0DIA26.59\r", "00S"),
        (b"0DIRINF\r", "00S"),
        (b"0VOLUL\r", "00S"),
        (b"0VOL1000\r", "00S"),
        (b"0RAT1200MH\r", "00S?OOR"),
        (b"0DIA\r", "00S26.59"),
        (b"0VOL\r", "00S1000.UL"),
        (b"0RAT\r", "00S3000.UH"),
        (b"0DIS\r", "00SI0.000W0.000UL"),
        (b"0CLDINF\r", "00S"),
        (b"0RUN\r", "00I"),
        (b"0\r", "00I"),
        (b"0\r", "00I"),
        (b"0STP\r", "00P"),
    ];
    for (i, (req, want)) in steps.iter().enumerate() {
        let r = ask(&mut port, &mut p, 0.05 * i as f64, req);
        assert_eq!(r.as_deref(), Some(rb(want).as_slice()), "step {i}: {} → {}", want, show(&r));
    }
    assert_eq!(p.run_mode(), RunMode::Stop);
}

#[test]
fn lower_case_spaces_and_padded_addresses() {
    let (mut port, mut p) = (NespPort::new(), acked());
    assert_eq!(ask(&mut port, &mut p, 0.0, b"0 rat 20 mh\r").unwrap(), rb("00S"));
    assert_eq!(ask(&mut port, &mut p, 0.1, b"00RAT\r").unwrap(), rb("00S20.00MH"));
    assert_eq!(ask(&mut port, &mut p, 0.2, b"0 rat 20 mm\r").unwrap(), rb("00S?OOR")); // 1200 mL/h
    assert_eq!(ask(&mut port, &mut p, 0.3, b"  0 r a t\r\n").unwrap(), rb("00S20.00MH"));
    let mut p12 = acked();
    assert_eq!(ask(&mut port, &mut p12, 0.4, b"12dia\r").unwrap(), rb("12S26.59"));
    // Without an address, a command is for pump 0.
    assert_eq!(ask(&mut port, &mut p, 0.5, b"ver\r").unwrap(), rb("00SNE1000V3.928"));
}

#[test]
fn number_formatting_and_parsing() {
    for (v, s) in [
        (26.59, "26.59"),
        (1000.0, "1000."),
        (0.5, "0.500"),
        (5.0, "5.000"),
        (20.0, "20.00"),
        (150.0, "150.0"),
        (999.96, "1000."),
        (9.9996, "10.00"),
        (0.0, "0.000"),
        (-1.0, "0.000"),
    ] {
        assert_eq!(format_number(v), s, "{v}");
    }
    assert_eq!(parse_number("26.59"), Some(26.59));
    assert_eq!(parse_number("1000"), Some(1000.0));
    assert_eq!(parse_number(".5"), Some(0.5));
    for bad in ["1E-05", "12345", "1.2.3", ".", "", "-1", "1,5", "0.16666"] {
        assert_eq!(parse_number(bad), None, "{bad}");
    }
}

// ----- framing ------------------------------------------------------------------------------------

#[test]
fn saf_trap_reply_framing_follows_the_mode_after_the_command() {
    let (mut port, mut p) = (NespPort::new(), acked());
    // SAF5 sent in a basic frame: answered in a safe frame.
    assert_eq!(ask(&mut port, &mut p, 0.0, b"0SAF5\r").unwrap(), rs("00S"));
    assert_eq!(port.framing(0), Framing::Safe);
    // Any command in safe mode, either framing: safe reply.
    assert_eq!(ask(&mut port, &mut p, 0.1, b"0SAF\r").unwrap(), rs("00S5"));
    assert_eq!(ask(&mut port, &mut p, 0.2, &safe("0VER")).unwrap(), rs("00SNE1000V3.928"));
    // SAF0 sent in a safe frame: answered in a basic frame.
    assert_eq!(ask(&mut port, &mut p, 0.3, &safe("0SAF0")).unwrap(), rb("00S"));
    assert_eq!(port.framing(0), Framing::Basic);
    // SAF0 again in basic mode (nesp-lib's opening): still basic. SAF10 in a safe frame: safe.
    assert_eq!(ask(&mut port, &mut p, 0.4, &safe("0SAF0")).unwrap(), rb("00S"));
    assert_eq!(ask(&mut port, &mut p, 0.5, &safe("0SAF10")).unwrap(), rs("00S"));
    assert_eq!(ask(&mut port, &mut p, 0.6, &safe("0SAF256")).unwrap(), rs("00S?OOR"));
    assert_eq!(port.safe_timeout_s(0), 10);
}

#[test]
fn incomplete_safe_packet_discarded_after_gap() {
    let (mut port, mut p) = (NespPort::new(), acked());
    let full = safe("0VER");
    // The first half, then silence longer than the gap, then a complete packet.
    assert!(port.feed(0.0, &full[..4]).is_empty());
    let packets = port.feed(SAFE_GAP_S + 0.1, &full);
    assert_eq!(packets.len(), 1);
    assert_eq!(port.handle(0.6, &packets[0], &mut p).unwrap(), rb("00SNE1000V3.928"));
    // Split with short gaps: reassembled.
    let mut got = Vec::new();
    for (i, b) in full.iter().enumerate() {
        got.extend(port.feed(1.0 + 0.4 * i as f64, &[*b]));
    }
    assert_eq!(got.len(), 1);
    assert_eq!(address_of(&got[0]), Some(0));
}

#[test]
fn broken_packets_get_com_or_silence() {
    let (mut port, mut p) = (NespPort::new(), acked());
    // Bad CRC.
    let mut bad = safe("0RAT10MH");
    let n = bad.len();
    bad[n - 2] ^= 1;
    assert_eq!(ask(&mut port, &mut p, 0.0, &bad).unwrap(), rb("00S?COM"));
    assert_eq!(p.rate_ml_h(), 0.0, "a broken packet is not executed");
    // Missing ETX.
    let mut bad = safe("0VER");
    *bad.last_mut().unwrap() = 0x0D;
    assert_eq!(ask(&mut port, &mut p, 0.1, &bad).unwrap(), rb("00S?COM"));
    // Safe mode: ?COM in a safe frame.
    ask(&mut port, &mut p, 0.2, b"0SAF9\r");
    let mut bad = safe("0VER");
    bad[3] = b'X';
    assert_eq!(ask(&mut port, &mut p, 0.3, &bad).unwrap(), rs("00S?COM"));
    // Impossible lengths (0 to 3): no address to read, so the line's first pump answers ?COM, and the
    // rest of the frame (up to its ETX) is not taken for a new packet.
    for len in 0..4u8 {
        let packets = port.feed(0.4, &[0x02, len, b'0', b'V', b'E', b'R', 0x12, 0x34, 0x03]);
        assert_eq!(packets, vec![Packet::Broken { framing: Framing::Safe, address: None }]);
        assert_eq!(port.target_of(&packets[0]), Some(0));
        assert_eq!(port.handle(0.4, &packets[0], &mut p).unwrap(), rs("00S?COM"));
    }
    // Without an ETX, a silence ends the skip.
    assert_eq!(port.feed(0.45, &[0x02, 0x01, b'0', b'V']).len(), 1);
    assert_eq!(ask(&mut port, &mut p, 0.45 + 0.06, &safe("0VER")).unwrap(), rs("00SNE1000V3.928"));
    // Bad CRC with garbage where the address should be: the line's first pump answers.
    let mut bad = safe("XYZ");
    bad[2] = b'Q';
    let packets = port.feed(0.6, &bad);
    assert_eq!(address_of(&packets[0]), None);
    assert_eq!(port.target_of(&packets[0]), Some(0));
    let (rejects, _) = port.rejects().take();
    assert!(rejects.iter().any(|r| r.reason.contains("length byte 3")), "{rejects:?}");
    // The corrupt-reply fault: a corrupted safe reply fails its CRC; a basic one is no longer ASCII.
    let reply = rs("00S");
    let c = corrupt(&reply);
    assert_eq!(c.len(), reply.len());
    assert_ne!(crc16_xmodem(&c[2..c.len() - 3]), u16::from_be_bytes([c[c.len() - 3], c[c.len() - 2]]));
    let c = corrupt(&rb("00S26.59"));
    assert!(c.iter().any(|b| !b.is_ascii()));
}

// ----- alarms -------------------------------------------------------------------------------------

#[test]
fn power_up_reset_alarm_acknowledged_by_first_command_which_is_not_executed() {
    let (mut port, mut p) = (NespPort::new(), pump());
    assert_eq!(ask(&mut port, &mut p, 0.0, b"0RAT100MH\r").unwrap(), rb("00A?R"));
    assert_eq!(p.alarms(), 0);
    assert_eq!(p.rate_ml_h(), 0.0);
    // nesp-lib re-sends the command once: now executed.
    assert_eq!(ask(&mut port, &mut p, 0.1, b"0RAT100MH\r").unwrap(), rb("00S"));
    assert_eq!(p.rate_ml_h(), 100.0);
    // A power cycle latches R again; a RUN is answered with the alarm and does not start.
    p.power_cycle();
    assert_eq!(ask(&mut port, &mut p, 0.2, b"0RUN\r").unwrap(), rb("00A?R"));
    assert_eq!(p.run_mode(), RunMode::Stop);
}

#[test]
fn motor_stall_reported_as_s_until_acknowledged() {
    let (mut port, mut p) = (NespPort::new(), acked());
    ask(&mut port, &mut p, 0.0, b"0RAT500MH\r");
    assert_eq!(ask(&mut port, &mut p, 0.0, b"0RUN\r").unwrap(), rb("00I"));
    run_for(&mut port, &mut p, 0, 0.0, 2.0);
    p.inject("fault_motor_stall", 1.0).unwrap();
    let t = run_for(&mut port, &mut p, 0, 2.0, 5.0);
    assert_ne!(p.alarms(), 0, "the firmware detected the stall");
    assert_eq!(p.run_mode(), RunMode::Stop);
    // The next command (a rate change) receives the alarm and is not executed.
    assert_eq!(ask(&mut port, &mut p, t, b"0RAT100MH\r").unwrap(), rb("00A?S"));
    assert_eq!(p.rate_ml_h(), 500.0);
    assert_eq!(p.alarms(), 0);
    assert_eq!(ask(&mut port, &mut p, t + 0.1, b"0\r").unwrap(), rb("00S"));
    assert_eq!(port.program(0), ProgramState::Stopped);
}

#[test]
fn safe_mode_timeout_raises_t_and_stops_the_pump() {
    let (mut port, mut p) = (NespPort::new(), acked());
    assert_eq!(ask(&mut port, &mut p, 0.0, &safe("0SAF2")).unwrap(), rs("00S"));
    ask(&mut port, &mut p, 0.1, &safe("0RAT100MH"));
    assert_eq!(ask(&mut port, &mut p, 0.2, &safe("0RUN")).unwrap(), rs("00I"));
    // Valid packets keep the watchdog fed.
    let mut t = 0.2;
    for _ in 0..5 {
        t = run_for(&mut port, &mut p, 0, t, t + 1.5);
        assert_eq!(ask(&mut port, &mut p, t, &safe("0")).unwrap(), rs("00I"));
    }
    // A broken packet does not.
    let mut bad = safe("0");
    bad[3] ^= 0xFF;
    t = run_for(&mut port, &mut p, 0, t, t + 1.5);
    assert_eq!(ask(&mut port, &mut p, t, &bad).unwrap(), rs("00I?COM"));
    t = run_for(&mut port, &mut p, 0, t, t + 0.6);
    assert_eq!(p.run_mode(), RunMode::Stop, "timeout stops the pump");
    assert_eq!(port.program(0), ProgramState::Stopped);
    // The alarm is the reply to the next command, which is not executed; then status S.
    assert_eq!(ask(&mut port, &mut p, t, &safe("0RUN")).unwrap(), rs("00A?T"));
    assert_eq!(p.run_mode(), RunMode::Stop);
    assert_eq!(ask(&mut port, &mut p, t + 0.1, &safe("0")).unwrap(), rs("00S"));
    // The firmware's own watchdog never trips while the port is polled, even with no traffic in basic mode.
    ask(&mut port, &mut p, t + 0.2, &safe("0SAF0"));
    ask(&mut port, &mut p, t + 0.3, b"0RUN\r");
    let t2 = run_for(&mut port, &mut p, 0, t + 0.3, t + 30.0);
    assert_eq!(ask(&mut port, &mut p, t2, b"0\r").unwrap(), rb("00I"));
}

// ----- state machine ------------------------------------------------------------------------------

#[test]
fn stp_twice_pauses_then_stops_and_run_resumes() {
    let (mut port, mut p) = (NespPort::new(), acked());
    ask(&mut port, &mut p, 0.0, b"0RAT60MH\r");
    assert_eq!(ask(&mut port, &mut p, 0.0, b"0STP\r").unwrap(), rb("00S"), "STP while stopped");
    assert_eq!(ask(&mut port, &mut p, 0.1, b"0RUN\r").unwrap(), rb("00I"));
    assert_eq!(ask(&mut port, &mut p, 0.2, b"0RUN\r").unwrap(), rb("00I"));
    assert_eq!(ask(&mut port, &mut p, 0.3, b"0STP\r").unwrap(), rb("00P"));
    assert_eq!(ask(&mut port, &mut p, 0.4, b"0\r").unwrap(), rb("00P"));
    assert_eq!(ask(&mut port, &mut p, 0.5, b"0RUN\r").unwrap(), rb("00I"));
    assert_eq!(ask(&mut port, &mut p, 0.6, b"0STP\r").unwrap(), rb("00P"));
    assert_eq!(ask(&mut port, &mut p, 0.7, b"0STP\r").unwrap(), rb("00S"));
    assert_eq!(p.run_mode(), RunMode::Stop);
    // Withdraw, reverse, purge.
    ask(&mut port, &mut p, 0.8, b"0DIRWDR\r");
    assert_eq!(ask(&mut port, &mut p, 0.9, b"0DIR\r").unwrap(), rb("00SWDR"));
    assert_eq!(ask(&mut port, &mut p, 1.0, b"0RUN\r").unwrap(), rb("00W"));
    assert_eq!(p.run_mode(), RunMode::Withdraw);
    // Continuous pumping: direction may change while running.
    assert_eq!(ask(&mut port, &mut p, 1.1, b"0DIRREV\r").unwrap(), rb("00I"));
    assert_eq!(p.run_mode(), RunMode::Infuse);
    assert_eq!(ask(&mut port, &mut p, 1.2, b"0PUR\r").unwrap(), rb("00I?NA"));
    ask(&mut port, &mut p, 1.3, b"0STP\r");
    ask(&mut port, &mut p, 1.4, b"0STP\r");
    assert_eq!(ask(&mut port, &mut p, 1.5, b"0PUR\r").unwrap(), rb("00X"));
    assert_eq!(p.rate_ml_h(), rate_range_ml_h(26.59).1);
    assert_eq!(ask(&mut port, &mut p, 1.6, b"0RAT\r").unwrap(), rb("00X60.00MH"));
    assert_eq!(ask(&mut port, &mut p, 1.7, b"0STP\r").unwrap(), rb("00S"));
    assert_eq!(p.rate_ml_h(), 60.0);
}

#[test]
fn volume_target_reached_stops_the_program() {
    let (mut port, mut p) = (NespPort::new(), acked());
    for cmd in ["0VOLML", "0VOL0.5", "0RAT300MH"] {
        assert_eq!(ask(&mut port, &mut p, 0.0, &basic(cmd)).unwrap(), rb("00S"), "{cmd}");
    }
    assert_eq!(ask(&mut port, &mut p, 0.0, b"0VOL\r").unwrap(), rb("00S0.500ML"));
    assert_eq!(ask(&mut port, &mut p, 0.0, b"0RUN\r").unwrap(), rb("00I"));
    let mut t = 0.0;
    while port.program(0) == ProgramState::Running && t < 60.0 {
        t = run_for(&mut port, &mut p, 0, t, t + 0.1);
    }
    assert!(t < 60.0);
    assert_eq!(ask(&mut port, &mut p, t, b"0\r").unwrap(), rb("00S"));
    // The target counts the motor, as DIS does; the plunger lags by the lead-screw slack.
    assert!((0.5..0.51).contains(&p.motor_infused_ml()), "{}", p.motor_infused_ml());
    assert!(p.infused_ml() < 0.5 - 0.1, "{}", p.infused_ml());
    assert_eq!(
        ask(&mut port, &mut p, t, b"0DIS\r").unwrap(),
        rb(&format!("00SI{}W0.000ML", format_number(p.motor_infused_ml())))
    );
    // RUN again dispenses another 0.5 mL.
    assert_eq!(ask(&mut port, &mut p, t, b"0RUN\r").unwrap(), rb("00I"));
    let start = t;
    while port.program(0) == ProgramState::Running && t < start + 60.0 {
        t = run_for(&mut port, &mut p, 0, t, t + 0.1);
    }
    assert!((1.0..1.02).contains(&p.motor_infused_ml()), "{}", p.motor_infused_ml());
}

#[test]
fn dis_integrates_infused_and_withdrawn_separately() {
    let (mut port, mut p) = (NespPort::new(), acked());
    assert_eq!(ask(&mut port, &mut p, 0.0, b"0DIS\r").unwrap(), rb("00SI0.000W0.000ML"));
    ask(&mut port, &mut p, 0.0, b"0RAT120MH\r");
    ask(&mut port, &mut p, 0.0, b"0RUN\r");
    let t = run_for(&mut port, &mut p, 0, 0.0, 30.0);
    let inf = p.motor_infused_ml();
    assert!(inf > 0.5, "{inf}");
    assert_eq!(ask(&mut port, &mut p, t, b"0DIS\r").unwrap(), rb(&format!("00II{}W0.000ML", format_number(inf))));
    // Withdraw for 15 s: withdrawn grows, infused holds.
    ask(&mut port, &mut p, t, b"0STP\r");
    ask(&mut port, &mut p, t, b"0STP\r");
    ask(&mut port, &mut p, t, b"0DIRWDR\r");
    ask(&mut port, &mut p, t, b"0RUN\r");
    let t = run_for(&mut port, &mut p, 0, t, t + 15.0);
    let wdr = p.motor_withdrawn_ml();
    assert!(wdr > 0.1, "{wdr}");
    let dis = format!("00WI{}W{}ML", format_number(p.motor_infused_ml()), format_number(wdr));
    assert_eq!(ask(&mut port, &mut p, t, b"0DIS\r").unwrap(), rb(&dis));
    assert_eq!(p.motor_infused_ml(), inf);
    // CLD INF clears only the infused count; µL units.
    ask(&mut port, &mut p, t, b"0CLDINF\r");
    ask(&mut port, &mut p, t, b"0VOLUL\r");
    let dis = format!("00WI0.000W{}UL", format_number(p.motor_withdrawn_ml() * 1000.0));
    assert_eq!(ask(&mut port, &mut p, t, b"0DIS\r").unwrap(), rb(&dis));
    ask(&mut port, &mut p, t, b"0CLDWDR\r");
    assert_eq!(ask(&mut port, &mut p, t, b"0DIS\r").unwrap(), rb("00WI0.000W0.000UL"));
}

// ----- errors -------------------------------------------------------------------------------------

#[test]
fn an_overlong_line_is_answered_once_with_a_question_mark() {
    let (mut port, mut p) = (NespPort::new(), acked());
    // 100 bytes: a command with a number too long for it.
    let line = format!("0RAT{}\r", "1".repeat(96));
    assert_eq!(ask(&mut port, &mut p, 0.0, line.as_bytes()).unwrap(), rb("00S?OOR"));
    // 300 and 5 000 bytes: past MAX_LINE, answered "?" at the CR, once.
    for n in [300, 5_000] {
        let line = format!("0RAT{}\r", "1".repeat(n));
        assert_eq!(ask(&mut port, &mut p, 0.1, line.as_bytes()).unwrap(), rb("00S?"), "{n}");
    }
    // Even split across reads, and for the address it starts with.
    ask(&mut port, &mut p, 0.2, b"7\r");
    let line = format!("7DIA{}\r", "9".repeat(400));
    let (head, tail) = line.as_bytes().split_at(200);
    assert!(port.feed(0.3, head).is_empty());
    let packets = port.feed(0.3, tail);
    assert_eq!(packets, vec![Packet::Overlong { address: 7 }]);
    assert_eq!(port.handle(0.3, &packets[0], &mut p).unwrap(), rb("07S?"));
    assert_eq!(p.rate_ml_h(), 0.0);
    let (rejects, _) = port.rejects().take();
    assert_eq!(rejects.iter().filter(|r| r.reason.starts_with("line longer")).count(), 3);
}

#[test]
fn dis_and_the_volume_target_count_motor_steps_not_the_plunger() {
    // Lead-screw slack not taken up: for its first ~0.17 mL the motor turns and the plunger stays put.
    let (mut port, mut p) = (NespPort::new(), acked());
    ask(&mut port, &mut p, 0.0, b"0RAT2MM\r");
    ask(&mut port, &mut p, 0.0, b"0RUN\r");
    let t = run_for(&mut port, &mut p, 0, 0.0, 1.5);
    let dis = ask(&mut port, &mut p, t, b"0DIS\r").unwrap();
    // 1.5 s at 2 mL/min = 0.050 mL by the motor, while the plunger has not moved yet.
    assert_eq!(dis, rb("00II0.050W0.000ML"), "{}", show(&Some(dis.clone())));
    assert!(p.infused_ml() < 0.001, "{}", p.infused_ml());
    // The volume target counts the same way: VOL 0.1 mL stops after 3 s of motion.
    ask(&mut port, &mut p, t, b"0STP\r");
    ask(&mut port, &mut p, t, b"0STP\r");
    ask(&mut port, &mut p, t, b"0VOL0.1\r");
    ask(&mut port, &mut p, t, b"0RUN\r");
    let t2 = run_for(&mut port, &mut p, 0, t, t + 3.2);
    assert_eq!(ask(&mut port, &mut p, t2, b"0\r").unwrap(), rb("00S"));
    // Stopped within one 0.1 s advance step of the target (0.003 mL at 2 mL/min).
    assert!((0.15..0.154).contains(&p.motor_infused_ml()), "{}", p.motor_infused_ml());
}

#[test]
fn error_replies() {
    let (mut port, mut p) = (NespPort::new(), acked());
    let cases: &[(&str, &str)] = &[
        ("0XYZ", "00S?"),
        ("0DIRUP", "00S?"),
        ("0CLD", "00S?"),
        ("0VER2", "00S?"),
        ("0BUZ1", "00S?IGN"),
        ("0PHN2", "00S?IGN"),
        ("0RAT1200MH", "00S?OOR"),
        ("0RAT0MH", "00S?OOR"),
        ("0RAT1e-05MH", "00S?OOR"),
        ("0RAT1e-05", "00S?OOR"),
        ("0RAT12345UH", "00S?OOR"),
        ("0RAT0.001UH", "00S?OOR"),
        ("0RAT10XX", "00S?OOR"),
        ("0DIA99", "00S?OOR"),
        ("0DIA0.5", "00S?OOR"),
        ("0VOL1.2.3", "00S?OOR"),
        ("0SAF1.5", "00S?OOR"),
        ("0RAT530.3MH", "00S?OOR"),
        ("0RAT530.2MH", "00S"),
        ("0RAT10.00MH", "00S"),
        ("0RUN", "00I"),
        // While pumping: no diameter, no unit change; the rate value and the volume may change.
        ("0DIA20", "00I?NA"),
        ("0RAT10UH", "00I?NA"),
        ("0RAT5UM", "00I?NA"),
        ("0VOL5", "00I"),
        ("0VOL0", "00I"),
        ("0DIRSTK", "00I?NA"),
        ("0RAT20MH", "00I"),
        ("0RAT", "00I20.00MH"),
        ("0DIA", "00I26.59"),
        ("0STP", "00P"),
        ("0RAT10UH", "00P?NA"),
        ("0STP", "00S"),
        ("0RAT10UH", "00S"),
        ("0RAT", "00S10.00UH"),
        ("0DIA14", "00S"),
        ("0VOL", "00S0.000UL"),
    ];
    for (i, (cmd, want)) in cases.iter().enumerate() {
        let r = ask(&mut port, &mut p, 0.01 * i as f64, &basic(cmd));
        assert_eq!(r.as_deref(), Some(rb(want).as_slice()), "{cmd} → {} (want {want})", show(&r));
    }
    assert_eq!(p.rate_ml_h(), 0.01);
    assert_eq!(p.diameter_mm(), 14.0);
}

// ----- several pumps ------------------------------------------------------------------------------

#[test]
fn several_addresses_on_one_port() {
    let mut port = NespPort::new();
    let mut pumps: BTreeMap<u8, Firmware> = [0u8, 7, 42, 99].into_iter().map(|a| (a, pump())).collect();
    // Each pump reports its own power-up alarm once.
    for (i, a) in [0u8, 7, 42, 99].into_iter().enumerate() {
        let r = ask(&mut port, pumps.get_mut(&a).unwrap(), 0.01 * i as f64, format!("{a}\r").as_bytes());
        assert_eq!(r.unwrap(), rb(&format!("{a:02}A?R")));
    }
    // Pump 42 in safe mode, the others basic; different rates.
    ask(&mut port, pumps.get_mut(&42).unwrap(), 0.1, &safe("42SAF30"));
    for (a, rate) in [(0u8, "10"), (7, "20"), (42, "30"), (99, "40")] {
        let bytes = if a == 42 { safe(&format!("{a}RAT{rate}MH")) } else { basic(&format!("{a}RAT{rate}MH")) };
        let r = ask(&mut port, pumps.get_mut(&a).unwrap(), 0.2, &bytes).unwrap();
        let want = format!("{a:02}S");
        assert_eq!(r, if a == 42 { rs(&want) } else { rb(&want) });
    }
    ask(&mut port, pumps.get_mut(&7).unwrap(), 0.3, b"7RUN\r");
    // Two packets in one read.
    let mut both = basic("07");
    both.extend(safe("42RAT"));
    let packets = port.feed(0.4, &both);
    assert_eq!(packets.iter().map(address_of).collect::<Vec<_>>(), vec![Some(7), Some(42)]);
    let r7 = port.handle(0.4, &packets[0], pumps.get_mut(&7).unwrap()).unwrap();
    let r42 = port.handle(0.4, &packets[1], pumps.get_mut(&42).unwrap()).unwrap();
    assert_eq!(r7, rb("07I"));
    assert_eq!(r42, rs("42S30.00MH"));
    for (a, rate) in [(0u8, 10.0), (7, 20.0), (42, 30.0), (99, 40.0)] {
        assert_eq!(pumps[&a].rate_ml_h(), rate);
        let want = if a == 7 { RunMode::Infuse } else { RunMode::Stop };
        assert_eq!(pumps[&a].run_mode(), want);
    }
}

#[test]
fn burst_line_executes_on_each_listed_pump_silently() {
    let mut port = NespPort::new();
    let mut pumps: Vec<Firmware> = (0..3).map(|_| acked()).collect();
    let packets = port.feed(0.0, b"0 rat 100 mh * 1 rat 250 mh * 2 run *\r");
    assert_eq!(packets.len(), 1);
    let packet = &packets[0];
    assert_eq!(address_of(packet), None);
    assert_eq!(burst_targets(packet), vec![0, 1, 2]);
    assert_eq!(port.handle(0.0, packet, &mut pumps[0]), None);
    for a in burst_targets(packet) {
        port.handle_burst(0.0, packet, a, &mut pumps[usize::from(a)]);
    }
    assert_eq!(pumps[0].rate_ml_h(), 100.0);
    assert_eq!(pumps[1].rate_ml_h(), 250.0);
    assert_eq!(pumps[2].run_mode(), RunMode::Infuse);
    assert_eq!(port.program(2), ProgramState::Running);
    // A pump with a pending alarm: the burst acknowledges it and is not executed.
    let mut fresh = pump();
    let packets = port.feed(0.1, b"5 rat 100 mh *\r");
    port.handle_burst(0.1, &packets[0], 5, &mut fresh);
    assert_eq!(fresh.alarms(), 0);
    assert_eq!(fresh.rate_ml_h(), 0.0);
}

// ----- garbage ------------------------------------------------------------------------------------

const COMMANDS: [&str; 14] =
    ["", "SAF1", "SAF0", "VER", "DIA", "DIRINF", "VOLUL", "VOL10", "RAT10MH", "RAT", "DIS", "RUN", "STP", "PUR"];
const KNOWN: [&str; 14] =
    ["SAF", "VER", "DIA", "DIR", "VOL", "RAT", "DIS", "CLD", "RUN", "PUR", "STP", "PHN", "FUN", "TRG"];

/// A reply must be one well-formed frame: basic `STX ascii ETX` or safe with a valid CRC, carrying
/// `<address><status>`. Returns the data.
fn check_reply(reply: &[u8], address: u8) -> String {
    assert!(reply.len() >= 5 && reply[0] == 0x02 && *reply.last().unwrap() == 0x03, "{reply:02X?}");
    let n = reply.len();
    let safe = usize::from(reply[1]) + 1 == n && n >= 8 && !reply[1].is_ascii_graphic();
    let data = if safe {
        let data = &reply[2..n - 3];
        assert_eq!(crc16_xmodem(data).to_be_bytes(), [reply[n - 3], reply[n - 2]]);
        data
    } else {
        &reply[1..n - 1]
    };
    let s = String::from_utf8(data.to_vec()).unwrap();
    assert!(s.starts_with(&format!("{address:02}")), "{s}");
    assert!("IWSPTUXA".contains(&s[2..3]), "{s}");
    s
}

fn random_buffer(rng: &mut SplitMix64) -> Vec<u8> {
    let pick = |rng: &mut SplitMix64, n: usize| (rng.next_u64() % n as u64) as usize;
    let addr = pick(rng, 100);
    let cmd = COMMANDS[pick(rng, COMMANDS.len())];
    match pick(rng, 6) {
        // Pure noise.
        0 => (0..pick(rng, 40)).map(|_| rng.next_u64() as u8).collect(),
        // Noise biased to the framing bytes and ASCII.
        1 => (0..pick(rng, 40))
            .map(|_| {
                const SET: &[u8] = b"\x02\x03\x0D\x05\x060123456789SAFRTVOLDIUMH.*? ";
                SET[pick(rng, SET.len())]
            })
            .collect(),
        // A truncated safe frame.
        2 => {
            let f = safe(&format!("{addr}{cmd}"));
            f[..pick(rng, f.len())].to_vec()
        }
        // A safe frame with one byte changed.
        3 => {
            let mut f = safe(&format!("{addr}{cmd}"));
            let i = pick(rng, f.len());
            f[i] ^= (1 + pick(rng, 255)) as u8;
            f
        }
        // A basic line with a garbled byte.
        4 => {
            let mut f = basic(&format!("{addr}{cmd}"));
            let i = pick(rng, f.len());
            f[i] = rng.next_u64() as u8;
            f
        }
        // A basic line far past the longest command.
        5 if pick(rng, 4) == 0 => {
            let mut f = format!("{addr}RAT").into_bytes();
            f.extend((0..300 + pick(rng, 300)).map(|_| b"0123456789."[pick(rng, 11)]));
            f.push(0x0D);
            f
        }
        // Valid packets.
        _ => {
            if pick(rng, 2) == 0 {
                safe(&format!("{addr}{cmd}"))
            } else {
                basic(&format!("{addr}{cmd}"))
            }
        }
    }
}

#[test]
fn random_bytes_never_panic_and_every_packet_but_a_burst_is_answered() {
    let mut rng = SplitMix64::new(0x4E45_5350);
    let mut port = NespPort::new();
    let mut pumps: BTreeMap<u8, Firmware> = BTreeMap::new();
    let mut t = 0.0;
    let (mut broken, mut answered) = (0, 0);
    for _ in 0..5_000 {
        let buf = random_buffer(&mut rng);
        // Random gaps, sometimes past the safe-frame gap; random chunking.
        t += [0.001, 0.05, 0.6][(rng.next_u64() % 3) as usize];
        let mut rest = buf.as_slice();
        let mut packets = Vec::new();
        while !rest.is_empty() {
            let k = 1 + (rng.next_u64() as usize) % rest.len();
            packets.extend(port.feed(t, &rest[..k]));
            rest = &rest[k..];
        }
        for packet in &packets {
            let Some(a) = port.target_of(packet) else {
                let p = pumps.entry(0).or_insert_with(pump);
                assert_eq!(port.handle(t, packet, p), None);
                assert!(matches!(packet, Packet::Burst { .. }));
                for b in burst_targets(packet) {
                    let p = pumps.entry(b).or_insert_with(pump);
                    port.handle_burst(t, packet, b, p);
                }
                continue;
            };
            let p = pumps.entry(a).or_insert_with(pump);
            let reply = port.handle(t, packet, p).expect("an addressed packet is answered");
            let data = check_reply(&reply, a);
            answered += 1;
            match packet {
                Packet::Broken { .. } => {
                    broken += 1;
                    assert!(data.ends_with("?COM"), "{data}");
                }
                Packet::Overlong { .. } => assert!(data.ends_with('?'), "{data}"),
                Packet::Command { command, .. } => {
                    let known = command.is_empty()
                        || KNOWN.iter().any(|k| command.starts_with(k))
                        || ["IN", "AL", "ADR", "BUZ"].iter().any(|k| command.starts_with(k));
                    if !known {
                        assert!(data.ends_with('?') || data[2..].starts_with("A?"), "{command} → {data}");
                    }
                }
                Packet::Burst { .. } => unreachable!(),
            }
        }
        // Port time only: the pumps' plants stay put (cheap), the safe-mode watchdog still runs.
        for (a, p) in pumps.iter_mut() {
            port.poll(t, *a, p);
        }
    }
    assert!(broken > 300 && answered > 2_000, "broken {broken}, answered {answered}");
}

#[test]
fn single_byte_corruption_of_a_safe_frame_is_detected() {
    let mut rng = SplitMix64::new(7);
    let mut p = acked();
    for _ in 0..3_000 {
        let mut port = NespPort::new();
        let cmd = COMMANDS[(rng.next_u64() % COMMANDS.len() as u64) as usize];
        let mut f = safe(&format!("0{cmd}"));
        // Any byte but STX and the length byte.
        let i = 2 + (rng.next_u64() as usize) % (f.len() - 2);
        f[i] ^= 1 + (rng.next_u64() % 255) as u8;
        let packets = port.feed(0.0, &f);
        assert_eq!(packets.len(), 1, "{f:02X?}");
        assert!(matches!(packets[0], Packet::Broken { framing: Framing::Safe, .. }), "{f:02X?} → {packets:?}");
        if let Some(reply) = port.handle(0.0, &packets[0], &mut p) {
            assert!(check_reply(&reply, port.target_of(&packets[0]).unwrap()).ends_with("?COM"));
        }
        // The line recovers: the next valid frame is understood.
        let packets = port.feed(0.0, &safe("0VER"));
        assert_eq!(packets.len(), 1);
        assert_eq!(port.handle(0.0, &packets[0], &mut p).unwrap(), rb("00SNE1000V3.928"));
    }
}

#[test]
fn power_up_alarm_to_a_safe_mode_request_comes_back_in_a_safe_frame() {
    // nesp-lib opens a pump in safe mode with `SAF<n>` in a safe frame and reads the reply as a safe
    // frame, even when the reply is the power-up alarm (the command itself is not executed).
    let mut pump = Firmware::new(PlantConfig::nominal_for("bd-plastipak-50").unwrap(), 1).unwrap();
    let mut port = NespPort::new();
    let request = frame(Framing::Safe, b"0SAF5");
    let packets = port.feed(0.0, &request);
    let reply = port.handle(0.0, &packets[0], &mut pump).unwrap();
    assert_eq!(reply, frame(Framing::Safe, b"00A?R"));
    // Re-sent, it runs and safe mode is on.
    let packets = port.feed(0.1, &request);
    let reply = port.handle(0.1, &packets[0], &mut pump).unwrap();
    assert_eq!(reply, frame(Framing::Safe, b"00S"));
    assert_eq!(port.safe_timeout_s(0), 5);
}
