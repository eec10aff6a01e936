// Headless-Chromium test of HTTPS + HTTP/2: one page keeps ten plain EventSources open to one
// Herald origin at once. Over HTTP/1.1 a browser opens at most six connections per origin, so
// the seventh stream would wait for one of them to close; over HTTP/2 all of them share one
// connection, and every stream gets its message.
//
// Environment: HERALD_BIN, CHROMIUM_PATH (as browser.test.mjs). Needs the `openssl` command
// for the self-signed certificate.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import {
  CHROMIUM, CHROMIUM_ARGS, request, selfSignedCert, signToken, startServe, withTimeout,
} from './support.mjs';

const PKG_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const HERALD_BIN = path.resolve(PKG_DIR, process.env.HERALD_BIN || '../../target/debug/herald');
const API_KEY = 'testkey-h2-123456';
const JWT_SECRET = 'h2-test-secret-0123456789';
const STREAMS = 10;

const res = { tmp: null, herald: null, browser: null };

after(async () => {
  if (res.browser) await withTimeout(res.browser.close(), 10_000, 'browser.close').catch(() => {});
  if (res.herald && res.herald.exitCode === null) res.herald.kill('SIGKILL');
  if (res.tmp) await rm(res.tmp, { recursive: true, force: true });
});

/** Starts `herald serve` over TLS on a free port; resolves with its https base URL. */
function startHerald(dataDir, tls) {
  const { child, ready } = startServe(HERALD_BIN, dataDir, {
    HERALD_API_KEYS: API_KEY,
    HERALD_JWT_SECRET: JWT_SECRET,
    HERALD_TLS_CERT: tls.cert,
    HERALD_TLS_KEY: tls.key,
  });
  res.herald = child;
  return ready;
}

/** An HTTPS request trusting only the test's certificate: { status, text }. */
function call(base, ca, method, pathname, body) {
  const headers = { authorization: `Bearer ${API_KEY}` };
  if (body) headers['content-type'] = 'application/json';
  return request(https, new URL(pathname, base), { method, ca, headers }, body);
}

async function metric(base, ca, name) {
  const { status, text } = await call(base, ca, 'GET', '/metrics');
  assert.equal(status, 200, `/metrics: ${text}`);
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
}

test('ten EventSources to one origin stream at once over HTTPS + HTTP/2', { timeout: 60_000 }, async () => {
  res.tmp = await mkdtemp(path.join(os.tmpdir(), 'herald-h2-'));
  const tls = selfSignedCert(res.tmp);
  const ca = await readFile(tls.cert);
  const base = await startHerald(path.join(res.tmp, 'data'), tls);

  res.browser = await withTimeout(
    chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS }),
    30_000,
    'chromium.launch',
  );
  // The certificate is self-signed: the browser is told to accept it, nothing else changes.
  const context = await res.browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  // The page itself comes from Herald's origin, so every stream below is same-origin.
  const nav = await page.goto(`${base}/healthz`);
  assert.equal(nav.status(), 200);

  const token = signToken(
    { sub: 'u1', channels: ['live:*'], exp: Math.floor(Date.now() / 1000) + 600 },
    JWT_SECRET,
  );
  await page.evaluate(
    ({ n, token }) => {
      window.__got = {};
      window.__opens = 0;
      for (let i = 0; i < n; i++) {
        const es = new EventSource(`/v1/sse?channel=live:h${i}&token=${token}`);
        es.onopen = () => window.__opens++;
        es.addEventListener('comment', (ev) => {
          window.__got[i] = JSON.parse(ev.data).data.text;
        });
      }
    },
    { n: STREAMS, token },
  );

  // All ten are open at once: over HTTP/1.1 four of them would still be waiting.
  await page.waitForFunction((n) => window.__opens === n, STREAMS, { timeout: 15_000, polling: 50 });
  assert.equal(await metric(base, ca, 'herald_connections'), STREAMS);
  // They share the browser's one connection (the other one is this scrape's).
  const sockets = await metric(base, ca, 'herald_sockets_open');
  assert.ok(sockets <= 2, `${STREAMS} streams held ${sockets} sockets`);

  for (let i = 0; i < STREAMS; i++) {
    const body = JSON.stringify({ channel: `live:h${i}`, event: 'comment', data: { text: `hi-${i}` } });
    const { status, text } = await call(base, ca, 'POST', '/v1/publish', body);
    assert.equal(status, 200, text);
  }
  await page.waitForFunction(
    (n) => Object.keys(window.__got).length === n,
    STREAMS,
    { timeout: 15_000, polling: 50 },
  );
  const got = await page.evaluate(() => window.__got);
  for (let i = 0; i < STREAMS; i++) assert.equal(got[i], `hi-${i}`);
});
