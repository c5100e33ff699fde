import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import sharp from 'sharp';
import tar from 'tar-stream';
import { openCatalogClient, type SqlClient } from '../../src/catalog/catalog.js';
import { decodeImage } from '../../src/decode/image.js';
import { hammingDistance } from '../../src/dedup/phash.js';
import { formatRunStatus, readRunStatus } from '../../src/distributed/status.js';
import { ingest } from '../../src/pipeline/ingest.js';
import { createS3Client, s3SettingsFromEnv, S3Storage } from '../../src/storage/s3.js';
import { corpus, corpusMissing, readStatus, repoRoot, silentLogger, temporaryFolder, testOptions } from '../support/helpers.js';

const brokers = process.env.GEOSHARD_TEST_KAFKA_BROKERS;
const databaseUrl = process.env.GEOSHARD_TEST_DATABASE_URL;
const s3Endpoint = process.env.GEOSHARD_TEST_S3_ENDPOINT;
const missing =
  corpusMissing ||
  (!brokers && 'GEOSHARD_TEST_KAFKA_BROKERS not set: start infra/local/kafka.sh') ||
  (!databaseUrl && 'GEOSHARD_TEST_DATABASE_URL not set: start infra/local/postgres.sh') ||
  (!s3Endpoint && 'GEOSHARD_TEST_S3_ENDPOINT not set: start infra/local/s3.sh') ||
  false;

const UNIT_ROWS = 100;

interface Corpus {
  images: Map<string, Buffer>;
  /** Image names grouped so that no two groups hold exact or near duplicates of each other. */
  groups: string[][];
}

/**
 * Real images for the runs: the geotagged crops (some in excluded territories) and tiles
 * cut from the photos. Images are grouped by duplicate relation, so a test can keep every
 * duplicate of an image inside one unit, where input order decides which copy is kept.
 */
let corpusPromise: Promise<Corpus> | undefined;

/** Loads the corpus once per test file: cutting and hashing the tiles takes a while. */
function loadCorpus(): Promise<Corpus> {
  corpusPromise ??= buildCorpus();
  return corpusPromise;
}

async function buildCorpus(): Promise<Corpus> {
  const images = new Map<string, Buffer>();
  for (const name of (await readdir(path.join(corpus, 'geo'))).filter((file) => file.endsWith('.jpg'))) {
    images.set(`geo-${name}`, await readFile(path.join(corpus, 'geo', name)));
  }
  for (const name of (await readdir(path.join(corpus, 'photos'))).sort()) {
    // Decode each photo once, then cut the tiles from its pixels.
    const { data, info } = await sharp(path.join(corpus, 'photos', name)).rotate().removeAlpha().raw().toBuffer({ resolveWithObject: true });
    const { width, height } = info;
    if (width < 400 || height < 400) continue;
    for (let i = 0; i < 12; i += 1) {
      const left = Math.floor(((i % 4) * (width - 192)) / 3);
      const top = Math.floor((Math.floor(i / 4) * (height - 192)) / 2);
      const tile = await sharp(data, { raw: { width, height, channels: info.channels } })
        .extract({ left, top, width: 192, height: 192 })
        .jpeg({ quality: 90 })
        .toBuffer();
      images.set(`tile-${path.parse(name).name}-${i}.jpg`, tile);
    }
  }

  const options = testOptions({ source: 'x', output: 'y' });
  const names = [...images.keys()].sort();
  const decoded = await Promise.all(names.map((name) => decodeImage(images.get(name)!, options)));
  const parent = names.map((_, i) => i);
  const find = (i: number): number => (parent[i] === i ? i : (parent[i] = find(parent[i]!)));
  for (let i = 0; i < names.length; i += 1) {
    for (let j = i + 1; j < names.length; j += 1) {
      const same = decoded[i]!.sha256 === decoded[j]!.sha256 || hammingDistance(decoded[i]!.phash, decoded[j]!.phash) <= options.nearRadius;
      if (same) parent[find(i)] = find(j);
    }
  }
  const groups = new Map<number, string[]>();
  names.forEach((name, i) => groups.set(find(i), [...(groups.get(find(i)) ?? []), name]));
  return { images, groups: [...groups.values()] };
}

/** Builds `units` units of UNIT_ROWS rows; each group's images, with repeats, fall in one unit. */
function buildRows(groups: string[][], units: number): string[] {
  const perUnit: string[][] = Array.from({ length: units }, () => []);
  groups.forEach((group, index) => perUnit[index % units]!.push(...group));
  const rows: string[] = [];
  perUnit.forEach((names, unit) => {
    const unitRows = [...names];
    for (let i = 0; unitRows.length < UNIT_ROWS; i += 1) unitRows.push(names[(i * 7 + unit) % names.length]!);
    rows.push(...unitRows.slice(0, UNIT_ROWS));
  });
  return rows;
}

async function serveImages(t: { after: (fn: () => Promise<void>) => void }, images: Map<string, Buffer>, delayMs = 0): Promise<string> {
  const server = http.createServer((request, response) => {
    const name = decodeURIComponent(new URL(request.url ?? '/', 'http://localhost').pathname.slice(1));
    const data = images.get(name);
    setTimeout(() => {
      if (!data) {
        response.writeHead(404);
        response.end();
        return;
      }
      response.writeHead(200, { 'content-type': 'image/jpeg', 'content-length': data.length });
      response.end(data);
    }, delayMs);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  }));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
}

async function newBucket(): Promise<string> {
  const client = createS3Client(s3SettingsFromEnv({ ...process.env, GEOSHARD_S3_ENDPOINT: s3Endpoint }));
  const bucket = `geoshard-dist-${randomBytes(4).toString('hex')}`;
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  client.destroy();
  return bucket;
}

function spawnGeoshard(args: string[], env: NodeJS.ProcessEnv): ChildProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(repoRoot, 'src/cli/entry.ts'), ...args], {
    cwd: repoRoot,
    env: { ...process.env, GEOSHARD_LOG_LEVEL: 'error', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stderr?.on('data', (chunk: Buffer) => process.stderr.write(`[${args[0]} ${child.pid}] ${chunk}`));
  return child;
}

function exitOf(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // A probe that fails (a server restarting) counts as not yet.
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(500);
  }
}

async function shardKeys(storage: S3Storage): Promise<string[]> {
  const keys: string[] = [];
  for (const object of await storage.list()) {
    if (!object.path.endsWith('.tar')) continue;
    const extract = tar.extract();
    (await storage.openReadStream(object.path)).pipe(extract);
    for await (const entry of extract) {
      if (entry.header.name.endsWith('.json')) keys.push(entry.header.name.replace('.json', ''));
      entry.resume();
    }
  }
  return keys.sort();
}

interface Scenario {
  folder: string;
  pipeline: string;
  runId: string;
  bucket: string;
  env: NodeJS.ProcessEnv;
  client: SqlClient;
  storage: S3Storage;
}

async function prepareScenario(t: { after: (fn: () => Promise<void>) => void }, rows: string[], baseUrl: string): Promise<Scenario> {
  const folder = await temporaryFolder(t);
  const suffix = randomBytes(4).toString('hex');
  const bucket = await newBucket();
  const runId = `test-${suffix}`;
  await writeFile(path.join(folder, 'urls.txt'), rows.map((name, row) => `${baseUrl}${name}?row=${row}`).join('\n'));
  const pipeline = path.join(folder, 'pipeline.yaml');
  await writeFile(
    pipeline,
    [
      'source: urls.txt',
      `output: s3://${bucket}/shards`,
      `shard_size: ${UNIT_ROWS}`,
      'unknown_location: keep',
      'allow_private_network: true',
      'retries: 0',
      'concurrency: 16',
      `units_topic: units-${suffix}`,
      `events_topic: events-${suffix}`,
      `consumer_group: workers-${suffix}`,
      `run_id: ${runId}`,
      'session_timeout_ms: 10000',
      'progress: none',
    ].join('\n'),
  );
  const env = { GEOSHARD_KAFKA_BROKERS: brokers, GEOSHARD_CATALOG_URL: databaseUrl, GEOSHARD_S3_ENDPOINT: s3Endpoint };
  const client = await openCatalogClient(databaseUrl, undefined);
  t.after(() => client.close());
  const storage = new S3Storage(`s3://${bucket}/shards`, createS3Client(s3SettingsFromEnv({ ...process.env, GEOSHARD_S3_ENDPOINT: s3Endpoint })));
  t.after(() => storage.close());
  return { folder, pipeline, runId, bucket, env, client, storage };
}

async function submitRun(scenario: Scenario): Promise<void> {
  const submitter = spawnGeoshard(['submit', scenario.pipeline], scenario.env);
  assert.equal(await exitOf(submitter), 0, 'submit failed');
}

async function waitForRun(scenario: Scenario, timeoutMs: number): Promise<void> {
  await waitFor('the run to finish', timeoutMs, async () => {
    const { rows } = await scenario.client.query<{ finished_at: Date | null }>('select finished_at from runs where id = $1', [scenario.runId]);
    return rows[0]?.finished_at ? true : undefined;
  });
}

async function stopWorkers(workers: ChildProcess[]): Promise<void> {
  for (const worker of workers) worker.kill('SIGTERM');
  for (const worker of workers) assert.equal(await exitOf(worker), 0, `worker ${worker.pid} did not stop cleanly`);
}

describe('distributed run', { skip: missing, timeout: 1_200_000 }, () => {
  it('three workers keep the same samples as one embedded run', async (t) => {
    const { images, groups } = await loadCorpus();
    const rows = buildRows(groups, 20);
    assert.equal(rows.length, 2000);
    const baseUrl = await serveImages(t, images);
    const scenario = await prepareScenario(t, rows, baseUrl);

    await submitRun(scenario);
    const workers = [0, 1, 2].map(() => spawnGeoshard(['worker', scenario.pipeline], scenario.env));
    t.after(() => workers.forEach((worker) => worker.kill('SIGKILL')));
    await waitForRun(scenario, 300_000);
    await stopWorkers(workers);

    const distributed = await scenario.client.query<{ key: string; sha256: string }>('select key, sha256 from samples where run_id = $1 order by key', [scenario.runId]);
    const embedded = await ingest(
      testOptions({ source: path.join(scenario.folder, 'urls.txt'), output: path.join(scenario.folder, 'embedded'), unknown_location: 'keep', concurrency: 16 }),
      { logger: silentLogger },
    );
    const embeddedLines = (await readStatus(embedded.output)).filter((line) => line.status === 'ok');
    assert.equal(distributed.rows.length, embedded.ok);
    assert.deepEqual(distributed.rows.map((row) => row.key), embeddedLines.map((line) => line.key));
    const embeddedSamples = await openCatalogClient(undefined, path.join(embedded.output, 'catalog'));
    t.after(() => embeddedSamples.close());
    const embeddedHashes = await embeddedSamples.query<{ key: string; sha256: string }>('select key, sha256 from samples order by key');
    assert.deepEqual(distributed.rows, embeddedHashes.rows);

    const reasons = await scenario.client.query<{ reason: string; count: string }>('select reason, count(*) as count from rejections where run_id = $1 group by reason', [scenario.runId]);
    const distributedReasons = Object.fromEntries(reasons.rows.map((row) => [row.reason, Number(row.count)]));
    assert.deepEqual(distributedReasons, embedded.reasons);
    assert.ok((distributedReasons.excluded_territory ?? 0) > 0, 'the input has excluded territories');
    assert.ok((distributedReasons.duplicate_exact ?? 0) > 0, 'the input has duplicates');
    assert.deepEqual(await shardKeys(scenario.storage), distributed.rows.map((row) => row.key));

    const status = await readRunStatus(scenario.client, scenario.runId);
    assert.deepEqual(status.units, { pending: 0, running: 0, done: 20 });
    assert.deepEqual(status.rows, { total: 2000, done: 2000, ok: embedded.ok, rejected: embedded.rejected });
    assert.deepEqual(status.reasons, embedded.reasons);
    assert.deepEqual(status.stuck, []);
    assert.match(formatRunStatus(status), /units: 20 done, 0 running, 0 pending/);

    const runJson = JSON.parse((await scenario.storage.readObject('run.json')).toString());
    assert.deepEqual([runJson.input_rows, runJson.ok, runJson.rejected], [2000, embedded.ok, embedded.rejected]);
    const index = JSON.parse((await scenario.storage.readObject('shard.wids.json')).toString());
    assert.equal(index.shardlist.reduce((sum: number, shard: { nsamples: number }) => sum + shard.nsamples, 0), embedded.ok);
  });

  it('loses nothing when a worker is killed in the middle of a unit', async (t) => {
    const { images, groups } = await loadCorpus();
    const rows = buildRows(groups, 8);
    // Slow responses make each unit take a few seconds, so the kill lands inside one.
    const baseUrl = await serveImages(t, images, 40);
    const scenario = await prepareScenario(t, rows, baseUrl);
    await submitRun(scenario);

    const victim = spawnGeoshard(['worker', scenario.pipeline], scenario.env);
    const survivor = spawnGeoshard(['worker', scenario.pipeline], scenario.env);
    t.after(() => [victim, survivor].forEach((worker) => worker.kill('SIGKILL')));
    await waitFor('the first worker to start a unit', 120_000, async () => {
      const { rows: running } = await scenario.client.query<{ unit: number }>(
        `select unit from units where run_id = $1 and status = 'running' and worker like $2`,
        [scenario.runId, `%-${victim.pid}-%`],
      );
      return running[0];
    });
    await sleep(1_000);
    victim.kill('SIGKILL');
    await exitOf(victim);

    await waitForRun(scenario, 300_000);
    await stopWorkers([survivor]);

    const samples = await scenario.client.query<{ key: string }>('select key from samples where run_id = $1 order by key', [scenario.runId]);
    const keys = await shardKeys(scenario.storage);
    assert.deepEqual(keys, samples.rows.map((row) => row.key), 'every kept sample is in exactly one shard');
    assert.equal(new Set(keys).size, keys.length);
    const units = await scenario.client.query<{ attempts: number }>('select attempts from units where run_id = $1', [scenario.runId]);
    assert.ok(units.rows.some((unit) => unit.attempts > 1), 'the killed unit ran again');
    const rowsAccounted = await scenario.client.query<{ count: string }>(
      'select (select count(*) from samples where run_id = $1) + (select count(*) from rejections where run_id = $1) as count',
      [scenario.runId],
    );
    assert.equal(Number(rowsAccounted.rows[0]?.count), rows.length);
    const objects = (await scenario.storage.list()).map((object) => object.path);
    assert.ok(
      objects.every((name) => /^(units\/unit-\d{6}\.jsonl|shard-\d{6}\.(tar|stats\.json)|status\/shard-status-\d{6}\.jsonl|run\.json|shard\.wids\.json)$/.test(name)),
      objects.join(', '),
    );
  });

  for (const service of ['kafka', 'postgres'] as const) {
    it(`finishes when ${service} restarts during the run`, async (t) => {
      const { images, groups } = await loadCorpus();
      const rows = buildRows(groups, 6);
      const baseUrl = await serveImages(t, images, 40);
      const scenario = await prepareScenario(t, rows, baseUrl);
      await submitRun(scenario);

      const workers = [0, 1].map(() => spawnGeoshard(['worker', scenario.pipeline], scenario.env));
      t.after(() => workers.forEach((worker) => worker.kill('SIGKILL')));
      await waitFor('a first unit to finish', 120_000, async () => {
        const { rows: done } = await scenario.client.query<{ unit: number }>(`select unit from units where run_id = $1 and status = 'done'`, [scenario.runId]);
        return done[0];
      });

      const restart = spawn('bash', [path.join(repoRoot, `infra/local/${service}.sh`), 'restart'], { stdio: 'inherit' });
      assert.equal(await exitOf(restart), 0, `${service} restart failed`);

      await waitForRun(scenario, 300_000);
      await stopWorkers(workers);
      const samples = await scenario.client.query<{ key: string }>('select key from samples where run_id = $1 order by key', [scenario.runId]);
      assert.deepEqual(await shardKeys(scenario.storage), samples.rows.map((row) => row.key));
      const accounted = await scenario.client.query<{ count: string }>(
        'select (select count(*) from samples where run_id = $1) + (select count(*) from rejections where run_id = $1) as count',
        [scenario.runId],
      );
      assert.equal(Number(accounted.rows[0]?.count), rows.length);
    });
  }
});
