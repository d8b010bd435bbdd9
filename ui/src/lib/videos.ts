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

/** Why a video cannot be played here, or null when it can. */
export function unplayableReason(video: VideoSummary): string | null {
  return video.stored_locally ? null : 'Not stored on this computer (kept in cloud storage or not uploaded yet).';
}
