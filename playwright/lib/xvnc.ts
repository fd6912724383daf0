/**
 * A TigerVNC Xvnc desktop (1024x768x24, no auth, shared, localhost) and the X clients the tests
 * use on it: xdotool (pointer read-back), xev (button log), xterm running `cat > FILE` (typed
 * keys), xsetroot (screen changes). Mirrors tools/loco_testkit/xvnc.py (same names).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Proc, freePort, killGroup, portAccepts, requireTools, run, runDir, sleep, spawnGroup, waitUntil, ProcessExited } from './procs';

export const WIDTH = 1024;
export const HEIGHT = 768;

const X_TOOLS = {
  Xvnc: 'tigervnc-standalone-server',
  xdpyinfo: 'x11-utils',
  xdotool: 'xdotool',
  xev: 'x11-utils',
  xterm: 'xterm',
  xsetroot: 'x11-xserver-utils',
};

const usedDisplays = new Set<number>();

async function pickDisplay(): Promise<number> {
  for (let i = 0; i < 500; i++) {
    const n = 20 + Math.floor(Math.random() * 480);
    if (usedDisplays.has(n)) continue;
    if (fs.existsSync(`/tmp/.X${n}-lock`) || fs.existsSync(`/tmp/.X11-unix/X${n}`)) continue;
    if (await portAccepts(6000 + n)) continue;
    usedDisplays.add(n);
    return n;
  }
  throw new Error('no free X display number');
}

export interface XevEvent {
  kind: 'ButtonPress' | 'ButtonRelease';
  x: number;
  y: number;
  button: number;
}

const XEV_RE =
  /(ButtonPress|ButtonRelease) event,[\s\S]*?root:\((-?\d+),(-?\d+)\),\s*state 0x[0-9a-fA-F]+, button (\d+)/g;

export class XevLog {
  constructor(readonly proc: Proc, readonly logPath: string) {}

  events(): XevEvent[] {
    let txt = '';
    try {
      txt = fs.readFileSync(this.logPath, 'utf8');
    } catch {
      return [];
    }
    return [...txt.matchAll(XEV_RE)].map((m) => ({
      kind: m[1] as XevEvent['kind'],
      x: Number(m[2]),
      y: Number(m[3]),
      button: Number(m[4]),
    }));
  }

  close(): Promise<unknown> {
    return killGroup(this.proc, 'SIGTERM', 2000);
  }
}

export class XClient {
  constructor(readonly proc: Proc, readonly wid: string) {}
  close(): Promise<unknown> {
    return killGroup(this.proc, 'SIGTERM', 2000);
  }
}

export class Xvnc {
  display = 0;
  port = 0;
  proc: Proc | null = null;
  logPath = '';
  private clients: { close(): Promise<unknown> }[] = [];

  private constructor(readonly workdir: string, readonly label: string) {}

  static async create(workdir: string, label: string): Promise<Xvnc> {
    requireTools(X_TOOLS);
    const x = new Xvnc(workdir, label);
    // Another X server (a parallel worker's, picked in the same instant) may take the display
    // between the check and Xvnc's start: Xvnc then exits at once, and another number is tried.
    for (let attempt = 1; ; attempt++) {
      x.display = await pickDisplay();
      x.port = await freePort();
      x.logPath = path.join(workdir, `xvnc-${label}-${x.display}.log`);
      try {
        await x.start();
        return x;
      } catch (e) {
        if (!(e instanceof ProcessExited) || attempt >= 3) throw e;
        console.log(`[xvnc] ${(e as Error).message}: trying another display`);
      }
    }
  }

  get env(): NodeJS.ProcessEnv {
    const e: NodeJS.ProcessEnv = { ...process.env, DISPLAY: `:${this.display}` };
    delete e.XAUTHORITY;
    return e;
  }

  argv(): string[] {
    return ['Xvnc', `:${this.display}`, '-geometry', `${WIDTH}x${HEIGHT}`, '-depth', '24',
      '-rfbport', String(this.port), '-SecurityTypes', 'None', '-AlwaysShared', '-localhost',
      '-nolisten', 'tcp', '-desktop', `loco-pw-${this.label}`];
  }

  async start(timeoutMs = 20000): Promise<void> {
    this.clearStale();
    fs.appendFileSync(this.logPath, `\n===== start ${new Date().toISOString()}: ${this.argv().join(' ')}\n`);
    const p = spawnGroup(this.argv(), { logPath: this.logPath, name: `Xvnc:${this.display}` });
    this.proc = p;
    // For the global teardown: the lock files a killed Xvnc leaves behind.
    fs.appendFileSync(path.join(runDir(), 'xlocks'), `${p.pid} ${this.display}\n`);
    await waitUntil(async () => {
      if (p.exitCode() !== undefined) throw new ProcessExited(`Xvnc :${this.display} exited rc=${p.exitCode()}`);
      return portAccepts(this.port);
    }, timeoutMs, `Xvnc :${this.display} rfbport ${this.port}`);
    await waitUntil(async () => {
      await run(['xdpyinfo'], { env: this.env, timeoutMs: 5000 });
      return true;
    }, timeoutMs, `X display :${this.display}`);
  }

  /** Closes the X clients (xev, xterm) started on this screen. */
  async closeClients(): Promise<void> {
    for (const c of this.clients.splice(0)) await c.close().catch(() => undefined);
  }

  async kill(): Promise<void> {
    await this.closeClients();
    if (this.proc) await killGroup(this.proc, 'SIGTERM', 5000);
    this.clearStale();
  }

  private clearStale(): void {
    if (this.proc && this.proc.exitCode() === undefined) return;
    for (const p of [`/tmp/.X${this.display}-lock`, `/tmp/.X11-unix/X${this.display}`]) {
      try {
        fs.unlinkSync(p);
      } catch {
        /* not there */
      }
    }
  }

  x(...argv: string[]): Promise<string> {
    return run(argv, { env: this.env, timeoutMs: 20000 });
  }

  solid(color: string): Promise<string> {
    return this.x('xsetroot', '-solid', color);
  }

  async pointer(): Promise<{ x: number; y: number }> {
    const out = await this.x('xdotool', 'getmouselocation', '--shell');
    const vals = Object.fromEntries(out.split(/\s+/).filter((l) => l.includes('=')).map((l) => l.split('=', 2)));
    return { x: Number(vals.X), y: Number(vals.Y) };
  }

  /** Moves the X pointer and waits until it is there (xdotool's --sync hangs ~15 s when it
   *  already is, so poll instead). */
  async movePointer(x: number, y: number): Promise<void> {
    await this.x('xdotool', 'mousemove', String(x), String(y));
    await waitUntil(async () => {
      const p = await this.pointer();
      return p.x === x && p.y === y;
    }, 5000, `X pointer of ${this.label} moved to (${x},${y}) by xdotool`, 20);
  }

  /** Waits until the X pointer is within `tol` px of (x, y); returns where it is. */
  async waitPointerNear(x: number, y: number, tol: number, timeoutMs = 10000): Promise<{ x: number; y: number }> {
    let last: { x: number; y: number } | null = null;
    try {
      return await waitUntil(async () => {
        last = await this.pointer();
        return Math.abs(last.x - x) <= tol && Math.abs(last.y - y) <= tol ? last : null;
      }, timeoutMs, `X pointer of ${this.label} within ${tol}px of (${x},${y})`, 50);
    } catch (e) {
      throw new Error(`${(e as Error).message}; it is at ${JSON.stringify(last)}`);
    }
  }

  /** A full-screen xev window logging button events (on top of everything mapped before). */
  async xevButtons(): Promise<XevLog> {
    const name = `locoxev${Math.floor(Math.random() * 1e9)}`;
    const log = path.join(this.workdir, `${this.label}-${name}.log`);
    const p = spawnGroup(['xev', '-geometry', `${WIDTH}x${HEIGHT}+0+0`, '-name', name, '-event', 'button'],
      { env: this.env, logPath: log, name: 'xev' });
    await this.x('xdotool', 'search', '--sync', '--onlyvisible', '--name', name);
    const xl = new XevLog(p, log);
    this.clients.push(xl);
    return xl;
  }

  /**
   * A plain window at `geometry` (X geometry, pixels, e.g. `512x384+0+0`), mapped on top: xev's
   * window, white inside a 1 px black border, with xev's 50x50 inner window (4 px black border)
   * at (10,10). A known picture for pixel checks; it listens to nothing but exposures.
   */
  async plainWindow(geometry: string): Promise<XClient> {
    const name = `locowin${Math.floor(Math.random() * 1e9)}`;
    const p = spawnGroup(['xev', '-geometry', geometry, '-name', name, '-event', 'expose'],
      { env: this.env, logPath: path.join(this.workdir, `${this.label}-${name}.log`), name: 'xev' });
    const wid = (await this.x('xdotool', 'search', '--sync', '--onlyvisible', '--name', name)).split(/\s+/)[0];
    const c = new XClient(p, wid);
    this.clients.push(c);
    return c;
  }

  /** An xterm running `sh -c 'cat > FILE'`, mapped at `geometry`, holding the X input focus. */
  async xtermCat(outFile: string, geometry = '80x24+0+0'): Promise<XClient> {
    const cls = `LocoXterm${Math.floor(Math.random() * 1e9)}`;
    const p = spawnGroup(['xterm', '-class', cls, '-geometry', geometry, '-e', 'sh', '-c', `cat > '${outFile}'`],
      { env: this.env, logPath: path.join(this.workdir, `${this.label}-${cls}.log`), name: 'xterm' });
    const wid = (await this.x('xdotool', 'search', '--sync', '--onlyvisible', '--class', cls)).split(/\s+/)[0];
    await this.focus(wid);
    const c = new XClient(p, wid);
    this.clients.push(c);
    return c;
  }

  /** No window manager runs here: set the X input focus directly and check it took. */
  async focus(wid: string): Promise<void> {
    await waitUntil(async () => {
      await run(['xdotool', 'windowfocus', '--sync', wid], { env: this.env, timeoutMs: 5000 }).catch(() => '');
      return (await this.x('xdotool', 'getwindowfocus')).trim() === wid;
    }, 10000, `X focus on window ${wid} (${this.label})`);
  }

  async focusedWindow(): Promise<string> {
    return (await this.x('xdotool', 'getwindowfocus')).trim();
  }
}

/** Keeps the X screens changing (root colour cycles) so their agents keep sending frames. */
export class Animator {
  private timer: NodeJS.Timeout | null = null;
  private busy = false;
  ticks = 0;
  errors = 0;
  static COLORS = ['#202040', '#204020', '#402020', '#404040', '#103050', '#305010'];

  constructor(private readonly screens: Xvnc[], private readonly intervalMs = 400) {}

  start(): this {
    let i = 0;
    this.timer = setInterval(async () => {
      if (this.busy) return;
      this.busy = true;
      const c = Animator.COLORS[i++ % Animator.COLORS.length];
      await Promise.all(this.screens.map((s) => s.solid(c).then(() => this.ticks++, () => this.errors++)));
      this.busy = false;
    }, this.intervalMs);
    return this;
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    while (this.busy) await sleep(20);
  }
}
