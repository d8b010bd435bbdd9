import { describe, expect, it } from 'vitest';
import { ApiError, PanelApi } from './api';

function answering(status: number, body: unknown) {
  const calls: { url: string; init?: RequestInit }[] = [];
  const fetcher = async (url: string, init?: RequestInit) => {
    calls.push({ url, init });
    return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
  };
  return { calls, fetcher };
}

async function failure(call: Promise<unknown>): Promise<ApiError> {
  try {
    await call;
  } catch (e) {
    return e as ApiError;
  }
  throw new Error('expected the call to fail');
}

describe('PanelApi', () => {
  it('sends the token as a bearer header', async () => {
    const { calls, fetcher } = answering(200, { ready: true });
    const api = new PanelApi('tok', fetcher);
    expect(await api.get<{ ready: boolean }>('/status')).toEqual({ ready: true });
    expect(calls[0].url).toBe('/api/status');
    expect((calls[0].init?.headers as Record<string, string>).Authorization).toBe('Bearer tok');
  });

  it('sends a body as JSON and puts the token in file URLs', async () => {
    const { calls, fetcher } = answering(201, { id: 'b1' });
    const api = new PanelApi('t k', fetcher);
    expect(await api.post<{ id: string }>('/builds', { study: 's1' })).toEqual({ id: 'b1' });
    expect(calls[0].init?.body).toBe('{"study":"s1"}');
    expect((calls[0].init?.headers as Record<string, string>)['Content-Type']).toBe('application/json');
    expect(api.fileUrl('/videos/v1/file')).toBe('/api/videos/v1/file?token=t%20k');
    expect(api.fileUrl('/videos/v1/file', { download: '1' })).toBe('/api/videos/v1/file?download=1&token=t%20k');
  });

  it("turns the panel's refusal into an error with its message", async () => {
    const { fetcher } = answering(404, { error: 'there is no service named "nginx"', code: 'not_found' });
    const error = await failure(new PanelApi('tok', fetcher).post('/services/nginx/stop'));
    expect(error).toBeInstanceOf(ApiError);
    expect(error.message).toContain('nginx');
    expect(error.status).toBe(404);
    expect(error.notAvailable).toBe(false);
  });

  it('recognises parts that are not built yet', async () => {
    const { fetcher } = answering(501, { error: 'builds not available yet', code: 'not_available' });
    const error = await failure(new PanelApi('tok', fetcher).get('/builds'));
    expect(error.notAvailable).toBe(true);
  });

  it('says so when the panel cannot be reached', async () => {
    const api = new PanelApi('tok', async () => {
      throw new TypeError('Failed to fetch');
    });
    const error = await failure(api.get('/status'));
    expect(error.message).toMatch(/cannot be reached/);
  });

  it('puts the token in the event stream URL, encoded', () => {
    expect(new PanelApi('a+b').eventsUrl()).toBe('/api/events?token=a%2Bb');
  });
});
