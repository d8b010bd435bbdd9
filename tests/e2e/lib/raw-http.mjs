// HTTP requests with headers fetch() will not let us forge (Host), for the access checks.

import { request } from 'node:http';

export function rawRequest(url, { method = 'GET', headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers }, (response) => {
      let body = '';
      response.on('data', (chunk) => (body += chunk));
      response.on('end', () => resolve({ status: response.statusCode, body: JSON.parse(body || 'null') }));
    });
    req.on('error', reject);
    req.end();
  });
}
