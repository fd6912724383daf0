/**
 * The headset check page (`/check.html`, issue 18): the real page's wasm in its check mode,
 * against the rig's real agents (the QEMU guest and three Xvnc screens), measuring for
 * `?seconds=5`. Checks the report's shape and that its numbers are sane for live panels; the
 * "Copy report as JSON" button puts the same report on the clipboard or, refused, in a
 * visible textarea. A second test runs it with nine panels (five more agents on the rig's
 * screens), and a third with `?hardware=1` in a Chromium with a fake microphone, where the
 * decoders' names and power efficiency appear. The report is printed for the record.
 */
import { test, expect, finishPage, instrumentPage, type Desktop, type LocoPage } from '../lib/fixtures';
import { chromium, type Page } from '@playwright/test';
import { CHROMIUM, CHROMIUM_ARGS } from '../lib/chromium';
import type { Agent } from '../lib/agent';
import type { StaticServer } from '../lib/server';

function configQuery(server: StaticServer, desktops: Desktop[]): string {
  const url = server.putJson(`/cfg/check-${Date.now()}.json`, { desktops });
  return `config=${encodeURIComponent(url)}`;
}

async function waitReport(page: Page, timeoutMs: number): Promise<any> {
  await page.waitForFunction(() => (window as any).__locoCheck != null, null, { timeout: timeoutMs, polling: 250 });
  return page.evaluate(() => (window as any).__locoCheck);
}

/** The report's shape and sane numbers for `n` live panels. */
function expectSaneReport(r: any, n: number): void {
  expect(r.version).toBe(1);
  expect(typeof r.userAgent).toBe('string');
  expect(r.userAgent).toMatch(/Chrom/);
  for (const k of ['available', 'immersiveVr', 'immersiveAr']) expect(typeof r.webxr[k], `webxr.${k}`).toBe('boolean');
  // IWER's emulated Quest 3 answers isSessionSupported('immersive-vr').
  expect(r.webxr.available).toBe(true);
  expect(r.webxr.immersiveVr).toBe(true);
  for (const k of ['xrMediaBinding', 'xrWebGLBinding']) expect(typeof r.layers[k], `layers.${k}`).toBe('boolean');
  expect(Array.isArray(r.codecs.names)).toBe(true);
  expect(r.codecs.names.length).toBeGreaterThan(0);
  expect(r.codecs.names.some((c: string) => /^video\/(H264|VP8)$/i.test(c)), `codecs ${r.codecs.names}`).toBe(true);
  for (const c of ['h264', 'vp8']) {
    for (const k of ['supported', 'smooth', 'powerEfficient']) expect(typeof r.decoding[c][k], `decoding.${c}.${k}`).toBe('boolean');
  }
  expect(r.live).toBe(n);
  expect(r.panels).toHaveLength(n);
  for (const p of r.panels) {
    expect(p.state, p.name).toBe('live');
    expect(p.framesDecoded, `${p.name} framesDecoded`).toBeGreaterThan(0);
    expect(p.decodeMs, `${p.name} decode ms per frame`).toBeGreaterThan(0);
    expect(p.decodeMs, `${p.name} decode ms per frame`).toBeLessThan(100);
    expect(typeof p.framesDropped).toBe('number');
    expect(p.codec, p.name).toMatch(/^video\/(H264|VP8)$/i);
    expect(['string', 'object'].includes(typeof p.decoderImplementation)).toBe(true);
    if (p.powerEfficientDecoder !== null) expect(typeof p.powerEfficientDecoder).toBe('boolean');
    expect(p.width).toBeGreaterThan(0);
  }
  expect(r.frames.seconds).toBe(5);
  expect(r.frames.renderMs.p50, 'render loop p50 ms').toBeGreaterThan(0);
  expect(r.frames.renderMs.p95).toBeGreaterThanOrEqual(r.frames.renderMs.p50);
  expect(r.frames.renderMs.max).toBeGreaterThanOrEqual(r.frames.renderMs.p95);
  expect(r.frames.renderMs.count).toBeGreaterThan(0);
  expect(r.frames.display.frames).toBeGreaterThan(10);
  expect(r.frames.display.medianIntervalMs).toBeGreaterThan(0);
  expect(r.frames.display.dropped).toBeGreaterThanOrEqual(0);
  expect(typeof r.hardwareInfo).toBe('string');
}

/** A one-line summary for the log. */
function summary(r: any): string {
  const f = r.frames;
  return JSON.stringify({
    webxr: r.webxr, layers: r.layers, codecs: r.codecs.names, decoding: r.decoding,
    renderMs: f.renderMs, display: f.display,
    panels: r.panels.map((p: any) => ({ name: p.name, codec: p.codec, frames: p.framesDecoded, inWindow: p.framesDecodedInWindow,
      dropped: p.framesDropped, decodeMs: p.decodeMs && Number(p.decodeMs.toFixed(2)), impl: p.decoderImplementation,
      powerEfficient: p.powerEfficientDecoder, fps: p.fps })),
  });
}

test('check page: the report of this browser and the rig\'s four live panels over 5 s; copy as JSON', async ({ rig, server, loco }) => {
  await loco.open(`check.html?seconds=5&${configQuery(server, rig.desktops())}`);
  const page = loco.page;
  await expect(page.locator('#loco-check-copy')).toBeDisabled();
  const r = await waitReport(page, 90_000);
  console.log(`[check] four panels: ${summary(r)}`);
  expectSaneReport(r, 4);
  // The page shows the same report.
  expect(JSON.parse((await page.locator('#loco-check-report').textContent()) ?? '')).toEqual(r);

  // Copy: to the clipboard where the browser lets the page write it…
  await page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url });
  const copy = page.getByRole('button', { name: 'Copy report as JSON' });
  await expect(copy).toBeEnabled();
  await expect(page.locator('#loco-check-text')).toBeHidden();
  await copy.click();
  await expect(copy).toHaveAttribute('data-copied', 'clipboard', { timeout: 10_000 });
  expect(JSON.parse(await page.evaluate(() => navigator.clipboard.readText()))).toEqual(r);
  // …else (a browser without navigator.clipboard, e.g. a page not on https) in a visible textarea.
  await page.evaluate(() => Object.defineProperty(navigator, 'clipboard', { value: undefined, configurable: true }));
  await copy.click();
  await expect(copy).toHaveAttribute('data-copied', 'textarea', { timeout: 10_000 });
  const area = page.locator('#loco-check-text');
  await expect(area).toBeVisible();
  expect(JSON.parse(await area.inputValue())).toEqual(r);
});

test('check page with nine panels: the rig\'s four and five more agents on its screens', async ({ rig, server, loco, extraAgents }) => {
  test.slow();
  const more: Agent[] = [];
  for (let k = 0; k < 5; k++) more.push(await extraAgents(rig.screens[k % 3].port, `check${k}`));
  await Promise.all(more.map((a) => a.waitVnc()));
  const desktops = [...rig.desktops(), ...more.map((a) => ({ name: a.label, whep: a.whep, token: null }))];
  await loco.open(`check.html?seconds=5&${configQuery(server, desktops)}`);
  const r = await waitReport(loco.page, 120_000);
  console.log(`[check] nine panels: ${summary(r)}`);
  expectSaneReport(r, 9);
});

test('check page ?hardware=1: with a microphone captured, Chromium names each decoder and its power efficiency', async ({ rig, server }, testInfo) => {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [...CHROMIUM_ARGS, '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream'],
    headless: true,
  });
  let lp: LocoPage | null = null;
  let failed = true;
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
    await context.grantPermissions(['microphone'], { origin: server.url });
    lp = await instrumentPage(await context.newPage(), server);
    await lp.open(`check.html?seconds=5&hardware=1&${configQuery(server, rig.desktops())}`);
    const r = await waitReport(lp.page, 90_000);
    console.log(`[check] ?hardware=1 (${r.hardwareInfo}): ${summary(r)}`);
    expectSaneReport(r, 4);
    expect(r.hardwareInfo).toMatch(/^allowed/);
    for (const p of r.panels) {
      expect(typeof p.decoderImplementation, `${p.name} decoderImplementation`).toBe('string');
      expect(p.decoderImplementation.length).toBeGreaterThan(0);
      expect(typeof p.powerEfficientDecoder, `${p.name} powerEfficientDecoder`).toBe('boolean');
    }
    failed = false;
  } finally {
    if (lp) {
      await finishPage(lp, testInfo, failed).catch((e) => {
        if (!failed) throw e;
      });
    }
    await browser.close();
  }
});
