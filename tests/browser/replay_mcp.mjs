// The console's replay of an MCP session in real headless Chromium: the tool-call
// timeline (a listing, calls allowed and refused) with each call's tool, arguments,
// result and decision. The Rust test (tests/e2e/mcp.rs) makes the session and starts
// the console (dev sign-in on loopback); this script prints `ok NAME` per check, `fail
// WHY` on the first that fails, and `done`.
//
// Environment: CONSOLE_URL, TIMEOUT_MS, REFUSED and ALLOWED (the replays' paths of the connections
// that carried the refused call and the allowed one: a client spreads its POSTs over
// its pooled connections), ARTIFACTS, CHROMIUM.
import { mkdirSync } from "node:fs";
import { launch, watch } from "./browser.mjs";

const base = process.env.CONSOLE_URL;
const artifacts = process.env.ARTIFACTS;
mkdirSync(artifacts, { recursive: true });

const browser = await launch();
const problems = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  // Longer in a slow guest (vm-test under TCG): the test passes its scaled wait.
  page.setDefaultTimeout(Number(process.env.TIMEOUT_MS || 20_000));
  watch(page, problems);
  // Steps a replay to the first statement whose detail includes `text`.
  const stepTo = async (text) => {
    await page.click("#first");
    for (let i = 0; i < 30; i++) {
      if ((await page.textContent("#current")).includes(text)) return page.textContent("#current");
      await page.click("#next");
    }
    throw new Error(`no statement with ${text} in the replay: ${await page.textContent("ol.timeline")}`);
  };
  await page.goto(`${base}${process.env.REFUSED}`);
  await page.waitForSelector("#current");
  const timeline = await page.textContent("ol.timeline");
  if (!timeline.includes("tools/call drop_table")) throw new Error(`the timeline lacks the call: ${timeline}`);
  console.log("ok timeline");
  const refused = await stepTo("tools/call drop_table");
  for (const want of ["MCP method", "Tool", "drop_table", "Arguments", '{"table":"orders"}', "mcp/http", "no policy permits mcp:call"]) {
    if (!refused.includes(want)) throw new Error(`the refused call's detail lacks ${want}: ${refused}`);
  }
  if ((await page.getAttribute("#current", "data-decision")) !== "deny") throw new Error("not shown as denied");
  await page.screenshot({ path: `${artifacts}/mcp-refused-call.png`, fullPage: true });
  console.log("ok refused-call");
  await page.goto(`${base}${process.env.ALLOWED}`);
  await page.waitForSelector("#current");
  const echo = await stepTo("tools/call echo");
  if (!/Result\s*\d+ bytes/.test(echo)) throw new Error(`the call's result size is not shown: ${echo}`);
  if (!echo.includes('{"text":"hello"}')) throw new Error(`the call's arguments are not shown: ${echo}`);
  console.log("ok allowed-call");
  if (problems.length) throw new Error(problems.join("; "));
  console.log("done");
} catch (error) {
  console.log(`fail ${error.message.replace(/\n/g, " ")}`);
} finally {
  await browser.close();
}
