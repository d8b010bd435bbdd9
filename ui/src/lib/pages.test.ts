import { describe, expect, it } from 'vitest';
import { availableViews, emailStatusText, framedHtml, recipientsText, subjectLine } from './outbox';
import { frameLabel, shortId, sizeNote, unplayableReason } from './videos';
import { isFinished, mergeLog } from './buildlog';
import { PAGES, pageFromHash } from './routes';
import type { EmailMessage, VideoSummary } from './types';

const message: EmailMessage = {
  id: '1',
  template: 'build_succeeded',
  to: ['ada@lab.example'],
  subject: null,
  status: 'kept',
  created_at: '2026-01-01T00:00:00Z',
  sent_at: null,
  headers: [{ name: 'To', value: 'ada@lab.example' }],
  text: 'Built.',
  html: null,
  error: null,
};

const video: VideoSummary = {
  id: 'v',
  file_name: 'videoStream_x',
  study_id: 's',
  study: 'Demo study',
  response_id: '0123456789abcdef',
  frame_id: '1-video-consent',
  consent: true,
  recorded_at: '2026-01-01T00:00:00Z',
  location: 's3://lab-videos/pipe/videoStream_x.mp4',
  stored: 'missing',
  size_bytes: null,
};

describe('the email outbox', () => {
  it('says what a kept message is and names unrendered ones by template', () => {
    expect(emailStatusText('kept')).toContain('no SMTP server');
    expect(subjectLine(message)).toBe('(build succeeded, not rendered yet)');
    expect(subjectLine({ ...message, subject: 'Hi' })).toBe('Hi');
  });

  it('shortens long recipient lists', () => {
    expect(recipientsText(['a@x', 'b@y'])).toBe('a@x, b@y');
    expect(recipientsText(['a@x', 'b@y', 'c@z', 'd@w'])).toBe('a@x, b@y and 2 more');
    expect(recipientsText([])).toBe('(no recipient)');
  });

  it('opens on the HTML when there is one, and always offers the headers', () => {
    expect(availableViews(message)).toEqual(['text', 'headers']);
    expect(availableViews({ ...message, html: '<p>x</p>' })).toEqual(['html', 'text', 'headers']);
    expect(availableViews({ ...message, text: null })).toEqual(['headers']);
  });

  it('keeps links in the frame from replacing the message', () => {
    expect(framedHtml('<a href="https://x">x</a>')).toContain('<base target="_blank">');
  });
});

describe('received videos', () => {
  it('marks consent footage and says why a video cannot play', () => {
    expect(frameLabel(video)).toBe('1-video-consent (consent)');
    expect(frameLabel({ ...video, consent: false })).toBe('1-video-consent');
    expect(shortId(video.response_id)).toBe('01234567');
    expect(unplayableReason(video)).toContain('Not in the video storage');
    expect(unplayableReason(video)).toContain('s3://lab-videos/pipe/videoStream_x.mp4');
    expect(unplayableReason({ ...video, stored: 'stored', size_bytes: 10 })).toBeNull();
  });

  it('plays a video whose storage did not answer when listing, and says why its size is missing', () => {
    const unknown = { ...video, stored: 'unknown' as const };
    expect(unplayableReason(unknown)).toBeNull();
    expect(sizeNote(unknown)).toContain('did not answer');
    expect(sizeNote(video)).toContain('No file');
    expect(sizeNote({ ...video, stored: 'stored', size_bytes: 10 })).toBeNull();
  });
});

describe('build logs', () => {
  it('appends only the live lines the fetch did not include', () => {
    expect(mergeLog(['a', 'b'], ['b', 'c'], 1)).toEqual(['a', 'b', 'c']);
    expect(mergeLog([], undefined, 0)).toEqual([]);
    expect(isFinished('succeeded')).toBe(true);
    expect(isFinished('running')).toBe(false);
  });
});

describe('navigation', () => {
  it('has the outbox and videos pages', () => {
    expect(pageFromHash('#/outbox')).toBe('outbox');
    expect(pageFromHash('#/videos')).toBe('videos');
    expect(PAGES.map((p) => p.id)).toContain('outbox');
  });
});
