import path from 'node:path';
import { Command, Option } from 'commander';
import { loadPipelineFile, pipelineSchema, resolveOptions, snakeToKebab, type IngestOptions } from '../config/options.js';
import { openCatalogClient } from '../catalog/catalog.js';
import { runDemo } from '../demo/demo.js';
import { formatRunStatus, readRunStatus } from '../distributed/status.js';
import { resolveCatalogUrl, submit } from '../distributed/submit.js';
import { startWorker } from '../distributed/worker.js';
import { log } from '../log.js';
import { registerTrainCommand } from '../train/command.js';
import { ingest, type RunSummary } from '../pipeline/ingest.js';
import { REASONS } from '../pipeline/reasons.js';

/**
 * Runs an ingestion that a first Ctrl-C (or SIGTERM) stops cleanly: rows in flight are
 * finished and the shards, status and run.json written. A second one exits at once.
 */
async function ingestUntilInterrupted(options: IngestOptions): Promise<void> {
  const controller = new AbortController();
  const interrupt = () => {
    if (controller.signal.aborted) process.exit(130);
    process.stderr.write('\nstopping: finishing the rows in flight (press Ctrl-C again to quit at once)\n');
    controller.abort();
  };
  process.on('SIGINT', interrupt);
  process.on('SIGTERM', interrupt);
  try {
    const summary = await ingest(options, { signal: controller.signal });
    printSummary(summary);
    if (summary.interrupted) process.exitCode = 130;
  } finally {
    process.off('SIGINT', interrupt);
    process.off('SIGTERM', interrupt);
  }
}

/** Options given on the command line take the schema's names; only those given are returned. */
function collectSchemaOptions(values: Record<string, unknown>): Record<string, unknown> {
  const raw: Record<string, unknown> = {};
  for (const [name, property] of Object.entries(pipelineSchema.properties)) {
    const camel = snakeToKebab(name).replace(/-([a-z])/g, (_, letter: string) => letter.toUpperCase());
    const value = values[camel];
    if (value === undefined) continue;
    raw[name] = convert(value, property.type, property.items?.type);
  }
  return raw;
}

/** Converts a flag's text to the schema type; text that does not convert is kept so validation names it. */
function convert(value: unknown, type: string | undefined, itemType: string | undefined): unknown {
  if (typeof value !== 'string') return value;
  if (type === 'integer' || type === 'number') {
    const number = Number(value);
    return value.trim() !== '' && Number.isFinite(number) ? number : value;
  }
  if (type === 'array' && itemType === 'string') return value.split(',').map((item) => item.trim()).filter(Boolean);
  return value;
}

function addSchemaOptions(command: Command, skip: readonly string[]): Command {
  for (const [name, property] of Object.entries(pipelineSchema.properties)) {
    if (skip.includes(name)) continue;
    const flag = `--${snakeToKebab(name)}`;
    const defaultText = property.default === undefined ? '' : ` (default: ${JSON.stringify(property.default)})`;
    const option =
      property.type === 'boolean'
        ? new Option(flag, `${property.description ?? ''}${defaultText}`)
        : new Option(`${flag} <value>`, `${property.description ?? ''}${defaultText}`);
    if (property.enum) option.choices(property.enum);
    command.addOption(option);
  }
  return command;
}

export function printSummary(summary: RunSummary, write: (text: string) => void = (text) => process.stdout.write(text)): void {
  const lines = [
    `run ${summary.run_id}: ${summary.input_rows} input rows, ${summary.ok} kept, ${summary.rejected} rejected in ${summary.duration_s.toFixed(1)} s`,
  ];
  if (summary.interrupted) lines.push('interrupted: the rows above are complete; the rest of the source was not read');
  if (summary.input_rows === 0 && !summary.interrupted) lines.push('warning: the source has no rows');
  const reasons = Object.entries(summary.reasons).sort((a, b) => b[1] - a[1]);
  for (const [reason, count] of reasons) lines.push(`  ${reason.padEnd(20)} ${count}`);
  lines.push(`shards: ${summary.shards.length} in ${summary.output}`);
  for (const shard of summary.shards) lines.push(`  ${path.join(summary.output, shard)}`);
  lines.push(`status per row: ${path.join(summary.output, 'status')}`);
  lines.push(`run summary: ${path.join(summary.output, 'run.json')}`);
  write(`${lines.join('\n')}\n`);
}

export function buildProgram(): Command {
  const program = new Command('geoshard')
    .description('Turn public image URLs into region-filtered, deduplicated WebDataset shards')
    .version('0.1.0')
    .showHelpAfterError('(add --help for the list of options)');

  addSchemaOptions(
    program
      .command('ingest')
      .description('Ingest a URL list or a folder of images into WebDataset shards')
      .argument('<source>', 'URL list (txt, csv, tsv, jsonl, parquet, optionally .gz) or a folder of images')
      .option('-o, --output <dir>', 'folder or s3:// prefix for shards, status files and run.json (required)'),
    ['source', 'output'],
  ).action(async (source: string, values: Record<string, unknown>) => {
    const options = resolveOptions({ ...collectSchemaOptions(values), source, output: values.output }, 'command-line options', 'flag');
    await ingestUntilInterrupted(options);
  });

  addSchemaOptions(
    program
      .command('run')
      .description('Run a pipeline file (YAML, validated against schemas/pipeline.schema.json); flags override its fields')
      .argument('<pipeline>', 'pipeline file'),
    [],
  ).action(async (file: string, values: Record<string, unknown>) => {
    const overrides = collectSchemaOptions(values);
    for (const key of ['source', 'output']) {
      if (typeof overrides[key] === 'string') overrides[key] = path.resolve(overrides[key] as string);
    }
    await ingestUntilInterrupted(await loadPipelineFile(file, overrides));
  });

  addSchemaOptions(
    program
      .command('submit')
      .description('Split a run into work units and publish them to Kafka for workers (needs kafka_brokers and a PostgreSQL catalog)')
      .argument('<pipeline>', 'pipeline file'),
    [],
  ).action(async (file: string, values: Record<string, unknown>) => {
    const result = await submit(await loadPipelineFile(file, collectSchemaOptions(values)));
    process.stdout.write(`run ${result.runId}: ${result.units} units, ${result.rows} input rows submitted\n`);
  });

  addSchemaOptions(
    program
      .command('worker')
      .description('Process work units from Kafka until stopped with SIGTERM or SIGINT; run about one worker per core')
      .argument('<pipeline>', 'pipeline file'),
    [],
  ).action(async (file: string, values: Record<string, unknown>) => {
    const worker = await startWorker(await loadPipelineFile(file, collectSchemaOptions(values)));
    const stop = (signal: string) => {
      log.info({ signal }, 'stop requested');
      void worker.stop();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    await worker.done;
    // A consumer that kafkajs was restarting may leave retry timers behind: exit explicitly.
    process.exit(process.exitCode ?? 0);
  });

  program
    .command('status')
    .description('Show units done, running and pending, rates, rejections and stuck units of a run')
    .argument('<pipeline>', 'pipeline file')
    .option('--run-id <id>', 'run to show (default: the latest)')
    .option('--stuck-after <seconds>', 'running time after which a unit counts as stuck', '600')
    .option('--json', 'print JSON')
    .action(async (file: string, values: { runId?: string; stuckAfter: string; json?: boolean }) => {
      const options = await loadPipelineFile(file);
      const client = await openCatalogClient(resolveCatalogUrl(options), undefined);
      try {
        const status = await readRunStatus(client, values.runId ?? options.runId, Number(values.stuckAfter));
        process.stdout.write(values.json ? `${JSON.stringify(status, null, 2)}\n` : formatRunStatus(status));
      } finally {
        await client.close();
      }
    });

  program
    .command('demo')
    .description('Serve the bundled real images on a loopback port and ingest them, showing every kind of outcome')
    .option('-o, --output <dir>', 'output folder', 'geoshard-demo')
    .action(async (values: { output: string }) => {
      const summary = await runDemo(path.resolve(values.output), { progress: 'none' });
      printSummary(summary);
      process.stdout.write(`\nlist the first shard with: tar tvf ${path.join(summary.output, summary.shards[0] ?? '')}\n`);
    });

  registerTrainCommand(program);

  program
    .command('reasons')
    .description('List the rejection reason codes written to status files and the catalog')
    .action(() => {
      for (const [code, text] of Object.entries(REASONS)) process.stdout.write(`${code.padEnd(20)} ${text}\n`);
      process.stdout.write(`${'http_<status>'.padEnd(20)} the server answered with that HTTP status (after retries for 408, 429 and 5xx)\n`);
    });

  return program;
}

export async function main(argv: string[]): Promise<void> {
  await buildProgram().parseAsync(argv);
}
