// Helpers shared by the browser tests (no tests here).

import { execFileSync, spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import path from 'node:path';

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/** Flags for a quiet headless Chromium in a container. */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

/** HS256 subscriber token, signed the way `herald token` signs it. */
export function signToken(claims, secret) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest();
  return `${head}.${body}.${b64url(sig)}`;
}

/**
 * One request on a connection of its own (`mod`: node:http or node:https), its whole answer
 * as text: { status, text }.
 */
export function request(mod, url, options, body) {
  const req = new Promise((resolve, reject) => {
    const r = mod.request(url, { agent: false, ...options }, (resp) => {
      let text = '';
      resp.setEncoding('utf8');
      resp.on('data', (c) => (text += c));
      resp.on('end', () => resolve({ status: resp.statusCode, text }));
      resp.on('error', reject);
    });
    r.on('error', reject);
    r.end(body);
  });
  return withTimeout(req, 10_000, `${options.method || 'GET'} ${url}`);
}

/** A self-signed certificate for 127.0.0.1, made with the `openssl` command: { cert, key } paths. */
export function selfSignedCert(dir) {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1',
  ], { stdio: 'pipe' });
  return { cert, key };
}

/** This process's environment without any HERALD_* setting, plus `settings`. */
export function hermeticEnv(settings) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('HERALD_')) env[k] = v;
  }
  return Object.assign(env, { NO_COLOR: '1' }, settings);
}

/**
 * `herald serve` on a free port with only `settings` for configuration: { child, ready },
 * `ready` resolving with its base URL (http or https) once it prints its listen line.
 * `listen` (a restart on the same port) and more `args` (`--config …`) are optional.
 */
export function startServe(bin, dataDir, settings, { listen = '127.0.0.1:0', args: more = [] } = {}) {
  const args = ['serve', '--listen', listen, '--data-dir', dataDir, ...more];
  const child = spawn(bin, args, {
    env: hermeticEnv(settings),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (c) => (log += c));
  const ready = new Promise((resolve, reject) => {
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/herald listening on (https?:\/\/127\.0\.0\.1:\d+)/);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`herald exited (${code}) before listening:\n${log}`)));
  });
  return { child, ready: withTimeout(ready, 20_000, 'herald to print its listen line') };
}
