// What the browser scripts share: Debian's Chromium, headless (CHROMIUM names the
// binary), and a page's errors collected so that a script can fail on them.
import { chromium } from "playwright-core";

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-background-networking"],
  });
}

// Adds `page`'s console errors and uncaught errors to `problems`.
export function watch(page, problems) {
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
}
