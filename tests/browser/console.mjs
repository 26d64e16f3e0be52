// The review console in real headless Chromium (Debian's, driven by playwright-core),
// step by step as a reviewer works. The Rust test (tests/e2e/console/browser.rs) starts
// the agent, the jobs, the OIDC issuer and the console, and talks to this script over
// stdin/stdout lines: this script prints `step NAME` when it needs the test to act, and
// waits for `go` before going on. Screenshots of each step go to $ARTIFACTS.
//
// Environment: CONSOLE_URL, ARTIFACTS, CHROMIUM (the browser binary).
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { launch, watch } from "./browser.mjs";

const base = process.env.CONSOLE_URL;
const artifacts = process.env.ARTIFACTS;
mkdirSync(artifacts, { recursive: true });
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function waitForTest(name) {
  console.log(`step ${name}`);
  const { value, done } = await lines.next();
  if (done || value.trim() !== "go") throw new Error(`the test said ${JSON.stringify(value)} after ${name}`);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await launch();
const problems = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  watch(page, problems);
  const shot = (name) => page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: true });

  // 1. Sign in through the OIDC issuer: the console sends the browser there and back.
  await page.goto(`${base}/sessions`);
  await page.waitForURL(`${base}/sessions`);
  await page.waitForSelector("#who:has-text('sam (approver)')");
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "__Host-tollgate-session");
  check(session && session.httpOnly && session.secure && session.sameSite === "Strict", `session cookie: ${JSON.stringify(session)}`);
  await shot("01-signed-in");
  console.log("ok signed-in");

  // Keyboard: the first Tab reaches the skip link.
  await page.keyboard.press("Tab");
  check(await page.evaluate(() => document.activeElement.classList.contains("skip")), "the first Tab is not the skip link");

  // 2. Filter to a job by repository and run.
  await page.fill("input[name=repository]", "acme/api");
  await page.fill("input[name=run]", "4821");
  await page.click("button[type=submit]");
  await page.waitForURL(/repository=acme%2Fapi/);
  await page.waitForFunction(() => document.querySelectorAll("table.sessions tbody tr").length === 1);
  check((await page.textContent("table.sessions tbody")).includes("acme/api"), "the row is not acme/api's");
  await shot("02-filtered");
  console.log("ok filtered");

  // 3. Open the session and step its replay to the denied statement.
  await page.click("table.sessions tbody tr td a");
  await page.waitForSelector("#current");
  for (let i = 0; i < 20; i++) {
    if ((await page.getAttribute("#current", "data-decision")) === "deny") break;
    await page.click("#next");
  }
  check((await page.getAttribute("#current", "data-decision")) === "deny", "no denied statement in the replay");
  const detail = await page.textContent("#current");
  check(detail.includes("no-secret-writes") && detail.includes("42501"), `the denied statement's detail: ${detail}`);
  check(/#s\d+$/.test(page.url()), `the URL links to the statement: ${page.url()}`);
  // The link to a statement opens the replay there.
  const link = page.url();
  await page.goto(`${base}/sessions`);
  await page.goto(link);
  await page.waitForSelector("#current[data-decision=deny]");
  await shot("03-replay-denied");
  console.log("ok replay");

  // 4. A statement psql holds right now: approve it in the inbox, which updates live.
  await page.click("a[data-nav=approvals]");
  await page.waitForSelector("#live:has-text('Live')");
  await page.evaluate(() => { window.__noReload = true; });
  await waitForTest("hold");
  await page.waitForSelector("#pending article[data-state=pending]");
  const id = await page.getAttribute("#pending article[data-state=pending]", "data-request");
  await shot("04a-pending");
  await page.click(`#pending article[data-request="${id}"] button.approve`);
  await page.waitForSelector(`#decided article[data-request="${id}"][data-state=approved]`);
  const decided = await page.textContent(`#decided article[data-request="${id}"]`);
  check(decided.includes("oidc:sam"), `the decided request: ${decided}`);
  check(await page.evaluate(() => window.__noReload === true), "the page reloaded");
  await shot("04b-approved");
  console.log(`ok approved ${id}`);

  // 5. A tampered store is flagged on the audit page.
  await waitForTest("tamper");
  await page.click("a[data-nav=audit]");
  await page.waitForSelector("article.chain[data-ok=false]");
  const flagged = await page.textContent("article.chain[data-ok=false]");
  check(flagged.includes("TAMPERED") && flagged.includes("changed"), `the audit page: ${flagged}`);
  await shot("05-tampered");
  console.log("ok tampered");

  // A phone-width screen: the sessions page still works.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${base}/sessions`);
  await page.waitForSelector("table.sessions tbody tr");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `the page is ${overflow}px wider than a phone`);
  await shot("06-phone");
  console.log("ok phone");
  check(problems.length === 0, `problems in the page:\n${problems.join("\n")}`);
  console.log("done");
} catch (error) {
  console.log(`fail ${error.message.replace(/\n/g, " | ")}${problems.length ? ` | ${problems.join(" | ")}` : ""}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  lines.return?.();
  process.stdin.destroy();
}
