// Drives keyrelay's status page in headless Chromium (Debian's, through playwright-core):
// logs in, checks that a FAILING provider shows its error, filters by tenant, fails on any
// console error, and keeps a screenshot.
//
// node status_page.cjs <url> <admin token> <expected error text> <screenshot.png>
"use strict";

const { chromium } = require("playwright-core");

const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function check(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

async function main() {
  const [url, token, expectedError, screenshot] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: CHROMIUM_FLAGS,
  });
  const problems = [];
  try {
    const page = await browser.newPage();
    page.on("console", (message) => {
      if (message.type() === "error") {
        problems.push(`console: ${message.text()}`);
      }
    });
    page.on("pageerror", (error) => problems.push(`page error: ${error}`));

    await page.goto(url);
    await page.fill("input[name=token]", token);
    await Promise.all([page.waitForURL(url), page.click("form.login button[type=submit]")]);
    await page.waitForSelector("table.providers");

    const failing = page.locator('tr[data-state="FAILING"]');
    check((await failing.count()) >= 1, "no FAILING provider on the page");
    const failingText = await failing.first().innerText();
    check(failingText.includes(expectedError), `the failing row lacks "${expectedError}": ${failingText}`);
    check((await page.locator("table.replicas tbody tr").count()) >= 1, "no replica listed");

    await page.fill("form.filter input[name=tenant]", "other");
    await Promise.all([page.waitForURL(/tenant=other/), page.click("form.filter button[type=submit]")]);
    const tenants = await page.locator("table.providers tbody tr").evaluateAll((rows) =>
      rows.map((row) => row.dataset.tenant),
    );
    check(tenants.length >= 1 && tenants.every((t) => t === "other"), `filter shows ${tenants}`);

    await page.goto(url);
    await page.screenshot({ path: screenshot, fullPage: true });
  } finally {
    await browser.close();
  }
  check(problems.length === 0, problems.join("\n"));
  console.log(`status page: ok (screenshot ${screenshot})`);
}

main().catch((error) => {
  console.error(error.stack || String(error));
  process.exit(1);
});
