// Replay of a session: its statements (and HTTP requests and MCP tool calls) in order,
// one at a time, with their timing, rows, SQLSTATE, decision and policies. Step with the buttons or the arrow keys, play at the
// recorded speed, and link to a statement (#s<seq>). Values masked when recorded stay
// masked: the console shows what the record holds.
import { h, clear, time, duration, decision, identityLine, badge } from "./dom.js";
import { api } from "./app.js";

const MAX_GAP_MS = 60_000;

// An MCP tool call's or listing's facts (kind "mcp").
function mcpRows(m, row) {
  return [
    row("MCP method", m.method),
    row("Tool", m.tool),
    row("Arguments", m.arguments ? h("code", {}, m.arguments) : null),
    row("Result", m.result_bytes == null ? null : `${m.result_bytes} bytes${m.is_error ? " (the tool reported an error)" : ""}`),
    row("Tool changed", m.changed ? "yes: it changed within its session before this call" : null),
    row("Hidden from the listing", (m.hidden || []).join(", ") || null),
    row("Changed tools", (m.changes || []).join("; ") || null),
    row("MCP session", m.session || null),
  ].flat();
}

export async function replayPage(el, host, id) {
  const session = await api(`sessions/${encodeURIComponent(host)}/${encodeURIComponent(id)}`);
  const statements = session.statements || [];
  const identity = session.job_identity || {};
  let index = 0;
  const fromHash = /^#s(\d+)$/.exec(location.hash);
  if (fromHash) {
    const at = statements.findIndex((s) => String(s.seq) === fromHash[1]);
    if (at >= 0) index = at;
  }
  let timer = null;
  let speed = 1;

  const detail = h("section", { id: "current", class: "statement", "aria-live": "polite", "aria-label": "Current statement" });
  const position = h("span", { id: "position", class: "position" });
  const play = h("button", { type: "button", id: "play", "aria-pressed": "false" }, "Play");
  const list = h("ol", { class: "timeline", "aria-label": "Statements" });
  const buttons = statements.map((s, i) =>
    h(
      "li",
      {},
      h(
        "button",
        { type: "button", class: `step decision-${s.decision}`, dataset: { seq: s.seq, decision: s.decision }, onclick: () => show(i) },
        h("span", { class: "seq" }, `#${s.seq}`),
        h("span", { class: "offset" }, `+${((s.started_at - session.started_at) / 1000).toFixed(3)} s`),
        decision(s.decision),
        h("code", {}, s.sql.length > 120 ? `${s.sql.slice(0, 117)}…` : s.sql),
      ),
    ),
  );
  list.append(...buttons);

  function show(i) {
    if (!statements.length) return;
    index = Math.max(0, Math.min(statements.length - 1, i));
    const s = statements[index];
    history.replaceState(null, "", `${location.pathname}#s${s.seq}`);
    position.textContent = `${index + 1} / ${statements.length}`;
    buttons.forEach((b, n) => b.firstChild.setAttribute("aria-current", n === index ? "step" : "false"));
    buttons[index].scrollIntoView({ block: "nearest" });
    detail.dataset.decision = s.decision;
    detail.dataset.seq = s.seq;
    const row = (label, value) => [h("dt", {}, label), h("dd", {}, value ?? "—")];
    // SQL facts only for SQL statements; an HTTP request or an MCP message has its own.
    const sql = !s.http && !s.mcp;
    const title = s.mcp ? (s.mcp.method === "tools/call" ? "Tool call" : "MCP message") : s.http ? "Request" : "Statement";
    clear(
      detail,
      h("h2", {}, `${title} #${s.seq} `, decision(s.decision), " ", badge(s.kind, "kind")),
      h("pre", { class: "sql" }, s.sql),
      s.params && s.params.length ? h("p", {}, "Parameters: ", h("code", {}, s.params.map((p) => JSON.stringify(p)).join(", "))) : null,
      h(
        "dl",
        { class: "facts" },
        row("Started", `${time(s.started_at)} (+${((s.started_at - session.started_at) / 1000).toFixed(3)} s)`),
        row("Duration", duration(s.duration_us)),
        sql ? row("Rows", s.rows) : [],
        sql ? row("SQLSTATE", s.sqlstate) : [],
        s.http ? row("Status", s.http.status) : [],
        row("Error", s.error),
        row("Decision", s.decision),
        row("Policies", (s.policy_ids || []).join(", ") || "—"),
        row("Reason", s.reason),
        sql ? row("Tables", (s.tables || []).join(", ") || "—") : [],
        row("Approval", s.approval),
        sql ? row("Database / user", `${s.database} / ${s.user}`) : [],
        row("Protocol", s.protocol),
        ...(s.mcp ? mcpRows(s.mcp, row) : []),
      ),
      h("p", {}, h("a", { href: `#s${s.seq}`, class: "permalink" }, "Link to this statement")),
    );
  }

  function stop() {
    if (timer) clearTimeout(timer);
    timer = null;
    play.textContent = "Play";
    play.setAttribute("aria-pressed", "false");
  }

  function tick() {
    if (index >= statements.length - 1) return stop();
    const gap = statements[index + 1].started_at - statements[index].started_at;
    timer = setTimeout(() => {
      show(index + 1);
      tick();
    }, Math.min(Math.max(gap, 0), MAX_GAP_MS) / speed);
  }

  play.addEventListener("click", () => {
    if (timer) return stop();
    if (index >= statements.length - 1) show(0);
    play.textContent = "Pause";
    play.setAttribute("aria-pressed", "true");
    tick();
  });
  const speedSelect = h("select", { "aria-label": "Speed" }, ["1", "2", "10", "100"].map((v) => h("option", { value: v }, `${v}×`)));
  speedSelect.addEventListener("change", () => {
    speed = Number(speedSelect.value);
  });
  const step = (delta) => () => {
    stop();
    show(index + delta);
  };
  const controls = h(
    "div",
    { class: "player", role: "toolbar", "aria-label": "Replay" },
    h("button", { type: "button", id: "first", onclick: () => { stop(); show(0); } }, "First"),
    h("button", { type: "button", id: "prev", onclick: step(-1) }, "Previous"),
    play,
    h("button", { type: "button", id: "next", onclick: step(1) }, "Next"),
    h("button", { type: "button", id: "last", onclick: () => { stop(); show(statements.length - 1); } }, "Last"),
    speedSelect,
    position,
  );
  const onKey = (event) => {
    if (event.target.matches("input, select, textarea")) return;
    if (event.key === "ArrowRight" || event.key === "j") step(1)();
    else if (event.key === "ArrowLeft" || event.key === "k") step(-1)();
    else return;
    event.preventDefault();
  };
  document.addEventListener("keydown", onKey);

  const jobLink = session.job_id
    ? h("a", { href: `/jobs/${encodeURIComponent(host)}/${encodeURIComponent(session.job_id)}` }, identityLine(identity) || session.job_name || session.job_id)
    : "no job";
  clear(
    el,
    h("p", {}, h("a", { href: "/sessions" }, "← Sessions")),
    h("h1", {}, `Session to ${session.target || session.destination || "?"} `, decision(session.decision)),
    h(
      "dl",
      { class: "facts" },
      [
        ["Host", host],
        ["Job", jobLink],
        ["Destination", session.hostname ? `${session.hostname} (${session.destination})` : session.destination],
        ["TLS server name", session.sni || "—"],
        ["Database / user", session.db_name ? `${session.db_name} / ${session.db_user}` : "—"],
        ["Process", session.comm ? `${session.comm} (pid ${session.pid})` : "—"],
        ["Started", time(session.started_at)],
        ["Ended", time(session.ended_at)],
        ["Bytes up / down", `${session.bytes_up} / ${session.bytes_down}`],
        ["Policies", (session.policy_ids || []).join(", ") || "—"],
        ["Reason", session.reason],
      ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "—")]),
    ),
    statements.length
      ? h("div", { class: "replay" }, h("div", {}, controls, detail), list)
      : h("p", { class: "muted" }, "No statements: this session was followed at L4 only, or sent none."),
  );
  if (statements.length) show(index);
  return () => {
    stop();
    document.removeEventListener("keydown", onKey);
  };
}
