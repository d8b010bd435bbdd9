// Under the POSIX locale (LANG=C, common on servers and in CI) WebKit reports
// `navigator.language === "C"`, which Intl rejects; uPlot formats numbers with it while loading
// and the whole UI would fail to start. `locale-guard.ts` applies the fix before any library loads.

/** The tag if Intl accepts it, otherwise `en-US`. */
export function usableLanguage(tag: string | undefined): string {
  if (!tag) return 'en-US';
  try {
    return Intl.getCanonicalLocales(tag)[0] ?? 'en-US';
  } catch {
    return 'en-US';
  }
}

export function guardNavigatorLanguage(nav: Navigator): void {
  const usable = usableLanguage(nav.language);
  if (usable !== nav.language) {
    Object.defineProperty(nav, 'language', { value: usable, configurable: true });
    Object.defineProperty(nav, 'languages', { value: [usable], configurable: true });
  }
}
