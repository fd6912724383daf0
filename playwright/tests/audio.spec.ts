/**
 * Sound through the page, against real peers: the rig's QEMU test-pattern guest plays a
 * continuous RIG_TONE_HZ tone on its sound card; QEMU's VNC server hands the PCM to loco-agent,
 * which sends it as Opus; the page's Web Audio graph (one AudioContext, per panel a gain and an
 * HRTF panner at the panel) plays it. What the page hears is read back from its analysers through
 * `__loco.audio` and `__loco.audioSpectrum()`; the headset is IWER's emulated Quest 3 at
 * (0, 1.6, 0) looking down -Z.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Page } from '@playwright/test';
import { test, expect, enterVr, openLive, RIG_TONE_HZ, type Desktop, type LocoPage } from '../lib/fixtures';
import { levelAt, median, pollUntil, readAudio, readSpectrum, type AudioState, type Spectrum } from '../lib/audio';
import { QemuGuest } from '../lib/guest';
import { allLive, frames, panelsOf, setButton, setController, waitLoco, waitXrAndStableCorners, type LocoSnap } from '../lib/loco';
import type { StaticServer } from '../lib/server';
import { aimAt, pointOnPanel, POINT_DOWN, v3, type V3 } from '../lib/xr';

const HAND = v3(0.12, 1.3, -0.15);
/** The dominant frequency the page finds must be within this of the guest's tone. */
const HZ_TOL = 5;
/** A panel's level heard (RMS dBFS after its gain) when muted: the analyser sees zeros. */
const SILENT_DB = -90;

let cfgSeq = 0;
function configQuery(server: StaticServer, desktops: Desktop[], extra = ''): string {
  const url = server.putJson(`/cfg/audio-${++cfgSeq}.json`, { desktops });
  return `?config=${encodeURIComponent(url)}${extra}`;
}

/** The SDP offers the page POSTs to agents (WHEP), as they go out. */
function watchOffers(page: Page): string[] {
  const offers: string[] = [];
  page.on('request', (r) => {
    if (r.method() === 'POST' && r.url().endsWith('/whep')) offers.push(r.postData() ?? '');
  });
  return offers;
}

const audioOf = (page: Page) => async (): Promise<AudioState> => {
  const a = await readAudio(page);
  if (!a) throw new Error('window.__loco.audio is missing');
  return a;
};

/** Waits until the context runs and each of `panels` has a track that plays. */
async function waitPlaying(page: Page, panels: number[], timeoutMs = 30000): Promise<AudioState> {
  return pollUntil(page, audioOf(page), (a) => a.context === 'running' &&
    panels.every((i) => a.panels[i]?.track === true && a.panels[i]?.playing === true),
  `AudioContext 'running' and panels ${JSON.stringify(panels)} with a playing track`, timeoutMs);
}

/** Medians over `n` reads of each panel's level heard and of the master's L/R levels at `hz`s. */
async function measure(page: Page, hzs: number[], n = 5): Promise<{ level: number[]; left: number[]; right: number[]; spectrum: Spectrum }> {
  const levels: number[][] = [];
  const lefts: number[][] = [];
  const rights: number[][] = [];
  let spectrum: Spectrum | null = null;
  for (let k = 0; k < n; k++) {
    spectrum = await readSpectrum(page);
    if (!spectrum) throw new Error('__loco.audioSpectrum() returned null');
    const a = (await readAudio(page))!;
    levels.push(a.panels.map((p) => p.level ?? -Infinity));
    lefts.push(hzs.map((hz) => levelAt(spectrum!.left, spectrum!.binHz, hz)));
    rights.push(hzs.map((hz) => levelAt(spectrum!.right, spectrum!.binHz, hz)));
    await page.waitForTimeout(260); // the page re-reads its levels every 250 ms
  }
  const col = (rows: number[][], j: number) => median(rows.map((r) => r[j]));
  return {
    level: levels[0].map((_, j) => col(levels, j)),
    left: hzs.map((_, j) => col(lefts, j)),
    right: hzs.map((_, j) => col(rights, j)),
    spectrum: spectrum!,
  };
}

/** Aims the right controller at point (u, v) of a quad given by its corners TL, TR, BR, BL. */
async function aimRight(page: Page, corners: V3[], u: number, v: number): Promise<void> {
  const pose = aimAt(HAND, pointOnPanel(corners, u, v));
  await setController(page, 'right', pose.position, pose.quaternion);
}

async function triggerClick(page: Page): Promise<void> {
  await setButton(page, 'right', 'trigger', 1);
  await page.waitForTimeout(150); // a few XR frames see it held
  await setButton(page, 'right', 'trigger', 0);
}

/** Turns IWER's headset (quaternion x, y, z, w; it stays where it is). */
async function setHead(page: Page, q: [number, number, number, number]): Promise<void> {
  await page.evaluate((q) => (window as any).__iwer.quaternion.set(q[0], q[1], q[2], q[3]), q);
}

function captionCorners(page: Page, i: number): Promise<V3[]> {
  return page.evaluate((i) => JSON.parse(JSON.stringify((window as any).__loco.panels[i].captionCorners)), i);
}

function logLine(s: string): void {
  console.log(s);
}

test('one guest playing a tone: after Enter VR the page hears it at its frequency', async ({ rig, server, loco }) => {
  const offers = watchOffers(loco.page);
  const desktops = [rig.desktops()[0]];
  await openLive(loco, configQuery(server, desktops), 1);
  expect(offers.length, 'WHEP offers sent').toBeGreaterThanOrEqual(1);
  expect(offers[0], 'the offer has an audio m-line').toMatch(/^m=audio /m);
  expect(offers[0], 'the audio m-line is recvonly with Opus 48 kHz/2').toMatch(/a=rtpmap:\d+ opus\/48000\/2/i);
  const before = await readAudio(loco.page);
  expect(before?.enabled, '__loco.audio.enabled by default').toBe(true);
  expect(before?.context, 'no AudioContext before a user gesture').toBeNull();

  const t0 = Date.now();
  await enterVr(loco, 1);
  const a = await waitPlaying(loco.page, [0]);
  logLine(`[audio] Enter VR -> context running and panel 0 playing after ${Date.now() - t0} ms; ` +
    `sampleRate ${a.sampleRate}, source ${a.panels[0].sourceLevel?.toFixed(1)} dBFS, heard ${a.panels[0].level?.toFixed(1)} dBFS`);
  expect(a.panels[0].muted).toBe(false);
  expect(a.panels[0].gainDb, 'nothing focused: full level').toBe(0);

  const s = await pollUntil(loco.page, async () => (await readSpectrum(loco.page))!,
    (s) => s?.panels[0]?.dominantHz !== null && Math.abs((s.panels[0].dominantHz as number) - RIG_TONE_HZ) <= HZ_TOL,
    `panel 0's dominant frequency within ${HZ_TOL} Hz of ${RIG_TONE_HZ}`, 15000);
  const left = levelAt(s.left, s.binHz, RIG_TONE_HZ), right = levelAt(s.right, s.binHz, RIG_TONE_HZ);
  logLine(`[audio] panel 0 dominant ${s.panels[0].dominantHz!.toFixed(2)} Hz (${s.panels[0].dominantDb!.toFixed(1)} dB); ` +
    `master at ${RIG_TONE_HZ} Hz: L ${left.toFixed(1)} dB, R ${right.toFixed(1)} dB (bin ${s.binHz.toFixed(2)} Hz, fft ${s.fftSize})`);
  // The master carries it to both ears (a panel straight ahead): well above the floor in each.
  expect(left, 'master left at the tone').toBeGreaterThan(-90);
  expect(right, 'master right at the tone').toBeGreaterThan(-90);
  expect(Math.abs(left - right), 'a panel straight ahead is as loud in both ears (±3 dB)').toBeLessThan(3);
});

test('two guests, two tones: each is louder in the ear on its side; focusing a panel raises it by audio-unfocused-db', async ({ rig, server, loco, extraAgents, workdir }) => {
  test.setTimeout(240_000);
  const TONE_B = 660, UNFOCUSED_DB = -9;
  const dir = fs.mkdtempSync(path.join(workdir, 'guest-b-'));
  const guestB = await QemuGuest.start(dir, { audio: true, tone: TONE_B });
  try {
    const agentB = await extraAgents(guestB.port, 'guest-b');
    await agentB.waitVnc();
    // One row of three: guest A (RIG_TONE_HZ) on the left, an Xvnc in the middle, guest B on the right.
    const desktops: Desktop[] = [rig.desktops()[0], rig.desktops()[1], { name: 'guest-b', whep: agentB.whep, token: null }];
    await openLive(loco, configQuery(server, desktops, `&audio-unfocused-db=${UNFOCUSED_DB}`), 3);
    const vr = await enterVr(loco, 3);
    const centres = panelsOf(vr).map((p) => pointOnPanel(p.corners as V3[], 0.5, 0.5));
    expect(centres[0].x, 'panel 0 is left of the head').toBeLessThan(-0.3);
    expect(centres[2].x, 'panel 2 is right of the head').toBeGreaterThan(0.3);
    const a0 = await waitPlaying(loco.page, [0, 2]);
    expect(a0.unfocusedDb, 'audio-unfocused-db from the URL').toBe(UNFOCUSED_DB);
    expect(a0.panels[1].playing, 'an Xvnc desktop plays nothing (its agent sends a silent track)').toBe(false);

    const spec = await pollUntil(loco.page, async () => (await readSpectrum(loco.page))!,
      (s) => [RIG_TONE_HZ, TONE_B].every((hz, k) => s?.panels[k * 2]?.dominantHz !== null &&
        Math.abs((s.panels[k * 2].dominantHz as number) - hz) <= HZ_TOL),
      `panel 0 at ${RIG_TONE_HZ} Hz and panel 2 at ${TONE_B} Hz`, 15000);
    logLine(`[audio] dominant: panel 0 ${spec.panels[0].dominantHz!.toFixed(2)} Hz, panel 2 ${spec.panels[2].dominantHz!.toFixed(2)} Hz`);

    // Spatial: A (left) louder in the left channel, B (right) in the right.
    const m = await measure(loco.page, [RIG_TONE_HZ, TONE_B]);
    logLine(`[audio] master L/R at ${RIG_TONE_HZ} Hz: ${m.left[0].toFixed(1)} / ${m.right[0].toFixed(1)} dB; ` +
      `at ${TONE_B} Hz: ${m.left[1].toFixed(1)} / ${m.right[1].toFixed(1)} dB`);
    expect(m.left[0] - m.right[0], `${RIG_TONE_HZ} Hz (panel on the left): left minus right channel, dB`).toBeGreaterThan(1.5);
    expect(m.right[1] - m.left[1], `${TONE_B} Hz (panel on the right): right minus left channel, dB`).toBeGreaterThan(1.5);

    // The listener follows the head every frame: turned round (180° about +Y), the ears swap.
    await setHead(loco.page, [0, 1, 0, 0]);
    const turned = await pollUntil(loco.page, () => measure(loco.page, [RIG_TONE_HZ, TONE_B], 3),
      (t) => t.right[0] - t.left[0] > 1.5 && t.left[1] - t.right[1] > 1.5,
      `with the head turned round, ${RIG_TONE_HZ} Hz louder on the right and ${TONE_B} Hz on the left`, 15000);
    logLine(`[audio] head turned round: L/R at ${RIG_TONE_HZ} Hz ${turned.left[0].toFixed(1)} / ${turned.right[0].toFixed(1)} dB; ` +
      `at ${TONE_B} Hz ${turned.left[1].toFixed(1)} / ${turned.right[1].toFixed(1)} dB`);
    await setHead(loco.page, [0, 0, 0, 1]);
    await pollUntil(loco.page, () => measure(loco.page, [RIG_TONE_HZ, TONE_B], 3),
      (t) => t.left[0] - t.right[0] > 1.5 && t.right[1] - t.left[1] > 1.5, 'the head facing the wall again', 15000);

    // Focus panel 0 with the trigger: panel 2 drops to UNFOCUSED_DB.
    await aimRight(loco.page, panelsOf(vr)[0].corners as V3[], 0.5, 0.5);
    await triggerClick(loco.page);
    await waitLoco(loco.page, (s) => s.focus === 0, 'focus = 0 after the trigger on panel 0', 5000, loco.pageErrors);
    await setController(loco.page, 'right', HAND, POINT_DOWN);
    const a1 = await pollUntil(loco.page, audioOf(loco.page), (a) => a.panels[0].gainDb === 0 && a.panels[2].gainDb === UNFOCUSED_DB,
      `gainDb 0 / ${UNFOCUSED_DB} with panel 0 focused`, 5000);
    expect(a1.panels[1].gainDb).toBe(UNFOCUSED_DB);
    const quiet = await measure(loco.page, [RIG_TONE_HZ, TONE_B]);

    // Focus panel 2: its level rises by -UNFOCUSED_DB, panel 0's falls by as much.
    await aimRight(loco.page, panelsOf(vr)[2].corners as V3[], 0.5, 0.5);
    await triggerClick(loco.page);
    await waitLoco(loco.page, (s) => s.focus === 2, 'focus = 2 after the trigger on panel 2', 5000, loco.pageErrors);
    await setController(loco.page, 'right', HAND, POINT_DOWN);
    await pollUntil(loco.page, audioOf(loco.page), (a) => a.panels[2].gainDb === 0 && a.panels[0].gainDb === UNFOCUSED_DB,
      `gainDb ${UNFOCUSED_DB} / 0 with panel 2 focused`, 5000);
    // The gain ramps (time constant 50 ms): wait for the heard level to settle, then measure.
    await pollUntil(loco.page, audioOf(loco.page), (a) => (a.panels[2].level ?? -200) - quiet.level[2] > -UNFOCUSED_DB - 2,
      'panel 2 louder after its focus', 5000);
    const loud = await measure(loco.page, [RIG_TONE_HZ, TONE_B]);
    const rise = loud.level[2] - quiet.level[2], fall = loud.level[0] - quiet.level[0];
    const riseL = loud.left[1] - quiet.left[1], riseR = loud.right[1] - quiet.right[1];
    logLine(`[audio] focus 0 -> 2: panel 2 heard ${quiet.level[2].toFixed(1)} -> ${loud.level[2].toFixed(1)} dBFS (${rise.toFixed(2)} dB), ` +
      `panel 0 ${quiet.level[0].toFixed(1)} -> ${loud.level[0].toFixed(1)} (${fall.toFixed(2)} dB); master at ${TONE_B} Hz L ${riseL.toFixed(2)} dB, R ${riseR.toFixed(2)} dB`);
    expect(Math.abs(rise - -UNFOCUSED_DB), `panel 2's level rises by ${-UNFOCUSED_DB} dB (±1.5)`).toBeLessThan(1.5);
    expect(Math.abs(fall - UNFOCUSED_DB), `panel 0's level falls by ${-UNFOCUSED_DB} dB (±1.5)`).toBeLessThan(1.5);
    for (const [ch, r] of [['left', riseL], ['right', riseR]] as const) {
      expect(Math.abs(r - -UNFOCUSED_DB), `master ${ch} at ${TONE_B} Hz rises by ${-UNFOCUSED_DB} dB (±3)`).toBeLessThan(3);
    }
  } finally {
    await guestB.stop();
  }
});

test('audio=off: the offer has no audio m-line, no AudioContext starts, video still plays', async ({ rig, server, loco }) => {
  const offers = watchOffers(loco.page);
  const desktops = [rig.desktops()[0], rig.desktops()[1]];
  const snap = await openLive(loco, configQuery(server, desktops, '&audio=off'), 2);
  expect(offers.length, 'WHEP offers sent').toBeGreaterThanOrEqual(2);
  for (const o of offers) {
    expect(o, 'an offer with audio=off').not.toMatch(/^m=audio /m);
    expect(o, 'the offer still asks for video').toMatch(/^m=video /m);
  }
  // A click in the flat view (a gesture) still makes no AudioContext.
  await loco.page.mouse.click(5, 700);
  const f0 = frames(snap);
  // The guest's picture changes every 0.5 s; the Xvnc panel stays live.
  const later = await waitLoco(loco.page, (s) => frames(s)[0] >= f0[0] + 5 && panelsOf(s)[1]?.state === 'live',
    'the guest panel decodes 5 more frames', 20000, loco.pageErrors);
  const a = await readAudio(loco.page);
  expect(a?.enabled).toBe(false);
  expect(a?.context, 'no AudioContext with audio=off').toBeNull();
  expect(a?.panels.map((p) => p.track), 'no panel has an audio track').toEqual([false, false]);
  logLine(`[audio] audio=off: frames ${JSON.stringify(f0)} -> ${JSON.stringify(frames(later.snap))}`);
});

test('mute from the caption: a click (flat view) or the trigger (VR) on it silences that panel, again unmutes', async ({ rig, server, loco }) => {
  const desktops = [rig.desktops()[0], rig.desktops()[1]];
  await openLive(loco, configQuery(server, desktops), 2);
  const before = await readAudio(loco.page);
  expect(before?.context, 'no AudioContext before a user gesture').toBeNull();

  // Flat view: the caption's centre, through screenPoint of the panel's plane (v beyond 1).
  const cap = await captionCorners(loco.page, 0);
  const panel = panelsOf((await loco.snap())!)[0].corners as V3[];
  const centre = pointOnPanel(cap, 0.5, 0.5);
  const [tl, , , bl] = panel;
  const down = v3(bl.x - tl.x, bl.y - tl.y, bl.z - tl.z);
  const h2 = down.x * down.x + down.y * down.y + down.z * down.z;
  const vCap = ((centre.x - tl.x) * down.x + (centre.y - tl.y) * down.y + (centre.z - tl.z) * down.z) / h2;
  expect(vCap, 'the caption lies just below the panel').toBeGreaterThan(1);
  expect(vCap).toBeLessThan(1.1);
  const sp = await loco.page.evaluate((v) => (window as any).__loco.screenPoint(0, 0.5, v), vCap);
  expect(sp, 'the caption is on the screen').not.toBeNull();
  // This click is also the page's first gesture: it creates the AudioContext, then mutes panel 0.
  await loco.page.mouse.click(Math.round(sp.x), Math.round(sp.y));
  const muted = await pollUntil(loco.page, audioOf(loco.page), (a) => a.panels[0].muted && a.context === 'running' && a.panels[0].track,
    'panel 0 muted, context running, its track in the graph', 15000);
  expect(muted.panels[1].muted, 'the other panel is not muted').toBe(false);
  expect((await loco.snap())?.focus, 'a caption click focuses nothing').toBeNull();
  await pollUntil(loco.page, audioOf(loco.page), (a) => a.panels[0].playing && (a.panels[0].level ?? 0) < SILENT_DB,
    `panel 0 still playing (its own sound) but heard below ${SILENT_DB} dBFS`, 10000);

  // VR: the right controller's trigger on the caption unmutes it, and again mutes it.
  await enterVr(loco, 2);
  const capVr = await captionCorners(loco.page, 0);
  await aimRight(loco.page, capVr, 0.5, 0.5);
  await triggerClick(loco.page);
  const on = await pollUntil(loco.page, audioOf(loco.page), (a) => !a.panels[0].muted && (a.panels[0].level ?? -200) > -60,
    'panel 0 unmuted and heard again after the trigger on its caption', 10000);
  logLine(`[audio] caption trigger: unmuted, heard ${on.panels[0].level?.toFixed(1)} dBFS`);
  await triggerClick(loco.page);
  const off = await pollUntil(loco.page, audioOf(loco.page), (a) => a.panels[0].muted && (a.panels[0].level ?? 0) < SILENT_DB,
    `panel 0 muted again, heard below ${SILENT_DB} dBFS`, 10000);
  logLine(`[audio] caption trigger: muted, heard ${off.panels[0].level?.toFixed(1)} dBFS (source ${off.panels[0].sourceLevel?.toFixed(1)})`);
  expect((await loco.snap())?.focus, 'trigger on a caption focuses nothing').toBeNull();
  await setController(loco.page, 'right', HAND, POINT_DOWN);
});

test('Chromium: a remote WebRTC audio track feeds Web Audio while a muted <audio> element plays it', async ({ page }) => {
  // Why client/src/web/audio.rs plays every panel's track in a muted <audio> element: two peer
  // connections in one page send an oscillator to each other; the receiver's
  // createMediaStreamSource hears nothing until the track also plays in a media element.
  await page.setContent('<!doctype html><title>webrtc audio</title>');
  await page.evaluate(async () => {
    const tx = new AudioContext();
    const osc = tx.createOscillator();
    osc.frequency.value = 440;
    const dst = tx.createMediaStreamDestination();
    osc.connect(dst);
    osc.start();
    const a = new RTCPeerConnection(), b = new RTCPeerConnection();
    a.onicecandidate = (e) => { if (e.candidate) b.addIceCandidate(e.candidate); };
    b.onicecandidate = (e) => { if (e.candidate) a.addIceCandidate(e.candidate); };
    a.addTrack(dst.stream.getAudioTracks()[0], dst.stream);
    const got = new Promise<RTCTrackEvent>((res) => { b.ontrack = res; });
    await a.setLocalDescription(await a.createOffer());
    await b.setRemoteDescription(a.localDescription!);
    await b.setLocalDescription(await b.createAnswer());
    await a.setRemoteDescription(b.localDescription!);
    const track = (await got).track;
    const rx = new AudioContext();
    const stream = new MediaStream([track]);
    const an = rx.createAnalyser();
    an.fftSize = 2048;
    rx.createMediaStreamSource(stream).connect(an);
    const rms = () => {
      const buf = new Float32Array(an.fftSize);
      an.getFloatTimeDomainData(buf);
      return Math.sqrt(buf.reduce((s, v) => s + v * v, 0) / buf.length);
    };
    const packets = async () => {
      let n = 0;
      (await b.getStats()).forEach((r: any) => { if (r.type === 'inbound-rtp' && r.kind === 'audio') n = r.packetsReceived; });
      return n;
    };
    const attach = async () => {
      const el = new Audio();
      el.muted = true;
      el.srcObject = stream;
      await el.play();
    };
    (window as any).__t = { rms, packets, attach, rxState: () => rx.state };
  });
  const probe = (what: string) => page.evaluate(async (what) => {
    const t = (window as any).__t;
    return what === 'rms' ? t.rms() : what === 'packets' ? t.packets() : t.rxState();
  }, what);
  // A second of audio has arrived (50 packets of 20 ms) with no element playing the track.
  await pollUntil(page, () => probe('packets'), (n) => n >= 50, '50 audio packets received', 15000);
  const without = await probe('rms');
  await page.evaluate(() => (window as any).__t.attach());
  const withEl = await pollUntil(page, () => probe('rms'), (r) => r > 0.05, 'the source node hearing the tone once a muted <audio> plays the track', 10000);
  logLine(`[audio] Chromium loopback: RMS ${without.toFixed(4)} without a media element (context ${await probe('state')}), ${withEl.toFixed(3)} with a muted <audio>`);
});
