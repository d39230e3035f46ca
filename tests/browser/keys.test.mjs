// The web console against a gateway with API keys: its assets load without a key, it
// asks for one, says so when the key is wrong, and with the right one connects,
// initializes a server and calls a tool.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { launchBrowser, startGateway } from "./harness.mjs";

const KEY = "console-key-0123456789abcdef";

describe("the web console on a gateway with API keys", () => {
  let gateway;
  let browser;

  before(async () => {
    gateway = await startGateway({ gateway: { apiKeys: [{ name: "console", key: KEY, servers: ["everything"] }] } });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await gateway?.stop();
  });

  test("asks for the key, refuses a wrong one, and works with the right one", async () => {
    const page = await browser.context.newPage();
    const sockets = [];
    page.on("websocket", (ws) => sockets.push(ws.url()));
    try {
      await page.goto(`http://127.0.0.1:${gateway.port}/`);
      await page.locator("#connection", { hasText: "Needs an API key" }).waitFor();
      await page.getByRole("alert").filter({ hasText: "This gateway needs an API key." }).waitFor();

      await page.getByLabel("API key", { exact: true }).fill("not-the-key-0123456789");
      await page.getByRole("button", { name: "Connect with this key" }).click();
      await page.getByRole("alert").filter({ hasText: "The gateway refused this API key." }).waitFor();

      await page.getByLabel("API key", { exact: true }).fill(KEY);
      await page.getByRole("button", { name: "Connect with this key" }).click();
      await page.locator("#connection", { hasText: "Connected" }).waitFor();
      // The key may use one server: the others are not even named.
      await page.locator('.server-button[data-name="everything"] .badge', { hasText: "ready" }).waitFor();
      assert.deepEqual(await page.locator(".server-button .server-name").allTextContents(), ["everything"]);
      await page.getByRole("button", { name: "Initialize", exact: true }).click();
      await page.getByRole("tab", { name: /^Tools \(\d+\)$/ }).waitFor();
      await page.locator(".item-button", { has: page.locator(".item-name", { hasText: /^echo$/ }) }).click();
      await page.getByLabel(/^message/).fill("with a key");
      await page.getByRole("button", { name: "Call", exact: true }).click();
      await page.getByRole("region", { name: "Result" }).getByText("Echo: with a key").waitFor();
      assert.ok(sockets.length >= 3 && sockets.every((url) => !url.includes(KEY) && !url.includes("not-the-key")));
      // A refused socket is reported as a console error; nothing else went wrong.
      assert.deepEqual(browser.problems.filter((p) => !/WebSocket/.test(p)), []);
    } finally {
      await page.close();
    }
  });
});
