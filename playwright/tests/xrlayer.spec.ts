/**
 * The headset's own path: the page drawing into an XRWebGLLayer's opaque framebuffer, as on a
 * Quest, rather than into the canvas (IWER's layer has no framebuffer). lib/devicelayer.ts is
 * the test double of the headset's compositor: an opaque framebuffer of its own size (1600x900
 * at scale 1; the canvas is 1280x720), two eyes side by side, attachment changes refused,
 * cleared before and blitted to the canvas after each frame; optionally multisampled.
 *
 * The desktops are real (the rig's Xvnc screens through loco-agents, H.264, the browser's
 * decoder); the expected picture is the one we paint on them (a root colour of its own per
 * screen, a white window over the top-left quadrant). What the page drew is read back from the
 * framebuffer with readPixels at the end of a frame, together with that frame's views, and
 * every checked pixel is predicted by casting that pixel's ray through the view's own
 * projection onto the panels' corners from `__loco` (the oracle below).
 */
import { test, expect, openLive, enterVr, type Desktop, type LocoPage, type Rig } from '../lib/fixtures';
import type { Page } from '@playwright/test';
import * as fs from 'node:fs';
import { EYE_HEIGHT } from '../lib/devicelayer';
import { setButton, setController, waitLoco } from '../lib/loco';
import { waitUntil } from '../lib/procs';
import type { StaticServer } from '../lib/server';
import { add, aimAt, cross, dist, dot, pointOnPanel, POINT_DOWN, rotate, scale, sub, v3, type V3 } from '../lib/xr';
import { HEIGHT, WIDTH } from '../lib/xvnc';

type RGB = [number, number, number];
const TOL = 24; // per channel: H.264 4:2:0 + YUV->RGB
const WHITE: RGB = [255, 255, 255];
const COLOURS: { hex: string; rgb: RGB }[] = [
  { hex: '#c83c28', rgb: [200, 60, 40] },
  { hex: '#28a03c', rgb: [40, 160, 60] },
  { hex: '#3250c8', rgb: [50, 80, 200] },
];
const HAND = v3(0.12, 1.3, -0.15);

let cfgSeq = 0;
function configQuery(server: StaticServer, desktops: Desktop[], extra = ''): string {
  const url = server.putJson(`/cfg/xrlayer-${++cfgSeq}.json`, { desktops });
  return `?config=${encodeURIComponent(url)}${extra}`;
}

/** Root = COLOURS[k], a white window over the top-left quadrant, the X pointer parked bottom-right. */
async function paintScreens(rig: Rig): Promise<RGB[]> {
  return Promise.all(rig.screens.map(async (s, k) => {
    await s.closeClients();
    await s.solid(COLOURS[k].hex);
    await s.plainWindow(`${WIDTH / 2}x${HEIGHT / 2}+0+0`);
    await s.movePointer(WIDTH - 3, HEIGHT - 3);
    return COLOURS[k].rgb;
  }));
}

// ------------------------------------------------------------------ matrices (column-major, GL)

type M4 = number[];
function mul(a: M4, b: M4): M4 {
  const o = new Array(16).fill(0);
  for (let c = 0; c < 4; c++) for (let r = 0; r < 4; r++) for (let k = 0; k < 4; k++) o[c * 4 + r] += a[k * 4 + r] * b[c * 4 + k];
  return o;
}
function xform(m: M4, p: [number, number, number, number]): [number, number, number, number] {
  const o: [number, number, number, number] = [0, 0, 0, 0];
  for (let r = 0; r < 4; r++) o[r] = m[r] * p[0] + m[4 + r] * p[1] + m[8 + r] * p[2] + m[12 + r] * p[3];
  return o;
}
function invert(m: M4): M4 {
  // Gauss-Jordan on a 4x8 row-major augmented matrix.
  const a = [0, 1, 2, 3].map((r) => [0, 1, 2, 3].map((c) => m[c * 4 + r]).concat([0, 1, 2, 3].map((c) => (c === r ? 1 : 0))));
  for (let c = 0; c < 4; c++) {
    let p = c;
    for (let r = c + 1; r < 4; r++) if (Math.abs(a[r][c]) > Math.abs(a[p][c])) p = r;
    [a[c], a[p]] = [a[p], a[c]];
    const d = a[c][c];
    for (let k = 0; k < 8; k++) a[c][k] /= d;
    for (let r = 0; r < 4; r++) if (r !== c) { const f = a[r][c]; for (let k = 0; k < 8; k++) a[r][k] -= f * a[c][k]; }
  }
  const o = new Array(16);
  for (let r = 0; r < 4; r++) for (let c = 0; c < 4; c++) o[c * 4 + r] = a[r][4 + c];
  return o;
}

// ------------------------------------------------------------------ captures

interface ViewInfo { eye: string; viewport: { x: number; y: number; width: number; height: number }; projection: M4; view: M4 }
interface Capture { mode: string; width: number; height: number; samples: number; views: ViewInfo[]; frame: number }
interface Geometry { corners: V3[][]; captions: V3[][] }

/** Asks the device layer for the next frame's pixels (kept in the page) and its views. */
async function capture(page: Page): Promise<Capture> {
  return page.evaluate(async () => {
    const st = (window as any).__xrLayer;
    await Promise.race([st.capture(), new Promise((_, rej) => setTimeout(() => rej(new Error('no XR frame ended within 5 s')), 5000))]);
    const { mode, width, height, samples, views, frame } = st.last;
    if (!views) throw new Error('the capture has no views (no reference space yet?)');
    return { mode, width, height, samples, views, frame };
  });
}

/** Attaches the last capture as a PNG (alpha dropped), top row first. */
async function attachCapture(page: Page, name: string): Promise<void> {
  const url: string = await page.evaluate(() => {
    const { data, width, height } = (window as any).__xrLayer.last;
    const c = document.createElement('canvas');
    c.width = width; c.height = height;
    const img = new ImageData(width, height);
    for (let y = 0; y < height; y++) {
      const src = (height - 1 - y) * width * 4;
      for (let k = 0; k < width * 4; k += 4) {
        img.data.set([data[src + k], data[src + k + 1], data[src + k + 2], 255], y * width * 4 + k);
      }
    }
    c.getContext('2d')!.putImageData(img, 0, 0);
    return c.toDataURL('image/png');
  });
  const file = test.info().outputPath(`${name.replace(/[^a-z0-9]+/gi, '-')}.png`);
  fs.writeFileSync(file, Buffer.from(url.split(',')[1], 'base64'));
  await test.info().attach(name, { path: file, contentType: 'image/png' });
}

/** RGBA of pixels (x, y from the bottom, GL's rows) of the last capture. */
async function pixels(page: Page, at: [number, number][]): Promise<number[][]> {
  return page.evaluate((at) => {
    const { data, width } = (window as any).__xrLayer.last;
    return at.map(([x, y]) => Array.from(data.subarray((y * width + x) * 4, (y * width + x) * 4 + 4)) as number[]);
  }, at);
}

async function geometry(page: Page): Promise<Geometry> {
  return page.evaluate(() => {
    const l = (window as any).__loco;
    const c = (a: any[]) => a.map((p) => ({ x: p.x, y: p.y, z: p.z }));
    return { corners: l.panels.map((p: any) => c(p.corners)), captions: l.panels.map((p: any) => c(p.captionCorners)) };
  });
}

/** The device layer's record: GL errors, refused attachment changes, layers made. */
async function layerLog(page: Page): Promise<{ attempts: unknown[]; glErrors: { phase: string; code: number }[]; layers: any[]; frames: number; blits: number }> {
  return page.evaluate(() => {
    const st = (window as any).__xrLayer;
    return { attempts: st.attempts, glErrors: st.glErrors, layers: st.layers, frames: st.frames, blits: st.blits };
  });
}

async function xrHook(page: Page): Promise<any> {
  return page.evaluate(() => JSON.parse(JSON.stringify((window as any).__loco.xr)));
}

// ------------------------------------------------------------------ the oracle

/** Where the ray of pixel (x, y) of view v meets the scene: a panel's (u, v), a caption, or nothing. */
type Hit = { kind: 'panel'; panel: number; u: number; v: number } | { kind: 'caption' } | { kind: 'none' } | { kind: 'edge' };

function rayOf(v: ViewInfo, x: number, y: number): { o: V3; d: V3 } {
  const vp = v.viewport;
  const nx = ((x + 0.5 - vp.x) / vp.width) * 2 - 1, ny = ((y + 0.5 - vp.y) / vp.height) * 2 - 1;
  const inv = invert(mul(v.projection, v.view));
  const a = xform(inv, [nx, ny, -1, 1]), b = xform(inv, [nx, ny, 1, 1]);
  const o = v3(a[0] / a[3], a[1] / a[3], a[2] / a[3]);
  return { o, d: sub(v3(b[0] / b[3], b[1] / b[3], b[2] / b[3]), o) };
}

function onQuad(c: V3[], o: V3, d: V3): { t: number; u: number; v: number } | null {
  const [tl, tr, , bl] = c;
  const r = sub(tr, tl), dn = sub(bl, tl), n = cross(r, dn);
  const den = dot(d, n);
  if (Math.abs(den) < 1e-12) return null;
  const t = dot(sub(tl, o), n) / den;
  if (t <= 0) return null;
  const p = add(o, scale(d, t)), q = sub(p, tl);
  return { t, u: dot(q, r) / dot(r, r), v: dot(q, dn) / dot(dn, dn) };
}

function hitOf(g: Geometry, v: ViewInfo, x: number, y: number): Hit {
  const { o, d } = rayOf(v, x, y);
  let best: { t: number; hit: Hit } | null = null;
  const consider = (t: number, hit: Hit) => { if (!best || t < best.t) best = { t, hit }; };
  const M = 0.04; // around each panel: its frame, focus outline, filtering
  g.corners.forEach((c, i) => {
    const h = onQuad(c, o, d);
    if (!h) return;
    if (h.u >= 0 && h.u <= 1 && h.v >= 0 && h.v <= 1) consider(h.t, { kind: 'panel', panel: i, u: h.u, v: h.v });
    else if (h.u > -M && h.u < 1 + M && h.v > -M && h.v < 1 + M) consider(h.t, { kind: 'edge' });
  });
  g.captions.forEach((c) => {
    const h = onQuad(c, o, d);
    if (h && h.u > -M && h.u < 1 + M && h.v > -0.2 && h.v < 1.2) consider(h.t, { kind: 'caption' });
  });
  return best ? (best as { hit: Hit }).hit : { kind: 'none' };
}

/** What panel i (an Xvnc screen) shows at (u, v): white or its root colour; null near an edge of
 *  the picture (the white window's border, xev's inner square, the parked pointer, the panel's edge). */
function pictureAt(roots: RGB[], i: number, u: number, v: number): RGB | null {
  if (i === 0) return null; // the guest's test pattern moves
  const E = 0.05;
  if (u < E || v < E || u > 1 - E || v > 1 - E) return null;
  if (Math.abs(u - 0.5) < E || Math.abs(v - 0.5) < E) return null;
  if (u < 0.1 && v < 0.12) return null;
  return u < 0.5 && v < 0.5 ? WHITE : roots[i - 1];
}

const near = (got: number[], want: RGB, tol: number) => want.every((c, k) => Math.abs(got[k] - c) <= tol);
const hex = (c: number[]) => `(${c.slice(0, 3).join(',')})`;

interface Check { x: number; y: number; eye: string; want: RGB | null; not: RGB[]; what: string }

/** Pixels to check and what each must (or must not) be, from the oracle. */
function checksFor(cap: Capture, g: Geometry, roots: RGB[], at: { x: number; y: number }[]): Check[] {
  const checks: Check[] = [];
  const panelColours = [...roots, WHITE];
  for (const { x, y } of at) {
    const v = cap.views.find((w) => x >= w.viewport.x && x < w.viewport.x + w.viewport.width && y >= w.viewport.y && y < w.viewport.y + w.viewport.height);
    if (!v) continue;
    const h = hitOf(g, v, x, y);
    if (h.kind === 'panel') {
      const want = pictureAt(roots, h.panel, h.u, h.v);
      if (want) checks.push({ x, y, eye: v.eye, want, not: [], what: `panel #${h.panel} (u=${h.u.toFixed(3)}, v=${h.v.toFixed(3)})` });
    } else if (h.kind === 'none') {
      checks.push({ x, y, eye: v.eye, want: null, not: panelColours, what: 'no panel' });
    }
  }
  return checks;
}

function verdicts(checks: Check[], got: number[][]): string[] {
  const bad: string[] = [];
  checks.forEach((c, k) => {
    const px = got[k];
    const where = `${c.eye} eye pixel (${c.x}, ${c.y}) = ${hex(px)}, ${c.what}`;
    if (c.want && !near(px, c.want, TOL)) bad.push(`${where}: want ${hex(c.want)} ±${TOL}`);
    const like = c.not.find((n) => near(px, n, TOL));
    if (like) bad.push(`${where}: looks like panel colour ${hex(like)}`);
  });
  return bad;
}

/** A grid over the whole framebuffer plus the two columns either side of the seam between the eyes. */
function gridAndSeam(cap: Capture): { x: number; y: number }[] {
  const at: { x: number; y: number }[] = [];
  const nx = 64, ny = 36;
  for (let j = 0; j < ny; j++) for (let i = 0; i < nx; i++) {
    at.push({ x: Math.floor(((i + 0.5) * cap.width) / nx), y: Math.floor(((j + 0.5) * cap.height) / ny) });
  }
  const seam = cap.views.find((v) => v.eye === 'right')!.viewport.x;
  for (let y = 2; y < cap.height; y += 6) for (const x of [seam - 2, seam - 1, seam, seam + 1]) at.push({ x, y });
  return at;
}

/**
 * Captures frames until the oracle's checks all pass (video takes a moment after painting);
 * returns the capture, the checks and a per-eye count. Fails with the mismatches after 20 s.
 */
async function waitOracle(page: Page, roots: RGB[], pick: (c: Capture) => { x: number; y: number }[] = gridAndSeam) {
  const t0 = Date.now();
  for (;;) {
    const cap = await capture(page);
    const g = await geometry(page);
    const checks = checksFor(cap, g, roots, pick(cap));
    const got = await pixels(page, checks.map((c) => [c.x, c.y]));
    const bad = verdicts(checks, got);
    if (bad.length === 0) return { cap, g, checks, ms: Date.now() - t0 };
    if (Date.now() - t0 > 20000) {
      await attachCapture(page, 'the last capture (rows top-down)');
      throw new Error(`${bad.length} of ${checks.length} checked pixels are wrong (${cap.mode} ${cap.width}x${cap.height}, ` +
        `samples ${cap.samples}, views ${JSON.stringify(cap.views.map((v) => [v.eye, v.viewport]))}):\n  ${bad.slice(0, 25).join('\n  ')}`);
    }
    await page.waitForTimeout(300);
  }
}

/** Asserts the per-eye picture: each Xvnc panel the eye sees is white at (0.25, 0.25) and its root
 *  colour at (0.25, 0.75) and (0.75, 0.25): the right way up, not mirrored, in its own half. */
async function checkUpright(page: Page, cap: Capture, g: Geometry, roots: RGB[]): Promise<string[]> {
  const lines: string[] = [];
  const at: [number, number][] = [];
  const want: { what: string; rgb: RGB }[] = [];
  for (const v of cap.views) {
    const pv = mul(v.projection, v.view);
    for (let i = 1; i < g.corners.length; i++) {
      for (const [u, w] of [[0.25, 0.25], [0.25, 0.75], [0.75, 0.25]]) {
        const p = pointOnPanel(g.corners[i], u, w);
        const c = xform(pv, [p.x, p.y, p.z, 1]);
        const nx = c[0] / c[3], ny = c[1] / c[3];
        if (c[3] <= 0 || Math.abs(nx) > 0.95 || Math.abs(ny) > 0.95) continue;
        const x = Math.floor(v.viewport.x + ((nx + 1) / 2) * v.viewport.width);
        const y = Math.floor(v.viewport.y + ((ny + 1) / 2) * v.viewport.height);
        at.push([x, y]);
        want.push({ what: `${v.eye} eye, panel #${i} (u=${u}, v=${w}) at (${x}, ${y})`, rgb: u < 0.5 && w < 0.5 ? WHITE : roots[i - 1] });
      }
    }
  }
  const got = await pixels(page, at);
  const bad = want.flatMap((w, k) => (near(got[k], w.rgb, TOL) ? [] : [`${w.what} = ${hex(got[k])}, want ${hex(w.rgb)}`]));
  expect(bad, 'the asymmetric picture, per eye').toEqual([]);
  for (const eye of ['left', 'right']) lines.push(`${eye}: ${want.filter((w) => w.what.startsWith(eye)).length} points`);
  expect(want.length, 'points of Xvnc panels inside the eyes\' views').toBeGreaterThanOrEqual(6);
  return lines;
}

/** No GL error in the page's frames or the compositor's work, and no attachment change tried. */
async function expectCleanGl(page: Page): Promise<void> {
  const log = await layerLog(page);
  expect(log.attempts, 'attachment changes tried on the opaque framebuffer').toEqual([]);
  const errs = log.glErrors.filter((e) => e.phase !== 'runtime');
  expect(errs, 'GL errors after the page\'s frames / in the compositor').toEqual([]);
  const runtime = log.glErrors.filter((e) => e.phase === 'runtime');
  console.log(`[xrlayer] ${log.frames} frames composited, ${log.blits} blits; GL errors before the page's frame (IWER's own clear): ${runtime.length}`);
}

async function livePainted(rig: Rig, server: StaticServer, loco: LocoPage, extra = ''): Promise<RGB[]> {
  const roots = await paintScreens(rig);
  const desktops = rig.desktops();
  await openLive(loco, configQuery(server, desktops, extra), desktops.length);
  return roots;
}


/** Colours at fixed points of the Xvnc panels in each eye, by projecting the points with the
 *  capture's own views (one row per point; null where the point is outside that eye's view). */
const SAMPLE_UV: [number, number][] = [];
for (const u of [0.15, 0.3, 0.42, 0.6, 0.75, 0.9]) for (const v of [0.15, 0.3, 0.42, 0.6, 0.75, 0.88]) SAMPLE_UV.push([u, v]);

async function eyeSamples(page: Page, cap: Capture, g: Geometry): Promise<Map<string, { rgb: number[]; want: RGB | null }>> {
  const keys: string[] = [];
  const at: [number, number][] = [];
  for (const v of cap.views) {
    const pv = mul(v.projection, v.view);
    for (let i = 1; i < g.corners.length; i++) for (const [u, w] of SAMPLE_UV) {
      const p = pointOnPanel(g.corners[i], u, w);
      const c = xform(pv, [p.x, p.y, p.z, 1]);
      const nx = c[0] / c[3], ny = c[1] / c[3];
      if (c[3] <= 0 || Math.abs(nx) > 0.97 || Math.abs(ny) > 0.97) continue;
      keys.push(`${v.eye} #${i} (${u}, ${w})`);
      at.push([Math.floor(v.viewport.x + ((nx + 1) / 2) * v.viewport.width), Math.floor(v.viewport.y + ((ny + 1) / 2) * v.viewport.height)]);
    }
  }
  const got = await pixels(page, at);
  return new Map(keys.map((k, n) => [k, { rgb: got[n], want: null }]));
}

async function endSession(loco: LocoPage): Promise<void> {
  await loco.page.evaluate(() => (window as any).__xrLayer.session?.end());
  await waitLoco(loco.page, (s) => (s.xr as { active?: unknown })?.active === false, 'xr.active false after session.end()', 10000, loco.pageErrors);
}

/** The page's XR frame callbacks' main-thread time (ms) over `ms`: p50, p95, mean, frames. */
async function pageTiming(page: Page, ms: number): Promise<{ p50: number; p95: number; mean: number; n: number }> {
  await page.evaluate(() => { (window as any).__xrLayer.pageMs.length = 0; });
  await page.waitForTimeout(ms);
  const v: number[] = await page.evaluate(() => (window as any).__xrLayer.pageMs.slice());
  v.sort((a, b) => a - b);
  const q = (f: number) => v[Math.min(v.length - 1, Math.round((v.length - 1) * f))];
  return { p50: q(0.5), p95: q(0.95), mean: v.reduce((a, b) => a + b, 0) / v.length, n: v.length };
}

/** Aims the right controller at (u, v) of panel i from a hand below the eye. */
async function aim(page: Page, g: Geometry, i: number, u: number, v: number): Promise<void> {
  const pose = aimAt(HAND, pointOnPanel(g.corners[i], u, v));
  await setController(page, 'right', pose.position, pose.quaternion);
}

test.afterEach(async ({ rig }) => {
  await Promise.all(rig.screens.map((s) => s.closeClients()));
});

// ------------------------------------------------------------------ single-sampled layer

test.describe('device layer', () => {
  test.use({ xrLayer: { samples: 0 } });

  test('framebuffer path: both eyes drawn, right way up, at their viewports, nothing across the seam; clean GL', async ({ rig, server, loco }) => {
    const roots = await livePainted(rig, server, loco);
    await enterVr(loco, rig.agents.length);
    const hook = await waitUntil(async () => { const h = await xrHook(loco.page); return h.path ? h : null; }, 10000, '__loco.xr.path', 100);
    expect(hook.path, '__loco.xr.path with a layer that has a framebuffer').toBe('framebuffer');
    const eyeW = Math.round(EYE_HEIGHT * (1280 / 2 / 720));
    expect([hook.framebufferWidth, hook.framebufferHeight], 'the layer\'s size (not the canvas\'s 1280x720)').toEqual([eyeW * 2, EYE_HEIGHT]);
    expect(hook.viewports, 'the eyes\' viewports the page drew with').toEqual([[0, 0, eyeW, EYE_HEIGHT], [eyeW, 0, eyeW, EYE_HEIGHT]]);

    const { cap, g, checks, ms } = await waitOracle(loco.page, roots);
    expect(cap.mode).toBe('framebuffer');
    expect([cap.width, cap.height]).toEqual([eyeW * 2, EYE_HEIGHT]);
    const seam = eyeW;
    const count = (f: (c: Check) => boolean) => checks.filter(f).length;
    const summary = {
      left: count((c) => c.eye === 'left' && c.want !== null), right: count((c) => c.eye === 'right' && c.want !== null),
      leftOfSeamPanel: count((c) => c.x >= seam - 2 && c.x < seam && c.want !== null),
      rightOfSeamPanel: count((c) => c.x >= seam && c.x < seam + 2 && c.want !== null),
      seamNoPanel: count((c) => Math.abs(c.x - seam + 0.5) < 2 && c.want === null),
    };
    console.log(`[xrlayer] oracle: ${checks.length} pixels checked after ${ms} ms: ${JSON.stringify(summary)}`);
    expect(summary.left, 'panel pixels checked in the left eye').toBeGreaterThan(100);
    expect(summary.right, 'panel pixels checked in the right eye').toBeGreaterThan(100);
    expect(summary.leftOfSeamPanel + summary.rightOfSeamPanel, 'panel pixels checked beside the seam').toBeGreaterThan(10);
    await checkUpright(loco.page, cap, g, roots);
    await expectCleanGl(loco.page);
  });
  test('the same pose through the canvas path and the framebuffer path: matching pixels per eye; frame time of each', async ({ rig, server, loco }) => {
    // Scale 0.8: the layer is 1280x720 like the canvas, so the two paths draw as many pixels.
    const roots = await livePainted(rig, server, loco, '&scale=0.8');
    const n = rig.agents.length;
    await enterVr(loco, n);
    const fb = await waitOracle(loco.page, roots);
    expect(fb.cap.mode).toBe('framebuffer');
    expect([fb.cap.width, fb.cap.height]).toEqual([1280, 720]);
    expect((await xrHook(loco.page)).path).toBe('framebuffer');
    const fbSamples = await eyeSamples(loco.page, fb.cap, fb.g);
    const fbTime = await pageTiming(loco.page, 4000);
    await expectCleanGl(loco.page);
    await endSession(loco);

    await loco.page.evaluate(() => { (window as any).__xrLayer.mode = 'canvas'; });
    await enterVr(loco, n);
    const hook = await waitUntil(async () => { const h = await xrHook(loco.page); return h.path ? h : null; }, 10000, '__loco.xr.path', 100);
    expect(hook.path, 'IWER\'s own layer (no framebuffer): the canvas path').toBe('canvas');
    expect(hook.foveation, 'a layer without fixedFoveation').toBeNull();
    const cv = await waitOracle(loco.page, roots);
    expect(cv.cap.mode).toBe('canvas');
    expect(cv.g.corners, 'the same wall (same head pose)').toEqual(fb.g.corners);
    const cvSamples = await eyeSamples(loco.page, cv.cap, cv.g);
    const cvTime = await pageTiming(loco.page, 4000);

    const bad: string[] = [];
    let compared = 0;
    for (const [k, a] of fbSamples) {
      const b = cvSamples.get(k);
      if (!b) continue;
      compared++;
      if (!a.rgb.every((c, j) => j === 3 || Math.abs(c - b.rgb[j]) <= TOL)) bad.push(`${k}: framebuffer ${hex(a.rgb)} vs canvas ${hex(b.rgb)}`);
    }
    console.log(`[xrlayer] ${compared} panel points compared per eye pair; page frame callback ms: framebuffer ` +
      `p50 ${fbTime.p50.toFixed(2)} p95 ${fbTime.p95.toFixed(2)} mean ${fbTime.mean.toFixed(2)} (${fbTime.n} frames), canvas ` +
      `p50 ${cvTime.p50.toFixed(2)} p95 ${cvTime.p95.toFixed(2)} mean ${cvTime.mean.toFixed(2)} (${cvTime.n} frames)`);
    expect(bad, 'per-eye pixels of the two paths').toEqual([]);
    expect(compared, 'points seen by both paths').toBeGreaterThan(40);
    for (const eye of ['left', 'right']) expect([...fbSamples.keys()].filter((k) => k.startsWith(eye)).length, `${eye} eye points`).toBeGreaterThan(20);
  });

  test('a new layer of another size mid-session: the page draws into it, right way up; foveation off on it too', async ({ rig, server, loco }) => {
    const roots = await livePainted(rig, server, loco);
    await enterVr(loco, rig.agents.length);
    const first = await waitOracle(loco.page, roots);
    expect([first.cap.width, first.cap.height]).toEqual([1600, 900]);
    await loco.page.evaluate(() => {
      const s = (window as any).__xrLayer.session;
      const old = s.renderState.baseLayer;
      const layer = new (window as any).XRWebGLLayer(s, old.context, { framebufferScaleFactor: 0.5 });
      s.updateRenderState({ baseLayer: layer });
    });
    const hook = await waitUntil(async () => { const h = await xrHook(loco.page); return h.framebufferWidth === 800 ? h : null; }, 10000, '__loco.xr.framebufferWidth = 800 after the new layer', 100);
    expect([hook.framebufferWidth, hook.framebufferHeight]).toEqual([800, 450]);
    expect(hook.viewports).toEqual([[0, 0, 400, 450], [400, 0, 400, 450]]);
    expect(hook.foveation, 'fixedFoveation of the new layer, set by the page').toBe(0);
    const second = await waitOracle(loco.page, roots);
    expect([second.cap.width, second.cap.height]).toEqual([800, 450]);
    await checkUpright(loco.page, second.cap, second.g, roots);
    const log = await layerLog(loco.page);
    expect(log.layers.map((l) => [l.width, l.height]), 'layers made').toEqual([[1600, 900], [800, 450]]);
    await expectCleanGl(loco.page);
  });

  test('a controller click through the framebuffer path lands on the VM pixel aimed at', async ({ rig, server, loco }) => {
    const TARGET = 2, U = 0.3, V = 0.65;
    const screen = rig.screenOf(TARGET)!;
    const desktops = rig.desktops();
    await openLive(loco, configQuery(server, desktops), desktops.length);
    await Promise.all(rig.screens.map((s, k) => s.movePointer(3 + k, 5 + k)));
    const xev = await screen.xevButtons();
    await enterVr(loco, desktops.length);
    expect((await waitUntil(async () => { const h = await xrHook(loco.page); return h.path ? h : null; }, 10000, 'xr.path', 100)).path).toBe('framebuffer');
    const g = await geometry(loco.page);
    const px = { x: Math.floor(U * WIDTH), y: Math.floor(V * HEIGHT) };
    await aim(loco.page, g, TARGET, U, V);
    const at = await screen.waitPointerNear(px.x, px.y, 4);
    console.log(`[xrlayer] aimed at panel #${TARGET} (u=${U}, v=${V}) -> want (${px.x},${px.y}); X pointer at (${at.x},${at.y})`);
    const n0 = xev.events().length;
    await setButton(loco.page, 'right', 'trigger', 1);
    await waitUntil(() => xev.events().length - n0 >= 1, 10000, 'X button press', 50);
    await setButton(loco.page, 'right', 'trigger', 0);
    await waitUntil(() => xev.events().length - n0 >= 2, 10000, 'X button release', 50);
    const got = xev.events().slice(n0, n0 + 2);
    expect(got.map((e) => [e.kind, e.button])).toEqual([['ButtonPress', 1], ['ButtonRelease', 1]]);
    for (const e of got) expect(Math.abs(e.x - px.x) <= 4 && Math.abs(e.y - px.y) <= 4, `${JSON.stringify(e)} near (${px.x},${px.y})`).toBe(true);
    await setController(loco.page, 'right', HAND, POINT_DOWN);
    for (const [k, s] of rig.screens.entries()) if (s !== screen) expect(await s.pointer(), `X pointer of ${s.label}`).toEqual({ x: 3 + k, y: 5 + k });
    await expectCleanGl(loco.page);
  });

  test('Quest settings: no fixed foveation, 72 Hz chosen from the offered rates, scale 1, no media layers without XRMediaBinding; ?fps= ?scale= ?foveation= ?layers=on change them', async ({ rig, server, loco }) => {
    const desktops = rig.desktops();
    await openLive(loco, configQuery(server, desktops), desktops.length);
    await enterVr(loco, desktops.length);
    let hook = await waitUntil(async () => { const h = await xrHook(loco.page); return h.path && h.frameRate === 72 ? h : null; }, 10000, '__loco.xr.frameRate = 72', 100)
      .catch(async (e) => { throw new Error(`${(e as Error).message}: ${JSON.stringify(await xrHook(loco.page))}`); });
    console.log(`[xrlayer] default: ${JSON.stringify({ ...hook, viewports: undefined })}`);
    expect(hook.supportedFrameRates, 'IWER\'s Quest 3 rates').toEqual([72, 80, 90, 120]);
    expect(hook.targetFrameRate).toBe(72);
    expect(hook.foveation, 'fixedFoveation (the device layer starts at 1)').toBe(0);
    expect(hook.scale).toBe(1);
    expect([hook.layersMode, hook.layersAvailable, hook.layersActive, hook.layersError], 'no XRMediaBinding here: textures').toEqual(['auto', false, false, null]);
    let log = await layerLog(loco.page);
    expect(log.layers.at(-1).init.framebufferScaleFactor, 'framebufferScaleFactor in the layer init').toBe(1);
    expect(await loco.page.evaluate(() => typeof (window as any).__xrLayer.session.updateTargetFrameRate)).toBe('function');

    await endSession(loco);
    await openLive(loco, configQuery(server, desktops, '&fps=85&scale=0.5&foveation=0.25&layers=on'), desktops.length);
    await enterVr(loco, desktops.length);
    hook = await waitUntil(async () => { const h = await xrHook(loco.page); return h.path && h.frameRate === 80 ? h : null; }, 10000, '__loco.xr.frameRate = 80 (nearest offered to 85)', 100)
      .catch(async (e) => { throw new Error(`${(e as Error).message}: ${JSON.stringify(await xrHook(loco.page))}`); });
    expect(hook.targetFrameRate).toBe(80);
    expect(hook.foveation).toBe(0.25);
    expect(hook.scale).toBe(0.5);
    expect([hook.framebufferWidth, hook.framebufferHeight]).toEqual([800, 450]);
    // ?layers=on where the browser has no media layers: said, and the textures still shown.
    expect([hook.path, hook.layersMode, hook.layersActive]).toEqual(['framebuffer', 'on', false]);
    expect(hook.layersError).toContain('no WebXR media layers');
    log = await layerLog(loco.page);
    expect(log.layers.at(-1).init.framebufferScaleFactor).toBe(0.5);
    await expectCleanGl(loco.page);
  });
});

// ------------------------------------------------------------------ multisampled layer

test.describe('multisampled device layer', () => {
  test.use({ xrLayer: { samples: 4 } });

  test('4x MSAA framebuffer, resolved by the compositor: both eyes right way up, nothing across the seam; clean GL', async ({ rig, server, loco }) => {
    const roots = await livePainted(rig, server, loco);
    await enterVr(loco, rig.agents.length);
    const { cap, g, checks } = await waitOracle(loco.page, roots);
    expect(cap.samples, 'the layer is multisampled').toBe(4);
    expect((await xrHook(loco.page)).path).toBe('framebuffer');
    console.log(`[xrlayer] MSAA: ${checks.length} pixels checked`);
    await checkUpright(loco.page, cap, g, roots);
    const log = await layerLog(loco.page);
    expect(log.layers.map((l) => l.samples)).toEqual([4]);
    await expectCleanGl(loco.page);
  });
});

// ------------------------------------------------------------------ media layers (IWER's Layers polyfill)

interface SessionLayer { kind: 'media-quad' | 'projection'; video?: boolean; live?: boolean; width?: number; height?: number; position?: V3; orientation?: [number, number, number, number]; textureWidth?: number }

/** The session's `layers` as the compositor has them (the polyfill's render state). */
async function sessionLayers(page: Page): Promise<SessionLayer[]> {
  return page.evaluate(() => {
    const s = (window as any).__xrLayer.session;
    return (s.renderState.layers || []).map((l: any) => {
      if (!l.__page) return { kind: 'projection', textureWidth: l.textureWidth };
      const p = l.transform.position, o = l.transform.orientation;
      return {
        kind: 'media-quad', video: l.media instanceof HTMLVideoElement, live: !!(l.media.srcObject && l.media.readyState >= 2),
        width: l.__page.width, height: l.__page.height, position: { x: p.x, y: p.y, z: p.z }, orientation: [o.x, o.y, o.z, o.w],
      };
    });
  });
}

/** A quad layer's corners TL, TR, BR, BL (the Layers spec: centred on its transform, facing +Z, width x height). */
function quadCorners(l: { position: V3; orientation: [number, number, number, number]; width: number; height: number }): V3[] {
  const r = rotate(l.orientation, v3(l.width / 2, 0, 0)), u = rotate(l.orientation, v3(0, l.height / 2, 0));
  const c = l.position;
  return [add(sub(c, r), u), add(add(c, r), u), sub(add(c, r), u), sub(sub(c, r), u)];
}

async function panelFrames(page: Page): Promise<{ presented: number; uploaded: number }[]> {
  return page.evaluate(() => (window as any).__loco.panels.map((p: any) => ({ presented: p.framesPresented, uploaded: p.framesUploaded })));
}

/** Waits until every one of n panels is shown through its media layer; the hook then. */
async function waitMediaLayers(page: Page, n: number): Promise<any> {
  return waitUntil(async () => { const h = await xrHook(page); return h.path === 'media-layers' && h.throughLayer.length === n ? h : null; }, 20000, `all ${n} panels through media layers`, 100)
    .catch(async (e) => { throw new Error(`${(e as Error).message}: ${JSON.stringify(await xrHook(page))}`); });
}

/** The page's quad layers and the compositor's agree, and each covers its panel exactly. */
async function checkPlacement(page: Page, hook: any, n: number): Promise<Geometry> {
  const g = await geometry(page);
  const layers = await sessionLayers(page);
  expect(layers.length, 'n quad layers and the projection layer').toBe(n + 1);
  expect(layers.at(-1)!.kind, 'the projection layer on top (rays, captions, cursor over the videos)').toBe('projection');
  expect(hook.mediaLayers.map((m: any) => m.panel).sort(), 'one quad layer per panel').toEqual([...Array(n).keys()]);
  const bad: string[] = [];
  hook.mediaLayers.forEach((m: any, k: number) => {
    const l = layers[k];
    expect(l.kind).toBe('media-quad');
    expect(l.video && l.live, `layer ${k} shows a live <video>`).toBe(true);
    quadCorners(l as any).forEach((c, j) => {
      const d = dist(c, g.corners[m.panel][j]);
      if (d > 1e-4) bad.push(`panel ${m.panel} corner ${j}: layer ${JSON.stringify(c)} vs panel ${JSON.stringify(g.corners[m.panel][j])} (${d.toFixed(5)} m)`);
    });
  });
  expect(bad, 'quad layers placed exactly on their panels').toEqual([]);
  // Farthest first (later layers are drawn over earlier ones).
  const head = await page.evaluate(() => { const p = (window as any).__iwer.position; return { x: p.x, y: p.y, z: p.z }; });
  const far = hook.mediaLayers.map((m: any) => dist(head, v3(m.position[0], m.position[1], m.position[2])));
  for (let k = 1; k < far.length; k++) expect(far[k], 'layers ordered farthest first').toBeLessThanOrEqual(far[k - 1] + 0.05);
  return g;
}

/** The cursor (the projection layer's) at the point a controller aims at, in each eye that sees it. */
async function cursorSeen(page: Page, cap: Capture, point: V3): Promise<string[]> {
  const seen: string[] = [];
  for (const v of cap.views) {
    const c = xform(mul(v.projection, v.view), [point.x, point.y, point.z, 1]);
    const nx = c[0] / c[3], ny = c[1] / c[3];
    if (c[3] <= 0 || Math.abs(nx) > 0.95 || Math.abs(ny) > 0.95) continue;
    const x = Math.floor(v.viewport.x + ((nx + 1) / 2) * v.viewport.width), y = Math.floor(v.viewport.y + ((ny + 1) / 2) * v.viewport.height);
    const at: [number, number][] = [];
    for (let dy = -2; dy <= 2; dy++) for (let dx = -2; dx <= 2; dx++) at.push([x + dx, y + dy]);
    const got = await pixels(page, at);
    // CURSOR (client/src/scene.rs): (0.35, 0.85, 1.0) = (89, 217, 255)
    if (got.some((p) => near(p, [89, 217, 255], 40))) seen.push(v.eye);
  }
  return seen;
}

test.describe('media layers', () => {
  test.use({ xrLayer: { samples: 0, mediaLayers: true } });

  test('each live panel is a media quad layer exactly on its panel, under the projection layer: right pixels per eye, the cursor over a video, no texture uploads; the layers follow a recentred wall', async ({ rig, server, loco }) => {
    test.setTimeout(120_000);
    const roots = await livePainted(rig, server, loco);
    const n = rig.agents.length;
    await enterVr(loco, n);
    const hook = await waitMediaLayers(loco.page, n);
    expect([hook.layersMode, hook.layersAvailable, hook.layersActive, hook.layersError]).toEqual(['auto', true, true, null]);
    expect(hook.mediaLayersMade, 'one quad layer made per panel').toBe(n);
    const g = await checkPlacement(loco.page, hook, n);

    // What the compositor shows: the videos from the quad layers, everything else from the page.
    const { cap, checks } = await waitOracle(loco.page, roots);
    console.log(`[medialayers] oracle: ${checks.length} pixels checked (${cap.width}x${cap.height}); projection sub-images ${JSON.stringify(hook.viewports)} of ${hook.framebufferWidth}x${hook.framebufferHeight}`);
    await checkUpright(loco.page, cap, g, roots);
    const t = await pageTiming(loco.page, 3000);
    console.log(`[medialayers] page frame callback ms (media layers, ${n} panels): p50 ${t.p50.toFixed(2)} p95 ${t.p95.toFixed(2)} mean ${t.mean.toFixed(2)} (${t.n} frames)`);

    // The page copies no frame of a panel its layer shows (the guest's picture changes every 0.5 s).
    const f0 = await panelFrames(loco.page);
    await loco.page.waitForTimeout(2500);
    const f1 = await panelFrames(loco.page);
    expect(f1[0].presented - f0[0].presented, 'the guest\'s video plays').toBeGreaterThan(2);
    expect(f1.map((f, i) => f.uploaded - f0[i].uploaded), 'frames copied into textures').toEqual(f1.map(() => 0));

    // A controller aimed at panel 1 (in front): its cursor is drawn over the video.
    const point = pointOnPanel(g.corners[1], 0.7, 0.7);
    await aim(loco.page, g, 1, 0.7, 0.7);
    const seen = await waitUntil(async () => { const c = await capture(loco.page); const s = await cursorSeen(loco.page, c, point); return s.length ? s : null; }, 10000, 'the cursor over panel 1\'s media layer', 100)
      .catch(async (e) => { await attachCapture(loco.page, 'no cursor'); throw new Error(`${(e as Error).message}: ${JSON.stringify(await loco.page.evaluate(() => (window as any).__loco.panels.map((p: any) => p.corners)))}`); });
    console.log(`[medialayers] cursor over panel 1's video seen by the ${seen.join(' and ')} eye(s)`);
    await setController(loco.page, 'right', HAND, POINT_DOWN);

    // Turn the head 25 degrees and recentre (B): every panel moves, and so does every layer.
    await loco.page.evaluate(() => { const d = (window as any).__iwer; const a = 25 * Math.PI / 180; d.quaternion.set(0, Math.sin(a / 2), 0, Math.cos(a / 2)); });
    await setButton(loco.page, 'right', 'b-button', 1);
    await waitUntil(async () => { const h = await geometry(loco.page); return dist(h.corners[0][0], g.corners[0][0]) > 0.3 ? h : null; }, 10000, 'the wall recentred', 100);
    await setButton(loco.page, 'right', 'b-button', 0);
    const moved = await waitUntil(async () => {
      const h = await xrHook(loco.page);
      const gg = await geometry(loco.page);
      return h.mediaLayers.every((m: any) => dist(quadCorners({ ...m, position: v3(m.position[0], m.position[1], m.position[2]) })[0], gg.corners[m.panel][0]) < 1e-4) ? h : null;
    }, 10000, 'the quad layers on the recentred panels', 100).catch(async (e) => { throw new Error(`${(e as Error).message}: ${JSON.stringify(await xrHook(loco.page))}`); });
    expect(moved.mediaLayersMade, 'moved, not made again').toBe(n);
    await checkPlacement(loco.page, moved, n);
    await waitOracle(loco.page, roots);
    await expectCleanGl(loco.page);
  });

  test('?layers=off keeps the videos as textures in the XRWebGLLayer even where media layers exist', async ({ rig, server, loco }) => {
    const roots = await livePainted(rig, server, loco, '&layers=off');
    await enterVr(loco, rig.agents.length);
    const hook = await waitUntil(async () => { const h = await xrHook(loco.page); return h.path ? h : null; }, 10000, '__loco.xr.path', 100);
    expect([hook.path, hook.layersMode, hook.layersAvailable, hook.layersActive, hook.throughLayer]).toEqual(['framebuffer', 'off', true, false, []]);
    expect(await sessionLayers(loco.page), 'no layers in the render state').toEqual([]);
    await waitOracle(loco.page, roots);
    await expectCleanGl(loco.page);
  });
});
