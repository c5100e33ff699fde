import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { applyMigrations, openCatalogClient, type SqlClient } from '../../src/catalog/catalog.js';
import { CatalogStore } from '../../src/catalog/store.js';

/** The same checks run on embedded PGlite and, when GEOSHARD_TEST_DATABASE_URL is set, on PostgreSQL. */
const targets: { name: string; open: () => Promise<SqlClient>; skip: string | false }[] = [
  { name: 'PGlite', open: () => openCatalogClient(undefined, undefined), skip: false },
  {
    name: 'PostgreSQL',
    open: () => openCatalogClient(process.env.GEOSHARD_TEST_DATABASE_URL, undefined),
    skip: process.env.GEOSHARD_TEST_DATABASE_URL ? false : 'GEOSHARD_TEST_DATABASE_URL not set: start infra/local/postgres.sh',
  },
];

for (const target of targets) {
  describe(`catalog on ${target.name}`, { skip: target.skip }, () => {
    it('applies migrations once and stores a run idempotently', async (t) => {
      const client = await target.open();
      t.after(() => client.close());
      assert.deepEqual(await applyMigrations(client), []);

      const store = new CatalogStore(client);
      const runId = `test-${process.pid}-${Date.now()}`;
      await store.startRun({ id: runId, source: 's', output: 'o', policy: 'eea-uk', options: { a: 1 } });
      const sample = {
        key: '000000001', rowIndex: 1, url: 'http://a.test/1.jpg', shard: 'shard-000000', sha256: 'aa', phash: '00ff00ff00ff00ff',
        territory: 'JP', locationSource: 'exif_gps', width: 256, height: 256, originalWidth: 640, originalHeight: 480,
        sourceFormat: 'jpeg', caption: null,
      };
      const rejection = { rowIndex: 2, url: 'http://a.test/2.jpg', reason: 'duplicate_exact', detail: 'same pixels', territory: 'JP', duplicateOf: '000000001' };
      // A replayed batch must leave the same rows.
      for (let attempt = 0; attempt < 2; attempt += 1) {
        await store.addSamples(runId, [sample]);
        await store.addRejections(runId, [rejection]);
        await store.addShard(runId, { name: 'shard-000000', path: '/x', samples: 1, bytes: 10240, md5: 'm', firstKey: '000000001', lastKey: '000000001' });
      }
      await store.finishRun(runId, { inputRows: 2, ok: 1, rejected: 1, reasons: { duplicate_exact: 1 } });

      const samples = await client.query<{ key: string; territory: string }>('select key, territory from samples where run_id = $1', [runId]);
      assert.deepEqual(samples.rows, [{ key: '000000001', territory: 'JP' }]);
      const rejections = await client.query<{ reason: string; duplicate_of: string }>('select reason, duplicate_of from rejections where run_id = $1', [runId]);
      assert.deepEqual(rejections.rows, [{ reason: 'duplicate_exact', duplicate_of: '000000001' }]);
      const run = await client.query<{ input_rows: string; reasons: unknown }>('select input_rows, reasons from runs where id = $1', [runId]);
      assert.equal(Number(run.rows[0]?.input_rows), 2);
      assert.deepEqual(run.rows[0]?.reasons, { duplicate_exact: 1 });
      await client.query('delete from runs where id = $1', [runId]);
    });
  });
}

describe('openCatalogClient', () => {
  it('rejects a URL that is not PostgreSQL without printing its password', async () => {
    await assert.rejects(openCatalogClient('mysql://user:secret@localhost/db', undefined), (error: Error) => {
      assert.match(error.message, /expected a postgres:\/\/ or postgresql:\/\/ URL/);
      assert.doesNotMatch(error.message, /secret/);
      return true;
    });
  });
});
