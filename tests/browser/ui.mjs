// Drives Debian's Chromium against two running lpmesh nodes (started by tests/tests/browser.rs):
// log in on node A; an incident raised by node B's camera appears on A's page without a reload;
// acknowledge it on A; node B's page shows it acknowledged. Screenshots go to $OUT.
// Prints one JSON line with what it saw; exits non-zero on any failure.
import { chromium } from 'playwright-core';

const { URL_A, URL_B, USER, PASS, OUT, KIND, GUARD, GUARD_PASS } = process.env;
const kindText = (KIND || 'restricted_entry').replace(/_/g, ' ');
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-default-apps'],
});
const result = {};
let current = null;
try {
  const login = async (url, user = USER, pass = PASS) => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
    const page = await ctx.newPage();
    page.on('pageerror', (e) => { result.page_errors = (result.page_errors || []).concat(String(e)); });
    await page.goto(url);
    await page.fill('#login-name', user);
    await page.fill('#login-password', pass);
    await page.click('#login-submit');
    await page.waitForSelector('#app:not(.hidden)', { timeout: 10000 });
    current = page;
    return page;
  };
  const a = await login(URL_A);
  await a.evaluate(() => { window.__sameDocument = true; });
  await a.screenshot({ path: `${OUT}/1-node-a-live.png`, fullPage: true });
  // B's camera raises incidents; one that A's page did not have when it loaded must arrive by the
  // live stream, with no reload.
  const before = new Set(await a.locator('#feed li').evaluateAll((els) => els.map((e) => e.dataset.id)));
  result.feed_at_load = before.size;
  const started = Date.now();
  const handle = await a.waitForFunction(({ known, kind }) => {
    const li = [...document.querySelectorAll('#feed li')].find((e) => !known.includes(e.dataset.id) && e.textContent.includes(kind));
    return li ? li.dataset.id : null;
  }, { known: [...before], kind: kindText }, { timeout: 60000, polling: 100 });
  const arrived = await handle.jsonValue();
  result.seen_on_a_after_ms = Date.now() - started;
  result.same_document = await a.evaluate(() => window.__sameDocument === true);
  await a.screenshot({ path: `${OUT}/2-node-a-incident-arrived.png`, fullPage: true });
  // What a guard sees by default: medium and above, repeats of one kind at one camera and zone
  // folded into one row with a count.
  result.feed = await a.evaluate(() => {
    const rows = [...document.querySelectorAll('#feed li')];
    const keys = rows.map((r) => `${r.querySelector('.what').textContent}|${r.querySelector('.where').textContent}`);
    return {
      rows: rows.length,
      below_medium: rows.filter((r) => r.matches('.sev-info, .sev-low')).length,
      duplicate_rows: keys.length - new Set(keys).size,
      largest_fold: Math.max(0, ...rows.map((r) => Number(r.dataset.count))),
    };
  });
  // The feed moves as incidents arrive (a repeat folds into the row, which then opens the latest):
  // tap the row holding the incident, and follow whichever incident it opens.
  await a.locator(`#feed li[data-ids~="${arrived}"]`).click();
  await a.waitForSelector('#view-incident:not(.hidden)');
  const opened = await a.waitForFunction(() => document.querySelector('#incident-detail').dataset.id || null);
  const id = await opened.jsonValue();
  result.incident = id;
  await a.click('#btn-ack');
  await a.locator('#incident-state', { hasText: 'acknowledged' }).waitFor({ timeout: 5000 });
  await a.screenshot({ path: `${OUT}/3-node-a-acknowledged.png`, fullPage: true });

  // The evidence of B's incident on A's page, fetched by the browser from B itself.
  const evidenceState = (p) => p.waitForFunction(
    () => ['shown', 'unavailable', 'reload'].includes(document.querySelector('#evidence').dataset.state)
      && document.querySelector('#evidence').dataset.state, null, { timeout: 90000, polling: 200 }).then((h) => h.jsonValue());
  const evidenceOn = async (p, who) => {
    const state = await evidenceState(p);
    const out = { state, note: await p.locator('#evidence-note').textContent() };
    if (state !== 'shown') return out;
    out.still_from = await p.evaluate(() => new URL(document.querySelector('#evidence-still').src).origin);
    out.still_width = await p.evaluate(() => document.querySelector('#evidence-still').naturalWidth);
    await p.waitForFunction(() => document.querySelector('#evidence-clip').readyState >= 1, null, { timeout: 20000 });
    out.clip = await p.evaluate(async () => {
      const v = document.querySelector('#evidence-clip');
      await v.play();
      await new Promise((r) => setTimeout(r, 1500));
      return { duration: v.duration, width: v.videoWidth, played: v.currentTime, error: v.error && v.error.code };
    });
    out.download_visible = await p.isVisible('#evidence-download');
    await p.screenshot({ path: `${OUT}/3b-${who}-evidence.png`, fullPage: true });
    return out;
  };
  // A page opened before node B was heard from says so and offers a reload (never reloads itself).
  result.evidence_before_reload = await evidenceState(a);
  await a.reload();
  await a.waitForSelector('#view-incident:not(.hidden)');
  result.evidence = await evidenceOn(a, 'manager');
  if (result.evidence.download_visible) {
    const [dl] = await Promise.all([a.waitForEvent('download'), a.click('#evidence-download')]);
    const fs = await import('node:fs');
    result.download = { name: dl.suggestedFilename(), bytes: fs.statSync(await dl.path()).size };
    // Recorded by B, shown on A through the store's log.
    await a.reload();
    await a.locator('#history li', { hasText: 'evidence downloaded' }).first().waitFor({ timeout: 20000 });
    result.download.in_history = await a.locator('#history li', { hasText: 'evidence downloaded' }).first().textContent();
  }
  let guardPage = null;
  if (GUARD) {
    guardPage = await login(URL_A, GUARD, GUARD_PASS);
    await guardPage.goto(`${URL_A}/#/incident/${encodeURIComponent(id)}`);
    result.guard_evidence = await evidenceOn(guardPage, 'guard');
    current = a;
  }

  const b = await login(URL_B);
  const t = Date.now();
  await b.goto(`${URL_B}/#/incident/${encodeURIComponent(id)}`);
  await b.locator('#incident-state', { hasText: 'acknowledged' }).waitFor({ timeout: 5000 });
  result.acknowledged_on_b_after_ms = Date.now() - t;
  await b.screenshot({ path: `${OUT}/4-node-b-shows-acknowledged.png`, fullPage: true });

  // Charts and the mesh page render on B too.
  await b.goto(`${URL_B}/#/mesh`);
  await b.locator('#mesh-rows tr').nth(1).waitFor({ timeout: 15000 }).catch(() => {});
  result.mesh_rows = await b.locator('#mesh-rows tr').count();
  await b.screenshot({ path: `${OUT}/5-node-b-mesh.png`, fullPage: true });
  await b.goto(`${URL_B}/#/charts`);
  await b.waitForFunction(() => document.querySelector('#chart-footfall').naturalWidth > 0, null, { timeout: 10000 });
  await b.screenshot({ path: `${OUT}/6-node-b-charts.png`, fullPage: true });
  // Zones: B owns the camera; draw a zone on its still and save it.
  await b.goto(`${URL_B}/#/zones`);
  await b.waitForFunction(() => document.querySelector('#zone-still').naturalWidth > 0, null, { timeout: 15000 });
  await b.click('#zone-add');
  const box = await b.locator('#zone-svg').boundingBox();
  for (const [x, y] of [[0.1, 0.6], [0.4, 0.6], [0.4, 0.9], [0.1, 0.9]]) {
    await b.mouse.click(box.x + box.width * x, box.y + box.height * y);
  }
  await b.click('#zone-add');
  const last = b.locator('#zone-list p').last();
  await last.locator('input[data-field=name]').fill('till-queue');
  await last.locator('input[data-field=name]').press('Tab');
  await last.locator('select[data-field=kind]').selectOption('checkout');
  await b.click('#zone-save');
  await b.locator('#zone-hint', { hasText: 'Saved' }).waitFor({ timeout: 10000 });
  await b.screenshot({ path: `${OUT}/7-node-b-zone-saved.png`, fullPage: true });
  result.zone_saved = true;
  // A guard's phone (390 px wide): the feed in one column, nothing wider than the screen.
  const phoneCtx = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
  const phone = await phoneCtx.newPage();
  current = phone;
  await phone.goto(URL_A);
  await phone.fill('#login-name', USER);
  await phone.fill('#login-password', PASS);
  await phone.click('#login-submit');
  await phone.waitForSelector('#feed li', { timeout: 15000 });
  result.phone = await phone.evaluate(() => ({
    page_width: document.documentElement.scrollWidth,
    feed_layout: getComputedStyle(document.querySelector('#feed li')).display,
  }));
  await phone.screenshot({ path: `${OUT}/8-phone-feed.png`, fullPage: true });
  // One account for the whole store: the test removes it on node B when told to, and A's page,
  // still open, goes back to the login within seconds.
  if (process.env.REMOVE_SIGNAL) {
    const fs = await import('node:fs');
    current = a;
    const t0 = Date.now();
    fs.writeFileSync(process.env.REMOVE_SIGNAL, 'remove');
    await a.waitForSelector('#login:not(.hidden)', { timeout: 20000 });
    result.logged_out_on_a_after_ms = Date.now() - t0;
    await a.screenshot({ path: `${OUT}/9-node-a-logged-out.png`, fullPage: true });
    result.trust_shown = await a.locator('#trust-fp').textContent();
  }
  // Node B stopped: the guard's page on A says B's evidence is unavailable.
  if (guardPage && process.env.STOP_B_SIGNAL) {
    const fs = await import('node:fs');
    current = guardPage;
    fs.writeFileSync(process.env.STOP_B_SIGNAL, 'stop');
    for (let i = 0; i < 200 && !fs.existsSync(`${process.env.STOP_B_SIGNAL}.done`); i++) await new Promise((r) => setTimeout(r, 100));
    await guardPage.reload();
    result.after_b_stopped = { state: await evidenceState(guardPage), note: await guardPage.locator('#evidence-note').textContent() };
    await guardPage.screenshot({ path: `${OUT}/10-node-b-stopped-evidence.png`, fullPage: true });
  }
  result.ok = !result.page_errors;
} catch (e) {
  result.ok = false;
  result.error = String(e && e.stack || e);
  if (current) {
    result.url = current.url();
    result.action_error = await current.locator('#action-error').textContent().catch(() => null);
    result.state_text = await current.locator('#incident-state').textContent().catch(() => null);
    await current.screenshot({ path: `${OUT}/failure.png`, fullPage: true }).catch(() => {});
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
