/**
 * Attention-aware streaming (issue 19): the page tells each panel's agent, over the panel's
 * `input` channel, whether the panel is focused, visible or hidden, and the agent's encoder
 * follows. Read back from the real agents (their /healthz `attention`, /metrics), not from a
 * mock: two loco-agents of their own on the rig's Xvnc screens, the real page in the flat view
 * (every panel visible, the clicked one focused) and in VR with IWER's headset turned away from
 * the wall (hidden) and back (a keyframe for coming back into view).
 */
import { test, expect, enterVr, openLive, type Desktop } from '../lib/fixtures';
import type { Page } from '@playwright/test';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Agent } from '../lib/agent';
import { waitUntil } from '../lib/procs';
import type { StaticServer } from '../lib/server';

function configQuery(server: StaticServer, desktops: Desktop[]): string {
  const url = server.putJson(`/cfg/attention-${Date.now()}.json`, { desktops });
  return `?config=${encodeURIComponent(url)}`;
}

/** Waits until every agent's /healthz says the state wanted for its panel. */
async function expectAttention(page: Page, agents: Agent[], want: string[], what: string): Promise<void> {
  let seen: unknown[] = [];
  try {
    await waitUntil(async () => {
      seen = await Promise.all(agents.map(async (a) => (await a.healthz()).body.attention));
      return seen.every((s, i) => s === want[i]);
    }, 10000, what, 50);
  } catch (e) {
    const panels = await page.evaluate(() =>
      (window as any).__loco.panels.map((p: any) => ({ attention: p.attention, sent: p.attentionSent, n: p.attentionMessages, input: p.inputOpen })));
    throw new Error(`${(e as Error).message}: agents say ${JSON.stringify(seen)}, want ${JSON.stringify(want)}; page ${JSON.stringify(panels)}`);
  }
}

/**
 * Waits until every agent's encoder runs at the frame-rate cap wanted for it. The gauge is set by
 * the encoder thread when it takes the new state from its inbox, a moment after /healthz (set
 * where the message arrives) shows it: read at once, it can still say the old cap.
 */
async function expectFpsCap(agents: Agent[], want: (number | null)[], what: string): Promise<void> {
  let seen: number[] = [];
  try {
    await waitUntil(async () => {
      seen = await Promise.all(agents.map((a) => a.metric('loco_encoder_fps_cap', { codec: 'h264' })));
      return seen.every((fps, i) => want[i] === null || fps === want[i]);
    }, 5000, what, 50);
  } catch (e) {
    throw new Error(`${(e as Error).message}: encoder caps ${JSON.stringify(seen)}, want ${JSON.stringify(want)}`);
  }
}

async function pagePanels(page: Page): Promise<{ attention: string; attentionSent: string; attentionMessages: number }[]> {
  return page.evaluate(() => (window as any).__loco.panels.map((p: any) => ({
    attention: p.attention, attentionSent: p.attentionSent, attentionMessages: p.attentionMessages,
  })));
}

test('attention: the page tells each agent focused, visible or hidden; the agents follow (flat view and VR)', async ({ rig, server, loco }) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'loco-pw-attention-'));
  const agents = [
    await Agent.start(dir, 'attention0', rig.screens[0].port),
    await Agent.start(dir, 'attention1', rig.screens[1].port),
  ];
  try {
    await Promise.all(agents.map((a) => a.waitVnc()));
    await openLive(loco, configQuery(server, agents.map((a, i) => ({ name: `att${i}`, whep: a.whep, token: null }))), 2);
    const page = loco.page;

    // Flat view, nothing focused yet: every panel is visible.
    await expectAttention(page, agents, ['visible', 'visible'], 'flat view: both visible');
    expect((await pagePanels(page)).map((p) => [p.attention, p.attentionSent])).toEqual([['visible', 'visible'], ['visible', 'visible']]);
    await expectFpsCap(agents, [12, 12], 'flat view: both at the visible cap');

    // A click on panel 1 focuses it; panel 0 stays visible.
    const sp = await page.evaluate(() => (window as any).__loco.screenPoint(1, 0.5, 0.5));
    expect(sp, 'panel 1 on the screen').toBeTruthy();
    await page.mouse.click(Math.round(sp.x), Math.round(sp.y));
    await expectAttention(page, agents, ['visible', 'focused'], 'flat view: panel 1 focused');
    await expectFpsCap(agents, [null, 30], 'flat view: panel 1 at the focused cap');
    expect(await agents[1].metric('loco_attention_messages_total', { state: 'focused' })).toBe(1);

    // VR: looking at the wall, the same.
    await enterVr(loco, 2);
    await expectAttention(page, agents, ['visible', 'focused'], 'VR: looking at the wall');
    const keyframes0 = await Promise.all(agents.map((a) => a.metric('loco_keyframe_requests_total', { cause: 'attention' })));

    // Turned round: the wall is out of view, both hidden (after the 300 ms hold).
    const q0 = await page.evaluate(() => { const q = (window as any).__iwer.quaternion; return [q.x, q.y, q.z, q.w]; });
    await page.evaluate(() => (window as any).__iwer.quaternion.set(0, 1, 0, 0));
    await expectAttention(page, agents, ['hidden', 'hidden'], 'VR: turned away');
    expect((await pagePanels(page)).map((p) => p.attention)).toEqual(['hidden', 'hidden']);
    await expectFpsCap(agents, [1, 1], 'VR: both at the hidden cap');

    // Back: visible and focused again, and each agent asked its encoder for a keyframe.
    await page.evaluate((q) => (window as any).__iwer.quaternion.set(q[0], q[1], q[2], q[3]), q0);
    await expectAttention(page, agents, ['visible', 'focused'], 'VR: looking back');
    const keyframes1 = await Promise.all(agents.map((a) => a.metric('loco_keyframe_requests_total', { cause: 'attention' })));
    keyframes1.forEach((k, i) => expect(k, `agent ${i}: keyframe requests for coming back into view`).toBeGreaterThan(keyframes0[i]));

    // Changes only: a handful of messages over all this, not one per frame.
    const sent = (await pagePanels(page)).map((p) => p.attentionMessages);
    const counted = await Promise.all(agents.map((a) => a.metric('loco_attention_messages_total')));
    expect(counted).toEqual(sent);
    sent.forEach((n) => expect(n).toBeLessThanOrEqual(6));
    console.log(`[attention] messages sent per panel: ${sent.join(', ')}; keyframes for coming back: ${keyframes1.map((k, i) => k - keyframes0[i]).join(', ')}`);
  } finally {
    await Promise.all(agents.map((a) => a.stop()));
  }
});
