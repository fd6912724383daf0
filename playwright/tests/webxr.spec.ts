/**
 * The WebXR page against real peers, with IWER emulating a Meta Quest 3: real loco-agents on a
 * QEMU test-pattern guest (panel 0) and three Xvnc desktops (panels 1-3); pointer and keys are
 * read back from the X servers (xdotool, xev, xterm `cat > FILE`), never from the page.
 */
import { test, expect, type Desktop, type LocoPage, type Rig } from '../lib/fixtures';
import type { Page } from '@playwright/test';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { allLive, frames, panelsOf, readLoco, setButton, setController, setThumbstick, summary, waitLoco, waitXrAndStableCorners, type LocoSnap } from '../lib/loco';
import { waitUntil } from '../lib/procs';
import type { StaticServer } from '../lib/server';
import { aimAt, cross, dist, dot, len, norm, pointOnPanel, POINT_DOWN, sub, v3, type V3 } from '../lib/xr';
import { Animator, type XevEvent, type XevLog, type Xvnc } from '../lib/xvnc';

const HEAD = v3(0, 1.6, 0); // IWER's default headset position (local-floor)
/** Where the right controller's ray starts when a test aims it: a hand's reach below and in front of the eye. */
const HAND = v3(0.12, 1.3, -0.15);
const TOL_PX = 4;

let cfgSeq = 0;
/** Writes the config on the server and returns the page query `?config=<absolute url>`. */
function configQuery(server: StaticServer, desktops: Desktop[]): string {
  const url = server.putJson(`/cfg/test-${++cfgSeq}.json`, { desktops });
  return `?config=${encodeURIComponent(url)}`;
}

/** Opens the page and waits until all n panels are live; returns ms from navigation start. */
async function openLive(loco: LocoPage, query: string, n: number, timeoutMs = 60000): Promise<{ ms: number; snap: LocoSnap }> {
  const t0 = Date.now();
  await loco.open(query);
  const r = await waitLoco(loco.page, allLive(n), `all ${n} panels 'live'`, timeoutMs, loco.pageErrors);
  return { ms: Date.now() - t0, snap: r.snap };
}

async function enterVr(loco: LocoPage, n: number): Promise<LocoSnap> {
  const btn = loco.page.getByRole('button', { name: 'Enter VR' });
  await expect(btn, 'an enabled "Enter VR" button').toBeEnabled({ timeout: 15000 });
  expect(await btn.getAttribute('id')).toBe('enter-vr');
  const t0 = Date.now();
  await btn.click();
  await waitLoco(loco.page, (s) => (s.xr as { active?: unknown })?.active === true, '__loco.xr.active after clicking "Enter VR"', 30000, loco.pageErrors);
  const active = Date.now() - t0;
  const snap = await waitXrAndStableCorners(loco.page, n, loco.pageErrors);
  logLine(`[timing] Enter VR click -> xr.active ${active} ms, corners stable ${Date.now() - t0} ms`);
  return snap;
}

/** Geometry checks of one panel's corners (TL, TR, BR, BL in local-floor metres). */
function checkCorners(i: number, c: V3[], videoW: number, videoH: number): { width: number; height: number; distance: number } {
  const [tl, tr, br, bl] = c;
  const right = sub(tr, tl), down = sub(bl, tl);
  const width = len(right), height = len(down);
  const where = `panel #${i} corners ${JSON.stringify(c)}`;
  expect(width, `${where}: width`).toBeGreaterThan(0.05);
  expect(height, `${where}: height`).toBeGreaterThan(0.05);
  expect(Math.abs(dist(bl, br) - width), `${where}: not a rectangle (bottom edge)`).toBeLessThan(1e-3);
  expect(Math.abs(dist(tr, br) - height), `${where}: not a rectangle (right edge)`).toBeLessThan(1e-3);
  expect(Math.abs(dot(norm(right), norm(down))), `${where}: corners not at right angles`).toBeLessThan(1e-3);
  expect(Math.abs(width / height - videoW / videoH) / (videoW / videoH),
    `${where}: aspect ${(width / height).toFixed(4)} vs desktop ${videoW}x${videoH}`).toBeLessThan(0.02);
  const centre = pointOnPanel(c, 0.5, 0.5);
  // The front (image readable left-to-right) faces the viewer: cross(down, right) points at the eye.
  const front = cross(down, right);
  expect(dot(front, sub(HEAD, centre)), `${where}: the image faces away from the viewer (mirrored or behind)`).toBeGreaterThan(0);
  const distance = dist(HEAD, centre);
  expect(distance, `${where}: distance from the head`).toBeGreaterThan(0.3);
  expect(distance, `${where}: distance from the head`).toBeLessThan(5);
  return { width, height, distance };
}

/** Waits until every panel decoded at least `more` frames more than in `before`, all staying live. */
async function waitFramesGrow(loco: LocoPage, before: number[], more: number, timeoutMs: number): Promise<LocoSnap> {
  return (await waitLoco(loco.page, (s) => {
    const ps = panelsOf(s);
    const bad = ps.findIndex((p) => p.state !== 'live');
    if (bad >= 0) throw new Error(`panel #${bad} is '${String(ps[bad].state)}', not 'live'`);
    const f = frames(s);
    return f.length === before.length && f.every((n, i) => n >= before[i] + more);
  }, `every panel to decode ${more} more frames than ${JSON.stringify(before)}`, timeoutMs, loco.pageErrors)).snap;
}

function expectedPixel(s: LocoSnap, i: number, u: number, v: number): { x: number; y: number; w: number; h: number } {
  const p = panelsOf(s)[i];
  const w = p.videoWidth as number, h = p.videoHeight as number;
  expect([w, h], `panel #${i} video size`).toEqual([1024, 768]);
  return { x: Math.min(w - 1, Math.floor(u * w)), y: Math.min(h - 1, Math.floor(v * h)), w, h };
}

/**
 * Where to put the mouse for the point (u, v) of panel i in the flat view, and which (u, v) that
 * really is. Chromium hands pages MouseEvent.clientX/Y as whole CSS pixels (a fractional CDP
 * position is truncated), and in the flat view one CSS pixel spans ~4-6 desktop pixels, so the
 * mouse goes to the nearest whole CSS pixel and (u, v) is corrected through the local inverse of
 * screenPoint (a projection is linear at this scale).
 */
async function flatAim(page: Page, i: number, u: number, v: number): Promise<{ sp: { x: number; y: number }; mouse: { x: number; y: number }; u: number; v: number }> {
  const sp = (uu: number, vv: number) => page.evaluate(([i, uu, vv]) => (window as any).__loco.screenPoint(i, uu, vv), [i, uu, vv]);
  const p0 = await sp(u, v);
  const vp = page.viewportSize()!;
  expect(p0, `screenPoint(${i}, ${u}, ${v}) in the flat view`).toEqual({ x: expect.any(Number), y: expect.any(Number) });
  expect(p0.x >= 0 && p0.x < vp.width && p0.y >= 0 && p0.y < vp.height, `screenPoint ${JSON.stringify(p0)} inside the ${vp.width}x${vp.height} viewport`).toBe(true);
  const d = 0.01;
  const pu = await sp(u + d, v);
  const pv = await sp(u, v + d);
  const a = (pu.x - p0.x) / d, b = (pv.x - p0.x) / d, c = (pu.y - p0.y) / d, e = (pv.y - p0.y) / d;
  const det = a * e - b * c;
  expect(Math.abs(det), `screenPoint(${i}, ...) changes with u and v (${JSON.stringify([p0, pu, pv])})`).toBeGreaterThan(1e-6);
  const mouse = { x: Math.round(p0.x), y: Math.round(p0.y) };
  const dx = mouse.x - p0.x, dy = mouse.y - p0.y;
  return { sp: p0, mouse, u: u + (e * dx - b * dy) / det, v: v + (-c * dx + a * dy) / det };
}

async function pointers(screens: Xvnc[]): Promise<{ x: number; y: number }[]> {
  return Promise.all(screens.map((s) => s.pointer()));
}

async function accepted(rig: Rig): Promise<number[]> {
  return Promise.all(rig.agents.map((a) => a.inputAccepted()));
}

/** Waits for `want` new xev events after index `from`, each within TOL_PX of its target. */
async function waitButtons(xev: XevLog, from: number, want: XevEvent[], what: string): Promise<XevEvent[]> {
  const match = (got: XevEvent[]) => got.length === want.length && got.every((e, k) =>
    e.kind === want[k].kind && e.button === want[k].button &&
    Math.abs(e.x - want[k].x) <= TOL_PX && Math.abs(e.y - want[k].y) <= TOL_PX);
  try {
    return await waitUntil(() => {
      const got = xev.events().slice(from);
      if (got.length > want.length) throw new Error(`more events than expected: ${JSON.stringify(got)}`);
      return match(got) ? got : null;
    }, 10000, what, 50);
  } catch (e) {
    throw new Error(`${(e as Error).message}\n  X saw: ${JSON.stringify(xev.events().slice(from))}\n  want (±${TOL_PX}px): ${JSON.stringify(want)}`);
  }
}

function logLine(s: string): void {
  console.log(s);
}

// ---------------------------------------------------------------------------------------------

test.afterEach(async ({ rig }) => {
  await Promise.all(rig.screens.map((s) => s.closeClients()));
});

test('enters VR; 4 panels (QEMU guest + 3 Xvnc) go live from desktops.json and keep decoding', async ({ rig, server, loco }) => {
  const desktops = rig.desktops();
  server.putJson('/desktops.json', { desktops }); // the default: desktops.json beside index.html
  const anim = new Animator(rig.screens).start();
  try {
    const { ms, snap } = await openLive(loco, '', desktops.length);
    logLine(`[timing] page load -> all ${desktops.length} panels live: ${ms} ms`);
    expect(server.requests, 'the page fetched desktops.json beside index.html').toContain('/desktops.json');
    expect(snap.error, '__loco.error with a good config').toBeNull();
    expect(typeof snap.hud, `__loco.hud is a boolean (got ${JSON.stringify(snap.hud)})`).toBe('boolean');
    expect(snap.focus, '__loco.focus before any click').toBeNull();
    await expect(loco.page.locator('#loco-error')).toBeHidden();
    expect(panelsOf(snap).map((p) => p.name), 'panel names in config order').toEqual(desktops.map((d) => d.name));
    const sized = await waitLoco(loco.page, (s) => panelsOf(s).every((p) => p.videoWidth === 1024 && p.videoHeight === 768),
      'every panel videoWidth x videoHeight = 1024x768', 15000, loco.pageErrors);
    expect((sized.snap.xr as { active?: unknown })?.active, 'xr.active before entering VR').toBe(false);

    const vr = await enterVr(loco, desktops.length);
    const xrCalls = await loco.page.evaluate(() => ({
      ...(window as any).__xrCalls,
      enabledFeatures: Array.from((window as any).__iwer.activeSession?.enabledFeatures ?? []),
    }));
    expect(xrCalls.sessions.map((c: { mode: string }) => c.mode), 'XR sessions the page requested').toEqual(['immersive-vr']);
    expect(xrCalls.enabledFeatures, `session features (requested: ${JSON.stringify(xrCalls.sessions[0].opts)})`).toContain('local-floor');
    expect(xrCalls.refSpaces, 'reference spaces the page requested').toContain('local-floor');
    const geo = panelsOf(vr).map((p, i) => checkCorners(i, p.corners as V3[], 1024, 768));
    logLine(`[geometry] panels ${geo.map((g, i) => `#${i} ${g.width.toFixed(3)}x${g.height.toFixed(3)} m at ${g.distance.toFixed(2)} m`).join(', ')}`);

    // In VR, every panel keeps decoding (the guest changes every 0.5 s, the Xvnc screens every 0.4 s).
    const f0 = frames(vr);
    const t2 = Date.now();
    const after = await waitFramesGrow(loco, f0, 5, 30000);
    const secs = (Date.now() - t2) / 1000;
    logLine(`[frames] in VR over ${secs.toFixed(1)} s: ${frames(after).map((f, i) => `#${i} +${f - f0[i]}`).join(', ')}`);
    expect((after.xr as { active?: unknown }).active).toBe(true);
  } finally {
    await anim.stop();
    server.remove('/desktops.json');
  }
});

/** Shared set-up of the XR input tests: page live, all X pointers parked, xev on every screen. */
async function xrInputSetup(rig: Rig, server: StaticServer, loco: LocoPage) {
  const desktops = rig.desktops();
  await openLive(loco, configQuery(server, desktops), desktops.length);
  await Promise.all(rig.screens.map((s, k) => s.movePointer(3 + k, 5 + k)));
  const xevs = await Promise.all(rig.screens.map((s) => s.xevButtons()));
  const snap = await enterVr(loco, desktops.length);
  return { desktops, xevs, snap };
}

async function aim(page: Page, side: 'left' | 'right', snap: LocoSnap, panel: number, u: number, v: number): Promise<void> {
  const target = pointOnPanel(panelsOf(snap)[panel].corners as V3[], u, v);
  const hand = side === 'right' ? HAND : v3(-HAND.x, HAND.y, HAND.z);
  const pose = aimAt(hand, target);
  await setController(page, side, pose.position, pose.quaternion);
}

test('XR: right controller aimed at panel 2 (u=0.25, v=0.6) + trigger moves and clicks that VM only', async ({ rig, server, loco }) => {
  const TARGET = 2, U = 0.25, V = 0.6;
  const screen = rig.screenOf(TARGET)!;
  const { xevs, snap } = await xrInputSetup(rig, server, loco);
  const xev = xevs[rig.screens.indexOf(screen)];
  const px = expectedPixel(snap, TARGET, U, V);

  // Entering VR with both rays on the floor must not move anything.
  const p0 = await pointers(rig.screens);
  expect(p0, 'X pointers after entering VR with both controllers pointing at the floor').toEqual(rig.screens.map((_, k) => ({ x: 3 + k, y: 5 + k })));
  const acc0 = await accepted(rig);

  await aim(loco.page, 'right', snap, TARGET, U, V);
  const at = await screen.waitPointerNear(px.x, px.y, TOL_PX);
  logLine(`[xr] aimed at panel #${TARGET} (u=${U}, v=${V}) -> want pixel (${px.x},${px.y}); X pointer at (${at.x},${at.y})`);

  const n0 = xev.events().length;
  await setButton(loco.page, 'right', 'trigger', 1);
  await waitButtons(xev, n0, [{ kind: 'ButtonPress', x: px.x, y: px.y, button: 1 }], 'trigger -> X ButtonPress 1 at the aimed pixel');
  await setButton(loco.page, 'right', 'trigger', 0);
  await waitButtons(xev, n0, [
    { kind: 'ButtonPress', x: px.x, y: px.y, button: 1 },
    { kind: 'ButtonRelease', x: px.x, y: px.y, button: 1 },
  ], 'trigger released -> X ButtonRelease 1');
  const focus = await waitLoco(loco.page, (s) => s.focus === TARGET, `focus = ${TARGET} after the trigger click`, 5000, loco.pageErrors);
  expect(focus.snap.focus).toBe(TARGET);

  // Park the ray on the floor again, then check nobody else saw anything.
  await setController(loco.page, 'right', HAND, POINT_DOWN);
  await loco.page.waitForTimeout(500); // let any stray message arrive before the negative checks
  const acc1 = await accepted(rig);
  for (const [k, s] of rig.screens.entries()) {
    if (s === screen) continue;
    expect(await s.pointer(), `X pointer of ${s.label} (not aimed at)`).toEqual(p0[k]);
    expect(xevs[k].events(), `X button events on ${s.label} (not aimed at)`).toEqual([]);
  }
  rig.agents.forEach((a, i) => {
    if (i === TARGET) expect(acc1[i] - acc0[i], `input accepted by ${a.label}`).toBeGreaterThanOrEqual(3);
    else expect(acc1[i] - acc0[i], `input accepted by ${a.label} (not aimed at)`).toBe(0);
  });
});

test('XR: squeeze = right button, thumbstick y = wheel (right hand); the left controller clicks too', async ({ rig, server, loco }) => {
  const TARGET = 3, U = 0.7, V = 0.3;
  const LEFT_TARGET = 1, LU = 0.4, LV = 0.45;
  const screen = rig.screenOf(TARGET)!;
  const { xevs, snap } = await xrInputSetup(rig, server, loco);
  const xev = xevs[rig.screens.indexOf(screen)];
  const px = expectedPixel(snap, TARGET, U, V);
  const acc0 = await accepted(rig);

  await aim(loco.page, 'right', snap, TARGET, U, V);
  await screen.waitPointerNear(px.x, px.y, TOL_PX);

  let n0 = xev.events().length;
  await setButton(loco.page, 'right', 'squeeze', 1);
  await waitButtons(xev, n0, [{ kind: 'ButtonPress', x: px.x, y: px.y, button: 3 }], 'squeeze -> X ButtonPress 3');
  await setButton(loco.page, 'right', 'squeeze', 0);
  await waitButtons(xev, n0, [
    { kind: 'ButtonPress', x: px.x, y: px.y, button: 3 },
    { kind: 'ButtonRelease', x: px.x, y: px.y, button: 3 },
  ], 'squeeze released -> X ButtonRelease 3');

  // Thumbstick pushed forward (y = -1) scrolls up (X button 4), pulled back down (button 5).
  for (const [y, button] of [[-1, 4], [1, 5]] as const) {
    n0 = xev.events().length;
    await setThumbstick(loco.page, 'right', 0, y);
    await waitUntil(() => xev.events().length - n0 >= 2, 10000, `thumbstick y=${y} -> X button ${button} events`, 50)
      .catch((e) => { throw new Error(`${e.message}; X saw ${JSON.stringify(xev.events().slice(n0))}`); });
    await setThumbstick(loco.page, 'right', 0, 0);
    await loco.page.waitForTimeout(400); // let the last repeat's release arrive
    const got = xev.events().slice(n0);
    expect(got.length % 2, `thumbstick y=${y}: whole press/release pairs: ${JSON.stringify(got)}`).toBe(0);
    got.forEach((e, k) => {
      expect(e.button, `thumbstick y=${y} event ${k}: ${JSON.stringify(e)}`).toBe(button);
      expect(e.kind).toBe(k % 2 === 0 ? 'ButtonPress' : 'ButtonRelease');
      expect(Math.abs(e.x - px.x) <= TOL_PX && Math.abs(e.y - px.y) <= TOL_PX, `wheel at the aimed pixel: ${JSON.stringify(e)}`).toBe(true);
    });
    logLine(`[xr] thumbstick y=${y}: ${got.length / 2} wheel step(s) as X button ${button}`);
  }
  await setController(loco.page, 'right', HAND, POINT_DOWN);
  await loco.page.waitForTimeout(300);
  const acc1 = await accepted(rig);
  rig.agents.forEach((a, i) => {
    if (i !== TARGET) expect(acc1[i] - acc0[i], `input accepted by ${a.label} (right hand aimed at #${TARGET})`).toBe(0);
  });

  // The left controller: trigger on panel 1 clicks there and focuses it.
  const lscreen = rig.screenOf(LEFT_TARGET)!;
  const lxev = xevs[rig.screens.indexOf(lscreen)];
  const lpx = expectedPixel(snap, LEFT_TARGET, LU, LV);
  await aim(loco.page, 'left', snap, LEFT_TARGET, LU, LV);
  await lscreen.waitPointerNear(lpx.x, lpx.y, TOL_PX);
  await setButton(loco.page, 'left', 'trigger', 1);
  await waitButtons(lxev, 0, [{ kind: 'ButtonPress', x: lpx.x, y: lpx.y, button: 1 }], 'left trigger -> X ButtonPress 1');
  await setButton(loco.page, 'left', 'trigger', 0);
  await waitButtons(lxev, 0, [
    { kind: 'ButtonPress', x: lpx.x, y: lpx.y, button: 1 },
    { kind: 'ButtonRelease', x: lpx.x, y: lpx.y, button: 1 },
  ], 'left trigger released -> X ButtonRelease 1');
  await waitLoco(loco.page, (s) => s.focus === LEFT_TARGET, `focus = ${LEFT_TARGET} after the left trigger`, 5000, loco.pageErrors);
  await setController(loco.page, 'left', v3(-HAND.x, HAND.y, HAND.z), POINT_DOWN);
  await loco.page.waitForTimeout(300);

  const acc2 = await accepted(rig);
  rig.agents.forEach((a, i) => {
    if (i !== TARGET && i !== LEFT_TARGET) expect(acc2[i] - acc0[i], `input accepted by ${a.label} (never aimed at)`).toBe(0);
  });
  for (const [k, s] of rig.screens.entries()) {
    if (s !== screen && s !== lscreen) expect(xevs[k].events(), `X button events on ${s.label}`).toEqual([]);
  }
});

test('flat view: click at screenPoint focuses panel 3; typed keys reach only that VM', async ({ rig, server, loco }) => {
  const TARGET = 3, U = 0.75, V = 0.75;
  const screen = rig.screenOf(TARGET)!;
  const files = rig.screens.map((s) => path.join(rig.workdir, `typed-${s.label}-${Date.now()}.txt`));
  // An xterm running `cat > FILE` holds the X focus on every screen: keys to the wrong VM show up.
  await Promise.all(rig.screens.map((s, k) => s.xtermCat(files[k])));
  await Promise.all(rig.screens.map((s, k) => s.movePointer(3 + k, 5 + k)));
  const xev = await screen.xevButtons(); // on top, full screen; the xterm keeps the keyboard focus
  const desktops = rig.desktops();
  const { snap } = await openLive(loco, configQuery(server, desktops), desktops.length);
  expect(snap.focus, 'focus before any click').toBeNull();
  const p0 = await pointers(rig.screens);
  const acc0 = await accepted(rig);

  const aim = await flatAim(loco.page, TARGET, U, V);
  const px = expectedPixel(snap, TARGET, aim.u, aim.v);
  await loco.page.mouse.move(aim.mouse.x, aim.mouse.y);
  const at = await screen.waitPointerNear(px.x, px.y, TOL_PX);
  logLine(`[flat] screenPoint(${TARGET}, ${U}, ${V}) = (${aim.sp.x.toFixed(2)}, ${aim.sp.y.toFixed(2)}); mouse at (${aim.mouse.x}, ${aim.mouse.y}) = ` +
    `(u=${aim.u.toFixed(4)}, v=${aim.v.toFixed(4)}) -> want pixel (${px.x},${px.y}); X pointer at (${at.x},${at.y})`);
  await loco.page.mouse.click(aim.mouse.x, aim.mouse.y);
  await waitButtons(xev, 0, [
    { kind: 'ButtonPress', x: px.x, y: px.y, button: 1 },
    { kind: 'ButtonRelease', x: px.x, y: px.y, button: 1 },
  ], 'mouse click -> X button 1 press+release at the pixel');
  await waitLoco(loco.page, (s) => s.focus === TARGET, `focus = ${TARGET} after clicking it`, 5000, loco.pageErrors);

  const xtermWid = await screen.focusedWindow();
  await loco.page.keyboard.type('hi');
  await loco.page.keyboard.press('Enter');
  const want = 'hi\n';
  try {
    await waitUntil(() => fs.readFileSync(files[rig.screens.indexOf(screen)], 'utf8') === want, 10000, `xterm on ${screen.label} to get 'hi\\n'`);
  } catch (e) {
    throw new Error(`${(e as Error).message}; files: ${JSON.stringify(files.map((f) => fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : null))}`);
  }
  expect(await screen.focusedWindow(), 'X focus stayed on the xterm').toBe(xtermWid);
  await loco.page.waitForTimeout(500);
  for (const [k, s] of rig.screens.entries()) {
    if (s === screen) continue;
    expect(fs.readFileSync(files[k], 'utf8'), `keys typed into ${s.label} (not focused)`).toBe('');
    expect(await s.pointer(), `X pointer of ${s.label}`).toEqual(p0[k]);
  }
  const acc1 = await accepted(rig);
  rig.agents.forEach((a, i) => {
    if (i !== TARGET) expect(acc1[i] - acc0[i], `input accepted by ${a.label} (not focused)`).toBe(0);
  });
});

test('a stopped agent shows its panel down; restarted on the same port it comes back live by itself', async ({ rig, server, loco }) => {
  const TARGET = 1;
  const agent = rig.agents[TARGET];
  const screen = rig.screenOf(TARGET)!;
  const desktops = rig.desktops();
  await openLive(loco, configQuery(server, desktops), desktops.length);

  const t0 = Date.now();
  await agent.stop();
  const down = await waitLoco(loco.page, (s) => panelsOf(s)[TARGET]?.state === 'down',
    `panel #${TARGET} 'down' after its agent stopped`, 45000, loco.pageErrors);
  logLine(`[reconnect] agent stopped -> panel 'down' after ${Date.now() - t0} ms`);
  panelsOf(down.snap).forEach((p, i) => {
    if (i !== TARGET) expect(p.state, `panel #${i} while #${TARGET} is down`).toBe('live');
  });
  // Stay down a few seconds: the page must keep retrying, not give up.
  await loco.page.waitForTimeout(3000);
  const still = await readLoco(loco.page);
  expect(panelsOf(still)[TARGET].state, `panel #${TARGET} while its agent is still stopped: ${summary(still)}`).not.toBe('live');

  const t1 = Date.now();
  await agent.start(); // same port
  const back = await waitLoco(loco.page, (s) => panelsOf(s)[TARGET]?.state === 'live',
    `panel #${TARGET} 'live' again after its agent restarted on port ${agent.port}`, 45000, loco.pageErrors);
  const ms = Date.now() - t1;
  logLine(`[reconnect] agent restarted -> panel 'live' after ${ms} ms`);
  expect(ms, "back 'live' within ~10 s of the agent returning (limit 20 s)").toBeLessThan(20000);

  // Video and input really flow again on the new session.
  const f0 = frames(back.snap)[TARGET];
  await screen.solid('#306090');
  await waitLoco(loco.page, (s) => frames(s)[TARGET] > f0 && panelsOf(s)[TARGET].videoWidth === 1024,
    `panel #${TARGET} decoding new frames after the reconnect`, 15000, loco.pageErrors);
  const aim = await flatAim(loco.page, TARGET, 0.5, 0.5);
  const px = expectedPixel(back.snap, TARGET, aim.u, aim.v);
  await screen.movePointer(1, 1);
  await loco.page.mouse.move(aim.mouse.x, aim.mouse.y);
  await screen.waitPointerNear(px.x, px.y, TOL_PX);
});

test('nine panels (QEMU guest + 8 agents on 3 Xvnc) go live in VR and keep decoding', async ({ rig, server, loco, extraAgents }) => {
  test.setTimeout(240_000);
  const extra = await Promise.all([
    extraAgents(rig.screens[0].port, 'x1b'), extraAgents(rig.screens[0].port, 'x1c'),
    extraAgents(rig.screens[1].port, 'x2b'), extraAgents(rig.screens[1].port, 'x2c'),
    extraAgents(rig.screens[2].port, 'x3b'),
  ]);
  await Promise.all(extra.map((a) => a.waitVnc()));
  const desktops: Desktop[] = [...rig.desktops(), ...extra.map((a) => ({ name: a.label, whep: a.whep, token: null }))];
  expect(desktops).toHaveLength(9);
  const anim = new Animator(rig.screens).start();
  try {
    const { ms } = await openLive(loco, configQuery(server, desktops), 9, 120000);
    logLine(`[timing] page load -> all 9 panels live: ${ms} ms`);
    await waitLoco(loco.page, (s) => panelsOf(s).every((p) => p.videoWidth === 1024 && p.videoHeight === 768),
      'every panel 1024x768', 20000, loco.pageErrors);
    const vr = await enterVr(loco, 9);
    panelsOf(vr).forEach((p, i) => checkCorners(i, p.corners as V3[], 1024, 768));
    // No two panels overlap: centres at least a panel height apart.
    const centres = panelsOf(vr).map((p) => pointOnPanel(p.corners as V3[], 0.5, 0.5));
    for (let i = 0; i < 9; i++) for (let j = i + 1; j < 9; j++) {
      expect(dist(centres[i], centres[j]), `centres of panels #${i} and #${j}`).toBeGreaterThan(0.2);
    }
    const f0 = frames(vr);
    const t2 = Date.now();
    const after = await waitFramesGrow(loco, f0, 3, 60000);
    logLine(`[frames] 9 panels in VR over ${((Date.now() - t2) / 1000).toFixed(1)} s: ${frames(after).map((f, i) => `#${i} +${f - f0[i]}`).join(', ')}`);
  } finally {
    await anim.stop();
  }
});
