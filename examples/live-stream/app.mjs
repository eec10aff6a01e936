// The live-stream example's web server: the page, the herald-client package, and /token,
// which mints each viewer a subscriber token the way an app's backend would.
//
// Environment: HERALD_URL (default http://127.0.0.1:7070), PORT (default 8080),
// HERALD_JWT_SECRET (the secret herald serve checks tokens with).

import { createHmac, randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SDK = path.resolve(HERE, '../../clients/js/dist');
const HERALD_URL = process.env.HERALD_URL || 'http://127.0.0.1:7070';
const SECRET = process.env.HERALD_JWT_SECRET || 'live-stream-example-secret-0123456789';
const PORT = Number(process.env.PORT ?? 8080);
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css' };

const b64url = (s) => Buffer.from(s).toString('base64url');

/** A token for one viewer: the show, its reactions, and the viewer's own inbox. */
function token(user) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const exp = Math.floor(Date.now() / 1000) + 600;
  const body = b64url(JSON.stringify({ sub: user, channels: ['show:*', 'react:*'], exp }));
  const sig = createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

async function file(resp, dir, name) {
  try {
    const body = await readFile(path.join(dir, path.basename(name)));
    resp.writeHead(200, { 'content-type': TYPES[path.extname(name)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
    resp.end(body);
  } catch {
    resp.writeHead(404).end();
  }
}

const server = http.createServer((req, resp) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/') return file(resp, path.join(HERE, 'public'), 'index.html');
  if (url.pathname === '/config.json') {
    resp.writeHead(200, { 'content-type': 'application/json' });
    return resp.end(JSON.stringify({ herald: HERALD_URL, user: url.searchParams.get('user') || `viewer-${randomUUID().slice(0, 6)}` }));
  }
  if (url.pathname === '/token') {
    resp.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store' });
    return resp.end(token(url.searchParams.get('user') || 'anonymous'));
  }
  if (url.pathname.startsWith('/sdk/')) return file(resp, SDK, url.pathname);
  return file(resp, path.join(HERE, 'public'), url.pathname);
});
server.listen(PORT, '127.0.0.1', () => {
  console.log(`live-stream page on http://127.0.0.1:${server.address().port}/`);
});
