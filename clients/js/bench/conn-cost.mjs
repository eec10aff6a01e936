// What an idle stream costs `herald serve` in memory, by transport: plain HTTP/1.1 (the lean
// path), HTTPS with HTTP/1.1, HTTPS with HTTP/2 and one stream per connection (a browser
// each), and HTTPS with HTTP/2 and ten streams per connection (one browser, ten tabs).
// For each, a fresh server is started, N streams are opened and held, and the growth of the
// server's resident memory (VmRSS) is divided by N.
//
//   node clients/js/bench/conn-cost.mjs [--bin target/release/herald] [--streams 4000]
//
// Needs `openssl` (for a self-signed certificate).

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { selfSignedCert, signToken, withTimeout } from '../test/support.mjs';

const { values: opts } = parseArgs({
  options: {
    bin: { type: 'string', default: 'target/release/herald' },
    streams: { type: 'string', default: '4000' },
  },
});
const N = Number(opts.streams);
const API_KEY = 'conn-cost-key-123456';
const SECRET = 'conn-cost-secret-0123456789';
const TOKEN = signToken({ sub: 'u', channels: ['live:*'], exp: Math.floor(Date.now() / 1000) + 3600 }, SECRET);

function rssKb(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(status.match(/VmRSS:\s+(\d+)/)[1]);
}

async function startHerald(dir, tls) {
  const env = { ...process.env, HERALD_API_KEYS: API_KEY, HERALD_JWT_SECRET: SECRET, HERALD_LOG: 'warn' };
  if (tls) Object.assign(env, { HERALD_TLS_CERT: tls.cert, HERALD_TLS_KEY: tls.key });
  const child = spawn(opts.bin, ['serve', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, `d${Date.now()}`)], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const base = await withTimeout(
    new Promise((resolve) => {
      let out = '';
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (c) => {
        out += c;
        const m = out.match(/herald listening on (\S+)/);
        if (m) resolve(m[1]);
      });
    }),
    20_000,
    'herald start',
  );
  return { child, base };
}

/** Streams spread over 100 channels. */
const streamPath = (i) => `/v1/sse?channel=live:c${i % 100}&token=${TOKEN}`;

function h1Stream(mod, base, ca, i) {
  return new Promise((resolve, reject) => {
    const req = mod.get(new URL(streamPath(i), base), { agent: false, ca }, (resp) => {
      resp.on('data', () => {});
      resolve(req);
    });
    req.on('error', reject);
  });
}

function h2Stream(session, i) {
  return new Promise((resolve, reject) => {
    const req = session.request({ ':path': streamPath(i) });
    req.on('response', () => resolve(req));
    req.on('data', () => {});
    req.on('error', reject);
  });
}

async function openAll(mode, base, ca) {
  const held = [];
  const batch = 200;
  const sessions = [];
  for (let i = 0; i < N; i += batch) {
    const wave = [];
    for (let j = i; j < Math.min(N, i + batch); j++) {
      if (mode === 'http') wave.push(h1Stream(http, base, undefined, j));
      else if (mode === 'https-h1') wave.push(h1Stream(https, base, ca, j));
      else {
        const perConn = mode === 'https-h2' ? 1 : 10;
        if (j % perConn === 0) sessions.push(http2.connect(base, { ca }));
        wave.push(h2Stream(sessions[sessions.length - 1], j));
      }
    }
    held.push(...(await Promise.all(wave)));
  }
  return { held, sessions };
}

async function run() {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'herald-conn-cost-'));
  const { cert, key } = selfSignedCert(dir);
  const ca = await readFile(cert);
  const rows = [];
  for (const mode of ['http', 'https-h1', 'https-h2', 'https-h2x10']) {
    const { child, base } = await startHerald(dir, mode === 'http' ? null : { cert, key });
    await new Promise((r) => setTimeout(r, 300));
    const before = rssKb(child.pid);
    const t0 = Date.now();
    const { held, sessions } = await openAll(mode, base, ca);
    const openMs = Date.now() - t0;
    await new Promise((r) => setTimeout(r, 1000));
    const after = rssKb(child.pid);
    rows.push({ mode, streams: held.length, connections: mode === 'https-h2x10' ? sessions.length : held.length,
      rss_before_mb: (before / 1024).toFixed(1), rss_after_mb: (after / 1024).toFixed(1),
      kb_per_stream: ((after - before) / held.length).toFixed(2), open_ms: openMs });
    for (const r of held) r.destroy?.();
    for (const s of sessions) s.destroy();
    child.kill('SIGKILL');
  }
  await rm(dir, { recursive: true, force: true });
  console.table(rows);
}

await run();
process.exit(0);
