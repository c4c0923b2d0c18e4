// Headless Chromium for the page tests: Debian's `chromium` (CHROMIUM_BIN,
// default /usr/bin/chromium) driven by playwright-core, with a throwaway
// profile; no browser is downloaded. Screenshots go to target/<name>/ at
// the repository root and their paths are printed.

import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/** Starts Chromium; `close()` ends it and removes its profile. */
export async function launchChromium({ viewport }) {
  const profile = mkdtempSync(join(tmpdir(), "starling-chromium-"));
  try {
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
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
      viewport,
    });
    return {
      context,
      async close() {
        await context.close();
        rmSync(profile, { recursive: true, force: true });
      },
    };
  } catch (error) {
    rmSync(profile, { recursive: true, force: true });
    throw error;
  }
}

/** A function that saves a full-page screenshot of a page to target/`dir`/`name` and prints its path. */
export function screenshotsIn(dir) {
  const output = join(REPO, "target", dir);
  mkdirSync(output, { recursive: true });
  return async (page, name) => {
    const path = join(output, name);
    await page.screenshot({ path, fullPage: true });
    console.log(`screenshot: ${path}`);
  };
}
