/**
 * Playwright fixtures: the shared rig of real peers (worker scope), the static server, and a page
 * with IWER's Quest 3 runtime injected before the page's own scripts.
 *
 *   rig.guest      QEMU test-pattern guest (video that changes every 0.5 s; a sound card playing a
 *                  continuous RIG_TONE_HZ tone, which its agent streams as Opus)
 *   rig.screens    three Xvnc desktops (pointer and keys read back with xdotool / xev / xterm)
 *   rig.agents     four loco-agents: [0] on the guest, [1..3] on screens[0..2]
 *   rig.desktops() the desktops.json entries for those four panels, in that order
 */
import { test as base, expect, type Page, type TestInfo } from '@playwright/test';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Agent, requireAgentBinary } from './agent';
import { QemuGuest } from './guest';
import { LocoSnap, allLive, readLoco, waitLoco, waitXrAndStableCorners } from './loco';
import { tail } from './procs';
import { StaticServer, requireDist } from './server';
import { deviceLayerInit, type XrLayerOptions } from './devicelayer';
import { iwerInit } from './xr';
import { Xvnc } from './xvnc';

export { expect };

/** The tone the rig's guest plays without end (tests/audio.spec.ts listens for it). */
export const RIG_TONE_HZ = 440;

export interface Desktop {
  name: string;
  whep: string;
  token: string | null;
}

export class Rig {
  constructor(
    readonly workdir: string,
    readonly guest: QemuGuest,
    readonly screens: Xvnc[],
    readonly agents: Agent[],
    readonly bootSeconds: number,
  ) {}

  /** The Xvnc behind panel i of rig.desktops(), or null for the QEMU guest. */
  screenOf(i: number): Xvnc | null {
    return i === 0 ? null : this.screens[i - 1];
  }

  desktops(): Desktop[] {
    return this.agents.map((a) => ({ name: a.label, whep: a.whep, token: null }));
  }

  logs(): { title: string; path: string }[] {
    return [
      ...this.agents.map((a) => ({ title: `agent ${a.label}`, path: a.logPath })),
      ...this.screens.map((x) => ({ title: `Xvnc ${x.label}`, path: x.logPath })),
      { title: 'QEMU', path: this.guest.logPath },
      { title: 'QEMU serial', path: this.guest.serialPath },
    ];
  }

  async close(): Promise<void> {
    await Promise.all(this.agents.map((a) => a.stop()));
    await Promise.all([this.guest.stop(), ...this.screens.map((s) => s.kill())]);
  }
}

export interface LocoPage {
  page: Page;
  consoleLines: string[];
  pageErrors: string[];
  /** goto index.html (+ `query`, e.g. `?config=/cfg/x.json`); returns when the document loaded */
  open(query?: string): Promise<void>;
  snap(): Promise<LocoSnap | null>;
}

type WorkerFixtures = { workdir: string; server: StaticServer; rig: Rig };
type TestFixtures = {
  /** Opt-in: the device-like XR layer (lib/devicelayer.ts) instead of IWER's canvas layer. */
  xrLayer: XrLayerOptions | null;
  loco: LocoPage; logsOnFailure: void; extraAgents: (vncPort: number, label: string) => Promise<Agent> };

/** The rig of this worker, once started (for the log attachments of failed tests). */
let currentRig: Rig | null = null;
/** Logs of agents started by single tests. */
const extraLogs: { title: string; path: string }[] = [];

const IWER_JS = require.resolve('iwer/build/iwer.min.js');

function attachText(testInfo: TestInfo, name: string, text: string): Promise<void> {
  return testInfo.attach(name, { body: text, contentType: 'text/plain' });
}

/** Opens the page with `query` and waits until all n panels are live (60 s); the snapshot then. */
export async function openLive(loco: LocoPage, query: string, n: number): Promise<LocoSnap> {
  await loco.open(query);
  return (await waitLoco(loco.page, allLive(n), `all ${n} panels 'live'`, 60000, loco.pageErrors)).snap;
}

/** Clicks "Enter VR" and waits until the XR session draws all n panels with stable corners. */
export async function enterVr(loco: LocoPage, n: number): Promise<LocoSnap> {
  const btn = loco.page.getByRole('button', { name: 'Enter VR' });
  await expect(btn).toBeEnabled({ timeout: 15000 });
  await btn.click();
  return waitXrAndStableCorners(loco.page, n, loco.pageErrors);
}

/**
 * Makes `page` a LocoPage: console lines and uncaught page errors collected, IWER's Quest 3
 * runtime injected before the page's own scripts. The `loco` fixture uses it; a test that
 * launches its own browser (other flags) can too, then calls `finishPage` at its end. With `xrLayer`
 * the device-like layer (lib/devicelayer.ts: an opaque framebuffer, stereo, a compositor) is
 * injected after IWER (with `mediaLayers`, IWER's WebXR Layers polyfill as well).
 */
export async function instrumentPage(page: Page, server: StaticServer, xrLayer: XrLayerOptions | null = null): Promise<LocoPage> {
  const consoleLines: string[] = [];
  const pageErrors: string[] = [];
  page.on('console', (m) => consoleLines.push(`${new Date().toISOString().slice(11, 23)} [${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => {
    pageErrors.push(String(e?.stack ?? e));
    consoleLines.push(`[pageerror] ${String(e)}`);
  });
  await page.addInitScript({ path: IWER_JS });
  await page.addInitScript({ content: iwerInit({ layers: !!xrLayer?.mediaLayers }) });
  if (xrLayer) await page.addInitScript({ content: deviceLayerInit(xrLayer) });
  return {
    page,
    consoleLines,
    pageErrors,
    async open(query = '') {
      requireDist();
      await page.goto(`${server.url}/${query}`, { waitUntil: 'load' });
    },
    snap: () => readLoco(page),
  };
}

/**
 * Attaches the console (and, when `failed`, the last `__loco`); uncaught page errors fail the
 * test. `failed` defaults to the test's status (known in a fixture's teardown, not in its body).
 */
export async function finishPage(lp: LocoPage, testInfo: TestInfo, failed = testInfo.status !== testInfo.expectedStatus): Promise<void> {
  await attachText(testInfo, 'browser console', lp.consoleLines.join('\n'));
  if (failed) {
    const s = await readLoco(lp.page).catch((e) => `<${String(e)}>`);
    await attachText(testInfo, 'last __loco', JSON.stringify(s, null, 1));
  }
  // An uncaught exception on the page is a bug whatever the test checked.
  expect(lp.pageErrors, 'uncaught errors on the page').toEqual([]);
}

export const test = base.extend<TestFixtures, WorkerFixtures>({
  workdir: [async ({}, use) => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'loco-pw-w-'));
    await use(d);
    if (!process.env.LOCO_PW_KEEP) fs.rmSync(d, { recursive: true, force: true });
  }, { scope: 'worker' }],

  server: [async ({}, use) => {
    const s = await new StaticServer().start();
    await use(s);
    await s.close();
  }, { scope: 'worker' }],

  rig: [async ({ workdir }, use) => {
    requireAgentBinary();
    const t0 = Date.now();
    // Start everything at once; if one part fails, stop the parts that did start.
    const settled = await Promise.allSettled([
      QemuGuest.start(workdir, { audio: true, tone: RIG_TONE_HZ }),
      Xvnc.create(workdir, 'x1'),
      Xvnc.create(workdir, 'x2'),
      Xvnc.create(workdir, 'x3'),
    ]);
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await Promise.all(settled.map((r) => r.status === 'fulfilled' &&
        ('kill' in r.value ? r.value.kill() : r.value.stop())));
      throw failed.reason;
    }
    const guest = (settled[0] as PromiseFulfilledResult<QemuGuest>).value;
    const screens = settled.slice(1).map((r) => (r as PromiseFulfilledResult<Xvnc>).value);
    const started = await Promise.allSettled([
      Agent.start(workdir, 'guest', guest.port),
      ...screens.map((x) => Agent.start(workdir, x.label, x.port)),
    ]);
    const agents = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const bad = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    try {
      if (bad) throw bad.reason;
      await Promise.all(agents.map((a) => a.waitVnc()));
    } catch (e) {
      await Promise.all(agents.map((a) => a.stop()));
      await Promise.all([guest.stop(), ...screens.map((x) => x.kill())]);
      throw e;
    }
    const rig = new Rig(workdir, guest, screens, agents, (Date.now() - t0) / 1000);
    console.log(`[rig] QEMU guest + 3 Xvnc + 4 agents up in ${rig.bootSeconds.toFixed(1)} s (guest boot ${guest.bootSeconds.toFixed(1)} s)`);
    currentRig = rig;
    await use(rig);
    currentRig = null;
    await rig.close();
  }, { scope: 'worker', timeout: 240_000 }],

  extraAgents: async ({ workdir }, use) => {
    const made: Agent[] = [];
    await use(async (vncPort, label) => {
      const a = await Agent.start(workdir, label, vncPort);
      made.push(a);
      extraLogs.push({ title: `agent ${label}`, path: a.logPath });
      return a;
    });
    await Promise.all(made.map((a) => a.stop()));
  },

  xrLayer: [null, { option: true }],

  loco: async ({ page, server, xrLayer }, use, testInfo) => {
    const lp = await instrumentPage(page, server, xrLayer);
    await use(lp);
    await finishPage(lp, testInfo);
  },

  logsOnFailure: [async ({}, use, testInfo) => {
    const extraBefore = extraLogs.length;
    await use();
    if (testInfo.status !== testInfo.expectedStatus && currentRig) {
      for (const l of [...currentRig.logs(), ...extraLogs.slice(extraBefore)]) {
        await attachText(testInfo, l.title, tail(l.path, 12000));
      }
    }
  }, { auto: true }],
});

