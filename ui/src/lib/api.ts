// Calls to the panel API. Every failure becomes an ApiError carrying the panel's own message, and
// `notAvailable` for parts of the instance that are not built yet (HTTP 501).

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
  ) {
    super(message);
  }

  get notAvailable(): boolean {
    return this.code === 'not_available';
  }
}

export type Fetch = (input: string, init?: RequestInit) => Promise<Response>;

export class PanelApi {
  constructor(
    private readonly token: string,
    private readonly fetcher: Fetch = (input, init) => fetch(input, init),
  ) {}

  get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  /** `body`, when given, is sent as JSON. */
  post<T = { ok: boolean }>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('POST', path, body);
  }

  /** The URL of the event stream; EventSource cannot send headers, so the token goes in the query. */
  eventsUrl(): string {
    return `/api/events?token=${encodeURIComponent(this.token)}`;
  }

  /**
   * A URL that works without headers (a `<video>` source, a download link): the token goes in
   * the query, as for the event stream, after the `query` given.
   */
  fileUrl(path: string, query: Record<string, string> = {}): string {
    const params = Object.entries({ ...query, token: this.token }).map(
      ([name, value]) => `${encodeURIComponent(name)}=${encodeURIComponent(value)}`,
    );
    return `/api${path}?${params.join('&')}`;
  }

  private async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    let response: Response;
    const headers: Record<string, string> = { Authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    try {
      response = await this.fetcher(`/api${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError('The panel cannot be reached: is Lookit Local still running?', 0, 'unreachable');
    }
    const answer: unknown = await response.json().catch(() => null);
    if (!response.ok) {
      const error = answer as { error?: string; code?: string } | null;
      throw new ApiError(
        error?.error ?? `The panel answered ${response.status}`,
        response.status,
        error?.code ?? 'http',
      );
    }
    return answer as T;
  }
}
