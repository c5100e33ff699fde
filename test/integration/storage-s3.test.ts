import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { runDemo } from '../../src/demo/demo.js';
import { startImageServer } from '../../src/demo/server.js';
import { ingest } from '../../src/pipeline/ingest.js';
import { createS3Client, s3SettingsFromEnv, S3Storage } from '../../src/storage/s3.js';
import { LocalStorage, type Storage } from '../../src/storage/storage.js';
import { demoImages, readStatus, silentLogger, temporaryFolder, testOptions } from '../support/helpers.js';

const endpoint = process.env.GEOSHARD_TEST_S3_ENDPOINT;
const databaseUrl = process.env.GEOSHARD_TEST_DATABASE_URL;
const s3Missing = endpoint ? false : 'GEOSHARD_TEST_S3_ENDPOINT not set: start infra/local/s3.sh';

async function newBucket(): Promise<{ url: string; storage: S3Storage }> {
  const settings = s3SettingsFromEnv({ ...process.env, GEOSHARD_S3_ENDPOINT: endpoint });
  const client = createS3Client(settings);
  const bucket = `geoshard-test-${randomBytes(4).toString('hex')}`;
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  client.destroy();
  const url = `s3://${bucket}/runs/one`;
  return { url, storage: new S3Storage(url, createS3Client(settings)) };
}

/** Points the runs of one test at the test S3 server, which ingest reads from the environment. */
function pointRunsAtTestServer(t: { after: (fn: () => void) => void }): void {
  const previous = process.env.GEOSHARD_S3_ENDPOINT;
  process.env.GEOSHARD_S3_ENDPOINT = endpoint;
  t.after(() => {
    if (previous === undefined) delete process.env.GEOSHARD_S3_ENDPOINT;
    else process.env.GEOSHARD_S3_ENDPOINT = previous;
  });
}

/** Checks the behaviour both storages must share. */
async function exerciseStorage(storage: Storage): Promise<void> {
  const pending = await storage.createObject('shards/big.tar');
  // 12 MiB in 1 MiB writes: more than one 8 MiB part, so S3 takes a multipart upload.
  const chunk = Buffer.alloc(1 << 20);
  for (let i = 0; i < 12; i += 1) {
    chunk.fill(i);
    if (!pending.stream.write(Buffer.from(chunk))) await new Promise((resolve) => pending.stream.once('drain', resolve));
  }
  assert.deepEqual(await storage.list('shards/'), [], 'an object must stay invisible until committed');
  await pending.commit();

  await storage.writeObject('shards/a.json', '{"a":1}');
  const aborted = await storage.createObject('shards/never.tar');
  aborted.stream.write(Buffer.alloc(1000));
  await aborted.abort();

  assert.deepEqual(await storage.list('shards/'), [
    { path: 'shards/a.json', size: 7 },
    { path: 'shards/big.tar', size: 12 << 20 },
  ]);
  const range = await storage.readRange('shards/big.tar', (3 << 20) - 2, (3 << 20) + 2);
  assert.deepEqual([...range], [2, 2, 3, 3]);
  assert.equal((await storage.readObject('shards/a.json')).toString(), '{"a":1}');
  assert.equal(await storage.exists('shards/a.json'), true);
  assert.equal(await storage.exists('shards/never.tar'), false);
}

describe('LocalStorage', () => {
  it('publishes whole objects, lists and reads ranges', async (t) => {
    await exerciseStorage(new LocalStorage(await temporaryFolder(t)));
  });

  it('rejects paths that leave the root', async (t) => {
    const storage = new LocalStorage(await temporaryFolder(t));
    await assert.rejects(storage.writeObject('../escape.txt', 'x'), /leaves the storage root/);
  });
});

describe('S3Storage', { skip: s3Missing }, () => {
  it('uploads in parts, lists and reads ranges', async (t) => {
    const { storage } = await newBucket();
    t.after(() => storage.close());
    await exerciseStorage(storage);
  });

  it('receives a whole run with status and summary', { skip: databaseUrl ? false : 'GEOSHARD_TEST_DATABASE_URL not set: start infra/local/postgres.sh' }, async (t) => {
    const { url, storage } = await newBucket();
    t.after(() => storage.close());
    pointRunsAtTestServer(t);

    const summary = await runDemo(url, { progress: 'none', catalog: databaseUrl }, { logger: silentLogger });
    const names = (await storage.list()).map((item) => item.path);
    assert.deepEqual(names, [
      'run.json',
      'shard-000000.stats.json',
      'shard-000000.tar',
      'shard-000001.stats.json',
      'shard-000001.tar',
      'shard.wids.json',
      'status/shard-status-000000.jsonl',
    ]);
    const status = (await storage.readObject('status/shard-status-000000.jsonl')).toString().trim().split('\n');
    assert.equal(status.length, summary.input_rows);
    const runJson = JSON.parse((await storage.readObject('run.json')).toString());
    assert.equal(runJson.ok, 6);
  });
});

describe('S3 sources', { skip: s3Missing }, () => {
  it('ingests an image prefix and a stored list', async (t) => {
    const { url, storage } = await newBucket();
    t.after(() => storage.close());
    pointRunsAtTestServer(t);
    const names = (await readdir(demoImages)).sort();
    for (const name of names) await storage.writeObject(`images/${name}`, await readFile(path.join(demoImages, name)));
    await storage.writeObject('images/notes.txt', 'not an image');

    const folder = await temporaryFolder(t);
    const fromPrefix = await ingest(testOptions({ source: `${url}/images/`, output: path.join(folder, 'prefix'), unknown_location: 'keep', dedup: 'none' }), {
      logger: silentLogger,
    });
    const lines = await readStatus(fromPrefix.output);
    assert.deepEqual(lines.map((line) => line.url), names.map((name) => `${url}/images/${name}`));
    assert.deepEqual(fromPrefix.reasons, { excluded_territory: 4, decode_error: 1 });

    const server = await startImageServer(demoImages);
    t.after(() => server.close());
    await storage.writeObject('lists/urls.csv', `url,country\n${server.baseUrl}images/tokyo.jpg,JP\n${server.baseUrl}images/missing.jpg,JP\n`);
    const fromList = await ingest(testOptions({ source: `${url}/lists/urls.csv`, output: path.join(folder, 'list') }), { logger: silentLogger });
    assert.deepEqual([fromList.ok, fromList.reasons], [1, { http_404: 1 }]);

    const missing = await ingest(testOptions({ source: `${url}/images/absent.jpg`, output: path.join(folder, 'missing'), unknown_location: 'keep', input_format: 'folder' }), {
      logger: silentLogger,
    });
    assert.equal(missing.input_rows, 0);
  });
});

describe('S3 settings', () => {
  it('defaults to path style and required-only checksums for custom endpoints', () => {
    assert.deepEqual(s3SettingsFromEnv({ GEOSHARD_S3_ENDPOINT: 'http://127.0.0.1:9000' }), {
      endpoint: 'http://127.0.0.1:9000',
      region: 'us-east-1',
      forcePathStyle: true,
      checksums: 'when_required',
    });
    assert.equal(s3SettingsFromEnv({}).forcePathStyle, false);
    assert.throws(() => s3SettingsFromEnv({ GEOSHARD_S3_CHECKSUMS: 'off' }), /expected when_supported or when_required/);
  });
});
