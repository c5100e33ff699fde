import type { IngestOptions } from '../config/options.js';
import { normalizeTerritoryCode } from '../geo/policy.js';
import { RejectionError } from '../pipeline/reasons.js';

/** An input row with its columns mapped and validated. */
export interface InputRow {
  index: number;
  url: string;
  caption: string | null;
  declaredCountry: string | null;
  declaredCoordinates: { latitude: number; longitude: number } | null;
  extra: Record<string, unknown>;
}

type ColumnOptions = Pick<
  IngestOptions,
  'urlColumn' | 'captionColumn' | 'countryColumn' | 'latitudeColumn' | 'longitudeColumn' | 'extraColumns'
>;

function isBlank(value: unknown): boolean {
  return value === undefined || value === null || (typeof value === 'string' && value.trim() === '');
}

function parseDegrees(value: unknown, column: string): number | null {
  if (isBlank(value)) return null;
  const number = typeof value === 'number' ? value : Number(String(value).trim());
  if (!Number.isFinite(number)) {
    throw new RejectionError('invalid_location', `column ${column}: expected decimal degrees but received ${JSON.stringify(value)}`);
  }
  return number;
}

/**
 * Maps a source record to an input row. Throws a RejectionError with the reason when the
 * url is missing or invalid, or when a declared location cannot be read. `file:` and
 * `s3:` URLs are accepted only from records that geoshard listed itself from a folder or
 * an S3 prefix, never from a URL list.
 */
export function toInputRow(
  index: number,
  record: Record<string, unknown>,
  columns: ColumnOptions,
  { listed = false }: { listed?: boolean } = {},
): InputRow {
  const rawUrl = record[columns.urlColumn];
  if (isBlank(rawUrl)) throw new RejectionError('invalid_row', `missing value in url column "${columns.urlColumn}"`);
  const url = String(rawUrl).trim();

  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new RejectionError('invalid_url', `not an absolute URL: ${url.slice(0, 200)}`);
  }
  const schemeAllowed = parsed.protocol === 'http:' || parsed.protocol === 'https:' || (listed && (parsed.protocol === 'file:' || parsed.protocol === 's3:'));
  if (!schemeAllowed) throw new RejectionError('unsupported_scheme', `scheme ${parsed.protocol} is not fetched; use http or https`);

  const latitude = parseDegrees(record[columns.latitudeColumn], columns.latitudeColumn);
  const longitude = parseDegrees(record[columns.longitudeColumn], columns.longitudeColumn);
  if ((latitude === null) !== (longitude === null)) {
    throw new RejectionError('invalid_location', `only one of ${columns.latitudeColumn} and ${columns.longitudeColumn} is set`);
  }
  if (latitude !== null && longitude !== null && (Math.abs(latitude) > 90 || Math.abs(longitude) > 180)) {
    throw new RejectionError('invalid_location', `declared coordinates ${latitude},${longitude} are out of range: latitude must be within ±90 and longitude within ±180`);
  }

  let declaredCountry: string | null = null;
  const country = record[columns.countryColumn];
  if (!isBlank(country)) {
    declaredCountry = String(country).trim();
    if (normalizeTerritoryCode(declaredCountry) === null) {
      throw new RejectionError('invalid_location', `column ${columns.countryColumn}: "${declaredCountry}" is not an ISO 3166-1 country or territory code`);
    }
  }

  const extra: Record<string, unknown> = {};
  for (const column of columns.extraColumns) {
    if (Object.hasOwn(record, column)) extra[column] = record[column];
  }

  const caption = record[columns.captionColumn];
  return {
    index,
    url,
    caption: isBlank(caption) ? null : String(caption),
    declaredCountry,
    declaredCoordinates: latitude !== null && longitude !== null ? { latitude, longitude } : null,
    extra,
  };
}
