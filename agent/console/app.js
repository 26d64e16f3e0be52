// The review console: a small single-page app over /api/v1. Pages are built from the
// API's JSON with DOM calls (no HTML strings), and every link is a real URL.
import { h, clear, errorBox } from "./dom.js";
import { sessionsPage } from "./sessions.js";
import { replayPage } from "./replay.js";
import { jobPage } from "./job.js";
import { approvalsPage, watchPending } from "./approvals.js";
import { auditPage } from "./audit.js";

export const state = { me: null };

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// JSON from the API; a state-changing call carries the session's CSRF token.
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["x-csrf-token"] = state.me ? state.me.csrf_token : "";
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path.startsWith("/") ? path : `/api/v1/${path}`, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    location.assign(`/auth/login?next=${encodeURIComponent(location.pathname + location.search + location.hash)}`);
    throw new ApiError(401, "signed out");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data.error || `HTTP ${response.status}`);
  return data;
}

export function navigate(url, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  route();
}

const main = () => document.getElementById("main");

let leave = null;

async function route() {
  if (leave) {
    leave();
    leave = null;
  }
  const path = location.pathname;
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === (parts[0] || "sessions")) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const el = main();
  try {
    if (parts[0] === "sessions" && parts.length === 3) leave = await replayPage(el, parts[1], parts[2]);
    else if (parts[0] === "jobs" && parts.length === 3) leave = await jobPage(el, parts[1], parts[2]);
    else if (parts[0] === "approvals") leave = await approvalsPage(el);
    else if (parts[0] === "audit") leave = await auditPage(el);
    else leave = await sessionsPage(el);
  } catch (error) {
    if (error.status !== 401) clear(el, h("h1", {}, "Something went wrong"), errorBox(error.message));
  }
}

// Same-origin links change the page without a reload.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a");
  if (!link || link.target || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith("/auth/") || url.pathname.startsWith("/api/")) return;
  if (url.pathname === location.pathname && url.search === location.search && url.hash) return;
  event.preventDefault();
  navigate(url.pathname + url.search + url.hash);
});

window.addEventListener("popstate", route);

async function start() {
  state.me = await api("me");
  const who = document.getElementById("who");
  who.textContent = `${state.me.login} (${state.me.role})`;
  if (state.me.dev_insecure_local) {
    const banner = document.getElementById("banner");
    banner.textContent = "Insecure local development mode: everyone who reaches this console is an admin. Do not use it on a shared host.";
    banner.hidden = false;
  }
  document.getElementById("sign-out").addEventListener("click", async () => {
    await api("/auth/logout", { method: "POST" }).catch(() => {});
    location.assign("/auth/login");
  });
  watchPending(document.getElementById("pending-count"));
  await route();
}

start().catch((error) => {
  if (error.status !== 401) clear(main(), errorBox(error.message));
});
