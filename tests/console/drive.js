// Drives the Switchyard console in headless Chromium (Debian's /usr/bin/chromium) with
// playwright-core, for tests/tests/console.rs. It asserts nothing itself: it does what a
// person would do (log in with a wrong token, then the right one, open each page), saves
// a screenshot of each page, and prints one JSON document with what the pages showed and
// every browser console error, for the Rust test to check.
//
// Usage: node drive.js PLAYWRIGHT_CORE_DIR '{"base": "...", "token": "...", "wrong": "...", "out": "DIR"}'
'use strict';
const { chromium } = require(process.argv[2]);
const args = JSON.parse(process.argv[3]);

const PAGES = [
  ['fleet', '/console/fleet'],
  ['health', '/console/health?window=1h'],
  ['traffic', '/console/traffic?window=1h&by=key'],
  ['traffic-model', '/console/traffic?window=1h&by=model'],
  ['config', '/console/config'],
];

// Every element that carries data for the test, with its data-* attributes and the
// text (or data-value) of its data-col cells.
function extract() {
  const out = [];
  for (const el of document.querySelectorAll(
    '[data-worker],[data-target],[data-group],[data-model],[data-backend],[data-provider],#traffic-total')) {
    const cols = {};
    for (const c of el.querySelectorAll('[data-col]')) {
      cols[c.dataset.col] = c.dataset.value !== undefined ? c.dataset.value : c.textContent.trim();
    }
    out.push({
      id: el.id || null,
      data: Object.assign({}, el.dataset),
      cols,
      unhealthyRects: el.querySelectorAll('rect[data-state="unhealthy"]').length,
    });
  }
  return out;
}

function watch(page, sink) {
  page.on('console', (m) => { if (m.type() === 'error') sink.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => sink.push(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => {
    const why = r.failure() && r.failure().errorText;
    // The browser cancels an icon fetch still in flight when the page navigates on (a
    // race, not a fault); a missing icon is still caught below by its status.
    if (why === 'net::ERR_ABORTED' && r.resourceType() !== 'document' && r.url().endsWith('/favicon.svg')) return;
    sink.push(`requestfailed: ${r.url()} ${why}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400 && r.request().resourceType() !== 'document') sink.push(`response ${r.status()}: ${r.url()}`);
  });
}

(async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const result = { wrong: {}, pages: {}, errors: [], wrongErrors: [] };
  try {
    // A wrong token: the login answers 401 and no page shows data.
    {
      const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
      const page = await ctx.newPage();
      watch(page, result.wrongErrors);
      await page.goto(args.base + '/console/fleet');
      result.wrong.redirectedTo = new URL(page.url()).pathname;
      await page.fill('#token', args.wrong);
      const [resp] = await Promise.all([page.waitForNavigation(), page.click('#login')]);
      result.wrong.status = resp.status();
      result.wrong.message = (await page.textContent('#login-error')) || '';
      result.wrong.rows = await page.evaluate(extract);
      await page.goto(args.base + '/console/traffic?window=1h');
      result.wrong.afterPath = new URL(page.url()).pathname;
      result.wrong.afterRows = await page.evaluate(extract);
      result.wrong.cookies = (await ctx.cookies()).map((c) => c.name);
      await ctx.close();
    }
    // The right token, then every page.
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await ctx.newPage();
    watch(page, result.errors);
    await page.goto(args.base + '/console/login');
    await page.fill('#token', args.token);
    await Promise.all([page.waitForNavigation(), page.click('#login')]);
    result.loggedInAt = new URL(page.url()).pathname;
    result.cookies = (await ctx.cookies()).map((c) => ({
      name: c.name, value: c.value, httpOnly: c.httpOnly, sameSite: c.sameSite, path: c.path,
    }));
    result.documentCookie = await page.evaluate(() => document.cookie);
    for (const [name, path] of PAGES) {
      const resp = await page.goto(args.base + path);
      await page.screenshot({ path: `${args.out}/${name}.png`, fullPage: true });
      result.pages[name] = {
        status: resp.status(),
        path: new URL(page.url()).pathname,
        title: await page.title(),
        text: await page.evaluate(() => document.body.innerText),
        rows: await page.evaluate(extract),
        scripts: await page.evaluate(() => document.scripts.length),
      };
    }
    // Logging out ends the session.
    await Promise.all([page.waitForNavigation(), page.click('.logout button')]);
    await page.goto(args.base + '/console/fleet');
    result.afterLogout = new URL(page.url()).pathname;
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(result));
})().catch((e) => { console.error(e); process.exit(1); });
