// The committed dist/ is exactly what the pinned TypeScript makes of src/, and the
// published types fit the MCP SDK's Transport (checked by compiling a use of them).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const pkg = fileURLToPath(new URL("../", import.meta.url));
const tsc = join(pkg, "node_modules", "typescript", "bin", "tsc");

function files(dir) {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath ?? entry.path, entry.name).slice(dir.length + 1))
    .sort();
}

test("dist/ matches a fresh build of src/", () => {
  const out = mkdtempSync(join(tmpdir(), "mcpmux-dist-"));
  try {
    execFileSync(process.execPath, [tsc, "-p", join(pkg, "tsconfig.json"), "--outDir", out], { cwd: pkg });
    const dist = join(pkg, "dist");
    assert.deepEqual(files(dist), files(out), "the same files (run `npm run build` and commit dist/)");
    for (const name of files(out)) {
      assert.equal(
        readFileSync(join(dist, name), "utf8"),
        readFileSync(join(out, name), "utf8"),
        `dist/${name} differs from a fresh build: run \`npm run build\` and commit dist/`,
      );
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test("the published types fit the MCP SDK's Transport and the documented API", () => {
  try {
    execFileSync(process.execPath, [tsc, "-p", join(pkg, "test", "tsconfig.json")], { cwd: pkg, stdio: "pipe" });
  } catch (error) {
    assert.fail(`test/types.ts does not compile:\n${error.stdout}${error.stderr}`);
  }
});
