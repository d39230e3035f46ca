// examples/node/echo.mjs, run as a user would, against the real gateway.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { root, startGateway } from "./harness.mjs";

const example = join(root, "examples", "node");
let gateway;

before(async () => {
  gateway = await startGateway();
});

after(async () => {
  await gateway?.stop();
});

test("the Node example calls echo through the gateway", async () => {
  assert.ok(existsSync(join(example, "node_modules", "mcpmux")), "examples/node is not installed: run scripts/setup --test");
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [join(example, "echo.mjs"), gateway.url, "from the tests"],
    { cwd: example, timeout: 60_000 },
  );
  assert.match(stdout, /^connected to mcp-servers\/everything /m);
  assert.match(stdout, /^Echo: from the tests$/m);
});
