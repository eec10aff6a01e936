// The herald-client scenarios, run against a real `herald serve` by two drivers: Node (fetch
// streaming, sdk.node.test.mjs) and headless Chromium (native EventSource,
// sdk.browser.test.mjs). A driver makes clients; every client call is async, so the same
// scenario can drive a client in this process or in a page.
//
// A client handle: connect(), subscribe(ch), unsubscribe(ch), ackAll(ch), close(), and
// snap() → { state, attempts, tokenRequests, acksSent, cursor, got: {ch: [{seq, data,
// backfilled, event}]}, states: [{state, delayMs, error: {status, code}}], resets: [...] }.
// Client options: { url, channels, token: { channels, ttlSecs, sub, callback, firstExpired },
// retry, ackIntervalMs }.

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { signToken, startServe } from './support.mjs';

const PKG_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const HERALD_BIN = path.resolve(PKG_DIR, process.env.HERALD_BIN || '../../target/debug/herald');
export const API_KEY = 'sdk-test-key-0123456789';
export const SECRET = 'sdk-test-secret-0123456789abcdef';
const WAIT = 20_000;

/** A subscriber token for `channels`, living `ttlSecs` (negative: expired already). */
export function token({ channels, ttlSecs = 3600, sub = 'ann' }) {
  return signToken({ sub, channels, exp: Math.floor(Date.now() / 1000) + ttlSecs }, SECRET);
}

/** Polls `cond` (sync or async) until true, or fails naming `what` and the last `show()`. */
export async function until(cond, what, ms = WAIT, show = async () => '') {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${await show()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * A `herald serve` (killed and removed by `cleanup`) that can be killed with SIGKILL and
 * started again on its port and data dir.
 */
export async function server(cleanup, settings = {}, args = []) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'herald-sdk-'));
  const env = {
    HERALD_API_KEYS: API_KEY,
    HERALD_JWT_SECRET: SECRET,
    HERALD_LOG: 'warn',
    HERALD_RETRY_MS: '200',
    ...settings,
  };
  const s = { dir, base: '', child: null };
  s.start = async (listen = '127.0.0.1:0') => {
    const { child, ready } = startServe(HERALD_BIN, dir, env, { listen, args });
    s.child = child;
    s.base = await ready;
  };
  s.kill9 = async () => {
    const exited = new Promise((r) => s.child.once('exit', r));
    s.child.kill('SIGKILL');
    await exited;
  };
  s.restart = () => s.start(s.base.replace('http://', ''));
  s.publish = async (channel, data) => {
    const resp = await fetch(`${s.base}/v1/publish`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ channel, data }),
    });
    const body = await resp.json();
    assert.equal(resp.status, 200, JSON.stringify(body));
    return body;
  };
  s.history = async (channel) => {
    const resp = await fetch(`${s.base}/v1/channels/${channel}/history?after=0&limit=1`, {
      headers: { authorization: `Bearer ${API_KEY}` },
    });
    return resp.json();
  };
  await s.start();
  cleanup.push(async () => {
    if (s.child.exitCode === null && s.child.signalCode === null) await s.kill9();
    await rm(dir, { recursive: true, force: true });
  });
  return s;
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const seqs = (snap, ch) => (snap.got[ch] ?? []).map((m) => m.seq);
const wait = (ms) => new Promise((r) => setTimeout(r, ms));

async function stateIs(c, state, what = state) {
  await until(async () => (await c.snap()).state === state, what, WAIT, async () => JSON.stringify(await c.snap()));
}

async function seen(c, what, pred) {
  await until(async () => pred(await c.snap()), what, WAIT, async () => JSON.stringify(await c.snap()));
  return c.snap();
}

/** Each scenario: (driver, cleanup) → a promise that rejects on failure. */
export const scenarios = {
  async 'every message reaches the app exactly once, in order, through a kill -9 and restart'(d, cleanup) {
    const s = await server(cleanup, d.serverSettings);
    const chans = ['live:k1', 'live:k2'];
    const c = await d.client({ url: s.base, token: { channels: ['live:*'] }, channels: chans });
    await c.connect();
    await stateIs(c, 'open');
    for (let i = 1; i <= 5; i++) for (const ch of chans) await s.publish(ch, { i });
    await seen(c, 'the first five', (x) => chans.every((ch) => seqs(x, ch).length === 5));
    await s.kill9();
    await seen(c, 'the client to notice', (x) => x.states.some((st) => st.state === 'retrying'));
    await s.restart();
    for (let i = 6; i <= 10; i++) for (const ch of chans) await s.publish(ch, { i });
    const x = await seen(c, 'all ten after the restart', (x) => chans.every((ch) => seqs(x, ch).length >= 10));
    for (const ch of chans) {
      assert.deepEqual(seqs(x, ch), range(1, 10), `${ch}: once each, in order`);
      assert.deepEqual(x.got[ch].map((m) => m.data.i), range(1, 10));
    }
    assert.ok(x.cursor?.startsWith('h1'), 'a cursor');
    assert.ok(!x.states.some((st) => st.state === 'stopped'));
  },

  async 'channels added and removed mid-stream keep every other position'(d, cleanup) {
    const s = await server(cleanup, d.serverSettings);
    const c = await d.client({ url: s.base, token: { channels: ['live:*'] }, channels: ['live:a'], follow: ['live:b'] });
    await c.connect();
    await stateIs(c, 'open');
    for (let i = 1; i <= 3; i++) await s.publish('live:a', { i });
    await seen(c, 'a1..a3', (x) => seqs(x, 'live:a').length === 3);

    const before = (await c.snap()).attempts;
    await c.subscribe('live:b');
    // Published while the stream switches: the cursor brings them.
    for (let i = 4; i <= 6; i++) await s.publish('live:a', { i });
    await seen(c, 'the new stream', (x) => x.attempts > before && x.state === 'open');
    await s.publish('live:b', { i: 1 });
    let x = await seen(c, 'b1 and a4..a6', (x) => seqs(x, 'live:b').length === 1 && seqs(x, 'live:a').length === 6);
    assert.deepEqual(seqs(x, 'live:a'), range(1, 6));

    const opened = x.attempts;
    await c.unsubscribe('live:a');
    await seen(c, 'the stream without live:a', (x) => x.attempts > opened && x.state === 'open');
    await s.publish('live:a', { i: 7 });
    await s.publish('live:b', { i: 2 });
    x = await seen(c, 'b2', (x) => seqs(x, 'live:b').length === 2);
    assert.deepEqual(seqs(x, 'live:a'), range(1, 6), 'nothing of a removed channel');
    assert.deepEqual(seqs(x, 'live:b'), [1, 2]);
  },

  async 'tokens expiring mid-stream are refreshed, across a reconnect, without losing a message'(d, cleanup) {
    const s = await server(cleanup, d.serverSettings);
    // Each token lives 3 s: the client asks for the next before it expires.
    const c = await d.client({
      url: s.base,
      token: { channels: ['live:*'], ttlSecs: 3, callback: true },
      channels: ['live:t'],
    });
    await c.connect();
    await stateIs(c, 'open');
    const started = Date.now();
    let n = 0;
    // Past the first token's exp, then a reconnect (kill -9) with whatever token is current.
    while (Date.now() - started < 4000) {
      await s.publish('live:t', { i: ++n });
      await wait(100);
    }
    await s.kill9();
    await s.restart();
    for (let k = 0; k < 5; k++) await s.publish('live:t', { i: ++n });
    const x = await seen(c, `all ${n}`, (x) => seqs(x, 'live:t').length >= n);
    assert.deepEqual(seqs(x, 'live:t'), range(1, n));
    assert.ok(x.tokenRequests >= 2, `asked for tokens ${x.tokenRequests} times`);
    assert.ok(!x.states.some((st) => st.state === 'stopped'), 'never stopped');
  },

  async 'a 401 gets a fresh token from the callback; a fixed token that is refused stops'(d, cleanup) {
    const s = await server(cleanup, d.serverSettings);
    // The first token expired already: the server answers 401, the client asks again.
    const c = await d.client({
      url: s.base,
      token: { channels: ['live:*'], callback: true, firstExpired: true },
      channels: ['live:r'],
      retry: { baseMs: 50, maxMs: 200 },
    });
    await c.connect();
    const x = await seen(c, 'open after a 401', (x) => x.state === 'open');
    assert.equal(x.tokenRequests, 2);
    assert.equal(x.states.find((st) => st.state === 'retrying')?.error?.status, 401);

    const fixed = await d.client({ url: s.base, token: { channels: ['live:*'], ttlSecs: -60 }, channels: ['live:r'] });
    await fixed.connect();
    const y = await seen(fixed, 'stopped', (x) => x.state === 'stopped');
    assert.equal(y.states.at(-1).error.status, 401);
    assert.equal(y.attempts, 1, 'no retry without a way to get a new token');
  },

  async 'a reset backfills what the history still has, then says what was missed'(d, cleanup) {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'herald-sdk-cfg-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const config = path.join(dir, 'herald.toml');
    await writeFile(config, '[namespaces.tiny]\nretention_count = 5\n');
    const s = await server(cleanup, { ...d.serverSettings, HERALD_RETENTION_SWEEP_SECS: '1' }, ['--config', config]);
    // A long backoff: the server restarts, takes 20 publishes and trims the channel to its
    // last five before the client is back.
    const c = await d.client({
      url: s.base,
      token: { channels: ['tiny:*'] },
      channels: ['tiny:r'],
      retry: { baseMs: 12_000, maxMs: 12_000 },
    });
    await c.connect();
    await stateIs(c, 'open');
    for (let i = 1; i <= 3; i++) await s.publish('tiny:r', { i });
    await seen(c, 'the first three', (x) => seqs(x, 'tiny:r').length === 3);
    await s.kill9();
    await seen(c, 'the client to notice', (x) => x.states.some((st) => st.state === 'retrying'));
    await s.restart();
    for (let i = 4; i <= 23; i++) await s.publish('tiny:r', { i });
    await until(async () => (await s.history('tiny:r')).first_seq === 19, 'the trim to the last five');
    assert.equal((await c.snap()).state, 'retrying', 'trimmed before the client came back');
    let x = await seen(c, 'the reset', (x) => x.resets.length === 1);
    const r = x.resets[0];
    assert.equal(r.reason, 'retention');
    assert.equal(r.seq, 23);
    assert.equal(r.backfilled, 5, JSON.stringify(r));
    assert.equal(r.missed, 15, 'seq 4..18 are gone');
    assert.deepEqual(seqs(x, 'tiny:r'), [1, 2, 3, 19, 20, 21, 22, 23]);
    assert.deepEqual(x.got['tiny:r'].map((m) => m.backfilled), [false, false, false, true, true, true, true, true]);
    await s.publish('tiny:r', { i: 24 });
    x = await seen(c, 'live after the reset', (x) => seqs(x, 'tiny:r').length === 9);
    assert.equal(x.got['tiny:r'].at(-1).backfilled, false);
  },

  async 'a 503 is retried after a jittered Retry-After, a bounded number of times; a 403 stops'(d, cleanup) {
    const s = await server(cleanup, { ...d.serverSettings, HERALD_MAX_CONNECTIONS: '1' });
    // The one stream the server takes.
    const holder = new AbortController();
    cleanup.push(async () => holder.abort());
    const held = await fetch(`${s.base}/v1/sse?channel=live:h`, {
      headers: { authorization: `Bearer ${token({ channels: ['live:*'] })}` },
      signal: holder.signal,
    });
    assert.equal(held.status, 200);
    const clients = [];
    for (let i = 0; i < 3; i++) {
      clients.push(
        await d.client({ url: s.base, token: { channels: ['live:*'] }, channels: ['live:w'], retry: { baseMs: 400, maxMs: 4000 } }),
      );
    }
    const t0 = Date.now();
    for (const c of clients) await c.connect();
    // Not a synchronization: the window the retries are counted in.
    await wait(11_000);
    const delays = [];
    for (const c of clients) {
      const x = await c.snap();
      const retrying = x.states.filter((st) => st.state === 'retrying');
      assert.ok(retrying.length >= 2, `retried: ${JSON.stringify(x.states)}`);
      for (const st of retrying) {
        assert.equal(st.error.status, 503);
        assert.equal(st.error.code, 'too_many_connections');
        assert.ok(st.delayMs >= 5000, `Retry-After (5 s) honoured: ${st.delayMs}`);
        delays.push(st.delayMs);
      }
      // At most one attempt per Retry-After (plus the first): bounded, never a tight loop.
      assert.ok(x.attempts <= 1 + Math.ceil((Date.now() - t0) / 5000), `attempts ${x.attempts}`);
    }
    assert.ok(new Set(delays).size > delays.length / 2, `jittered: ${delays}`);
    holder.abort();
    await until(async () => {
      for (const c of clients) if ((await c.snap()).state === 'open') return true;
      return false;
    }, 'a client in once the held stream went', 15_000);

    const forbidden = await d.client({ url: s.base, token: { channels: ['other:*'] }, channels: ['live:x'] });
    await forbidden.connect();
    const y = await seen(forbidden, 'stopped', (x) => x.state === 'stopped');
    assert.equal(y.states.at(-1).error.code, 'channel_forbidden');
    assert.equal(y.attempts, 1);
    // The app fixes what was refused and connects again (on a slot the others give back).
    for (const c of clients) await c.close();
    await forbidden.unsubscribe('live:x');
    await forbidden.subscribe('other:x');
    await forbidden.connect();
    await seen(forbidden, 'open again', (x) => x.state === 'open');
  },

  async 'acks are batched per channel and sent on close'(d, cleanup) {
    const s = await server(cleanup, d.serverSettings);
    const c = await d.client({
      url: s.base,
      token: { channels: ['live:*'], sub: 'bob' },
      channels: ['user:bob'],
      ackIntervalMs: 60_000,
    });
    await c.connect();
    await stateIs(c, 'open');
    for (let i = 1; i <= 4; i++) await s.publish('user:bob', { i });
    await seen(c, 'four', (x) => seqs(x, 'user:bob').length === 4);
    await c.ackAll('user:bob');
    await c.close();
    assert.equal((await c.snap()).acksSent, 1, 'one ack for four messages');
    const resp = await fetch(`${s.base}/v1/channels/user:bob/acks`, { headers: { authorization: `Bearer ${API_KEY}` } });
    const body = await resp.json();
    assert.equal(body.acks[0].seq, 4, JSON.stringify(body));
  },
};
