//! Bindings for the hardware simulator (`ketapump-hwsim`): one simulated pump and the codecs that serve
//! it (Modbus RTU and TCP, New Era). Thin: every behaviour lives in the simulator crate; this converts
//! types and errors and applies the communication faults to replies.

use crate::errors::CoreError;
use ketapump_hwsim as hw;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::collections::HashMap;

/// One simulated pump: plant physics plus the reference-pump firmware.
#[pyclass(module = "ketapump._core")]
pub struct SimPump {
    pub(crate) fw: hw::Firmware,
}

fn sim_error(field: &str, problem: impl Into<String>) -> PyErr {
    CoreError::Sim { field: field.to_owned(), problem: problem.into() }.into()
}

#[pymethods]
impl SimPump {
    #[new]
    #[pyo3(signature = (syringe = "bd-plastipak-50", *, seed = 0, serial = 1, slack_taken_up = false, fill_ml = None, compliance_ml_per_mmhg = None, resistance_mmhg_s_per_ml = None, balance_noise_g = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        syringe: &str,
        seed: u64,
        serial: u32,
        slack_taken_up: bool,
        fill_ml: Option<f64>,
        compliance_ml_per_mmhg: Option<f64>,
        resistance_mmhg_s_per_ml: Option<f64>,
        balance_noise_g: Option<f64>,
    ) -> PyResult<Self> {
        let mut cfg = hw::PlantConfig::nominal_for(syringe).map_err(|_| {
            let names: Vec<&str> = hw::CATALOGUE.iter().map(|s| s.name).collect();
            sim_error("syringe", format!("{syringe:?} is not one of {}", names.join(", ")))
        })?;
        cfg.seed = seed;
        cfg.slack_taken_up = slack_taken_up;
        if let Some(v) = fill_ml {
            cfg.fill_ml = v;
        }
        if let Some(v) = compliance_ml_per_mmhg {
            cfg.compliance_ml_per_mmhg = v;
        }
        if let Some(v) = resistance_mmhg_s_per_ml {
            cfg.resistance_mmhg_s_per_ml = v;
        }
        if let Some(v) = balance_noise_g {
            cfg.balance_noise_sd_g = v;
        }
        let fw = hw::Firmware::new(cfg, serial).map_err(CoreError::from)?;
        Ok(Self { fw })
    }

    /// Names of the syringes in the catalogue.
    #[staticmethod]
    fn syringes() -> Vec<&'static str> {
        hw::CATALOGUE.iter().map(|s| s.name).collect()
    }

    /// The syringe catalogue: `[(name, capacity_ml, inner_diameter_mm), ...]`.
    #[staticmethod]
    fn catalogue() -> Vec<(&'static str, f64, f64)> {
        hw::CATALOGUE.iter().map(|s| (s.name, s.capacity_ml, s.inner_diameter_mm)).collect()
    }

    /// The register map (TOML text) compiled into the simulator.
    #[staticmethod]
    fn register_map_toml() -> &'static str {
        hw::regmap::REGISTER_MAP_TOML
    }

    /// Serves Modbus with another register map in the shipped schema (TOML text: a bring-your-own
    /// map); returns its problems as `(path, message)` pairs, the map refused if there is any (empty:
    /// the map is served from now on).
    fn set_register_map(&mut self, text: &str) -> Vec<(String, String)> {
        match hw::RegisterMap::parse(text) {
            Ok(map) => {
                self.fw.set_wire_map(map);
                Vec::new()
            }
            Err(problems) => problems.into_iter().map(|p| (p.path, p.message)).collect(),
        }
    }

    /// The Modbus unit id of the map being served.
    #[getter]
    fn unit_id(&self) -> u8 {
        self.fw.wire_map().unit_id
    }

    /// Advances the pump to pump time `t_s` (earlier times are ignored).
    fn advance_to(&mut self, t_s: f64) -> PyResult<()> {
        Ok(self.fw.advance_to(t_s).map_err(CoreError::from)?)
    }

    #[getter]
    fn t_s(&self) -> f64 {
        self.fw.t_s()
    }

    /// Modbus read (functions 3/4): `(exception_code, words)`, exception 0 meaning success.
    fn read_registers(&self, address: u16, count: u16) -> (u8, Vec<u16>) {
        match self.fw.read_registers(address, count) {
            Ok(words) => (0, words),
            Err(e) => (e as u8, Vec::new()),
        }
    }

    /// Modbus write (functions 6/16): the exception code, 0 meaning success.
    fn write_registers(&mut self, address: u16, values: Vec<u16>) -> u8 {
        self.fw.write_registers(address, &values).err().map_or(0, |e| e as u8)
    }

    /// The current value of a register by name (decoded).
    fn value(&self, name: &str) -> PyResult<f64> {
        if self.fw.map().by_name(name).is_none() {
            return Err(sim_error(name, "is not a register"));
        }
        Ok(self.fw.value(name))
    }

    /// Injects a fault now by its register name (`fault_occlusion`, `fault_comm_drop_pct`, ...).
    fn inject(&mut self, name: &str, value: f64) -> PyResult<()> {
        self.fw.inject(name, value).map_err(|e| sim_error(name, e))
    }

    /// Schedules a fault at pump time `at_s`.
    fn schedule(&mut self, at_s: f64, name: &str, value: f64) -> PyResult<()> {
        self.fw.schedule(at_s, name, value).map_err(|e| sim_error(name, e))
    }

    /// The fate of the next reply: `(drop, corrupt, delay_ms)`.
    fn comm_action(&mut self) -> (bool, bool, u16) {
        let a = self.fw.comm_action();
        (a.drop, a.corrupt, a.delay_ms)
    }

    /// Refreshes the pump-side watchdog.
    fn heartbeat(&mut self) {
        self.fw.heartbeat();
    }

    /// Gravimetric balance readings so far: `[(t_s, grams), ...]`.
    fn balance_readings(&self) -> Vec<(f64, f64)> {
        self.fw.plant().balance_readings().iter().map(|r| (r.t_s, r.grams)).collect()
    }

    /// Volume that really reached the patient (mL): the oracle, not a sensor.
    #[getter]
    fn delivered_ml(&self) -> f64 {
        self.fw.plant().delivered_ml()
    }

    /// True line pressure (mmHg), without sensor faults.
    #[getter]
    fn line_pressure_mmhg(&self) -> f64 {
        self.fw.plant().line_pressure_mmhg()
    }

    /// Volume the motor has pushed since the counters were cleared (mL): steps × mL per step, what a
    /// pump without a plunger sensor counts (the New Era `DIS`).
    #[getter]
    fn motor_infused_ml(&self) -> f64 {
        self.fw.motor_infused_ml()
    }

    #[getter]
    fn alarm_bits(&self) -> u16 {
        self.fw.alarms()
    }

    #[getter]
    fn run_mode(&self) -> u16 {
        self.fw.run_mode() as u16
    }
}

/// Modbus RTU on the pump side of a serial line (framing, CRC, silence rules, communication faults).
#[pyclass(module = "ketapump._core")]
pub struct RtuPort {
    port: hw::RtuPort,
}

/// A rejection as Python sees it: `(reason, first bytes, length)`.
type RejectRow = (String, Py<PyBytes>, usize);

/// Empties a codec's reject log: `([(reason, first bytes, length), ...], not kept)`.
fn take_rejects(py: Python<'_>, log: &mut hw::wire::RejectLog) -> (Vec<RejectRow>, u64) {
    let (held, overflow) = log.take();
    let rows = held.into_iter().map(|r| (r.reason, PyBytes::new(py, &r.head).unbind(), r.len)).collect();
    (rows, overflow)
}

/// Applies communication faults to a reply. The fate (`action`) is decided as the request arrives,
/// before it runs, so the write that sets a fault is still answered.
pub(crate) fn faulted_reply(
    py: Python<'_>,
    action: hw::CommAction,
    reply: Vec<u8>,
    corrupt: impl Fn(&[u8]) -> Vec<u8>,
) -> Option<(Py<PyBytes>, u16)> {
    if action.drop {
        return None;
    }
    let bytes = if action.corrupt { corrupt(&reply) } else { reply };
    Some((PyBytes::new(py, &bytes).unbind(), action.delay_ms))
}

/// Breaks the CRC of an RTU frame.
fn corrupt_rtu(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    if let Some(last) = out.last_mut() {
        *last ^= 0xFF;
    }
    out
}

#[pymethods]
impl RtuPort {
    #[new]
    #[pyo3(signature = (unit_id = 1, baud = 19_200))]
    fn new(unit_id: u8, baud: u32) -> Self {
        Self { port: hw::RtuPort::new(unit_id, baud) }
    }

    /// Feeds bytes received at `line_s` (real seconds on the line, for the inter-frame gap; the caller
    /// advances the pump to pump time first); returns the replies to send as `(bytes, delay_ms)`.
    fn process(&mut self, py: Python<'_>, line_s: f64, data: &[u8], pump: &mut SimPump) -> Vec<(Py<PyBytes>, u16)> {
        let frames = self.port.feed(line_s, data);
        self.execute(py, frames, pump)
    }

    /// Completes a frame whose end only a silent gap can mark (unknown function codes).
    fn idle(&mut self, py: Python<'_>, line_s: f64, pump: &mut SimPump) -> Vec<(Py<PyBytes>, u16)> {
        let frames = self.port.idle(line_s);
        self.execute(py, frames, pump)
    }

    /// The frames rejected since the last call: `([(reason, first bytes, length), ...], not kept)`.
    fn take_rejects(&mut self, py: Python<'_>) -> (Vec<RejectRow>, u64) {
        take_rejects(py, self.port.rejects())
    }
}

impl RtuPort {
    fn execute(&self, py: Python<'_>, frames: Vec<(u8, Vec<u8>)>, pump: &mut SimPump) -> Vec<(Py<PyBytes>, u16)> {
        let mut replies = Vec::new();
        for (unit, pdu) in frames {
            let action = pump.fw.comm_action();
            if let Some(reply) = self.port.execute(&mut pump.fw, unit, &pdu) {
                replies.extend(faulted_reply(py, action, reply, corrupt_rtu));
            }
        }
        replies
    }
}

/// One Modbus TCP connection on the pump side: MBAP framing, unit-id rules, communication faults.
#[pyclass(module = "ketapump._core")]
pub struct ModbusTcpConnection {
    stream: hw::MbapStream,
    unit_id: u8,
}

#[pymethods]
impl ModbusTcpConnection {
    #[new]
    #[pyo3(signature = (unit_id = 1))]
    fn new(unit_id: u8) -> Self {
        Self { stream: hw::MbapStream::new(), unit_id }
    }

    /// Feeds received bytes and runs the complete requests on `pump` (advanced by the caller); returns
    /// the replies to send, in order, as `(bytes, delay_ms)`. A dropped reply is simply absent (TCP has
    /// no checksum to corrupt). After a header that cannot be valid, [`closed`] is true.
    fn process(&mut self, py: Python<'_>, data: &[u8], pump: &mut SimPump) -> Vec<(Py<PyBytes>, u16)> {
        let mut replies = Vec::new();
        for request in self.stream.feed(data) {
            let action = hw::CommAction { corrupt: false, ..pump.fw.comm_action() };
            let reply = hw::MbapStream::answer(&mut pump.fw, self.unit_id, &request);
            replies.extend(faulted_reply(py, action, reply, <[u8]>::to_vec));
        }
        replies
    }

    /// The stream lost its framing (see `docs/register-map.md`): the connection must be closed.
    #[getter]
    fn closed(&self) -> bool {
        self.stream.is_closed()
    }

    /// Bytes received that do not yet make a request.
    #[getter]
    fn pending(&self) -> usize {
        self.stream.pending()
    }

    /// The frames rejected since the last call: `([(reason, first bytes, length), ...], not kept)`.
    fn take_rejects(&mut self, py: Python<'_>) -> (Vec<RejectRow>, u64) {
        take_rejects(py, self.stream.rejects())
    }
}

/// The pump side of a New Era NE-1000 serial line: several pump addresses may share it.
#[pyclass(module = "ketapump._core")]
pub struct NespPort {
    port: hw::NespPort,
}

#[pymethods]
impl NespPort {
    #[new]
    fn new() -> Self {
        Self { port: hw::NespPort::new() }
    }

    /// Feeds bytes received at `line_s` (real seconds on the line, for the inter-byte gap) and runs the
    /// packets at pump time `now_s` on `pumps` (address → pump, advanced by the caller). Returns the
    /// replies as `(bytes, delay_ms)`; bursts and packets for absent addresses get none.
    fn process(
        &mut self,
        py: Python<'_>,
        line_s: f64,
        now_s: f64,
        data: &[u8],
        pumps: HashMap<u8, Bound<'_, SimPump>>,
    ) -> Vec<(Py<PyBytes>, u16)> {
        let mut replies = Vec::new();
        for packet in self.port.feed(line_s, data) {
            let burst = hw::nesp::burst_targets(&packet);
            if !burst.is_empty() {
                for address in burst {
                    if let Some(pump) = pumps.get(&address) {
                        self.port.handle_burst(now_s, &packet, address, &mut pump.borrow_mut().fw);
                    }
                }
                continue;
            }
            let Some(pump) = self.port.target_of(&packet).and_then(|a| pumps.get(&a)) else {
                continue;
            };
            let mut pump = pump.borrow_mut();
            let action = pump.fw.comm_action();
            if let Some(reply) = self.port.handle(now_s, &packet, &mut pump.fw) {
                replies.extend(faulted_reply(py, action, reply, hw::nesp::corrupt));
            }
        }
        replies
    }

    /// Runs the safe-mode watchdog of every address at pump time `now_s` (call periodically).
    fn poll(&mut self, now_s: f64, pumps: HashMap<u8, Bound<'_, SimPump>>) {
        for (address, pump) in pumps {
            self.port.poll(now_s, address, &mut pump.borrow_mut().fw);
        }
    }

    /// The packets rejected since the last call: `([(reason, first bytes, length), ...], not kept)`.
    fn take_rejects(&mut self, py: Python<'_>) -> (Vec<RejectRow>, u64) {
        take_rejects(py, self.port.rejects())
    }
}
