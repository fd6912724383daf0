/** Reading the page's `window.__loco` snapshot and driving the emulated headset. */
import type { Page } from '@playwright/test';
import { Quat, V3 } from './xr';

export interface PanelSnap {
  name: unknown;
  state: unknown;
  framesDecoded: unknown;
  videoWidth: unknown;
  videoHeight: unknown;
  corners: V3[] | unknown;
}

export interface LocoSnap {
  panels: PanelSnap[] | unknown;
  xr: { active: unknown } | unknown;
  focus: unknown;
  error: unknown;
  hud: unknown;
}

/**
 * A plain copy of `window.__loco` (read afresh: the page may replace the object), taking only the
 * contract's fields so that getters and typed arrays read the same as plain objects. Wrong types
 * are copied as they are, for the assertions to report.
 */
export async function readLoco(page: Page): Promise<LocoSnap | null> {
  return page.evaluate(() => {
    const l = (window as unknown as { __loco?: any }).__loco;
    if (!l) return null;
    const copyV = (c: any) => (c && typeof c === 'object' ? { x: c.x, y: c.y, z: c.z } : c);
    const panels = l.panels && typeof l.panels.length === 'number'
      ? Array.from(l.panels as ArrayLike<any>, (p: any) => ({
          name: p?.name,
          state: p?.state,
          framesDecoded: p?.framesDecoded,
          videoWidth: p?.videoWidth,
          videoHeight: p?.videoHeight,
          corners: p?.corners && typeof p.corners.length === 'number' ? Array.from(p.corners as ArrayLike<any>, copyV) : p?.corners,
        }))
      : l.panels;
    return {
      panels,
      xr: l.xr && typeof l.xr === 'object' ? { active: l.xr.active } : l.xr,
      focus: l.focus === undefined ? '<undefined>' : l.focus,
      error: l.error === undefined ? '<undefined>' : l.error,
      hud: l.hud === undefined ? '<undefined>' : l.hud,
    };
  });
}

export function panelsOf(s: LocoSnap | null): PanelSnap[] {
  return s && Array.isArray(s.panels) ? (s.panels as PanelSnap[]) : [];
}

export function summary(s: LocoSnap | null): string {
  if (!s) return 'window.__loco is not defined';
  const ps = panelsOf(s).map((p, i) => `#${i} ${String(p.name)} ${String(p.state)} frames=${String(p.framesDecoded)} ${String(p.videoWidth)}x${String(p.videoHeight)}`);
  return `xr.active=${JSON.stringify((s.xr as { active?: unknown })?.active)} focus=${JSON.stringify(s.focus)} error=${JSON.stringify(s.error)} panels=[${ps.join('; ')}]`;
}

/**
 * Polls the snapshot until `pred` returns something truthy; on timeout the error names `what`
 * and shows the last snapshot, and the page errors seen so far.
 */
export async function waitLoco<T>(
  page: Page,
  pred: (s: LocoSnap) => T,
  what: string,
  timeoutMs: number,
  pageErrors: string[] = [],
): Promise<{ value: NonNullable<T>; snap: LocoSnap; ms: number }> {
  const t0 = Date.now();
  let last: LocoSnap | null = null;
  let lastErr: unknown = null;
  for (;;) {
    try {
      last = await readLoco(page);
      if (last) {
        const v = pred(last);
        if (v) return { value: v as NonNullable<T>, snap: last, ms: Date.now() - t0 };
      }
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() - t0 > timeoutMs) {
      throw new Error(
        `timed out after ${(timeoutMs / 1000).toFixed(0)}s waiting for ${what}\n  last __loco: ${summary(last)}` +
          (lastErr ? `\n  last error: ${String((lastErr as Error).message ?? lastErr)}` : '') +
          (pageErrors.length ? `\n  page errors: ${pageErrors.join(' | ')}` : ''),
      );
    }
    await page.waitForTimeout(100);
  }
}

export const allLive = (n: number) => (s: LocoSnap) => {
  const ps = panelsOf(s);
  return ps.length === n && ps.every((p) => p.state === 'live');
};

/** Frames decoded per panel (NaN where it is not a number). */
export function frames(s: LocoSnap): number[] {
  return panelsOf(s).map((p) => (typeof p.framesDecoded === 'number' ? p.framesDecoded : NaN));
}

export async function setController(page: Page, side: 'left' | 'right', position: V3, quaternion: Quat): Promise<void> {
  await page.evaluate(([side, p, q]) => {
    const c = (window as any).__iwer.controllers[side as string];
    c.position.set(p.x, p.y, p.z);
    c.quaternion.set(q[0], q[1], q[2], q[3]);
  }, [side, position, quaternion] as const);
}

export async function setButton(page: Page, side: 'left' | 'right', id: string, value: number): Promise<void> {
  await page.evaluate(([side, id, value]) => {
    (window as any).__iwer.controllers[side as string].updateButtonValue(id, value);
  }, [side, id, value] as const);
}

export async function setThumbstick(page: Page, side: 'left' | 'right', x: number, y: number): Promise<void> {
  await page.evaluate(([side, x, y]) => {
    (window as any).__iwer.controllers[side as string].updateAxes('thumbstick', x, y);
  }, [side, x, y] as const);
}

/**
 * Waits until the XR session is active and every panel's corners are finite and unchanged over
 * consecutive reads (the wall may be recentred on the headset at session start).
 */
export async function waitXrAndStableCorners(page: Page, n: number, pageErrors: string[] = []): Promise<LocoSnap> {
  let prev = '';
  let stableSince = 0;
  const r = await waitLoco(page, (s) => {
    const active = (s.xr as { active?: unknown })?.active === true;
    const ps = panelsOf(s);
    const ok = active && ps.length === n && ps.every((p) => Array.isArray(p.corners) && p.corners.length === 4 &&
      (p.corners as V3[]).every((c) => [c?.x, c?.y, c?.z].every((e) => typeof e === 'number' && Number.isFinite(e))));
    if (!ok) {
      prev = '';
      return false;
    }
    const key = JSON.stringify(ps.map((p) => p.corners));
    if (key !== prev) {
      prev = key;
      stableSince = Date.now();
      return false;
    }
    return Date.now() - stableSince >= 300;
  }, `xr.active and ${n} panels with 4 finite corners, unchanged for 300 ms`, 20000, pageErrors);
  return r.snap;
}
