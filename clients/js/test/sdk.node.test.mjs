// The herald-client SDK in Node 20+ (fetch streaming) through every scenario of
// sdk-scenarios.mjs, against a real `herald serve`.
//
// Environment: HERALD_BIN (default ../../target/debug/herald relative to clients/js).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Herald } from '../dist/index.js';
import { scenarios, token } from './sdk-scenarios.mjs';

const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f().catch(() => {});
});

/** Clients in this process, over fetch. */
const node = {
  serverSettings: {},
  async client(opts) {
    const { token: t, follow = [], ...rest } = opts;
    let calls = 0;
    const source = t.callback
      ? () => token({ ...t, ttlSecs: t.firstExpired && ++calls === 1 ? -60 : t.ttlSecs })
      : token(t);
    const h = new Herald({ transport: 'fetch', token: source, ...rest });
    const got = {};
    const states = [];
    const resets = [];
    const messages = [];
    h.onState((s) => states.push({ ...s, error: s.error && { status: s.error.status, code: s.error.code } }));
    h.onReset((r) => resets.push(r));
    for (const ch of [...(opts.channels ?? []), ...follow]) {
      got[ch] ??= [];
      h.on(ch, '*', (m) => {
        got[ch].push({ seq: m.seq, data: m.data, backfilled: m.backfilled, event: m.event });
        messages.push(m);
      });
    }
    cleanup.push(() => h.close());
    return {
      connect: async () => h.connect(),
      subscribe: async (ch) => h.subscribe(ch),
      unsubscribe: async (ch) => h.unsubscribe(ch),
      ackAll: async (ch) => messages.filter((m) => m.channel === ch).forEach((m) => h.ack(m)),
      close: () => h.close(),
      snap: async () => ({
        state: h.state,
        attempts: h.attempts,
        tokenRequests: h.tokenRequests,
        acksSent: h.acksSent,
        cursor: h.cursor,
        got: structuredClone(got),
        states: structuredClone(states),
        resets: structuredClone(resets.map(({ error, ...r }) => r)),
      }),
    };
  },
};

for (const [name, run] of Object.entries(scenarios)) {
  test(`node: ${name}`, () => run(node, cleanup));
}

test('node: a stream that drops before its first event resumes from where it started', async () => {
  const { server, until } = await import('./sdk-scenarios.mjs');
  const s = await server(cleanup);
  // Long enough a backoff that the publishes below happen while the client is away.
  const c = await node.client({ url: s.base, token: { channels: ['live:*'] }, channels: ['live:q'], retry: { baseMs: 4000, maxMs: 4000 } });
  await c.connect();
  await until(async () => (await c.snap()).cursor !== undefined, 'the cursor the stream starts with');
  await s.kill9();
  await s.restart();
  await s.publish('live:q', { i: 1 });
  await s.publish('live:q', { i: 2 });
  await until(async () => (await c.snap()).got['live:q'].length === 2, 'both, after the reconnect', 20_000, async () =>
    JSON.stringify(await c.snap()),
  );
  const x = await c.snap();
  assert.deepEqual(x.got['live:q'].map((m) => m.seq), [1, 2]);
});
