// Building the page: elements from data, text only (never HTML from records).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export function time(ms) {
  if (ms === null || ms === undefined) return "—";
  const d = new Date(ms);
  return d.toISOString().replace("T", " ").replace("Z", "").slice(0, 23);
}

export function duration(us) {
  if (us === null || us === undefined) return "—";
  if (us < 1000) return `${us} µs`;
  if (us < 1_000_000) return `${(us / 1000).toFixed(1)} ms`;
  return `${(us / 1_000_000).toFixed(2)} s`;
}

export function badge(text, kind) {
  return h("span", { class: `badge ${kind || text || ""}` }, text || "—");
}

// The decision's look: allow, deny, require_approval, would_deny, ...
export function decision(text) {
  return badge(text, `decision-${text}`);
}

export function identityLine(identity) {
  if (!identity) return "";
  const parts = [identity.repository, identity.workflow, identity.run_id && `run ${identity.run_id}`, identity.job, identity.actor && `by ${identity.actor}`, identity.environment && `env ${identity.environment}`];
  return parts.filter(Boolean).join(" · ");
}

export function errorBox(message) {
  return h("p", { class: "error", role: "alert" }, message);
}
