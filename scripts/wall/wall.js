// loco's flat view: up to nine desktops in a grid, each a WHEP session with one loco-agent.
//
// desktops.json (next to this page, or ?desktops=URL) lists them:
//   {"desktops":[{"name":"vm1","whep":"http://HOST:8001/whep","token":null}, ...]}
// Each panel plays the agent's video track and sends pointer and key events back on the
// `input` data channel (docs/protocol.md). Plain JavaScript, no build step.
// window.__wall exposes each panel's state for tests.
// The page's access key (`./loco up` off loopback prints the URL with #key=...): taken from the
// fragment (which never reaches a server), kept in localStorage for the origin, sent by every
// desktop without a token of its own; a refused key (401) locks the panel (no retries) and shows
// the key form.
"use strict";

(() => {
  const MAX_PANELS = 9;
  const GATHER_TIMEOUT_MS = 5000;    // non-trickle: wait this long at most for ICE gathering
  const POST_TIMEOUT_MS = 10000;     // WHEP POST
  const CONNECT_TIMEOUT_MS = 20000;  // answer set -> ICE/DTLS connected
  const DISCONNECTED_GRACE_MS = 5000;
  const BACKOFF_MIN_MS = 1000, BACKOFF_MAX_MS = 15000;
  const STABLE_MS = 10000;           // live this long -> the backoff starts again from the minimum
  const WHEEL_STEP_PX = 50;
  const KEY_STORAGE = "loco.key";
  const KEY_RE = /^[A-Za-z0-9._~-]{1,256}$/;

  // ------------------------------------------------------------------ the page's key

  function pageKey() {
    const parts = location.hash.replace(/^#/, "").split("&").filter((x) => x);
    const given = parts.filter((x) => x.startsWith("key=")).map((x) => x.slice(4).trim()).find((k) => KEY_RE.test(k));
    if (given) {
      try { localStorage.setItem(KEY_STORAGE, given); } catch (e) { /* storage off: keep it for this visit */ }
      const rest = parts.filter((x) => !x.startsWith("key="));
      history.replaceState(null, "", location.pathname + location.search + (rest.length ? "#" + rest.join("&") : ""));
      return given;
    }
    let kept = null;
    try { kept = localStorage.getItem(KEY_STORAGE); } catch (e) { /* storage off */ }
    return kept && KEY_RE.test(kept) ? kept : null;
  }

  // ------------------------------------------------------------------ keys -> X11 keysyms

  // By KeyboardEvent.code where the side matters, then by KeyboardEvent.key.
  const KEYSYM_BY_CODE = {
    ShiftLeft: 0xffe1, ShiftRight: 0xffe2, ControlLeft: 0xffe3, ControlRight: 0xffe4,
    AltLeft: 0xffe9, AltRight: 0xffea,
    // The Windows / Command key is Super in X11 (QEMU sends it as the Windows key).
    MetaLeft: 0xffeb, MetaRight: 0xffec, OSLeft: 0xffeb, OSRight: 0xffec,
    NumpadEnter: 0xff8d,
  };
  const KEYSYM_BY_KEY = {
    Enter: 0xff0d, Backspace: 0xff08, Tab: 0xff09, Escape: 0xff1b, Esc: 0xff1b,
    ArrowLeft: 0xff51, ArrowUp: 0xff52, ArrowRight: 0xff53, ArrowDown: 0xff54,
    Left: 0xff51, Up: 0xff52, Right: 0xff53, Down: 0xff54,
    Home: 0xff50, End: 0xff57, PageUp: 0xff55, PageDown: 0xff56,
    Delete: 0xffff, Del: 0xffff, Insert: 0xff63,
    Shift: 0xffe1, Control: 0xffe3, Alt: 0xffe9, Meta: 0xffeb, OS: 0xffeb, Super: 0xffeb,
    AltGraph: 0xfe03, CapsLock: 0xffe5, NumLock: 0xff7f, ScrollLock: 0xff14,
    Pause: 0xff13, PrintScreen: 0xff61, ContextMenu: 0xff67, Apps: 0xff67,
  };
  for (let i = 1; i <= 24; i++) KEYSYM_BY_KEY["F" + i] = 0xffbe + i - 1;  // F1 0xffbe ... F12 0xffc9

  // The X11 keysym for a KeyboardEvent (or {key, code}), or null when it has none.
  function keysymFor(ev) {
    const key = ev.key, code = ev.code || "";
    if (key === "AltGraph") return KEYSYM_BY_KEY.AltGraph;
    if (Object.prototype.hasOwnProperty.call(KEYSYM_BY_CODE, code)) {
      // Modifier keys by their side; a NumpadEnter is KP_Enter.
      if (/^(Shift|Control|Alt|Meta|OS)/.test(code) || code === "NumpadEnter") return KEYSYM_BY_CODE[code];
    }
    if (typeof key !== "string" || key === "" || key === "Dead" || key === "Unidentified" || key === "Process") {
      return null;
    }
    if (Object.prototype.hasOwnProperty.call(KEYSYM_BY_KEY, key)) return KEYSYM_BY_KEY[key];
    const cps = Array.from(key);
    if (cps.length !== 1) return null;  // a named key we do not know
    const cp = cps[0].codePointAt(0);
    if ((cp >= 0x20 && cp <= 0x7e) || (cp >= 0xa0 && cp <= 0xff)) return cp;  // Latin-1: keysym == code point
    if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0)) return null;  // control characters
    return 0x01000000 + cp;  // any other Unicode character
  }

  // ------------------------------------------------------------------ pointer mapping

  // DOM MouseEvent.buttons (1 left, 2 right, 4 middle) -> RFB mask (1 left, 2 middle, 4 right).
  function rfbButtons(domButtons) {
    return (domButtons & 1) | ((domButtons & 4) ? 2 : 0) | ((domButtons & 2) ? 4 : 0);
  }

  // One object-position component ("50%", "12px", "calc(...)": falls back to centre).
  function positionOffset(s, free) {
    s = (s || "").trim();
    if (s.endsWith("%")) return (parseFloat(s) / 100) * free;
    if (s.endsWith("px")) return parseFloat(s);
    if (s === "left" || s === "top") return 0;
    if (s === "right" || s === "bottom") return free;
    return free / 2;
  }

  // Where the video's pixels are drawn inside the element, honouring object-fit/object-position.
  function videoContentBox(video) {
    const vw = video.videoWidth, vh = video.videoHeight;
    if (!vw || !vh) return null;
    const r = video.getBoundingClientRect();
    const cs = getComputedStyle(video);
    const px = (v) => parseFloat(v) || 0;
    const left = r.left + px(cs.borderLeftWidth) + px(cs.paddingLeft);
    const top = r.top + px(cs.borderTopWidth) + px(cs.paddingTop);
    const W = r.width - px(cs.borderLeftWidth) - px(cs.borderRightWidth) - px(cs.paddingLeft) - px(cs.paddingRight);
    const H = r.height - px(cs.borderTopWidth) - px(cs.borderBottomWidth) - px(cs.paddingTop) - px(cs.paddingBottom);
    if (W <= 0 || H <= 0) return null;
    let sx, sy;
    switch (cs.objectFit) {
      case "fill": sx = W / vw; sy = H / vh; break;
      case "cover": sx = sy = Math.max(W / vw, H / vh); break;
      case "none": sx = sy = 1; break;
      case "scale-down": sx = sy = Math.min(1, W / vw, H / vh); break;
      default: sx = sy = Math.min(W / vw, H / vh); break;  // contain (the default for <video>)
    }
    const pos = (cs.objectPosition || "50% 50%").split(/\s+/);
    const ox = positionOffset(pos[0], W - vw * sx), oy = positionOffset(pos[1] || pos[0], H - vh * sy);
    return { left: left + ox, top: top + oy, sx, sy, vw, vh };
  }

  // Client coordinates -> desktop pixel {x, y, inside}, or null without a video frame.
  function toDesktop(video, clientX, clientY) {
    const b = videoContentBox(video);
    if (!b) return null;
    const fx = (clientX - b.left) / b.sx, fy = (clientY - b.top) / b.sy;
    const inside = fx >= 0 && fy >= 0 && fx < b.vw && fy < b.vh;
    const x = Math.min(b.vw - 1, Math.max(0, Math.floor(fx)));
    const y = Math.min(b.vh - 1, Math.max(0, Math.floor(fy)));
    return { x, y, inside };
  }

  // ------------------------------------------------------------------ WHEP helpers

  function waitGathering(pc, ms) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { clearTimeout(t); pc.removeEventListener("icegatheringstatechange", on); resolve(); };
      const on = () => { if (pc.iceGatheringState === "complete") done(); };
      const t = setTimeout(done, ms);
      pc.addEventListener("icegatheringstatechange", on);
    });
  }

  async function fetchWithTimeout(url, opts, ms) {
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), ms);
    try {
      return await fetch(url, Object.assign({}, opts, { signal: ctl.signal }));
    } catch (e) {
      if (e && e.name === "AbortError") throw new Error(`no answer from ${url} in ${ms / 1000} s`);
      throw new Error(`cannot reach ${url} (${(e && e.message) || e})`);
    } finally {
      clearTimeout(t);
    }
  }

  // ------------------------------------------------------------------ one panel

  let focusedPanel = null;

  class Panel {
    constructor(desk, index, grid) {
      this.desk = desk;
      this.index = index;
      this.st = {
        name: desk.name, whep: desk.whep, state: "connecting", error: null, attempts: 0, sessions: 0,
        connectionState: "new", dcState: "none", framesDecoded: 0, framesPerSecond: 0,
        videoWidth: 0, videoHeight: 0, codec: null, retryInMs: 0, sent: 0, lastSent: null, focused: false,
      };
      this.gen = 0;
      this.pc = null; this.dc = null; this.location = null;
      this.timers = new Set();
      this.backoffMs = 0;
      this.mask = 0;
      this.last = null;           // last pointer position sent {x, y}
      this.wheelAcc = { x: 0, y: 0 };
      this.keysDown = new Map();  // KeyboardEvent.code -> keysym sent on keydown
      this.build(grid);
    }

    build(grid) {
      const el = this.el = document.createElement("div");
      el.className = "panel";
      el.tabIndex = 0;
      el.dataset.index = String(this.index);
      el.setAttribute("aria-label", `desktop ${this.desk.name}`);
      const v = this.video = document.createElement("video");
      v.muted = true; v.autoplay = true; v.playsInline = true; v.disablePictureInPicture = true;
      const cap = document.createElement("div");
      cap.className = "caption";
      cap.innerHTML = '<span class="dot"></span><span class="name"></span><span class="detail"></span>';
      cap.querySelector(".name").textContent = this.desk.name;
      this.detailEl = cap.querySelector(".detail");
      const ov = this.overlayEl = document.createElement("div");
      ov.className = "overlay";
      el.append(v, cap, ov);
      grid.append(el);
      this.bindInput();
      this.render();
    }

    setState(state, error) {
      this.st.state = state;
      if (error !== undefined) this.st.error = error ? String(error.message || error) : null;
      this.el.dataset.state = state;
      this.render();
    }

    render() {
      const s = this.st;
      let detail = s.state;
      if (s.state === "live") {
        if (s.videoWidth) detail += ` · ${s.videoWidth}×${s.videoHeight}`;
        if (s.codec) detail += ` · ${s.codec.replace(/^video\//i, "")}`;
        if (s.framesPerSecond) detail += ` · ${Math.round(s.framesPerSecond)} fps`;
      } else if (s.state === "down" && s.retryInMs) {
        detail += ` · retry in ${Math.ceil(s.retryInMs / 1000)} s`;
      }
      this.detailEl.textContent = detail;
      this.overlayEl.textContent = (s.state === "down" || s.state === "locked") ? (s.error || s.state)
        : s.state === "connecting" ? `connecting to ${s.whep} …` : "";
    }

    timer(fn, ms) {
      const t = setTimeout(() => { this.timers.delete(t); fn(); }, ms);
      this.timers.add(t);
      return t;
    }

    clearTimers() {
      for (const t of this.timers) clearTimeout(t);
      this.timers.clear();
      if (this.statsTimer) { clearInterval(this.statsTimer); this.statsTimer = null; }
    }

    headers(extra) {
      const h = Object.assign({}, extra || {});
      const token = this.desk.token || wall.key;
      if (token) h.Authorization = "Bearer " + token;
      return h;
    }

    // GET /ice beside /whep: [] when the agent has none to give (404/405), null when the key was
    // refused (the panel is locked then).
    async agentIceServers(gen) {
      const url = this.desk.whep.replace(/\/whep(?=$|[?#])/, "/ice");
      if (url === this.desk.whep) return [];
      const res = await fetchWithTimeout(url, { headers: this.headers(), cache: "no-store" }, POST_TIMEOUT_MS);
      if (res.status === 401) {
        this.lock(gen, (this.desk.token || wall.key) ? "401: the agent refused the key" : "401: the agent wants a key");
        return null;
      }
      if (res.status === 404 || res.status === 405) return [];
      const body = await res.text();
      if (!res.ok) throw new Error(`GET ${url} answered ${res.status}: ${body.trim().slice(0, 200)}`);
      const j = JSON.parse(body);
      if (!j || !Array.isArray(j.iceServers)) throw new Error(`GET ${url}: no iceServers list`);
      return j.iceServers;
    }

    async connect() {
      const gen = ++this.gen;
      this.clearTimers();
      this.st.attempts++;
      this.st.retryInMs = 0;
      Object.assign(this.st, { framesDecoded: 0, framesPerSecond: 0, videoWidth: 0, videoHeight: 0, codec: null });
      this.setState("connecting");
      try {
        // The agent's ICE servers first (TURN credentials minted for this session), then the page's.
        const agentIce = await this.agentIceServers(gen);
        if (agentIce === null || gen !== this.gen) return;
        const pc = this.pc = new RTCPeerConnection({ iceServers: agentIce.concat(this.desk.iceServers || []) });
        pc.addTransceiver("video", { direction: "recvonly" });
        const dc = this.dc = pc.createDataChannel("input", { ordered: true });
        this.st.dcState = dc.readyState;
        dc.addEventListener("open", () => { if (gen === this.gen) { this.st.dcState = "open"; } });
        dc.addEventListener("close", () => { if (gen === this.gen) { this.st.dcState = "closed"; } });
        pc.addEventListener("track", (ev) => {
          if (gen !== this.gen) return;
          this.video.srcObject = (ev.streams && ev.streams[0]) || new MediaStream([ev.track]);
          this.video.play().catch(() => { /* autoplay of a muted video: retried on the next click */ });
        });
        pc.addEventListener("connectionstatechange", () => this.onConnectionState(gen));
        await pc.setLocalDescription(await pc.createOffer());
        await waitGathering(pc, GATHER_TIMEOUT_MS);
        if (gen !== this.gen) return;
        const res = await fetchWithTimeout(this.desk.whep, {
          method: "POST", headers: this.headers({ "Content-Type": "application/sdp" }), body: pc.localDescription.sdp,
        }, POST_TIMEOUT_MS);
        const body = await res.text();
        if (gen !== this.gen) return;
        if (res.status === 401) {
          this.lock(gen, (this.desk.token || wall.key) ? "the agent refused the key" : "the agent wants a key");
          return;
        }
        if (res.status !== 201) throw new Error(`WHEP answered ${res.status}: ${body.trim().slice(0, 200)}`);
        const loc = res.headers.get("Location");
        this.location = loc ? new URL(loc, this.desk.whep).toString() : null;
        await pc.setRemoteDescription({ type: "answer", sdp: body });
        this.st.sessions++;
        this.timer(() => {
          if (gen === this.gen && this.pc && this.pc.connectionState !== "connected") {
            this.fail(gen, new Error("the connection did not come up in time"));
          }
        }, CONNECT_TIMEOUT_MS);
        this.statsTimer = setInterval(() => this.pollStats(gen), 500);
      } catch (e) {
        this.fail(gen, e);
      }
    }

    onConnectionState(gen) {
      if (gen !== this.gen || !this.pc) return;
      const s = this.st.connectionState = this.pc.connectionState;
      if (s === "connected") {
        this.clearTimers();
        this.statsTimer = setInterval(() => this.pollStats(gen), 500);
        this.setState("live", null);
        this.timer(() => { this.backoffMs = 0; }, STABLE_MS);
      } else if (s === "disconnected") {
        this.timer(() => {
          if (gen === this.gen && this.pc && this.pc.connectionState !== "connected") {
            this.fail(gen, new Error("connection lost"));
          }
        }, DISCONNECTED_GRACE_MS);
      } else if (s === "failed") {
        this.fail(gen, new Error("connection failed"));
      } else if (s === "closed") {
        this.fail(gen, new Error("connection closed"));
      }
    }

    async pollStats(gen) {
      if (gen !== this.gen || !this.pc) return;
      const s = this.st;
      s.videoWidth = this.video.videoWidth;
      s.videoHeight = this.video.videoHeight;
      try {
        const stats = await this.pc.getStats();
        stats.forEach((r) => {
          if (r.type === "inbound-rtp" && r.kind === "video") {
            s.framesDecoded = r.framesDecoded || 0;
            s.framesPerSecond = r.framesPerSecond || 0;
            if (r.codecId && stats.get(r.codecId)) s.codec = stats.get(r.codecId).mimeType;
          }
        });
      } catch (e) { /* closed meanwhile */ }
      if (gen === this.gen) this.render();
    }

    teardown() {
      this.clearTimers();
      this.releaseAll();
      if (this.location) {
        // Tell the agent at once instead of letting ICE time out (best effort).
        fetch(this.location, { method: "DELETE", headers: this.headers(), keepalive: true }).catch(() => {});
        this.location = null;
      }
      if (this.pc) { try { this.pc.close(); } catch (e) { /* already */ } }
      this.pc = null; this.dc = null;
      this.st.dcState = "none";
      this.st.connectionState = "closed";
      this.video.srcObject = null;
      this.st.framesPerSecond = 0;
    }

    // The key was refused: no retries (each would cost this address one of the agent's few
    // tries a minute) until a new key is given.
    lock(gen, why) {
      if (gen !== this.gen) return;
      this.gen++;
      this.teardown();
      this.backoffMs = 0;
      this.st.retryInMs = 0;
      this.setState("locked", new Error(why));
      showKeyForm();
    }

    fail(gen, err) {
      if (gen !== this.gen) return;
      this.gen++;  // anything still running for that session is now stale
      this.teardown();
      this.backoffMs = this.backoffMs ? Math.min(BACKOFF_MAX_MS, this.backoffMs * 2) : BACKOFF_MIN_MS;
      const delay = Math.round(this.backoffMs * (0.8 + 0.4 * Math.random()));
      this.st.retryInMs = delay;
      this.setState("down", err);
      console.warn(`loco: ${this.desk.name}: ${this.st.error}; retrying in ${delay} ms`);
      const retryAt = Date.now() + delay;
      const tick = () => {
        this.st.retryInMs = Math.max(0, retryAt - Date.now());
        this.render();
        if (this.st.retryInMs > 0) this.timer(tick, Math.min(1000, this.st.retryInMs));
        else this.connect();
      };
      this.timer(tick, Math.min(1000, delay));
    }

    // ---------------------------------------------------------------- input

    send(obj) {
      if (!this.dc || this.dc.readyState !== "open") return false;
      this.dc.send(JSON.stringify(obj));
      this.st.sent++;
      this.st.lastSent = obj;
      return true;
    }

    sendPointer(x, y, buttons) {
      if (this.last && this.last.x === x && this.last.y === y && this.last.buttons === buttons) return;
      if (this.send({ type: "pointer", x, y, buttons })) this.last = { x, y, buttons };
    }

    pointerAt(ev) {
      const p = toDesktop(this.video, ev.clientX, ev.clientY);
      return p;
    }

    releaseAll() {
      // Nothing may stay pressed in the VM when this panel loses focus or its session.
      for (const keysym of this.keysDown.values()) this.send({ type: "key", keysym, down: false });
      this.keysDown.clear();
      if (this.mask && this.last) this.sendPointer(this.last.x, this.last.y, 0);
      this.mask = 0;
    }

    bindInput() {
      const v = this.video, el = this.el;
      el.addEventListener("focus", () => {
        if (focusedPanel && focusedPanel !== this) focusedPanel.el.blur();
        focusedPanel = this;
        this.st.focused = true;
        wall.focused = this.index;
      });
      el.addEventListener("blur", () => {
        this.releaseAll();
        this.st.focused = false;
        if (focusedPanel === this) { focusedPanel = null; wall.focused = null; }
      });

      v.addEventListener("pointerdown", (ev) => {
        ev.preventDefault();
        if (document.activeElement !== el) el.focus({ preventScroll: true });
        if (v.paused && v.srcObject) v.play().catch(() => {});
        try { v.setPointerCapture(ev.pointerId); } catch (e) { /* not capturable */ }
        const p = this.pointerAt(ev);
        if (!p) return;
        this.mask = rfbButtons(ev.buttons);
        this.sendPointer(p.x, p.y, this.mask);
      });
      v.addEventListener("pointermove", (ev) => {
        const p = this.pointerAt(ev);
        if (!p) return;
        // Outside the picture (letterbox bars) only a drag keeps going, clamped to the edge.
        const mask = rfbButtons(ev.buttons);
        if (!p.inside && !mask && !this.mask) return;
        this.mask = mask;
        this.sendPointer(p.x, p.y, mask);
      });
      const up = (ev) => {
        const p = this.pointerAt(ev);
        this.mask = ev.type === "pointercancel" ? 0 : rfbButtons(ev.buttons);
        if (p) this.sendPointer(p.x, p.y, this.mask);
        else if (this.last) this.sendPointer(this.last.x, this.last.y, this.mask);
      };
      v.addEventListener("pointerup", up);
      v.addEventListener("pointercancel", up);
      v.addEventListener("contextmenu", (ev) => ev.preventDefault());
      v.addEventListener("dragstart", (ev) => ev.preventDefault());
      v.addEventListener("wheel", (ev) => {
        const p = this.pointerAt(ev);
        if (!p) return;
        ev.preventDefault();
        const unit = ev.deltaMode === 1 ? 40 : ev.deltaMode === 2 ? 800 : 1;  // lines, pages -> px
        this.wheelAcc.x += ev.deltaX * unit;
        this.wheelAcc.y += ev.deltaY * unit;
        const base = rfbButtons(ev.buttons);
        const steps = (acc, neg, pos) => {
          if (Math.abs(acc) < WHEEL_STEP_PX) return acc;
          const n = Math.max(1, Math.min(10, Math.round(Math.abs(acc) / (2 * WHEEL_STEP_PX))));
          const bit = acc < 0 ? neg : pos;
          for (let i = 0; i < n; i++) {  // a wheel "click" is a press then a release
            this.last = null;
            this.sendPointer(p.x, p.y, base | bit);
            this.sendPointer(p.x, p.y, base);
          }
          return 0;
        };
        this.wheelAcc.y = steps(this.wheelAcc.y, 8, 16);   // up 8, down 16
        this.wheelAcc.x = steps(this.wheelAcc.x, 32, 64);  // left 32, right 64
      }, { passive: false });

      el.addEventListener("keydown", (ev) => {
        if (ev.isComposing) return;
        const keysym = keysymFor(ev);
        if (keysym === null) return;
        ev.preventDefault();
        this.keysDown.set(ev.code || ev.key, keysym);
        this.send({ type: "key", keysym, down: true });
      });
      el.addEventListener("keyup", (ev) => {
        if (ev.isComposing) return;
        const id = ev.code || ev.key;
        // Release what went down (the key may read differently now, e.g. 'a' pressed, 'A' released);
        // a key that went down before this panel had focus was never sent, so neither is its release.
        const keysym = this.keysDown.get(id);
        if (keysym === undefined) {
          if (keysymFor(ev) !== null) ev.preventDefault();
          return;
        }
        ev.preventDefault();
        this.keysDown.delete(id);
        this.send({ type: "key", keysym, down: false });
      });
    }
  }

  // ------------------------------------------------------------------ the page

  const wall = window.__wall = {
    ready: false, error: null, desktops: [], panels: [], focused: null, key: null,
    keysymFor, rfbButtons, toDesktop,
    // Test hook: send an input message on panel i's data channel.
    send: (i, obj) => panels[i].send(obj),
  };
  const panels = [];
  const grid = document.getElementById("grid");

  function layout() {
    const n = Math.max(1, panels.length);
    const W = grid.clientWidth, H = grid.clientHeight;
    let best = { cols: 1, score: -1 };
    for (let cols = 1; cols <= n; cols++) {
      const rows = Math.ceil(n / cols);
      const cw = W / cols, ch = H / rows;
      const score = Math.min(cw / 4, ch / 3);  // size of a 4:3 desktop in a cell
      if (score > best.score + 1e-6) best = { cols, rows, score };
    }
    grid.style.gridTemplateColumns = `repeat(${best.cols}, minmax(0, 1fr))`;
    grid.style.gridTemplateRows = `repeat(${best.rows}, minmax(0, 1fr))`;
  }

  async function loadDesktops() {
    const src = new URLSearchParams(location.search).get("desktops") || "desktops.json";
    for (let delay = 1000; ; delay = Math.min(delay * 2, 15000)) {
      try {
        const r = await fetch(src, { cache: "no-store" });
        if (!r.ok) throw new Error(`${src}: HTTP ${r.status}`);
        const j = await r.json();
        if (!j || !Array.isArray(j.desktops)) throw new Error(`${src}: no "desktops" list`);
        // ICE servers (STUN/TURN) are listed once for all desktops, at the top level.
        const ice = Array.isArray(j.iceServers) ? j.iceServers : [];
        return j.desktops
          .filter((d) => d && typeof d.whep === "string")
          .map((d) => Object.assign({ iceServers: ice }, d));
      } catch (e) {
        wall.error = String(e.message || e);
        document.getElementById("msg").textContent = `${wall.error}; retrying`;
        await new Promise((res) => setTimeout(res, delay));
      }
    }
  }

  function showKeyForm() {
    const locked = panels.filter((p) => p.st.state === "locked" && !p.desk.token);
    const form = document.getElementById("key");
    if (!locked.length) { form.hidden = true; return; }
    const which = locked.length === 1 ? locked[0].desk.name : `${locked.length} desktops`;
    document.getElementById("key-msg").textContent = wall.key
      ? `The key was refused by ${which}. Enter the right key.`
      : `This wall needs its key (${which} asked for one). Paste the key, or open the page's full address with #key=… that ./loco up printed.`;
    form.hidden = false;
  }

  function installKeyForm() {
    const form = document.getElementById("key");
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = document.getElementById("key-input");
      const key = input.value.trim();
      if (!KEY_RE.test(key)) {
        document.getElementById("key-msg").textContent = "That is not a key: keys are letters, digits and - . _ ~ only.";
        return;
      }
      input.value = "";
      wall.key = key;
      try { localStorage.setItem(KEY_STORAGE, key); } catch (e) { /* storage off */ }
      form.hidden = true;
      for (const p of panels) if (p.st.state === "locked" && !p.desk.token) p.connect();
    });
  }

  async function main() {
    wall.key = pageKey();
    installKeyForm();
    let desks = await loadDesktops();
    wall.error = null;
    document.getElementById("msg").textContent = "";
    if (desks.length > MAX_PANELS) {
      document.getElementById("msg").textContent = `showing the first ${MAX_PANELS} of ${desks.length} desktops`;
      desks = desks.slice(0, MAX_PANELS);
    }
    wall.desktops = desks;
    document.getElementById("count").textContent = `${desks.length} desktop${desks.length === 1 ? "" : "s"}`;
    desks.forEach((d, i) => {
      const p = new Panel(Object.assign({ name: `desktop ${i + 1}` }, d), i, grid);
      panels.push(p);
      wall.panels.push(p.st);
    });
    layout();
    window.addEventListener("resize", layout);
    // Clicking outside every panel lets go of the keyboard.
    document.addEventListener("pointerdown", (ev) => {
      if (focusedPanel && !focusedPanel.el.contains(ev.target)) focusedPanel.el.blur();
    });
    window.addEventListener("pagehide", () => { for (const p of panels) { p.gen++; p.teardown(); } });
    panels.forEach((p) => p.connect());
    wall.ready = true;
  }

  main();
})();
