// A job: its identity and assurance, and everything it did on one timeline: sessions
// and their statements, DNS queries, UDP flows, unix connects, kernel refusals and
// approval requests.
import { h, clear, time, duration, decision, badge } from "./dom.js";
import { api } from "./app.js";

export async function jobPage(el, host, id) {
  const view = await api(`jobs/${encodeURIComponent(host)}/${encodeURIComponent(id)}`);
  const job = view.job;
  const sessionLink = (sid, text) => h("a", { href: `/sessions/${encodeURIComponent(host)}/${encodeURIComponent(sid)}` }, text);
  const events = [];
  for (const s of view.sessions) {
    events.push({ at: s.started_at, kind: "session", decision: s.decision, what: sessionLink(s.id, `${s.protocol || "tcp"} to ${s.target || s.destination || "?"}${s.hostname ? ` (${s.hostname})` : ""}`), detail: `${s.statement_count} statements · ${s.comm || ""} pid ${s.pid ?? "?"}` });
  }
  for (const st of view.statements) {
    events.push({ at: st.started_at, kind: "statement", decision: st.decision, what: sessionLink(st.connection_id, st.sql.length > 160 ? `${st.sql.slice(0, 157)}…` : st.sql), detail: `#${st.seq} ${st.kind} · ${duration(st.duration_us)}${st.sqlstate ? ` · SQLSTATE ${st.sqlstate}` : ""}${st.rows !== null && st.rows !== undefined ? ` · ${st.rows} rows` : ""}` });
  }
  for (const q of view.dns) events.push({ at: q.at, kind: "dns", decision: q.decision, what: `${q.name} ${q.qtype}`, detail: `${q.rcode} ${(q.answers || []).join(", ")}` });
  for (const f of view.udp_flows) events.push({ at: f.first_at, kind: "udp", decision: f.decision, what: `UDP to ${f.dst}`, detail: `${f.packets_out} packets out, ${f.packets_in} in` });
  for (const u of view.unix) events.push({ at: u.first_at, kind: "unix", decision: u.decision, what: `unix ${u.path}`, detail: `${u.connects} connects` });
  for (const e of view.events) events.push({ at: e.at, kind: "refusal", decision: e.action, what: e.kind, detail: `${e.comm} pid ${e.pid}: ${e.detail}` });
  for (const a of view.approvals) events.push({ at: a.asked_at, kind: "approval", decision: a.state, what: h("a", { href: `/approvals#${a.id}` }, a.sql || a.destination || a.action), detail: `${a.state}${a.reviewers && a.reviewers.length ? ` by ${a.reviewers.join(", ")}` : ""}${a.reason ? `: ${a.reason}` : ""}` });
  events.sort((a, b) => a.at - b.at);

  const identity = job.identity || {};
  const facts = [
    ["Host", host],
    ["Provider", identity.provider],
    ["Repository", identity.repository],
    ["Workflow", identity.workflow],
    ["Run", identity.run_id && `${identity.run_id}${identity.run_attempt ? ` (attempt ${identity.run_attempt})` : ""}`],
    ["Job", identity.job || job.name],
    ["Ref", identity.ref],
    ["Actor", identity.actor],
    ["Environment", identity.environment],
    ["Assurance", job.assurance],
    ["Started", time(job.started_at)],
    ["Ended", job.ended_at ? `${time(job.ended_at)}${job.end_reason ? ` (${job.end_reason})` : ""}` : "running"],
  ].filter(([, v]) => v);
  clear(
    el,
    h("p", {}, h("a", { href: `/sessions?job_id=${encodeURIComponent(id)}` }, "← This job's sessions")),
    h("h1", {}, `Job ${identity.job || job.name || job.id} `, badge(job.assurance, `assurance-${job.assurance}`)),
    h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    view.statements_truncated ? h("p", { class: "muted" }, "Only the first statements are shown; open a session for all of its statements.") : null,
    h("h2", {}, `Timeline (${events.length})`),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { class: "timeline-table" },
        h("thead", {}, h("tr", {}, ["Time", "What", "", "Decision", "Detail"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, events.map((e) => h("tr", { class: `event-${e.kind}` }, h("td", {}, time(e.at)), h("td", {}, badge(e.kind, "kind")), h("td", {}, e.what), h("td", {}, decision(e.decision)), h("td", {}, e.detail)))),
      ),
    ),
  );
}
