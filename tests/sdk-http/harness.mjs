// Test harness: the real mcpmux binary on 127.0.0.1:0 with the real server-everything and
// server-memory (behind the real mcp-proxy) from the repository's node_modules.
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The repository root (where `node_modules` and `target` are). */
export const root = fileURLToPath(new URL("../../", import.meta.url));

function modulePath(path) {
  const full = join(root, "node_modules", path);
  if (!existsSync(full)) throw new Error(`${full} is missing: run scripts/setup first`);
  return full;
}

/** The mcpServers entries of the real server-everything and server-memory. */
export function realServers(dir) {
  return {
    everything: { command: "node", args: [modulePath("@modelcontextprotocol/server-everything/dist/index.js"), "stdio"] },
    memory: {
      command: "node",
      args: [modulePath("@modelcontextprotocol/server-memory/dist/index.js")],
      env: { MEMORY_FILE_PATH: join(dir, "memory.jsonl") },
    },
  };
}

/** The debug binary, built first if it is missing. */
function binary() {
  const path = join(root, "target", "debug", "mcpmux");
  if (!existsSync(path)) {
    execFileSync("cargo", ["build", "--bin", "mcpmux"], { cwd: root, stdio: "inherit" });
  }
  return path;
}

/**
 * Starts mcpmux with the real servers and `gateway` settings; resolves with
 * `{ base, stop, log }` once it printed where it listens (`base` is its http:// url).
 */
export async function startGateway({ gateway = {} } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "mcpmux-sdk-http-"));
  const file = join(dir, "mcpmux.json");
  const config = {
    mcpServers: realServers(dir),
    gateway: { mcpProxy: ["node", modulePath("mcp-proxy/dist/bin/mcp-proxy.mjs")], ...gateway },
  };
  writeFileSync(file, JSON.stringify(config, null, 2));
  const child = spawn(binary(), ["--config", file, "--listen", "127.0.0.1:0"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    log = (log + chunk).slice(-20_000);
  });
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const lines = createInterface({ input: child.stdout });
  const first = await Promise.race([
    new Promise((resolve) => lines.once("line", resolve)),
    exited.then(({ code, signal }) => {
      throw new Error(`mcpmux exited (${code ?? signal}) before listening:\n${log}`);
    }),
  ]);
  lines.on("line", () => {});
  const match = /^mcpmux listening on ws:\/\/(127\.0\.0\.1:\d+)\/ws$/.exec(first);
  if (!match) {
    child.kill("SIGKILL");
    throw new Error(`unexpected first line from mcpmux: ${first}`);
  }
  return {
    base: `http://${match[1]}`,
    log: () => log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The text of a tools/call result's first content item. */
export function toolText(result) {
  return result?.content?.[0]?.text ?? "";
}
