import type { SqlClient } from '../catalog/catalog.js';

export interface RunStatus {
  run_id: string;
  started_at: string;
  finished_at: string | null;
  units: { pending: number; running: number; done: number };
  rows: { total: number; done: number; ok: number; rejected: number };
  /** Input rows per second over the done units, from the first unit start to the last finish. */
  rows_per_second: number | null;
  reasons: Record<string, number>;
  stuck: { unit: number; worker: string | null; attempts: number; running_seconds: number }[];
}

/**
 * Reads the progress of a run from the catalog: units by state, rows, rates, rejections by
 * reason, and units running for longer than `stuckAfterSeconds` (their worker may be gone;
 * Kafka hands them to another worker once the group notices).
 */
export async function readRunStatus(client: SqlClient, runId: string | undefined, stuckAfterSeconds = 600): Promise<RunStatus> {
  const run = await client.query<{ id: string; started_at: Date; finished_at: Date | null }>(
    runId ? 'select id, started_at, finished_at from runs where id = $1' : 'select id, started_at, finished_at from runs order by started_at desc limit 1',
    runId ? [runId] : [],
  );
  const found = run.rows[0];
  if (!found) throw new Error(runId ? `Run ${runId} not found in the catalog` : 'The catalog has no runs yet: submit one first');

  const units = await client.query<{ status: string; count: string; rows: string; ok: string; rejected: string; first: Date | null; last: Date | null }>(
    `select status, count(*) as count, coalesce(sum(rows), 0) as rows, coalesce(sum(ok), 0) as ok, coalesce(sum(rejected), 0) as rejected,
            min(started_at) as first, max(finished_at) as last
     from units where run_id = $1 group by status`,
    [found.id],
  );
  const byStatus = Object.fromEntries(units.rows.map((row) => [row.status, row]));
  const done = byStatus.done;
  const seconds = done?.first && done.last ? (new Date(done.last).getTime() - new Date(done.first).getTime()) / 1000 : 0;

  const reasons = await client.query<{ reason: string; count: string }>(
    'select reason, count(*) as count from rejections where run_id = $1 group by reason order by count(*) desc',
    [found.id],
  );
  const stuck = await client.query<{ unit: number; worker: string | null; attempts: number; running_seconds: number }>(
    `select unit, worker, attempts, extract(epoch from now() - started_at)::float8 as running_seconds
     from units where run_id = $1 and status = 'running' and started_at < now() - make_interval(secs => $2)
     order by unit`,
    [found.id, stuckAfterSeconds],
  );

  return {
    run_id: found.id,
    started_at: new Date(found.started_at).toISOString(),
    finished_at: found.finished_at ? new Date(found.finished_at).toISOString() : null,
    units: {
      pending: Number(byStatus.pending?.count ?? 0),
      running: Number(byStatus.running?.count ?? 0),
      done: Number(done?.count ?? 0),
    },
    rows: {
      total: units.rows.reduce((sum, row) => sum + Number(row.rows), 0),
      done: Number(done?.rows ?? 0),
      ok: Number(done?.ok ?? 0),
      rejected: Number(done?.rejected ?? 0),
    },
    rows_per_second: seconds > 0 ? Number((Number(done?.rows ?? 0) / seconds).toFixed(1)) : null,
    reasons: Object.fromEntries(reasons.rows.map((row) => [row.reason, Number(row.count)])),
    stuck: stuck.rows.map((row) => ({ ...row, running_seconds: Math.round(row.running_seconds) })),
  };
}

export function formatRunStatus(status: RunStatus): string {
  const lines = [
    `run ${status.run_id} started ${status.started_at}${status.finished_at ? `, finished ${status.finished_at}` : ''}`,
    `units: ${status.units.done} done, ${status.units.running} running, ${status.units.pending} pending`,
    `rows: ${status.rows.done} of ${status.rows.total} processed, ${status.rows.ok} kept, ${status.rows.rejected} rejected` +
      (status.rows_per_second !== null ? `, ${status.rows_per_second} rows/s` : ''),
  ];
  for (const [reason, count] of Object.entries(status.reasons)) lines.push(`  ${reason.padEnd(20)} ${count}`);
  for (const unit of status.stuck) {
    lines.push(`stuck: unit ${unit.unit} on ${unit.worker ?? 'unknown worker'} for ${unit.running_seconds} s (attempt ${unit.attempts})`);
  }
  return `${lines.join('\n')}\n`;
}
