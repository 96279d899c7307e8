// Drives the hub dashboard in headless Chromium, as a visitor would, and
// reports each step on stdout (one line per step) for the Rust test that
// runs the fleet. Exits 0 only if every check passed.
//
// Environment: DASHBOARD_URL, DASHBOARD_TOKEN (an operator's token),
// DASHBOARD_VIEWER_TOKEN (a viewer's), DASHBOARD_CA_SPKI (the hub CA's public key
// hash, base64 SHA-256: the browser trusts that CA and no other for the
// page), OUT_DIR (screenshots), CHROMIUM (default /usr/bin/chromium),
// RELOAD_TIMEOUT_MS.
//
// Protocol: after the live checks it prints `READY_FOR_RELOAD temperature=T`
// and waits (without reloading the page) for LED 1 of pi4 to turn red,
// which the test causes by editing the dht22 plugin's HIGH_TEMP.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const url = process.env.DASHBOARD_URL;
const out = process.env.OUT_DIR || '.';
const reloadTimeout = Number(process.env.RELOAD_TIMEOUT_MS || 240000);
const origin = new URL(url).origin;
mkdirSync(out, { recursive: true });

const problems = [];
const external = [];
const say = (...a) => console.log(...a);

function check(cond, what) {
  if (!cond) throw new Error(what);
  say(`PASS ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-dev-shm-usage',
    ...(process.env.DASHBOARD_CA_SPKI ? [`--ignore-certificate-errors-spki-list=${process.env.DASHBOARD_CA_SPKI}`] : [])],
  headless: true,
  timeout: 60000,
});
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  // Refusals the test asks for (a wrong token, a viewer's buzzer press)
  // show as failed loads in the console: expected while this is set.
  let refusalsExpected = false;
  page.on('console', m => {
    if (m.type() !== 'error') return;
    if (refusalsExpected && /status of 40[13]/.test(m.text())) return;
    problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', e => problems.push(`page error: ${e.message}`));
  page.on('request', r => {
    const u = r.url();
    if (!u.startsWith(origin + '/') && !u.startsWith('data:')) external.push(u);
  });
  page.on('requestfailed', r => {
    // Leaving the page (signing out) cuts its event stream.
    if (refusalsExpected && r.failure()?.errorText === 'net::ERR_ABORTED') return;
    problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
  });

  async function signIn(token) {
    await page.goto(url, { waitUntil: 'load' });
    await page.waitForSelector('#signin');
    await page.fill('#token', token);
    await page.click('#signin-button');
    await page.waitForSelector('#signout', { timeout: 15000 });
  }

  // Signed out, the page is a sign-in form; a wrong token is refused there.
  refusalsExpected = true;
  await page.goto(url, { waitUntil: 'load' });
  check(await page.locator('#signin').isVisible(), 'the page asks for a token first');
  await page.fill('#token', 'nobody.' + '0'.repeat(64));
  await page.click('#signin-button');
  await page.waitForFunction(() => document.getElementById('signin-result').textContent.includes('unknown token'), null, { timeout: 10000 });
  check(true, 'a wrong token is refused');

  // A viewer sees the fleet but may not press the buzzer.
  await signIn(process.env.DASHBOARD_VIEWER_TOKEN);
  await page.waitForFunction(() => document.getElementById('whoami').textContent.includes('(viewer)'), null, { timeout: 15000 });
  await page.click('[data-buzzer="short"]');
  await page.waitForFunction(() => {
    const r = document.getElementById('buzzer-result');
    return r.classList.contains('bad') && r.textContent.includes('operator role');
  }, null, { timeout: 15000 });
  check(true, 'a viewer may not press the buzzer (the operator role is needed)');
  const session = (await context.cookies()).find(c => c.name === 'harvester_session');
  check(session && session.httpOnly && session.secure && session.sameSite === 'Strict' && session.expires > 0,
    'the session cookie is HttpOnly, Secure, SameSite=Strict, with an expiry');
  const temp = '[data-reading="pi4/dht22/temperature"]';
  await page.waitForSelector(`${temp}[data-at]`, { timeout: 60000 });
  await page.click('#signout');
  await page.waitForSelector('#signin', { timeout: 15000 });
  check(!(await context.cookies()).some(c => c.name === 'harvester_session'), 'signing out ends the session');

  // An operator from here on. Every request the page makes for state, logs
  // and live updates is held back while it loads: what it shows at first
  // comes with the page itself. What the first frame holds is noted before
  // it is painted.
  await page.addInitScript(() => {
    requestAnimationFrame(() => {
      const clock = document.getElementById('clock');
      window.__firstFrame = {
        parsed: !!clock,
        hidden: document.documentElement.classList.contains('booting'),
        clock: clock ? clock.textContent : '',
        readings: document.querySelectorAll('[data-reading][data-at]').length,
        nodes: document.querySelectorAll('#nodes tr[data-node]').length,
      };
    });
  });
  let release;
  const released = new Promise(r => { release = r; });
  const hold = async route => { await released; await route.continue().catch(() => {}); };
  for (const path of ['**/api/state*', '**/api/events', '**/api/logs*']) await page.route(path, hold);
  const opened = Date.now();
  await signIn(process.env.DASHBOARD_TOKEN);
  await page.waitForFunction(() => document.getElementById('whoami').textContent.includes('(operator)'), null, { timeout: 15000 });
  check(true, 'signed in as an operator');
  const frame = await page.evaluate(() => window.__firstFrame);
  check(frame && (!frame.parsed || frame.hidden || (frame.readings > 0 && !frame.clock.includes('--'))),
    `no placeholder is ever painted (first frame: ${JSON.stringify(frame)})`);
  const clock = await page.textContent('#clock');
  check(/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$/.test(clock.trim()), `the clock shows the hub's time at once (${clock.trim()})`);
  const early = await page.evaluate(sel => ({
    readings: document.querySelectorAll('[data-reading][data-at]').length,
    nodes: [...document.querySelectorAll('#nodes tr[data-node]')].map(r => r.dataset.node),
    plugins: document.querySelectorAll('#plugins tr[data-plugin]').length,
    since: Number(document.querySelector(sel)?.dataset.since),
    logs: document.querySelectorAll('#log-panel .log-line').length,
  }), temp);
  check(early.readings > 0 && early.nodes.length === 3 && early.plugins > 0 && early.logs > 0,
    `before any request answers, the page shows ${early.readings} readings, nodes ${early.nodes.join(', ')}, ${early.plugins} plugins and ${early.logs} log lines`);
  check(early.since < opened, `the charts hold the hub's history from ${Math.round((opened - early.since) / 1000)} s before the page opened`);
  release();
  for (const path of ['**/api/state*', '**/api/events', '**/api/logs*']) await page.unroute(path);
  // Navigations between the pages are over: anything failing from here is a fault.
  refusalsExpected = false;
  await page.evaluate(() => { window.__sameDocument = true; });

  // Readings change without a reload, with units.
  const first = await page.getAttribute(temp, 'data-at');
  const text = await page.textContent(`${temp} .value`);
  check(/^\d+\.\d\s*°C$/.test(text.trim()), `room temperature shown with its unit (${text.trim()})`);
  await page.waitForFunction(([sel, at]) => document.querySelector(sel)?.dataset.at !== at, [temp, first], { timeout: 15000 });
  check(true, 'room temperature updated without a reload');
  const since = Number(await page.getAttribute(temp, 'data-since'));
  check(since <= early.since, 'live updates keep the history the page came with');

  for (const key of ['pi4/dht22/humidity', 'pi4/bme680/iaq', 'pi4/bme680/pressure', 'pi4/system/cpu_temperature']) {
    await page.waitForSelector(`[data-reading="${key}"][data-at]`, { timeout: 60000 });
  }
  const iaqNote = await page.textContent('[data-reading="pi4/bme680/iaq"] .note');
  check(/calibrating|good|moderate|unhealthy/.test(iaqNote), `IAQ shows its calibration state or rating (${iaqNote.trim()})`);
  await page.waitForSelector('[data-reading^="pizero/netmon/rtt_"][data-at]', { timeout: 60000 });
  check(true, 'network health of pizero shown');
  const tempColour = await page.getAttribute(temp, 'data-color');
  const led1 = '[data-led="pi4/1"]';
  await page.waitForFunction(sel => {
    const c = document.querySelector(sel)?.dataset.color;
    return c && c !== '#000000';
  }, led1, { timeout: 30000 });
  const ledBefore = await page.getAttribute(led1, 'data-color');
  check(ledBefore === tempColour, `LED 1 (${ledBefore}) and the temperature card (${tempColour}) agree`);

  // Plugins and nodes, with versions and conditions.
  await page.waitForSelector('#plugins tr[data-plugin="dht22"] .cond.good', { timeout: 60000 });
  const dhtRow = await page.textContent('#plugins tr[data-plugin="dht22"]');
  check(/sha256:[0-9a-f]{12}/.test(dhtRow) && /1\/1 nodes on generation/.test(dhtRow), 'dht22 row shows its digest and rollout');
  check(/revision \d+ · AllAtOnce · 1 on revision \d+/.test(dhtRow), 'dht22 row shows its revision, strategy and nodes per revision');
  for (const n of ['hub', 'pi4', 'pizero']) {
    await page.waitForSelector(`#nodes tr[data-node="${n}"] .state-ready`, { timeout: 30000 });
  }
  check(true, 'three nodes shown Ready');
  const hubRole = await page.textContent('#nodes tr[data-node="hub"] td[data-label="Node"]');
  check(/\bhub\b/.test(await page.textContent('#nodes tr[data-node="hub"] .role[data-role="hub"]')) && hubRole.includes('The hub runs on this board'),
    'the hub\'s board is shown in its hub role, saying what it does');
  check(await page.locator('#nodes tr[data-node="pi4"] .role').count() === 0, 'a board without a role shows none');

  // The buzzer, through the hub, to the pi4 node, from the keyboard.
  await page.focus('[data-buzzer="triple"]');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => {
    const r = document.getElementById('buzzer-result');
    return r.classList.contains('ok') && r.textContent.includes('pi4: played triple');
  }, null, { timeout: 15000 });
  await page.waitForSelector('#buzzer-activity li[data-action="triple"][data-node="pi4"]', { timeout: 10000 });
  check(true, 'triple beep played on pi4 and shown');
  say('BUZZED triple');

  // One log tab per node, each with that node's own lines, live.
  for (const n of ['hub', 'pi4', 'pizero']) {
    await page.click(`[role="tab"][data-node="${n}"]`);
    await page.waitForFunction(node => {
      const lines = [...document.querySelectorAll('#log-panel .log-line')];
      return lines.length > 0 && lines.every(l => l.dataset.node === node);
    }, n, { timeout: 30000 });
    const count = await page.locator('#log-panel .log-line').count();
    check(count > 0, `log tab ${n} shows ${count} lines, all from ${n}`);
  }
  await page.click('[role="tab"][data-node="pi4"]');
  await page.waitForFunction(() => [...document.querySelectorAll('#log-panel .log-line')].some(l => l.textContent.includes('buzzer: triple')), null, { timeout: 15000 });
  check(true, 'the pi4 tab shows the beep in its live tail');
  await page.focus('[role="tab"][data-node="pi4"]');
  await page.keyboard.press('ArrowRight');
  const selected = await page.getAttribute('[role="tab"][aria-selected="true"]', 'data-node');
  check(selected === 'pizero', 'arrow keys move between log tabs');
  await page.click('[role="tab"][data-node="pi4"]');

  // The page is laid out before the screenshot; values keep their place.
  const box1 = await page.locator(temp).boundingBox();
  await page.waitForFunction(([sel, at]) => document.querySelector(sel)?.dataset.at !== at, [temp, await page.getAttribute(temp, 'data-at')], { timeout: 15000 });
  const box2 = await page.locator(temp).boundingBox();
  check(box1.x === box2.x && box1.y === box2.y && box1.width === box2.width && box1.height === box2.height, 'no layout jump when readings update');
  await page.screenshot({ path: join(out, 'dashboard.png'), fullPage: true });
  say(`SCREENSHOT ${join(out, 'dashboard.png')}`);

  // Phone width: no sideways scrolling, readings and buttons still there.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `no horizontal scrolling at phone width (overflow ${overflow}px)`);
  const card = await page.locator(temp).boundingBox();
  check(card.width <= 390 && card.x >= 0, 'reading cards fit a phone screen');
  check(await page.locator('[data-buzzer="short"]').isVisible(), 'buzzer buttons visible on a phone');
  // Every field of every plugin and node shown on a phone: no sideways
  // scroll in the panels, each labelled cell within the screen.
  const hidden = await page.evaluate(() => {
    const out = [];
    for (const sc of document.querySelectorAll('.scroll')) {
      if (sc.scrollWidth > sc.clientWidth + 1) out.push(`scroll ${sc.scrollWidth}>${sc.clientWidth}`);
    }
    for (const td of document.querySelectorAll('#plugins td, #nodes td')) {
      const r = td.getBoundingClientRect();
      if (!td.dataset.label || r.width === 0 || r.left < 0 || r.right > window.innerWidth + 1) {
        out.push(`${td.dataset.label} ${Math.round(r.left)}-${Math.round(r.right)}`);
      }
    }
    return out;
  });
  check(hidden.length === 0, `every plugin and node field labelled and visible on a phone (${hidden.join(', ')})`);
  const ledRows = await page.evaluate(() =>
    new Set([...document.querySelectorAll('.strip[data-node="pi4"] .led')].map(l => Math.round(l.getBoundingClientRect().top))).size);
  check(ledRows === 1, `pi4's LED strip stays one row on a phone (${ledRows} rows)`);
  await page.screenshot({ path: join(out, 'dashboard-phone.png'), fullPage: true });
  say(`SCREENSHOT ${join(out, 'dashboard-phone.png')}`);
  await page.setViewportSize({ width: 1280, height: 900 });

  // Hot reload: the test edits HIGH_TEMP below the room temperature;
  // LED 1 must turn red on this same page.
  const now = await page.getAttribute(temp, 'data-value');
  say(`READY_FOR_RELOAD temperature=${now} led1=${ledBefore}`);
  await page.waitForFunction(sel => document.querySelector(sel)?.dataset.color === '#ff0000', led1, { timeout: reloadTimeout, polling: 250 });
  const same = await page.evaluate(() => window.__sameDocument === true);
  check(same, 'LED 1 turned red without reloading the page');
  const tempAfter = await page.getAttribute(temp, 'data-color');
  check(tempAfter === '#ff0000', 'the temperature card shows the alarm colour too');
  await page.screenshot({ path: join(out, 'dashboard-after-reload.png'), fullPage: true });
  say(`LED1_CHANGED ${ledBefore} -> #ff0000`);

  check(external.length === 0, `no requests outside the hub (${external.join(', ')})`);
  check(problems.length === 0, `no console errors (${problems.join(' | ')})`);
  say('OK');
  await browser.close();
  process.exit(0);
} catch (e) {
  say(`FAIL ${e.message.split('\n')[0]}`);
  if (problems.length) say(`FAIL console: ${problems.join(' | ')}`);
  try { await page?.screenshot({ path: join(out, 'failure.png'), fullPage: true }); } catch {}
  await browser.close();
  process.exit(1);
}
