// The web console in headless Chromium against the real mcpmux binary and real
// upstreams: it loads, shows the servers becoming ready, initializes, calls tools through
// the generated forms (with progress), streams every frame, survives a gateway-side drop
// by resuming, works from the keyboard, and keeps an API key out of the URL.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { launchBrowser, screenshot, startGateway, startRelay } from "./harness.mjs";

/** Chromium reports a refused WebSocket as a console error: expected while the path is cut. */
const isRefusedSocket = (problem) => /WebSocket connection to .* failed/.test(problem);

describe("the web console", () => {
  let gateway;
  let relay;
  let browser;
  /** The console through the relay, so that a test can cut the path. */
  let consoleUrl;

  before(async () => {
    gateway = await startGateway();
    relay = await startRelay(gateway.port);
    consoleUrl = `http://127.0.0.1:${relay.port}/`;
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await relay?.close();
    await gateway?.stop();
  });

  /** A fresh page on the console with every server ready. */
  async function openConsole() {
    const page = await browser.context.newPage();
    await page.goto(consoleUrl);
    for (const name of ["everything", "memory"]) {
      await page.locator(`.server-button[data-name="${name}"] .badge`, { hasText: "ready" }).waitFor();
    }
    await page.locator("#connection", { hasText: "Connected" }).waitFor();
    return page;
  }

  async function initialize(page, server) {
    await page.locator(`.server-button[data-name="${server}"]`).click();
    await page.getByRole("button", { name: "Initialize", exact: true }).click();
    await page.getByRole("tab", { name: /^Tools \(\d+\)$/ }).waitFor();
  }

  async function chooseTool(page, name) {
    await page.locator(".item-button", { has: page.locator(".item-name", { hasText: new RegExp(`^${name}$`) }) }).click();
    await page.getByRole("heading", { level: 3, name }).waitFor();
  }

  function resultText(page) {
    return page.getByRole("region", { name: "Result" });
  }

  /**
   * The progress updates the page shows for the call, checked against the progress
   * frames it received: each shown once, in order. mcp-proxy usually drops the last
   * progress notification before a result (a known upstream bug), so the updates are
   * 1..steps or 1..steps-1.
   */
  async function shownProgress(page, steps) {
    await page.locator(".progress-log summary").click();
    const shown = await page.getByRole("list", { name: "Progress updates" }).locator("li").allTextContents();
    const received = await page.locator("#stream-list .s-row[data-dir=in] .s-sum", { hasText: "notifications/progress" }).allTextContents();
    assert.deepEqual(shown, received.map((s) => s.replace("notifications/progress ", "")), "every progress frame received is shown");
    const expected = Array.from({ length: steps }, (_, i) => `${i + 1}/${steps}`);
    assert.ok(shown.length >= steps - 1, `at most the last update is missing: ${shown}`);
    assert.deepEqual(shown, expected.slice(0, shown.length));
    return shown;
  }

  test("prints its URL at start and serves its assets with a strict policy", async (t) => {
    assert.match(gateway.lines[0], /^mcpmux listening on ws:\/\/127\.0\.0\.1:\d+\/ws$/);
    assert.equal(gateway.lines[1], `mcpmux console: http://127.0.0.1:${gateway.port}/ (open it in a browser)`);
    const base = `http://127.0.0.1:${gateway.port}`;
    const page = await fetch(`${base}/`);
    assert.equal(page.status, 200);
    assert.equal(page.headers.get("content-type"), "text/html; charset=utf-8");
    const csp = page.headers.get("content-security-policy");
    assert.match(csp, /script-src 'self';/);
    assert.match(csp, /style-src 'self';/);
    assert.match(csp, /connect-src 'self';/);
    assert.match(csp, /require-trusted-types-for 'script'; trusted-types 'none'/);
    assert.match(csp, /default-src 'none'/);
    assert.equal(page.headers.get("cache-control"), "no-cache");
    const html = await page.text();
    const assets = [...html.matchAll(/(?:href|src)="(\/console\/[^"]+)"/g)].map((m) => m[1]);
    assert.ok(assets.includes("/console/app.js") && assets.includes("/console/console.css"), "the page loads its script and style");
    let bytes = html.length;
    for (const path of new Set(assets)) {
      const response = await fetch(`${base}${path}`);
      assert.equal(response.status, 200, path);
      const type = response.headers.get("content-type");
      if (path.endsWith(".js")) assert.equal(type, "text/javascript; charset=utf-8", path);
      if (path.endsWith(".css")) assert.equal(type, "text/css; charset=utf-8", path);
      if (path.endsWith(".svg")) assert.equal(type, "image/svg+xml", path);
      bytes += (await response.arrayBuffer()).byteLength;
      const again = await fetch(`${base}${path}`, { headers: { "if-none-match": response.headers.get("etag") } });
      assert.equal(again.status, 304, `${path} revalidates`);
    }
    t.diagnostic(`console: ${new Set(assets).size + 1} files, ${bytes} bytes uncompressed`);
  });

  test("its policy lets it reach its own gateway and nothing else, and makes no HTML from strings", async () => {
    // The page itself connected (openConsole waits for it): 'self' covers ws: of its origin.
    const page = await openConsole();
    const seen = await page.evaluate(async (port) => {
      const refused = new Promise((resolve) => {
        document.addEventListener("securitypolicyviolation", (e) => {
          if (e.effectiveDirective === "connect-src") resolve(e.blockedURI);
        });
      });
      // The same gateway under another origin (localhost is not 127.0.0.1).
      new WebSocket(`ws://localhost:${port}/ws`, ["mcpmux.v1"]);
      let html;
      try {
        document.createElement("div").innerHTML = "<b>made from a string</b>";
        html = "accepted";
      } catch (err) {
        html = err.name;
      }
      return { blocked: await refused, html };
    }, gateway.port);
    assert.equal(seen.blocked, `ws://localhost:${gateway.port}/ws`);
    assert.equal(seen.html, "TypeError");
    await page.close();
    // The refusals above are reported as console errors: expected, and only these.
    const expected = (p) => /Content Security Policy|TrustedHTML|Trusted Type/.test(p);
    assert.ok(browser.problems.some(expected));
    browser.problems.splice(0, browser.problems.length, ...browser.problems.filter((p) => !expected(p)));
  });

  test("shows every server becoming ready and the frames of the handshake", async (t) => {
    const page = await openConsole();
    const timing = await page.evaluate(() => {
      const nav = performance.getEntriesByType("navigation")[0];
      return { dom: Math.round(nav.domContentLoadedEventEnd), load: Math.round(nav.loadEventEnd) };
    });
    t.diagnostic(`loaded: DOMContentLoaded at ${timing.dom} ms, load at ${timing.load} ms`);
    const rows = page.locator("#stream-list .s-row");
    await rows.filter({ hasText: "hello" }).first().waitFor();
    await rows.filter({ hasText: "welcome" }).first().waitFor();
    assert.deepEqual(await page.locator(".server-button .server-name").allTextContents(), ["everything", "memory"]);
    assert.equal(page.url(), consoleUrl);
    await page.close();
    assert.deepEqual(browser.problems.filter((p) => !isRefusedSocket(p)), []);
  });

  test("initializes a server and calls echo through the form", async () => {
    const page = await openConsole();
    await initialize(page, "everything");
    await chooseTool(page, "echo");
    await page.getByLabel(/^message/).fill("hello from the console");
    await page.getByRole("button", { name: "Call", exact: true }).click();
    await resultText(page).getByText("Echo: hello from the console").waitFor();

    // The call and its answer are in the frame stream, tagged with the server.
    const stream = page.locator("#stream-list");
    await stream.locator(".s-row[data-dir=out]", { hasText: "tools/call" }).waitFor();
    const answer = stream.locator(".s-row[data-dir=in]", { hasText: "result" }).last();
    await answer.waitFor();
    assert.equal(await answer.locator(".s-server").textContent(), "everything");
    await answer.locator("summary").click();
    await answer.locator(".s-json", { hasText: "Echo: hello from the console" }).waitFor();

    // Filtering keeps only the matching frames.
    await page.getByLabel("Filter").fill("tools/call");
    await page.locator("#stream-count", { hasText: "match" }).waitFor();
    const shown = await stream.locator(".s-row .s-sum").allTextContents();
    assert.ok(shown.length >= 1 && shown.every((s) => s.startsWith("tools/call")), `only tools/call rows: ${shown}`);
    await page.getByLabel("Filter").fill("");
    await page.getByLabel("Direction").selectOption("in");
    await page.waitForFunction(() => [...document.querySelectorAll("#stream-list .s-row")].every((r) => r.dataset.dir === "in"));
    await page.close();
    assert.deepEqual(browser.problems.filter((p) => !isRefusedSocket(p)), []);
  });

  test("calls a tool with progress and shows every update and the result", async () => {
    const page = await openConsole();
    await initialize(page, "everything");
    await chooseTool(page, "trigger-long-running-operation");
    await page.getByLabel(/^duration/).fill("1");
    await page.getByLabel(/^steps/).fill("4");
    await page.getByRole("button", { name: "Call", exact: true }).click();
    await resultText(page).getByText("Long running operation completed. Duration: 1 seconds, Steps: 4.").waitFor();
    await shownProgress(page, 4);
    assert.equal(await page.locator(".progress-line progress").getAttribute("aria-label"), "Progress");
    await page.close();
  });

  test("survives a gateway-side drop mid-call: reconnects, resumes, loses nothing", async (t) => {
    const page = await openConsole();
    await initialize(page, "everything");
    await chooseTool(page, "trigger-long-running-operation");
    await page.getByLabel(/^duration/).fill("3");
    await page.getByLabel(/^steps/).fill("6");
    await page.getByRole("button", { name: "Call", exact: true }).click();
    await page.locator(".progress-text", { hasText: /Running · 1 of 6/ }).waitFor();

    // Cut the path without a close frame and keep it cut across reconnect attempts.
    relay.block();
    relay.cut();
    await page.locator("#connection", { hasText: "Reconnecting" }).waitFor();
    await page.locator("#stream-list .s-note", { hasText: "Connection lost" }).first().waitFor();
    await page.waitForFunction(() => /attempt [2-9]|attempt \d\d/.test(document.querySelector("#connection").textContent));
    t.diagnostic(`connections refused while cut: ${relay.refused}`);
    relay.unblock();

    await page.locator("#connection", { hasText: "Reconnected: resumed" }).waitFor();
    await page.locator("#stream-list .s-note", { hasText: "resumed, nothing lost" }).waitFor();
    await resultText(page).getByText("Long running operation completed. Duration: 3 seconds, Steps: 6.").waitFor();
    await shownProgress(page, 6);
    // The resumed socket went on with the same session.
    const welcomes = await page.locator("#stream-list .s-row", { hasText: "welcome" }).locator(".s-sum").allTextContents();
    assert.equal(welcomes.length, 2);
    assert.match(welcomes[1], /resumed$/);
    const session = (text) => /session (\w+)/.exec(text)?.[1];
    assert.ok(session(welcomes[0]));
    assert.equal(session(welcomes[1]), session(welcomes[0]));
    const shot = await screenshot(page, "console");
    t.diagnostic(`screenshot: ${shot}`);
    await page.close();
  });

  test("shows a refused resume: calls in flight fail, sessions are lost, initialize works again", async (t) => {
    const page = await openConsole();
    await initialize(page, "everything");
    await chooseTool(page, "trigger-long-running-operation");
    await page.getByLabel(/^duration/).fill("30");
    await page.getByLabel(/^steps/).fill("30");
    await page.getByRole("button", { name: "Call", exact: true }).click();
    await page.locator(".progress-text", { hasText: /Running · 1 of 30/ }).waitFor();

    // The page comes back to a gateway that never saw its session.
    const other = await startGateway();
    t.after(() => other.stop());
    relay.block();
    relay.cut();
    await page.locator("#connection", { hasText: "Reconnecting" }).waitFor();
    relay.retarget(other.port);
    relay.unblock();
    try {
      await page.locator("#connection", { hasText: "Reconnected: new session" }).waitFor();
      await page.locator("#stream-list .s-note", { hasText: "could not be resumed" }).waitFor();
      await page.getByRole("alert").filter({ hasText: "new session" }).waitFor();
      await page.locator('.server-button[data-name="everything"] .session-mark', { hasText: "session lost" }).waitFor();
      await page.getByText("The upstream session was lost").waitFor();

      await page.locator('.server-button[data-name="everything"] .badge', { hasText: "ready" }).waitFor();
      await initialize(page, "everything");
      await chooseTool(page, "trigger-long-running-operation");
      await resultText(page).getByText(/^Failed after \d+ ms: .*\(session_lost\)$/).waitFor();
      await chooseTool(page, "echo");
      await page.getByLabel(/^message/).fill("after a new session");
      await page.getByRole("button", { name: "Call", exact: true }).click();
      await resultText(page).getByText("Echo: after a new session").waitFor();
    } catch (err) {
      await screenshot(page, "refused-resume-failure");
      throw err;
    } finally {
      relay.retarget(gateway.port);
      relay.cut();
      await page.close();
    }
  });

  test("works from the keyboard alone, with visible focus", async () => {
    const page = await openConsole();
    const focused = () =>
      page.evaluate(() => {
        const el = document.activeElement;
        const style = getComputedStyle(el);
        return { text: (el.getAttribute("aria-label") ?? el.textContent).trim(), outline: style.outlineStyle, width: style.outlineWidth };
      });
    // Skip link, API key, then the servers (one tab stop), then the selected server.
    const order = [];
    for (let i = 0; i < 4; i++) {
      await page.keyboard.press("Tab");
      order.push(await focused());
    }
    assert.deepEqual(
      order.map((f) => f.text),
      ["Skip to the selected server", "API key", "everything ready", "Initialize"],
    );
    for (const f of order.slice(1)) assert.ok(f.outline !== "none" && f.width !== "0px", `visible focus on ${f.text}`);

    await page.keyboard.press("Enter"); // Initialize; focus moves to the Tools tab.
    await page.getByRole("tab", { name: /^Tools \(\d+\)$/ }).waitFor();
    await page.waitForFunction(() => document.activeElement?.getAttribute("role") === "tab");
    await page.keyboard.press("Tab"); // into the tool list
    for (let i = 0; i < 50 && (await focused()).text !== "echo"; i++) await page.keyboard.press("ArrowDown");
    assert.equal((await focused()).text, "echo");
    await page.keyboard.press("Enter");
    await page.getByRole("heading", { level: 3, name: "echo" }).waitFor();
    await page.keyboard.press("Tab"); // the first field
    await page.keyboard.type("typed, not clicked");
    await page.keyboard.press("Enter"); // submits the form
    await resultText(page).getByText("Echo: typed, not clicked").waitFor();
    await page.close();
  });

  test("keeps an API key in the tab, never in a URL or the frame stream", async () => {
    const page = await openConsole();
    const sockets = [];
    page.on("websocket", (ws) => sockets.push(ws.url()));
    const key = "console-test-key-5d1f";
    await page.getByRole("button", { name: "API key" }).click();
    await page.getByLabel("API key", { exact: true }).fill(key);
    await page.getByRole("button", { name: "Connect with this key" }).click();
    await page.locator("#connection", { hasText: "Connected" }).waitFor();
    await page.locator(`.server-button[data-name="everything"] .badge`, { hasText: "ready" }).waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem("mcpmux.console.key")), key);
    assert.equal(page.url(), consoleUrl);
    assert.ok(sockets.length >= 1 && sockets.every((url) => !url.includes(key)), `socket URLs: ${sockets}`);
    const hello = page.locator("#stream-list .s-row[data-dir=out]", { hasText: "hello" }).last();
    await hello.locator("summary").click();
    const shown = await hello.locator(".s-json").textContent();
    assert.ok(!shown.includes(key), "the hello frame is shown without the key");
    assert.ok(!(await page.content()).includes(key), "the key is nowhere in the page");
    await page.getByRole("button", { name: "API key" }).click();
    await page.keyboard.press("Escape");
    assert.equal(await page.locator("#key-form").isHidden(), true, "Escape closes the key form");
    await page.getByRole("button", { name: "API key" }).click();
    await page.getByRole("button", { name: "Forget the key" }).click();
    await page.locator("#connection", { hasText: "Connected" }).waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem("mcpmux.console.key")), null);
    await page.close();
  });
});
