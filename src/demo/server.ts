import { readFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import sharp from 'sharp';

export interface ImageServer {
  /** Base URL with a trailing slash, e.g. http://127.0.0.1:41234/ */
  baseUrl: string;
  close(): Promise<void>;
}

const CONTENT_TYPES: Record<string, string> = {
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.png': 'image/png',
  '.webp': 'image/webp',
};

/**
 * Serves the files of a folder on 127.0.0.1 for the demo and the tests.
 * - `/images/NAME`: the file.
 * - `/optout/NAME`: the file with `X-Robots-Tag: noai`.
 * - `/redirect/NAME`: a 302 to `/images/NAME`.
 * - `/half/NAME`: a copy at half the width, JPEG quality 80, EXIF kept.
 * Anything else is a 404.
 */
export async function startImageServer(folder: string): Promise<ImageServer> {
  const server = http.createServer((request, response) => {
    void handle(folder, request, response).catch((error: Error) => {
      response.writeHead(500, { 'content-type': 'text/plain' });
      response.end(error.message);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    baseUrl: `http://127.0.0.1:${port}/`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

async function handle(folder: string, request: http.IncomingMessage, response: http.ServerResponse): Promise<void> {
  const match = /^\/(images|optout|redirect|half)\/([A-Za-z0-9._-]+)$/.exec(new URL(request.url ?? '/', 'http://localhost').pathname);
  if (!match) return notFound(response);
  const [, route, name] = match as unknown as [string, string, string];

  if (route === 'redirect') {
    response.writeHead(302, { location: `/images/${name}` });
    response.end();
    return;
  }

  let data: Buffer;
  try {
    data = await readFile(path.join(folder, name));
  } catch {
    return notFound(response);
  }

  const headers: Record<string, string> = { 'content-type': CONTENT_TYPES[path.extname(name).toLowerCase()] ?? 'application/octet-stream' };
  if (route === 'optout') headers['x-robots-tag'] = 'noai';
  if (route === 'half') {
    const { width } = await sharp(data).metadata();
    data = await sharp(data).rotate().resize({ width: Math.max(1, Math.round((width ?? 2) / 2)) }).withMetadata().jpeg({ quality: 80 }).toBuffer();
    headers['content-type'] = 'image/jpeg';
  }
  headers['content-length'] = String(data.length);
  response.writeHead(200, headers);
  response.end(data);
}

function notFound(response: http.ServerResponse): void {
  response.writeHead(404, { 'content-type': 'text/plain' });
  response.end('not found');
}
