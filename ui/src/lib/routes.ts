// The pages and how the URL fragment names them (`#/queues`).

export const PAGES = [
  { id: 'overview', label: 'Overview' },
  { id: 'queues', label: 'Queues' },
  { id: 'builds', label: 'Builds' },
  { id: 'tunnel', label: 'Tunnel' },
  { id: 'outbox', label: 'Outbox' },
  { id: 'videos', label: 'Videos' },
  { id: 'logs', label: 'Logs' },
  { id: 'doctor', label: 'Doctor' },
] as const;

export type PageId = (typeof PAGES)[number]['id'];

export function pageFromHash(hash: string): PageId {
  const id = hash.replace(/^#\/?/, '').split(/[&?/]/)[0];
  return PAGES.find((p) => p.id === id)?.id ?? 'overview';
}
