import assert from 'node:assert/strict';
import type { LookupAddress } from 'node:dns';
import { describe, it } from 'node:test';
import { Fetcher, findOptOut, parseRetryAfter, type FetchOptions } from '../../src/fetch/fetcher.js';
import { createGuardedLookup, refusedRange } from '../../src/fetch/guard.js';
import { RejectionError } from '../../src/pipeline/reasons.js';
import { serve } from '../support/server.js';

const baseOptions: FetchOptions = {
  timeoutMs: 2_000,
  retries: 2,
  retryBaseMs: 10,
  maxRetryAfterMs: 5_000,
  maxBytes: 1_000_000,
  maxRedirects: 3,
  userAgent: 'geoshard/0.1 (test)',
  disallowedDirectives: ['noai', 'noimageai'],
  allowPrivateNetwork: true,
  perHostConcurrency: 4,
};

function fetcher(t: { after: (fn: () => Promise<void>) => void }, options: Partial<FetchOptions> = {}, lookup?: ConstructorParameters<typeof Fetcher>[1]): Fetcher {
  const instance = new Fetcher({ ...baseOptions, ...options }, lookup);
  t.after(() => instance.close());
  return instance;
}

async function rejection(promise: Promise<unknown>): Promise<RejectionError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof RejectionError, `expected a RejectionError, got ${String(error)}`);
    return error;
  }
  assert.fail('expected a rejection');
}

/** Creates a resolver stub that maps every name to fixed addresses and records the names looked up. */
function stubResolver(addresses: LookupAddress[], asked: string[] = []) {
  return (hostname: string, _options: unknown, callback: (error: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void) => {
    asked.push(hostname);
    process.nextTick(() => callback(null, addresses));
  };
}

describe('refusedRange', () => {
  it('refuses private, loopback, link-local and metadata addresses', () => {
    const cases: [string, string][] = [
      ['127.0.0.1', 'loopback'],
      ['10.1.2.3', 'private'],
      ['172.16.0.1', 'private'],
      ['192.168.1.1', 'private'],
      ['169.254.169.254', 'metadata'],
      ['100.100.100.200', 'metadata'],
      ['168.63.129.16', 'metadata'],
      ['::1', 'loopback'],
      ['fe80::1', 'linkLocal'],
      ['fd12:3456::1', 'uniqueLocal'],
      ['ff02::1', 'multicast'],
      ['224.0.0.1', 'multicast'],
      ['0.0.0.0', 'unspecified'],
      ['::ffff:10.0.0.1', 'private'],
      ['::ffff:169.254.169.254', 'metadata'],
      ['64:ff9b::a00:1', 'rfc6052'],
    ];
    for (const [address, range] of cases) assert.equal(refusedRange(address), range, address);
  });

  it('accepts public unicast addresses', () => {
    for (const address of ['93.184.216.34', '2606:4700::1111', '::ffff:93.184.216.34']) assert.equal(refusedRange(address), null, address);
  });
});

describe('createGuardedLookup', () => {
  it('refuses a host that resolves to a private address', async () => {
    const lookup = createGuardedLookup({ allowPrivateNetwork: false, resolver: stubResolver([{ address: '10.0.0.5', family: 4 }]) });
    const error = await new Promise<Error | null>((resolve) => lookup('images.example.test', {}, (err) => resolve(err)));
    assert.match(String(error?.message), /images\.example\.test resolves to 10\.0\.0\.5 \(private\)/);
  });

  it('refuses a host when any of its addresses is private', async () => {
    const lookup = createGuardedLookup({
      allowPrivateNetwork: false,
      resolver: stubResolver([
        { address: '93.184.216.34', family: 4 },
        { address: '192.168.0.10', family: 4 },
      ]),
    });
    const error = await new Promise<Error | null>((resolve) => lookup('rebind.example.test', { all: true }, (err) => resolve(err)));
    assert.match(String(error?.message), /192\.168\.0\.10/);
  });

  it('passes public addresses through in both callback forms', async () => {
    const lookup = createGuardedLookup({ allowPrivateNetwork: false, resolver: stubResolver([{ address: '93.184.216.34', family: 4 }]) });
    const single = await new Promise<unknown[]>((resolve) => lookup('a.test', {}, (...args) => resolve(args)));
    assert.deepEqual(single, [null, '93.184.216.34', 4]);
    const all = await new Promise<unknown[]>((resolve) => lookup('a.test', { all: true }, (...args) => resolve(args)));
    assert.deepEqual(all, [null, [{ address: '93.184.216.34', family: 4 }]]);
  });
});

describe('Fetcher', () => {
  it('refuses loopback without allowPrivateNetwork and never connects', async (t) => {
    const server = await serve(t, (_request, response) => response.end('image'));
    const asked: string[] = [];
    const lookup = createGuardedLookup({ allowPrivateNetwork: false, resolver: stubResolver([{ address: '127.0.0.1', family: 4 }], asked) });
    const client = fetcher(t, { allowPrivateNetwork: false }, { lookup });
    const error = await rejection(client.fetch(`http://images.example.test:${server.port}/a.jpg`));
    assert.equal(error.reason, 'private_address');
    assert.deepEqual(asked, ['images.example.test']);
    assert.equal(server.requests.length, 0);
  });

  it('refuses a literal private address before connecting', async (t) => {
    const client = fetcher(t, { allowPrivateNetwork: false });
    const error = await rejection(client.fetch('http://127.0.0.1:9/a.jpg'));
    assert.equal(error.reason, 'private_address');
  });

  it('checks the address again after a redirect', async (t) => {
    const target = await serve(t, (_request, response) => response.end('secret'));
    const asked: string[] = [];
    const resolver = (hostname: string, _options: unknown, callback: (error: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void) => {
      asked.push(hostname);
      // The first host passes as public; the redirect target is private.
      const address = hostname === 'public.example.test' ? '93.184.216.34' : '10.0.0.7';
      process.nextTick(() => callback(null, [{ address, family: 4 }]));
    };
    const lookup = createGuardedLookup({ allowPrivateNetwork: false, resolver });
    const client = fetcher(t, { allowPrivateNetwork: false, retries: 0 }, { lookup: (hostname, options, callback) => {
      // Stand-in for the public host: resolve it to loopback without the guard.
      if (hostname === 'public.example.test') return callback(null, options.all ? [{ address: '127.0.0.1', family: 4 }] : '127.0.0.1', 4);
      return lookup(hostname, options, callback);
    } });
    const redirector = await serve(t, (_request, response) => {
      response.writeHead(302, { location: `http://internal.example.test:${target.port}/secret` });
      response.end();
    });
    const error = await rejection(client.fetch(`http://public.example.test:${redirector.port}/start`));
    assert.equal(error.reason, 'private_address');
    assert.deepEqual(asked, ['internal.example.test']);
    assert.equal(target.requests.length, 0);
  });

  it('retries 503 with Retry-After, then succeeds', async (t) => {
    let calls = 0;
    const server = await serve(t, (_request, response) => {
      calls += 1;
      if (calls < 3) {
        response.writeHead(503, { 'retry-after': '0' });
        response.end();
        return;
      }
      response.end('image bytes');
    });
    const result = await fetcher(t).fetch(server.url('/a.jpg'));
    assert.equal(result.body.toString(), 'image bytes');
    assert.equal(result.attempts, 3);
  });

  it('gives up when Retry-After exceeds the maximum wait', async (t) => {
    const server = await serve(t, (_request, response) => {
      response.writeHead(429, { 'retry-after': '3600' });
      response.end();
    });
    const error = await rejection(fetcher(t).fetch(server.url('/a.jpg')));
    assert.equal(error.reason, 'http_429');
    assert.equal(server.requests.length, 1);
  });

  it('does not retry a 404', async (t) => {
    const server = await serve(t, (_request, response) => {
      response.writeHead(404);
      response.end();
    });
    const error = await rejection(fetcher(t).fetch(server.url('/missing.jpg')));
    assert.equal(error.reason, 'http_404');
    assert.equal(server.requests.length, 1);
  });

  it('stops a chunked body at the byte limit', async (t) => {
    const server = await serve(t, (_request, response) => {
      response.writeHead(200, { 'content-type': 'image/jpeg' });
      const chunk = Buffer.alloc(64 * 1024, 1);
      let sent = 0;
      const timer = setInterval(() => {
        if (sent >= 64 || response.destroyed) {
          clearInterval(timer);
          response.end();
          return;
        }
        response.write(chunk);
        sent += 1;
      }, 1);
    });
    const error = await rejection(fetcher(t, { maxBytes: 200_000 }).fetch(server.url('/big.jpg')));
    assert.equal(error.reason, 'too_large');
  });

  it('rejects a declared Content-Length over the limit without reading', async (t) => {
    const server = await serve(t, (_request, response) => {
      response.writeHead(200, { 'content-length': '5000000' });
      response.end(Buffer.alloc(5_000_000));
    });
    const error = await rejection(fetcher(t, { maxBytes: 1_000 }).fetch(server.url('/big.jpg')));
    assert.equal(error.reason, 'too_large');
    assert.match(error.message, /Content-Length 5000000/);
  });

  it('follows redirects up to the limit', async (t) => {
    const server = await serve(t, (request, response) => {
      const step = Number(request.url?.slice(1));
      if (step < 10) {
        response.writeHead(302, { location: `/${step + 1}` });
        response.end();
        return;
      }
      response.end('done');
    });
    const ok = await fetcher(t, { maxRedirects: 3 }).fetch(server.url('/7'));
    assert.equal(ok.redirects, 3);
    assert.equal(ok.finalUrl, server.url('/10'));
    const error = await rejection(fetcher(t, { maxRedirects: 3 }).fetch(server.url('/0')));
    assert.equal(error.reason, 'too_many_redirects');
  });

  it('rejects a redirect to another scheme', async (t) => {
    const server = await serve(t, (_request, response) => {
      response.writeHead(301, { location: 'file:///etc/passwd' });
      response.end();
    });
    const error = await rejection(fetcher(t).fetch(server.url('/a')));
    assert.equal(error.reason, 'unsupported_scheme');
  });

  it('times out a stalled body and retries it', async (t) => {
    const server = await serve(t, (_request, response) => {
      response.writeHead(200);
      response.write('partial');
    });
    const error = await rejection(fetcher(t, { timeoutMs: 200, retries: 1 }).fetch(server.url('/slow.jpg')));
    assert.equal(error.reason, 'timeout');
    assert.equal(server.requests.length, 2);
  });

  it('honours X-Robots-Tag opt-outs without retrying', async (t) => {
    const server = await serve(t, (_request, response) => {
      response.writeHead(200, { 'x-robots-tag': 'noindex, NoAI' });
      response.end('image');
    });
    const error = await rejection(fetcher(t).fetch(server.url('/a.jpg')));
    assert.equal(error.reason, 'opted_out');
    assert.equal(server.requests.length, 1);
  });

  it('reports a refused connection as connection_error', async (t) => {
    // Nothing listens on port 1 of the loopback address, so the connection is refused.
    const error = await rejection(fetcher(t, { retries: 0 }).fetch('http://127.0.0.1:1/x.jpg'));
    assert.equal(error.reason, 'connection_error');
  });
});

describe('findOptOut', () => {
  it('applies unscoped and own-agent directives only', () => {
    assert.equal(findOptOut('noimageai', 'geoshard', ['noai', 'noimageai']), 'noimageai');
    assert.equal(findOptOut('otherbot: noai', 'geoshard', ['noai']), null);
    assert.equal(findOptOut('GeoShard: noai', 'geoshard', ['noai']), 'noai');
    assert.equal(findOptOut(['noindex', 'noai'], 'geoshard', ['noai']), 'noai');
    assert.equal(findOptOut('unavailable_after: 25 Jun 2030 15:00:00 PST', 'geoshard', ['noai']), null);
    assert.equal(findOptOut(undefined, 'geoshard', ['noai']), null);
  });
});

describe('parseRetryAfter', () => {
  it('reads seconds and HTTP dates', () => {
    assert.equal(parseRetryAfter('120'), 120_000);
    assert.equal(parseRetryAfter('Thu, 01 Jan 1970 00:00:10 GMT', 4_000), 6_000);
    assert.equal(parseRetryAfter('soon'), null);
    assert.equal(parseRetryAfter(undefined), null);
  });
});
