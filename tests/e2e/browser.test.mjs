// The real headless app in Debian Chromium: the overview turns ready, a queue's depth moves when
// messages are published, each page renders, a build started from the Builds page streams its
// log to success, its notice email shows in the outbox, a video Pipe delivered shows on the
// Videos page, sharing opens a (self-hosted, bore) tunnel whose URL is copied, and the panel
// refuses strangers.
//
// Needs LOOKIT_LOCAL_BIN (the `lookit-local` binary). Screenshots go to screenshots/.

import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import amqplib from 'amqplib';
import { HeadlessApp, eventually } from './lib/app.mjs';
import { launchBrowser } from './lib/browser.mjs';
import { rawRequest } from './lib/raw-http.mjs';
import { BoreServer } from './lib/bore-server.mjs';
import { deliverPipeVideo } from './lib/pipe.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const SHOTS = join(here, 'screenshots');
const READY_LIMIT_MS = 10 * 60 * 1000;
const BUILD_LIMIT_MS = 5 * 60 * 1000;

let app;
let browser;
let page;
let bore;

before(async () => {
  await mkdir(SHOTS, { recursive: true });
  bore = await BoreServer.start();
  app = await HeadlessApp.start({
    // The local test builder honours Lookit's build contract (scripts/build-test-images).
    LOOKIT_LOCAL__BUILDS__BUILDER_IMAGE: 'lookit-test/builder:latest',
    // Sharing goes through the bore server above: no tunnel service is reachable from here.
    LOOKIT_LOCAL__TUNNEL__PROVIDER: 'bore',
    LOOKIT_LOCAL__TUNNEL__SERVER: bore.address,
  });
  browser = await launchBrowser();
  page = await browser.context.newPage();
});

after(async () => {
  await browser?.close();
  if (app) {
    const { code, signal } = await app.stop();
    assert.equal(code, 0, `lookit-local up should stop cleanly on SIGTERM (signal ${signal})\n${app.stderr.join('')}`);
  }
  await bore?.close();
});

describe('the panel refuses strangers', () => {
  test('no token, a wrong token, a foreign Host or a foreign Origin', async () => {
    const url = `${app.base}/api/status`;
    const port = new URL(app.base).port;
    const cases = [
      [{}, 401],
      [{ Authorization: 'Bearer wrong' }, 401],
      [{ Authorization: `Bearer ${app.token}`, Host: `rebound.example:${port}` }, 403],
      [{ Authorization: `Bearer ${app.token}`, Origin: 'http://evil.example' }, 403],
    ];
    for (const [headers, expected] of cases) {
      const { status, body } = await rawRequest(url, { headers });
      assert.equal(status, expected, JSON.stringify({ headers, body }));
      assert.equal(typeof body.error, 'string');
    }
    const ok = await rawRequest(url, { headers: { Authorization: `Bearer ${app.token}` } });
    assert.equal(ok.status, 200);
  });

  test('a page on another site cannot call the panel from the browser', async () => {
    const other = await browser.context.newPage();
    await other.goto('about:blank');
    const outcome = await other.evaluate(async ([base, token]) => {
      try {
        const response = await fetch(`${base}/api/stack/stop`, { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
        return `status ${response.status}`;
      } catch (error) {
        return `blocked: ${error.message}`;
      }
    }, [app.base, app.token]);
    await other.close();
    // Either the browser blocks it or the panel refuses it; the stack keeps running either way.
    assert.ok(outcome.startsWith('blocked') || outcome === 'status 403', outcome);
    const status = await app.api('GET', '/status');
    assert.equal(status.running, true);
  });
});

describe('the dashboard', () => {
  test('opens with the token from the link, hides it, and turns ready', async () => {
    await page.goto(app.dashboard);
    await page.waitForSelector('[data-testid="stack-ready"]');
    assert.ok(!page.url().includes('token='), `the token stays in the address bar: ${page.url()}`);
    await app.ready;
    await page.waitForSelector('[data-testid="ready-light"][data-ready="true"]', { timeout: READY_LIMIT_MS });
    assert.equal(await page.textContent('.hero h2'), 'Stack ready');
    for (const name of ['postgres', 'rabbitmq', 'api', 'worker']) {
      const card = page.locator(`[data-testid="service-${name}"]`);
      assert.equal(await card.getAttribute('data-state'), 'ready', `${name} should be ready`);
    }
    // Every card shows what its service uses: CPU from the second reading (10 s apart), memory
    // at once; the embedded API and worker show the app process's.
    await page.waitForFunction(
      (names) => names.every((n) => /\d/.test(document.querySelector(`[data-testid="cpu-${n}"]`)?.textContent ?? '')),
      ['postgres', 'rabbitmq', 'api', 'worker'],
      { timeout: 30_000 },
    );
    for (const name of ['postgres', 'rabbitmq', 'api', 'worker']) {
      const memory = await page.textContent(`[data-testid="memory-${name}"]`);
      assert.match(memory, /^\d+(\.\d)? (MiB|GiB)$/, `${name} memory: ${memory}`);
    }
    await page.screenshot({ path: join(SHOTS, 'overview.png') });
    await mkdir(join(here, '../../docs'), { recursive: true });
    await copyFile(join(SHOTS, 'overview.png'), join(here, '../../docs/screenshot.png'));
  });

  test("a queue's depth moves when messages are published", async () => {
    // A dead-letter queue has no consumer, so what is published stays there for us to watch.
    const queue = 'email.dead';
    await page.goto(`${app.base}/#/queues`);
    const cell = page.locator(`[data-testid="ready-${queue}"]`);
    await cell.waitFor();
    const before = Number(await cell.textContent());

    const settings = await app.connectionSettings();
    assert.ok(settings.BROKER_URL, `lookit-local env prints BROKER_URL: ${JSON.stringify(Object.keys(settings))}`);
    const connection = await amqplib.connect(settings.BROKER_URL);
    try {
      const channel = await connection.createConfirmChannel();
      for (let i = 0; i < 3; i++) {
        channel.sendToQueue(queue, Buffer.from(JSON.stringify({ e2e: i })), { persistent: true });
      }
      await channel.waitForConfirms();
    } finally {
      await connection.close();
    }
    await page.waitForFunction(
      ([name, expected]) => Number(document.querySelector(`[data-testid="ready-${name}"]`)?.textContent) === expected,
      [queue, before + 3],
      { timeout: 30_000 },
    );
    await page.screenshot({ path: join(SHOTS, 'queues.png') });
  });

  for (const [id, heading] of [
    ['builds', 'Builds'],
    ['tunnel', 'Tunnel'],
    ['outbox', 'Outbox'],
    ['videos', 'Videos'],
    ['logs', 'Logs'],
    ['doctor', 'Doctor'],
  ]) {
    test(`the ${heading} page renders real data or says what is missing`, async () => {
      await page.goto(`${app.base}/#/${id}`);
      await page.getByRole('heading', { name: heading, exact: true }).waitFor();
      // Loading has finished: either content, an empty state, or "not available yet".
      await page.waitForFunction(() => !document.querySelector('main [role="status"]')?.textContent?.startsWith('Loading'), null, {
        timeout: 30_000,
      });
      const text = await page.textContent('main');
      assert.ok(!text.includes('Could not load'), `${heading} failed to load: ${text}`);
      await page.screenshot({ path: join(SHOTS, `${id}.png`) });
    });
  }

  test('the logs page shows a service log', async () => {
    await page.goto(`${app.base}/#/logs&service=postgres`);
    await eventually('postgres log lines', async () => (await page.locator('[data-testid="log-view"]').count()) > 0, 30_000);
    assert.ok((await page.textContent('[data-testid="log-view"]')).length > 0);
  });

  test('the dark theme can be chosen with the keyboard', async () => {
    await page.goto(`${app.base}/#/overview`);
    await page.keyboard.press('2');
    await page.waitForFunction(() => location.hash === '#/queues');
    await page.keyboard.press('1');
    await page.getByRole('button', { name: /dark theme/ }).focus();
    await page.keyboard.press('Enter');
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark');
    await page.screenshot({ path: join(SHOTS, 'overview-dark.png') });
  });
});

describe('builds, mail, videos and sharing', () => {
  /** The demo lab's ids (`lookit-local demo seed --json`): study, response, … */
  let demo;

  test('a build started from the Builds page streams its log to success', async () => {
    await app.ready;
    demo = JSON.parse(await app.run('demo', 'seed', '--json'));
    // A local player folder, as `lookit-local build --player` takes it.
    const player = await mkdtemp(join(tmpdir(), 'lookit-player-'));
    await writeFile(join(player, 'package.json'), '{"name": "frameplayer"}');
    try {
      await page.goto(`${app.base}/#/builds`);
      await page.getByRole('heading', { name: 'Builds', exact: true }).waitFor();
      await page.locator(`[data-testid="build-study"] option[value="${demo.study}"]`).waitFor({ state: 'attached' });
      await page.selectOption('[data-testid="build-study"]', demo.study);
      await page.fill('[data-testid="build-player"]', player);
      await page.click('[data-testid="start-build"]');

      const log = page.locator('[data-testid="build-log"]');
      await log.waitFor();
      await page.waitForSelector('[data-testid="build-log"][data-status="succeeded"]', { timeout: BUILD_LIMIT_MS });
      const text = await log.textContent();
      assert.ok(text.includes('build finished'), `the builder's log did not stream into the page:\n${text}`);
      // The list follows the build too.
      await page.waitForSelector('tr[data-status="succeeded"]', { timeout: 30_000 });
      await page.screenshot({ path: join(SHOTS, 'builds.png'), fullPage: true });
    } finally {
      await rm(player, { recursive: true, force: true });
    }
  });

  test('the outbox shows the notice about the build with headers, text and sandboxed HTML', async () => {
    assert.ok(demo, 'the build test seeds the demo study');
    // The worker renders the notice after the build; no event announces new mail.
    const email = await eventually(
      'the build notice in the outbox',
      async () => (await app.api('GET', '/emails')).find((e) => e.template === 'build_succeeded' && e.status !== 'queued'),
      60_000,
    );
    await page.goto(`${app.base}/#/outbox`);
    await page.click(`[data-testid="email-${email.id}"]`);
    const viewer = page.locator('[data-testid="email-viewer"]');
    await viewer.waitFor();
    const frame = page.locator('[data-testid="email-html"]');
    assert.equal(await frame.getAttribute('sandbox'), '', 'the HTML must be in a frame with sandbox=""');
    const html = await page.frameLocator('[data-testid="email-html"]').locator('body').textContent();
    assert.ok(html.includes('Demo study'), `the HTML part does not name the study: ${html}`);
    await page.screenshot({ path: join(SHOTS, 'outbox.png'), fullPage: true });

    await viewer.getByRole('tab', { name: 'Text' }).click();
    assert.ok((await page.textContent('[data-testid="email-text"]')).includes('Demo study'));
    await viewer.getByRole('tab', { name: 'Headers' }).click();
    const headers = await page.textContent('[data-testid="email-headers"]');
    for (const expected of ['From', 'To', 'Subject', 'Date', 'demo-researcher@lookit.local']) {
      assert.ok(headers.includes(expected), `headers lack ${expected}: ${headers}`);
    }
  });

  test('the Videos page shows a video the Pipe webhook delivered, and plays it', async () => {
    assert.ok(demo, 'the build test seeds the demo study');
    const status = await app.api('GET', '/status');
    const bytes = Buffer.alloc(2048, 7);
    const delivered = await deliverPipeVideo({ home: app.home, apiUrl: status.api.url, study: demo.study, response: demo.response, bytes });
    assert.equal(delivered.status, 200, delivered.text);

    await page.goto(`${app.base}/#/videos`);
    const row = page.locator('[data-testid="video-list"] tr', { hasText: delivered.videoName });
    await row.waitFor();
    const text = await row.textContent();
    assert.ok(text.includes('Demo study') && text.includes('2.0 KiB') && text.includes('1-video-consent'), text);
    await row.getByRole('button', { name: 'Play' }).click();
    const source = await page.getAttribute('[data-testid="video-player"]', 'src');
    const served = await page.evaluate(async (src) => {
      const response = await fetch(src);
      return { status: response.status, type: response.headers.get('content-type'), length: (await response.arrayBuffer()).byteLength };
    }, source);
    assert.deepEqual(served, { status: 200, type: 'video/mp4', length: bytes.length });
    await page.screenshot({ path: join(SHOTS, 'videos.png'), fullPage: true });
  });

  test("the Tunnel page's Share button opens the tunnel and its URL is copied", async () => {
    await browser.context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: app.base });
    await page.goto(`${app.base}/#/tunnel`);
    await page.click('[data-testid="share"]');
    const link = page.locator('[data-testid="public-url"]');
    await link.waitFor({ timeout: 60_000 });
    const url = (await link.textContent()).trim();
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/$/, 'the bore server on loopback gives the public URL');
    await page.getByRole('button', { name: 'Copy', exact: true }).first().click();
    await page.getByRole('button', { name: 'Copied', exact: true }).waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), url);
    // The public URL reaches the API through the tunnel.
    const health = await fetch(new URL('api/health/', url));
    assert.equal(health.status, 200, await health.text());
    await page.screenshot({ path: join(SHOTS, 'tunnel.png'), fullPage: true });
  });
});
