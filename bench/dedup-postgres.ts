/**
 * Latency of one shared dedup claim (exact and near lookup, then insert) in PostgreSQL as
 * the index grows, against the same claim on a small index measured in the same run.
 *
 *   node --import tsx bench/dedup-postgres.ts [--rows 10000000] [--claims 300] [--database URL]
 *
 * The database defaults to GEOSHARD_TEST_DATABASE_URL (infra/local/postgres.sh). Rows are
 * generated inside the server with random 64-bit hashes and removed at the end.
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { openCatalogClient, type SqlClient } from '../src/catalog/catalog.js';
import { PostgresDeduplicator } from '../src/dedup/postgres.js';

const { values } = parseArgs({
  options: {
    rows: { type: 'string', default: '10000000' },
    claims: { type: 'string', default: '300' },
    baseline: { type: 'string', default: '10000' },
    database: { type: 'string' },
  },
});
const databaseUrl = values.database ?? process.env.GEOSHARD_TEST_DATABASE_URL;
if (!databaseUrl) {
  process.stderr.write('No database: pass --database postgres://... or start infra/local/postgres.sh and set GEOSHARD_TEST_DATABASE_URL\n');
  process.exit(2);
}

/** Fills a scope with `rows` random hashes, in batches of a million rows per statement. */
async function fill(client: SqlClient, scope: string, rows: number): Promise<void> {
  for (let start = 0; start < rows; start += 1_000_000) {
    const end = Math.min(rows, start + 1_000_000);
    await client.query(
      `insert into dedup_near (scope, key, phash, c0, c1, c2)
       select $1, lpad(i::text, 12, '0'), (c0::bigint << 42) | (c1::bigint << 21) | c2::bigint, c0, c1, c2
       from (select i, (random() * 4194303)::int as c0, (random() * 2097151)::int as c1, (random() * 2097151)::int as c2
             from generate_series($2::bigint, $3::bigint - 1) as i) as generated`,
      [scope, start, end],
    );
    process.stderr.write(`\r${scope}: ${end} rows`);
  }
  process.stderr.write('\n');
  await client.query('analyze dedup_near');
}

/** Returns the median and 95th percentile of `claims` claims of new random images, in milliseconds. */
async function measure(client: SqlClient, scope: string, claims: number): Promise<{ median: number; p95: number }> {
  const dedup = new PostgresDeduplicator(client, scope, 'exact_and_near', 8);
  const times: number[] = [];
  for (let i = 0; i < claims; i += 1) {
    const hash = { high: randomBytes(4).readUInt32BE(), low: randomBytes(4).readUInt32BE() };
    const started = process.hrtime.bigint();
    await dedup.claim(`bench-${i}`, randomBytes(32).toString('hex'), hash);
    times.push(Number(process.hrtime.bigint() - started) / 1e6);
  }
  times.sort((a, b) => a - b);
  return { median: times[Math.floor(times.length / 2)]!, p95: times[Math.floor(times.length * 0.95)]! };
}

const client = await openCatalogClient(databaseUrl, undefined);
const suffix = randomBytes(3).toString('hex');
const scopes = { baseline: `bench-small-${suffix}`, large: `bench-large-${suffix}` };
try {
  const rows = Number(values.rows);
  const baselineRows = Number(values.baseline);
  const claims = Number(values.claims);
  await fill(client, scopes.baseline, baselineRows);
  await fill(client, scopes.large, rows);
  const small = await measure(client, scopes.baseline, claims);
  const large = await measure(client, scopes.large, claims);
  const table = [
    ['index rows', 'median ms', 'p95 ms'],
    [String(baselineRows), small.median.toFixed(2), small.p95.toFixed(2)],
    [String(rows), large.median.toFixed(2), large.p95.toFixed(2)],
  ];
  for (const row of table) process.stdout.write(`${row.map((cell) => cell.padStart(12)).join(' ')}\n`);
  process.stdout.write(`ratio large / small (median): ${(large.median / small.median).toFixed(2)}\n`);
} finally {
  for (const scope of Object.values(scopes)) {
    await client.query('delete from dedup_near where scope = $1', [scope]);
    await client.query('delete from dedup_exact where scope = $1', [scope]);
  }
  await client.close();
}
