import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { parquetWriteFile } from 'hyparquet-writer';
import { resolveOptions } from '../../src/config/options.js';
import { RejectionError } from '../../src/pipeline/reasons.js';
import { detectFormat, readSource, type SourceRecord } from '../../src/sources/read.js';
import { toInputRow } from '../../src/sources/row.js';
import { temporaryFolder } from '../support/helpers.js';

async function collect(source: string): Promise<SourceRecord[]> {
  const records: SourceRecord[] = [];
  for await (const record of readSource(source, 'auto')) records.push(record);
  return records;
}

const columns = resolveOptions({ source: 'x', output: 'y', extra_columns: ['license'] });

describe('readSource', () => {
  it('keeps txt URLs with commas and quotes whole', async (t) => {
    const folder = await temporaryFolder(t);
    const file = path.join(folder, 'list.txt');
    await writeFile(file, 'http://a.test/x,y.jpg\n\n  http://a.test/"q".jpg  \r\nhttp://a.test/z.jpg');
    const records = await collect(file);
    assert.deepEqual(records.map((record) => record.record?.url), ['http://a.test/x,y.jpg', 'http://a.test/"q".jpg', 'http://a.test/z.jpg']);
    assert.deepEqual(records.map((record) => record.index), [0, 1, 2]);
  });

  it('turns malformed CSV records into error records and reads on', async (t) => {
    const folder = await temporaryFolder(t);
    const file = path.join(folder, 'list.csv');
    await writeFile(file, 'url,caption\nhttp://a.test/1.jpg,one\nhttp://a.test/2.jpg,two,extra\nhttp://a.test/3.jpg,"three, quoted"\n');
    const records = await collect(file);
    assert.equal(records.length, 3);
    assert.equal(records[0]?.record?.caption, 'one');
    assert.match(records[1]?.error ?? '', /column|record/i);
    assert.equal(records[2]?.record?.caption, 'three, quoted');
    assert.deepEqual(records.map((record) => record.index), [0, 1, 2]);
  });

  it('reads gzipped TSV without treating quotes as quoting', async (t) => {
    const folder = await temporaryFolder(t);
    const file = path.join(folder, 'list.tsv.gz');
    await writeFile(file, gzipSync('url\tcaption\nhttp://a.test/1.jpg\ta "quoted" word\n'));
    const records = await collect(file);
    assert.equal(records[0]?.record?.caption, 'a "quoted" word');
  });

  it('reports invalid JSON lines and non-objects', async (t) => {
    const folder = await temporaryFolder(t);
    const file = path.join(folder, 'list.jsonl');
    await writeFile(file, '{"url":"http://a.test/1.jpg"}\n{broken\n[1,2]\n{"url":"http://a.test/2.jpg"}\n');
    const records = await collect(file);
    assert.equal(records.length, 4);
    assert.match(records[1]?.error ?? '', /invalid JSON/);
    assert.match(records[2]?.error ?? '', /JSON object/);
    assert.equal(records[3]?.record?.url, 'http://a.test/2.jpg');
  });

  it('reads parquet rows with numbers and text', async (t) => {
    const folder = await temporaryFolder(t);
    const file = path.join(folder, 'list.parquet');
    await parquetWriteFile({
      filename: file,
      columnData: [
        { name: 'url', data: ['http://a.test/1.jpg', 'http://a.test/2.jpg'], type: 'STRING' },
        { name: 'latitude', data: [35.6895, 40.7128], type: 'DOUBLE' },
      ],
    });
    const records = await collect(file);
    assert.deepEqual(records.map((record) => record.record), [
      { url: 'http://a.test/1.jpg', latitude: 35.6895 },
      { url: 'http://a.test/2.jpg', latitude: 40.7128 },
    ]);
  });

  it('lists folder images recursively in sorted order', async (t) => {
    const folder = await temporaryFolder(t);
    await mkdir(path.join(folder, 'b'));
    await writeFile(path.join(folder, 'b', 'x.JPG'), '');
    await writeFile(path.join(folder, 'a.png'), '');
    await writeFile(path.join(folder, 'notes.txt'), '');
    const records = await collect(folder);
    assert.deepEqual(records.map((record) => path.relative(folder, new URL(String(record.record?.url)).pathname)), ['a.png', 'b/x.JPG']);
  });

  it('names the fix for an unknown extension', async (t) => {
    const folder = await temporaryFolder(t);
    const file = path.join(folder, 'list.xlsx');
    await writeFile(file, '');
    await assert.rejects(detectFormat(file), /--input-format/);
    await assert.rejects(detectFormat(path.join(folder, 'absent.csv')), /no such file or folder/);
  });
});

describe('toInputRow', () => {
  function reasonOf(record: Record<string, unknown>): string {
    try {
      toInputRow(0, record, columns);
    } catch (error) {
      assert.ok(error instanceof RejectionError);
      return error.reason;
    }
    return 'ok';
  }

  it('maps columns and keeps extra columns', () => {
    const row = toInputRow(3, { url: ' http://a.test/1.jpg ', caption: 'c', latitude: '35.5', longitude: 139, country: 'jp', license: 'CC0', other: 1 }, columns);
    assert.deepEqual(row, {
      index: 3,
      url: 'http://a.test/1.jpg',
      caption: 'c',
      declaredCountry: 'jp',
      declaredCoordinates: { latitude: 35.5, longitude: 139 },
      extra: { license: 'CC0' },
    });
  });

  it('gives each malformed row its reason', () => {
    assert.equal(reasonOf({}), 'invalid_row');
    assert.equal(reasonOf({ url: 'not a url' }), 'invalid_url');
    assert.equal(reasonOf({ url: 'ftp://a.test/1.jpg' }), 'unsupported_scheme');
    assert.equal(reasonOf({ url: 'file:///etc/passwd' }), 'unsupported_scheme');
    assert.equal(reasonOf({ url: 'http://a.test/1.jpg', latitude: 'north', longitude: 3 }), 'invalid_location');
    assert.equal(reasonOf({ url: 'http://a.test/1.jpg', latitude: 3 }), 'invalid_location');
    assert.equal(reasonOf({ url: 'http://a.test/1.jpg', latitude: 95, longitude: 3 }), 'invalid_location');
    assert.equal(reasonOf({ url: 'http://a.test/1.jpg', latitude: 0, longitude: 0 }), 'ok');
    assert.equal(reasonOf({ url: 'http://a.test/1.jpg', country: 'Atlantis' }), 'invalid_location');
    assert.equal(reasonOf({ url: 'http://a.test/1.jpg', latitude: '', longitude: '' }), 'ok');
  });
});

describe('readSource with broken CSV quoting', () => {
  it('keeps the rows after a stray quote', async (t) => {
    const folder = await temporaryFolder(t);
    const file = path.join(folder, 'list.csv');
    await writeFile(file, 'url,caption\nhttp://a.test/1.jpg,"bad"x\nhttp://a.test/2.jpg,two,extra\nhttp://a.test/3.jpg,three\nhttp://a.test/4.jpg,"never closed\nhttp://a.test/5.jpg,five\n');
    const records = await collect(file);
    assert.deepEqual(
      records.map((record) => record.record?.url ?? record.error?.slice(0, 7)),
      ['http://a.test/1.jpg', 'Invalid', 'http://a.test/3.jpg', 'Quote N'],
    );
    assert.match(records[1]?.error ?? '', /on line 3/);
    assert.deepEqual(records.map((record) => record.index), [0, 1, 2, 3]);
  });

  it('rejects a record that swallowed the lines after an unclosed quote', async (t) => {
    const folder = await temporaryFolder(t);
    const file = path.join(folder, 'list.csv');
    await writeFile(file, 'url,caption,country\nhttp://a.test/1.jpg,"unclosed,KE\nhttp://a.test/2.jpg,two,IN\nhttp://a.test/3.jpg,"three",JP\n\nhttp://a.test/4.jpg,four,BR\n');
    const records = await collect(file);
    assert.equal(records.length, 2);
    assert.match(records[0]?.error ?? '', /^lines 2-4: one record spans 3 lines/);
    assert.equal(records[1]?.record?.url, 'http://a.test/4.jpg');
  });

  it('names the columns when the url column is missing', async (t) => {
    const folder = await temporaryFolder(t);
    const file = path.join(folder, 'list.csv');
    await writeFile(file, 'link,caption\nhttp://a.test/1.jpg,one\n');
    await assert.rejects(collect(file), /has no "url" column; its header has "link", "caption": pass --url-column/);
  });

  it('reports a missing file without a stack trace', async (t) => {
    const folder = await temporaryFolder(t);
    for (const format of ['csv', 'tsv', 'txt', 'jsonl'] as const) {
      const records = readSource(path.join(folder, 'absent.tsv'), format);
      await assert.rejects(records.next(), /absent\.tsv cannot be read: no such file or folder/);
    }
  });

  it('strips a byte-order mark from JSON lines and names bad lines', async (t) => {
    const folder = await temporaryFolder(t);
    const file = path.join(folder, 'list.jsonl');
    await writeFile(file, '\uFEFF{"url":"http://a.test/1.jpg"}\n\nnot json\n');
    const records = await collect(file);
    assert.equal(records[0]?.record?.url, 'http://a.test/1.jpg');
    assert.match(records[1]?.error ?? '', /^line 3: invalid JSON/);
  });

  it('puts txt URLs under the configured url column', async (t) => {
    const folder = await temporaryFolder(t);
    const file = path.join(folder, 'list.txt');
    await writeFile(file, 'http://a.test/1.jpg\n');
    const records: SourceRecord[] = [];
    for await (const record of readSource(file, 'auto', { urlColumn: 'link' })) records.push(record);
    assert.deepEqual(records[0]?.record, { link: 'http://a.test/1.jpg' });
  });
});
