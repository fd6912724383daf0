/**
 * What the page draws in the flat (non-XR) view matches the real desktops: every Xvnc screen is
 * painted with a picture we control (its root a solid colour of its own, a white window over the
 * top-left quadrant), and the pixels that `__loco.capture()` reads back from the renderer at
 * `__loco.screenPoint(i, u, v)` must show that picture, through H.264, WebRTC, the browser's
 * decoder and the page's texture upload and drawing; points between panels show the background.
 * Once with WebGL2, once with `?backend=webgpu` in a Chromium with SwiftShader's WebGPU adapter
 * (the page may lose that device and carry on with WebGL2 by itself: either way the colours count).
 */
import { test, expect, finishPage, instrumentPage, type Desktop, type LocoPage, type Rig } from '../lib/fixtures';
import { chromium, type Page, type TestInfo } from '@playwright/test';
import { CHROMIUM, CHROMIUM_ARGS } from '../lib/chromium';
import { allLive, panelsOf, waitLoco } from '../lib/loco';
import { sleep } from '../lib/procs';
import type { StaticServer } from '../lib/server';
import { HEIGHT, WIDTH } from '../lib/xvnc';

type RGB = [number, number, number];

/** Per channel, for video pixels: H.264 (4:2:0, limited range) + YUV->RGB in the browser. */
const TOL = 24;
/** The clear colour, `CLEAR` = (0.07, 0.08, 0.11) in client/src/scene.rs, written to a non-sRGB
 *  target (client/src/web/gfx.rs picks Rgba8Unorm/Bgra8Unorm): no video involved, so tight. */
const BACKGROUND: RGB = [18, 20, 28];
const BG_TOL = 6;
const WHITE: RGB = [255, 255, 255];
/** Root colours of the three Xvnc screens (panels 1-3); far apart from each other, white and the background. */
const COLOURS: { hex: string; rgb: RGB }[] = [
  { hex: '#c83c28', rgb: [200, 60, 40] },
  { hex: '#28a03c', rgb: [40, 160, 60] },
  { hex: '#3250c8', rgb: [50, 80, 200] },
];
/** Points of each panel (u right, v down) and whether the white window covers them. Kept
 *  >= 0.1 away from the quadrant's edges, clear of xev's inner square (10..68 px), the HUD
 *  (top-left strip) and the parked X pointer (bottom-right corner). */
const POINTS: { u: number; v: number; white: boolean }[] = [
  { u: 0.25, v: 0.25, white: true },
  { u: 0.4, v: 0.15, white: true },
  { u: 0.15, v: 0.4, white: true },
  { u: 0.75, v: 0.25, white: false },
  { u: 0.25, v: 0.75, white: false },
  { u: 0.7, v: 0.7, white: false },
  { u: 0.9, v: 0.5, white: false },
];
/** Panels backed by Xvnc screens (panel i shows rig.screens[i - 1]). */
const PANELS = [1, 2, 3];
const WEBGPU_ARGS = ['--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader'];

let cfgSeq = 0;
function configQuery(server: StaticServer, desktops: Desktop[], extra = ''): string {
  const url = server.putJson(`/cfg/render-${++cfgSeq}.json`, { desktops });
  return `?config=${encodeURIComponent(url)}${extra}`;
}

/**
 * Paints every screen: root = COLOURS[(k + shift) % 3], a white window over the top-left
 * quadrant, the X pointer parked in the bottom-right corner. Returns the root colour per screen.
 */
async function paintScreens(rig: Rig, shift: number): Promise<RGB[]> {
  return Promise.all(rig.screens.map(async (s, k) => {
    const c = COLOURS[(k + shift) % COLOURS.length];
    await s.closeClients();
    await s.solid(c.hex);
    await s.plainWindow(`${WIDTH / 2}x${HEIGHT / 2}+0+0`);
    await s.movePointer(WIDTH - 3, HEIGHT - 3);
    return c.rgb;
  }));
}

/** A place to look: the CSS point screenPoint(i, u, v), or the midpoint of two such points. */
interface Probe {
  what: string;
  at: [number, number, number][];
  want: RGB;
  tol: number;
  /** Colours this probe must not be within `tol` of (background probes: the panel colours). */
  not?: RGB[];
}

interface Sample {
  css: { x: number; y: number } | null;
  px: { x: number; y: number } | null;
  rgba: number[] | null;
}

interface Captured {
  error?: string;
  backend?: unknown;
  width?: number;
  height?: number;
  dataLength?: number;
  isUint8Array?: boolean;
  canvas?: { width: number; height: number; rect: { left: number; top: number; width: number; height: number } };
  dpr?: number;
  /** how many elements have id loco-canvas (the WebGL2 fallback replaces the canvas) */
  canvases?: number;
  ms?: number;
  samples?: Sample[];
}

/**
 * In the page: each probe's CSS point from screenPoint, then one capture(), then the pixel of
 * that capture under each point (CSS -> drawing-buffer pixels through the canvas's client rect
 * and capture's width/height). Only the sampled pixels come back, not the whole image.
 */
async function captureAt(page: Page, probes: Probe[]): Promise<Captured> {
  return page.evaluate(async (ats) => {
    const l = (window as any).__loco;
    const canvas = document.getElementById('loco-canvas') as HTMLCanvasElement | null;
    if (!l) return { error: 'window.__loco is not defined' };
    if (!canvas) return { error: 'no #loco-canvas' };
    if (typeof l.capture !== 'function') return { error: `__loco.capture is ${typeof l.capture}` };
    const css = ats.map((pts) => {
      const sp = pts.map(([i, u, v]) => l.screenPoint(i, u, v));
      if (sp.some((p) => !p || typeof p.x !== 'number' || typeof p.y !== 'number')) return null;
      return { x: sp.reduce((a, p) => a + p.x, 0) / sp.length, y: sp.reduce((a, p) => a + p.y, 0) / sp.length };
    });
    const r = canvas.getBoundingClientRect();
    const t0 = performance.now();
    let cap: any;
    try {
      cap = await l.capture();
    } catch (e) {
      return { error: `capture() rejected: ${String((e as Error)?.message ?? e)}`, backend: l.backend };
    }
    const ms = performance.now() - t0;
    const w = cap?.width, h = cap?.height, data = cap?.data;
    const base = {
      backend: (window as any).__loco.backend, width: w, height: h, dataLength: data?.length,
      isUint8Array: data instanceof Uint8Array,
      canvas: { width: canvas.width, height: canvas.height, rect: { left: r.left, top: r.top, width: r.width, height: r.height } },
      dpr: window.devicePixelRatio, canvases: document.querySelectorAll('#loco-canvas').length, ms,
    };
    if (!(data instanceof Uint8Array) || !(w > 0) || !(h > 0) || data.length < w * h * 4) {
      return { ...base, error: 'capture() did not give {width, height, data: Uint8Array of width*height*4}' };
    }
    const samples = css.map((p) => {
      if (!p) return { css: null, px: null, rgba: null };
      const x = Math.floor(((p.x - r.left) * w) / r.width), y = Math.floor(((p.y - r.top) * h) / r.height);
      if (x < 0 || y < 0 || x >= w || y >= h) return { css: p, px: { x, y }, rgba: null };
      const k = (y * w + x) * 4;
      return { css: p, px: { x, y }, rgba: Array.from(data.subarray(k, k + 4)) as number[] };
    });
    return { ...base, samples };
  }, probes.map((p) => p.at));
}

const near = (got: number[], want: RGB, tol: number) => want.every((c, k) => Math.abs(got[k] - c) <= tol);
const hex = (c: number[]) => `(${c.slice(0, 3).join(',')})`;

function verdict(p: Probe, s: Sample | undefined): string | null {
  if (!s?.css) return `${p.what}: screenPoint gave no point in the viewport`;
  if (!s.rgba) return `${p.what}: CSS (${s.css.x.toFixed(1)}, ${s.css.y.toFixed(1)}) -> pixel ${JSON.stringify(s.px)} outside the capture`;
  const where = `${p.what}: CSS (${s.css.x.toFixed(1)}, ${s.css.y.toFixed(1)}) -> pixel (${s.px!.x}, ${s.px!.y}) = ${hex(s.rgba)}`;
  if (!near(s.rgba, p.want, p.tol)) return `${where}, want ${hex(p.want)} ±${p.tol}`;
  const like = (p.not ?? []).find((c) => near(s.rgba!, c, TOL));
  if (like) return `${where}: looks like panel colour ${hex(like)}`;
  return null;
}

/** The probes: POINTS on each panel, the gap between panels 1 and 2, the sky above panel 2. */
function probesFor(roots: RGB[]): Probe[] {
  const probes: Probe[] = [];
  for (const i of PANELS) {
    const root = roots[i - 1];
    for (const pt of POINTS) {
      probes.push({ what: `panel #${i} (u=${pt.u}, v=${pt.v})`, at: [[i, pt.u, pt.v]], want: pt.white ? WHITE : root, tol: TOL });
    }
  }
  const panelColours = [...roots, WHITE];
  probes.push({ what: 'gap between panels #1 and #2 (v=0.5)', at: [[1, 1, 0.5], [2, 0, 0.5]], want: BACKGROUND, tol: BG_TOL, not: panelColours });
  probes.push({ what: 'above panel #2 (u=0.5, v=-0.1)', at: [[2, 0.5, -0.1]], want: BACKGROUND, tol: BG_TOL, not: panelColours });
  return probes;
}

/**
 * Polls capture() until every probe shows its colour (the screens were just repainted: frames
 * take a moment to arrive); returns the last capture. A rejected capture() is retried (a device
 * may be lost and replaced meanwhile) and reported if it never succeeds.
 */
async function waitPicture(lp: LocoPage, probes: Probe[], timeoutMs: number): Promise<{ cap: Captured; ms: number; tries: number; errors: string[] }> {
  const t0 = Date.now();
  const errors: string[] = [];
  let last: Captured | null = null;
  let bad: string[] = [];
  for (let tries = 1; ; tries++) {
    const cap = await captureAt(lp.page, probes);
    if (cap.error) {
      errors.push(cap.error);
      bad = [cap.error];
    } else {
      last = cap;
      bad = probes.map((p, k) => verdict(p, cap.samples?.[k])).filter((v): v is string => v !== null);
      if (bad.length === 0) return { cap, ms: Date.now() - t0, tries, errors };
    }
    if (Date.now() - t0 > timeoutMs) {
      throw new Error(
        `the captured flat view did not show the desktops within ${timeoutMs / 1000} s (${tries} captures; ` +
          `backend ${String(last?.backend ?? cap.backend)}; capture ${last?.width}x${last?.height}, canvas ${JSON.stringify(last?.canvas)})\n  ` +
          bad.join('\n  ') +
          (errors.length ? `\n  capture errors (${errors.length}): ${[...new Set(errors)].join(' | ')}` : '') +
          (lp.pageErrors.length ? `\n  page errors: ${lp.pageErrors.join(' | ')}` : ''),
      );
    }
    await sleep(200); // poll interval
  }
}

/** The capture's shape: the canvas's drawing buffer (CSS size x devicePixelRatio), RGBA8 rows. */
function checkShape(cap: Captured): void {
  const c = cap.canvas!;
  expect(cap.canvases, 'elements with id loco-canvas').toBe(1);
  expect(cap.isUint8Array, 'capture().data is a Uint8Array').toBe(true);
  expect([cap.width, cap.height], `capture size = the canvas's drawing buffer ${c.width}x${c.height}`).toEqual([c.width, c.height]);
  expect(cap.dataLength, 'capture().data length = width * height * 4').toBe(cap.width! * cap.height! * 4);
  expect(Math.abs(cap.width! - c.rect.width * cap.dpr!), `capture width vs CSS width ${c.rect.width} x dpr ${cap.dpr}`).toBeLessThanOrEqual(1);
  expect(Math.abs(cap.height! - c.rect.height * cap.dpr!), `capture height vs CSS height ${c.rect.height} x dpr ${cap.dpr}`).toBeLessThanOrEqual(1);
}

function logPicture(tag: string, probes: Probe[], cap: Captured, ms: number, tries: number, errors: string[]): void {
  console.log(`[render] ${tag}: backend ${String(cap.backend)}, capture ${cap.width}x${cap.height} (dpr ${cap.dpr}, one capture ${cap.ms?.toFixed(0)} ms); ` +
    `desktops' colours seen after ${ms} ms, ${tries} capture(s)${errors.length ? `, ${errors.length} rejected: ${[...new Set(errors)].join(' | ')}` : ''}`);
  const rows = probes.map((p, k) => {
    const s = cap.samples![k];
    return `${p.what} -> px (${s.px!.x},${s.px!.y}) ${hex(s.rgba!)} want ${hex(p.want)}`;
  });
  // One line per panel keeps the output short.
  for (const i of PANELS) console.log(`[render]   ${rows.filter((r) => r.startsWith(`panel #${i} `)).map((r) => r.replace(`panel #${i} `, '')).join('; ')}`);
  console.log(`[render]   ${rows.filter((r) => !r.startsWith('panel #')).join('; ')}`);
}

/** The whole capture as a PNG attachment (encoded in the page through a 2D canvas). */
async function attachCapture(page: Page, testInfo: TestInfo, name: string): Promise<void> {
  const url = await page.evaluate(async () => {
    const cap = await (window as any).__loco.capture();
    const c = document.createElement('canvas');
    c.width = cap.width;
    c.height = cap.height;
    c.getContext('2d')!.putImageData(new ImageData(new Uint8ClampedArray(cap.data.buffer, cap.data.byteOffset, cap.width * cap.height * 4), cap.width, cap.height), 0, 0);
    return c.toDataURL('image/png');
  }).catch((e) => `error: ${String(e)}`);
  if (url.startsWith('data:image/png;base64,')) {
    await testInfo.attach(name, { body: Buffer.from(url.slice('data:image/png;base64,'.length), 'base64'), contentType: 'image/png' });
  } else {
    await testInfo.attach(`${name} (failed)`, { body: url, contentType: 'text/plain' });
  }
}

async function openLive(lp: LocoPage, query: string, n: number, timeoutMs: number): Promise<number> {
  const t0 = Date.now();
  await lp.open(query);
  await waitLoco(lp.page, allLive(n), `all ${n} panels 'live'`, timeoutMs, lp.pageErrors);
  await waitLoco(lp.page, (s) => panelsOf(s).every((p) => p.videoWidth === 1024 && p.videoHeight === 768),
    'every panel 1024x768', 15000, lp.pageErrors);
  return Date.now() - t0;
}

// ---------------------------------------------------------------------------------------------

test.afterEach(async ({ rig }) => {
  await Promise.all(rig.screens.map((s) => s.closeClients()));
});

test('flat view (WebGL2): capture() at screenPoint shows each desktop\'s colours; between panels is the background', async ({ rig, server, loco }, testInfo) => {
  const roots = await paintScreens(rig, 0);
  const desktops = rig.desktops();
  const ms = await openLive(loco, configQuery(server, desktops, '&backend=webgl2'), desktops.length, 60000);
  const backend = await loco.page.evaluate(() => (window as any).__loco.backend);
  expect(backend, '__loco.backend with ?backend=webgl2').toBe('webgl2');
  const probes = probesFor(roots);
  try {
    const r = await waitPicture(loco, probes, 20000);
    logPicture(`?backend=webgl2 (live after ${ms} ms)`, probes, r.cap, r.ms, r.tries, r.errors);
    checkShape(r.cap);
  } finally {
    await attachCapture(loco.page, testInfo, 'capture (webgl2)');
  }
});

// Forced WebGPU on SwiftShader: Chromium loses that device within a second ("A valid external
// Instance reference no longer exists") and the page must fall back to WebGL2. Known flaky
// (the fallback sometimes never completes, or the capture hits the lost device), so it runs only
// with LOCO_TEST_WEBGPU=1 until that is fixed; the page itself picks WebGL2 over a software
// WebGPU adapter.
test('?backend=webgpu with SwiftShader WebGPU: panels go live and capture() shows the desktops\' colours on whatever backend it ends on', async ({ rig, server }, testInfo) => {
  test.skip(!process.env.LOCO_TEST_WEBGPU, 'forced software WebGPU is known flaky; LOCO_TEST_WEBGPU=1 runs it');
  // Other colours than the test before: what is seen now was painted now.
  const roots = await paintScreens(rig, 1);
  const desktops = rig.desktops();
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS, ...WEBGPU_ARGS], headless: true });
  let lp: LocoPage | null = null;
  let failed = true;
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
    lp = await instrumentPage(await context.newPage(), server);
    // Which backend the page reports, from the start (it may change when a device is lost).
    await lp.page.addInitScript(() => {
      const log: { t: number; backend: unknown }[] = ((window as any).__backendLog = []);
      let last: unknown = '<unset>';
      const timer = setInterval(() => {
        const b = (window as any).__loco?.backend ?? null;
        if (b !== last) log.push({ t: Math.round(performance.now()), backend: (last = b) });
        if (log.length > 20 || performance.now() > 60000) clearInterval(timer);
      }, 50);
    });
    const page = lp.page;
    const ms = await openLive(lp, configQuery(server, desktops, '&backend=webgpu'), desktops.length, 60000);
    const probes = probesFor(roots);
    const r = await waitPicture(lp, probes, 25000);
    const timeline = await page.evaluate(() => (window as any).__backendLog);
    // What WebGPU adapter this browser offers (asked only now, after the checks above).
    const gpu = await page.evaluate(async () => {
      const g = (navigator as any).gpu;
      if (!g) return 'navigator.gpu absent';
      const a = await g.requestAdapter().catch((e: unknown) => `requestAdapter threw ${String(e)}`);
      if (!a || typeof a === 'string') return a ?? 'requestAdapter gave null';
      const info = a.info ?? {};
      return `WebGPU adapter ${info.vendor}/${info.architecture}`;
    });
    const losses = lp.consoleLines.filter((l) => /WebGPU failed|device was lost|using WebGL2/i.test(l));
    console.log(`[render] ?backend=webgpu: ${gpu}; panels live after ${ms} ms; ended on backend '${String(r.cap.backend)}'; ` +
      `__loco.backend over time (ms since navigation): ${(timeline as { t: number; backend: unknown }[]).map((e) => `${e.t}: ${String(e.backend)}`).join(', ')}` +
      (losses.length ? `; page said: ${losses.map((l) => l.replace(/^\S+ /, '')).join(' | ')}` : '; no device loss reported'));
    logPicture('?backend=webgpu', probes, r.cap, r.ms, r.tries, r.errors);
    checkShape(r.cap);
    expect(['webgpu', 'webgl2'], `__loco.backend after ?backend=webgpu (got ${JSON.stringify(r.cap.backend)})`).toContain(r.cap.backend);
    // Still all live on the backend it ended on.
    await waitLoco(page, allLive(desktops.length), `all ${desktops.length} panels still 'live'`, 5000, lp.pageErrors);
    failed = false;
  } finally {
    if (lp) {
      await attachCapture(lp.page, testInfo, 'capture (?backend=webgpu)');
      // On failure the test's own error stands; page errors are in the attached console then.
      await finishPage(lp, testInfo, failed).catch((e) => {
        if (!failed) throw e;
      });
    }
    await browser.close();
  }
});
