/**
 * Processes, ports, polling and logs for the WebXR end-to-end suite.
 *
 * Every process the harness starts runs in its own process group (`detached`), is killed
 * group-wide at teardown, and is also recorded in `$LOCO_PW_RUN_DIR/pgids` so that the
 * global teardown can sweep anything a crashed worker left behind.
 */
import { ChildProcess, execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

export const REPO = path.resolve(__dirname, '..', '..');

export const LOCO_CACHE = process.env.LOCO_CACHE || path.join(os.homedir(), '.cache', 'loco');

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ------------------------------------------------------------------ tools

/** Absolute path of `name` on PATH, or null. */
export function which(name: string): string | null {
  if (name.includes('/')) return isExecutable(name) ? name : null;
  for (const dir of (process.env.PATH || '').split(':')) {
    if (!dir) continue;
    const p = path.join(dir, name);
    if (isExecutable(p)) return p;
  }
  return null;
}

export function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

/** Throws (never skips) when one of the tools is missing, naming the Debian package. */
export function requireTools(tools: Record<string, string>): void {
  const missing = Object.entries(tools).filter(([t]) => which(t) === null);
  if (missing.length) {
    throw new Error(
      `missing tools: ${missing.map(([t, pkg]) => `${t} (apt-get install -y ${pkg})`).join(', ')}`,
    );
  }
}

// ------------------------------------------------------------------ polling

export class ProcessExited extends Error {}

/**
 * Polls `pred` until it returns something truthy and returns that, or throws after
 * `timeoutMs` naming `what` and the last exception `pred` threw. A ProcessExited thrown by
 * `pred` stops the polling at once.
 */
export async function waitUntil<T>(
  pred: () => T | Promise<T>,
  timeoutMs: number,
  what: string,
  intervalMs = 100,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown = null;
  for (;;) {
    try {
      const v = await pred();
      if (v) return v as NonNullable<T>;
    } catch (e) {
      if (e instanceof ProcessExited) throw e;
      lastErr = e;
    }
    if (Date.now() >= deadline) {
      let msg = `timed out after ${(timeoutMs / 1000).toFixed(1)}s waiting for ${what}`;
      if (lastErr) msg += ` (last error: ${String((lastErr as Error).message ?? lastErr)})`;
      throw new Error(msg);
    }
    await sleep(intervalMs);
  }
}

// ------------------------------------------------------------------ ports

const handedOut = new Set<number>();

function bindEphemeral(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** A TCP port on 127.0.0.1 nothing listens on now, never the same twice per worker. */
export async function freePort(min = 1024): Promise<number> {
  for (let i = 0; i < 500; i++) {
    const p = await bindEphemeral();
    if (p >= min && p < 60000 && !handedOut.has(p)) {
      handedOut.add(p);
      return p;
    }
  }
  throw new Error('no free TCP port found');
}

export function portAccepts(port: number, host = '127.0.0.1', timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

// ------------------------------------------------------------------ processes

export function runDir(): string {
  const d = process.env.LOCO_PW_RUN_DIR || path.join(os.tmpdir(), `loco-pw-${process.ppid}`);
  fs.mkdirSync(d, { recursive: true });
  return d;
}

const liveGroups = new Map<number, string>();

function recordGroup(pid: number, argv0: string): void {
  liveGroups.set(pid, argv0);
  try {
    fs.appendFileSync(path.join(runDir(), 'pgids'), `${pid} ${argv0}\n`);
  } catch {
    /* best effort */
  }
}

process.on('exit', () => {
  for (const pgid of liveGroups.keys()) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
});

export interface Proc {
  child: ChildProcess;
  pid: number;
  name: string;
  logPath: string | null;
  exited: Promise<number | null>;
  /** exit code (or 128+signal) once it has exited, else undefined */
  exitCode(): number | null | undefined;
}

/** Starts argv in its own process group, stdout+stderr appended to logPath. */
export function spawnGroup(
  argv: string[],
  opts: { logPath?: string; env?: NodeJS.ProcessEnv; name?: string; cwd?: string } = {},
): Proc {
  let fd: number | 'ignore' = 'ignore';
  if (opts.logPath) fd = fs.openSync(opts.logPath, 'a');
  const child = spawn(argv[0], argv.slice(1), {
    detached: true,
    stdio: ['ignore', fd, fd],
    env: opts.env ?? process.env,
    cwd: opts.cwd,
  });
  if (typeof fd === 'number') fs.closeSync(fd);
  if (child.pid === undefined) {
    throw new Error(`could not start ${argv[0]} (not installed?)`);
  }
  const pid = child.pid;
  recordGroup(pid, argv[0]);
  let code: number | null | undefined;
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (c, sig) => {
      code = c ?? (sig ? 128 + (os.constants.signals[sig] ?? 0) : null);
      resolve(code);
    });
    child.once('error', () => {
      code = 127;
      resolve(code);
    });
  });
  return {
    child,
    pid,
    name: opts.name ?? path.basename(argv[0]),
    logPath: opts.logPath ?? null,
    exited,
    exitCode: () => code,
  };
}

/** SIGTERM (or `sig`) to the whole group, SIGKILL after `graceMs`, always sweep the group. */
export async function killGroup(p: Proc, sig: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<number | null> {
  if (p.exitCode() === undefined) {
    try {
      process.kill(-p.pid, sig);
    } catch {
      /* already gone */
    }
    await Promise.race([p.exited, sleep(graceMs)]);
  }
  try {
    process.kill(-p.pid, 'SIGKILL');
  } catch {
    /* group empty */
  }
  await Promise.race([p.exited, sleep(5000)]);
  liveGroups.delete(p.pid);
  return p.exitCode() ?? null;
}

/** Runs a short command; resolves stdout, rejects with its stderr on failure. */
export function run(
  argv: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; cwd?: string } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      argv[0],
      argv.slice(1),
      { env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 10000, cwd: opts.cwd, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        if (err) {
          reject(new Error(`${argv.join(' ')} failed (${(err as NodeJS.ErrnoException).code ?? err.message}): ${String(stderr).trim()}`));
        } else resolve(String(stdout));
      },
    );
  });
}

// ------------------------------------------------------------------ logs

export function tail(p: string | null, limit = 6000): string {
  if (!p) return '<no log>';
  try {
    const buf = fs.readFileSync(p);
    const cut = buf.length > limit ? `... (${buf.length - limit} bytes cut)\n` : '';
    return cut + buf.subarray(Math.max(0, buf.length - limit)).toString('utf8');
  } catch (e) {
    return `<cannot read ${p}: ${(e as Error).message}>`;
  }
}
