// The approvals inbox: pending requests update live (Server-Sent Events), each with its
// statement or connection and its job's identity. Approvers approve with a scope or deny
// with a reason; decided requests show who decided, when and why.
import { h, clear, time, identityLine, badge, errorBox } from "./dom.js";
import { api, state } from "./app.js";

const SCOPES = ["once", "job", "15m", "1h", "8h"];

// The pending count in the navigation, kept live on every page.
export function watchPending(counter) {
  const refresh = async () => {
    try {
      const data = await api("approvals?state=pending&limit=1000");
      counter.textContent = String(data.approvals.length);
      counter.hidden = data.approvals.length === 0;
    } catch {
      counter.hidden = true;
    }
  };
  refresh();
  const events = new EventSource("/api/v1/approvals/events");
  events.addEventListener("approvals", refresh);
}

function card(item, canDecide, onDone) {
  const r = item;
  const what = r.sql ? h("pre", { class: "sql" }, r.sql) : h("p", {}, `Connect to ${r.target || "?"} (${r.destination || "?"})`);
  const message = h("p", { class: "result", role: "status" });
  const decideControls = [];
  if (canDecide && r.state === "pending") {
    const scope = h("select", { "aria-label": "Scope", name: "scope" }, SCOPES.map((s) => h("option", { value: s }, s)));
    const reason = h("input", { name: "reason", placeholder: "Reason (needed to deny)", "aria-label": "Reason" });
    const act = (verdict) => async () => {
      message.textContent = "";
      try {
        const body = verdict === "approve" ? { scope: scope.value, reason: reason.value || undefined } : { reason: reason.value };
        const record = await api(`approvals/${encodeURIComponent(r.id)}/${verdict}`, { method: "POST", body });
        message.textContent = `${record.state || "pending"}${record.reviewers && record.reviewers.length ? ` (${record.reviewers.join(", ")})` : ""}`;
        onDone();
      } catch (error) {
        message.replaceChildren(errorBox(error.message));
      }
    };
    decideControls.push(
      h("div", { class: "decide" }, h("label", {}, "Scope ", scope), reason, h("button", { type: "button", class: "approve", onclick: act("approve") }, "Approve"), h("button", { type: "button", class: "deny secondary", onclick: act("deny") }, "Deny")),
    );
  }
  const decided = r.state && r.state !== "pending"
    ? h("p", { class: "decided" }, `${r.state} ${r.decided_at ? `at ${time(r.decided_at)}` : ""}${r.reviewers && r.reviewers.length ? ` by ${r.reviewers.join(", ")}` : ""}${r.reason ? `: ${r.reason}` : ""}${r.scope ? ` (scope ${r.scope})` : ""}`)
    : null;
  return h(
    "article",
    { class: `approval state-${r.state}`, id: r.id, dataset: { request: r.id, state: r.state } },
    h("h3", {}, badge(r.state, `state-${r.state}`), " ", r.action, r.kind ? ` (${r.kind})` : "", " on ", r.target || r.destination || "?"),
    what,
    h("p", { class: "muted" }, `${item.host} · asked ${time(r.asked_at)} · `, r.job_id ? h("a", { href: `/jobs/${encodeURIComponent(item.host)}/${encodeURIComponent(r.job_id)}` }, identityLine(r.identity) || r.job_id) : "no job", r.comm ? ` · ${r.comm} pid ${r.pid}` : "", r.policy_ids && r.policy_ids.length ? ` · policy ${r.policy_ids.join(", ")}` : ""),
    decided,
    decideControls,
    message,
  );
}

export async function approvalsPage(el) {
  const canDecide = state.me && state.me.role !== "viewer" && state.me.can_decide;
  const pending = h("div", { id: "pending", "aria-live": "polite" });
  const decided = h("div", { id: "decided" });
  const grants = h("div", { id: "grants" });
  const live = h("p", { class: "muted", id: "live" }, "Connecting for live updates…");
  clear(
    el,
    h("h1", {}, "Approvals"),
    live,
    !canDecide ? h("p", { class: "muted" }, state.me && state.me.role === "viewer" ? "Your role is viewer: you can see requests but not decide them." : "No agent's control socket here: decisions cannot be made from this console.") : null,
    h("h2", {}, "Waiting"),
    pending,
    h("h2", {}, "Grants in force"),
    grants,
    h("h2", {}, "Decided"),
    decided,
  );
  // Keep the cards being typed into; add and drop the others.
  async function refresh() {
    const [open, all] = await Promise.all([api("approvals?state=pending&limit=1000"), api("approvals?limit=100")]);
    const openIds = new Set(open.approvals.map((a) => a.id));
    for (const child of [...pending.children]) if (!openIds.has(child.id)) child.remove();
    for (const item of open.approvals) {
      const flat = item;
      if (!document.getElementById(flat.id) || document.getElementById(flat.id).dataset.state !== "pending") {
        pending.prepend(card(flat, canDecide, refresh));
      }
    }
    if (!open.approvals.length) clear(pending, h("p", { class: "muted empty" }, "Nothing is waiting."));
    else pending.querySelector(".empty")?.remove();
    clear(decided, all.approvals.filter((a) => a.state !== "pending").map((item) => card(item, false, refresh)));
    await refreshGrants();
  }
  async function refreshGrants() {
    let data;
    try {
      data = await api("grants");
    } catch (error) {
      clear(grants, h("p", { class: "muted" }, `Grants: ${error.message}`));
      return;
    }
    if (!data.grants.length) {
      clear(grants, h("p", { class: "muted" }, "No grants in force."));
      return;
    }
    const isAdmin = state.me && state.me.role === "admin";
    clear(
      grants,
      data.grants.map((g) => {
        const message = h("span", { role: "status" });
        const revoke = isAdmin
          ? h("button", { type: "button", class: "deny secondary", onclick: async () => {
              try {
                await api(`grants/${encodeURIComponent(g.id)}/revoke`, { method: "POST", body: {} });
                await refreshGrants();
              } catch (error) {
                message.replaceChildren(errorBox(error.message));
              }
            } }, "Revoke")
          : null;
        return h(
          "article",
          { class: "approval state-approved", dataset: { grant: g.id } },
          h("h3", {}, badge(g.scope, "state-approved"), " ", g.shape),
          h("p", { class: "muted" }, `approved by ${(g.approved_by || []).join(", ")} at ${time(g.granted_at)}${g.expires_at ? `, until ${time(g.expires_at)}` : ""}${g.job_id ? `, job ${g.job_id}` : ""}${g.repository ? `, ${g.repository} ${g.workflow || ""}` : ""}`),
          revoke,
          message,
        );
      }),
    );
  }
  await refresh();
  const events = new EventSource("/api/v1/approvals/events");
  events.addEventListener("open", () => { live.textContent = "Live: requests appear and update without reloading."; });
  events.addEventListener("approvals", () => refresh().catch(() => {}));
  events.addEventListener("error", () => { live.textContent = "Live updates interrupted; reconnecting…"; });
  if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
  return () => events.close();
}
