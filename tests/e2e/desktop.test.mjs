// The desktop app through tauri-driver and WebKitWebDriver (under Xvfb): the window opens on the
// overview, live state arrives, stopping and starting a service from its card works, a second
// launch leaves the first in charge, and quitting through the panel stops everything.
//
// Needs LOOKIT_DESKTOP_BIN (the lookit-local-desktop binary), tauri-driver on PATH (or in
// $LOOKIT_CACHE/tools/bin), DISPLAY (Xvfb) and a D-Bus session bus, which the single-instance
// check uses (`npm run test:desktop` starts one with dbus-run-session). Screenshots go to
// screenshots/.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { eventually, freshHome, instanceEnv } from './lib/app.mjs';
import { WebDriver } from './lib/webdriver.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const SHOTS = join(here, 'screenshots');
const READY_LIMIT_MS = 10 * 60 * 1000;

const desktopBin = process.env.LOOKIT_DESKTOP_BIN;
let home;
let driverProcess;
let driver;
let env;

function tauriDriverPath() {
  const cached = join(process.env.LOOKIT_CACHE ?? '/var/cache/lookit-local', 'tools/bin/tauri-driver');
  return existsSync(cached) ? cached : 'tauri-driver';
}

function freePort() {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

before(async () => {
  assert.ok(desktopBin, 'set LOOKIT_DESKTOP_BIN to the lookit-local-desktop binary');
  assert.ok(process.env.DISPLAY, 'set DISPLAY (start Xvfb)');
  assert.ok(process.env.DBUS_SESSION_BUS_ADDRESS, 'run under dbus-run-session (npm run test:desktop does)');
  await mkdir(SHOTS, { recursive: true });
  home = await freshHome();
  env = { ...instanceEnv(home), WEBKIT_DISABLE_COMPOSITING_MODE: '1' };
  const port = await freePort();
  const nativePort = await freePort();
  const args = ['--port', String(port), '--native-port', String(nativePort), '--native-driver', '/usr/bin/WebKitWebDriver'];
  driverProcess = spawn(tauriDriverPath(), args, { env, stdio: ['ignore', 'inherit', 'inherit'] });
  const base = `http://127.0.0.1:${port}`;
  await eventually('tauri-driver to listen', async () => (await fetch(`${base}/status`)).ok, 30_000);
  driver = await WebDriver.newSession(base, desktopBin);
});

after(async () => {
  await driver?.close();
  if (driverProcess && driverProcess.exitCode === null) {
    driverProcess.kill('SIGTERM');
    await new Promise((resolve) => driverProcess.once('exit', resolve));
  }
  if (home) await rm(home, { recursive: true, force: true });
});

test('the window opens on the overview and the stack turns ready', async () => {
  await eventually('the overview', () => driver.find('[data-testid="stack-ready"]'), 60_000);
  const hash = await driver.execute('return location.hash');
  assert.ok(!hash.includes('token='), `the token stays in the address: ${hash}`);
  const light = await eventually(
    'the ready light',
    async () => driver.find('[data-testid="ready-light"][data-ready="true"]'),
    READY_LIMIT_MS,
  );
  assert.ok(light);
  await writeFile(join(SHOTS, 'desktop-overview.png'), await driver.screenshot());
});

test('a service stops and starts from its card', async () => {
  const stop = await driver.find('[data-testid="service-rabbitmq"] .actions button:nth-child(2)');
  await driver.click(stop);
  await eventually('the broker to stop', () => driver.find('[data-testid="service-rabbitmq"][data-state="stopped"]'), 60_000);
  assert.equal(await driver.find('[data-testid="ready-light"][data-ready="true"]'), null, 'the stack is not ready without its broker');
  const start = await driver.find('[data-testid="service-rabbitmq"] .actions button:nth-child(1)');
  await driver.click(start);
  await eventually('the broker to be ready', () => driver.find('[data-testid="service-rabbitmq"][data-state="ready"]'), 120_000);
  await eventually('the stack to be ready again', () => driver.find('[data-testid="ready-light"][data-ready="true"]'), 120_000);
});

test('a second launch hands over to the first and exits', () => {
  const second = spawnSync(desktopBin, [], { env, timeout: 60_000 });
  assert.equal(second.status, 0, `second launch: ${second.stderr}`);
  return eventually('the first window to still answer', () => driver.find('[data-testid="stack-ready"]'), 10_000);
});

test('quitting through the panel stops the app', async () => {
  const base = await driver.execute('return location.origin');
  const answer = await driver.execute(
    `return fetch('/api/shutdown', { method: 'POST', headers: { Authorization: 'Bearer ' + sessionStorage.getItem('lookit-local-token') } }).then(r => r.status)`,
  );
  assert.equal(answer, 202);
  await eventually(
    'the panel to close',
    async () => {
      try {
        await fetch(`${base}/`);
        return false;
      } catch {
        return true;
      }
    },
    120_000,
  );
});
