// Audit: the chain verification of every host with its newest checkpoint, and the audit
// trail (enrolments, hooks, attestations, decisions, refused control requests).
import { h, clear, time, badge } from "./dom.js";
import { api } from "./app.js";

export async function auditPage(el) {
  const verification = h("div", { id: "verification" }, h("p", { class: "muted" }, "Verifying the record chains…"));
  const trail = h("tbody");
  clear(
    el,
    h("h1", {}, "Audit"),
    h("h2", {}, "Record chains"),
    verification,
    h("h2", {}, "Audit trail"),
    h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {}, ["Time", "Host", "Action", "Outcome", "Caller", "Detail"].map((c) => h("th", { scope: "col" }, c)))), trail)),
  );
  const [verify, audit] = await Promise.all([api("audit/verify"), api("audit?limit=200")]);
  clear(
    verification,
    verify.hosts.map((host) => {
      const r = host.report;
      const ok = !host.error && !r.failure;
      return h(
        "article",
        { class: `chain ${ok ? "intact" : "broken"}`, dataset: { host: r.host, ok: String(ok) } },
        h("h3", {}, r.host, " ", badge(ok ? "intact" : host.error ? "not verified" : "TAMPERED", ok ? "ok" : "bad")),
        host.error ? h("p", { class: "error" }, host.error) : null,
        r.failure ? h("p", { class: "error", role: "alert" }, `${r.failure.kind} at record ${r.failure.seq} (${r.failure.record}): ${r.failure.detail}`) : null,
        h("p", {}, `${r.records} records checked, ${r.checkpoints} signed checkpoints; newest checkpoint ${r.latest_checkpoint ? `#${r.latest_checkpoint[0]} over ${r.latest_checkpoint[1]} records, signed ${time(host.checkpoint_at)}` : "none yet"}; ${r.unsigned_tail} records after it.`),
      );
    }),
  );
  for (const item of audit.entries) {
    const a = item;
    trail.append(h("tr", {}, h("td", {}, time(a.at)), h("td", {}, a.host), h("td", {}, a.action), h("td", {}, badge(a.outcome, a.outcome === "ok" ? "ok" : "bad")), h("td", {}, `uid ${a.caller_uid} pid ${a.caller_pid}`), h("td", {}, a.detail)));
  }
}
