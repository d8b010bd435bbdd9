// Queue change → screen latency (scripts/bench, figure 5): the real headless app
// (`lookit-local up --headless`, LOOKIT_LOCAL_BIN) and its Queues page in Debian Chromium. One
// persistent message at a time is published to `email.dead` (no consumer, so the depth stays);
// the time runs from just before the publish until the page shows the new depth (checked on every
// animation frame). Pauses of random length between changes, so the changes land at every phase
// of the panel's refresh. Prints one Markdown table row; progress goes to stderr.
//
//   LOOKIT_LOCAL_BIN=.../release/lookit-local node bench/queue_latency.mjs [changes]

import { createRequire } from 'node:module';
import { HeadlessApp } from '../tests/e2e/lib/app.mjs';
import { launchBrowser } from '../tests/e2e/lib/browser.mjs';

// amqplib is installed with the e2e tests (tests/e2e/package.json); reuse it from there.
const require = createRequire(new URL('../tests/e2e/package.json', import.meta.url));
const amqplib = require('amqplib');

const CHANGES = Number(process.argv[2] ?? 20);
const QUEUE = 'email.dead';
const READY_LIMIT_MS = 10 * 60 * 1000;

function percentile(sorted, p) {
  const rank = Math.ceil(sorted.length * p);
  return sorted[Math.min(Math.max(rank, 1), sorted.length) - 1];
}

const app = await HeadlessApp.start();
const browser = await launchBrowser();
let connection;
try {
  await app.ready;
  const page = await browser.context.newPage();
  await page.goto(app.dashboard);
  await page.waitForSelector('[data-testid="ready-light"][data-ready="true"]', { timeout: READY_LIMIT_MS });
  await page.goto(`${app.base}/#/queues`);
  const cell = page.locator(`[data-testid="ready-${QUEUE}"]`);
  await cell.waitFor();
  const settings = await app.connectionSettings();
  connection = await amqplib.connect(settings.BROKER_URL);
  const channel = await connection.createConfirmChannel();

  const latencies = [];
  for (let i = 0; i < CHANGES; i++) {
    const before = Number(await cell.textContent());
    const started = performance.now();
    channel.sendToQueue(QUEUE, Buffer.from(JSON.stringify({ bench: i })), { persistent: true });
    await page.waitForFunction(
      ([name, expected]) => Number(document.querySelector(`[data-testid="ready-${name}"]`)?.textContent) === expected,
      [QUEUE, before + 1],
      { polling: 'raf', timeout: 30_000 },
    );
    latencies.push(performance.now() - started);
    await channel.waitForConfirms();
    process.stderr.write(`change ${i + 1}: ${latencies.at(-1).toFixed(0)} ms\n`);
    await new Promise((resolve) => setTimeout(resolve, 200 + Math.random() * 1000));
  }
  latencies.sort((a, b) => a - b);
  const ms = (value) => `${(value / 1000).toFixed(2)} s`;
  console.log(
    `| queue depth change → Queues page | ${latencies.length} | ${ms(percentile(latencies, 0.5))} | ${ms(percentile(latencies, 0.95))} | ${ms(latencies.at(-1))} |`,
  );
} finally {
  await connection?.close();
  await browser.close();
  await app.stop();
}
