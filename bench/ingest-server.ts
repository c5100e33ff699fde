import http from 'node:http';
import type { AddressInfo } from 'node:net';

/** An image served by the benchmark server. */
export interface ServedImage {
  name: string;
  contentType: string;
  bytes: Buffer;
}

export interface BenchImageServer {
  /** Base URL with a trailing slash, e.g. http://127.0.0.1:41234/ */
  baseUrl: string;
  /** Responses with status 200 sent since the server started or since the last `resetServedCount`. */
  served(): number;
  resetServedCount(): void;
  close(): Promise<void>;
}

/** Returns the image name of a request path, or '' when its percent-encoding is invalid. */
function imageName(requestUrl: string): string {
  try {
    return decodeURIComponent(new URL(requestUrl, 'http://127.0.0.1').pathname.slice(1));
  } catch {
    return '';
  }
}

/**
 * Starts an HTTP server on 127.0.0.1 that responds to `GET /NAME` with the bytes of that image,
 * held in memory, whatever the query string is. Benchmark inputs give every row its own URL
 * through the query (`/NAME?copy=17`), so the same file can appear many times in a list. The
 * server adds no delay, and it returns 404 for an unknown name or another method.
 */
export async function startBenchImageServer(images: readonly ServedImage[]): Promise<BenchImageServer> {
  const byName = new Map(images.map((image) => [image.name, image]));
  let served = 0;

  const server = http.createServer((request, response) => {
    const image = byName.get(imageName(request.url ?? '/'));
    if (request.method !== 'GET' || image === undefined) {
      response.writeHead(404, { 'content-type': 'text/plain' });
      response.end('not found');
      return;
    }
    served += 1;
    response.writeHead(200, { 'content-type': image.contentType, 'content-length': String(image.bytes.length) });
    response.end(image.bytes);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    baseUrl: `http://127.0.0.1:${port}/`,
    served: () => served,
    resetServedCount: () => {
      served = 0;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
