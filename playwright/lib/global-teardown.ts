/**
 * Kills any process group a worker started and did not reap (a worker that crashed or was
 * killed cannot run its fixtures' teardown). Only groups whose leader still runs the program
 * that was recorded are touched.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Whether pid still runs (a zombie does not) after waiting up to `ms` for it to go. */
async function aliveAfter(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    let state = '';
    try {
      state = /^State:\s+(\S)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '';
    } catch {
      return false;
    }
    if (state === 'Z') return false;
    if (Date.now() >= deadline) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
}

export default async function globalTeardown(): Promise<void> {
  const dir = process.env.LOCO_PW_RUN_DIR;
  if (!dir) return;
  const file = path.join(dir, 'pgids');
  const lines = fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean) : [];
  const left: string[] = [];
  for (const line of lines) {
    const [pidS, argv0] = [line.slice(0, line.indexOf(' ')), line.slice(line.indexOf(' ') + 1)];
    const pid = Number(pidS);
    let cmd = '';
    try {
      cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0];
    } catch {
      continue; // gone
    }
    if (cmd !== argv0) continue; // pid reused by something else
    try {
      process.kill(-pid, 'SIGKILL');
      left.push(`${pid} ${argv0}`);
    } catch {
      /* gone */
    }
  }
  // Lock files of Xvnc servers that were killed without their own clean-up.
  const xlocks = path.join(dir, 'xlocks');
  for (const line of fs.existsSync(xlocks) ? fs.readFileSync(xlocks, 'utf8').split('\n').filter(Boolean) : []) {
    const [pid, display] = line.split(' ');
    const lock = `/tmp/.X${display}-lock`;
    try {
      if (fs.readFileSync(lock, 'utf8').trim() !== pid) continue; // someone else's now
      if (await aliveAfter(Number(pid), 3000)) continue; // still running
      fs.rmSync(lock, { force: true });
      fs.rmSync(`/tmp/.X11-unix/X${display}`, { force: true });
    } catch {
      /* no lock file */
    }
  }
  if (left.length) console.warn(`[teardown] killed leftover process groups: ${left.join(', ')}`);
  fs.rmSync(dir, { recursive: true, force: true });
}
