// A few W3C WebDriver calls over plain fetch, enough to drive the desktop window through
// tauri-driver (which forwards to WebKitWebDriver).

export class WebDriver {
  constructor(base, sessionId) {
    this.base = base;
    this.sessionId = sessionId;
  }

  static async newSession(base, application) {
    const value = await call(base, 'POST', '/session', {
      capabilities: { alwaysMatch: { 'tauri:options': { application } } },
    });
    return new WebDriver(base, value.sessionId);
  }

  command(method, path, body) {
    return call(this.base, method, `/session/${this.sessionId}${path}`, body);
  }

  /** The element's id, or null when no element matches now. */
  async find(css) {
    try {
      const value = await this.command('POST', '/element', { using: 'css selector', value: css });
      return Object.values(value)[0];
    } catch (error) {
      if (String(error.message).includes('no such element')) return null;
      throw error;
    }
  }

  attribute(element, name) {
    return this.command('GET', `/element/${element}/attribute/${name}`);
  }

  click(element) {
    return this.command('POST', `/element/${element}/click`, {});
  }

  execute(script, args = []) {
    return this.command('POST', '/execute/sync', { script, args });
  }

  async screenshot() {
    return Buffer.from(await this.command('GET', '/screenshot'), 'base64');
  }

  async close() {
    await this.command('DELETE', '').catch(() => {});
  }
}

async function call(base, method, path, body) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(`${method} ${path}: ${answer.value?.error ?? response.status}: ${answer.value?.message ?? ''}`);
  }
  return answer.value;
}
