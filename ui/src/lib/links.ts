// Addresses derived from the public URL.

/** Where Pipe's `video_copied_s3` webhook must point (see the Lookit domain notes). */
export function pipeWebhookUrl(publicUrl: string): string {
  return `${publicUrl.replace(/\/+$/, '')}/exp/renamevideo/`;
}
