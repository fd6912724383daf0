/**
 * The page as a cluster serves it: loco-web's nginx behind the ingress stand-in, the agents and
 * stand-in VMs in their containers (images/test_images.py starts them as the Helm chart or
 * compose.yaml runs them). IWER emulates the Quest 3. Checks: the page (200, no-cache) and every
 * panel go live, Enter VR draws them all, and a controller click on one panel reaches that VM's
 * agent only, through the ingress and WebRTC between the browser and the agents' containers (the
 * agents' loco_input_events_total{result="accepted"}: that agent's rises, the others' stay).
 */
import { expect, test } from '@playwright/test';
import { metricValue } from '../lib/agent';
import { allLive, panelsOf, setButton, setController, waitLoco, waitXrAndStableCorners } from '../lib/loco';
import { IWER_INIT, aimAt, pointOnPanel, POINT_DOWN, v3, type V3 } from '../lib/xr';

const URL_ = process.env.LOCO_DEPLOY_URL ?? '';
const KEY = process.env.LOCO_DEPLOY_KEY ?? '';
const N = Number(process.env.LOCO_DEPLOY_N ?? '0');
const AGENTS = (process.env.LOCO_DEPLOY_AGENTS ?? '').split(',').filter(Boolean);
const TARGET = Number(process.env.LOCO_DEPLOY_TARGET ?? '1');
/** Where on the panel the controller clicks (u right, v down). */
const [AIM_U, AIM_V] = (process.env.LOCO_DEPLOY_UV ?? '0.5,0.5').split(',').map(Number);
const HAND = v3(0.12, 1.3, -0.15);
const IWER_JS = require.resolve('iwer/build/iwer.min.js');

async function accepted(): Promise<number[]> {
  return Promise.all(AGENTS.map(async (a) => {
    const r = await fetch(`${a}/metrics`);
    return metricValue(await r.text(), 'loco_input_events_total', { result: 'accepted' });
  }));
}

test('the deployed page: every panel live, Enter VR, a controller click reaches the aimed VM only', async ({ page }) => {
  expect(URL_ && KEY && N > 0 && AGENTS.length === N, 'LOCO_DEPLOY_* describe the release (images/test_images.py sets them)').toBe(true);
  const errors: string[] = [];
  const lines: string[] = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => lines.push(`[${m.type()}] ${m.text()}`));
  await page.addInitScript({ path: IWER_JS });
  await page.addInitScript({ content: IWER_INIT });
  try {
    const t0 = Date.now();
    const resp = await page.goto(`${URL_}#key=${KEY}`, { waitUntil: 'load' });
    expect(resp?.status(), 'the page').toBe(200);
    expect(resp?.headers()['cache-control']).toBe('no-cache');
    await waitLoco(page, allLive(N), `all ${N} panels 'live'`, 240_000, errors);
    console.log(`[deploy] all ${N} panels live ${((Date.now() - t0) / 1000).toFixed(1)} s after the page was opened`);

    await page.getByRole('button', { name: 'Enter VR' }).click();
    const snap = await waitXrAndStableCorners(page, N, errors);
    expect(panelsOf(snap).length).toBe(N);

    const before = await accepted();
    const target = pointOnPanel(panelsOf(snap)[TARGET].corners as V3[], AIM_U, AIM_V);
    const pose = aimAt(HAND, target);
    await setController(page, 'right', pose.position, pose.quaternion);
    await page.waitForTimeout(300);
    await setButton(page, 'right', 'trigger', 1);
    await page.waitForTimeout(200);
    await setButton(page, 'right', 'trigger', 0);
    let after = before;
    for (let i = 0; i < 40 && after[TARGET] <= before[TARGET]; i++) {
      await page.waitForTimeout(250);
      after = await accepted();
    }
    await setController(page, 'right', HAND, POINT_DOWN);
    await page.waitForTimeout(500);
    after = await accepted();
    console.log(`[deploy] input accepted per agent: before ${before.join(',')}, after ${after.join(',')}`);
    expect(after[TARGET] - before[TARGET], `input accepted by agent ${TARGET} (aimed at)`).toBeGreaterThan(0);
    for (let i = 0; i < N; i++) {
      if (i !== TARGET) expect(after[i] - before[i], `input accepted by agent ${i} (not aimed at)`).toBe(0);
    }
    expect(errors, 'uncaught errors on the page').toEqual([]);
  } finally {
    if (test.info().status !== test.info().expectedStatus) {
      await test.info().attach('browser console', { body: lines.join('\n'), contentType: 'text/plain' });
    }
  }
});
