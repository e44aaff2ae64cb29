//! The register map of the "ketapump reference pump", loaded from the data file that the Python
//! driver reads too (`python/ketapump/data/register_map.toml`): one source of truth.
//!
//! Multi-register values use big-endian word order (high word first). A register is addressed by its
//! first word; a write must cover every word of each register it touches. The Modbus function codes the
//! pump answers are data too (`function_codes`): the request handler refuses every other code with
//! exception 1, so a map that lists fewer functions gets a pump that implements fewer.

use serde::Deserialize;
use std::collections::HashMap;

/// The map as shipped, compiled in so the simulator needs no file at run time.
pub const REGISTER_MAP_TOML: &str = include_str!("../../python/ketapump/data/register_map.toml");

/// Function codes the request handler ([`crate::modbus::handle_pdu`]) implements; a map may list any of
/// them. 3 and 4 read holding registers (the same registers: the map has no separate input registers),
/// 6 writes one register, 16 writes several, 23 writes several and then reads several in one
/// transaction (the bridge's telemetry read and heartbeat each cycle).
pub const IMPLEMENTED_FUNCTION_CODES: [u8; 5] = [3, 4, 6, 16, 23];
/// Most registers one read may ask for (Modbus application protocol, function 3).
pub const MAX_READ_REGISTERS: u16 = 125;
/// Most registers one write may carry (function 16).
pub const MAX_WRITE_REGISTERS: u16 = 123;
/// Most registers function 23 (read/write multiple) may write (Modbus application protocol 6.17).
pub const MAX_READ_WRITE_WRITE_REGISTERS: u16 = 121;

/// Modbus exception codes the simulated firmware answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ModbusException {
    IllegalFunction = 1,
    /// Unmapped address, a write to a read-only register, or a partial multi-word write.
    IllegalDataAddress = 2,
    /// Out-of-range or non-finite value.
    IllegalDataValue = 3,
    /// The command cannot run now (start while an alarm is latched, diameter change while running).
    ServerDeviceFailure = 4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegType {
    U16,
    I32,
    F32,
}

impl RegType {
    pub const fn words(self) -> u16 {
        match self {
            RegType::U16 => 1,
            RegType::I32 | RegType::F32 => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Ro,
    Rw,
    Wo,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub name: String,
    pub address: u16,
    #[serde(rename = "type")]
    pub ty: RegType,
    pub access: Access,
    pub block: String,
    #[serde(default)]
    pub unit: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub description: String,
}

impl Register {
    /// Whether `value` is acceptable for a write (range and, for integers, whole numbers).
    pub fn accepts(&self, value: f64) -> bool {
        value.is_finite()
            && self.min.is_none_or(|m| value >= m)
            && self.max.is_none_or(|m| value <= m)
            && (self.ty == RegType::F32 || value.fract() == 0.0)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterMap {
    pub schema_version: u32,
    pub name: String,
    pub map_version: u16,
    pub unit_id: u8,
    pub word_order: String,
    /// The Modbus function codes the pump answers (each one of [`IMPLEMENTED_FUNCTION_CODES`]).
    pub function_codes: Vec<u8>,
    #[serde(rename = "register")]
    pub registers: Vec<Register>,
}

impl RegisterMap {
    /// Parses and checks a map: implemented, distinct function codes, unique names, no overlapping words.
    pub fn parse(text: &str) -> Result<Self, String> {
        let map: RegisterMap = toml::from_str(text).map_err(|e| e.to_string())?;
        for (i, code) in map.function_codes.iter().enumerate() {
            if !IMPLEMENTED_FUNCTION_CODES.contains(code) {
                return Err(format!(
                    "function code {code} is not implemented (implemented: {IMPLEMENTED_FUNCTION_CODES:?})"
                ));
            }
            if map.function_codes[..i].contains(code) {
                return Err(format!("function code {code} is listed twice"));
            }
        }
        let mut words: HashMap<u16, &str> = HashMap::new();
        let mut names: HashMap<&str, ()> = HashMap::new();
        for r in &map.registers {
            if names.insert(r.name.as_str(), ()).is_some() {
                return Err(format!("register {} is defined twice", r.name));
            }
            for w in 0..r.ty.words() {
                let address = r.address.checked_add(w).ok_or_else(|| format!("{} overflows", r.name))?;
                if let Some(other) = words.insert(address, &r.name) {
                    return Err(format!("{} overlaps {} at address {address}", r.name, other));
                }
            }
        }
        Ok(map)
    }

    /// The shipped map.
    pub fn shipped() -> Self {
        // The shipped file is checked by a test; a broken one must not reach a build unnoticed.
        Self::parse(REGISTER_MAP_TOML).unwrap_or_else(|e| panic!("shipped register map is invalid: {e}"))
    }

    /// Whether the pump answers Modbus function `code`.
    pub fn serves_function(&self, code: u8) -> bool {
        self.function_codes.contains(&code)
    }

    pub fn by_name(&self, name: &str) -> Option<&Register> {
        self.registers.iter().find(|r| r.name == name)
    }

    /// The register whose words include `address`, and the word offset within it.
    pub fn at(&self, address: u16) -> Option<(&Register, u16)> {
        self.registers.iter().find_map(|r| {
            let offset = address.checked_sub(r.address)?;
            (offset < r.ty.words()).then_some((r, offset))
        })
    }
}

/// Encodes a value as the register's words.
pub fn encode(ty: RegType, value: f64) -> Vec<u16> {
    match ty {
        RegType::U16 => vec![value.clamp(0.0, 65_535.0) as u16],
        RegType::I32 => {
            let v = value.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32 as u32;
            vec![(v >> 16) as u16, v as u16]
        }
        RegType::F32 => {
            let bits = (value as f32).to_bits();
            vec![(bits >> 16) as u16, bits as u16]
        }
    }
}

/// Decodes a register's words.
pub fn decode(ty: RegType, words: &[u16]) -> f64 {
    match ty {
        RegType::U16 => f64::from(words[0]),
        RegType::I32 => f64::from(((u32::from(words[0]) << 16) | u32::from(words[1])) as i32),
        RegType::F32 => f64::from(f32::from_bits((u32::from(words[0]) << 16) | u32::from(words[1]))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_map_parses_without_overlaps() {
        let map = RegisterMap::shipped();
        assert_eq!(map.unit_id, 1);
        assert!(map.by_name("heartbeat").is_some());
        assert!(map.registers.iter().filter(|r| r.block == "fault").all(|r| r.address >= 100));
    }

    #[test]
    fn overlap_is_refused() {
        let text = r#"
schema_version = 1
name = "x"
map_version = 1
unit_id = 1
word_order = "big"
function_codes = [3, 6]
[[register]]
name = "a"
address = 0
type = "f32"
access = "ro"
block = "b"
description = ""
[[register]]
name = "b"
address = 1
type = "u16"
access = "ro"
block = "b"
description = ""
"#;
        assert!(RegisterMap::parse(text).unwrap_err().contains("overlaps"));
    }

    #[test]
    fn unimplemented_or_repeated_function_codes_are_refused() {
        let shipped = REGISTER_MAP_TOML;
        let five = shipped.replace("function_codes = [3, 4, 6, 16, 23]", "function_codes = [3, 5]");
        assert!(RegisterMap::parse(&five).unwrap_err().contains("function code 5 is not implemented"));
        let twice = shipped.replace("function_codes = [3, 4, 6, 16, 23]", "function_codes = [3, 16, 3]");
        assert!(RegisterMap::parse(&twice).unwrap_err().contains("listed twice"));
        assert!(RegisterMap::shipped().serves_function(16) && RegisterMap::shipped().serves_function(23));
        assert!(!RegisterMap::shipped().serves_function(5));
    }

    #[test]
    fn words_round_trip() {
        assert_eq!(decode(RegType::F32, &encode(RegType::F32, 52.5)), 52.5);
        assert_eq!(decode(RegType::I32, &encode(RegType::I32, -123_456.0)), -123_456.0);
        assert_eq!(decode(RegType::U16, &encode(RegType::U16, 500.0)), 500.0);
        assert_eq!(encode(RegType::F32, 1.0), vec![0x3F80, 0x0000]);
    }

    #[test]
    fn accepts_checks_range_and_integrality() {
        let map = RegisterMap::shipped();
        let run_mode = map.by_name("run_mode").unwrap();
        assert!(run_mode.accepts(1.0));
        assert!(!run_mode.accepts(3.0));
        let rate = map.by_name("rate_ml_h").unwrap();
        assert!(rate.accepts(52.5));
        assert!(!rate.accepts(f64::NAN));
        assert!(!rate.accepts(-1.0));
    }
}
