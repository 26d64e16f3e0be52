// Sessions: newest first, narrowed by the filters, a page at a time. The filters live
// in the URL, so a filtered list is a link.
import { h, clear, time, duration, decision, identityLine, errorBox } from "./dom.js";
import { api, navigate } from "./app.js";

const TEXT_FILTERS = [
  ["repository", "Repository"],
  ["workflow", "Workflow"],
  ["run", "Run"],
  ["job", "Job"],
  ["actor", "Actor"],
  ["environment", "Environment"],
  ["provider", "Provider"],
  ["target", "Target"],
  ["kind", "Statement kind"],
];
const DECISIONS = ["", "allow", "deny", "require_approval", "would_deny", "would_require_approval", "revoked", "unattributed", "malformed"];

function field(label, input) {
  return h("label", { class: "field" }, h("span", {}, label), input);
}

function toLocalInput(value) {
  if (!value) return "";
  const ms = /^\d+$/.test(value) ? Number(value) : Date.parse(value);
  if (Number.isNaN(ms)) return "";
  return new Date(ms).toISOString().slice(0, 16);
}

export async function sessionsPage(el) {
  const params = new URLSearchParams(location.search);
  const hosts = await api("hosts").catch(() => ({ hosts: [] }));
  const input = (name, attrs = {}) => h("input", { name, value: params.get(name) || "", ...attrs });
  const select = (name, options) => {
    const s = h("select", { name }, options.map((o) => h("option", { value: o }, o || "any")));
    s.value = params.get(name) || "";
    return s;
  };
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter sessions" },
    field("Search SQL and tables", input("q", { type: "search", placeholder: "e.g. users" })),
    TEXT_FILTERS.map(([name, label]) => field(label, input(name))),
    field("Host", select("host", ["", ...hosts.hosts])),
    field("Protocol", select("protocol", ["", "postgres", "tcp"])),
    field("Decision", select("decision", DECISIONS)),
    field("From (UTC)", h("input", { name: "from", type: "datetime-local", value: toLocalInput(params.get("from")) })),
    field("To (UTC)", h("input", { name: "to", type: "datetime-local", value: toLocalInput(params.get("to")) })),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Filter"), h("a", { href: "/sessions", class: "button secondary" }, "Clear")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [key, value] of new FormData(form)) {
      if (!value) continue;
      if (key === "from" || key === "to") next.set(key, new Date(`${value}Z`).toISOString());
      else next.set(key, value);
    }
    navigate(`/sessions${next.toString() ? `?${next}` : ""}`);
  });
  const table = h("tbody");
  const status = h("p", { class: "muted", role: "status" });
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Older sessions");
  clear(
    el,
    h("h1", {}, "Sessions"),
    form,
    status,
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { class: "sessions" },
        h("caption", { class: "visually-hidden" }, "Sessions, newest first"),
        h("thead", {}, h("tr", {}, ["Started", "Host", "Job", "Target", "Destination", "Protocol", "Decision", "Statements", "Duration"].map((c) => h("th", { scope: "col" }, c)))),
        table,
      ),
    ),
    more,
  );
  let cursor = null;
  let shown = 0;
  async function page() {
    const query = new URLSearchParams(params);
    if (cursor) query.set("cursor", cursor);
    const started = performance.now();
    let data;
    try {
      data = await api(`sessions?${query}`);
    } catch (error) {
      status.replaceWith(errorBox(error.message));
      return;
    }
    for (const row of data.sessions) table.append(sessionRow(row));
    shown += data.sessions.length;
    cursor = data.next_cursor;
    more.hidden = !cursor;
    status.textContent = `${shown} session${shown === 1 ? "" : "s"}${cursor ? " (more below)" : ""} · ${Math.round(performance.now() - started)} ms`;
  }
  more.addEventListener("click", page);
  await page();
}

function sessionRow(row) {
  const id = row.identity || row.job_identity || {};
  const link = `/sessions/${encodeURIComponent(row.host)}/${encodeURIComponent(row.id)}`;
  const statements = row.statement_count ? `${row.statement_count}${row.statements_denied ? ` (${row.statements_denied} denied)` : ""}` : "—";
  const end = row.ended_at ? (row.ended_at - row.started_at) * 1000 : null;
  return h(
    "tr",
    { dataset: { session: row.id } },
    h("td", {}, h("a", { href: link }, time(row.started_at))),
    h("td", {}, row.host),
    h("td", {}, row.job_id ? h("a", { href: `/jobs/${encodeURIComponent(row.host)}/${encodeURIComponent(row.job_id)}` }, identityLine(id) || row.job_name || row.job_id.slice(0, 8)) : h("span", { class: "muted" }, "no job")),
    h("td", {}, row.target || "—"),
    h("td", {}, row.hostname ? `${row.hostname} (${row.destination})` : row.destination || "—"),
    h("td", {}, row.protocol || "tcp"),
    h("td", {}, decision(row.decision)),
    h("td", {}, statements),
    h("td", {}, duration(end)),
  );
}
