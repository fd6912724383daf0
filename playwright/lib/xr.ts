/**
 * Controller aiming for IWER.
 *
 * In IWER (2.5.0, lib/device/XRTrackedInput.js `updateTargetRaySpace`) a controller's
 * `targetRaySpace` is exactly `fromRotationTranslation(controller.quaternion, controller.position)`
 * in IWER's global space, and `local-floor` *is* that global space (XRSession.requestReferenceSpace:
 * a reference space on globalSpace with no offset). Only the grip space is offset from the ray
 * (gripOffsetMatrix). So the pose we set is the ray pose the page reads: origin = position,
 * direction = quaternion applied to (0, 0, -1). tests/harness.spec.ts checks this against a
 * page that reads the pose through the WebXR API.
 */
export interface V3 {
  x: number;
  y: number;
  z: number;
}
export type Quat = [number, number, number, number]; // x, y, z, w

export const v3 = (x: number, y: number, z: number): V3 => ({ x, y, z });
export const add = (a: V3, b: V3): V3 => v3(a.x + b.x, a.y + b.y, a.z + b.z);
export const sub = (a: V3, b: V3): V3 => v3(a.x - b.x, a.y - b.y, a.z - b.z);
export const scale = (a: V3, s: number): V3 => v3(a.x * s, a.y * s, a.z * s);
export const dot = (a: V3, b: V3): number => a.x * b.x + a.y * b.y + a.z * b.z;
export const cross = (a: V3, b: V3): V3 => v3(a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x);
export const len = (a: V3): number => Math.sqrt(dot(a, a));
export const norm = (a: V3): V3 => scale(a, 1 / len(a));
export const dist = (a: V3, b: V3): number => len(sub(a, b));

/** The point at fraction (u right, v down) of a panel given its corners TL, TR, BR, BL. */
export function pointOnPanel(corners: V3[], u: number, v: number): V3 {
  const [tl, tr, , bl] = corners;
  return add(add(tl, scale(sub(tr, tl), u)), scale(sub(bl, tl), v));
}

/** Rotates v by unit quaternion q = [x, y, z, w]. */
export function rotate(q: Quat, v: V3): V3 {
  const [x, y, z, w] = q;
  const u = v3(x, y, z);
  const t = scale(cross(u, v), 2);
  return add(add(v, scale(t, w)), cross(u, t));
}

/** Shortest-arc unit quaternion turning (0, 0, -1) onto `dir`. */
export function quatLookingAlong(dir: V3): Quat {
  const a = v3(0, 0, -1);
  const d = norm(dir);
  const c = dot(a, d);
  if (c < -0.999999) return [0, 1, 0, 0]; // opposite: half turn about +Y
  const ax = cross(a, d);
  const q: Quat = [ax.x, ax.y, ax.z, 1 + c];
  const n = Math.hypot(...q);
  return q.map((e) => e / n) as Quat;
}

/** Pose (position + orientation) of a ray from `origin` through `target`. */
export function aimAt(origin: V3, target: V3): { position: V3; quaternion: Quat } {
  return { position: origin, quaternion: quatLookingAlong(sub(target, origin)) };
}

/** Pointing straight down at the floor (hits no panel of a wall in front of the viewer). */
export const POINT_DOWN: Quat = [-Math.SQRT1_2, 0, 0, Math.SQRT1_2];

/**
 * Init script run in the page before any of its own scripts (after iwer.min.js): a Meta
 * Quest 3 runtime on navigator.xr with both controllers resting low and pointing at the floor,
 * so that no ray touches a panel until a test aims one.
 *
 * With `layers`, IWER's WebXR Layers polyfill (webxr-layers-polyfill 1.1.0) is installed too, as
 * the headset's compositor of layers: `XRWebGLBinding` (projection layers) and `XRMediaBinding`
 * (video quad layers), drawn into the session's layer each frame. Two mends make it behave like
 * the Layers spec (and Quest Browser) where the page relies on it:
 * - IWER 2.5.0's installRuntime replaces the polyfill's `XRWebGLBinding` with its own
 *   depth-sensing-only class (lib/device/XRDevice.js); a headset's has both, so the polyfill's is
 *   put back.
 * - The polyfill draws a quad layer from -width to +width (twice the spec's size: "dimensions
 *   {1,1} refers to 1 meter by 1 meter quad") and reads width/height once, when it first draws
 *   the layer. Each media quad layer's width/height are kept as the page sets them
 *   (`layer.__page`), the polyfill's renderer reads half of them, and a change makes it redraw
 *   the layer's geometry, as a compositor does.
 */
export function iwerInit(opts: { layers?: boolean } = {}): string {
  const layers = !!opts.layers;
  return `(() => {
  if (!window.IWER) throw new Error('iwer.min.js did not define window.IWER');
  const d = new IWER.XRDevice(IWER.metaQuest3);
  const LAYERS = ${layers};
  let layersBinding = null;
  if (LAYERS) {
    let current = window.XRWebGLBinding;
    Object.defineProperty(window, 'XRWebGLBinding', { configurable: true, enumerable: false,
      get: () => current,
      set: (v) => { if (!layersBinding && v && v.prototype && typeof v.prototype.createProjectionLayer === 'function') layersBinding = v; current = v; } });
  }
  d.installRuntime({ forceInstall: true, polyfillLayers: LAYERS });
  if (LAYERS) {
    if (!layersBinding || typeof window.XRMediaBinding !== 'function') throw new Error('iwer: the WebXR Layers polyfill did not install');
    Object.defineProperty(window, 'XRWebGLBinding', { configurable: true, writable: true, enumerable: false, value: layersBinding });
    const MB = window.XRMediaBinding.prototype;
    const createQuad = MB.createQuadLayer;
    MB.createQuadLayer = function (video, init) {
      const layer = createQuad.call(this, video, init);
      const session = this.session;
      const page = { width: layer.width, height: layer.height };
      Object.defineProperty(layer, '__page', { value: page });
      for (const k of ['width', 'height']) {
        Object.defineProperty(layer, k, { configurable: true,
          get: () => page[k] / 2,
          set: (v) => { if (v !== page[k]) { page[k] = v; if (session.renderers) session.renderers.delete(layer); } } });
      }
      return layer;
    };
  }
  for (const [side, x] of [['left', -0.2], ['right', 0.2]]) {
    const c = d.controllers[side];
    c.position.set(x, 0.9, -0.2);
    c.quaternion.set(${POINT_DOWN.join(', ')});
  }
  window.__iwer = d;
  // A pass-through spy (behaviour unchanged): which session mode, features and reference spaces
  // the page asks for.
  const calls = (window.__xrCalls = { sessions: [], refSpaces: [] });
  const xr = navigator.xr;
  const requestSession = xr.requestSession.bind(xr);
  xr.requestSession = (mode, opts) => {
    calls.sessions.push({ mode, opts: JSON.parse(JSON.stringify(opts || {})) });
    return requestSession(mode, opts).then((s) => {
      const rrs = s.requestReferenceSpace.bind(s);
      s.requestReferenceSpace = (type) => { calls.refSpaces.push(type); return rrs(type); };
      return s;
    });
  };
})();`;
}

/** IWER's Quest 3 without the Layers polyfill (`XRMediaBinding` absent, as in a browser without layers). */
export const IWER_INIT = iwerInit();
