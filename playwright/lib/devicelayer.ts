/**
 * A device-like `XRWebGLLayer` for IWER: a test double of a headset's compositor.
 *
 * IWER's own layer has no framebuffer (`framebuffer === null`): a page draws into its canvas and
 * IWER shows that canvas. A headset (Quest Browser) gives the page an *opaque framebuffer* of its
 * own size instead, with one viewport per eye, and composites it after each frame. This init
 * script (run after IWER_INIT) replaces `window.XRWebGLLayer` with a subclass that behaves the
 * way the headset's does, so that the page's framebuffer path runs in the tests:
 *
 * - `framebuffer` is a real WebGL framebuffer: an RGBA8 colour renderbuffer plus a
 *   DEPTH24_STENCIL8 one, `framebufferWidth` x `framebufferHeight` = a per-eye size of its own
 *   (EYE_HEIGHT px high, the eye's aspect of IWER's projection) x 2 eyes, times the layer's
 *   `framebufferScaleFactor` — not the canvas's size. With `samples > 0` (and `antialias` not
 *   false) both are multisampled (`renderbufferStorageMultisample`) and resolved at frame end.
 * - `getViewport(view)` gives the eyes' halves: left eye = left half, right eye = right half.
 * - The framebuffer is opaque: `framebufferTexture2D`, `framebufferRenderbuffer`,
 *   `framebufferTextureLayer`, `getFramebufferAttachmentParameter` while it is bound, and
 *   `deleteFramebuffer` of it, do nothing and raise INVALID_OPERATION (what `getError` returns
 *   next); each attempt is recorded in `__xrLayer.attempts`. `checkFramebufferStatus` on it
 *   outside a frame says FRAMEBUFFER_UNSUPPORTED.
 * - The compositor: the session's `requestAnimationFrame` callbacks are wrapped; before the page's
 *   callback the framebuffer is cleared (colour 0,0,0,0, depth 1, stencil 0); after the frame it
 *   is resolved (multisampled) and blitted, scaled, to the canvas's default framebuffer. GL state
 *   the compositor touches is restored. GL errors left after the page's frame are recorded (phase
 *   `page`), as are the compositor's own (`compositor`) and those before the page's frame
 *   (`runtime`: IWER's own frame-start clear).
 * - `fixedFoveation` exists (starting at 1, so that a page's 0 is seen).
 * - IWER's stereo is turned on (two views).
 *
 * - Under the Layers polyfill the runtime presents the polyfill's own layer (it composites the
 *   session's `layers` into it), not the `baseLayer` the page's render state names: the
 *   compositor works on the runtime's own render state (`_renderState` where the polyfill keeps
 *   it). That polyfill composites in the page's own WebGL context, right after the page's frame
 *   callback, where a headset's compositor has a context of its own: the page's GL state (wgpu
 *   leaves sampler objects bound to texture units, a scissor box, UNPACK_ROW_LENGTH) would reach
 *   it, and its state (UNPACK_FLIP_Y_WEBGL left on) would reach the page. So between the page's
 *   frame and the end of the composite, samplers are unbound, scissor and pixel-unpack state are
 *   GL's defaults, and the page's are put back after.
 *
 * `__xrLayer.mode = 'canvas'` makes layers created afterwards IWER's own (no framebuffer), for
 * comparing both paths in one page. `__xrLayer.capture()` resolves at the end of the next frame
 * with the frame's pixels (`readPixels` of the resolved framebuffer, or of the canvas in canvas
 * mode; rows bottom-up as GL gives them) and its views (eye, viewport, projection and view
 * matrices in the page's `local-floor` space). `__xrLayer.pageMs` holds the main-thread time of
 * the page's frame callbacks (the last 600), in either mode.
 */

export interface XrLayerOptions {
  /** Colour/depth samples of the layer's framebuffer (0 = single-sampled). */
  samples?: number;
  /** Height of one eye's image at framebufferScaleFactor 1 (px). */
  eyeHeight?: number;
  /** 'framebuffer' (default) or 'canvas' (IWER's own layer, with stereo on). */
  mode?: 'framebuffer' | 'canvas';
  /** Install IWER's WebXR Layers polyfill too (lib/xr.ts `iwerInit`): `XRMediaBinding` and
   *  projection layers, composited into the layer the runtime presents. */
  mediaLayers?: boolean;
}

export const EYE_HEIGHT = 900;

export function deviceLayerInit(opts: XrLayerOptions): string {
  const o = { samples: opts.samples ?? 0, eyeHeight: opts.eyeHeight ?? EYE_HEIGHT, mode: opts.mode ?? 'framebuffer', mediaLayers: !!opts.mediaLayers };
  return `(() => {
  const OPTS = ${JSON.stringify(o)};
  const d = window.__iwer;
  if (!d) throw new Error('devicelayer: run IWER_INIT first');
  d.stereoEnabled = true;
  const G = WebGL2RenderingContext.prototype;
  const orig = {};
  for (const k of ['bindFramebuffer', 'framebufferTexture2D', 'framebufferRenderbuffer', 'framebufferTextureLayer',
    'getFramebufferAttachmentParameter', 'deleteFramebuffer', 'checkFramebufferStatus', 'getError']) orig[k] = G[k];
  const st = (window.__xrLayer = {
    opts: OPTS, mode: OPTS.mode, layers: [], attempts: [], glErrors: [], frames: 0, blits: 0,
    inFrame: false, pendingCaptures: [], last: null, session: null, space: null, pageMs: [],
    capture() { return new Promise((resolve, reject) => st.pendingCaptures.push({ resolve, reject })); },
  });
  // Bindings per context, kept by the wrapped bindFramebuffer.
  const bound = new WeakMap();
  const binding = (gl) => { let b = bound.get(gl); if (!b) { b = { draw: null, read: null }; bound.set(gl, b); } return b; };
  const opaque = new WeakMap(); // WebGLFramebuffer -> layer record
  const pending = new WeakMap(); // gl -> [synthetic errors]
  const fbOf = (gl, target) => target === gl.READ_FRAMEBUFFER ? binding(gl).read : binding(gl).draw;
  G.bindFramebuffer = function (target, fb) {
    const b = binding(this);
    if (target === this.FRAMEBUFFER || target === this.DRAW_FRAMEBUFFER) b.draw = fb;
    if (target === this.FRAMEBUFFER || target === this.READ_FRAMEBUFFER) b.read = fb;
    return orig.bindFramebuffer.call(this, target, fb);
  };
  const refuse = (gl, fn, args) => {
    st.attempts.push({ fn, args: args.map((a) => (typeof a === 'number' ? a : String(a))), t: performance.now() });
    let p = pending.get(gl); if (!p) { p = []; pending.set(gl, p); }
    p.push(gl.INVALID_OPERATION);
  };
  for (const fn of ['framebufferTexture2D', 'framebufferRenderbuffer', 'framebufferTextureLayer', 'getFramebufferAttachmentParameter']) {
    G[fn] = function (target, ...rest) {
      const fb = fbOf(this, target);
      if (fb && opaque.has(fb)) { refuse(this, fn, [target, ...rest]); return fn === 'getFramebufferAttachmentParameter' ? null : undefined; }
      return orig[fn].call(this, target, ...rest);
    };
  }
  G.deleteFramebuffer = function (fb) {
    if (fb && opaque.has(fb)) { refuse(this, 'deleteFramebuffer', []); return; }
    const b = binding(this);
    if (b.draw === fb) b.draw = null;
    if (b.read === fb) b.read = null;
    return orig.deleteFramebuffer.call(this, fb);
  };
  G.checkFramebufferStatus = function (target) {
    const fb = fbOf(this, target);
    if (fb && opaque.has(fb) && !st.inFrame) return this.FRAMEBUFFER_UNSUPPORTED;
    return orig.checkFramebufferStatus.call(this, target);
  };
  G.getError = function () {
    const p = pending.get(this);
    if (p && p.length) return p.shift();
    const e = orig.getError.call(this);
    if (e) st.glErrors.push({ phase: 'read by the page', code: e, frame: st.frames });
    return e;
  };
  const drain = (gl, phase) => {
    for (let k = 0; k < 16; k++) {
      const e = orig.getError.call(gl);
      if (!e) break;
      st.glErrors.push({ phase, code: e, frame: st.frames });
    }
  };

  // GL state the compositor changes, saved and restored around its work.
  function save(gl) {
    const b = binding(gl);
    return {
      draw: b.draw, read: b.read, rb: gl.getParameter(gl.RENDERBUFFER_BINDING),
      scissor: gl.isEnabled(gl.SCISSOR_TEST), discard: gl.isEnabled(gl.RASTERIZER_DISCARD),
      mask: gl.getParameter(gl.COLOR_WRITEMASK), depthMask: gl.getParameter(gl.DEPTH_WRITEMASK),
      stencilMask: gl.getParameter(gl.STENCIL_WRITEMASK), clear: gl.getParameter(gl.COLOR_CLEAR_VALUE),
      clearDepth: gl.getParameter(gl.DEPTH_CLEAR_VALUE), clearStencil: gl.getParameter(gl.STENCIL_CLEAR_VALUE),
      packAlign: gl.getParameter(gl.PACK_ALIGNMENT), packBuffer: gl.getParameter(gl.PIXEL_PACK_BUFFER_BINDING),
    };
  }
  function restore(gl, s) {
    gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, s.draw);
    gl.bindFramebuffer(gl.READ_FRAMEBUFFER, s.read);
    gl.bindRenderbuffer(gl.RENDERBUFFER, s.rb);
    (s.scissor ? gl.enable : gl.disable).call(gl, gl.SCISSOR_TEST);
    (s.discard ? gl.enable : gl.disable).call(gl, gl.RASTERIZER_DISCARD);
    gl.colorMask(...s.mask);
    gl.depthMask(s.depthMask);
    gl.stencilMask(s.stencilMask);
    gl.clearColor(...s.clear);
    gl.clearDepth(s.clearDepth);
    gl.clearStencil(s.clearStencil);
    gl.pixelStorei(gl.PACK_ALIGNMENT, s.packAlign);
    gl.bindBuffer(gl.PIXEL_PACK_BUFFER, s.packBuffer);
  }
  function neutral(gl) {
    gl.disable(gl.SCISSOR_TEST);
    gl.disable(gl.RASTERIZER_DISCARD);
    gl.colorMask(true, true, true, true);
    gl.depthMask(true);
    gl.stencilMask(0xff);
  }
  function storage(gl, samples, format, w, h) {
    const rb = gl.createRenderbuffer();
    gl.bindRenderbuffer(gl.RENDERBUFFER, rb);
    if (samples > 0) gl.renderbufferStorageMultisample(gl.RENDERBUFFER, samples, format, w, h);
    else gl.renderbufferStorage(gl.RENDERBUFFER, format, w, h);
    return rb;
  }
  function makeTarget(gl, samples, w, h, depth) {
    const fb = gl.createFramebuffer();
    gl.bindFramebuffer(gl.FRAMEBUFFER, fb);
    const color = storage(gl, samples, gl.RGBA8, w, h);
    orig.framebufferRenderbuffer.call(gl, gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.RENDERBUFFER, color);
    if (depth) {
      const ds = storage(gl, samples, gl.DEPTH24_STENCIL8, w, h);
      orig.framebufferRenderbuffer.call(gl, gl.FRAMEBUFFER, gl.DEPTH_STENCIL_ATTACHMENT, gl.RENDERBUFFER, ds);
    }
    const status = orig.checkFramebufferStatus.call(gl, gl.FRAMEBUFFER);
    if (status !== gl.FRAMEBUFFER_COMPLETE) throw new Error('devicelayer: framebuffer incomplete 0x' + status.toString(16));
    return fb;
  }

  const Base = window.XRWebGLLayer;
  const XRViewport = window.XRViewport;
  class DeviceXRWebGLLayer extends Base {
    constructor(session, gl, init = {}) {
      super(session, gl, init);
      this.__fov = 1;
      this.__dev = null;
      // Canvas mode: IWER's own layer, exactly (no framebuffer, no fixedFoveation).
      if (st.mode !== 'framebuffer') return new Base(session, gl, init);
      const scale = Math.min(2, Math.max(0.2, Number(init.framebufferScaleFactor ?? 1) || 1));
      const eyeAspect = (window.innerWidth / 2) / window.innerHeight;
      const h = Math.round(OPTS.eyeHeight * scale);
      const eyeW = Math.round(h * eyeAspect);
      const w = eyeW * 2;
      const samples = init.antialias === false ? 0 : OPTS.samples;
      const s = save(gl);
      const fb = makeTarget(gl, samples, w, h, true);
      const resolve = samples > 0 ? makeTarget(gl, 0, w, h, false) : null;
      restore(gl, s);
      drain(gl, 'layer setup');
      const dev = { fb, resolve, w, h, eyeW, samples, scale, init: { ...init }, gl };
      opaque.set(fb, dev);
      this.__dev = dev;
      st.layers.push({ width: w, height: h, samples, scale, init: JSON.parse(JSON.stringify(init)) });
    }
    get framebuffer() { return this.__dev ? this.__dev.fb : null; }
    get framebufferWidth() { return this.__dev ? this.__dev.w : super.framebufferWidth; }
    get framebufferHeight() { return this.__dev ? this.__dev.h : super.framebufferHeight; }
    get antialias() { return this.__dev ? this.__dev.samples > 0 : super.antialias; }
    get fixedFoveation() { return this.__fov; }
    set fixedFoveation(v) { this.__fov = v === null ? null : Math.min(1, Math.max(0, Number(v))); }
    getViewport(view) {
      const dev = this.__dev;
      if (!dev) return super.getViewport(view);
      const x = view.eye === 'right' ? dev.eyeW : 0;
      const width = view.eye === 'none' ? dev.w : dev.eyeW;
      return new XRViewport(x, 0, width, dev.h);
    }
  }
  window.XRWebGLLayer = DeviceXRWebGLLayer;

  // The layer the runtime presents (see above).
  const presented = (session) => (session._renderState || session.renderState).baseLayer;

  function beginFrame(session) {
    st.inFrame = true;
    const layer = presented(session);
    const gl = layer && layer.context;
    if (!gl) return;
    drain(gl, 'runtime');
    const dev = layer.__dev;
    if (!dev) return;
    const s = save(gl);
    neutral(gl);
    gl.bindFramebuffer(gl.FRAMEBUFFER, dev.fb);
    gl.clearColor(0, 0, 0, 0);
    gl.clearDepth(1);
    gl.clearStencil(0);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT | gl.STENCIL_BUFFER_BIT);
    restore(gl, s);
    drain(gl, 'compositor');
  }

  function views(session, frame) {
    if (!st.space) return null;
    const pose = frame.getViewerPose(st.space);
    const layer = presented(session);
    if (!pose || !layer) return null;
    return Array.from(pose.views, (v) => {
      const vp = layer.getViewport(v);
      return { eye: v.eye, viewport: { x: vp.x, y: vp.y, width: vp.width, height: vp.height },
        projection: Array.from(v.projectionMatrix), view: Array.from(v.transform.inverse.matrix) };
    });
  }

  function endFrame(session, frameViews) {
    st.inFrame = false;
    const layer = presented(session);
    const gl = layer && layer.context;
    if (!gl) return;
    drain(gl, 'page');
    const dev = layer.__dev;
    const s = save(gl);
    neutral(gl);
    let src = null, w = gl.drawingBufferWidth, h = gl.drawingBufferHeight;
    if (dev) {
      ({ w, h } = dev);
      src = dev.fb;
      if (dev.resolve) {
        gl.bindFramebuffer(gl.READ_FRAMEBUFFER, dev.fb);
        gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, dev.resolve);
        gl.blitFramebuffer(0, 0, w, h, 0, 0, w, h, gl.COLOR_BUFFER_BIT, gl.NEAREST);
        src = dev.resolve;
      }
    }
    const caps = st.pendingCaptures.splice(0);
    if (caps.length) {
      gl.bindFramebuffer(gl.READ_FRAMEBUFFER, src);
      gl.bindBuffer(gl.PIXEL_PACK_BUFFER, null);
      gl.pixelStorei(gl.PACK_ALIGNMENT, 1);
      const data = new Uint8Array(w * h * 4);
      gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, data);
      st.last = { mode: dev ? 'framebuffer' : 'canvas', width: w, height: h, samples: dev ? dev.samples : 0,
        data, views: frameViews, frame: st.frames };
      for (const c of caps) c.resolve(true);
    }
    if (dev) {
      gl.bindFramebuffer(gl.READ_FRAMEBUFFER, src);
      gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, null);
      gl.blitFramebuffer(0, 0, w, h, 0, 0, gl.drawingBufferWidth, gl.drawingBufferHeight, gl.COLOR_BUFFER_BIT, gl.LINEAR);
      st.blits++;
    }
    restore(gl, s);
    drain(gl, 'compositor');
    st.frames++;
  }

  // The layers compositor's own GL state (see above): what it changed, to put back.
  const UNPACK = ['UNPACK_ROW_LENGTH', 'UNPACK_SKIP_ROWS', 'UNPACK_SKIP_PIXELS', 'UNPACK_IMAGE_HEIGHT', 'UNPACK_SKIP_IMAGES',
    'UNPACK_FLIP_Y_WEBGL', 'UNPACK_PREMULTIPLY_ALPHA_WEBGL'];
  const UNPACK_DEFAULT = { UNPACK_FLIP_Y_WEBGL: false, UNPACK_PREMULTIPLY_ALPHA_WEBGL: false };
  function isolate(gl) {
    const units = Math.min(32, gl.getParameter(gl.MAX_COMBINED_TEXTURE_IMAGE_UNITS));
    const active = gl.getParameter(gl.ACTIVE_TEXTURE);
    const samplers = [];
    for (let u = 0; u < units; u++) {
      gl.activeTexture(gl.TEXTURE0 + u);
      samplers.push(gl.getParameter(gl.SAMPLER_BINDING));
      gl.bindSampler(u, null);
    }
    gl.activeTexture(active);
    const unpack = UNPACK.map((k) => gl.getParameter(gl[k]));
    UNPACK.forEach((k) => gl.pixelStorei(gl[k], k in UNPACK_DEFAULT ? UNPACK_DEFAULT[k] : 0));
    const scissor = gl.isEnabled(gl.SCISSOR_TEST);
    gl.disable(gl.SCISSOR_TEST);
    return { samplers, unpack, scissor };
  }
  function unisolate(gl, k) {
    k.samplers.forEach((sm, u) => gl.bindSampler(u, sm));
    UNPACK.forEach((name, i) => gl.pixelStorei(gl[name], k.unpack[i]));
    (k.scissor ? gl.enable : gl.disable).call(gl, gl.SCISSOR_TEST);
  }

  // Every immersive session: its frame callbacks run between beginFrame and endFrame.
  const xr = navigator.xr;
  const requestSession = xr.requestSession.bind(xr);
  xr.requestSession = (mode, opts) => requestSession(mode, opts).then((s) => {
    st.session = s;
    st.space = null;
    XRSession.prototype.requestReferenceSpace.call(s, 'local-floor').then((sp) => { st.space = sp; });
    const raf = s.requestAnimationFrame.bind(s);
    let current = null;
    s.requestAnimationFrame = (cb) => raf((t, frame) => {
      const first = current !== frame;
      if (first) { current = frame; beginFrame(s); }
      const t0 = performance.now();
      try {
        cb(t, frame);
      } finally {
        st.pageMs.push(performance.now() - t0);
        if (st.pageMs.length > 600) st.pageMs.shift();
        if (first) {
          const v = st.pendingCaptures.length ? views(s, frame) : null;
          const layer = OPTS.mediaLayers ? presented(s) : null;
          const gl = layer && layer.context;
          const kept = gl ? isolate(gl) : null;
          queueMicrotask(() => { if (kept) unisolate(gl, kept); endFrame(s, v); });
        }
      }
    });
    s.addEventListener('end', () => { if (st.session === s) st.session = null; });
    return s;
  });
})();`;
}
