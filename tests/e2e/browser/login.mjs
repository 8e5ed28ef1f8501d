// A person's browser sign-in through tollgate, in a real browser: Debian's chromium,
// driven by playwright-core. Run from tests/it/browser_login.rs.
//
// The journey:
//   1. open the dashboard URL -> tollgate sends the browser to the identity provider;
//      sign in on its login page (oidc-provider's devInteractions: any login name, any
//      password), consent -> back on the page first asked for;
//   2. the page fetches data from a `login: true` route (same origin, the session cookie);
//   3. wait until the access token has expired; the next fetch still works (tollgate
//      refreshed the session) and carries a newer token;
//   4. a tampered session cookie: a fetch gets 401; opening a page signs in again
//      (silently: the provider still knows the person);
//   5. logout -> the provider's end-session page, "Yes, sign me out" -> back on
//      tollgate's post-logout page; the session cookie is gone;
//   6. the dashboard again -> the provider's login page.
// The upstream behind tollgate echoes each request as JSON ({method, uri, headers}).
//
// Prints ONE JSON line with everything observed and exits 0 when the journey completed
// (the Rust test asserts on the details), 1 when a step failed, 2 on a usage error.
//
// Usage: node login.mjs --gateway http://localhost:PORT --idp http://127.0.0.1:PORT
//          [--user NAME] [--chromium PATH]
// Only loopback traffic: requests to any other host (the provider's pages import a web
// font) are aborted.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const OVERALL_TIMEOUT_MS = 150_000;
const STEP_TIMEOUT_MS = 15_000;
const FETCH_TIMEOUT_MS = 10_000;

function usage(msg) {
  process.stderr.write(`login.mjs: ${msg}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z-]+)$/.exec(argv[i]);
    if (!m) usage(`unexpected argument ${JSON.stringify(argv[i])}`);
    const v = argv[++i];
    if (v === undefined) usage(`--${m[1]} needs a value`);
    out[m[1]] = v;
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
for (const k of Object.keys(args)) {
  if (!['gateway', 'idp', 'user', 'chromium'].includes(k)) usage(`unknown flag --${k}`);
}
if (!args.gateway || !args.idp) usage('--gateway URL and --idp URL are required');
const gateway = args.gateway.replace(/\/$/, '');
const idp = args.idp.replace(/\/$/, '');
const user = args.user ?? 'alice';
const chromiumPath = args.chromium ?? '/usr/bin/chromium';
// Exits at once; playwright's own exit handler then kills the browser's process group.
function quit(why) {
  process.stderr.write(`login.mjs: quitting: ${why}\n`);
  try {
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  } catch {
    /* not created yet, or already gone */
  }
  process.exit(1);
}
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => quit(sig));
// Run by a test (tests/it/browser_login.rs): quits as soon as its stdin closes, i.e. when
// the test process is gone however it ended.
if (process.env.TOLLGATE_E2E_WATCH_STDIN === '1') {
  process.stdin.on('end', () => quit('stdin closed (the test process is gone)'));
  process.stdin.on('error', () => quit('stdin failed'));
  process.stdin.resume();
}

// The process groups of our child processes (the browser), other than our own: printed
// as `BROWSER_PGID <n>` on stderr so that the test can kill them too (playwright starts
// chromium in a session of its own).
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

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);
for (const u of [gateway, idp]) {
  if (!LOOPBACK.has(new URL(u).hostname)) usage(`${u} is not a loopback URL`);
}
if (!fs.existsSync(chromiumPath)) usage(`chromium not found at ${chromiumPath}`);

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  usage(`playwright-core is not installed (${e.message}): npm ci --prefix tests/e2e/browser`);
}

const out = { ok: false, failures: [], steps: {}, navigations: [] };
const watchdog = setTimeout(() => {
  out.failures.push(`overall timeout ${OVERALL_TIMEOUT_MS} ms`);
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(1);
}, OVERALL_TIMEOUT_MS);

// Runs in the page: one same-origin fetch, reduced to what a page script can observe.
async function probe({ url, timeoutMs }) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeoutMs);
  try {
    const r = await fetch(url, { headers: { Accept: 'application/json' }, signal: ctl.signal });
    const text = await r.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    return { fetched: true, status: r.status, redirected: r.redirected, json, text: json ? undefined : text.slice(0, 300) };
  } catch (e) {
    return { fetched: false, error: `${e.name}: ${e.message}` };
  } finally {
    clearTimeout(timer);
  }
}

function claims(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());
}

function bearerOf(echo) {
  const a = echo?.headers?.authorization?.[0] ?? '';
  return a.startsWith('Bearer ') ? a.slice(7) : null;
}

let context;
let userDataDir;

async function main() {
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: chromiumPath,
    headless: true,
    timeout: 30_000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  for (const pgid of childProcessGroups()) process.stderr.write(`BROWSER_PGID ${pgid}\n`);
  out.chromium = context.browser()?.version() ?? null;
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  await context.route('**/*', (route) => {
    const host = new URL(route.request().url()).hostname;
    return LOOPBACK.has(host) ? route.continue() : route.abort();
  });
  // A cookie of the dashboard's own: it must reach the upstream, tollgate's must not.
  await context.addCookies([{ name: 'theme', value: 'dark', url: gateway }]);
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('request', (r) => {
    if (r.isNavigationRequest() && r.frame() === page.mainFrame()) out.navigations.push(r.url());
  });
  const bodyJson = async () => JSON.parse(await page.evaluate(() => document.body.innerText));
  const sessionCookies = async () =>
    (await context.cookies(gateway)).filter((c) => c.name.startsWith('tollgate_session'));
  const fetchData = (p) => page.evaluate(probe, { url: p, timeoutMs: FETCH_TIMEOUT_MS });

  // The identity provider's pages: sign in, consent (bounded).
  const atIdp = async () => {
    const seen = [];
    for (let i = 0; i < 4 && page.url().startsWith(idp); i++) {
      seen.push(page.url());
      if (await page.locator('input[name="login"]').count()) {
        await page.fill('input[name="login"]', user);
        await page.fill('input[name="password"]', 'any password');
      }
      await Promise.all([
        page.waitForURL((u) => u.href !== seen[seen.length - 1], { waitUntil: 'load' }),
        page.click('form button[type="submit"]'),
      ]);
    }
    return seen;
  };
  const s = out.steps;

  // 1. The dashboard URL -> the provider's login page -> back on the page.
  const first = `${gateway}/dash/page?tab=1`;
  await page.goto(first);
  s.login_page = { url: page.url(), has_login_form: (await page.locator('input[name="login"]').count()) > 0 };
  s.idp_pages = await atIdp();
  await page.waitForURL(first);
  s.landing = { url: page.url(), echo: await bodyJson() };
  const cookies = await sessionCookies();
  s.session_cookies = cookies.map((c) => ({
    name: c.name, httpOnly: c.httpOnly, secure: c.secure, sameSite: c.sameSite, path: c.path,
    domain: c.domain, expires: c.expires,
  }));
  s.document_cookie = await page.evaluate(() => document.cookie);

  // 2. The page fetches data.
  s.fetch = await fetchData('/dash/api/data?n=1');
  const t1 = bearerOf(s.fetch.json);
  if (!t1) throw new Error(`no Bearer token upstream: ${JSON.stringify(s.fetch)}`);

  // 3. Wait (polling the clock) until that access token has expired, then fetch again.
  const exp1 = claims(t1).exp;
  const deadline = Date.now() + 60_000;
  while (Date.now() / 1000 <= exp1 + 1) {
    if (Date.now() > deadline) throw new Error(`the clock never passed exp ${exp1}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  s.before_refresh = { exp: exp1, now: Math.floor(Date.now() / 1000), cookie: (await sessionCookies())[0]?.value };
  s.refreshed_fetch = await fetchData('/dash/api/data?n=2');
  s.after_refresh = { cookie: (await sessionCookies())[0]?.value };

  // 4. A tampered session cookie.
  const [c0] = await sessionCookies();
  const i = 40;
  const flipped = c0.value.slice(0, i) + (c0.value[i] === 'A' ? 'B' : 'A') + c0.value.slice(i + 1);
  const tampered = {
    name: c0.name, value: flipped, domain: c0.domain, path: c0.path, expires: c0.expires,
    httpOnly: c0.httpOnly, secure: c0.secure, sameSite: c0.sameSite,
  };
  await context.addCookies([tampered]);
  s.tampered_fetch = await fetchData('/dash/api/data?n=3');
  s.after_tampered_fetch = { session_cookies: (await sessionCookies()).length };
  // tollgate told the browser to drop it; put it back for a navigation.
  await context.addCookies([tampered]);
  const navsBefore = out.navigations.length;
  const again = `${gateway}/dash/again`;
  await page.goto(again);
  s.idp_pages_again = await atIdp();
  await page.waitForURL(again);
  s.signed_in_again = { url: page.url(), echo: await bodyJson(), via: out.navigations.slice(navsBefore) };

  // 5. Logout, confirmed on the provider's end-session page.
  const navsBeforeLogout = out.navigations.length;
  await page.goto(`${gateway}/oauth2/logout`);
  s.logout_page = { url: page.url() };
  await Promise.all([
    page.waitForURL((u) => u.href.startsWith(`${gateway}/signed-out`), { waitUntil: 'load' }),
    page.click('button[name="logout"][value="yes"]'),
  ]);
  s.after_logout = {
    url: page.url(),
    echo: await bodyJson(),
    session_cookies: (await sessionCookies()).length,
    via: out.navigations.slice(navsBeforeLogout),
  };

  // 6. The dashboard again: the provider asks who you are.
  await page.goto(`${gateway}/dash/page`);
  s.after_logout_dashboard = {
    url: page.url(),
    has_login_form: (await page.locator('input[name="login"]').count()) > 0,
  };
  out.ok = true;
}

let code = 1;
try {
  await main();
  code = 0;
} catch (e) {
  out.failures.push(`error: ${e && e.stack ? e.stack : e}`);
} finally {
  clearTimeout(watchdog);
  try {
    if (context) await context.close();
  } catch {
    /* already gone */
  }
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(code);
