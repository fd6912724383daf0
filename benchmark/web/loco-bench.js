// Injected into agent/tests/e2e/web/viewer.html (the e2e WHEP page) by the benchmark. Every
// video frame Chromium decodes reaches this script through a MediaStreamTrackProcessor (the
// same point in the pipeline as the aiortc viewer's decoded frames and noVNC's canvas flip;
// requestVideoFrameCallback would be bound to headless Chromium's software compositor, which
// presents far fewer frames than it decodes on a loaded machine). The mean luma of each
// latency-pattern cell is recorded with Date.now(); the Python side decodes them
// (benchmark/latency_pattern.py). window.__pattern = {x, y, cell, cols, rows, sample, read}.
(() => {
  const P = window.__pattern;
  const video = document.getElementById("v");
  const W = P.cols * P.cell, H = P.rows * P.cell;
  const B = window.__b = { frames: 0, reads: [], times: [], error: null, path: null };
  let canvas = null, ctx = null;

  function means(get) {  // get(x, y) -> luma inside the pattern region
    const m = new Array(P.cols * P.rows);
    for (let r = 0; r < P.rows; r++) {
      for (let c = 0; c < P.cols; c++) {
        let sum = 0, n = 0;
        for (let y = r * P.cell + P.sample; y < (r + 1) * P.cell - P.sample; y++) {
          for (let x = c * P.cell + P.sample; x < (c + 1) * P.cell - P.sample; x++) {
            sum += get(x, y);
            n++;
          }
        }
        m[r * P.cols + c] = Math.round(sum / n);
      }
    }
    return m;
  }

  async function readFrame(frame) {
    const fmt = frame.format;
    if (fmt === "I420" || fmt === "NV12" || fmt === "I420A") {
      const rect = { x: P.x, y: P.y, width: W, height: H };
      const buf = new Uint8Array(frame.allocationSize({ rect }));
      const layout = await frame.copyTo(buf, { rect });
      const off = layout[0].offset, stride = layout[0].stride;
      B.path = "copyTo " + fmt;
      // Y as coded (limited range), as the aiortc viewer reads it: the reader thresholds
      // halfway between the frame's own white and black references.
      return means((x, y) => buf[off + y * stride + x]);
    }
    if (!canvas) {
      canvas = new OffscreenCanvas(W, H);
      ctx = canvas.getContext("2d", { willReadFrequently: true });
    }
    ctx.drawImage(frame, P.x, P.y, W, H, 0, 0, W, H);
    const d = ctx.getImageData(0, 0, W, H).data;
    B.path = "canvas " + fmt;
    return means((x, y) => { const i = (y * W + x) * 4; return 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]; });
  }

  async function run() {
    const track = video.srcObject.getVideoTracks()[0];
    const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
    for (;;) {
      const { value: frame, done } = await reader.read();
      if (done) return;
      const t = Date.now();
      B.frames++;
      B.times.push(t);
      try {
        if (P.read) B.reads.push([t, await readFrame(frame)]);
      } catch (e) {
        B.error = String(e);
      } finally {
        frame.close();
      }
    }
  }
  run().catch((e) => { B.error = String(e); });

  window.drain = () => { const r = { reads: B.reads, times: B.times }; B.reads = []; B.times = []; return r; };
  window.click = (x, y) => {
    const t = Date.now();
    window.__t.send({ type: "pointer", x: x, y: y, buttons: 1 });
    window.__t.send({ type: "pointer", x: x, y: y, buttons: 0 });
    return t;
  };
})();
