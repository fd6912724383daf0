/**
 * The decoder fallback (issue 18): a panel whose video decoder stalls is renegotiated with VP8,
 * at most once a minute per panel, against the rig's real agents.
 *
 * - The detector, end to end: the browser's real H.264 decoder is fed frames it cannot decode —
 *   the test zeroes the first peer connection's encoded video frames between depacketiser and
 *   decoder (Chromium's encoded transform, injected before the page's script; loco's code is
 *   untouched) — so `framesDecoded` stops while frames keep arriving; the page notices
 *   (`client/src/decoder.rs`), renegotiates with VP8 by itself and decodes again.
 * - The path and the once-a-minute rule: `__loco.debug.renegotiate(i, 'vp8')` calls the same
 *   `App::decoder_fallback` the detector calls — the new WHEP session asking `?codec=vp8` with VP8
 *   first in the offer, the agent's VP8 encoder starting, the record in `__loco`, the HUD line,
 *   a second fallback within a minute refused, the other panels untouched.
 */
import { test, expect, openLive } from '../lib/fixtures';
import { waitUntil } from '../lib/procs';
import type { Page } from '@playwright/test';
import type { StaticServer } from '../lib/server';
import type { Desktop } from '../lib/fixtures';

function configQuery(server: StaticServer, desktops: Desktop[]): string {
  const url = server.putJson(`/cfg/decoder-${Date.now()}.json`, { desktops });
  return `?hud=1&config=${encodeURIComponent(url)}`;
}

const panels = (page: Page) => page.evaluate(() => (window as any).__loco.panels.map((p: any) => ({
  state: p.state, codec: p.codec, codecRequested: p.codecRequested, fallbacks: p.decoderFallbacks,
  reason: p.decoderFallbackReason, impl: p.decoderImplementation, pe: p.powerEfficientDecoder,
  frames: p.framesDecoded, decodeMs: p.decodeMs, hud: p.hudLine, attempts: p.attempts,
})));

test('decoder fallback path: renegotiating panel 1 with VP8 as the detector does; once a minute; other panels untouched', async ({ rig, server, loco }) => {
  await openLive(loco, configQuery(server, rig.desktops()), 4);
  const page = loco.page;
  const agent = rig.agents[1];
  // Every panel starts on the agent's default codec (H.264), no fallbacks, the codec in the HUD line
  // (with the decoder's name and power efficiency where the browser tells them: headless
  // Chromium does not, so `decoderImplementation` stays null here).
  await waitUntil(async () => (await panels(page)).every((p) => p.codec === 'h264' && p.frames > 0 && p.hud.includes('h264')), 15000, 'h264 stats');
  const before = await panels(page);
  for (const p of before) {
    expect(p.fallbacks).toBe(0);
    expect(p.codecRequested).toBeNull();
    expect(p.hud).toContain(p.impl ? `h264 ${p.impl}` : 'h264');
  }
  const vp8Before = await agent.metric('loco_frames_encoded_total', { codec: 'vp8' });

  expect(await page.evaluate(() => (window as any).__loco.debug.renegotiate(1, 'vp8'))).toBe(true);
  let now = (await panels(page))[1];
  expect(now.fallbacks).toBe(1);
  expect(now.codecRequested).toBe('vp8');
  expect(now.reason).toBe('asked by __loco.debug.renegotiate');

  // A new session: live again on VP8, decoded by the browser's VP8 decoder.
  await waitUntil(async () => {
    now = (await panels(page))[1];
    return now.state === 'live' && now.codec === 'vp8' && now.frames > 0 && now.hud.includes('vp8');
  }, 20000, 'panel 1 live on VP8');
  console.log(`[decoder] panel 1 after the fallback: ${JSON.stringify(now)}`);
  expect(now.attempts).toBe(before[1].attempts + 1);
  expect(now.decodeMs).toBeGreaterThan(0);
  expect(now.hud).toContain(now.impl ? `vp8 ${now.impl}` : 'vp8');
  // The agent encodes VP8 now (its own counter, not the page's word).
  await waitUntil(async () => (await agent.metric('loco_frames_encoded_total', { codec: 'vp8' })) > vp8Before, 10000, 'agent encodes VP8');

  // Once a minute: a second fallback is refused and nothing is renegotiated.
  expect(await page.evaluate(() => (window as any).__loco.debug.renegotiate(1, 'h264'))).toBe(false);
  await page.waitForTimeout(1500);
  const after = await panels(page);
  expect(after[1]).toMatchObject({ state: 'live', codec: 'vp8', fallbacks: 1, attempts: now.attempts });
  // The other panels kept their sessions.
  for (const i of [0, 2, 3]) {
    expect(after[i]).toMatchObject({ state: 'live', codec: 'h264', fallbacks: 0, attempts: before[i].attempts });
  }
});

/**
 * In the page, before loco's script: the first peer connection's incoming video frames are
 * zeroed between the RTP depacketiser and the decoder (an encoded transform, Chromium's
 * `createEncodedStreams`), so the browser's real H.264 decoder gets data it cannot decode; later
 * connections pass through untouched. loco's code is not touched.
 */
const CORRUPT_FIRST_PC = `(() => {
  const Orig = window.RTCPeerConnection;
  let made = 0;
  window.__corrupted = 0;
  function Wrapped(cfg) {
    const k = made++;
    const pc = new Orig(Object.assign({}, cfg || {}, { encodedInsertableStreams: true }));
    pc.addEventListener('track', (ev) => {
      const { readable, writable } = ev.receiver.createEncodedStreams();
      const corrupt = k === 0 && ev.track.kind === 'video';
      readable.pipeThrough(new TransformStream({
        transform(frame, c) {
          if (corrupt) { frame.data = new ArrayBuffer(frame.data.byteLength); window.__corrupted++; }
          c.enqueue(frame);
        },
      })).pipeTo(writable);
    });
    return pc;
  }
  Wrapped.prototype = Orig.prototype;
  window.RTCPeerConnection = Wrapped;
})();`;

test('decoder fallback, detector: undecodable H.264 reaching the real decoder stalls it; the panel falls back to VP8 by itself', async ({ rig, server, loco, extraAgents }) => {
  const agent = await extraAgents(rig.guest.port, 'stall');
  await agent.waitVnc();
  await loco.page.addInitScript({ content: CORRUPT_FIRST_PC });
  const url = server.putJson(`/cfg/decoder-stall-${Date.now()}.json`, { desktops: [{ name: 'stall', whep: agent.whep, token: null }] });
  await loco.open(`?hud=1&config=${encodeURIComponent(url)}`);
  const page = loco.page;
  let seen: any[] = [];
  const t0 = Date.now();
  await waitUntil(async () => {
    seen = await panels(page);
    return seen[0]?.fallbacks === 1 && seen[0].state === 'live' && seen[0].codec === 'vp8' && seen[0].frames > 0;
  }, 30000, 'panel 0 on VP8 after its H.264 decoder stalled');
  const corrupted = await page.evaluate(() => (window as any).__corrupted);
  console.log(`[decoder] stalled H.264 (${corrupted} frames zeroed) -> VP8 after ${Date.now() - t0} ms: ${JSON.stringify(seen[0])}`);
  expect(corrupted).toBeGreaterThan(0);
  expect(seen[0].reason).toMatch(/no frame decoded for \d+ s/);
  expect(seen[0].codecRequested).toBe('vp8');
  // VP8 decodes: frames keep coming on the guest's changing picture.
  const f0 = seen[0].frames;
  await waitUntil(async () => (await panels(page))[0].frames > f0 + 3, 10000, 'VP8 frames decoded');
  expect(await agent.metric('loco_frames_encoded_total', { codec: 'vp8' })).toBeGreaterThan(0);
});
