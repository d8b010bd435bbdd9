// The email outbox: how a message reads in the list and which view the viewer opens with.

import type { EmailMessage, EmailStatus, EmailSummary } from './types';

/** What each status means for the user. */
export function emailStatusText(status: EmailStatus): string {
  switch (status) {
    case 'queued':
      return 'waiting for the worker';
    case 'sent':
      return 'sent';
    case 'kept':
      return 'kept here (no SMTP server configured)';
    case 'failed':
      return 'sending failed';
  }
}

/** The subject, or what the message is while the worker has not rendered it yet. */
export function subjectLine(email: EmailSummary): string {
  return email.subject ?? `(${email.template.replaceAll('_', ' ')}, not rendered yet)`;
}

/** `a@x, b@y` or `a@x and 4 more`, so a long list does not stretch the table. */
export function recipientsText(to: string[], shown = 2): string {
  if (to.length === 0) return '(no recipient)';
  if (to.length <= shown) return to.join(', ');
  return `${to.slice(0, shown).join(', ')} and ${to.length - shown} more`;
}

export type EmailView = 'html' | 'text' | 'headers';

/** The views the message has, the HTML first when there is one (what a mail client shows). */
export function availableViews(message: EmailMessage): EmailView[] {
  const views: EmailView[] = [];
  if (message.html) views.push('html');
  if (message.text) views.push('text');
  views.push('headers');
  return views;
}

/**
 * The HTML as the sandboxed frame gets it. The frame has `sandbox=""` (no scripts, no forms, an
 * opaque origin); the base target keeps a clicked link from replacing the frame's content.
 */
export function framedHtml(html: string): string {
  return `<!doctype html><meta charset="utf-8"><base target="_blank">${html}`;
}
