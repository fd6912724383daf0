/**
 * The QEMU test-pattern guest of packer/testpattern (1024x768, full-screen patterns changing
 * every 0.5 s). The QEMU command line comes from testguest.py itself (one description of how
 * the guest boots: PVH kernel, KVM only when usable, TCG otherwise).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LOCO_CACHE, Proc, ProcessExited, REPO, freePort, isExecutable, killGroup, portAccepts, requireTools, run, spawnGroup, tail, waitUntil } from './procs';

const GUEST_DIR = path.join(REPO, 'packer', 'testpattern');
const READY_MARKER = 'LOCO-TESTGUEST: READY';

function python(): string {
  const venv = path.join(LOCO_CACHE, 'venv', 'bin', 'python');
  return isExecutable(venv) ? venv : 'python3';
}

export class QemuGuest {
  private constructor(
    readonly port: number,
    readonly proc: Proc,
    readonly logPath: string,
    readonly serialPath: string,
    readonly bootSeconds: number,
  ) {}

  /**
   * opts.audio: an ES1370 sound card whose output QEMU's VNC server offers to the agent (audiodev
   * "none", `-vnc ...,audiodev=snd0`). opts.tone (needs audio): what the guest plays, HZ
   * (continuous) or [HZ, ON_MS, OFF_MS] (bursts); its serial log says `LOCO-TONE: on HZ` right
   * before each burst and `LOCO-TONE: off` after it (see testguest.py). No opts: no sound card.
   * opts.qmp: a QMP socket path (`-qmp unix:PATH,server=on,wait=off`) and `-no-shutdown` instead
   * of `-no-reboot`, for VM control (a QMP reset reboots the guest instead of ending QEMU).
   * opts.serialName: the serial log's file name in workdir (a second guest needs its own).
   */
  static async start(workdir: string, opts?: { audio?: boolean; tone?: [number, number, number] | number; qmp?: string; serialName?: string }): Promise<QemuGuest> {
    requireTools({ 'qemu-system-x86_64': 'qemu-system-x86', busybox: 'busybox-static' });
    if (!fs.existsSync(path.join(GUEST_DIR, 'testguest.py'))) {
      throw new Error(`${GUEST_DIR}/testguest.py is missing: the QEMU test-pattern guest is needed for video`);
    }
    let port = await freePort(5900);
    while (port < 5900) port = await freePort(5900);
    const serial = path.join(workdir, opts?.serialName ?? 'qemu-serial.log');
    const log = path.join(workdir, (opts?.serialName ?? 'qemu-serial.log').replace('-serial', ''));
    // build() is cached (recipe hash); the first build takes a few seconds.
    // sys.argv[4]: JSON of the sound options ({} = none), passed as qemu_command(audio=, tone=).
    const sound: { audio?: boolean; tone?: [number, number, number] | number; qmp?: string; no_shutdown?: boolean } = {};
    if (opts?.audio) sound.audio = true;
    if (opts?.tone !== undefined) sound.tone = opts.tone;
    if (opts?.qmp) {
      sound.qmp = `unix:${opts.qmp},server=on,wait=off`;
      sound.no_shutdown = true;
    }
    const script =
      'import json, sys; sys.path.insert(0, sys.argv[1]); import testguest as t; p = t.build(); ' +
      'print(json.dumps([str(a) for a in t.qemu_command(p, vnc_port=int(sys.argv[2]), serial_log=sys.argv[3], ' +
      '**json.loads(sys.argv[4]))]))';
    let argv: string[];
    try {
      const out = await run([python(), '-c', script, GUEST_DIR, String(port), serial, JSON.stringify(sound)], { timeoutMs: 300000 });
      argv = JSON.parse(out.trim().split('\n').pop() as string);
    } catch (e) {
      throw new Error(`building / describing the test-pattern guest failed: ${(e as Error).message}`);
    }
    fs.writeFileSync(log, `$ ${argv.join(' ')}\n`);
    const t0 = Date.now();
    const proc = spawnGroup(argv, { logPath: log, name: 'qemu' });
    try {
      await waitUntil(async () => {
        if (proc.exitCode() !== undefined) throw new ProcessExited(`QEMU exited rc=${proc.exitCode()}`);
        return (await portAccepts(port)) && fs.existsSync(serial) && fs.readFileSync(serial, 'utf8').includes(READY_MARKER);
      }, 150000, `QEMU guest: VNC port ${port} and ${READY_MARKER} on its serial console`);
    } catch (e) {
      await killGroup(proc);
      throw new Error(`${(e as Error).message}\n--- QEMU log ---\n${tail(log)}\n--- serial ---\n${tail(serial)}`);
    }
    return new QemuGuest(port, proc, log, serial, (Date.now() - t0) / 1000);
  }

  /** The guest's serial console so far (`LOCO-TESTGUEST: ...`, `LOCO-TONE: on HZ` / `off`). */
  serial(): string {
    return fs.existsSync(this.serialPath) ? fs.readFileSync(this.serialPath, 'utf8') : '';
  }

  async stop(): Promise<void> {
    await killGroup(this.proc, 'SIGTERM', 3000);
  }
}
