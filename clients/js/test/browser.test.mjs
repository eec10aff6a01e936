// Headless-Chromium test of Herald's SSE wire contract with a plain browser EventSource.
//
// What it shows:
//   * a page on another origin (CORS) follows two channels over one EventSource;
//   * `herald serve` is SIGKILLed and restarted on the same port and data dir; messages
//     published while the browser is disconnected reach it after EventSource's own automatic
//     reconnect (Last-Event-ID), with no gaps, no duplicates and in order on every channel;
//   * a page cannot move a user's ack with the cookie token through a simple (no-cors)
//     request, while the app's own JSON ack with the same cookie is taken (CSRF).
//
// Environment:
//   HERALD_BIN      herald binary (default ../../target/debug/herald relative to clients/js)
//   CHROMIUM_PATH   browser binary (default /usr/bin/chromium)

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, request, signToken, withTimeout } from './support.mjs';

const TEST_DIR = path.dirname(fileURLToPath(import.meta.url));
const PKG_DIR = path.resolve(TEST_DIR, '..');
const HERALD_BIN = path.resolve(PKG_DIR, process.env.HERALD_BIN || '../../target/debug/herald');

const API_KEY = 'testkey-123456';
const JWT_SECRET = 'browser-test-secret-0123456789';
// The browser waits RETRY_MS + random(0..JITTER_MS) before reconnecting. That window is when
// the test restarts herald and publishes the "while disconnected" messages.
const RETRY_MS = 3000;
const RETRY_JITTER_MS = 500;
const CHANNELS = ['live:b1', 'live:b2'];
// live:b1 is published with a named event, live:b2 without one (so it arrives as "message").
const EVENT_OF = { 'live:b1': 'comment', 'live:b2': null };

// ---------------------------------------------------------------------------------------------
// Resources, released in `after` whatever happens.

/** Wall-clock marks (ms) of the test's steps, printed on failure next to the page's. */
const marks = {};
/** The page's console output, printed on failure. */
const pageLog = [];

const res = {
  tmp: null,
  pageServer: null,
  browser: null,
  heralds: [], // every herald child ever started
};

after(async () => {
  for (const h of res.heralds) await h.kill().catch(() => {});
  if (res.browser) {
    await withTimeout(res.browser.close(), 10_000, 'browser.close').catch((e) => {
      console.error(`closing the browser: ${e.message}`);
      try {
        res.browser.process?.()?.kill('SIGKILL');
      } catch {}
    });
  }
  if (res.pageServer) {
    res.pageServer.closeAllConnections?.();
    await new Promise((r) => res.pageServer.close(() => r()));
  }
  if (res.tmp) await rm(res.tmp, { recursive: true, force: true });
});

// Last-resort guard so a crashed runner never leaves a herald behind.
process.on('exit', () => {
  for (const h of res.heralds) {
    if (h.child.exitCode === null && h.child.signalCode === null) {
      try {
        h.child.kill('SIGKILL');
      } catch {}
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Helpers

/**
 * Starts `herald serve` on 127.0.0.1:port and resolves once it prints its listen line.
 * The returned handle keeps draining stdout/stderr (tail kept for failure messages).
 */
function startHerald({ port, dataDir, corsOrigin, name }) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('HERALD_')) env[k] = v; // hermetic: only the settings below
  }
  Object.assign(env, {
    HERALD_API_KEYS: API_KEY,
    HERALD_JWT_SECRET: JWT_SECRET,
    HERALD_CORS_ORIGINS: corsOrigin,
    HERALD_RETRY_MS: String(RETRY_MS),
    HERALD_RETRY_JITTER_MS: String(RETRY_JITTER_MS),
    NO_COLOR: '1',
  });
  const child = spawn(
    HERALD_BIN,
    ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir],
    { env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  const keep = (chunk) => {
    log += chunk;
    if (log.length > 64 * 1024) log = log.slice(-64 * 1024);
  };
  const exited = new Promise((resolve) => child.once('exit', (code, sig) => resolve({ code, sig })));
  const handle = {
    name,
    child,
    exited,
    log: () => log,
    async kill(signal = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return withTimeout(exited, 10_000, `${name} exit after ${signal}`);
    },
  };
  res.heralds.push(handle);

  const ready = new Promise((resolve, reject) => {
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', keep);
    child.stdout.on('data', (chunk) => {
      keep(chunk);
      out += chunk;
      const m = out.match(/herald listening on http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) resolve({ ...handle, port: Number(m[1]), base: `http://127.0.0.1:${m[1]}` });
    });
    child.once('error', (e) => reject(new Error(`${name}: cannot start ${HERALD_BIN}: ${e.message}`)));
    exited.then(({ code, sig }) =>
      reject(new Error(`${name} exited before listening (code ${code}, signal ${sig}):\n${log}`)),
    );
  });
  return withTimeout(ready, 20_000, `${name} to print its listen line`);
}

/** POST /v1/publish on a fresh connection (no keep-alive across herald restarts). */
function publish(base, channel, data, event) {
  const payload = { channel, data };
  if (event) payload.event = event;
  const body = JSON.stringify(payload);
  const url = new URL('/v1/publish', base);
  const headers = {
    authorization: `Bearer ${API_KEY}`,
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  };
  return request(http, url, { method: 'POST', headers }, body).then(({ status, text }) => {
    assert.ok(status >= 200 && status < 300, `publish to ${channel} got ${status}: ${text}`);
    const ack = JSON.parse(text);
    assert.equal(ack.channel, channel, `publish ack names the channel: ${text}`);
    assert.ok(Number.isInteger(ack.seq), `publish ack has an integer seq: ${text}`);
    return ack;
  });
}

/** Serves test/page.html from a second origin. */
async function startPageServer() {
  const html = await readFile(path.join(TEST_DIR, 'page.html'));
  const server = http.createServer((req, resp) => {
    if (new URL(req.url, 'http://x').pathname === '/page.html') {
      resp.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      resp.end(html);
    } else {
      resp.writeHead(404, { 'content-type': 'text/plain' });
      resp.end('not found');
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return server;
}

const pageState = () => ({
  opens: window.__opens,
  errors: window.__errors,
  readyState: window.__es.readyState,
  states: window.__states,
  events: window.__events,
});

/** Polls a page predicate until it holds, with a deadline; the error carries the page state. */
async function waitInPage(page, what, predicate, arg, timeout) {
  try {
    await page.waitForFunction(predicate, arg, { timeout, polling: 50 });
  } catch (e) {
    const state = await page.evaluate(pageState).catch((err) => `<unavailable: ${err.message}>`);
    throw new Error(`waiting for ${what} (${timeout} ms): ${e.message}\npage state: ${JSON.stringify(state, null, 1)}`);
  }
}

/** GET with a deadline; resolves with whatever bytes arrived (for raw SSE dumps). */
function rawGet(url, headers, ms) {
  return new Promise((resolve) => {
    let text = '';
    let status = null;
    const req = http.get(url, { agent: false, headers }, (resp) => {
      status = resp.statusCode;
      resp.setEncoding('utf8');
      resp.on('data', (c) => (text += c));
      resp.on('end', () => resolve({ status, text }));
      resp.on('error', () => resolve({ status, text }));
    });
    req.on('error', (e) => resolve({ status, text: text + `\n<error: ${e.message}>` }));
    const timer = setTimeout(() => {
      req.destroy();
      resolve({ status, text });
    }, ms);
    req.on('close', () => clearTimeout(timer));
  });
}

/** On failure: herald logs, its /metrics, and what a fresh resume from the browser's cursor gets. */
async function dumpDiagnostics(herald, page) {
  const out = (s) => process.stderr.write(`${s}\n`);
  out(`----- test marks: ${JSON.stringify(marks)}`);
  out(`----- page console -----\n${pageLog.join('\n')}`);
  for (const h of res.heralds) out(`----- ${h.name} log -----\n${h.log()}`);
  const alive = herald.child.exitCode === null && herald.child.signalCode === null;
  if (!alive) return;
  const metrics = await rawGet(`${herald.base}/metrics`, { authorization: `Bearer ${API_KEY}` }, 2000);
  out(`----- ${herald.name} /metrics -----\n${metrics.text.split('\n').filter((l) => l && !l.startsWith('#')).join('\n')}`);
  if (!page) return;
  const state = await page.evaluate(pageState).catch(() => null);
  if (!state) return;
  const last = state.events.at(-1)?.lastEventId;
  out(`----- browser: opens=${state.opens} errors=${state.errors} readyState=${state.readyState} events=${state.events.length} lastEventId=${last}`);
  out(`----- browser states: ${JSON.stringify(state.states)}`);
  if (last) {
    const src = await page.evaluate(() => window.__es.url);
    const raw = await rawGet(src, { 'last-event-id': last }, 2000);
    out(`----- raw SSE, 2 s of GET ${src.replace(/token=[^&]+/, 'token=...')} with Last-Event-ID ${last} (status ${raw.status}) -----\n${raw.text}`);
    const metrics2 = await rawGet(`${herald.base}/metrics`, { authorization: `Bearer ${API_KEY}` }, 2000);
    out(`----- ${herald.name} /metrics after that -----\n${metrics2.text.split('\n').filter((l) => l && !l.startsWith('#')).join('\n')}`);
  }
}

// ---------------------------------------------------------------------------------------------

test('plain EventSource follows two channels across a herald SIGKILL + restart, gap-free', { timeout: 60_000 }, async (t) => {
  res.tmp = await mkdtemp(path.join(os.tmpdir(), 'herald-browser-'));
  const dataDir = path.join(res.tmp, 'data');

  res.pageServer = await startPageServer();
  const pageOrigin = `http://127.0.0.1:${res.pageServer.address().port}`;

  let herald = await startHerald({ port: 0, dataDir, corsOrigin: pageOrigin, name: 'herald#1' });
  const port = herald.port;
  assert.ok(port > 0);
  assert.notEqual(herald.base, pageOrigin, 'page and herald must be different origins (CORS)');

  let page = null;
  try {
    res.browser = await withTimeout(
      chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: CHROMIUM_ARGS,
      }),
      30_000,
      'chromium.launch',
    );
    const context = await res.browser.newContext();
    page = await context.newPage();
    page.on('console', (m) => pageLog.push(`console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => pageLog.push(`pageerror: ${e.message}`));

    const token = signToken(
      { sub: 'u1', channels: ['live:*'], exp: Math.floor(Date.now() / 1000) + 600 },
      JWT_SECRET,
    );
    const qs = CHANNELS.map((c) => `channel=${encodeURIComponent(c)}`).join('&');
    const src = `${herald.base}/v1/sse?${qs}&token=${encodeURIComponent(token)}`;
    const pageUrl = `${pageOrigin}/page.html?src=${encodeURIComponent(src)}&events=comment`;
    await page.goto(pageUrl, { timeout: 15_000 });

    // --- 1. The stream opens (cross-origin, so CORS let it through).
    await waitInPage(page, 'the EventSource to open', () => window.__opens >= 1, null, 10_000);
    assert.equal(await page.evaluate(() => window.__es.readyState), 1, 'EventSource is OPEN');

    // published[channel] = [{seq, epoch, data, event}], in publish order
    const published = Object.fromEntries(CHANNELS.map((c) => [c, []]));
    let counter = 0;
    const publishRound = async (phase, rounds, base) => {
      for (let r = 0; r < rounds; r++) {
        for (const channel of CHANNELS) {
          const data = { n: ++counter, phase, channel, text: `msg ${counter} on ${channel}` };
          const ack = await publish(base, channel, data, EVENT_OF[channel]);
          published[channel].push({ seq: ack.seq, epoch: ack.epoch, data, event: EVENT_OF[channel] ?? 'message' });
        }
      }
    };
    const totalPublished = () => CHANNELS.reduce((n, c) => n + published[c].length, 0);

    // --- 2. Live delivery.
    await publishRound('before-kill', 4, herald.base);
    await waitInPage(page, `${totalPublished()} live events`, (n) => window.__events.length >= n, totalPublished(), 10_000);

    // --- 3. Crash, restart on the same port and data dir, publish while the browser is away.
    const killedAt = Date.now();
    marks.killedAt = killedAt;
    const exit = await herald.kill('SIGKILL');
    assert.equal(exit.sig, 'SIGKILL', 'herald#1 died of SIGKILL');
    await waitInPage(page, 'the EventSource to notice the crash', () => window.__errors >= 1 && window.__es.readyState === 0, null, 10_000);

    herald = await startHerald({ port, dataDir, corsOrigin: pageOrigin, name: 'herald#2' });
    assert.equal(herald.port, port, 'herald#2 listens on the same port');
    marks.restartedAt = Date.now();
    const restartMs = marks.restartedAt - killedAt;

    await publishRound('while-disconnected', 3, herald.base);
    marks.disconnectedPublishesDoneAt = Date.now();
    const opensAfterPublish = await page.evaluate(() => window.__opens);
    const disconnectedPublishMs = Date.now() - killedAt;
    t.diagnostic(`restart took ${restartMs} ms; disconnected publishes done ${disconnectedPublishMs} ms after the kill`);
    assert.equal(
      opensAfterPublish,
      1,
      `the browser reconnected before the disconnected-phase publishes finished (${disconnectedPublishMs} ms after the kill); raise RETRY_MS`,
    );

    // --- 4. EventSource reconnects on its own and gets what it missed.
    await waitInPage(page, 'the automatic reconnect', () => window.__opens >= 2, null, RETRY_MS + RETRY_JITTER_MS + 10_000);
    await waitInPage(page, `${totalPublished()} events after resume`, (n) => window.__events.length >= n, totalPublished(), 10_000);

    // --- 5. And the resumed stream is live.
    await publishRound('after-reconnect', 1, herald.base);
    await waitInPage(page, `${totalPublished()} events in all`, (n) => window.__events.length >= n, totalPublished(), 10_000);

    // The after-reconnect messages are live and come after the replay on the same stream, so
    // once they are in, a duplicate from the replay would already be in __events too.
    const state = await page.evaluate(pageState);
    const events = state.events;

    // --- Assertions.
    assert.equal(state.opens, 2, `exactly one automatic reconnect; states: ${JSON.stringify(state.states)}`);
    assert.deepEqual(events.filter((e) => e.type === 'herald:reset'), [], 'no herald:reset (nothing was out of retention)');
    for (const e of events) {
      assert.equal(e.parseError, null, `event data is JSON: ${e.raw}`);
      assert.ok(typeof e.lastEventId === 'string' && e.lastEventId.length > 0, `lastEventId set on ${e.raw}`);
    }
    assert.equal(events.length, totalPublished(), 'the browser got exactly as many events as were published (no duplicates)');
    const ids = events.map((e) => e.lastEventId);
    assert.equal(new Set(ids).size, ids.length, 'every reliable event carries its own cursor');

    for (const channel of CHANNELS) {
      const pub = published[channel];
      const n = pub.length;
      const expectedSeqs = Array.from({ length: n }, (_, i) => i + 1);
      assert.deepEqual(pub.map((p) => p.seq), expectedSeqs, `${channel}: publish acks are seq 1..${n}`);
      const epochs = new Set(pub.map((p) => p.epoch));
      assert.equal(epochs.size, 1, `${channel}: one epoch across the restart`);

      const got = events.filter((e) => e.data?.channel === channel);
      assert.deepEqual(
        got.map((e) => e.data.seq),
        expectedSeqs,
        `${channel}: browser saw seq 1..${n} in order, no gaps, no duplicates`,
      );
      for (let i = 0; i < n; i++) {
        const e = got[i];
        assert.equal(e.type, pub[i].event, `${channel} seq ${i + 1}: event name`);
        assert.equal(e.data.epoch, pub[i].epoch, `${channel} seq ${i + 1}: epoch`);
        assert.deepEqual(e.data.data, pub[i].data, `${channel} seq ${i + 1}: payload`);
        assert.ok(Number.isFinite(e.data.ts), `${channel} seq ${i + 1}: ts`);
      }
    }
    // Every event came from one of our two channels.
    assert.equal(events.filter((e) => !CHANNELS.includes(e.data?.channel)).length, 0, 'no foreign events');
    // The while-disconnected messages really arrived on the second connection.
    const secondOpenAt = state.states.filter((s) => s.what === 'open')[1].at;
    for (const e of events.filter((ev) => ev.data.data.phase !== 'before-kill')) {
      assert.ok(e.at >= secondOpenAt, `${e.data.channel} seq ${e.data.seq} arrived after the reconnect`);
    }
  } catch (e) {
    await dumpDiagnostics(herald, page).catch((err) => process.stderr.write(`diagnostics failed: ${err.message}\n`));
    throw e;
  }
});

// ---------------------------------------------------------------------------------------------

test('a page cannot move a user\'s ack with the cookie through a simple (no-cors) request', { timeout: 60_000 }, async () => {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'herald-csrf-'));
  const pageServer = await startPageServer();
  const pageOrigin = `http://127.0.0.1:${pageServer.address().port}`;
  // The page's origin is listed (a real app of the user's): the cookie travels with its
  // requests, so only the request's shape can tell a forged one from the app's own.
  const herald = await startHerald({ port: 0, dataDir: path.join(tmp, 'data'), corsOrigin: pageOrigin, name: 'herald-csrf' });
  let browser = null;
  try {
    let last = null;
    for (let i = 0; i < 3; i++) last = await publish(herald.base, 'live:k', { n: i });
    const token = signToken({ sub: 'bob', channels: ['live:*'], exp: Math.floor(Date.now() / 1000) + 600 }, JWT_SECRET);
    const recorded = async () => {
      const r = await fetch(`${herald.base}/v1/channels/live:k/acks`, { headers: { authorization: `Bearer ${API_KEY}` } });
      assert.equal(r.status, 200);
      return (await r.json()).acks;
    };

    browser = await withTimeout(
      chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--no-first-run'] }),
      30_000,
      'chromium.launch',
    );
    const context = await browser.newContext();
    await context.addCookies([{ name: 'herald_token', value: token, url: herald.base }]);
    const page = await context.newPage();
    await page.goto(`${pageOrigin}/blank`, { timeout: 15_000 });
    const body = (seq) => JSON.stringify({ channel: 'live:k', epoch: last.epoch, seq });

    // The forgery: a simple request needs no preflight, so the browser sends it with the cookie.
    await page.evaluate(
      ([url, b]) => fetch(url, { method: 'POST', mode: 'no-cors', credentials: 'include', headers: { 'content-type': 'text/plain' }, body: b }).then(() => null),
      [`${herald.base}/v1/ack`, body(3)],
    );
    assert.deepEqual(await recorded(), [], 'the forged ack was refused');

    // The app's own ack (JSON, so preflighted, from a listed origin) carries the same cookie and is taken.
    const status = await page.evaluate(
      ([url, b]) => fetch(url, { method: 'POST', credentials: 'include', headers: { 'content-type': 'application/json' }, body: b }).then((r) => r.status),
      [`${herald.base}/v1/ack`, body(2)],
    );
    assert.equal(status, 200, 'the app\'s own ack');
    const after = await recorded();
    assert.deepEqual(after.map((a) => [a.user, a.seq]), [['bob', 2]], 'the cookie did travel: the JSON ack was recorded');
  } finally {
    if (browser) await withTimeout(browser.close(), 10_000, 'browser.close').catch(() => browser.process?.()?.kill('SIGKILL'));
    await herald.kill().catch(() => {});
    pageServer.closeAllConnections?.();
    await new Promise((r) => pageServer.close(() => r()));
    await rm(tmp, { recursive: true, force: true });
  }
});
