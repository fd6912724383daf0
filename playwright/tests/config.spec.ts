/** A broken or missing desktop list shows a readable error (#loco-error, role=alert, __loco.error). */
import { test, expect } from '../lib/fixtures';
import { readLoco } from '../lib/loco';

const whep = (i: number) => `http://127.0.0.1:9/vm/${i}/whep`; // never contacted: the config is refused first
const desk = (i: number) => ({ name: `vm${i}`, whep: whep(i), token: null });

const CASES: { title: string; body: string | null; want: RegExp[] }[] = [
  { title: 'invalid JSON', body: '{"desktops": [ {"name": "vm1", "whep": ', want: [/JSON/i] },
  { title: 'ten desktops (more than 9)', body: JSON.stringify({ desktops: Array.from({ length: 10 }, (_, i) => desk(i + 1)) }), want: [/\b10\b/, /\b9\b/] },
  { title: 'a desktop without "whep"', body: JSON.stringify({ desktops: [desk(1), { name: 'vm2', token: null }] }), want: [/whep/] },
  { title: 'a desktop without "name"', body: JSON.stringify({ desktops: [{ whep: whep(1), token: null }] }), want: [/name/] },
  { title: 'no "desktops" list', body: JSON.stringify({ vms: [desk(1)] }), want: [/desktops/] },
  { title: 'config URL answers 404', body: null, want: [/404|not found|missing-config/i] },
];

for (const c of CASES) {
  test(`config error: ${c.title}`, async ({ server, loco }) => {
    let url: string;
    if (c.body === null) url = `${server.url}/cfg/missing-config.json`;
    else url = server.put(`/cfg/bad-${CASES.indexOf(c)}.json`, c.body, 'application/json');
    await loco.open(`?config=${encodeURIComponent(url)}`);
    const el = loco.page.locator('#loco-error');
    await expect(el, '#loco-error shown').toBeVisible({ timeout: 15000 });
    expect(await el.getAttribute('role'), '#loco-error role').toBe('alert');
    const text = ((await el.textContent()) ?? '').trim();
    const snap = await readLoco(loco.page);
    expect(snap, 'window.__loco').not.toBeNull();
    const err = snap!.error;
    expect(typeof err, `__loco.error is a string (got ${JSON.stringify(err)})`).toBe('string');
    expect((err as string).length).toBeGreaterThan(0);
    expect(text, '#loco-error shows __loco.error').toContain(err as string);
    for (const re of c.want) expect(err as string, `message names the problem (${re})`).toMatch(re);
    console.log(`[config] ${c.title}: ${JSON.stringify(err)}`);
  });
}
