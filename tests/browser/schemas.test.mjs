// The console against tools whose input schemas are valid but odd (boolean sub-schemas,
// anyOf members that are not objects, a "__proto__" property, non-string descriptions
// and defaults with their own toString) or not schemas at all: every tool renders
// without an error on the page, and Call always calls the tool on screen.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { launchBrowser, screenshot, startGateway, startToolServer } from "./harness.mjs";

const plain = { type: "object", properties: { text: { type: "string" } }, required: ["text"] };
const TOOLS = [
  { name: "plain", inputSchema: plain },
  {
    name: "booleans",
    inputSchema: {
      type: "object",
      properties: { anything: true, nothing: false, flag: { type: "boolean" } },
      required: ["nothing"],
    },
  },
  {
    name: "odd-alternatives",
    inputSchema: {
      type: "object",
      properties: {
        choice: { anyOf: [true, "x", null, 3, { const: "a" }] },
        mixed: { oneOf: [{ const: 1 }, false] },
        consts: { anyOf: [{ const: "red" }, { const: "blue" }] },
      },
      required: ["consts"],
    },
  },
  { name: "schema-true", inputSchema: true },
  { name: "schema-false", inputSchema: false },
  { name: "no-schema" },
  {
    name: "prototype",
    inputSchema: JSON.parse('{"type":"object","properties":{"__proto__":{"type":"string"},"constructor":{"type":"number"}},"required":["__proto__"]}'),
  },
  {
    name: "odd-shapes",
    description: { toString: 1 },
    title: ["not", "a", "string"],
    annotations: "none",
    inputSchema: {
      type: "object",
      properties: {
        nullish: { type: ["null"] },
        numbered: { type: 42 },
        defaulted: { type: "string", default: { toString: 1 } },
        counted: { type: "integer", default: { valueOf: 2 }, minimum: "0" },
        listed: { enum: [null, { x: 1 }] },
        described: { type: "string", description: { toString: 1 }, maxLength: "300" },
        typed: { type: [{ toString: 1 }, "string"] },
      },
      required: "described",
    },
  },
  { name: "array-properties", inputSchema: { type: "object", properties: [], required: [1, null] } },
  { description: "a tool without a name is left out" },
  "not a tool",
  null,
];

describe("the web console with odd tool schemas", () => {
  let upstream;
  let gateway;
  let browser;

  before(async () => {
    upstream = await startToolServer(TOOLS);
    gateway = await startGateway({ servers: { odd: { url: upstream.url } } });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await gateway?.stop();
    await upstream?.close();
  });

  async function choose(page, name) {
    await page.locator(".item-button", { has: page.locator(".item-name", { hasText: new RegExp(`^${name}$`) }) }).click();
    await page.locator("#item-view h3 code", { hasText: new RegExp(`^${name}$`) }).waitFor();
  }

  async function call(page, name) {
    const before = upstream.calls.length;
    await page.getByRole("button", { name: "Call", exact: true }).click();
    await page.getByRole("region", { name: "Result" }).getByText(`called ${name} with`).waitFor();
    assert.equal(upstream.calls.length, before + 1);
    return upstream.calls.at(-1);
  }

  test("every tool renders, and Call calls the tool on screen", async () => {
    const page = await browser.context.newPage();
    try {
      await page.goto(`http://127.0.0.1:${gateway.port}/`);
      await page.locator('.server-button[data-name="odd"] .badge', { hasText: "ready" }).waitFor();
      await page.getByRole("button", { name: "Initialize", exact: true }).click();
      await page.getByRole("tab", { name: /^Tools \(\d+\)$/ }).waitFor();
      const names = await page.locator(".item-button .item-name").allTextContents();
      assert.deepEqual(names, TOOLS.filter((t) => typeof t?.name === "string").map((t) => t.name));

      await choose(page, "plain");
      await page.getByLabel(/^text/).fill("one");
      assert.deepEqual(await call(page, "plain"), { name: "plain", arguments: { text: "one" } });

      // A boolean sub-schema: true is any JSON (optional, left out while empty), false
      // accepts nothing and is never sent, even when required.
      await choose(page, "booleans");
      await page.getByLabel(/^flag/).check();
      assert.deepEqual(await call(page, "booleans"), { name: "booleans", arguments: { flag: true } });
      assert.equal(await page.getByLabel(/^nothing/).isDisabled(), true);

      await choose(page, "odd-alternatives");
      await page.getByLabel(/^consts/).selectOption({ label: "blue" });
      await page.getByLabel(/^choice/).fill('"b"');
      assert.deepEqual(await call(page, "odd-alternatives"), {
        name: "odd-alternatives",
        arguments: { choice: "b", consts: "blue" },
      });

      for (const name of ["schema-true", "schema-false", "no-schema", "array-properties"]) {
        await choose(page, name);
        assert.deepEqual(await call(page, name), { name, arguments: {} });
      }

      await choose(page, "prototype");
      await page.getByLabel(/^__proto__/).fill("kept");
      const proto = await call(page, "prototype");
      assert.equal(JSON.stringify(proto.arguments), '{"__proto__":"kept"}', "sent as a property like any other");

      await choose(page, "odd-shapes");
      await page.getByLabel(/^described/).fill("said");
      const odd = await call(page, "odd-shapes");
      assert.equal(odd.name, "odd-shapes");
      assert.equal(odd.arguments.described, "said");

      await screenshot(page, "console-odd-schemas");
      assert.deepEqual(browser.problems, []);
    } finally {
      await page.close();
    }
  });
});
