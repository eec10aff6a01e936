// herald-client's pure parts: the SSE parser, the backoff, Retry-After and token exp reading.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SseParser, backoffDelay, expOf, retryAfterMs } from '../dist/index.js';

test('the SSE parser handles split chunks, CRLF, comments, multi-line data and sticky ids', () => {
  const events = [];
  const retries = [];
  const p = new SseParser((e) => events.push(e), (ms) => retries.push(ms));
  const stream = 'retry: 2371\r\n\r\n: hb\n\nid: h1a\nevent: comment\ndata: {"a":\ndata: 1}\n\ndata: eph\r\n\r\nevent: x\n\n';
  // Byte by byte: every split point, including between \r and \n.
  for (const ch of stream) p.feed(ch);
  assert.deepEqual(retries, [2371]);
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
