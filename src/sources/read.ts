import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { createGunzip } from 'node:zlib';
import { parse as parseCsv } from 'csv-parse';
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects } from 'hyparquet';
import type { InputFormat } from '../config/options.js';
import { openStorage, parseS3Url } from '../storage/s3.js';
import { isS3Url } from '../storage/storage.js';

/** One record of a source, or the reason it could not be read. Index counts every record from 0. */
export type SourceRecord =
  | { index: number; record: Record<string, unknown>; error?: undefined; listed?: true }
  | { index: number; record?: undefined; error: string; raw?: string; listed?: undefined };

export const IMAGE_EXTENSIONS = new Set([
  '.jpg', '.jpeg', '.jpe', '.png', '.webp', '.gif', '.tif', '.tiff', '.avif', '.heic', '.heif', '.bmp',
]);

const PARQUET_ROWS_PER_READ = 10_000;

/** Decides the format of a source from whether it is a folder (or an S3 prefix ending in /) and from its extension. */
export async function detectFormat(source: string): Promise<Exclude<InputFormat, 'auto'>> {
  if (isS3Url(source)) return source.endsWith('/') || parseS3Url(source).prefix === '' ? 'folder' : formatFromName(source);
  const info = await stat(source).catch((error: NodeJS.ErrnoException) => {
    throw new Error(`Source ${source} cannot be read: ${error.code === 'ENOENT' ? 'no such file or folder' : error.message}`);
  });
  if (info.isDirectory()) return 'folder';
  return formatFromName(source);
}

function formatFromName(source: string): Exclude<InputFormat, 'auto' | 'folder'> {
  const name = source.toLowerCase().replace(/\.gz$/, '');
  if (name.endsWith('.csv')) return 'csv';
  if (name.endsWith('.tsv')) return 'tsv';
  if (name.endsWith('.jsonl') || name.endsWith('.ndjson') || name.endsWith('.json')) return 'jsonl';
  if (name.endsWith('.parquet')) return 'parquet';
  if (name.endsWith('.txt') || name.endsWith('.lst')) return 'txt';
  throw new Error(
    `Cannot tell the format of ${source} from its extension: name it .txt, .csv, .tsv, .jsonl or .parquet, or pass --input-format`,
  );
}

function openText(file: string): Readable {
  const stream = createReadStream(file);
  return file.toLowerCase().endsWith('.gz') ? stream.pipe(createGunzip()) : stream;
}

async function* readLines(file: string): AsyncGenerator<string> {
  const lines = createInterface({ input: openText(file), crlfDelay: Infinity });
  for await (const line of lines) yield line;
}

/**
 * Reads one URL per line. Lines are not parsed as CSV, so URLs containing commas or quotes
 * stay whole. Blank lines are not records.
 */
async function* readTxt(file: string): AsyncGenerator<SourceRecord> {
  let index = 0;
  for await (const line of readLines(file)) {
    const url = line.trim();
    if (url === '') continue;
    yield { index: index++, record: { url } };
  }
}

async function* readJsonl(file: string): AsyncGenerator<SourceRecord> {
  let index = 0;
  for await (const line of readLines(file)) {
    if (line.trim() === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (error) {
      yield { index: index++, error: `invalid JSON: ${(error as Error).message}`, raw: line.slice(0, 500) };
      continue;
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      yield { index: index++, error: 'expected a JSON object per line', raw: line.slice(0, 500) };
      continue;
    }
    yield { index: index++, record: value as Record<string, unknown> };
  }
}

/**
 * Reads CSV or TSV with a header line. A record with the wrong number of fields becomes an
 * error record in its place, and reading goes on. An unclosed quote runs to the end of
 * the file, as CSV quoting allows line breaks, and becomes one error record.
 */
async function* readDelimited(file: string, delimiter: ',' | '\t'): AsyncGenerator<SourceRecord> {
  // The parser reports a skipped record with the count of good records before it; that count places it in order.
  const skipped: { goodBefore: number; error: string }[] = [];
  const parser = openText(file).pipe(
    parseCsv({
      columns: true,
      delimiter,
      // TSV has no quoting convention, so quotes inside captions stay as they are.
      quote: delimiter === '\t' ? false : '"',
      relax_quotes: true,
      bom: true,
      skip_empty_lines: true,
      skip_records_with_error: true,
      on_skip: (error) => {
        const where = error?.lines ? `line ${error.lines}: ` : '';
        skipped.push({ goodBefore: Number(error?.records ?? 0), error: `${where}${error?.message ?? 'malformed record'}` });
      },
    }),
  );

  let index = 0;
  let good = 0;
  for await (const record of parser as AsyncIterable<Record<string, string>>) {
    while (skipped.length > 0 && skipped[0]!.goodBefore <= good) yield { index: index++, error: skipped.shift()!.error };
    yield { index: index++, record };
    good += 1;
  }
  for (const item of skipped) yield { index: index++, error: item.error };
}

function toJsonValue(value: unknown): unknown {
  if (typeof value === 'bigint') return Number.isSafeInteger(Number(value)) ? Number(value) : value.toString();
  if (value instanceof Date) return value.toISOString();
  if (value instanceof Uint8Array) return Buffer.from(value).toString('utf8');
  return value;
}

async function* readParquet(file: string): AsyncGenerator<SourceRecord> {
  const buffer = await asyncBufferFromFile(file);
  const metadata = await parquetMetadataAsync(buffer);
  const rowCount = Number(metadata.num_rows);
  let index = 0;

  for (let start = 0; start < rowCount; start += PARQUET_ROWS_PER_READ) {
    const rows = await parquetReadObjects({ file: buffer, metadata, rowStart: start, rowEnd: Math.min(start + PARQUET_ROWS_PER_READ, rowCount) });
    for (const row of rows) {
      const record: Record<string, unknown> = {};
      for (const [key, value] of Object.entries(row)) record[key] = toJsonValue(value);
      yield { index: index++, record };
    }
  }
}

async function listImages(folder: string): Promise<string[]> {
  const entries = await readdir(folder, { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => entry.isFile() && IMAGE_EXTENSIONS.has(path.extname(entry.name).toLowerCase()))
    .map((entry) => path.join(entry.parentPath, entry.name))
    .sort();
}

/**
 * Lists the images of a folder, recursively and in sorted order, as file: URLs. The
 * records are marked as listed, which is what allows their file: scheme later.
 */
async function* readFolder(folder: string): AsyncGenerator<SourceRecord> {
  let index = 0;
  for (const file of await listImages(path.resolve(folder))) {
    yield { index: index++, record: { url: pathToFileURL(file).href }, listed: true };
  }
}

/** Lists the images under an S3 prefix in key order, as s3:// URLs. */
async function* readS3Prefix(source: string): AsyncGenerator<SourceRecord> {
  const { bucket } = parseS3Url(source);
  const storage = openStorage(source);
  let objects;
  try {
    objects = await storage.list();
  } finally {
    await storage.close();
  }
  const base = parseS3Url(source).prefix;
  let index = 0;
  for (const object of objects) {
    if (!IMAGE_EXTENSIONS.has(path.extname(object.path).toLowerCase())) continue;
    yield { index: index++, record: { url: `s3://${bucket}/${base}${object.path}` }, listed: true };
  }
}

/** Makes a list file readable as a local file: an s3:// object is downloaded to a temporary folder first. */
export async function localCopy(source: string): Promise<{ file: string; cleanup: () => Promise<void> }> {
  if (!isS3Url(source)) return { file: source, cleanup: async () => undefined };
  const slash = source.lastIndexOf('/');
  const storage = openStorage(source.slice(0, slash + 1));
  const folder = await mkdtemp(path.join(os.tmpdir(), 'geoshard-source-'));
  const file = path.join(folder, source.slice(slash + 1));
  try {
    await pipeline(await storage.openReadStream(source.slice(slash + 1)), createWriteStream(file));
  } catch (error) {
    await rm(folder, { recursive: true, force: true });
    throw new Error(`Cannot read source ${source}: ${(error as Error).message}`, { cause: error });
  } finally {
    await storage.close();
  }
  return { file, cleanup: () => rm(folder, { recursive: true, force: true }) };
}

/**
 * Streams the records of a source in its own order. The source is a local path or an
 * s3:// URL: a prefix of images, or a list file, which is downloaded first.
 */
export async function* readSource(source: string, format: InputFormat): AsyncGenerator<SourceRecord> {
  const resolved = format === 'auto' ? await detectFormat(source) : format;
  if (isS3Url(source) && resolved === 'folder') {
    yield* readS3Prefix(source);
    return;
  }
  const copy = await localCopy(source);
  try {
    yield* readLocal(copy.file, resolved);
  } finally {
    await copy.cleanup();
  }
}

async function* readLocal(source: string, resolved: Exclude<InputFormat, 'auto'>): AsyncGenerator<SourceRecord> {
  switch (resolved) {
    case 'txt':
      yield* readTxt(source);
      break;
    case 'csv':
      yield* readDelimited(source, ',');
      break;
    case 'tsv':
      yield* readDelimited(source, '\t');
      break;
    case 'jsonl':
      yield* readJsonl(source);
      break;
    case 'parquet':
      yield* readParquet(source);
      break;
    case 'folder':
      yield* readFolder(source);
      break;
  }
}
