import { readFile, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import pLimit, { type LimitFunction } from 'p-limit';
import { Agent, request, type Dispatcher } from 'undici';
import type { IngestOptions } from '../config/options.js';
import { RejectionError } from '../pipeline/reasons.js';
import { createS3Client, s3SettingsFromEnv } from '../storage/s3.js';
import { assertPublicLiteral, createGuardedLookup, PrivateAddressError, type LookupFunction } from './guard.js';

export type FetchOptions = Pick<
  IngestOptions,
  | 'timeoutMs'
  | 'retries'
  | 'retryBaseMs'
  | 'maxRetryAfterMs'
  | 'maxBytes'
  | 'maxRedirects'
  | 'userAgent'
  | 'disallowedDirectives'
  | 'allowPrivateNetwork'
  | 'perHostConcurrency'
>;

export interface FetchResult {
  body: Buffer;
  finalUrl: string;
  contentType: string | null;
  attempts: number;
  redirects: number;
}

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const RETRIABLE_STATUSES = new Set([408, 429, 500, 502, 503, 504]);

/** Parses Retry-After (seconds or an HTTP date) into milliseconds from now. */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | null {
  const text = Array.isArray(value) ? value[0] : value;
  if (!text) return null;
  if (/^\s*\d+\s*$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  return Number.isNaN(date) ? null : Math.max(0, date - now);
}

/** Directives that take a value after a colon, so their colon does not name a user agent. */
const VALUED_DIRECTIVES = new Set(['unavailable_after', 'max-snippet', 'max-image-preview', 'max-video-preview']);

/**
 * Returns the first disallowed X-Robots-Tag directive that applies to this user agent.
 * A header value may start with a user-agent token ("otherbot: noai"), which scopes its
 * directives to that agent.
 */
export function findOptOut(header: string | string[] | undefined, userAgentToken: string, disallowed: readonly string[]): string | null {
  if (!header) return null;
  const wanted = new Set(disallowed.map((directive) => directive.toLowerCase()));
  for (const value of Array.isArray(header) ? header : [header]) {
    let directives = value;
    const scoped = /^\s*([A-Za-z0-9_-]+)\s*:(.*)$/.exec(value);
    if (scoped && !VALUED_DIRECTIVES.has(scoped[1]!.toLowerCase())) {
      if (scoped[1]!.toLowerCase() !== userAgentToken.toLowerCase()) continue;
      directives = scoped[2]!;
    }
    for (const directive of directives.split(',')) {
      const name = directive.trim().toLowerCase();
      if (wanted.has(name)) return name;
    }
  }
  return null;
}

function findCode(error: unknown): { code?: string; name?: string; private?: PrivateAddressError } {
  let current: unknown = error;
  for (let depth = 0; current && depth < 6; depth += 1) {
    if (current instanceof PrivateAddressError) return { private: current };
    const { code, name } = current as { code?: string; name?: string };
    if (code && code !== 'UND_ERR_ABORTED') return { code, name };
    if (name === 'TimeoutError' || name === 'AbortError') return { name };
    current = (current as { cause?: unknown }).cause;
  }
  return {};
}

/** Maps a network error to a reason code and whether another attempt may succeed. */
export function classifyNetworkError(error: unknown): RejectionError {
  if (error instanceof RejectionError) return error;
  const found = findCode(error);
  const message = (error as Error)?.message ?? String(error);
  if (found.private) return new RejectionError('private_address', found.private.message);

  switch (found.code) {
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
    case 'ETIMEDOUT':
      return new RejectionError('timeout', message, { retriable: true, cause: error });
    case 'ENOTFOUND':
      return new RejectionError('dns_error', message, { cause: error });
    case 'EAI_AGAIN':
      return new RejectionError('dns_error', message, { retriable: true, cause: error });
    default:
      break;
  }
  if (found.name === 'TimeoutError' || found.name === 'AbortError') {
    return new RejectionError('timeout', 'request did not complete within the time-out', { retriable: true, cause: error });
  }
  return new RejectionError('connection_error', message, { retriable: true, cause: error });
}

/**
 * HTTP(S) fetcher with per-host concurrency, a whole-request deadline, retries with
 * exponential backoff and full jitter that honour Retry-After, a streamed byte limit,
 * manual redirects and an address guard on every connection.
 */
export class Fetcher {
  readonly #options: FetchOptions;
  readonly #dispatcher: Dispatcher;
  readonly #hostLimits = new Map<string, LimitFunction>();
  readonly #userAgentToken: string;
  #s3: S3Client | undefined;

  constructor(options: FetchOptions, { lookup }: { lookup?: LookupFunction } = {}) {
    this.#options = options;
    this.#userAgentToken = options.userAgent.split(/[\s/]/)[0] ?? options.userAgent;
    const guardedLookup = lookup ?? createGuardedLookup({ allowPrivateNetwork: options.allowPrivateNetwork });
    this.#dispatcher = new Agent({
      connect: { lookup: guardedLookup as never, timeout: options.timeoutMs },
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
      connections: options.perHostConcurrency,
    });
  }

  async close(): Promise<void> {
    await this.#dispatcher.close();
    this.#s3?.destroy();
  }

  #hostLimit(host: string): LimitFunction {
    let limit = this.#hostLimits.get(host);
    if (!limit) {
      limit = pLimit(this.#options.perHostConcurrency);
      this.#hostLimits.set(host, limit);
    }
    return limit;
  }

  /** Fetches an http(s), file: or s3: URL, or throws a RejectionError with the reason it failed. */
  async fetch(url: string): Promise<FetchResult> {
    if (url.startsWith('file:')) return this.#readFile(url);

    let attempt = 0;
    for (;;) {
      attempt += 1;
      try {
        const result = url.startsWith('s3:') ? await this.#readS3(url) : await this.#fetchFollowingRedirects(url);
        return { ...result, attempts: attempt };
      } catch (error) {
        const rejection = classifyNetworkError(error);
        const waitMs = this.#retryDelay(rejection, attempt);
        if (waitMs === null) throw rejection;
        await sleep(waitMs);
      }
    }
  }

  /** Returns how long to wait before the next attempt, or null to give up. */
  #retryDelay(rejection: RejectionError, attempt: number): number | null {
    if (!rejection.retriable || attempt > this.#options.retries) return null;
    const backoffMs = Math.random() * this.#options.retryBaseMs * 2 ** (attempt - 1);
    const retryAfterMs = rejection.retryAfterMs;
    if (retryAfterMs === null) return backoffMs;
    if (retryAfterMs > this.#options.maxRetryAfterMs) return null;
    return Math.max(retryAfterMs, backoffMs);
  }

  async #readS3(url: string): Promise<Omit<FetchResult, 'attempts'>> {
    this.#s3 ??= createS3Client(s3SettingsFromEnv());
    const { bucket, prefix: key } = parseS3Object(url);
    try {
      const response = await this.#s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }), {
        abortSignal: AbortSignal.timeout(this.#options.timeoutMs),
      });
      if ((response.ContentLength ?? 0) > this.#options.maxBytes) {
        (response.Body as NodeJS.ReadableStream & { destroy?: () => void })?.destroy?.();
        throw new RejectionError('too_large', `${response.ContentLength} bytes is over the limit of ${this.#options.maxBytes}`);
      }
      const body = Buffer.from(await response.Body!.transformToByteArray());
      return { body, finalUrl: url, contentType: response.ContentType ?? null, redirects: 0 };
    } catch (error) {
      if (error instanceof RejectionError) throw error;
      const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (status === 404) throw new RejectionError('file_not_found', `no object ${key} in bucket ${bucket}`, { cause: error });
      if (status !== undefined) {
        throw new RejectionError(`http_${status}`, `S3 returned HTTP ${status} for ${url.slice(0, 200)}`, { retriable: RETRIABLE_STATUSES.has(status), cause: error });
      }
      throw classifyNetworkError(error);
    }
  }

  async #readFile(url: string): Promise<FetchResult> {
    const file = fileURLToPath(url);
    try {
      const info = await stat(file);
      if (info.size > this.#options.maxBytes) {
        throw new RejectionError('too_large', `${info.size} bytes is over the limit of ${this.#options.maxBytes}`);
      }
      return { body: await readFile(file), finalUrl: url, contentType: null, attempts: 1, redirects: 0 };
    } catch (error) {
      if (error instanceof RejectionError) throw error;
      throw new RejectionError('file_not_found', (error as Error).message, { cause: error });
    }
  }

  async #fetchFollowingRedirects(startUrl: string): Promise<Omit<FetchResult, 'attempts'>> {
    let current = new URL(startUrl);
    const signal = AbortSignal.timeout(this.#options.timeoutMs);

    for (let redirects = 0; ; redirects += 1) {
      if (current.protocol !== 'http:' && current.protocol !== 'https:') {
        throw new RejectionError('unsupported_scheme', `redirected to ${current.protocol} URL ${current.href.slice(0, 200)}`);
      }
      assertPublicIfGuarded(current.hostname, this.#options.allowPrivateNetwork);

      const response = await this.#hostLimit(current.host)(() => this.#requestOnce(current, signal));
      if (response.kind === 'done') return { ...response.result, finalUrl: current.href, redirects };

      if (redirects >= this.#options.maxRedirects) {
        throw new RejectionError('too_many_redirects', `more than ${this.#options.maxRedirects} redirects, last to ${response.location.slice(0, 200)}`);
      }
      try {
        current = new URL(response.location, current);
      } catch {
        throw new RejectionError('invalid_url', `redirect to an invalid URL: ${response.location.slice(0, 200)}`);
      }
    }
  }

  async #requestOnce(
    url: URL,
    signal: AbortSignal,
  ): Promise<{ kind: 'done'; result: { body: Buffer; contentType: string | null } } | { kind: 'redirect'; location: string }> {
    const response = await request(url, {
      method: 'GET',
      dispatcher: this.#dispatcher,
      signal,
      headers: { 'user-agent': this.#options.userAgent, accept: 'image/*,*/*;q=0.8' },
    });
    const { statusCode, headers, body } = response;

    if (REDIRECT_STATUSES.has(statusCode) && typeof headers.location === 'string') {
      await body.dump();
      return { kind: 'redirect', location: headers.location };
    }
    if (statusCode < 200 || statusCode >= 300) {
      await body.dump();
      throw new RejectionError(`http_${statusCode}`, `HTTP ${statusCode} from ${url.host}`, {
        retriable: RETRIABLE_STATUSES.has(statusCode),
        retryAfterMs: parseRetryAfter(headers['retry-after']),
      });
    }

    const optOut = findOptOut(headers['x-robots-tag'], this.#userAgentToken, this.#options.disallowedDirectives);
    if (optOut) {
      discard(body);
      throw new RejectionError('opted_out', `X-Robots-Tag: ${optOut}`);
    }

    const declaredLength = Number(headers['content-length']);
    if (Number.isFinite(declaredLength) && declaredLength > this.#options.maxBytes) {
      discard(body);
      throw new RejectionError('too_large', `Content-Length ${declaredLength} is over the limit of ${this.#options.maxBytes} bytes`);
    }

    const chunks: Buffer[] = [];
    let total = 0;
    for await (const chunk of body) {
      total += (chunk as Buffer).length;
      if (total > this.#options.maxBytes) {
        discard(body);
        throw new RejectionError('too_large', `body exceeds the limit of ${this.#options.maxBytes} bytes`);
      }
      chunks.push(chunk as Buffer);
    }
    const contentType = typeof headers['content-type'] === 'string' ? headers['content-type'] : null;
    return { kind: 'done', result: { body: Buffer.concat(chunks, total), contentType } };
  }
}

/** Closes a response body that will not be read; destroying it emits an error that no caller reads. */
function discard(body: Dispatcher.ResponseData['body']): void {
  body.on('error', () => undefined);
  body.destroy();
}

/** Splits s3://bucket/key into its bucket and object key. */
function parseS3Object(url: string): { bucket: string; prefix: string } {
  const match = /^s3:\/\/([^/]+)\/(.+)$/.exec(url);
  if (!match) throw new RejectionError('invalid_url', `expected s3://bucket/key but received ${url.slice(0, 200)}`);
  return { bucket: match[1]!, prefix: match[2]! };
}

function assertPublicIfGuarded(hostname: string, allowPrivateNetwork: boolean): void {
  if (allowPrivateNetwork) return;
  try {
    assertPublicLiteral(hostname);
  } catch (error) {
    throw new RejectionError('private_address', (error as Error).message);
  }
}
