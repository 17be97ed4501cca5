/** The watch of the config file, on a real folder. */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { watchConfigFile } from "../../src/reload.js";
import { eventually } from "../helpers/eventually.js";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanups.splice(0).reverse()) fn();
});

function folderWith(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), "floodgate-watch-unit-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, "gateway.yaml");
  writeFileSync(file, text);
  return file;
}

describe("watchConfigFile", () => {
  it("a change written right after the watch starts is a change", async () => {
    const file = folderWith("version: 1\n");
    let changes = 0;
    const stop = watchConfigFile(
      file,
      10,
      () => changes++,
      (err) => {
        throw err;
      },
    );
    cleanups.push(stop);
    // At once, before any read the watch might start on its own could finish.
    writeFileSync(file, "version: 2\n");
    await eventually(() => changes === 1, { what: "the change" });
  });

  it("the same bytes written again are no change", async () => {
    const file = folderWith("version: 1\n");
    let changes = 0;
    const stop = watchConfigFile(
      file,
      10,
      () => changes++,
      (err) => {
        throw err;
      },
    );
    cleanups.push(stop);
    writeFileSync(file, "version: 1\n");
    writeFileSync(file, "version: 2\n");
    await eventually(() => changes === 1, { what: "the change" });
    writeFileSync(file, "version: 2\n");
    // A sleep can only show that nothing came: a later, wrong, reload would fail a later check.
    await new Promise((r) => setTimeout(r, 200));
    expect(changes).toBe(1);
  });
});
