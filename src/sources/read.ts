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
  if (!file.toLowerCase().endsWith('.gz')) return stream;
  const gunzip = createGunzip();
  // pipe() does not forward errors: a read error must still end the gunzip stream.
  stream.on('error', (error) => gunzip.destroy(error));
  return stream.pipe(gunzip);
}

const BYTE_ORDER_MARK = '\uFEFF';

function stripByteOrderMark(line: string, lineNumber: number): string {
  return lineNumber === 1 && line.startsWith(BYTE_ORDER_MARK) ? line.slice(1) : line;
}

async function* readLines(file: string): AsyncGenerator<string> {
  const lines = createInterface({ input: openText(file), crlfDelay: Infinity });
  for await (const line of lines) yield line;
}

/**
 * Reads one URL per line. Lines are not parsed as CSV, so URLs containing commas or quotes
 * stay whole. Blank lines are not records.
 */
async function* readTxt(file: string, urlColumn: string): AsyncGenerator<SourceRecord> {
  let index = 0;
  let lineNumber = 0;
  for await (const line of readLines(file)) {
    lineNumber += 1;
    const url = stripByteOrderMark(line, lineNumber).trim();
    if (url === '') continue;
    yield { index: index++, record: { [urlColumn]: url } };
  }
}

async function* readJsonl(file: string): AsyncGenerator<SourceRecord> {
  let index = 0;
  let lineNumber = 0;
  for await (const rawLine of readLines(file)) {
    lineNumber += 1;
    const line = stripByteOrderMark(rawLine, lineNumber);
    if (line.trim() === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (error) {
      yield { index: index++, error: `line ${lineNumber}: invalid JSON: ${(error as Error).message}`, raw: line.slice(0, 500) };
      continue;
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      yield { index: index++, error: `line ${lineNumber}: expected a JSON object`, raw: line.slice(0, 500) };
      continue;
    }
    yield { index: index++, record: value as Record<string, unknown> };
  }
}

/**
 * Reads CSV or TSV with a header line, which must name the url column. A record with the
 * wrong number of fields becomes an error record in its place, and reading goes on. So
 * does a record spanning several lines: CSV quoting allows line breaks, but in a URL list
 * they nearly always come from an unclosed quote that swallowed the following lines.
 */
async function* readDelimited(file: string, delimiter: ',' | '\t', urlColumn: string): AsyncGenerator<SourceRecord> {
  // The parser reports a skipped record with the count of good records before it; that count places it in order.
  const skipped: { goodBefore: number; error: string }[] = [];
  const parser = openText(file).pipe(
    parseCsv({
      columns: (header: string[]) => {
        if (!header.includes(urlColumn)) {
          throw new Error(`Source ${file} has no "${urlColumn}" column; its header has ${header.map((name) => `"${name}"`).join(', ')}: pass --url-column`);
        }
        return header;
      },
      delimiter,
      // TSV has no quoting convention, so quotes inside captions stay as they are.
      quote: delimiter === '\t' ? false : '"',
      relax_quotes: true,
      bom: true,
      info: true,
      raw: true,
      skip_empty_lines: true,
      skip_records_with_error: true,
      on_skip: (error) => {
        const message = error?.message ?? 'malformed record';
        const where = error?.lines && !/line \d+/.test(message) ? `line ${error.lines}: ` : '';
        skipped.push({ goodBefore: Number(error?.records ?? 0), error: `${where}${message}` });
      },
    }),
  );

  let index = 0;
  let good = 0;
  for await (const { record, info, raw } of parser as AsyncIterable<{ record: Record<string, string>; info: { lines: number }; raw: string }>) {
    while (skipped.length > 0 && skipped[0]!.goodBefore <= good) yield { index: index++, error: skipped.shift()!.error };
    good += 1;
    // Blank lines skipped before the record are part of its raw text, but not of the record.
    const spanned = raw.replace(/^(?:\r?\n)+/, '').replace(/\r?\n$/, '').split('\n').length;
    if (spanned > 1) {
      const first = info.lines - spanned + 1;
      yield {
        index: index++,
        error: `lines ${first}-${info.lines}: one record spans ${spanned} lines, which usually means an unclosed quote`,
        raw: raw.slice(0, 500),
      };
      continue;
    }
    yield { index: index++, record };
  }
  for (const item of skipped) yield { index: index++, error: item.error };
}

function toJsonValue(value: unknown): unknown {
  if (typeof value === 'bigint') return Number.isSafeInteger(Number(value)) ? Number(value) : value.toString();
  if (value instanceof Date) return value.toISOString();
  if (value instanceof Uint8Array) return Buffer.from(value).toString('utf8');
  return value;
}

async function* readParquet(file: string, urlColumn: string): AsyncGenerator<SourceRecord> {
  const buffer = await asyncBufferFromFile(file);
  const metadata = await parquetMetadataAsync(buffer);
  const columns = metadata.schema.slice(1).map((element) => element.name);
  if (!columns.includes(urlColumn)) {
    throw new Error(`Source ${file} has no "${urlColumn}" column; its columns are ${columns.map((name) => `"${name}"`).join(', ')}: pass --url-column`);
  }
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
async function* readFolder(folder: string, urlColumn: string): AsyncGenerator<SourceRecord> {
  let index = 0;
  for (const file of await listImages(path.resolve(folder))) {
    yield { index: index++, record: { [urlColumn]: pathToFileURL(file).href }, listed: true };
  }
}

/** Lists the images under an S3 prefix in key order, as s3:// URLs. */
async function* readS3Prefix(source: string, urlColumn: string): AsyncGenerator<SourceRecord> {
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
    yield { index: index++, record: { [urlColumn]: `s3://${bucket}/${base}${object.path}` }, listed: true };
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
 * s3:// URL: a prefix of images, or a list file, which is downloaded first. Readers of
 * one URL per line and of image listings put the URL under `urlColumn`.
 */
export async function* readSource(source: string, format: InputFormat, { urlColumn = 'url' }: { urlColumn?: string } = {}): AsyncGenerator<SourceRecord> {
  const resolved = format === 'auto' ? await detectFormat(source) : format;
  if (isS3Url(source) && resolved === 'folder') {
    yield* readS3Prefix(source, urlColumn);
    return;
  }
  if (!isS3Url(source)) {
    await stat(source).catch((error: NodeJS.ErrnoException) => {
      throw new Error(`Source ${source} cannot be read: ${error.code === 'ENOENT' ? 'no such file or folder' : error.message}`);
    });
  }
  const copy = await localCopy(source);
  try {
    yield* readLocal(copy.file, resolved, urlColumn);
  } finally {
    await copy.cleanup();
  }
}

async function* readLocal(source: string, resolved: Exclude<InputFormat, 'auto'>, urlColumn: string): AsyncGenerator<SourceRecord> {
  switch (resolved) {
    case 'txt':
      yield* readTxt(source, urlColumn);
      break;
    case 'csv':
      yield* readDelimited(source, ',', urlColumn);
      break;
    case 'tsv':
      yield* readDelimited(source, '\t', urlColumn);
      break;
    case 'jsonl':
      yield* readJsonl(source);
      break;
    case 'parquet':
      yield* readParquet(source, urlColumn);
      break;
    case 'folder':
      yield* readFolder(source, urlColumn);
      break;
  }
}
