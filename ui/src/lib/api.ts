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

  post<T = { ok: boolean }>(path: string): Promise<T> {
    return this.request<T>('POST', path);
  }

  /** The URL of the event stream; EventSource cannot send headers, so the token goes in the query. */
  eventsUrl(): string {
    return `/api/events?token=${encodeURIComponent(this.token)}`;
  }

  private async request<T>(method: string, path: string): Promise<T> {
    let response: Response;
    try {
      response = await this.fetcher(`/api${path}`, {
        method,
        headers: { Authorization: `Bearer ${this.token}` },
      });
    } catch {
      throw new ApiError('The panel cannot be reached: is Lookit Local still running?', 0, 'unreachable');
    }
    const body: unknown = await response.json().catch(() => null);
    if (!response.ok) {
      const error = body as { error?: string; code?: string } | null;
      throw new ApiError(
        error?.error ?? `The panel answered ${response.status}`,
        response.status,
        error?.code ?? 'http',
      );
    }
    return body as T;
  }
}
