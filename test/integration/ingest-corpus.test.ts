import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { startImageServer } from '../../src/demo/server.js';
import { ingest, type RunSummary, type StatusLine } from '../../src/pipeline/ingest.js';
import { corpus, corpusMissing, python, readStatus, silentLogger, temporaryFolder, testOptions } from '../support/helpers.js';

const run = promisify(execFile);

interface ManifestRow {
  file: string;
  latitude: number;
  longitude: number;
  expected: string;
  excluded: boolean;
}

async function readManifest(): Promise<ManifestRow[]> {
  const text = await readFile(path.join(corpus, 'geo/manifest.csv'), 'utf8');
  return text
    .trim()
    .split('\n')
    .slice(1)
    .map((line) => {
      const [file, latitude, longitude, expected, excluded] = line.split(',');
      return { file: file!, latitude: Number(latitude), longitude: Number(longitude), expected: expected!, excluded: excluded === 'true' };
    });
}

/** Checks what every run must satisfy: one status line per input row, and the counts add up. */
async function assertAccounted(summary: RunSummary): Promise<StatusLine[]> {
  const lines = await readStatus(summary.output);
  assert.equal(summary.input_rows, summary.ok + summary.rejected);
  assert.equal(lines.length, summary.input_rows);
  assert.deepEqual(lines.map((line) => line.row), Array.from({ length: lines.length }, (_, i) => i));
  assert.equal(lines.filter((line) => line.status === 'ok').length, summary.ok);
  const runJson = JSON.parse(await readFile(path.join(summary.output, 'run.json'), 'utf8')) as RunSummary;
  assert.deepEqual(runJson.reasons, summary.reasons);
  return lines;
}

describe('ingest on the real corpus', { skip: corpusMissing }, () => {
  it('decides every geotagged place as the manifest says', async (t) => {
    const manifest = await readManifest();
    const server = await startImageServer(path.join(corpus, 'geo'));
    t.after(() => server.close());
    const folder = await temporaryFolder(t);
    const list = path.join(folder, 'geo.txt');
    await writeFile(list, manifest.map((row) => `${server.baseUrl}images/${row.file}`).join('\n'));

    const summary = await ingest(testOptions({ source: list, output: path.join(folder, 'out'), dedup: 'none' }), { logger: silentLogger });
    const lines = await assertAccounted(summary);
    manifest.forEach((row, index) => {
      const line = lines[index]!;
      assert.equal(line.territory, row.expected, row.file);
      assert.equal(line.status, row.excluded ? 'rejected' : 'ok', row.file);
      if (row.excluded) assert.equal(line.reason, 'excluded_territory', row.file);
      const evidence = line.location_evidence?.[0];
      assert.equal(evidence?.source, 'exif_gps', row.file);
      assert.ok(Math.abs(evidence.latitude! - row.latitude) < 1e-3, `${row.file} latitude ${evidence.latitude}`);
      assert.ok(Math.abs(evidence.longitude! - row.longitude) < 1e-3, `${row.file} longitude ${evidence.longitude}`);
    });
    assert.equal(summary.reasons.excluded_territory, manifest.filter((row) => row.excluded).length);
  });

  it('decides declared coordinates and countries without GPS the same way', async (t) => {
    const manifest = await readManifest();
    const server = await startImageServer(path.join(corpus, 'photos'));
    t.after(() => server.close());
    const folder = await temporaryFolder(t);
    const list = path.join(folder, 'declared.jsonl');
    // horse.png has no EXIF, so only the declared columns place it.
    const rows = manifest.flatMap((row) => [
      { url: `${server.baseUrl}images/horse.png`, latitude: row.latitude, longitude: row.longitude },
      { url: `${server.baseUrl}images/horse.png`, country: row.expected },
    ]);
    await writeFile(list, rows.map((row) => JSON.stringify(row)).join('\n'));

    const summary = await ingest(testOptions({ source: list, output: path.join(folder, 'out'), dedup: 'none' }), { logger: silentLogger });
    const lines = await assertAccounted(summary);
    manifest.forEach((row, index) => {
      for (const line of [lines[2 * index]!, lines[2 * index + 1]!]) {
        assert.equal(line.territory, row.expected, `${row.file} row ${line.row}`);
        assert.equal(line.reason === 'excluded_territory', row.excluded, `${row.file} row ${line.row}`);
      }
    });
  });

  it('turns every orientation case upright', async (t) => {
    const folder = await temporaryFolder(t);
    const summary = await ingest(
      testOptions({
        source: path.join(corpus, 'exif/orientation'),
        output: path.join(folder, 'out'),
        unknown_location: 'keep',
        dedup: 'none',
        resize_mode: 'no',
        output_format: 'png',
      }),
      { logger: silentLogger },
    );
    const lines = await assertAccounted(summary);
    assert.equal(summary.ok, 16);

    const { extract } = await import('tar-stream');
    const { createReadStream } = await import('node:fs');
    const images = new Map<string, Buffer>();
    for (const shard of summary.shards) {
      const reader = extract();
      createReadStream(path.join(summary.output, shard)).pipe(reader);
      for await (const entry of reader) {
        const chunks: Buffer[] = [];
        for await (const chunk of entry) chunks.push(chunk as Buffer);
        if (entry.header.name.endsWith('.png')) images.set(entry.header.name.replace('.png', ''), Buffer.concat(chunks));
      }
    }
    const keyOf = (name: string) => lines.find((line) => line.url?.endsWith(`/${name}.jpg`))!.key!;
    const small = (data: Buffer) => sharp(data).resize(32, 32, { fit: 'fill' }).greyscale().raw().toBuffer();
    const meanDifference = (a: Buffer, b: Buffer) => a.reduce((sum, value, i) => sum + Math.abs(value - b[i]!), 0) / a.length;

    for (const shape of ['landscape', 'portrait']) {
      const reference = images.get(keyOf(`${shape}_1`))!;
      const referencePixels = await small(reference);
      const mirrored = await small(await sharp(reference).flop().toBuffer());
      const referenceSize = await sharp(reference).metadata();
      for (let orientation = 2; orientation <= 8; orientation += 1) {
        const image = images.get(keyOf(`${shape}_${orientation}`))!;
        const size = await sharp(image).metadata();
        assert.deepEqual([size.width, size.height], [referenceSize.width, referenceSize.height], `${shape}_${orientation} size`);
        const pixels = await small(image);
        const difference = meanDifference(pixels, referencePixels);
        assert.ok(difference < 8, `${shape}_${orientation} differs from ${shape}_1 by ${difference.toFixed(1)}`);
        // A mirrored image would differ far more, so the check can tell a wrong turn.
        assert.ok(meanDifference(pixels, mirrored) > 3 * difference, `${shape}_${orientation} is not told apart from a mirror`);
      }
    }
  });

  it('rejects broken files with a reason and keeps counting', async (t) => {
    const folder = await temporaryFolder(t);
    const summary = await ingest(testOptions({ source: path.join(corpus, 'broken'), output: path.join(folder, 'out'), unknown_location: 'keep' }), {
      logger: silentLogger,
    });
    const lines = await assertAccounted(summary);
    assert.equal(lines.length, 2);
    for (const line of lines) {
      assert.equal(line.reason, 'decode_error');
      assert.equal(typeof line.detail, 'string');
      assert.ok(line.detail!.length > 0);
    }
  });

  it('excludes camera photos by their EXIF GPS and rejects the one without', async (t) => {
    const folder = await temporaryFolder(t);
    const source = path.join(folder, 'camera');
    await mkdir(source);
    for (const file of ['gps/DSCN0010.jpg', 'gps/DSCN0042.jpg', 'mobile/iphone_hdr_YES.jpg', 'mobile/jolla.jpg']) {
      await copyFile(path.join(corpus, 'exif', file), path.join(source, path.basename(file)));
    }
    const summary = await ingest(testOptions({ source, output: path.join(folder, 'out') }), { logger: silentLogger });
    const lines = await assertAccounted(summary);
    assert.deepEqual(
      lines.map((line) => [path.basename(line.url!), line.reason, line.territory]),
      [
        ['DSCN0010.jpg', 'excluded_territory', 'IT'],
        ['DSCN0042.jpg', 'excluded_territory', 'IT'],
        ['iphone_hdr_YES.jpg', 'excluded_territory', 'ES'],
        ['jolla.jpg', 'unknown_location', null],
      ],
    );
  });

  it('catches re-encoded and resized copies and keeps distinct photos', async (t) => {
    const folder = await temporaryFolder(t);
    const source = path.join(folder, 'copies');
    await mkdir(source);
    const originals = ['astronaut.png', 'coffee.png', 'chelsea.png', 'china.jpg', 'Aqua.jpg', 'LadyBird.jpg', 'rocket.jpg'];
    for (const name of originals) {
      const bytes = await readFile(path.join(corpus, 'photos', name));
      const stem = path.parse(name).name;
      await writeFile(path.join(source, `a-${name}`), bytes);
      await writeFile(path.join(source, `b-${stem}-lossless.webp`), await sharp(bytes).webp({ lossless: true }).toBuffer());
      await writeFile(path.join(source, `c-${stem}-smaller.jpg`), await sharp(bytes).resize({ width: 300 }).jpeg({ quality: 70 }).toBuffer());
    }
    const summary = await ingest(testOptions({ source, output: path.join(folder, 'out'), unknown_location: 'keep' }), { logger: silentLogger });
    const lines = await assertAccounted(summary);
    const byName = new Map(lines.map((line) => [path.basename(decodeURIComponent(new URL(line.url!).pathname)), line]));

    for (const name of originals) {
      const stem = path.parse(name).name;
      const original = byName.get(`a-${name}`)!;
      assert.equal(original.status, 'ok', name);
      const lossless = byName.get(`b-${stem}-lossless.webp`)!;
      assert.equal(lossless.reason, 'duplicate_exact', `${name} lossless copy`);
      assert.equal(lossless.duplicate_of, original.key);
      const smaller = byName.get(`c-${stem}-smaller.jpg`)!;
      assert.equal(smaller.reason, 'duplicate_near', `${name} smaller copy`);
      assert.equal(smaller.duplicate_of, original.key);
    }
    assert.equal(summary.ok, originals.length);
  });

  it('decodes every photo format of the corpus', async (t) => {
    const folder = await temporaryFolder(t);
    const summary = await ingest(
      testOptions({ source: path.join(corpus, 'photos'), output: path.join(folder, 'out'), unknown_location: 'keep', dedup: 'none' }),
      { logger: silentLogger },
    );
    const lines = await assertAccounted(summary);
    const failed = lines.filter((line) => line.status !== 'ok').map((line) => `${line.url}: ${line.reason} ${line.detail}`);
    assert.deepEqual(failed, []);
  });
});

const pythonMissing = existsSync(python) ? false : `no python with webdataset at ${python}: set GEOSHARD_PYTHON or create .venv`;

describe('shards read by the Python webdataset package', { skip: corpusMissing || pythonMissing }, () => {
  it('finds every kept key once with a decodable image and parsable json', async (t) => {
    const folder = await temporaryFolder(t);
    const summary = await ingest(
      testOptions({ source: path.join(corpus, 'geo'), output: path.join(folder, 'out'), policy: 'none', shard_size: 7, dedup: 'none' }),
      { logger: silentLogger },
    );
    const lines = await assertAccounted(summary);
    const script = `
import io, json, sys, webdataset as wds
from PIL import Image
shards = sys.argv[1:]
seen = []
for sample in wds.WebDataset(shards, shardshuffle=False):
    image = Image.open(io.BytesIO(sample["jpg"]))
    image.load()
    meta = json.loads(sample["json"])
    assert meta["key"] == sample["__key__"], (meta["key"], sample["__key__"])
    seen.append({"key": sample["__key__"], "size": list(image.size), "territory": meta["territory"]})
print(json.dumps(seen))
`;
    const shards = summary.shards.map((shard) => path.join(summary.output, shard));
    const { stdout } = await run(python, ['-c', script, ...shards], { timeout: 120_000 });
    const seen = JSON.parse(stdout) as { key: string; size: number[]; territory: string }[];
    const kept = lines.filter((line) => line.status === 'ok');
    assert.equal(summary.shards.length, Math.ceil(kept.length / 7));
    assert.deepEqual(seen.map((item) => item.key).sort(), kept.map((line) => line.key).sort());
    for (const item of seen) assert.deepEqual(item.size, [256, 256]);
    assert.deepEqual(seen.map((item) => item.territory).sort(), kept.map((line) => line.territory).sort());
  });
});
