/**
 * Self-checks of the harness, independent of the loco page: IWER's Quest 3 runtime as the
 * tests inject it, the controller aiming maths (read back through the WebXR API exactly as the
 * client reads it: targetRaySpace pose in local-floor), gamepad mapping, and the process
 * fixtures (Xvnc, xdotool, xev, the agent). If these fail, the other tests' failures say
 * nothing about the page.
 */
import { test, expect } from '../lib/fixtures';
import { Agent, requireAgentBinary } from '../lib/agent';
import { aimAt, dist, POINT_DOWN, rotate, v3, V3, sub, dot, norm, add, scale } from '../lib/xr';
import { setButton, setController, setThumbstick } from '../lib/loco';
import { Xvnc } from '../lib/xvnc';
import { waitUntil } from '../lib/procs';

const XR_PAGE = `<!doctype html><html><body>
<button id="go">go</button><canvas id="c" width="64" height="64"></canvas>
<script>
window.__h = { frames: 0, supported: null, error: null };
navigator.xr.isSessionSupported('immersive-vr').then((s) => { window.__h.supported = s; });
document.getElementById('go').onclick = async () => {
  try {
    const gl = document.getElementById('c').getContext('webgl2', { xrCompatible: true });
    const s = await navigator.xr.requestSession('immersive-vr', { requiredFeatures: ['local-floor'] });
    const ref = await s.requestReferenceSpace('local-floor');
    s.updateRenderState({ baseLayer: new XRWebGLLayer(s, gl) });
    const loop = (t, f) => {
      s.requestAnimationFrame(loop);
      const inputs = {};
      for (const src of s.inputSources) {
        const p = f.getPose(src.targetRaySpace, ref);
        if (!p) continue;
        const o = p.transform.position, q = p.transform.orientation;
        inputs[src.handedness] = {
          o: { x: o.x, y: o.y, z: o.z }, q: [q.x, q.y, q.z, q.w],
          buttons: src.gamepad ? Array.from(src.gamepad.buttons, (b) => b.value) : null,
          axes: src.gamepad ? Array.from(src.gamepad.axes) : null,
          mapping: src.gamepad ? src.gamepad.mapping : null,
          profiles: Array.from(src.profiles),
        };
      }
      const vp = f.getViewerPose(ref);
      const h = vp && vp.transform.position;
      window.__h = { ...window.__h, frames: window.__h.frames + 1, inputs, head: h && { x: h.x, y: h.y, z: h.z } };
    };
    s.requestAnimationFrame(loop);
  } catch (e) { window.__h.error = String(e); }
};
</script></body></html>`;

/** Distance from point p to the ray (o, d). */
function rayMiss(o: V3, d: V3, p: V3): number {
  const dn = norm(d);
  const t = dot(sub(p, o), dn);
  return t < 0 ? Infinity : dist(add(o, scale(dn, t)), p);
}

test('IWER Quest 3 runtime: session, local-floor, controller ray = the pose we set, gamepad mapping', async ({ page, server }) => {
  server.put('/harness/xr.html', XR_PAGE, 'text/html');
  await page.addInitScript({ path: require.resolve('iwer/build/iwer.min.js') });
  await page.addInitScript({ content: (await import('../lib/xr')).IWER_INIT });
  await page.goto(`${server.url}/harness/xr.html`);
  await expect.poll(() => page.evaluate(() => (window as any).__h.supported)).toBe(true);
  expect(await page.evaluate(() => navigator.userAgent)).toContain('Quest 3');
  await page.click('#go');
  await expect.poll(() => page.evaluate(() => (window as any).__h.error ?? (window as any).__h.frames), { timeout: 20000 })
    .toBeGreaterThan(3);
  const h0 = await page.evaluate(() => (window as any).__h);
  expect(h0.head.y).toBeCloseTo(1.6, 5);
  expect(Object.keys(h0.inputs).sort()).toEqual(['left', 'right']);
  expect(h0.inputs.right.mapping).toBe('xr-standard');
  // Our init script points both rays at the floor.
  for (const side of ['left', 'right']) {
    const d = rotate(h0.inputs[side].q, v3(0, 0, -1));
    expect(d.y).toBeLessThan(-0.999);
  }
  expect(rotate(POINT_DOWN, v3(0, 0, -1)).y).toBeCloseTo(-1, 9);

  // Aim at a few points; the page must see origin = position and the ray through the target.
  const origin = v3(0.15, 1.35, -0.1);
  for (const target of [v3(0.4, 1.2, -1.5), v3(-1.1, 2.0, -0.9), v3(0, 1.6, -1.6), v3(1.2, 0.8, -0.3)]) {
    const pose = aimAt(origin, target);
    await setController(page, 'right', pose.position, pose.quaternion);
    // Every target shares the origin, so wait for the new orientation too (|q·q'| = 1 for
    // the same rotation): the page may still show the previous frame's pose.
    const q = pose.quaternion;
    const got = await waitUntil(async () => {
      const h = await page.evaluate(() => (window as any).__h);
      const r = h.inputs.right;
      const same = Math.abs(r.q[0] * q[0] + r.q[1] * q[1] + r.q[2] * q[2] + r.q[3] * q[3]);
      return dist(r.o, origin) < 1e-5 && same > 1 - 1e-6 ? r : null;
    }, 5000, 'the page to see the new controller pose');
    const dirSeen = rotate(got.q, v3(0, 0, -1));
    const miss = rayMiss(got.o, dirSeen, target);
    expect(miss, `ray misses ${JSON.stringify(target)} by ${miss} m`).toBeLessThan(1e-4);
  }

  // xr-standard gamepad: buttons[0] trigger, [1] squeeze; axes[2..3] thumbstick.
  await setButton(page, 'right', 'trigger', 1);
  await setButton(page, 'right', 'squeeze', 1);
  await setThumbstick(page, 'right', 0, -1);
  await expect.poll(async () => {
    const r = (await page.evaluate(() => (window as any).__h)).inputs.right;
    return [r.buttons[0], r.buttons[1], r.axes[2], r.axes[3]];
  }).toEqual([1, 1, 0, -1]);
  await setButton(page, 'right', 'trigger', 0);
  await setButton(page, 'right', 'squeeze', 0);
  await setThumbstick(page, 'right', 0, 0);
  await expect.poll(async () => {
    const r = (await page.evaluate(() => (window as any).__h)).inputs.right;
    return [r.buttons[0], r.buttons[1], r.axes[3]];
  }).toEqual([0, 0, 0]);
});

test('process fixtures: Xvnc + xdotool + xev + loco-agent', async ({ workdir }) => {
  requireAgentBinary();
  const x = await Xvnc.create(workdir, 'harness');
  let a: Agent | null = null;
  try {
    a = await Agent.start(workdir, 'harness', x.port);
    await a.waitVnc(20000);
    const h = await a.healthz();
    expect(h.body).toMatchObject({ vnc_connected: true, width: 1024, height: 768 });
    await x.movePointer(321, 234);
    expect(await x.pointer()).toEqual({ x: 321, y: 234 });
    const xev = await x.xevButtons();
    await x.x('xdotool', 'click', '3');
    await waitUntil(() => xev.events().length >= 2, 5000, 'xev to log the click');
    expect(xev.events()).toEqual([
      { kind: 'ButtonPress', x: 321, y: 234, button: 3 },
      { kind: 'ButtonRelease', x: 321, y: 234, button: 3 },
    ]);
    expect(await a.inputAccepted()).toBe(0);
  } finally {
    await a?.stop();
    await x.kill();
  }
});
