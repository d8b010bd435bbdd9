// The real headless app in Debian Chromium: the overview turns ready, a queue's depth moves when
// messages are published, each page renders, and the panel refuses strangers.
//
// Needs LOOKIT_LOCAL_BIN (the `lookit-local` binary). Screenshots go to screenshots/.

import assert from 'node:assert/strict';
import { copyFile, mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import amqplib from 'amqplib';
import { HeadlessApp, eventually } from './lib/app.mjs';
import { launchBrowser } from './lib/browser.mjs';
import { rawRequest } from './lib/raw-http.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const SHOTS = join(here, 'screenshots');
const READY_LIMIT_MS = 10 * 60 * 1000;

let app;
let browser;
let page;

before(async () => {
  await mkdir(SHOTS, { recursive: true });
  app = await HeadlessApp.start();
  browser = await launchBrowser();
  page = await browser.context.newPage();
});

after(async () => {
  await browser?.close();
  if (app) {
    const { code, signal } = await app.stop();
    assert.equal(code, 0, `lookit-local up should stop cleanly on SIGTERM (signal ${signal})\n${app.stderr.join('')}`);
  }
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
