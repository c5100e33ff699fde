import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { openCatalogClient } from '../../src/catalog/catalog.js';
import { PostgresDeduplicator } from '../../src/dedup/postgres.js';

const databaseUrl = process.env.GEOSHARD_TEST_DATABASE_URL;

describe('PostgresDeduplicator', { skip: databaseUrl ? false : 'GEOSHARD_TEST_DATABASE_URL not set: start infra/local/postgres.sh' }, () => {
  async function twoWorkers(t: { after: (fn: () => Promise<void>) => void }) {
    const scope = `test-${randomBytes(4).toString('hex')}`;
    const clients = await Promise.all([openCatalogClient(databaseUrl, undefined), openCatalogClient(databaseUrl, undefined)]);
    t.after(async () => {
      await clients[0].query('delete from dedup_exact where scope = $1', [scope]);
      await clients[0].query('delete from dedup_near where scope = $1', [scope]);
      await Promise.all(clients.map((client) => client.close()));
    });
    return clients.map((client) => new PostgresDeduplicator(client, scope, 'exact_and_near', 8));
  }

  it('keeps exactly one of simultaneous copies', async (t) => {
    const [first, second] = await twoWorkers(t);
    for (let round = 0; round < 20; round += 1) {
      // A random image per round: two random 64-bit hashes lie within 8 bits with odds below 1e-9.
      const sha = randomBytes(32).toString('hex');
      const hash = { high: randomBytes(4).readUInt32BE(), low: randomBytes(4).readUInt32BE() };
      const results = await Promise.all([first!.claim(`a${round}`, sha, hash), second!.claim(`b${round}`, sha, hash)]);
      assert.equal(results.filter((result) => result === null).length, 1, `round ${round}: ${JSON.stringify(results)}`);
      const duplicate = results.find((result) => result !== null)!;
      assert.equal(duplicate.kind, 'exact');
      assert.equal(duplicate.keptKey, results[0] === null ? `a${round}` : `b${round}`);
    }
  });

  it('finds near copies across workers and not a replayed key itself', async (t) => {
    const [first, second] = await twoWorkers(t);
    const hash = { high: 0x0f0f0f0f, low: 0xf0f0f0f0 };
    assert.equal(await first!.claim('000000001', 'aa', hash), null);
    // Seven bits away: within the radius of 8.
    const near = await second!.claim('000000002', 'bb', { high: hash.high ^ 0x7f, low: hash.low });
    assert.deepEqual(near, { kind: 'near', keptKey: '000000001', distance: 7 });
    const far = await second!.claim('000000003', 'cc', { high: ~hash.high >>> 0, low: hash.low });
    assert.equal(far, null);
    // A replayed unit claims its own keys again: they are not duplicates of themselves.
    assert.equal(await second!.claim('000000001', 'aa', hash), null);
    assert.equal(await first!.claim('000000003', 'cc', { high: ~hash.high >>> 0, low: hash.low }), null);
  });
});
