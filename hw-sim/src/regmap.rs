//! Register maps: the one the "ketapump reference pump" ships with (`python/ketapump/data/register_map.toml`,
//! read by the Python driver too), and any other map in the same schema that a real pump's vendor
//! documents ("bring your own map", `docs/register-map.md`). One schema, two parsers: this one and
//! `python/ketapump/wire/regmap.py` accept and refuse the same files, each problem named by the same
//! dotted path (`tests/test_register_map_byo.py` runs both on the same files).
//!
//! A map decides the **layout** only: where each register sits, its data type (`u16`, `i16`, `u32`,
//! `i32`, `f32`), its scaling (`value = raw × gain + offset`), the word and byte order of two-register
//! values, which registers exist and which Modbus function codes the pump answers. What a register
//! *means* (its name, its access, the firmware's own limits) is the reference pump's: every name must
//! be one of the shipped map's, with the same access, so the simulator can serve any valid map with
//! the same firmware. A map that lists fewer registers gets a pump with fewer features (no pressure
//! sensor, no heartbeat watchdog); a map that lists fewer function codes gets a pump that refuses the
//! others with exception 1.

use std::collections::HashMap;
use toml::Value;

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
/// The schema version this parser reads.
pub const SCHEMA_VERSION: i64 = 1;
/// Registers every map must have: without them the bridge cannot command, measure or stop a pump.
pub const REQUIRED_REGISTERS: [&str; 6] =
    ["rate_ml_h", "run_mode", "alarm_ack", "alarm_bits", "infused_ml", "motor_running"];

const TOP_KEYS: [&str; 8] =
    ["schema_version", "name", "map_version", "unit_id", "word_order", "byte_order", "function_codes", "register"];
const REGISTER_KEYS: [&str; 11] =
    ["name", "address", "type", "access", "block", "description", "unit", "min", "max", "gain", "offset"];

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegType {
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl RegType {
    pub const fn words(self) -> u16 {
        match self {
            RegType::U16 | RegType::I16 => 1,
            RegType::U32 | RegType::I32 | RegType::F32 => 2,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "u16" => RegType::U16,
            "i16" => RegType::I16,
            "u32" => RegType::U32,
            "i32" => RegType::I32,
            "f32" => RegType::F32,
            _ => return None,
        })
    }

    /// The raw integers the type holds (`None` for `f32`).
    fn int_range(self) -> Option<(f64, f64)> {
        match self {
            RegType::U16 => Some((0.0, 65_535.0)),
            RegType::I16 => Some((-32_768.0, 32_767.0)),
            RegType::U32 => Some((0.0, 4_294_967_295.0)),
            RegType::I32 => Some((-2_147_483_648.0, 2_147_483_647.0)),
            RegType::F32 => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Ro,
    Rw,
    Wo,
}

impl Access {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ro" => Access::Ro,
            "rw" => Access::Rw,
            "wo" => Access::Wo,
            _ => return None,
        })
    }
}

/// Word order of two-register values, or byte order within a register: `Big` is the Modbus
/// convention (most significant first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Big,
    Little,
}

impl Order {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "big" => Order::Big,
            "little" => Order::Little,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Register {
    pub name: String,
    pub address: u16,
    pub ty: RegType,
    pub access: Access,
    pub block: String,
    pub unit: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// `value = raw × gain + offset`.
    pub gain: f64,
    pub offset: f64,
    pub description: String,
}

impl Register {
    /// Whether `value` is acceptable for a write (range and, for unscaled integers, whole numbers).
    pub fn accepts(&self, value: f64) -> bool {
        value.is_finite()
            && self.min.is_none_or(|m| value >= m)
            && self.max.is_none_or(|m| value <= m)
            && (self.ty == RegType::F32 || self.gain != 1.0 || self.offset != 0.0 || value.fract() == 0.0)
    }
}

/// One problem of a map: the dotted path of what is wrong (`register[3].type`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl core::fmt::Display for Problem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RegisterMap {
    pub schema_version: u32,
    pub name: String,
    pub map_version: u16,
    pub unit_id: u8,
    pub word_order: Order,
    pub byte_order: Order,
    /// The Modbus function codes the pump answers (each one of [`IMPLEMENTED_FUNCTION_CODES`]).
    pub function_codes: Vec<u8>,
    pub registers: Vec<Register>,
}

/// Collects problems while a map is read.
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), message: message.into() });
    }

    fn int(&mut self, table: &toml::Table, key: &str, path: &str, low: i64, high: i64) -> Option<i64> {
        match table.get(key) {
            None => {
                self.add(path, "is required");
                None
            }
            Some(Value::Integer(n)) if (low..=high).contains(n) => Some(*n),
            Some(_) => {
                self.add(path, format!("must be an integer {low}–{high}"));
                None
            }
        }
    }

    fn text(&mut self, table: &toml::Table, key: &str, path: &str, required: bool) -> Option<String> {
        match table.get(key) {
            None => {
                if required {
                    self.add(path, "is required");
                }
                None
            }
            Some(Value::String(s)) if !(required && s.trim().is_empty()) => Some(s.clone()),
            Some(_) => {
                self.add(path, if required { "must be a non-empty string" } else { "must be a string" });
                None
            }
        }
    }

    fn choice<T>(
        &mut self,
        table: &toml::Table,
        key: &str,
        path: &str,
        parse: fn(&str) -> Option<T>,
        valid: &str,
    ) -> Option<T> {
        match table.get(key) {
            None => {
                self.add(path, "is required");
                None
            }
            Some(Value::String(s)) if parse(s).is_some() => parse(s),
            Some(_) => {
                self.add(path, format!("must be one of {valid}"));
                None
            }
        }
    }

    fn number(&mut self, table: &toml::Table, key: &str, path: &str) -> Option<f64> {
        match table.get(key) {
            None => None,
            Some(Value::Integer(n)) => Some(*n as f64),
            Some(Value::Float(x)) if x.is_finite() => Some(*x),
            Some(_) => {
                self.add(path, "must be a finite number");
                None
            }
        }
    }

    fn order(&mut self, table: &toml::Table, key: &str) -> Order {
        if !table.contains_key(key) {
            return Order::Big;
        }
        self.choice(table, key, key, Order::parse, "big, little").unwrap_or(Order::Big)
    }
}

impl RegisterMap {
    /// Parses and checks a map against the shipped one (names, access): every problem is listed.
    pub fn parse(text: &str) -> Result<Self, Vec<Problem>> {
        let catalogue = Self::shipped();
        Self::parse_with(text, Some(&catalogue))
    }

    /// Parses and checks a map; `catalogue` is the map whose register names and access it must keep
    /// (`None` for the shipped map itself, which defines them).
    pub fn parse_with(text: &str, catalogue: Option<&RegisterMap>) -> Result<Self, Vec<Problem>> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| vec![Problem { path: "toml".into(), message: e.message().to_owned() }])?;
        let mut c = Checker { problems: Vec::new() };
        for key in table.keys() {
            if !TOP_KEYS.contains(&key.as_str()) {
                c.add(key.as_str(), "is not a register-map key");
            }
        }
        match table.get("schema_version") {
            None => c.add("schema_version", "is required"),
            Some(Value::Integer(SCHEMA_VERSION)) => {}
            Some(_) => c.add("schema_version", format!("must be {SCHEMA_VERSION}")),
        }
        let name = c.text(&table, "name", "name", true);
        let map_version = c.int(&table, "map_version", "map_version", 0, 65_535);
        let unit_id = c.int(&table, "unit_id", "unit_id", 1, 247);
        let word_order = c.order(&table, "word_order");
        let byte_order = c.order(&table, "byte_order");
        let codes = Self::function_codes(&mut c, &table);
        let registers = Self::registers(&mut c, &table, catalogue, &codes);
        if !c.problems.is_empty() {
            return Err(c.problems);
        }
        Ok(RegisterMap {
            schema_version: SCHEMA_VERSION as u32,
            name: name.unwrap_or_default(),
            map_version: map_version.unwrap_or_default() as u16,
            unit_id: unit_id.unwrap_or_default() as u8,
            word_order,
            byte_order,
            function_codes: codes,
            registers,
        })
    }

    fn function_codes(c: &mut Checker, table: &toml::Table) -> Vec<u8> {
        let mut codes = Vec::new();
        match table.get("function_codes") {
            None => c.add("function_codes", "is required"),
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("function_codes[{i}]");
                    match item {
                        Value::Integer(n) if IMPLEMENTED_FUNCTION_CODES.iter().any(|&f| i64::from(f) == *n) => {
                            let code = *n as u8;
                            if codes.contains(&code) {
                                c.add(path, "is listed twice");
                            } else {
                                codes.push(code);
                            }
                        }
                        _ => c.add(path, "is not an implemented function code (3, 4, 6, 16)"),
                    }
                }
                if !codes.iter().any(|f| matches!(f, 3 | 4)) {
                    c.add("function_codes", "needs a read function (3 or 4)");
                }
                if !codes.iter().any(|f| matches!(f, 6 | 16)) {
                    c.add("function_codes", "needs a write function (6 or 16)");
                }
            }
            Some(_) => c.add("function_codes", "must be a list of function codes"),
        }
        codes
    }

    fn registers(c: &mut Checker, table: &toml::Table, catalogue: Option<&RegisterMap>, codes: &[u8]) -> Vec<Register> {
        let items = match table.get("register") {
            None => {
                c.add("register", "is required");
                return Vec::new();
            }
            Some(Value::Array(items)) => items,
            Some(_) => {
                c.add("register", "must be a list of tables ([[register]])");
                return Vec::new();
            }
        };
        let mut registers: Vec<Register> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut words: HashMap<u32, String> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("register[{i}]");
            let Value::Table(entry) = item else {
                c.add(at, "must be a table");
                continue;
            };
            for key in entry.keys() {
                if !REGISTER_KEYS.contains(&key.as_str()) {
                    c.add(format!("{at}.{key}"), "is not a register key");
                }
            }
            let name = c.text(entry, "name", &format!("{at}.name"), true);
            let known = match (&name, catalogue) {
                (Some(n), Some(cat)) => {
                    let found = cat.by_name(n).cloned();
                    if found.is_none() {
                        c.add(
                            format!("{at}.name"),
                            format!("{n} is not a register of the reference pump (docs/register-map.md)"),
                        );
                    }
                    found
                }
                _ => None,
            };
            if let Some(n) = &name {
                if names.insert(n.clone(), i).is_some() {
                    c.add(format!("{at}.name"), format!("{n} is defined twice"));
                }
            }
            let address = c.int(entry, "address", &format!("{at}.address"), 0, 65_535);
            let ty = c.choice(entry, "type", &format!("{at}.type"), RegType::parse, "u16, i16, u32, i32, f32");
            let access = c.choice(entry, "access", &format!("{at}.access"), Access::parse, "ro, rw, wo");
            if let (Some(a), Some(k)) = (access, &known) {
                if a != k.access {
                    let want = match k.access {
                        Access::Ro => "ro",
                        Access::Rw => "rw",
                        Access::Wo => "wo",
                    };
                    c.add(format!("{at}.access"), format!("must be {want}, as the reference pump's {}", k.name));
                }
            }
            let block = c.text(entry, "block", &format!("{at}.block"), false);
            let description = c.text(entry, "description", &format!("{at}.description"), false);
            let unit = c.text(entry, "unit", &format!("{at}.unit"), false);
            let min = c.number(entry, "min", &format!("{at}.min"));
            let max = c.number(entry, "max", &format!("{at}.max"));
            if let (Some(lo), Some(hi)) = (min, max) {
                if hi < lo {
                    c.add(format!("{at}.max"), "is below min");
                }
            }
            let gain = c.number(entry, "gain", &format!("{at}.gain"));
            if gain == Some(0.0) {
                c.add(format!("{at}.gain"), "must be a finite number other than 0");
            }
            let offset = c.number(entry, "offset", &format!("{at}.offset"));
            if let (Some(ty), Some(access)) = (ty, access) {
                if ty.words() == 2 && access != Access::Ro && !codes.contains(&16) {
                    c.add(
                        format!("{at}.type"),
                        "a two-register value can only be written with function 16, which function_codes does not list",
                    );
                }
            }
            if let (Some(address), Some(ty), Some(n)) = (address, ty, &name) {
                let last = address + i64::from(ty.words()) - 1;
                if last > 65_535 {
                    c.add(format!("{at}.address"), "does not fit below 65536");
                }
                for w in address..=last.min(65_535) {
                    if let Some(other) = words.insert(w as u32, n.clone()) {
                        c.add(format!("{at}.address"), format!("{n} overlaps {other} at address {w}"));
                        break;
                    }
                }
            }
            if let (Some(name), Some(address), Some(ty), Some(access)) = (name, address, ty, access) {
                registers.push(Register {
                    block: block.or_else(|| known.as_ref().map(|k| k.block.clone())).unwrap_or_default(),
                    description: description
                        .or_else(|| known.as_ref().map(|k| k.description.clone()))
                        .unwrap_or_default(),
                    unit: unit.or_else(|| known.as_ref().map(|k| k.unit.clone())).unwrap_or_default(),
                    name,
                    address: address as u16,
                    ty,
                    access,
                    min,
                    max,
                    gain: gain.unwrap_or(1.0),
                    offset: offset.unwrap_or(0.0),
                });
            }
        }
        if catalogue.is_some() {
            for required in REQUIRED_REGISTERS {
                if !names.contains_key(required) {
                    c.add("register", format!("needs {required} (the bridge cannot run a pump without it)"));
                }
            }
        }
        registers
    }

    /// The shipped map.
    pub fn shipped() -> Self {
        // The shipped file is checked by a test; a broken one must not reach a build unnoticed.
        Self::parse_with(REGISTER_MAP_TOML, None).unwrap_or_else(|e| {
            let all: Vec<String> = e.iter().map(ToString::to_string).collect();
            panic!("shipped register map is invalid: {}", all.join("; "))
        })
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

    /// The words of `value` in `register` (scaling, type, word and byte order), or `None` when the
    /// type cannot hold it (a value outside an integer's range, a non-finite number).
    pub fn encode(&self, register: &Register, value: f64) -> Option<Vec<u16>> {
        let raw = (value - register.offset) / register.gain;
        if !raw.is_finite() {
            return None;
        }
        let bits: u32 = match register.ty.int_range() {
            Some((low, high)) => {
                let n = raw.round();
                if n < low || n > high {
                    return None;
                }
                match register.ty {
                    RegType::U16 | RegType::U32 => n as u32,
                    _ => n as i32 as u32,
                }
            }
            None => {
                let f = raw as f32;
                if !f.is_finite() {
                    return None;
                }
                f.to_bits()
            }
        };
        Some(self.words_of(register.ty, bits))
    }

    /// [`RegisterMap::encode`] for a value the pump reports: one the type cannot hold is saturated to
    /// the type's range (a telemetry register never refuses to be read).
    pub fn encode_saturating(&self, register: &Register, value: f64) -> Vec<u16> {
        if let Some(words) = self.encode(register, value) {
            return words;
        }
        let raw = (value - register.offset) / register.gain;
        let bits = match register.ty.int_range() {
            Some((low, high)) => {
                let n = if raw.is_nan() { 0.0 } else { raw.clamp(low, high) };
                match register.ty {
                    RegType::U16 | RegType::U32 => n as u32,
                    _ => n as i32 as u32,
                }
            }
            None => f32::NAN.to_bits(),
        };
        self.words_of(register.ty, bits)
    }

    /// The value held in `words` (the register's word count).
    pub fn decode(&self, register: &Register, words: &[u16]) -> f64 {
        let fix = |w: u16| if self.byte_order == Order::Little { w.swap_bytes() } else { w };
        let bits = if register.ty.words() == 1 {
            u32::from(fix(words[0]))
        } else {
            let (hi, lo) = match self.word_order {
                Order::Big => (fix(words[0]), fix(words[1])),
                Order::Little => (fix(words[1]), fix(words[0])),
            };
            (u32::from(hi) << 16) | u32::from(lo)
        };
        let raw = match register.ty {
            RegType::U16 | RegType::U32 => f64::from(bits),
            RegType::I16 => f64::from(bits as u16 as i16),
            RegType::I32 => f64::from(bits as i32),
            RegType::F32 => f64::from(f32::from_bits(bits)),
        };
        raw * register.gain + register.offset
    }

    fn words_of(&self, ty: RegType, bits: u32) -> Vec<u16> {
        let fix = |w: u16| if self.byte_order == Order::Little { w.swap_bytes() } else { w };
        if ty.words() == 1 {
            return vec![fix(bits as u16)];
        }
        let (hi, lo) = (fix((bits >> 16) as u16), fix(bits as u16));
        match self.word_order {
            Order::Big => vec![hi, lo],
            Order::Little => vec![lo, hi],
        }
    }
}

/// Encodes a value as a register type's words (big-endian, unscaled; out-of-range values saturate).
pub fn encode(ty: RegType, value: f64) -> Vec<u16> {
    match ty {
        RegType::U16 => vec![value.clamp(0.0, 65_535.0) as u16],
        RegType::I16 => vec![value.clamp(-32_768.0, 32_767.0) as i16 as u16],
        RegType::U32 => {
            let v = value.clamp(0.0, 4_294_967_295.0) as u32;
            vec![(v >> 16) as u16, v as u16]
        }
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

/// Decodes a register type's words (big-endian, unscaled).
pub fn decode(ty: RegType, words: &[u16]) -> f64 {
    match ty {
        RegType::U16 => f64::from(words[0]),
        RegType::I16 => f64::from(words[0] as i16),
        RegType::U32 => f64::from((u32::from(words[0]) << 16) | u32::from(words[1])),
        RegType::I32 => f64::from(((u32::from(words[0]) << 16) | u32::from(words[1])) as i32),
        RegType::F32 => f64::from(f32::from_bits((u32::from(words[0]) << 16) | u32::from(words[1]))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/register-maps/acme-sp200.toml");

    fn paths(text: &str) -> Vec<String> {
        RegisterMap::parse(text).unwrap_err().into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn shipped_map_parses_without_overlaps() {
        let map = RegisterMap::shipped();
        assert_eq!(map.unit_id, 1);
        assert_eq!((map.word_order, map.byte_order), (Order::Big, Order::Big));
        assert!(map.by_name("heartbeat").is_some());
        assert!(map.registers.iter().filter(|r| r.block == "fault").all(|r| r.address >= 100));
        // The shipped map is also valid as a map of its own (against itself).
        assert_eq!(RegisterMap::parse(REGISTER_MAP_TOML).unwrap(), map);
    }

    #[test]
    fn the_example_map_parses_and_differs_in_every_dimension() {
        let map = RegisterMap::parse(EXAMPLE).unwrap();
        let shipped = RegisterMap::shipped();
        assert_ne!(map.unit_id, shipped.unit_id);
        assert_eq!((map.word_order, map.byte_order), (Order::Little, Order::Little));
        assert!(!map.serves_function(3) && map.serves_function(4) && !map.serves_function(6));
        assert!(map.by_name("line_pressure_mmhg").is_none());
        let rate = map.by_name("rate_ml_h").unwrap();
        assert_ne!(rate.address, shipped.by_name("rate_ml_h").unwrap().address);
        assert!(rate.ty == RegType::U32 && rate.gain != 1.0);
    }

    #[test]
    fn overlap_is_refused() {
        let text = REGISTER_MAP_TOML.replace("name = \"model\"\naddress = 1", "name = \"model\"\naddress = 5");
        // model (now at 5) and serial_number (4–5) share word 5: the later register is named.
        assert_eq!(paths(&text), vec!["register[4].address"]);
    }

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let text = REGISTER_MAP_TOML
            .replace("function_codes = [3, 4, 6, 16, 23]", "function_codes = [3, 5, 3]")
            .replace("word_order = \"big\"", "word_order = \"middle\"\ncolour = 1")
            .replace(
                "name = \"vendor_id\"\naddress = 0\ntype = \"u16\"",
                "name = \"vendor\"\naddress = 0\ntype = \"u8\"",
            );
        let got = paths(&text);
        for want in [
            "colour",
            "function_codes",
            "function_codes[1]",
            "function_codes[2]",
            "register[0].name",
            "register[0].type",
            "word_order",
        ] {
            assert!(got.iter().any(|p| p == want), "{want} missing from {got:?}");
        }
        // Without function 16 no writable two-register value can be written: each is named too.
        assert!(got.iter().any(|p| p == "register[8].type"), "{got:?}");
        // No write function left: the two-register writable values cannot be written either.
        let no_writes = REGISTER_MAP_TOML.replace("function_codes = [3, 4, 6, 16, 23]", "function_codes = [3, 6]");
        assert!(paths(&no_writes).iter().all(|p| p.ends_with(".type")));
    }

    #[test]
    fn required_registers_and_access_are_checked() {
        let text = REGISTER_MAP_TOML.replace("name = \"alarm_ack\"", "name = \"alarm_ack_gone\"").replace(
            "name = \"heartbeat\"\naddress = 24\ntype = \"u16\"\naccess = \"rw\"",
            "name = \"heartbeat\"\naddress = 24\ntype = \"u16\"\naccess = \"ro\"",
        );
        let problems = RegisterMap::parse(&text).unwrap_err();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            shown.iter().any(|p| p.starts_with("register[") && p.contains(".name: alarm_ack_gone is not")),
            "{shown:?}"
        );
        assert!(shown.iter().any(|p| p.contains(".access: must be rw")), "{shown:?}");
        assert!(
            shown.iter().any(|p| p == "register: needs alarm_ack (the bridge cannot run a pump without it)"),
            "{shown:?}"
        );
    }

    #[test]
    fn scaling_type_and_orders_round_trip() {
        let map = RegisterMap::parse(EXAMPLE).unwrap();
        let rate = map.by_name("rate_ml_h").unwrap();
        let words = map.encode(rate, 52.5).unwrap();
        assert_eq!(map.decode(rate, &words), 52.5);
        let shipped = RegisterMap::shipped();
        let r = shipped.by_name("rate_ml_h").unwrap();
        assert_eq!(shipped.encode(r, 1.0).unwrap(), vec![0x3F80, 0x0000]);
        assert!(shipped.encode(shipped.by_name("run_mode").unwrap(), -1.0).is_none());
        assert_eq!(shipped.encode_saturating(shipped.by_name("run_mode").unwrap(), -1.0), vec![0]);
    }

    #[test]
    fn words_round_trip() {
        assert_eq!(decode(RegType::F32, &encode(RegType::F32, 52.5)), 52.5);
        assert_eq!(decode(RegType::I32, &encode(RegType::I32, -123_456.0)), -123_456.0);
        assert_eq!(decode(RegType::U16, &encode(RegType::U16, 500.0)), 500.0);
        assert_eq!(decode(RegType::I16, &encode(RegType::I16, -5.0)), -5.0);
        assert_eq!(decode(RegType::U32, &encode(RegType::U32, 70_000.0)), 70_000.0);
        assert_eq!(encode(RegType::F32, 1.0), vec![0x3F80, 0x0000]);
    }

    #[test]
    fn accepts_checks_range_and_integrality() {
        let map = RegisterMap::shipped();
        let run_mode = map.by_name("run_mode").unwrap();
        assert!(run_mode.accepts(1.0));
        assert!(!run_mode.accepts(3.0));
        assert!(!run_mode.accepts(1.5));
        let rate = map.by_name("rate_ml_h").unwrap();
        assert!(rate.accepts(52.5));
        assert!(!rate.accepts(f64::NAN));
        assert!(!rate.accepts(-1.0));
    }
}
