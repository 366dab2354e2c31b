/**
 * Debian's Chromium, headless, driven by playwright-core (no browser download), with a fresh
 * profile whose NSS certificate store trusts the development CA: TLS stays fully verified.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { chromium, type BrowserContext } from "playwright-core";

export const CHROMIUM = process.env["AMORA_CHROMIUM"] ?? "/usr/bin/chromium";

export interface TrustingBrowser {
  context: BrowserContext;
  close(): Promise<void>;
}

/**
 * Launch Chromium whose only extra trust anchor is `caFile`.
 *
 * Chromium on Linux reads locally added trust anchors from the NSS database in
 * `$HOME/.pki/nssdb`; the browser gets a throwaway HOME with a database made by `certutil`
 * (libnss3-tools) that trusts the CA for TLS servers ("C,,"). Nothing disables checks.
 */
export async function launchTrusting(caFile: string): Promise<TrustingBrowser> {
  const home = mkdtempSync(join(tmpdir(), "amora-e2e-home-"));
  const nssdb = join(home, ".pki", "nssdb");
  mkdirSync(nssdb, { recursive: true });
  execFileSync("certutil", ["-N", "-d", `sql:${nssdb}`, "--empty-password"]);
  execFileSync("certutil", ["-A", "-d", `sql:${nssdb}`, "-n", "Amora development CA", "-t", "C,,", "-i", caFile]);
  const profile = join(home, "profile");
  const args = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ];
  if (process.getuid?.() === 0) args.push("--no-sandbox"); // Chromium refuses to run its sandbox as root
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args,
    env: { ...process.env, HOME: home },
    viewport: { width: 1100, height: 720 },
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(home, { recursive: true, force: true });
    },
  };
}
