// Headless-Chromium test of the operator's dashboard: `/admin` opens with the admin key,
// shows the cluster's live figures changing while `herald bench` publishes to hundreds of
// streams, traces a message from its box, and refuses a publisher key. With
// HERALD_SCREENSHOT=1 it writes its screenshot to docs/admin-dashboard.png.
//
// Environment: HERALD_BIN, CHROMIUM_PATH (as browser.test.mjs).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import {
  CHROMIUM, CHROMIUM_ARGS, hermeticEnv, request, startServe, withTimeout,
} from './support.mjs';

const PKG_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const HERALD_BIN = path.resolve(PKG_DIR, process.env.HERALD_BIN || '../../target/debug/herald');
const SCREENSHOT = path.resolve(PKG_DIR, '../../docs/admin-dashboard.png');
const API_KEY = 'testkey-admin-123456';
const ADMIN_KEY = 'admin-dashboard-key-0123456789';
const JWT_SECRET = 'admin-test-secret-0123456789';

const res = { tmp: null, herald: null, bench: null, browser: null };

after(async () => {
  if (res.browser) await withTimeout(res.browser.close(), 10_000, 'browser.close').catch(() => {});
  for (const p of [res.bench, res.herald]) if (p && p.exitCode === null) p.kill('SIGKILL');
  if (res.tmp) await rm(res.tmp, { recursive: true, force: true });
});

function startHerald(dataDir) {
  const { child, ready } = startServe(HERALD_BIN, dataDir, {
    HERALD_API_KEYS: API_KEY,
    HERALD_JWT_SECRET: JWT_SECRET,
    HERALD_ADMIN_KEY: ADMIN_KEY,
    HERALD_LOG: 'warn',
  });
  res.herald = child;
  return ready;
}

/** `herald bench`: 400 streams over 8 channels, 40 publishes a second, for `secs`. */
function startBench(base, secs) {
  const addr = new URL(base).host;
  const child = spawn(
    HERALD_BIN,
    ['bench', '--addr', addr, '--connections', '400', '--channels', '8', '--rate', '40',
      '--duration', String(secs)],
    { env: hermeticEnv({ HERALD_API_KEY: API_KEY, HERALD_JWT_SECRET: JWT_SECRET }), stdio: 'ignore' },
  );
  res.bench = child;
  return child;
}

/** The number in the figure `id` of the page (NaN while it shows a dash). */
async function figure(page, id) {
  const text = await page.textContent(`#${id}`);
  return Number(String(text).replace(/,/g, ''));
}

test('the dashboard shows live figures while a bench runs, and traces a message', { timeout: 120_000 }, async () => {
  res.tmp = await mkdtemp(path.join(os.tmpdir(), 'herald-admin-'));
  const base = await startHerald(path.join(res.tmp, 'data'));

  // Its data needs the admin key, not a publisher key.
  const refused = await request(http, new URL('/admin/stream', base), {
    headers: { authorization: `Bearer ${API_KEY}` },
  });
  assert.equal(refused.status, 401, refused.text);

  res.browser = await withTimeout(
    chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS }),
    30_000,
    'chromium.launch',
  );
  const page = await res.browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));

  // Without the key the page asks for it; with it, it goes live.
  await page.goto(`${base}/admin`);
  await page.waitForSelector('#login:not([hidden])', { timeout: 15_000 });
  await page.fill('#key', ADMIN_KEY);
  await page.click('#login-form button');
  await page.waitForFunction(() => document.getElementById('status').textContent === 'live', null, { timeout: 15_000 });

  const bench = startBench(base, 25);
  // The streams arrive and deliveries flow: the figures follow.
  await page.waitForFunction(() => Number(document.getElementById('f-connections').textContent.replace(/,/g, '')) >= 400,
    null, { timeout: 60_000, polling: 200 });
  await page.waitForFunction(() => Number(document.getElementById('f-deliver').textContent.replace(/,/g, '')) > 0,
    null, { timeout: 30_000, polling: 200 });
  const first = await figure(page, 'f-deliver');
  const seen = new Set([first]);
  // Live: the rate keeps changing from tick to tick while the bench runs.
  const deadline = Date.now() + 15_000;
  while (seen.size < 3 && Date.now() < deadline) {
    await page.waitForTimeout(1100);
    seen.add(await figure(page, 'f-deliver'));
  }
  assert.ok(seen.size >= 3, `deliveries/s did not change: ${[...seen]}`);
  assert.ok((await page.$$('#members tbody tr')).length >= 1, 'no member rows');
  assert.ok((await page.$$('#top tbody tr')).length >= 1, 'no top channels');
  assert.ok((await page.$$('#hops tbody tr')).length >= 1, 'no hop latencies');

  // The trace box: a traced publish, then its journey.
  const traced = await request(http, new URL('/v1/publish', base), {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
  }, JSON.stringify({ channel: 'bench-0', data: { hi: 1 }, trace: true }));
  assert.equal(traced.status, 200, traced.text);
  const { seq } = JSON.parse(traced.text);
  await page.fill('#trace-channel', 'bench-0');
  await page.fill('#trace-seq', String(seq));
  await page.click('#trace-form button');
  await page.waitForFunction(() => document.getElementById('trace-out').textContent.includes('written_last'),
    null, { timeout: 15_000, polling: 100 });

  if (process.env.HERALD_SCREENSHOT === '1') {
    // Let the chart fill with the rest of the bench.
    await page.waitForTimeout(15_000);
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
  }
  assert.deepEqual(errors, []);
  bench.kill('SIGKILL');
});
