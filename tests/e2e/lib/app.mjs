// Runs the real headless app (`lookit-local up --headless`) in a fresh home with free ports, and
// reads the two lines it promises on stdout: `Dashboard: <url>` and `Stack ready`.

import { spawn, execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';

const STARTUP_LIMIT_MS = 10 * 60 * 1000;

/** Environment for a private instance: its own home, the native backend and free ports. */
export function instanceEnv(home) {
  return {
    ...process.env,
    LOOKIT_LOCAL_HOME: home,
    LOOKIT_LOCAL__STACK__BACKEND: 'native',
    LOOKIT_LOCAL__POSTGRES__PORT: '0',
    LOOKIT_LOCAL__RABBITMQ__PORT: '0',
    LOOKIT_LOCAL__RABBITMQ__MANAGEMENT_PORT: '0',
    LOOKIT_LOCAL__API__PORT: '0',
    LOOKIT_LOCAL__PANEL__PORT: '0',
  };
}

export function appBinary() {
  const bin = process.env.LOOKIT_LOCAL_BIN;
  if (!bin) throw new Error('set LOOKIT_LOCAL_BIN to the lookit-local binary (cargo build -p lookit-local)');
  return bin;
}

export async function freshHome() {
  return mkdtemp(join(tmpdir(), 'lookit-e2e-'));
}

export class HeadlessApp {
  constructor(child, home, env, dashboard, lines) {
    this.child = child;
    this.home = home;
    this.env = env;
    this.dashboard = dashboard;
    this.lines = lines;
    const url = new URL(dashboard);
    this.base = url.origin;
    this.token = new URLSearchParams(url.hash.slice(1)).get('token');
  }

  /** `settings`: more `LOOKIT_LOCAL__SECTION__KEY` overrides, e.g. the builder image. */
  static async start(settings = {}) {
    const home = await freshHome();
    const env = { ...instanceEnv(home), ...settings };
    const child = spawn(appBinary(), ['up', '--headless'], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const lines = [];
    const stderr = [];
    child.stderr.on('data', (chunk) => stderr.push(chunk.toString()));
    const stdout = createInterface({ input: child.stdout });
    const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));

    const dashboard = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no Dashboard line within ${STARTUP_LIMIT_MS} ms\n${stderr.join('')}`)), STARTUP_LIMIT_MS);
      stdout.on('line', (line) => {
        lines.push(line);
        const match = /^Dashboard: (\S+)/.exec(line);
        if (match) {
          clearTimeout(timer);
          resolve(match[1]);
        }
      });
      exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`lookit-local up exited (${code ?? signal}) before printing the dashboard URL\n${stderr.join('')}`));
      });
    });
    const app = new HeadlessApp(child, home, env, dashboard, lines);
    app.exited = exited;
    app.stderr = stderr;
    app.ready = new Promise((resolve, reject) => {
      stdout.on('line', (line) => line === 'Stack ready' && resolve());
      if (lines.includes('Stack ready')) resolve();
      exited.then(({ code, signal }) => reject(new Error(`lookit-local up exited (${code ?? signal}) before Stack ready\n${stderr.join('')}`)));
    });
    app.ready.catch(() => {});
    return app;
  }

  /** Calls the panel API with the token. */
  async api(method, path) {
    const response = await fetch(`${this.base}/api${path}`, {
      method,
      headers: { Authorization: `Bearer ${this.token}` },
    });
    const body = await response.json();
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(body)}`);
    return body;
  }

  /** Runs another `lookit-local` command against this instance's home; its stdout. */
  async run(...args) {
    const { stdout } = await promisify(execFile)(appBinary(), args, { env: this.env });
    return stdout;
  }

  /** The running stack's connection settings (`lookit-local env`), as an object. */
  async connectionSettings() {
    const stdout = await this.run('env');
    return Object.fromEntries(
      stdout
        .split('\n')
        .filter((line) => line.includes('='))
        .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]),
    );
  }

  /** SIGTERM, as a user's Ctrl-C would, then waits for a clean exit. */
  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGTERM');
    const result = await this.exited;
    await rm(this.home, { recursive: true, force: true });
    return result;
  }
}

/** Polls `check` until it returns a truthy value; there is no event to wait on from outside. */
export async function eventually(what, check, limitMs = 60_000) {
  const deadline = Date.now() + limitMs;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}
