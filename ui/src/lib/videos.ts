// Received videos: how one reads in the list.

import type { VideoSummary } from './types';

/** The frame the video was recorded in, marked when it is consent footage. */
export function frameLabel(video: VideoSummary): string {
  return video.consent ? `${video.frame_id} (consent)` : video.frame_id;
}

/** The first 8 characters of a UUID: enough to tell responses apart on screen. */
export function shortId(id: string): string {
  return id.slice(0, 8);
}

/** Why a video cannot be played, or null when it can: the video storage does not have it. */
export function unplayableReason(video: VideoSummary): string | null {
  return video.stored === 'missing' ? `Not in the video storage (not uploaded yet, or deleted): ${video.location}` : null;
}

/** What the size column says when it shows no size, or null when it shows one. */
export function sizeNote(video: VideoSummary): string | null {
  switch (video.stored) {
    case 'stored':
      return null;
    case 'missing':
      return 'No file in the video storage';
    case 'unknown':
      return 'Size unknown: the video storage did not answer in time';
  }
}
