/** Runs once in the runner: checks the browser exists and sets up the run directory. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CHROMIUM } from './chromium';

export default async function globalSetup(): Promise<void> {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium (never \`npx playwright install\`), or set LOCO_CHROMIUM`);
  }
  // Workers record the process groups they start here; the global teardown sweeps leftovers.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'loco-pw-run-'));
  process.env.LOCO_PW_RUN_DIR = dir;
}
