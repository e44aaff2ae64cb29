// ketapump operator console: the board (every chair's card), a chair's detail page (live plots and the
// session's record) and a patient's course. Plain browser JavaScript, no framework and nothing loaded from
// elsewhere: clinics run offline. Every number shown comes from the console's API (the same cards the
// terminal draws); the only thing computed here is the layout.
"use strict";
(() => {
  const TOKEN_KEY = "ketapump-token";
  const OPERATOR_KEY = "ketapump-operator";
  const RECORD_KINDS = new Set(["phase", "action", "alarm", "record", "ended", "answer", "finding"]);
  const SERIES_EVERY_S = 5;
  const $ = (id) => document.getElementById(id);
  const state = { actions: [], protocols: [], cards: {}, elements: {}, series: [], sessionId: null };
  // Telemetry-to-browser latency of each tick received (s), for the benchmark and the status line.
  const latencies = (window.ketapumpLatencies = []);

  // ----- access: the token (sessionStorage, or #token=… once) and the operator's name ---------------
  (function takeTokenFromFragment() {
    const m = location.hash.match(/token=([^&]+)/);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  })();

  function headers(extra) {
    const h = Object.assign({ "X-Ketapump-Client": "web" }, extra || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) h.Authorization = "Bearer " + token;
    return h;
  }

  async function askToken() {
    const token = await ask("Access token", "This console needs its access token:", { required: true });
    if (!token) return false;
    sessionStorage.setItem(TOKEN_KEY, token.trim());
    return true;
  }

  async function api(path, options) {
    options = options || {};
    const init = { method: options.method || "GET", headers: headers(options.body ? { "Content-Type": "application/json" } : {}) };
    if (options.body) init.body = JSON.stringify(options.body);
    const reply = await fetch(path, init);
    if (reply.status === 401 && (await askToken())) return api(path, options);
    const data = await reply.json().catch(() => ({ code: "bad_reply", message: reply.statusText }));
    if (!reply.ok) {
      const error = new Error(data.message || reply.statusText);
      error.status = reply.status;
      error.data = data;
      throw error;
    }
    return data;
  }

  function setupOperator() {
    const input = $("operator");
    if (!input) return;
    input.value = localStorage.getItem(OPERATOR_KEY) || "";
    input.addEventListener("change", () => localStorage.setItem(OPERATOR_KEY, input.value.trim()));
  }

  async function operator() {
    const input = $("operator");
    let name = input ? input.value.trim() : "";
    if (!name) {
      name = ((await ask("Who is acting?", "Your name (recorded with every action):", { required: true })) || "").trim();
      if (name && input) {
        input.value = name;
        localStorage.setItem(OPERATOR_KEY, name);
      }
    }
    return name || null;
  }

  // ----- the reason prompt ----------------------------------------------------------------------------
  const PROMPT_HTML = `<form method="dialog" id="prompt-form">
      <strong id="prompt-title"></strong>
      <div id="prompt-params"></div>
      <label><span id="prompt-text"></span><input id="prompt-input" autocomplete="off"></label>
      <menu><button type="button" id="prompt-cancel">Cancel</button><button value="ok" class="primary" id="prompt-ok">OK</button></menu>
    </form>`;

  function promptDialog() {
    let dialog = $("prompt-dialog");
    if (!dialog) {
      dialog = el("dialog");
      dialog.id = "prompt-dialog";
      dialog.innerHTML = PROMPT_HTML;
      document.body.appendChild(dialog);
    }
    return dialog;
  }

  // A field of an action's form (GET /api/actions: number, text, or a choice from a vocabulary).
  function paramField(p) {
    const label = el("label");
    label.append(el("span", "", `${p.label}${p.unit ? " (" + p.unit + ")" : ""}${p.required ? "" : " — optional"}`));
    let input;
    if (p.kind === "choice") {
      input = el("select");
      if (!p.required) input.append(el("option", "", ""));
      for (const c of p.choices || []) {
        const option = el("option", "", c.label || c.value);
        option.value = c.value;
        input.append(option);
      }
    } else {
      input = el("input");
      input.type = p.kind === "number" ? "number" : "text";
      if (p.kind === "number") input.step = "any";
      input.autocomplete = "off";
    }
    input.name = p.name;
    input.dataset.param = p.name;
    input.dataset.kind = p.kind;
    input.required = !!p.required;
    label.append(input);
    return label;
  }

  // Asks for a text (the reason) and, with opts.params, the action's values: resolves to the text (or,
  // with params, {reason, params}), or null when cancelled.
  function ask(title, text, opts) {
    opts = opts || {};
    const dialog = promptDialog();
    $("prompt-title").textContent = title;
    $("prompt-text").textContent = text;
    const fields = (opts.params || []).map(paramField);
    $("prompt-params").replaceChildren(...fields);
    const input = $("prompt-input");
    input.value = opts.value || "";
    input.required = !!opts.required;
    input.type = opts.type || "text";
    const values = () => {
      const params = {};
      for (const f of $("prompt-params").querySelectorAll("[data-param]")) {
        const raw = f.value.trim();
        if (raw === "") continue; // left out: the engine says if it was needed
        params[f.dataset.param] = f.dataset.kind === "number" ? Number(raw) : raw;
      }
      return params;
    };
    return new Promise((resolve) => {
      const done = (value) => {
        $("prompt-form").onsubmit = null;
        $("prompt-cancel").onclick = null;
        dialog.close();
        resolve(value);
      };
      $("prompt-form").onsubmit = (e) => {
        e.preventDefault();
        if (opts.required && !input.value.trim()) return;
        done(opts.params ? { reason: input.value, params: values() } : input.value);
      };
      $("prompt-cancel").onclick = () => done(null);
      dialog.showModal();
      const first = fields.length ? fields[0].querySelector("[data-param]") : input;
      first.focus();
      if (first.select) first.select();
    });
  }

  // ----- the event stream (fetch, so the token goes in a header; reconnects by itself) -------------
  function setConnection(text, cls) {
    const el = $("connection");
    if (!el) return;
    el.textContent = text;
    el.className = "status " + (cls || "");
  }

  async function follow(path, onEvent) {
    let delay = 500;
    for (;;) {
      try {
        const reply = await fetch(path, { headers: headers({ Accept: "text/event-stream" }) });
        if (reply.status === 401) {
          await askToken();
          continue;
        }
        if (!reply.ok || !reply.body) throw new Error("event stream answered " + reply.status);
        setConnection("live", "live");
        delay = 500;
        const reader = reply.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            dispatch(buffer.slice(0, cut), onEvent);
            buffer = buffer.slice(cut + 2);
          }
        }
      } catch (e) {
        // fall through to the reconnection below
      }
      setConnection("disconnected: reconnecting…", "down");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }

  function dispatch(block, onEvent) {
    let kind = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      if (line.startsWith("event:")) kind = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (!data.length) return;
    const payload = JSON.parse(data.join("\n"));
    if (kind === "tick" && payload.emitted_at) {
      latencies.push(Date.now() / 1000 - payload.emitted_at);
      if (latencies.length > 5000) latencies.splice(0, latencies.length - 5000);
    }
    onEvent(kind, payload);
  }

  // ----- formatting -----------------------------------------------------------------------------------
  const num = (v, d) => (v === null || v === undefined ? "—" : Number(v).toFixed(d === undefined ? 1 : d));
  function clock(s) {
    if (s === null || s === undefined) return "—";
    s = Math.max(0, Math.floor(s));
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }
  const ARROW = { up: "↑", down: "↓", steady: "→" };
  // A vital's alarm limits in force as people say them: "alarm < 90 or ≥ 146 mmHg (baseline +20 %)".
  const tenth = (x) => String(Math.round(x * 10) / 10); // 146.4, 90, 92.5
  function limitsText(v) {
    const parts = [];
    if (v.low !== null && v.low !== undefined) parts.push(`< ${tenth(v.low)}`);
    if (v.high !== null && v.high !== undefined) parts.push(`≥ ${tenth(v.high)}`);
    const relative = v.high_relative ? ` (baseline +${tenth(v.rise_max_pct)} %)` : "";
    return parts.length ? `alarm ${parts.join(" or ")} ${v.unit}${relative}` : "";
  }
  // Its baseline and the observation's band around it: "baseline 122 · band ±20 % 98–146".
  function baselineText(v) {
    if (v.baseline === null || v.baseline === undefined) return "baseline —";
    return `baseline ${tenth(v.baseline)} · band ±${tenth(v.band_pct)} % ${tenth(v.band_low)}–${tenth(v.band_high)}`;
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // ----- the chair card ---------------------------------------------------------------------------------
  // The actions come right under the one-line heading: the lines below them grow and shrink as the
  // session goes, and a button must not move under the operator's finger. STOP keeps the top right
  // corner however many lines the other actions wrap to.
  const CARD_HTML = `
    <h2><span data-f="name"></span><span class="badge" data-f="badge"></span><a data-f="detail">details</a></h2>
    <div class="actions"><div class="moves" data-f="moves"></div><div data-f="halt"></div></div>
    <div class="error" data-f="error"></div>
    <div class="who" data-f="who"></div>
    <div class="grid">
      <span class="k">phase</span><span data-f="phase"></span>
      <span class="k">delivered</span><span><span data-f="dose"></span><div class="bar"><span data-f="dosebar"></span></div></span>
      <span class="k">rate</span><span data-f="rate"></span>
      <span class="k">line pressure</span><span><span data-f="pressure"></span><div class="bar pressure"><span data-f="pressurebar"></span></div></span>
    </div>
    <table class="vitals"><tbody data-f="vitals"></tbody></table>
    <div class="estimate" data-f="plasma"></div>
    <div class="alarms" data-f="alarms"></div>
    <div data-f="questions"></div>
    <div class="bedside" data-f="bedside"></div>
    <div class="last" data-f="last"></div>
    <div class="ended-line" data-f="ended"></div>`;

  function cardElement(card) {
    const root = el("article", "card");
    root.id = "card-" + card.chair;
    root.dataset.chair = card.chair;
    root.innerHTML = CARD_HTML;
    const f = {};
    root.querySelectorAll("[data-f]").forEach((n) => (f[n.dataset.f] = n));
    f.detail.href = "/chairs/" + encodeURIComponent(card.chair);
    const buttons = {};
    const start = el("button", "primary", "Start session");
    start.dataset.action = "start";
    start.addEventListener("click", () => openStart(card.chair));
    f.moves.appendChild(start);
    buttons.start = start;
    for (const spec of state.actions) {
      const b = el("button", spec.style === "danger" ? "stop" : "", spec.label);
      b.dataset.action = spec.name;
      b.title = spec.prompt;
      b.addEventListener("click", () => act(card.chair, spec));
      (spec.name === "stop" ? f.halt : f.moves).appendChild(b);
      buttons[spec.name] = b;
    }
    state.elements[card.chair] = { root, f, buttons, questionKey: "" };
    return root;
  }

  function render(card) {
    state.cards[card.chair] = card;
    let parts = state.elements[card.chair];
    if (!parts) {
      const board = $("board");
      if (!board) return;
      board.appendChild(cardElement(card));
      parts = state.elements[card.chair];
    }
    const { root, f, buttons } = parts;
    const s = card.session;
    const unacked = (card.alarms || []).filter((a) => !a.acknowledged);
    root.classList.toggle("paused", card.pump_state === "paused");
    root.classList.toggle("alarmed", unacked.length > 0 || ["alarm", "stopped"].includes(card.pump_state));
    root.dataset.state = card.state;
    root.dataset.pumpState = card.pump_state || "";
    const holders = card.paused_by || [];
    root.dataset.pausedBy = holders.join(" ");
    f.name.textContent = card.name;
    let badge = "idle", cls = "";
    if (card.state === "ended") {
      badge = "ended: " + ((card.ended && card.ended.outcome) || "error");
      cls = "ended";
    } else if (card.state === "active") {
      if (card.pump_state === "paused") [badge, cls] = ["paused by " + (holders.join(" and ") || "?"), "paused"];
      else if (["alarm", "stopped"].includes(card.pump_state)) [badge, cls] = [card.pump_state, "alarm"];
      else if (card.slowed) [badge, cls] = [(card.phase || "infusion") + " · slowed", "paused"];
      else [badge, cls] = [card.phase || "starting", "running"];
    }
    f.badge.textContent = badge;
    f.badge.className = "badge " + cls;
    if (s) {
      const course = el("a", "", s.patient.id);
      course.href = "/patients/" + encodeURIComponent(s.patient.id);
      course.title = "the patient's course";
      const sitter = s.sitter ? `sitter ${s.sitter.name}, ${s.sitter.phone}` : "no sitter recorded";
      f.who.replaceChildren(course, document.createTextNode(` · ${s.patient.weight_kg} kg · ${s.protocol} · started by ${s.started_by || "?"} · ${sitter}`));
    } else {
      f.who.textContent = `no session · pump ${card.pump}`;
    }
    f.phase.textContent = s ? `${card.phase || "—"} · ${clock(card.phase_elapsed_s)} elapsed · ${clock(card.remaining_s)} left` : "—";
    const dose = card.dose_mg || 0;
    f.dose.textContent = s
      ? `${num(card.delivered_mg, 2)} of ${num(dose, 2)} mg (${num(card.delivered_ml, 2)} of ${num(card.planned_ml, 2)} mL) · plan ${num(card.programmed_mg, 2)} mg`
      : "—";
    f.dosebar.style.width = (dose ? Math.min(100, (100 * card.delivered_mg) / dose) : 0) + "%";
    const programmed = card.programmed_rate_ml_h;
    const plan = programmed === null || programmed === undefined ? "" : `${num(programmed)} mL/h${card.slowed ? " (slowed from " + num(card.planned_rate_ml_h) + ")" : ""} programmed · `;
    f.rate.textContent = s ? `${plan}${num(card.commanded_rate_ml_h)} mL/h commanded · ${num(card.measured_rate_ml_h)} mL/h measured` : "—";
    const threshold = card.occlusion_threshold_mmhg;
    f.pressure.textContent = s ? `${num(card.pressure_mmhg, 0)} mmHg · alarm at ${num(threshold, 0)} mmHg` : "—";
    f.pressurebar.style.width = (threshold && card.pressure_mmhg ? Math.min(100, (100 * card.pressure_mmhg) / threshold) : 0) + "%";
    f.vitals.replaceChildren(
      ...Object.entries(card.vitals || {}).map(([channel, v]) => {
        const row = el("tr", v.past_limit ? "past" : v.within_band === false ? "outband" : "");
        row.dataset.channel = channel;
        const limits = el("td", "lim", limitsText(v));
        limits.append(el("div", "base", baselineText(v)));
        row.append(
          el("td", "", v.label),
          el("td", "v", v.value === null ? "—" : `${num(v.value, 0)} ${v.unit}`),
          el("td", "", ARROW[v.trend] || ""),
          limits
        );
        return row;
      })
    );
    const plasma = card.plasma || {};
    f.plasma.replaceChildren(
      document.createTextNode(`plasma ketamine ${plasma.ug_ml === null || plasma.ug_ml === undefined ? "—" : num(plasma.ug_ml, 3)} µg/mL `),
      el("em", "", plasma.label || "model estimate")
    );
    f.plasma.title = plasma.citation || "";
    f.alarms.replaceChildren(
      ...(card.alarms || []).slice(-5).map((a) => el("div", a.acknowledged ? "ack" : "", `${a.acknowledged ? "acknowledged" : "ALARM"} · ${a.code} · ${a.detail}`))
    );
    renderQuestions(card, parts);
    const last = card.last_action;
    f.last.textContent = last
      ? `last action: ${last.action} by ${last.operator || "anonymous"} (${last.source}) — ${last.accepted ? "done" : "refused: " + last.why}${last.reason ? " (" + last.reason + ")" : ""}`
      : "";
    const bedside = (card.observations || [])
      .map((o) => [o.t_s, `${clock(o.t_s)} observed ${o.kind}${o.value === null || o.value === undefined ? "" : " " + o.value}${o.note ? " (" + o.note + ")" : ""} · ${o.operator || "anonymous"}`])
      .concat((card.medications || []).map((m) => [m.t_s, `${clock(m.t_s)} given ${m.drug} ${m.dose} ${m.unit} ${m.route}${m.reason ? " (" + m.reason + ")" : ""} · ${m.operator || "anonymous"}`]))
      .sort((a, b) => a[0] - b[0]);
    f.bedside.replaceChildren(...bedside.slice(-4).map(([, text]) => el("div", "", text)));
    f.ended.textContent = card.ended ? `session ${card.ended.outcome}: ${num(card.ended.delivered_mg, 2)} of ${num(card.ended.programmed_mg, 2)} mg delivered` : "";
    showVerdictLine(parts, card);
    const active = card.state === "active";
    buttons.start.hidden = active;
    for (const spec of state.actions) {
      const states = [card.pump_state, card.phase].concat(card.slowed ? ["slowed"] : []);
      const shown = spec.name === "stop" || (active && (!spec.shown_when.length || states.some((x) => spec.shown_when.includes(x))));
      buttons[spec.name].hidden = !shown; // STOP is never hidden and never disabled
    }
  }

  function renderQuestions(card, parts) {
    const questions = card.questions || [];
    const key = questions.map((q) => q.question_id).join(",");
    if (key === parts.questionKey) return; // keep the buttons a nurse may be pressing
    parts.questionKey = key;
    parts.f.questions.replaceChildren(
      ...questions.map((q) => {
        const box = el("div", "question");
        box.dataset.question = q.question_id;
        const label = { checklist: "Checklist: ", syringe_change: "Syringe change: " }[q.question] || "Needs a reason: ";
        box.append(el("div", "", label + q.text));
        if (q.question === "syringe_change") {
          const loaded = el("button", "primary", "Next syringe loaded");
          const stop = el("button", "", "Stop the infusion");
          loaded.addEventListener("click", () => answer(card.chair, q, true));
          stop.addEventListener("click", () => answer(card.chair, q, false));
          box.append(loaded, stop);
        } else if (q.question === "checklist") {
          const yes = el("button", "primary", "Yes");
          const no = el("button", "", "No");
          yes.addEventListener("click", () => answer(card.chair, q, true));
          no.addEventListener("click", () => answer(card.chair, q, false));
          box.append(yes, no);
        } else {
          const give = el("button", "primary", "Give a reason");
          const decline = el("button", "", "Decline");
          give.addEventListener("click", async () => {
            const reason = await ask("Reason", q.text, { required: true });
            if (reason) answer(card.chair, q, reason);
          });
          decline.addEventListener("click", () => answer(card.chair, q, null));
          box.append(give, decline);
        }
        return box;
      })
    );
  }

  // An action's verdict stays on its card for six seconds: the renders in between keep it, not wipe it.
  function flash(chair, text, bad) {
    const parts = state.elements[chair];
    if (!parts) return window.alert(text);
    const shown = { text, bad };
    parts.flash = shown;
    showVerdictLine(parts, state.cards[chair]);
    setTimeout(() => {
      if (parts.flash !== shown) return; // a newer verdict keeps its own six seconds
      parts.flash = null;
      showVerdictLine(parts, state.cards[chair]);
    }, 6000);
  }

  // The line under the buttons: the latest verdict while it lasts, else the card's own error.
  function showVerdictLine(parts, card) {
    const shown = parts.flash;
    parts.f.error.textContent = shown ? shown.text : (card && card.error) || "";
    parts.f.error.style.color = shown && !shown.bad ? "var(--dim)" : "";
  }

  async function act(chair, spec) {
    const who = await operator();
    if (!who) return;
    const name = (state.cards[chair] || {}).name || chair;
    const card = state.cards[chair] || {};
    const alarms = [...new Set((card.alarms || []).filter((a) => !a.acknowledged).map((a) => a.code))];
    const params = (spec.params || []).map((p) =>
      p.vocabulary === "chair_alarms" ? Object.assign({}, p, { choices: alarms.map((code) => ({ value: code, label: code })) }) : p
    );
    const answer = await ask(`${spec.label} — ${name}`, spec.prompt, {
      required: spec.reason === "required",
      value: spec.default_reason || "",
      params,
    });
    if (answer === null) return;
    try {
      const body = { operator: who, reason: answer.reason, params: answer.params };
      const verdict = await api(`/api/chairs/${encodeURIComponent(chair)}/actions/${spec.name}`, { method: "POST", body });
      flash(chair, verdict.status === "refused" ? `${spec.label} refused: ${verdict.why}` : `${spec.label}: ${verdict.status}`, verdict.status === "refused");
    } catch (e) {
      flash(chair, e.message, true);
    }
  }

  async function answer(chair, q, value) {
    const who = await operator();
    if (!who) return;
    try {
      await api(`/api/chairs/${encodeURIComponent(chair)}/questions/${q.question_id}`, { method: "POST", body: { operator: who, value } });
    } catch (e) {
      flash(chair, e.message, true);
    }
  }

  // ----- starting a session ---------------------------------------------------------------------------
  function openStart(chair) {
    const dialog = $("start-dialog");
    if (!dialog) return (location.href = "/");
    const form = $("start-form");
    $("start-chair").textContent = (state.cards[chair] || {}).name || chair;
    $("start-protocol").replaceChildren(...state.protocols.map((p) => el("option", "", p)));
    form.protocol.value = (state.cards[chair] || {}).default_protocol || state.protocols[0] || "";
    $("start-findings").replaceChildren();
    $("start-cancel").onclick = () => dialog.close();
    form.onsubmit = async (e) => {
      e.preventDefault();
      const who = await operator();
      if (!who) return;
      const confirmations = {};
      for (const line of form.confirmations.value.split("\n")) {
        const at = line.indexOf("=");
        if (at > 0 && line.slice(at + 1).trim()) confirmations[line.slice(0, at).trim()] = line.slice(at + 1).trim();
      }
      const body = {
        operator: who,
        patient: { id: form.id.value.trim(), weight_kg: Number(form.weight_kg.value) },
        protocol: form.protocol.value,
        checklist: form.checklist.value,
        confirmations,
      };
      if (form.sitter_name.value.trim() || form.sitter_phone.value.trim())
        body.sitter = { name: form.sitter_name.value.trim(), phone: form.sitter_phone.value.trim() };
      if (form.height_cm.value) body.patient.height_cm = Number(form.height_cm.value);
      if (form.sex.value) body.patient.sex = form.sex.value;
      try {
        render(await api(`/api/chairs/${encodeURIComponent(chair)}/session`, { method: "POST", body }));
        dialog.close();
      } catch (err) {
        showRefusal(err.data || { message: err.message }, form);
      }
    };
    dialog.showModal();
  }

  function showRefusal(data, form) {
    const box = $("start-findings");
    const items = [el("div", "", data.message || "refused")];
    for (const f of data.findings || []) items.push(el("div", f.severity, `${f.severity} · ${f.kind} · ${f.message}`));
    for (const p of data.problems || []) items.push(el("div", "hard", p));
    box.replaceChildren(...items);
    if (data.code === "confirmation_required") {
      const have = form.confirmations.value.trim();
      const missing = (data.needs_reason || []).filter((k) => !have.includes(k + "="));
      form.confirmations.value = (have ? have + "\n" : "") + missing.map((k) => k + "=").join("\n");
    }
  }

  // ----- interrupted sessions (a serve that was killed) ----------------------------------------------
  async function showInterrupted() {
    const panel = $("interrupted");
    if (!panel) return;
    const found = await api("/api/interrupted").catch(() => []);
    panel.hidden = !found.length;
    if (!found.length) return;
    const items = [el("h2", "", `Interrupted sessions (${found.length}): begun and never ended`)];
    items.push(
      el(
        "p",
        "",
        "The process that ran them stopped; each pump stopped by its own watchdog. The infusion can be continued with the command below: it reconciles the delivered volume with the pump's own counter and refuses if they disagree. Observe and record the rest of the session as your protocol requires."
      )
    );
    for (const s of found) {
      items.push(el("div", "", `${s.patient_id} · ${s.protocol} · started ${s.started_at} · ${s.chair ? "chair " + s.chair : "pump " + (s.pump || "?")} · delivered ${num(s.delivered_ml, 2)} mL of ${num(s.volume_ml, 2)} mL`));
      if (s.resume_command) items.push(el("pre", "", s.resume_command.map((w) => (/\s/.test(w) ? `'${w}'` : w)).join(" ")));
      else items.push(el("div", "error", s.problem || "no resume possible"));
    }
    panel.replaceChildren(...items);
  }

  // ----- plots (canvas, no library) -------------------------------------------------------------------
  const COLORS = ["#1f5fa8", "#c0182a", "#1e7d3a", "#a86400", "#7a2e8e", "#555"];

  function plot(canvas, lines, opts) {
    if (!canvas) return;
    opts = opts || {};
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    canvas.width = w * dpr;
    canvas.height = h * dpr;
    const g = canvas.getContext("2d");
    g.scale(dpr, dpr);
    g.clearRect(0, 0, w, h);
    const m = { l: 48, r: 10, t: 8, b: 24 };
    const pts = lines.flatMap((l) => l.points.filter((p) => p[1] !== null && p[1] !== undefined && isFinite(p[1])));
    const hl = (opts.hlines || []).filter((x) => x.y !== null && x.y !== undefined);
    let xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]).concat(hl.map((x) => x.y));
    if (opts.zero) ys.push(0);
    let x0 = Math.min(0, ...xs), x1 = Math.max(1, ...xs);
    let y0 = ys.length ? Math.min(...ys) : 0, y1 = ys.length ? Math.max(...ys) : 1;
    if (y1 - y0 < 1e-9) [y0, y1] = [y0 - 1, y1 + 1];
    const pad = (y1 - y0) * 0.08;
    y0 -= opts.zero && y0 >= 0 ? 0 : pad;
    y1 += pad;
    const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (w - m.l - m.r);
    const Y = (y) => h - m.b - ((y - y0) / (y1 - y0)) * (h - m.t - m.b);
    g.font = "11px system-ui, sans-serif";
    g.strokeStyle = "#d5dce3";
    g.fillStyle = "#5d6b78";
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = y0 + ((y1 - y0) * i) / 4;
      g.beginPath();
      g.moveTo(m.l, Y(y));
      g.lineTo(w - m.r, Y(y));
      g.stroke();
      g.fillText(Math.abs(y) < 10 ? y.toFixed(2) : y.toFixed(0), 4, Y(y) + 4);
    }
    for (let i = 0; i <= 5; i++) {
      const x = x0 + ((x1 - x0) * i) / 5;
      const text = x.toFixed(0) + " min";
      const width = g.measureText(text).width;
      g.fillText(text, Math.min(X(x) - width / 2, w - m.r - width), h - 6);
    }
    for (const line of hl) {
      g.setLineDash([5, 4]);
      g.strokeStyle = line.color || "#c0182a";
      g.beginPath();
      g.moveTo(m.l, Y(line.y));
      g.lineTo(w - m.r, Y(line.y));
      g.stroke();
      g.setLineDash([]);
      g.fillStyle = line.color || "#c0182a";
      g.fillText(line.label, w - m.r - g.measureText(line.label).width - 2, Y(line.y) + (Y(line.y) < m.t + 24 ? 12 : -3));
    }
    let legendX = m.l + 6;
    lines.forEach((line, i) => {
      g.strokeStyle = line.color || COLORS[i % COLORS.length];
      g.lineWidth = 1.8;
      g.setLineDash(line.dash ? [6, 4] : []);
      g.beginPath();
      let started = false;
      for (const [x, y] of line.points) {
        if (y === null || y === undefined || !isFinite(y)) {
          started = false;
          continue;
        }
        if (started) g.lineTo(X(x), Y(y));
        else g.moveTo(X(x), Y(y));
        started = true;
      }
      g.stroke();
      g.setLineDash([]);
      g.fillStyle = line.color || COLORS[i % COLORS.length];
      g.fillText(line.label, legendX, m.t + 12);
      legendX += g.measureText(line.label).width + 14;
    });
  }

  function drawPlots(card) {
    const pts = state.series;
    const at = (key) => pts.map((p) => [p.t_s / 60, p[key]]);
    const limits = (card && card.vitals) || {}; // the limits in force (some relative to the baseline)
    plot($("plot-dose"), [
      { label: "delivered", points: at("delivered_mg") },
      { label: "plan", points: at("programmed_mg"), dash: true, color: "#555" },
    ], { zero: true });
    plot($("plot-rate"), [
      { label: "commanded", points: at("commanded_rate_ml_h") },
      { label: "measured", points: at("measured_rate_ml_h"), color: "#1e7d3a" },
    ], { zero: true });
    const threshold = pts.length ? pts[pts.length - 1].threshold_mmhg : null;
    plot($("plot-pressure"), [{ label: "pressure", points: at("pressure_mmhg") }], { zero: true, hlines: [{ y: threshold, label: "occlusion alarm" }] });
    plot($("plot-vitals"), [
      { label: "SBP", points: at("sbp") },
      { label: "DBP", points: at("dbp") },
      { label: "HR", points: at("hr") },
      { label: "SpO₂", points: at("spo2") },
    ], {
      hlines: ["sbp", "dbp", "hr", "spo2"].flatMap((c) => [
        { y: limits[c] && limits[c].high, label: `${c} high`, color: "#c0182a" },
        { y: limits[c] && limits[c].low, label: `${c} low`, color: "#c0182a" },
      ]),
    });
    plot($("plot-plasma"), [{ label: "plasma (model estimate)", points: at("plasma_ug_ml"), color: "#7a2e8e" }], { zero: true });
    const plasma = card && card.plasma;
    if (plasma && $("plasma-caption")) $("plasma-caption").textContent = `Predicted plasma ketamine (µg/mL) — ${plasma.label}, not a measurement: ${plasma.citation}`;
  }

  function pointOf(card) {
    const v = card.vitals || {};
    return {
      t_s: card.t_s,
      delivered_mg: card.delivered_mg,
      programmed_mg: card.programmed_mg,
      commanded_rate_ml_h: card.commanded_rate_ml_h,
      measured_rate_ml_h: card.measured_rate_ml_h,
      pressure_mmhg: card.pressure_mmhg,
      threshold_mmhg: card.occlusion_threshold_mmhg,
      plasma_ug_ml: card.plasma && card.plasma.ug_ml,
      sbp: v.sbp && v.sbp.value,
      dbp: v.dbp && v.dbp.value,
      hr: v.hr && v.hr.value,
      spo2: v.spo2 && v.spo2.value,
    };
  }

  // ----- the session's record (its audit-log entries) ------------------------------------------------
  let recordTimer = null;
  function scheduleRecord(chair) {
    if (recordTimer) return;
    recordTimer = setTimeout(async () => {
      recordTimer = null;
      await showRecord(chair);
    }, 700);
  }

  async function showRecord(chair) {
    const body = $("record");
    if (!body) return;
    let record;
    try {
      record = await api(`/api/chairs/${encodeURIComponent(chair)}/record?limit=150&exclude=command,telemetry`);
    } catch (e) {
      body.replaceChildren(el("tr", "", e.status === 404 ? "" : e.message));
      return;
    }
    const skip = new Set(["event", "hash", "prev", "seq", "mono_ns", "session_id", "pump", "level", "timestamp"]);
    const rows = record.entries
      .slice()
      .reverse()
      .map((e) => {
        const row = el("tr");
        const fields = Object.entries(e)
          .filter(([k]) => !skip.has(k))
          .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
          .join(" ");
        row.append(el("td", "", (e.timestamp || "").slice(11, 19)), el("td", "", e.event), el("td", "fields", fields));
        return row;
      });
    body.replaceChildren(...rows);
    const out = $("outcome");
    if (out) {
      const o = record.outcome;
      out.replaceChildren(
        el("div", "", `${record.total} audit-log entries (the control loop's commands and telemetry summaries not listed here) · ${record.log}`),
        ...(o ? [el("div", "ended-line", `outcome ${o.outcome}: ${num(o.delivered_mg, 2)} of ${num(o.programmed_mg, 2)} mg; report ${o.report}; log ${o.log_verified ? "verified" : "NOT verified"}`)] : []),
        ...(record.error ? [el("div", "error", record.error)] : [])
      );
    }
  }

  // ----- the pages --------------------------------------------------------------------------------------
  async function clinicInfo() {
    const clinic = await api("/api/clinic");
    state.actions = clinic.actions;
    state.protocols = clinic.protocols;
    return clinic;
  }

  async function boardPage() {
    const clinic = await clinicInfo();
    $("clinic-name").textContent = clinic.name;
    document.title = clinic.name;
    for (const card of await api("/api/chairs")) render(card);
    showInterrupted();
    follow("/api/events", (kind, data) => {
      if (kind === "chair") render(data);
      else if (kind === "ended") setTimeout(showInterrupted, 1000);
    });
  }

  async function chairPage() {
    const chair = decodeURIComponent(location.pathname.split("/").pop());
    await clinicInfo();
    const card = await api(`/api/chairs/${encodeURIComponent(chair)}`);
    $("chair-title").textContent = card.name;
    document.title = "ketapump · " + card.name;
    render(card);
    state.sessionId = card.session && card.session.session_id;
    state.series = (await api(`/api/chairs/${encodeURIComponent(chair)}/series`)).points;
    drawPlots(card);
    showRecord(chair);
    follow(`/api/chairs/${encodeURIComponent(chair)}/events`, async (kind, data) => {
      if (RECORD_KINDS.has(kind)) scheduleRecord(chair);
      if (kind !== "chair") return;
      render(data);
      const id = data.session && data.session.session_id;
      if (id !== state.sessionId) {
        state.sessionId = id;
        state.series = (await api(`/api/chairs/${encodeURIComponent(chair)}/series`)).points;
      } else if (data.t_s !== null && (!state.series.length || data.t_s - state.series[state.series.length - 1].t_s >= SERIES_EVERY_S)) {
        state.series.push(pointOf(data));
      } else {
        return;
      }
      drawPlots(data);
    });
    window.addEventListener("resize", () => drawPlots(state.cards[chair]));
  }

  async function coursePage() {
    const patient = decodeURIComponent(location.pathname.split("/").pop());
    $("patient-title").textContent = patient;
    try {
      const course = await api(`/api/patients/${encodeURIComponent(patient)}/course`);
      setConnection("loaded", "live");
      $("course-summary").replaceChildren(el("pre", "", JSON.stringify(course.summary, null, 2)));
      $("course-sessions").replaceChildren(
        ...course.sessions.map(({ session: s, alarms, notes, actions, observations, medications }) => {
          const row = el("tr");
          const time = (at) => (at || "").slice(11, 19);
          const acted = (actions || []).map((a) => `${time(a.at)} ${a.action} by ${a.who || a.actor}${a.accepted ? "" : " (refused: " + a.why + ")"}${a.reason ? ": " + a.reason : ""}`);
          const bedside = (observations || [])
            .map((o) => `${time(o.at)} ${o.kind}${o.value === null ? "" : " " + o.value}${o.note ? " (" + o.note + ")" : ""} · ${o.who || "?"}`)
            .concat((medications || []).map((m) => `${time(m.at)} ${m.drug} ${m.dose} ${m.unit} ${m.route} · ${m.who || "?"}`));
          row.append(
            el("td", "", s.started_at),
            el("td", "", s.protocol),
            el("td", "", `${num(s.programmed_mg, 2)} mg`),
            el("td", "", s.delivered_mg === null ? "in progress" : `${num(s.delivered_mg, 2)} mg`),
            el("td", "", s.outcome || "—"),
            el("td", "", alarms.map((a) => a.code).join(", ")),
            el("td", "", acted.join(" · ")),
            el("td", "", bedside.join(" · ")),
            el("td", "", notes.map((n) => n.text).join(" · "))
          );
          return row;
        })
      );
      $("course-overrides").replaceChildren(...course.overrides.map((o) => el("div", "", `${o.at} · ${o.kind} · ${o.reason}`)));
    } catch (e) {
      setConnection(e.message, "down");
    }
  }

  setupOperator();
  const page = document.body.dataset.page;
  const run = page === "chair" ? chairPage : page === "course" ? coursePage : boardPage;
  run().catch((e) => setConnection("error: " + e.message, "down"));
})();
