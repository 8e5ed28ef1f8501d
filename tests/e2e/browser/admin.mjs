// Real-browser check of tollgate's admin page (GET /admin/ui): Debian's chromium,
// driven by playwright-core.
//
// Opens the page, records every console error, page error and CSP violation, waits for
// the live list (Server-Sent Events) to connect, then makes a refused request with an
// HTTP client (node's fetch, not the browser) carrying a known X-Request-Id, polls the
// live list for that row (with a deadline), clicks it and reads the decision trace
// (the failing step highlighted), then runs the explain form for a pasted token and
// path and reads its trace. Saves a screenshot. Prints ONE JSON line with everything
// observed and exits 0 when every expectation held, 1 when one did not, 2 on a
// usage/setup error.
//
// Usage: node admin.mjs --admin URL --deny-url URL --deny-id ID --explain-path PATH
//          --screenshot FILE [--chromium PATH]
//   env: TOLLGATE_TOKEN (pasted into the explain form)
// With TOLLGATE_E2E_WATCH_STDIN=1 it quits when its stdin closes (the test is gone),
// and prints `BROWSER_PGID <n>` on stderr for the browser's process groups (see
// cors.mjs and tests/it/browser_cors.rs).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const OVERALL_TIMEOUT_MS = 150_000;
const WAIT_MS = 30_000;

let userDataDir;
function quit(why) {
  process.stderr.write(`admin.mjs: quitting: ${why}\n`);
  try {
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  } catch {
    /* gone */
  }
  process.exit(1);
}
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => quit(sig));
if (process.env.TOLLGATE_E2E_WATCH_STDIN === '1') {
  process.stdin.on('end', () => quit('stdin closed (the test process is gone)'));
  process.stdin.on('error', () => quit('stdin failed'));
  process.stdin.resume();
}

function childProcessGroups() {
  const fieldsOf = (pid) => {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
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
  process.stderr.write(`admin.mjs: ${msg}\n`);
  process.exit(2);
}

const args = {};
{
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z-]+)$/.exec(argv[i]);
    if (!m || argv[i + 1] === undefined) usage(`bad argument ${JSON.stringify(argv[i])}`);
    args[m[1]] = argv[++i];
  }
}
const known = ['admin', 'deny-url', 'deny-id', 'explain-path', 'screenshot', 'chromium'];
for (const k of Object.keys(args)) if (!known.includes(k)) usage(`unknown flag --${k}`);
for (const k of known.slice(0, 5)) if (!args[k]) usage(`--${k} is required`);
const token = process.env.TOLLGATE_TOKEN;
if (!token) usage('TOLLGATE_TOKEN is required');
const chromiumPath = args.chromium ?? '/usr/bin/chromium';
for (const u of [args.admin, args['deny-url']]) {
  if (!['127.0.0.1', 'localhost'].includes(new URL(u).hostname)) usage(`${u}: loopback only`);
}
if (!fs.existsSync(chromiumPath)) usage(`chromium not found at ${chromiumPath}`);
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  usage(`playwright-core is not installed (${e.message}): npm ci --prefix tests/e2e/browser`);
}

const watchdog = setTimeout(() => {
  process.stdout.write(JSON.stringify({ ok: false, failures: [`overall timeout ${OVERALL_TIMEOUT_MS} ms`] }) + '\n');
  process.exit(1);
}, OVERALL_TIMEOUT_MS);

const out = { ok: false, failures: [], console_errors: [], page_errors: [], csp_violations: [] };
let browser;

async function main() {
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: chromiumPath,
    headless: true,
    timeout: 60_000,
    viewport: { width: 1280, height: 1000 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  browser = context;
  for (const pgid of childProcessGroups()) process.stderr.write(`BROWSER_PGID ${pgid}\n`);
  out.chromium = context.browser()?.version() ?? null;
  context.setDefaultTimeout(WAIT_MS);
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => {
    if (m.type() === 'error') out.console_errors.push(m.text());
  });
  page.on('pageerror', (e) => out.page_errors.push(String(e)));
  // CSP violations, as the page itself sees them (init scripts are not subject to CSP).
  await page.exposeFunction('__tollgateCsp', (v) => out.csp_violations.push(v));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__tollgateCsp(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });

  const resp = await page.goto(`${args.admin.replace(/\/$/, '')}/admin/ui`);
  out.page_status = resp ? resp.status() : null;
  out.csp_header = resp ? resp.headers()['content-security-policy'] ?? null : null;
  out.title = await page.title();
  // The live list is connected before the refusal is made.
  await page.waitForFunction(() => document.getElementById('stream-state')?.textContent === 'live');

  // A refusal made with an HTTP client.
  const denied = await fetch(args['deny-url'], { headers: { 'x-request-id': args['deny-id'] } });
  out.denied_status = denied.status;
  await denied.text();

  // Poll the live list for its row (deadline WAIT_MS).
  const row = page.locator(`#denials tbody tr[data-request-id="${args['deny-id']}"]`);
  await row.waitFor({ state: 'visible' });
  out.row_cells = await row.locator('td').allTextContents();
  await row.click();
  const failing = page.locator('#trace-steps li.failing');
  await failing.waitFor({ state: 'visible' });
  out.trace_failing = await failing.textContent();
  out.trace_summary = await page.locator('#trace-summary').textContent();
  out.trace_gate = await page.locator('#trace-summary .failing-gate').textContent();
  out.trace_steps = await page.locator('#trace-steps li').allTextContents();
  out.trace_failing_bg = await failing.evaluate((e) => getComputedStyle(e).backgroundColor);

  // The explain form, for a pasted token.
  await page.fill('#ex-token', token);
  await page.fill('#ex-method', 'GET');
  await page.fill('#ex-path', args['explain-path']);
  await page.click('#ex-run');
  const exFailing = page.locator('#explain-steps li.failing');
  await exFailing.waitFor({ state: 'visible' });
  out.explain_failing = await exFailing.textContent();
  out.explain_gate = await page.locator('#explain-summary .failing-gate').textContent();
  out.explain_gate_lines = await page.locator('#explain-steps li.gate').allTextContents();
  out.explain_steps = await page.locator('#explain-steps li').allTextContents();
  // The token is not written anywhere on the page but its own input box.
  out.token_in_text = (await page.locator('body').innerText()).includes(token.split('.')[2]);

  fs.mkdirSync(path.dirname(args.screenshot), { recursive: true });
  await page.screenshot({ path: args.screenshot, fullPage: true });
  out.screenshot = args.screenshot;

  const f = out.failures;
  if (out.page_status !== 200) f.push(`page answered ${out.page_status}`);
  if (out.console_errors.length) f.push(`console errors: ${out.console_errors.join(' | ')}`);
  if (out.page_errors.length) f.push(`page errors: ${out.page_errors.join(' | ')}`);
  if (out.csp_violations.length) f.push(`CSP violations: ${out.csp_violations.join(' | ')}`);
  if (!/^result: DENY/.test(out.trace_failing || '')) f.push(`trace failing line: ${out.trace_failing}`);
  if (!/^result: DENY/.test(out.explain_failing || '')) f.push(`explain failing line: ${out.explain_failing}`);
  if (out.token_in_text) f.push('the token appears in the page text');
  out.ok = f.length === 0;
}

let code = 1;
try {
  await main();
  code = out.ok ? 0 : 1;
} catch (e) {
  out.failures.push(`error: ${e && e.stack ? e.stack : e}`);
} finally {
  clearTimeout(watchdog);
  try {
    if (browser) await browser.close();
  } catch {
    /* gone */
  }
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(code);
