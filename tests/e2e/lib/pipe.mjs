// Pipe's `video_copied_s3` webhook as Pipe sends it (domain notes §4): a form field `payload`
// with the event, signed with HMAC-SHA1 over the URL it called plus the payload.

import { createHmac } from 'node:crypto';
import { readFile, mkdir, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { join } from 'node:path';

/** A value of the home's secrets.toml (`name = "value"`). */
export async function secret(home, name) {
  const text = await readFile(join(home, 'secrets.toml'), 'utf8');
  const match = new RegExp(`^${name}\\s*=\\s*"([^"]*)"`, 'm').exec(text);
  if (!match) throw new Error(`${name} is not in ${home}/secrets.toml`);
  return match[1];
}

/**
 * Puts a recording where Pipe would have uploaded it (the local video folder) and calls the
 * webhook on the API, which renames it to `videoName` and records it. Returns the response.
 */
export async function deliverPipeVideo({ home, apiUrl, study, response, frame = '1-video-consent', bytes }) {
  const pipeName = `pipe${Date.now()}`;
  const videoName = `videoStream_${study}_${frame}_${response}_${Date.now()}_123`;
  await mkdir(join(home, 'videos'), { recursive: true });
  await writeFile(join(home, 'videos', `${pipeName}.mp4`), bytes);
  const raw = JSON.stringify({
    data: { s3UploadStatus: 'upload success', videoName: pipeName, id: 4242, payload: videoName },
  });
  const base = new URL(apiUrl).origin;
  const signature = createHmac('sha1', await secret(home, 'pipe_webhook_key'))
    .update(`${base}/exp/renamevideo/${raw}`)
    .digest('base64');
  const body = new URLSearchParams({ payload: raw }).toString();
  const ca = await readFile(join(home, 'certs', 'ca.pem'));
  const answer = await new Promise((resolve, reject) => {
    const call = request(
      `${base}/exp/renamevideo/`,
      {
        method: 'POST',
        ca,
        headers: {
          'Content-Type': 'application/x-www-form-urlencoded',
          'Content-Length': Buffer.byteLength(body),
          'X-Pipe-Signature': signature,
        },
      },
      (res) => {
        let text = '';
        res.on('data', (chunk) => (text += chunk));
        res.on('end', () => resolve({ status: res.statusCode, text }));
      },
    );
    call.on('error', reject);
    call.end(body);
  });
  return { ...answer, videoName };
}
