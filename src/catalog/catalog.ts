import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PGlite } from '@electric-sql/pglite';
import pg from 'pg';

/** The part of a PostgreSQL client the catalog uses; PGlite and pg both provide it. */
export interface SqlClient {
  query<Row = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<{ rows: Row[] }>;
  /** Runs `work` in one transaction on one connection: committed when it resolves, rolled back when it throws. */
  transaction<T>(work: (tx: Pick<SqlClient, 'query'>) => Promise<T>): Promise<T>;
  /** Runs `apply` in a transaction while holding the migration lock. */
  migrate(apply: (client: Pick<SqlClient, 'query'>) => Promise<void>): Promise<void>;
  close(): Promise<void>;
  readonly kind: 'pglite' | 'postgres';
}

const migrationsFolder = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../schemas/sql');

/** Advisory lock key for migrations: any constant shared by every geoshard process. */
const MIGRATION_LOCK = 7_406_211;

function openPglite(dataDir: string | undefined): SqlClient {
  const db = new PGlite(dataDir);
  return {
    kind: 'pglite',
    query: async <Row>(sql: string, params?: unknown[]) => ({ rows: (await db.query<Row>(sql, params)).rows }),
    transaction: <T>(work: (tx: Pick<SqlClient, 'query'>) => Promise<T>) =>
      db.transaction((tx) => work({ query: async <Row>(sql: string, params?: unknown[]) => ({ rows: (await tx.query<Row>(sql, params)).rows }) })),
    // PGlite is a single connection inside this process, so its transaction is the lock.
    migrate: async (apply) => {
      await db.transaction(async (tx) => {
        await apply({ query: async <Row>(sql: string, params?: unknown[]) => ({ rows: (await tx.query<Row>(sql, params)).rows }) });
      });
    },
    close: () => db.close(),
  };
}

function ignoreError(): void {}

function openPostgres(url: string): SqlClient {
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  // An idle client that loses its server emits an error on the pool; without a listener it would end the process.
  pool.on('error', ignoreError);
  return {
    kind: 'postgres',
    query: async <Row>(sql: string, params?: unknown[]) => ({ rows: (await pool.query(sql, params)).rows as Row[] }),
    transaction: async <T>(work: (tx: Pick<SqlClient, 'query'>) => Promise<T>) => {
      const client = await pool.connect();
      // A checked-out client whose server goes away emits an error event besides failing its
      // query; without a listener that event would end the process.
      client.on('error', ignoreError);
      try {
        await client.query('begin');
        const result = await work({ query: async <Row>(sql: string, params?: unknown[]) => ({ rows: (await client.query(sql, params)).rows as Row[] }) });
        await client.query('commit');
        client.off('error', ignoreError);
        client.release();
        return result;
      } catch (error) {
        await client.query('rollback').catch(() => undefined);
        // A connection that failed mid-transaction may be broken: drop it instead of pooling it.
        client.off('error', ignoreError);
        client.release(true);
        throw error;
      }
    },
    migrate: async (apply) => {
      const client = await pool.connect();
      client.on('error', ignoreError);
      try {
        // The first process to take the lock applies the migrations; the others wait here, then find them applied.
        await client.query('select pg_advisory_lock($1)', [MIGRATION_LOCK]);
        await client.query('begin');
        await apply({ query: async <Row>(sql: string, params?: unknown[]) => ({ rows: (await client.query(sql, params)).rows as Row[] }) });
        await client.query('commit');
      } catch (error) {
        await client.query('rollback').catch(() => undefined);
        throw error;
      } finally {
        await client.query('select pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => undefined);
        client.off('error', ignoreError);
        client.release();
      }
    },
    close: () => pool.end(),
  };
}

/** Applies the SQL files of schemas/sql that the database has not seen, in name order. */
export async function applyMigrations(client: SqlClient): Promise<string[]> {
  const files = (await readdir(migrationsFolder)).filter((name) => name.endsWith('.sql')).sort();
  const applied: string[] = [];
  await client.migrate(async (tx) => {
    await tx.query('create table if not exists schema_migrations (version text primary key, applied_at timestamptz not null default now())');
    const done = new Set((await tx.query<{ version: string }>('select version from schema_migrations')).rows.map((row) => row.version));
    for (const file of files) {
      if (done.has(file)) continue;
      const sql = await readFile(path.join(migrationsFolder, file), 'utf8');
      for (const statement of splitStatements(sql)) await tx.query(statement);
      await tx.query('insert into schema_migrations (version) values ($1)', [file]);
      applied.push(file);
    }
  });
  return applied;
}

/** Splits a migration file at semicolons that end a line; the files hold no functions or literals with `;`. */
function splitStatements(sql: string): string[] {
  return sql
    .replace(/--.*$/gm, '')
    .split(/;\s*$/m)
    .map((statement) => statement.trim())
    .filter((statement) => statement !== '');
}

/**
 * Opens the catalog: PostgreSQL when a postgres:// URL is given, otherwise an embedded
 * PGlite database in `dataDir` (in memory when dataDir is undefined), with migrations applied.
 */
export async function openCatalogClient(url: string | undefined, dataDir: string | undefined): Promise<SqlClient> {
  if (url !== undefined && !/^postgres(ql)?:\/\//.test(url)) {
    throw new Error(`Invalid catalog "${url.replace(/\/\/[^@/]*@/, '//***@')}": expected a postgres:// or postgresql:// URL`);
  }
  const client = url ? openPostgres(url) : openPglite(dataDir);
  try {
    await applyMigrations(client);
  } catch (error) {
    await client.close().catch(() => undefined);
    throw new Error(`Cannot prepare the catalog: ${(error as Error).message}`, { cause: error });
  }
  return client;
}
