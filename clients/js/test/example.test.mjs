// The live-stream example (examples/live-stream) in headless Chromium against a real
// `herald serve --dev`: two viewers' pages show the demo show's comments, the heart count,
// gifts in the inbox (acked), and the viewer count moving from 2 to 1 when one leaves.
// HERALD_SCREENSHOT=1 refreshes docs/live-stream.png.
//
// Environment: HERALD_BIN (default ../../target/debug/herald), CHROMIUM_PATH.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, hermeticEnv, startServe, withTimeout } from './support.mjs';

const PKG_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ROOT = path.resolve(PKG_DIR, '../..');
const EXAMPLE = path.join(ROOT, 'examples/live-stream');
const HERALD_BIN = path.resolve(PKG_DIR, process.env.HERALD_BIN || '../../target/debug/herald');
const SECRET = 'live-stream-example-secret-0123456789';

const res = { children: [], browser: null, tmp: null };
after(async () => {
  if (res.browser) await withTimeout(res.browser.close(), 10_000, 'browser.close').catch(() => {});
  for (const c of res.children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  if (res.tmp) await rm(res.tmp, { recursive: true, force: true });
});

/** Starts `node script` and resolves with the first match of `pattern` on its stdout. */
function node(script, env, pattern) {
  const child = spawn(process.execPath, [script], { env: hermeticEnv(env), stdio: ['ignore', 'pipe', 'inherit'] });
  res.children.push(child);
  const found = new Promise((resolve, reject) => {
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (c) => {
      out += c;
      const m = out.match(pattern);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`${script} exited (${code}): ${out}`)));
  });
  return withTimeout(found, 20_000, script);
}

const shown = () => ({
  comments: document.querySelectorAll('#comments li').length,
  viewers: document.querySelector('#viewers b').textContent,
  hearts: Number(document.querySelector('#hearts b').textContent.replace(/\D/g, '')),
  inbox: document.querySelectorAll('#inbox li').length,
  acked: document.querySelector('#acked').textContent,
  conn: document.querySelector('#conn').textContent,
});

test('the live-stream example shows the show, the hearts, the inbox and the viewer count', async () => {
  res.tmp = await mkdtemp(path.join(os.tmpdir(), 'herald-example-'));
  const { child, ready } = startServe(
    HERALD_BIN,
    res.tmp,
    { HERALD_JWT_SECRET: SECRET, HERALD_CORS_ORIGINS: '*', HERALD_PRESENCE_TICK_MS: '300' },
    { args: ['--dev', '--config', path.join(EXAMPLE, 'herald.toml')] },
  );
  res.children.push(child);
  const herald = await ready;
  const page = await node(path.join(EXAMPLE, 'app.mjs'), { PORT: '0', HERALD_URL: herald, HERALD_JWT_SECRET: SECRET }, /page on (http:\/\/\S+)/);
  await node(path.join(EXAMPLE, 'show.mjs'), { HERALD_URL: herald, SHOW_PACE: '4', SHOW_VIEWERS: 'you' }, /(show running)/);

  res.browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  const ctx = await res.browser.newContext({ viewport: { width: 1100, height: 620 } });
  const you = await ctx.newPage();
  you.on('pageerror', (e) => console.error(`page error: ${e.message}`));
  await you.goto(`${page}?user=you`);
  const friend = await ctx.newPage();
  await friend.goto(`${page}?user=friend`);

  const waitFor = async (what, fn, arg) => {
    try {
      await you.waitForFunction(fn, arg, { timeout: 20_000, polling: 100 });
    } catch (e) {
      throw new Error(`${what}: ${e.message}\nshown: ${JSON.stringify(await you.evaluate(shown))}`);
    }
  };
  await waitFor('comments, hearts, a gift and two viewers', () => {
    const n = (s) => document.querySelectorAll(s).length;
    return n('#comments li') >= 4 && n('#inbox li') >= 1 &&
      document.querySelector('#viewers b').textContent === '2' &&
      document.querySelector('#conn').textContent === 'open' &&
      Number(document.querySelector('#hearts b').textContent.replace(/\D/g, '')) > 0;
  });
  const first = await you.evaluate(shown);
  assert.match(first.acked, /acked/);
  if (process.env.HERALD_SCREENSHOT === '1') {
    await you.screenshot({ path: path.join(ROOT, 'docs/live-stream.png') });
  }
  // The hearts keep counting; the viewer count follows a viewer who leaves.
  await waitFor('more hearts', (h) => Number(document.querySelector('#hearts b').textContent.replace(/\D/g, '')) > h, first.hearts);
  await friend.close();
  await waitFor('one viewer', () => document.querySelector('#viewers b').textContent === '1');
});
