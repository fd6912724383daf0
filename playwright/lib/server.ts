/**
 * A static HTTP server for the built page (www/dist) plus in-memory files the tests write
 * (per-test configs under /cfg/, an overriding /desktops.json, harness pages). 127.0.0.1 only,
 * no caching, `application/wasm` for .wasm.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { REPO } from './procs';

export const DIST = path.resolve(process.env.LOCO_WWW_DIST || path.join(REPO, 'www', 'dist'));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
  '.css': 'text/css; charset=utf-8',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
};

export function requireDist(): void {
  if (!fs.existsSync(path.join(DIST, 'index.html'))) {
    throw new Error(`${DIST}/index.html is missing: build the page first (bash scripts/build-web.sh), or set LOCO_WWW_DIST`);
  }
}

export class StaticServer {
  private server: http.Server | null = null;
  private virtual = new Map<string, { body: Buffer; type: string; status: number }>();
  port = 0;
  /** request paths seen, in order (for checks like "the page fetched desktops.json") */
  readonly requests: string[] = [];

  constructor(readonly root: string = DIST) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Serve `body` at `urlPath` (overrides a file of the same path under root). */
  put(urlPath: string, body: string | Buffer, type?: string, status = 200): string {
    const t = type ?? TYPES[path.extname(urlPath)] ?? 'application/octet-stream';
    this.virtual.set(urlPath, { body: Buffer.isBuffer(body) ? body : Buffer.from(body), type: t, status });
    return this.url + urlPath;
  }

  putJson(urlPath: string, value: unknown): string {
    return this.put(urlPath, JSON.stringify(value, null, 1), 'application/json');
  }

  remove(urlPath: string): void {
    this.virtual.delete(urlPath);
  }

  async start(): Promise<this> {
    this.server = http.createServer((req, res) => this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(0, '127.0.0.1', () => resolve());
    });
    this.port = (this.server.address() as { port: number }).port;
    return this;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const u = new URL(req.url ?? '/', 'http://x');
    let p = decodeURIComponent(u.pathname);
    this.requests.push(p);
    const headers = { 'Cache-Control': 'no-store', 'Access-Control-Allow-Origin': '*' };
    const v = this.virtual.get(p);
    if (v) {
      res.writeHead(v.status, { ...headers, 'Content-Type': v.type, 'Content-Length': v.body.length });
      res.end(req.method === 'HEAD' ? undefined : v.body);
      return;
    }
    if (p.endsWith('/')) p += 'index.html';
    const file = path.resolve(this.root, '.' + p);
    if (!file.startsWith(this.root + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404, { ...headers, 'Content-Type': 'text/plain' });
      res.end(`404 not found: ${p}\n`);
      return;
    }
    const body = fs.readFileSync(file);
    res.writeHead(200, {
      ...headers,
      'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream',
      'Content-Length': body.length,
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  async close(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections?.();
    await new Promise<void>((r) => this.server!.close(() => r()));
    this.server = null;
  }
}
