// What the browser tests run against: the real mcpmux binary with the real
// server-everything and server-memory (through the pinned mcp-proxy), a TCP relay that
// can cut the path between the browser and the gateway, a small web server for the
// example page, and Debian's Chromium driven by playwright-core.

import { execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, extname, join, normalize, resolve, sep } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

/** The repository root. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
/** Where tests leave what people may want to look at (screenshots); gitignored. */
export const ARTEFACTS = join(ROOT, "target", "browser");
/** Debian's Chromium, installed by `scripts/setup --test`. */
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

function nodeModule(path) {
  const full = join(ROOT, "node_modules", path);
  if (!existsSync(full)) throw new Error(`${full} is missing: run scripts/setup first`);
  return full;
}

/** The `mcpServers` entries of the real upstreams. */
export function upstreams() {
  return {
    everything: { command: "node", args: [nodeModule("@modelcontextprotocol/server-everything/dist/index.js"), "stdio"] },
    memory: { command: "node", args: [nodeModule("@modelcontextprotocol/server-memory/dist/index.js")] },
  };
}

let built;
/** The mcpmux binary, built (or brought up to date) once per test file. */
export function mcpmuxBinary() {
  if (process.env.MCPMUX_BIN) return process.env.MCPMUX_BIN;
  built ??= (() => {
    execFileSync("cargo", ["build", "--quiet", "--bin", "mcpmux"], { cwd: ROOT, stdio: ["ignore", "ignore", "inherit"] });
    return join(ROOT, "target", "debug", "mcpmux");
  })();
  return built;
}

/**
 * Starts mcpmux on 127.0.0.1:0 with `servers` (default: everything and memory).
 * Resolves once it has printed where it listens: `{ port, consoleUrl, stop() }`.
 */
export async function startGateway({ servers = upstreams(), gateway = {} } = {}) {
  const dir = await mkdtemp(join(tmpdir(), "mcpmux-browser-"));
  const config = {
    mcpServers: servers,
    gateway: { mcpProxy: ["node", nodeModule("mcp-proxy/dist/bin/mcp-proxy.mjs")], restartBackoffMinMs: 100, ...gateway },
  };
  const file = join(dir, "mcpmux.json");
  await writeFile(file, JSON.stringify(config));
  const child = spawn(mcpmuxBinary(), ["--config", file, "--listen", "127.0.0.1:0"], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  child.stderr.on("data", (chunk) => {
    log = (log + chunk).slice(-20_000);
  });
  const exited = new Promise((done) => child.once("exit", (code, signal) => done({ code, signal })));
  const lines = createInterface({ input: child.stdout });
  const firstLines = [];
  const started = new Promise((done, fail) => {
    lines.on("line", (line) => {
      firstLines.push(line);
      if (firstLines.length === 2) done(firstLines);
    });
    exited.then(({ code, signal }) => fail(new Error(`mcpmux exited (${code ?? signal}) before it listened:\n${log}`)));
  });
  const [listening, consoleLine] = await started;
  const match = /^mcpmux listening on ws:\/\/127\.0\.0\.1:(\d+)\/ws$/.exec(listening);
  if (!match) throw new Error(`unexpected first line: ${listening}`);
  return {
    port: Number(match[1]),
    lines: [listening, consoleLine],
    log: () => log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exited;
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A TCP relay on 127.0.0.1:0 to `port`. `cut()` ends every relayed connection at once,
 * both ways, without a WebSocket close frame; while `blocked`, new connections are
 * dropped as soon as they arrive; `retarget(port)` sends new connections elsewhere
 * (another gateway, which knows none of the first one's sessions).
 */
export async function startRelay(port) {
  const pairs = new Set();
  let blocked = false;
  let refused = 0;
  const server = net.createServer((client) => {
    if (blocked) {
      refused++;
      client.destroy();
      return;
    }
    const upstream = net.connect(port, "127.0.0.1");
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) {
      socket.on("error", end);
      socket.on("close", end);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((done) => server.listen(0, "127.0.0.1", done));
  return {
    port: server.address().port,
    get refused() {
      return refused;
    },
    block() {
      blocked = true;
    },
    retarget(to) {
      port = to;
    },
    unblock() {
      blocked = false;
    },
    cut() {
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
      pairs.clear();
    },
    async close() {
      this.cut();
      await new Promise((done) => server.close(done));
    },
  };
}

const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8" };

/**
 * A web server on 127.0.0.1:0 for files of the repository under `roots` (folders
 * relative to it), which also carries `/ws` to the gateway on `gatewayPort`, as a
 * reverse proxy in front of mcpmux would: the page and the gateway share one origin.
 */
export async function startSite(roots, gatewayPort) {
  const allowed = roots.map((r) => join(ROOT, r) + sep);
  const server = http.createServer(async (req, res) => {
    const path = normalize(join(ROOT, decodeURIComponent(new URL(req.url, "http://x").pathname)));
    if (!allowed.some((root) => path.startsWith(root))) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(path);
      res.writeHead(200, { "content-type": TYPES[extname(path)] ?? "application/octet-stream" }).end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  const sockets = new Set();
  server.on("upgrade", (req, client, head) => {
    const upstream = net.connect(gatewayPort, "127.0.0.1", () => {
      const headers = [];
      for (let i = 0; i < req.rawHeaders.length; i += 2) headers.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      upstream.write(`${req.method} ${req.url} HTTP/1.1\r\n${headers.join("\r\n")}\r\n\r\n`);
      upstream.write(head);
      client.pipe(upstream);
      upstream.pipe(client);
    });
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
      socket.on("close", () => {
        sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
  });
  await new Promise((done) => server.listen(0, "127.0.0.1", done));
  return {
    port: server.address().port,
    async close() {
      for (const socket of sockets) socket.destroy();
      server.closeAllConnections();
      await new Promise((done) => server.close(done));
    },
  };
}

/**
 * Headless Chromium with a fresh profile, and the flags that keep it from reaching for
 * the network on its own (there is none but this machine's). Every page error and
 * console error (CSP violations included) is collected in `problems`.
 */
export async function launchBrowser() {
  const profile = await mkdtemp(join(tmpdir(), "mcpmux-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1366, height: 768 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  context.setDefaultTimeout(30_000);
  const problems = [];
  const watch = (page) => {
    page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    page.on("console", (msg) => {
      if (msg.type() === "error") problems.push(`console error: ${msg.text()}`);
    });
  };
  context.pages().forEach(watch);
  context.on("page", watch);
  return {
    context,
    problems,
    async page() {
      const existing = context.pages().find((p) => p.url() === "about:blank");
      return existing ?? context.newPage();
    },
    async close() {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}

/** Saves a screenshot of `page` as `target/browser/NAME.png`; returns its path. */
export async function screenshot(page, name) {
  await mkdir(ARTEFACTS, { recursive: true });
  const path = join(ARTEFACTS, `${name}.png`);
  await page.screenshot({ path });
  return path;
}

/**
 * A Streamable HTTP MCP server on 127.0.0.1:0 that offers `tools` (as `tools/list`
 * answers them, however odd) and answers every `tools/call` with the name and arguments
 * it got, which it also records in `calls`. JSON responses only; no standalone stream.
 */
export async function startToolServer(tools) {
  const calls = [];
  const server = http.createServer(async (req, res) => {
    if (req.method === "DELETE") return res.writeHead(200).end();
    if (req.method !== "POST") return res.writeHead(405).end();
    let body = "";
    for await (const chunk of req) body += chunk;
    const message = JSON.parse(body);
    const reply = (result) => {
      res.writeHead(200, { "content-type": "application/json", "mcp-session-id": "tools-1" });
      res.end(JSON.stringify({ jsonrpc: "2.0", id: message.id, result }));
    };
    switch (message.method) {
      case "initialize":
        return reply({
          protocolVersion: message.params.protocolVersion,
          capabilities: { tools: {} },
          serverInfo: { name: "odd-tools", version: "1" },
        });
      case "tools/list":
        return reply({ tools });
      case "tools/call":
        calls.push({ name: message.params.name, arguments: message.params.arguments });
        return reply({ content: [{ type: "text", text: `called ${message.params.name} with ${JSON.stringify(message.params.arguments)}` }] });
      default:
        if (message.id === undefined) return res.writeHead(202).end();
        res.writeHead(200, { "content-type": "application/json" });
        return res.end(JSON.stringify({ jsonrpc: "2.0", id: message.id, error: { code: -32601, message: "not here" } }));
    }
  });
  await new Promise((done) => server.listen(0, "127.0.0.1", done));
  return {
    url: `http://127.0.0.1:${server.address().port}/mcp`,
    calls,
    async close() {
      server.closeAllConnections();
      await new Promise((done) => server.close(done));
    },
  };
}
