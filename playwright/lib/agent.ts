/** The real loco-agent binary: start on a port, stop, restart on the same port, metrics. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Proc, ProcessExited, freePort, isExecutable, killGroup, spawnGroup, tail, waitUntil } from './procs';

export function agentBinary(): string {
  if (process.env.LOCO_AGENT_BIN) return process.env.LOCO_AGENT_BIN;
  const target = process.env.CARGO_TARGET_DIR || path.join(os.homedir(), '.cache', 'loco', 'target');
  return path.join(target, 'release', 'loco-agent');
}

export function requireAgentBinary(): string {
  const p = agentBinary();
  if (!isExecutable(p)) {
    throw new Error(
      `loco-agent binary not found or not executable at ${p}. Build it with ` +
        '`cargo build --release -p loco-agent` (CARGO_TARGET_DIR, default ~/.cache/loco/target) or set LOCO_AGENT_BIN.',
    );
  }
  return p;
}

/** `name{labels} value` lines of a Prometheus text page, summed over series that match `labels`. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line.trim());
    if (!m || m[1] !== name) continue;
    const ls: Record<string, string> = {};
    for (const lm of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) ls[lm[1]] = lm[2];
    if (Object.entries(labels).every(([k, v]) => ls[k] === v)) sum += Number(m[3]);
  }
  return sum;
}

export class Agent {
  proc: Proc | null = null;
  starts = 0;
  stopped = false;

  private constructor(
    readonly label: string,
    readonly vncPort: number,
    readonly port: number,
    readonly logPath: string,
    readonly extraArgs: string[],
  ) {}

  /** Starts `loco-agent --vnc 127.0.0.1:vncPort --listen 127.0.0.1:PORT` and waits for its HTTP. */
  static async start(workdir: string, label: string, vncPort: number, extraArgs: string[] = []): Promise<Agent> {
    requireAgentBinary();
    const port = await freePort();
    const a = new Agent(label, vncPort, port, path.join(workdir, `agent-${label}-${port}.log`), extraArgs);
    await a.start();
    return a;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get whep(): string {
    return `${this.url}/whep`;
  }

  argv(): string[] {
    return [agentBinary(), '--vnc', `127.0.0.1:${this.vncPort}`, '--listen', `127.0.0.1:${this.port}`,
      '--encoder-threads', '1', ...this.extraArgs];
  }

  async start(): Promise<void> {
    fs.appendFileSync(this.logPath, `\n===== start #${this.starts + 1} ${new Date().toISOString()}: $ ${this.argv().join(' ')}\n`);
    const env = { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', RUST_BACKTRACE: '1' };
    const p = spawnGroup(this.argv(), { logPath: this.logPath, env, name: `loco-agent ${this.label}` });
    this.proc = p;
    this.starts++;
    this.stopped = false;
    try {
      // Port reuse right after a stop may need a retry inside the agent; give it time.
      await waitUntil(async () => {
        if (p.exitCode() !== undefined) throw new ProcessExited(`loco-agent ${this.label} exited rc=${p.exitCode()} during startup`);
        const r = await fetch(`${this.url}/healthz`, { signal: AbortSignal.timeout(2000) });
        return r.status === 200 || r.status === 503;
      }, 30000, `loco-agent ${this.label} HTTP on port ${this.port}`);
    } catch (e) {
      throw new Error(`${(e as Error).message}\n--- agent log ---\n${tail(this.logPath)}`);
    }
  }

  alive(): boolean {
    return this.proc !== null && this.proc.exitCode() === undefined;
  }

  async stop(): Promise<number | null> {
    this.stopped = true;
    return this.proc ? killGroup(this.proc, 'SIGTERM', 10000) : null;
  }

  async healthz(): Promise<{ status: number; body: Record<string, unknown> }> {
    const r = await fetch(`${this.url}/healthz`, { signal: AbortSignal.timeout(5000) });
    return { status: r.status, body: (await r.json()) as Record<string, unknown> };
  }

  async waitVnc(timeoutMs = 60000): Promise<void> {
    await waitUntil(async () => {
      const h = await this.healthz();
      return h.status === 200 && h.body.vnc_connected === true;
    }, timeoutMs, `agent ${this.label}: /healthz vnc_connected`);
  }

  async metrics(): Promise<string> {
    const r = await fetch(`${this.url}/metrics`, { signal: AbortSignal.timeout(5000) });
    if (r.status !== 200) throw new Error(`agent ${this.label} /metrics answered ${r.status}`);
    return r.text();
  }

  async metric(name: string, labels: Record<string, string> = {}): Promise<number> {
    return metricValue(await this.metrics(), name, labels);
  }

  /** Input events this agent accepted so far (all viewers). */
  async inputAccepted(): Promise<number> {
    return this.metric('loco_input_events_total', { result: 'accepted' });
  }

  log(limit = 6000): string {
    return tail(this.logPath, limit);
  }
}
