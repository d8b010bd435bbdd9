// The panel token: handed over in the URL fragment (`#token=...`, never sent to a server), then
// kept in sessionStorage and removed from the address bar so it is not shared by accident.

const STORAGE_KEY = 'lookit-local-token';

/** Reads `token` from a fragment such as `#token=abc` or `#/queues&token=abc`. */
export function tokenFromFragment(hash: string): string | null {
  const fragment = hash.replace(/^#\/?/, '');
  for (const part of fragment.split(/[&?]/)) {
    const [key, value] = part.split('=', 2);
    if (key === 'token' && value) return decodeURIComponent(value);
  }
  return null;
}

/** The fragment without its token part, so the address bar keeps the page but not the secret. */
export function fragmentWithoutToken(hash: string): string {
  const fragment = hash.replace(/^#/, '');
  const kept = fragment.split('&').filter((part) => !part.replace(/^\/?/, '').startsWith('token='));
  const rest = kept.join('&');
  return rest ? `#${rest}` : '';
}

export interface TokenStore {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** Takes the token from the fragment (storing it) or, failing that, from storage. */
export function adoptToken(hash: string, storage: TokenStore): string | null {
  const fromFragment = tokenFromFragment(hash);
  if (fromFragment) {
    storage.setItem(STORAGE_KEY, fromFragment);
    return fromFragment;
  }
  return storage.getItem(STORAGE_KEY);
}
