/**
 * Stable rejection reason codes. Every rejected input row carries exactly one of these
 * in its status line and in the catalog; `detail` carries the free-text specifics.
 * HTTP failures use `http_<status>` (for example http_404, http_429, http_503).
 */
export const REASONS = {
  invalid_row: 'the input row could not be parsed or has no url',
  invalid_url: 'the url is not a valid absolute URL',
  unsupported_scheme: 'the url scheme is not http, https or a local file of a folder source',
  invalid_location: 'the declared coordinates or country code are not valid',
  private_address: 'the host resolves to a loopback, private, link-local or metadata address',
  dns_error: 'the host name could not be resolved',
  connection_error: 'the connection failed or was reset',
  timeout: 'the request did not complete within the time-out',
  too_many_redirects: 'the redirect limit was reached',
  too_large: 'the body is larger than the byte limit',
  opted_out: 'the response carries an opt-out directive (X-Robots-Tag)',
  file_not_found: 'a local file listed by the source is missing or unreadable',
  decode_error: 'the bytes are not an image the decoder can read (truncated, corrupt, HTML, HEIC...)',
  too_many_pixels: 'the image has more pixels than the pixel limit',
  too_small: 'the shorter side is below the minimum size',
  bad_aspect_ratio: 'the long side divided by the short side exceeds the maximum aspect ratio',
  excluded_territory: 'the location evidence places the image in a territory the policy excludes',
  unknown_location: 'no location evidence and the policy rejects unknown locations',
  duplicate_exact: 'same decoded pixels as a kept sample',
  duplicate_near: 'perceptual hash within the Hamming radius of a kept sample',
  internal_error: 'an unexpected error inside geoshard; the detail holds the message',
} as const;

export type FixedReason = keyof typeof REASONS;
export type Reason = FixedReason | `http_${number}`;

/** Matches every valid reason code, the http_<status> family included. */
export const REASON_PATTERN = new RegExp(`^(?:${Object.keys(REASONS).join('|')}|http_[1-5][0-9]{2})$`);

/** A failure of one input row with its reason code; thrown inside stages, caught per row. */
export class RejectionError extends Error {
  readonly reason: Reason;
  readonly retriable: boolean;
  /** Delay the server asked for with Retry-After, in milliseconds. */
  readonly retryAfterMs: number | null;

  constructor(
    reason: Reason,
    detail: string,
    options: { retriable?: boolean; retryAfterMs?: number | null; cause?: unknown } = {},
  ) {
    super(detail, { cause: options.cause });
    this.name = 'RejectionError';
    this.reason = reason;
    this.retriable = options.retriable ?? false;
    this.retryAfterMs = options.retryAfterMs ?? null;
  }
}
