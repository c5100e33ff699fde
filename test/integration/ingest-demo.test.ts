import assert from 'node:assert/strict';
import type { LookupAddress } from 'node:dns';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { buildProgram } from '../../src/cli/main.js';
import { openCatalogClient } from '../../src/catalog/catalog.js';
import { runDemo } from '../../src/demo/demo.js';
import { startImageServer } from '../../src/demo/server.js';
import { createGuardedLookup } from '../../src/fetch/guard.js';
import { ingest } from '../../src/pipeline/ingest.js';
import { demoImages, readStatus, silentLogger, temporaryFolder, testOptions } from '../support/helpers.js';
import { serve } from '../support/server.js';

describe('demo', () => {
  it('shows every kind of outcome and accounts for every row', async (t) => {
    const folder = await temporaryFolder(t);
    const summary = await runDemo(path.join(folder, 'out'), { progress: 'none' }, { logger: silentLogger });
    assert.equal(summary.input_rows, 18);
    assert.equal(summary.ok, 6);
    assert.deepEqual(summary.reasons, {
      excluded_territory: 5,
      duplicate_exact: 1,
      duplicate_near: 1,
      unknown_location: 1,
      decode_error: 1,
      http_404: 1,
      opted_out: 1,
      invalid_url: 1,
    });
    const lines = await readStatus(summary.output);
    const kept = lines.filter((line) => line.status === 'ok').map((line) => line.territory);
    assert.deepEqual(kept, ['JP', 'KE', 'BR', 'US', 'GL', 'CA']);
    assert.equal(lines[5]?.duplicate_of, lines[0]?.key);
    assert.equal(lines[6]?.duplicate_of, lines[1]?.key);
  });
});

describe('address guard in a run', () => {
  it('rejects rows whose host resolves to a private address and keeps the rest', async (t) => {
    const server = await startImageServer(demoImages);
    t.after(() => server.close());
    const port = new URL(server.baseUrl).port;
    const folder = await temporaryFolder(t);
    const list = path.join(folder, 'list.txt');
    await writeFile(list, [`http://public.example.test:${port}/images/tokyo.jpg`, `http://intranet.example.test:${port}/images/nairobi.jpg`].join('\n'));

    // public.example.test stands for a public host: it is answered on loopback without the guard.
    const guarded = createGuardedLookup({
      allowPrivateNetwork: false,
      resolver: (hostname, _options, callback: (error: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void) =>
        process.nextTick(() => callback(null, [{ address: hostname === 'intranet.example.test' ? '10.20.30.40' : '127.0.0.1', family: 4 }])),
    });
    const lookup: typeof guarded = (hostname, options, callback) => {
      if (hostname === 'public.example.test') return callback(null, options.all ? [{ address: '127.0.0.1', family: 4 }] : '127.0.0.1', 4);
      return guarded(hostname, options, callback);
    };

    const summary = await ingest(testOptions({ source: list, output: path.join(folder, 'out'), allow_private_network: false }), { logger: silentLogger, lookup });
    const lines = await readStatus(summary.output);
    assert.equal(lines[0]?.status, 'ok');
    assert.equal(lines[1]?.reason, 'private_address');
    assert.match(lines[1]?.detail ?? '', /10\.20\.30\.40 \(private\)/);
  });
});

describe('catalog of a run', () => {
  it('holds the same samples and rejections as the status files', async (t) => {
    const folder = await temporaryFolder(t);
    const summary = await runDemo(path.join(folder, 'out'), { progress: 'none' }, { logger: silentLogger });
    const client = await openCatalogClient(undefined, path.join(summary.output, 'catalog'));
    t.after(() => client.close());
    const lines = await readStatus(summary.output);

    const samples = await client.query<{ key: string; shard: string }>('select key, shard from samples where run_id = $1 order by key', [summary.run_id]);
    assert.deepEqual(samples.rows, lines.filter((line) => line.status === 'ok').map((line) => ({ key: line.key, shard: line.shard })));
    const rejections = await client.query<{ reason: string }>('select reason from rejections where run_id = $1 order by row_index', [summary.run_id]);
    assert.deepEqual(rejections.rows.map((row) => row.reason), lines.filter((line) => line.status === 'rejected').map((line) => line.reason));
    const shards = await client.query<{ name: string; samples: number }>('select name, samples from shards where run_id = $1 order by name', [summary.run_id]);
    assert.deepEqual(shards.rows, [{ name: 'shard-000000', samples: 5 }, { name: 'shard-000001', samples: 1 }]);
  });

  const databaseUrl = process.env.GEOSHARD_TEST_DATABASE_URL;
  it('writes the same rows to PostgreSQL', { skip: databaseUrl ? false : 'GEOSHARD_TEST_DATABASE_URL not set: start infra/local/postgres.sh' }, async (t) => {
    const folder = await temporaryFolder(t);
    const summary = await runDemo(path.join(folder, 'out'), { progress: 'none', catalog: databaseUrl }, { logger: silentLogger });
    const client = await openCatalogClient(databaseUrl, undefined);
    t.after(() => client.close());
    const lines = await readStatus(summary.output);
    const samples = await client.query<{ key: string }>('select key from samples where run_id = $1 order by key', [summary.run_id]);
    assert.deepEqual(samples.rows.map((row) => row.key), lines.filter((line) => line.status === 'ok').map((line) => line.key));
    const run = await client.query<{ ok: string; rejected: string }>('select ok, rejected from runs where id = $1', [summary.run_id]);
    assert.deepEqual([Number(run.rows[0]?.ok), Number(run.rows[0]?.rejected)], [summary.ok, summary.rejected]);
  });
});

describe('command line', () => {
  it('runs a pipeline file and rejects an invalid one with the field named', async (t) => {
    const server = await startImageServer(demoImages);
    t.after(() => server.close());
    const folder = await temporaryFolder(t);
    await writeFile(path.join(folder, 'urls.txt'), `${server.baseUrl}images/tokyo.jpg\n${server.baseUrl}images/paris.jpg\n`);
    await writeFile(path.join(folder, 'pipeline.yaml'), 'source: urls.txt\noutput: out\nallow_private_network: true\nprogress: none\n');

    const output: string[] = [];
    const write = process.stdout.write;
    process.stdout.write = ((chunk: string) => output.push(String(chunk)) > 0) as typeof process.stdout.write;
    try {
      await buildProgram().exitOverride().parseAsync(['node', 'geoshard', 'run', path.join(folder, 'pipeline.yaml'), '--policy', 'eu']);
    } finally {
      process.stdout.write = write;
    }
    assert.match(output.join(''), /2 input rows, 1 kept, 1 rejected/);
    const runJson = JSON.parse(await readFile(path.join(folder, 'out', 'run.json'), 'utf8'));
    assert.equal(runJson.policy, 'eu');

    await writeFile(path.join(folder, 'bad.yaml'), 'source: urls.txt\noutput: out\nresize_mode: stretch\n');
    await assert.rejects(
      buildProgram().exitOverride().parseAsync(['node', 'geoshard', 'run', path.join(folder, 'bad.yaml')]),
      /resize_mode: expected one of no, keep_ratio, keep_ratio_largest, center_crop, border but received "stretch"/,
    );
  });
});

describe('output folder of an earlier run', () => {
  it('stops unless overwrite is given, then replaces the earlier shards', async (t) => {
    const server = await startImageServer(demoImages);
    t.after(() => server.close());
    const folder = await temporaryFolder(t);
    const output = path.join(folder, 'out');
    const names = ['tokyo.jpg', 'nairobi.jpg', 'sao-paulo.jpg', 'new-york.jpg'];
    await writeFile(path.join(folder, 'four.txt'), names.map((name) => `${server.baseUrl}images/${name}`).join('\n'));
    await writeFile(path.join(folder, 'one.txt'), `${server.baseUrl}images/nuuk.jpg\n`);

    await ingest(testOptions({ source: path.join(folder, 'four.txt'), output, shard_size: 1 }), { logger: silentLogger });
    await assert.rejects(
      ingest(testOptions({ source: path.join(folder, 'one.txt'), output }), { logger: silentLogger }),
      /already contains \d+ files of an earlier run .*pass --overwrite/,
    );
    const second = await ingest(testOptions({ source: path.join(folder, 'one.txt'), output, overwrite: true }), { logger: silentLogger });
    assert.deepEqual(second.shards, ['shard-000000.tar']);
    const tars = (await readdir(output)).filter((name) => name.endsWith('.tar'));
    assert.deepEqual(tars, ['shard-000000.tar']);
    assert.equal((await readStatus(output)).length, 1);
  });
});

describe('interrupted run', () => {
  it('finishes the rows in flight and accounts for them', async (t) => {
    const tokyo = await readFile(path.join(demoImages, 'tokyo.jpg'));
    const controller = new AbortController();
    // The stop arrives while the run is well under way: at the fifth request.
    const server = await serve(t, (_request, response) => {
      if (server.requests.length === 5) controller.abort();
      response.writeHead(200, { 'content-type': 'image/jpeg' });
      response.end(tokyo);
    });
    const folder = await temporaryFolder(t);
    const list = path.join(folder, 'list.txt');
    await writeFile(list, Array.from({ length: 400 }, (_, i) => server.url(`/tokyo.jpg?copy=${i}`)).join('\n'));

    const options = testOptions({ source: list, output: path.join(folder, 'out'), concurrency: 2, shard_size: 10, dedup: 'none', unknown_location: 'keep' });
    const summary = await ingest(options, { logger: silentLogger, signal: controller.signal });

    assert.equal(summary.interrupted, true);
    assert.ok(summary.input_rows >= 5, `read ${summary.input_rows} rows`);
    assert.ok(summary.input_rows < 400, `read ${summary.input_rows} rows`);
    assert.equal(summary.ok, summary.input_rows);
    assert.equal((await readStatus(summary.output)).length, summary.input_rows);
    const runJson = JSON.parse(await readFile(path.join(summary.output, 'run.json'), 'utf8'));
    assert.equal(runJson.interrupted, true);
  });
});
