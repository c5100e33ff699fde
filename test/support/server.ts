import http from 'node:http';
import type { AddressInfo } from 'node:net';

export type Handler = (request: http.IncomingMessage, response: http.ServerResponse) => void;

/** Starts an HTTP server on 127.0.0.1 with one handler; closes it when the test ends. */
export async function serve(
  t: { after: (fn: () => Promise<void>) => void },
  handler: Handler,
): Promise<{ url: (path: string) => string; port: number; requests: string[] }> {
  const requests: string[] = [];
  const server = http.createServer((request, response) => {
    requests.push(request.url ?? '');
    handler(request, response);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { url: (path) => `http://127.0.0.1:${port}${path}`, port, requests };
}
