// The herald-client SDK in headless Chromium (the browser's own EventSource) through every
// scenario of sdk-scenarios.mjs, against a real `herald serve` on another origin. The page
// loads the built ESM package; its token callback asks the page's origin for tokens, as an
// app asks its backend.
//
// Environment: HERALD_BIN (default ../../target/debug/herald), CHROMIUM_PATH.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { scenarios, server, token, until } from './sdk-scenarios.mjs';
import { CHROMIUM, CHROMIUM_ARGS, withTimeout } from './support.mjs';

const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'dist');

const PAGE = `<!doctype html><meta charset="utf-8"><title>herald-client</title>
<script type="module">
import { Herald } from '/sdk/index.js';
const clients = {};
window.__make = (id, opts) => {
  const { token: t, follow = [], ...rest } = opts;
  let calls = 0;
  const source = t.fixed ?? (async () => {
    const q = new URLSearchParams({ channels: t.channels.join(','), ttl: String(t.ttlSecs ?? 3600),
      sub: t.sub ?? 'ann', expired: t.firstExpired && ++calls === 1 ? '1' : '0' });
    const r = await fetch('/token?' + q);
    return r.text();
  });
  const h = new Herald({ transport: 'eventsource', token: source, ...rest });
  const c = { h, got: {}, states: [], resets: [], messages: [] };
  h.onState((s) => c.states.push({ state: s.state, delayMs: s.delayMs,
    error: s.error && { status: s.error.status, code: s.error.code } }));
  h.onReset(({ error, ...r }) => c.resets.push(r));
  for (const ch of [...(opts.channels ?? []), ...follow]) {
    c.got[ch] ??= [];
    h.on(ch, '*', (m) => {
      c.got[ch].push({ seq: m.seq, data: m.data, backfilled: m.backfilled, event: m.event });
      c.messages.push(m);
    });
  }
  clients[id] = c;
};
window.__call = async (id, what, arg) => {
  const c = clients[id];
  switch (what) {
    case 'connect': return c.h.connect();
    case 'subscribe': return c.h.subscribe(arg);
    case 'unsubscribe': return c.h.unsubscribe(arg);
    case 'ackAll': return c.messages.filter((m) => m.channel === arg).forEach((m) => c.h.ack(m));
    case 'close': return c.h.close();
  }
};
window.__snap = (id) => {
  const c = clients[id];
  return { state: c.h.state, attempts: c.h.attempts, tokenRequests: c.h.tokenRequests,
    acksSent: c.h.acksSent, cursor: c.h.cursor, got: c.got, states: c.states, resets: c.resets };
};
window.__ready = true;
</script>`;

const res = { browser: null, page: null, pages: null, origin: '' };
const cleanup = [];

before(async () => {
  res.pages = http.createServer(async (req, resp) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/sdk.html') {
      resp.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      resp.end(PAGE);
    } else if (url.pathname.startsWith('/sdk/') && url.pathname.endsWith('.js')) {
      const file = path.join(DIST, path.basename(url.pathname));
      try {
        const body = await readFile(file);
        resp.writeHead(200, { 'content-type': 'text/javascript', 'cache-control': 'no-store' });
        resp.end(body);
      } catch {
        resp.writeHead(404).end();
      }
    } else if (url.pathname === '/token') {
      const q = url.searchParams;
      const ttl = q.get('expired') === '1' ? -60 : Number(q.get('ttl'));
      resp.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store' });
      resp.end(token({ channels: q.get('channels').split(','), ttlSecs: ttl, sub: q.get('sub') }));
    } else {
      resp.writeHead(404).end();
    }
  });
  await new Promise((r) => res.pages.listen(0, '127.0.0.1', r));
  res.origin = `http://127.0.0.1:${res.pages.address().port}`;
  res.browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  res.page = await res.browser.newPage();
  res.page.on('pageerror', (e) => console.error(`page error: ${e.message}`));
  await res.page.goto(`${res.origin}/sdk.html`);
  await res.page.waitForFunction(() => window.__ready === true, null, { timeout: 10_000 });
});

after(async () => {
  for (const f of cleanup.reverse()) await f().catch(() => {});
  if (res.browser) await withTimeout(res.browser.close(), 10_000, 'browser.close').catch(() => {});
  if (res.pages) {
    res.pages.closeAllConnections?.();
    await new Promise((r) => res.pages.close(() => r()));
  }
});

let next = 0;
/** Clients in the page, over EventSource; the server lets the page's origin in (CORS). */
const browser = {
  get serverSettings() {
    return { HERALD_CORS_ORIGINS: res.origin };
  },
  async client(opts) {
    const id = `c${next++}`;
    const t = opts.token.callback ? opts.token : { ...opts.token, fixed: token(opts.token) };
    await res.page.evaluate(([id, o]) => window.__make(id, o), [id, { ...opts, token: t }]);
    const call = (what, arg) => res.page.evaluate(([id, w, a]) => window.__call(id, w, a), [id, what, arg]);
    cleanup.push(() => call('close'));
    return {
      connect: () => call('connect'),
      subscribe: (ch) => call('subscribe', ch),
      unsubscribe: (ch) => call('unsubscribe', ch),
      ackAll: (ch) => call('ackAll', ch),
      close: () => call('close'),
      snap: () => res.page.evaluate((id) => window.__snap(id), id),
    };
  },
};

for (const [name, run] of Object.entries(scenarios)) {
  test(`chromium: ${name}`, () => run(browser, cleanup));
}

test('chromium: offline closes the stream, online resumes it with nothing lost', async () => {
  const s = await server(cleanup, browser.serverSettings);
  const c = await browser.client({ url: s.base, token: { channels: ['live:*'] }, channels: ['live:o'] });
  await c.connect();
  const snapUntil = (what, pred) =>
    until(async () => pred(await c.snap()), what, 20_000, async () => JSON.stringify(await c.snap()));
  await snapUntil('open', (x) => x.state === 'open');
  await s.publish('live:o', { i: 1 });
  await snapUntil('the first', (x) => x.got['live:o'].length === 1);
  await res.page.context().setOffline(true);
  await snapUntil('offline', (x) => x.state === 'offline');
  const attempts = (await c.snap()).attempts;
  for (let i = 2; i <= 4; i++) await s.publish('live:o', { i });
  await res.page.context().setOffline(false);
  await snapUntil('all four after going online', (x) => x.got['live:o'].length === 4);
  const x = await c.snap();
  assert.deepEqual(x.got['live:o'].map((m) => m.seq), [1, 2, 3, 4]);
  assert.equal(x.attempts, attempts + 1, 'one reconnect, at once');
  assert.ok(!x.states.some((st) => st.state === 'retrying'), 'offline is not a failure');
});
