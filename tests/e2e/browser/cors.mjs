// Real-browser CORS check for tollgate: Debian's chromium, driven by playwright-core.
//
// Serves two tiny pages itself (node http on 127.0.0.1) and, from inside those pages,
// calls tollgate with fetch() and `Authorization: Bearer ...` (a non-safelisted header,
// so the browser must preflight):
//
//   allowed origin  http://127.0.0.1:<allowed-port>   (must be in the route's allow_origins)
//   foreign origins http://127.0.0.1:<another port>   (a second server)
//                   http://localhost:<allowed-port>   (same server, other host: other origin)
//
// Prints ONE JSON line with everything observed (fetch outcomes, the preflights and
// CORS errors Chromium reported over CDP) and exits 0 when every expectation held,
// 1 when one did not, 2 on a usage/setup error (message on stderr).
//
// Usage (flags win over environment):
//   node cors.mjs --api URL [--allowed-port N] [--token T] [--bad-token T] [--chromium PATH]
//   env: TOLLGATE_API_URL, TOLLGATE_ALLOWED_PORT, TOLLGATE_TOKEN, TOLLGATE_BAD_TOKEN, CHROMIUM
// --api is a tollgate URL on a route with `cors` whose upstream echoes requests as JSON
// ({method, uri, headers}); the token must be accepted there. --allowed-port 0 (default)
// lets the OS choose; the chosen origin is printed as `allowed_origin`.
//
// When run by a test (tests/it/browser_cors.rs): with TOLLGATE_E2E_WATCH_STDIN=1 it quits
// (exit 1, browser closed) as soon as its stdin closes, i.e. when the test process is
// gone however it ended; it quits the same way on SIGTERM/SIGINT; and once the browser is
// up it prints `BROWSER_PGID <n>` on stderr for every process group its browser runs in
// (playwright starts chromium in a session of its own), so that the test can kill those
// groups too.

import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

// Generous: a busy 2-core machine (the test suite runs beside it) is many times slower
// than an idle one; a passing run never comes near these.
const OVERALL_TIMEOUT_MS = 150_000;
const FETCH_TIMEOUT_MS = 20_000;

// Exits at once; playwright's own exit handler then kills the browser's process group.
function quit(why) {
  process.stderr.write(`cors.mjs: quitting: ${why}\n`);
  try {
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  } catch {
    /* not created yet, or already gone */
  }
  process.exit(1);
}
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => quit(sig));
if (process.env.TOLLGATE_E2E_WATCH_STDIN === '1') {
  process.stdin.on('end', () => quit('stdin closed (the test process is gone)'));
  process.stdin.on('error', () => quit('stdin failed'));
  process.stdin.resume();
}

// The process groups of our child processes (the browser), other than our own.
function childProcessGroups() {
  const fieldsOf = (pid) => {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // After "pid (comm) ": state ppid pgrp ...
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  };
  const own = Number(fieldsOf('self')[2]);
  const groups = new Set();
  for (const pid of fs.readdirSync('/proc').filter((d) => /^[0-9]+$/.test(d))) {
    try {
      const f = fieldsOf(pid);
      if (Number(f[1]) === process.pid && Number(f[2]) !== own) groups.add(Number(f[2]));
    } catch {
      /* gone meanwhile */
    }
  }
  return [...groups];
}

function usage(msg) {
  process.stderr.write(`cors.mjs: ${msg}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
    if (!m) usage(`unexpected argument ${JSON.stringify(a)}`);
    let v = m[2];
    if (v === undefined) {
      v = argv[++i];
      if (v === undefined) usage(`${a} needs a value`);
    }
    out[m[1]] = v;
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const known = ['api', 'allowed-port', 'token', 'bad-token', 'chromium'];
for (const k of Object.keys(args)) if (!known.includes(k)) usage(`unknown flag --${k}`);

const apiUrl = args.api ?? process.env.TOLLGATE_API_URL;
const token = args.token ?? process.env.TOLLGATE_TOKEN;
const badToken = args['bad-token'] ?? process.env.TOLLGATE_BAD_TOKEN ?? 'not.a.valid-token';
const allowedPort = Number(args['allowed-port'] ?? process.env.TOLLGATE_ALLOWED_PORT ?? 0);
const chromiumPath = args.chromium ?? process.env.CHROMIUM ?? '/usr/bin/chromium';

if (!apiUrl) usage('--api URL (or TOLLGATE_API_URL) is required');
if (!token) usage('--token (or TOLLGATE_TOKEN) is required');
if (!Number.isInteger(allowedPort) || allowedPort < 0 || allowedPort > 65535) {
  usage('--allowed-port must be 0..65535');
}
let api;
try {
  api = new URL(apiUrl);
} catch {
  usage(`--api: not a URL: ${apiUrl}`);
}
if (!['127.0.0.1', 'localhost', '[::1]'].includes(api.hostname)) {
  usage('--api must be a loopback URL');
}
if (!fs.existsSync(chromiumPath)) {
  usage(`chromium not found at ${chromiumPath}: apt-get update && apt-get install -y chromium`);
}

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  usage(`playwright-core is not installed (${e.message}): npm ci --prefix tests/e2e/browser`);
}

const PAGE = '<!doctype html><meta charset="utf-8"><title>tollgate cors probe</title><p>probe</p>';

function servePages(port) {
  return new Promise((resolve, reject) => {
    const srv = http.createServer((req, res) => {
      if (req.url === '/' || req.url.startsWith('/?')) {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
        res.end(PAGE);
      } else {
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('not found');
      }
    });
    srv.once('error', reject);
    srv.listen(port, '127.0.0.1', () => resolve(srv));
  });
}

// Runs in the page: one fetch, reduced to what a page script can observe.
async function probe({ url, method, headers, body, credentials, timeoutMs }) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeoutMs);
  try {
    const r = await fetch(url, { method, headers, body, credentials, mode: 'cors', signal: ctl.signal });
    const text = await r.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    return {
      fetched: true,
      status: r.status,
      json,
      text: json === null ? text.slice(0, 300) : undefined,
      // Readable only when the response exposes it (expose_headers).
      request_id: r.headers.get('x-request-id'),
    };
  } catch (e) {
    return { fetched: false, error_name: e.name, error_message: String(e.message) };
  } finally {
    clearTimeout(timer);
  }
}

const watchdog = setTimeout(() => {
  process.stdout.write(JSON.stringify({ ok: false, failures: [`overall timeout ${OVERALL_TIMEOUT_MS} ms`] }) + '\n');
  process.exit(1);
}, OVERALL_TIMEOUT_MS);

const servers = [];
let browser;
let userDataDir;
const out = { ok: false, failures: [] };

async function main() {
  let allowedSrv;
  try {
    allowedSrv = await servePages(allowedPort);
  } catch (e) {
    // Exit 3: the caller may pick another port and retry.
    process.stderr.write(`cors.mjs: cannot listen on 127.0.0.1:${allowedPort}: ${e.code || e.message}\n`);
    process.exit(3);
  }
  servers.push(allowedSrv);
  const foreignSrv = await servePages(0);
  servers.push(foreignSrv);

  const aPort = allowedSrv.address().port;
  const allowedOrigin = `http://127.0.0.1:${aPort}`;
  const foreignOrigins = [`http://127.0.0.1:${foreignSrv.address().port}`, `http://localhost:${aPort}`];
  out.allowed_origin = allowedOrigin;
  out.foreign_origins = foreignOrigins;
  out.api = api.href;

  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-chromium-'));
  // launchPersistentContext is how playwright takes a --user-data-dir.
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: chromiumPath,
    headless: true,
    timeout: 60_000,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  browser = context;
  for (const pgid of childProcessGroups()) process.stderr.write(`BROWSER_PGID ${pgid}\n`);
  out.chromium = context.browser()?.version() ?? null;
  context.setDefaultTimeout(30_000);

  // What Chromium's network stack saw, from CDP: preflights and CORS failures.
  out.preflights = [];
  out.cors_errors = [];
  const openPage = async (origin) => {
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    const pending = new Map();
    cdp.on('Network.requestWillBeSent', (e) => {
      if (e.type === 'Preflight' || e.request.method === 'OPTIONS') {
        const p = { page_origin: origin, url: e.request.url, method: e.request.method, status: null };
        pending.set(e.requestId, p);
        out.preflights.push(p);
      }
    });
    cdp.on('Network.responseReceived', (e) => {
      const p = pending.get(e.requestId);
      if (p) p.status = e.response.status;
    });
    cdp.on('Network.loadingFailed', (e) => {
      if (e.corsErrorStatus) {
        out.cors_errors.push({ page_origin: origin, cors_error: e.corsErrorStatus.corsError, failed_parameter: e.corsErrorStatus.failedParameter });
      }
    });
    await cdp.send('Network.enable');
    const resp = await page.goto(`${origin}/`);
    if (!resp || resp.status() !== 200) throw new Error(`page ${origin}/ answered ${resp && resp.status()}`);
    const seen = await page.evaluate(() => location.origin);
    if (seen !== origin) throw new Error(`page origin is ${seen}, wanted ${origin}`);
    return page;
  };

  const call = (page, opts) =>
    page.evaluate(probe, {
      url: api.href,
      method: 'GET',
      headers: {},
      body: undefined,
      credentials: 'same-origin',
      timeoutMs: FETCH_TIMEOUT_MS,
      ...opts,
    });
  const bearer = (t) => ({ Authorization: `Bearer ${t}` });

  const r = {};
  const allowed = await openPage(allowedOrigin);
  r.allowed_valid = await call(allowed, { headers: bearer(token) });
  r.allowed_valid_credentials = await call(allowed, { headers: bearer(token), credentials: 'include' });
  r.allowed_post = await call(allowed, {
    method: 'POST',
    headers: { ...bearer(token), 'Content-Type': 'application/json' },
    body: JSON.stringify({ probe: 'post' }),
  });
  r.allowed_bad_token = await call(allowed, { headers: bearer(badToken) });
  // No Authorization at all: a "simple" request, not preflighted; the 401 must be readable.
  r.allowed_no_token = await call(allowed, {});
  for (const [i, origin] of foreignOrigins.entries()) {
    const page = await openPage(origin);
    r[`foreign_${i}`] = { origin, ...(await call(page, { headers: bearer(token) })) };
  }
  out.results = r;

  // CDP events arrive asynchronously, possibly after fetch() settled: wait (bounded)
  // for a CORS error per foreign origin and a status for every preflight.
  const settled = () =>
    foreignOrigins.every((o) => out.cors_errors.some((c) => c.page_origin === o)) &&
    out.preflights.every((p) => p.status !== null);
  for (let waited = 0; !settled() && waited < 15_000; waited += 50) {
    await new Promise((res) => setTimeout(res, 50));
  }

  // The script's own verdict (the Rust test asserts on the details independently).
  const f = out.failures;
  const expectOk = (name, method) => {
    const x = r[name];
    if (!x.fetched) return f.push(`${name}: fetch rejected: ${x.error_name}: ${x.error_message}`);
    if (x.status !== 200) f.push(`${name}: status ${x.status}, wanted 200`);
    if (!x.json || x.json.method !== method) f.push(`${name}: body not readable or not the upstream echo: ${JSON.stringify(x.json ?? x.text)}`);
    if (!x.request_id) f.push(`${name}: X-Request-Id not readable (expose_headers)`);
  };
  const expectErr = (name, status, error) => {
    const x = r[name];
    if (!x.fetched) return f.push(`${name}: fetch rejected: ${x.error_name}: ${x.error_message} (error response without CORS headers?)`);
    if (x.status !== status) f.push(`${name}: status ${x.status}, wanted ${status}`);
    if (!x.json || x.json.error !== error) f.push(`${name}: body ${JSON.stringify(x.json ?? x.text)}, wanted error ${error}`);
  };
  expectOk('allowed_valid', 'GET');
  expectOk('allowed_valid_credentials', 'GET');
  expectOk('allowed_post', 'POST');
  expectErr('allowed_bad_token', 401, 'invalid_token');
  expectErr('allowed_no_token', 401, 'invalid_token');
  for (let i = 0; i < foreignOrigins.length; i++) {
    const x = r[`foreign_${i}`];
    if (x.fetched) f.push(`foreign_${i} (${x.origin}): the page could read the response (status ${x.status})`);
    else if (x.error_name !== 'TypeError') f.push(`foreign_${i}: rejected with ${x.error_name}, wanted TypeError (CORS block)`);
    if (!out.cors_errors.some((c) => c.page_origin === x.origin)) f.push(`foreign_${i}: Chromium reported no CORS error`);
  }
  const okPre = out.preflights.filter((p) => p.page_origin === allowedOrigin && p.method === 'OPTIONS');
  if (okPre.length === 0) f.push('no preflight seen from the allowed origin');
  for (const p of okPre) if (p.status !== 200 && p.status !== 204) f.push(`allowed preflight answered ${p.status}`);
  if (out.cors_errors.some((c) => c.page_origin === allowedOrigin)) f.push('CORS error on the allowed origin');
  out.ok = f.length === 0;
}

let code = 1;
try {
  await main();
  code = out.ok ? 0 : 1;
} catch (e) {
  out.failures.push(`error: ${e && e.stack ? e.stack : e}`);
  code = 1;
} finally {
  clearTimeout(watchdog);
  try {
    if (browser) await browser.close();
  } catch {
    /* already gone */
  }
  for (const s of servers) s.close();
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(code);
