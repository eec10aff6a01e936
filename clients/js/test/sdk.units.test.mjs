// herald-client's pure parts: the SSE parser, the backoff, Retry-After and token exp reading.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SseParser, backoffDelay, expOf, retryAfterMs } from '../dist/index.js';

test('the SSE parser handles split chunks, CRLF, comments, multi-line data and sticky ids', () => {
  const events = [];
  const retries = [];
  const ids = [];
  const p = new SseParser((e) => events.push(e), (ms) => retries.push(ms), (id) => ids.push(id));
  const stream = 'retry: 2371\r\nid: h1start\r\n\r\n: hb\n\nid: h1a\nevent: comment\ndata: {"a":\ndata: 1}\n\ndata: eph\r\n\r\nevent: x\n\n';
  // Byte by byte: every split point, including between \r and \n.
  for (const ch of stream) p.feed(ch);
  assert.deepEqual(retries, [2371]);
  assert.deepEqual(ids, ['h1start'], 'an id: block without an event');
  assert.deepEqual(events, [
    { event: 'comment', data: '{"a":\n1}', id: 'h1a', hasId: true },
    { event: 'message', data: 'eph', id: 'h1a', hasId: false },
    { event: 'x', data: '', id: 'h1a', hasId: false },
  ]);
});

test('backoff doubles to its cap with equal jitter', () => {
  const r = { baseMs: 500, maxMs: 30_000 };
  assert.equal(backoffDelay(0, r, () => 0), 250);
  assert.equal(backoffDelay(0, r, () => 1), 500);
  assert.equal(backoffDelay(3, r, () => 1), 4000);
  assert.equal(backoffDelay(20, r, () => 1), 30_000);
  assert.equal(backoffDelay(1000, r, () => 0), 15_000);
});

test('Retry-After in seconds or as a date; token exp from the payload', () => {
  assert.equal(retryAfterMs('5'), 5000);
  assert.equal(retryAfterMs(null), undefined);
  assert.equal(retryAfterMs('soon'), undefined);
  const now = Date.parse('2026-12-03T00:00:00Z');
  assert.equal(retryAfterMs('Thu, 03 Dec 2026 00:00:10 GMT', now), 10_000);
  const payload = Buffer.from(JSON.stringify({ sub: 'ann', exp: 1796000000 })).toString('base64url');
  assert.equal(expOf(`e30.${payload}.sig`), 1796000000);
  assert.equal(expOf('not-a-jwt'), undefined);
});

test('events at or below a channel position are dropped (dedupe by channel and seq)', async () => {
  const { Herald } = await import('../dist/index.js');
  const env = (seq, epoch = 7) => JSON.stringify({ channel: 'live:d', epoch, seq, ts: 1, data: { seq } });
  // One stream that repeats what a resume could repeat: 2 again, 1 again, then 3; a new epoch.
  const body = ['retry: 1000\n\n', ...[1, 2, 2, 1, 3].map((s) => `id: c${s}\ndata: ${env(s)}\n\n`), `id: e\ndata: ${env(1, 8)}\n\n`];
  const fakeFetch = async () =>
    new Response(
      new ReadableStream({
        start(ctl) {
          for (const chunk of body) ctl.enqueue(new TextEncoder().encode(chunk));
        },
      }),
      { status: 200, headers: { 'content-type': 'text/event-stream' } },
    );
  const h = new Herald({ url: 'http://unused', transport: 'fetch', fetch: fakeFetch, channels: ['live:d'] });
  const got = [];
  h.on('live:d', '*', (m) => got.push(`${m.epoch}:${m.seq}`));
  h.connect();
  const deadline = Date.now() + 5000;
  while (got.length < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  await h.close();
  assert.deepEqual(got, ['7:1', '7:2', '7:3', '8:1']);
  assert.equal(h.cursor, 'e');
});
