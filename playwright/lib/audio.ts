/** Reading the page's sound: `window.__loco.audio` and `window.__loco.audioSpectrum()`. */
import type { Page } from '@playwright/test';

export interface PanelAudio {
  track: boolean;
  muted: boolean;
  gainDb: number;
  playing: boolean;
  /** RMS dBFS after the panel's gain (what is heard of it), null without a track */
  level: number | null;
  /** RMS dBFS of the panel's own sound */
  sourceLevel: number | null;
}

export interface AudioState {
  enabled: boolean;
  context: string | null;
  sampleRate: number | null;
  unfocusedDb: number;
  panels: PanelAudio[];
}

export interface Spectrum {
  sampleRate: number;
  fftSize: number;
  binHz: number;
  context: string;
  /** master output, dB per bin (floored at -120) */
  left: number[];
  right: number[];
  panels: { dominantHz: number | null; dominantDb: number | null; level: number | null }[];
}

export async function readAudio(page: Page): Promise<AudioState | null> {
  return page.evaluate(() => {
    const a = (window as any).__loco?.audio;
    return a ? JSON.parse(JSON.stringify(a)) : null;
  });
}

export async function readSpectrum(page: Page): Promise<Spectrum | null> {
  return page.evaluate(() => {
    const f = (window as any).__loco?.audioSpectrum;
    return typeof f === 'function' ? f() : null;
  });
}

/** The highest level (dB) of a spectrum within ±widthHz of hz. */
export function levelAt(spectrum: number[], binHz: number, hz: number, widthHz = 8): number {
  const lo = Math.max(0, Math.floor((hz - widthHz) / binHz));
  const hi = Math.min(spectrum.length - 1, Math.ceil((hz + widthHz) / binHz));
  let best = -Infinity;
  for (let k = lo; k <= hi; k++) best = Math.max(best, spectrum[k]);
  return best;
}

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
};

/**
 * Polls `read` until `pred` holds for its value; on timeout the error names `what` and shows the
 * last value.
 */
export async function pollUntil<T>(page: Page, read: () => Promise<T>, pred: (v: T) => boolean, what: string, timeoutMs: number): Promise<T> {
  const t0 = Date.now();
  let last: T | undefined;
  for (;;) {
    last = await read();
    if (pred(last)) return last;
    if (Date.now() - t0 > timeoutMs) {
      throw new Error(`timed out after ${(timeoutMs / 1000).toFixed(0)} s waiting for ${what}\n  last: ${JSON.stringify(last, (k, v) => (k === 'left' || k === 'right' ? `[${(v as number[]).length} bins]` : v))}`);
    }
    await page.waitForTimeout(150);
  }
}
