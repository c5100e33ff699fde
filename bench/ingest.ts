/**
 * Wall time of geoshard and img2dataset on the same URL list, measured in the same run.
 *
 *   node --import tsx bench/ingest.ts [--rows 2000] [--python PATH] [--repetitions 3]
 *                                     [--shard-size 250] [--corpus DIR] [--profile DIR] [--keep]
 *
 * The input repeats the real images of the corpus folders photos/ and geo/ under a distinct
 * URL per row (the corpus is --corpus, else GEOSHARD_CORPUS, else the default of the tests).
 * An HTTP server on 127.0.0.1 that this script starts serves them from memory. Both tools run as whole
 * processes, alternating geoshard and img2dataset, each into a new output folder, and each
 * run must leave exactly one JPEG per row in its tar shards, so a broken run cannot pass for
 * a fast one. `--python` names an interpreter that has img2dataset installed
 * (IMG2DATASET_PYTHON, else python3). `--profile DIR` runs geoshard once more, untimed, under
 * `node --cpu-prof` and writes the profile of its main thread to DIR.
 *
 * Needs `dist/` (built by `npx tsc -p .`), because geoshard runs as `node bin/geoshard.js`.
 */
import { spawn } from 'node:child_process';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import sharp from 'sharp';
import tar from 'tar-stream';

import { startBenchImageServer, type BenchImageServer, type ServedImage } from './ingest-server.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const { values } = parseArgs({
  options: {
    rows: { type: 'string', default: '2000' },
    python: { type: 'string', default: process.env.IMG2DATASET_PYTHON ?? 'python3' },
    repetitions: { type: 'string', default: '3' },
    'shard-size': { type: 'string', default: '250' },
    corpus: { type: 'string', default: process.env.GEOSHARD_CORPUS ?? path.resolve(repoRoot, '../shared/corpus') },
    profile: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});

function positiveInteger(name: string, text: string): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) {
    process.stderr.write(`Invalid --${name} ${JSON.stringify(text)}: expected a positive integer.\n`);
    process.exit(2);
  }
  return value;
}

const rows = positiveInteger('rows', values.rows);
const repetitions = positiveInteger('repetitions', values.repetitions);
// Both tools get the same shard size. img2dataset gives each of its processes whole input
// shards, so a shard size of `rows` or more would leave one of its two processes idle.
const shardSize = positiveInteger('shard-size', values['shard-size']);
const python = values.python;
const corpus = path.resolve(values.corpus);

/** Rows of the untimed run of each tool before the measurements, which loads code and libraries into the page cache. */
const WARMUP_ROWS = 50;
/** A run that takes longer than this is stopped and the benchmark fails. */
const RUN_TIMEOUT_MS = 30 * 60 * 1000;
/** img2dataset's default image size and resize mode, which are geoshard's defaults too. */
const IMAGE_SIZE = 256;
const RESIZE_MODE = 'border';

const CONTENT_TYPES: Record<string, string> = { '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.png': 'image/png', '.webp': 'image/webp' };

type Tool = 'geoshard' | 'img2dataset';

interface RunResult {
  tool: Tool;
  seconds: number;
  /** Busy CPU time of the whole machine during the run, divided by wall time and core count. */
  cpuBusy: number | null;
  samples: number;
  requests: number;
}

async function loadCorpusImages(): Promise<ServedImage[]> {
  const folders = ['photos', 'geo'].map((name) => path.join(corpus, name));
  const missing = folders.filter((folder) => !existsSync(folder));
  if (missing.length > 0) {
    process.stderr.write(
      `Real-image corpus not found: ${missing.join(', ')} missing. Set GEOSHARD_CORPUS or --corpus to a folder that has photos/ and geo/.\n`,
    );
    process.exit(2);
  }

  const images: ServedImage[] = [];
  for (const folder of folders) {
    for (const file of (await readdir(folder)).sort()) {
      const contentType = CONTENT_TYPES[path.extname(file).toLowerCase()];
      if (contentType === undefined) continue;
      images.push({ name: `${path.basename(folder)}/${file}`, contentType, bytes: await readFile(path.join(folder, file)) });
    }
  }
  if (images.length === 0) {
    process.stderr.write(`No JPEG, PNG or WebP files in ${folders.join(' or ')}.\n`);
    process.exit(2);
  }
  return images;
}

/** Writes a txt URL list of `count` rows that cycles through the images, one distinct URL per row. */
async function writeUrlList(file: string, images: readonly ServedImage[], baseUrl: string, count: number): Promise<void> {
  const lines: string[] = [];
  for (let index = 0; index < count; index++) lines.push(`${baseUrl}${images[index % images.length]!.name}?copy=${index}`);
  await writeFile(file, `${lines.join('\n')}\n`);
}

/** Reads the busy and total jiffies of all CPUs from /proc/stat, or null where it does not exist. */
async function readCpuTimes(): Promise<{ busy: number; total: number } | null> {
  let text: string;
  try {
    text = await readFile('/proc/stat', 'utf8');
  } catch {
    return null;
  }
  const fields = text.split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // Fields: user nice system idle iowait irq softirq steal guest guest_nice. Guest time is already in user.
  const total = fields.slice(0, 8).reduce((sum, value) => sum + value, 0);
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
  return { busy: total - idle, total };
}

/**
 * Environment of the timed commands. It keeps their requests to 127.0.0.1 off any HTTP proxy
 * set in the environment. It also stops albumentations (imported by img2dataset 1.47) from
 * asking PyPI for its latest version at every import, a request to a remote host from each
 * img2dataset process.
 */
function childEnvironment(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    NO_PROXY: '127.0.0.1,localhost',
    no_proxy: '127.0.0.1,localhost',
    NO_ALBUMENTATIONS_UPDATE: '1',
  };
  for (const name of ['HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY', 'http_proxy', 'https_proxy', 'all_proxy']) delete env[name];
  return env;
}

/**
 * Runs a command to completion with its output in `logFile` and returns its wall time in
 * seconds. The child leads its own process group, so a run past RUN_TIMEOUT_MS is stopped
 * together with the worker processes it started.
 */
async function timeCommand(command: string, args: readonly string[], cwd: string, logFile: string): Promise<number> {
  const log = createWriteStream(logFile);
  await new Promise<void>((resolve, reject) => {
    log.once('open', () => resolve());
    log.once('error', reject);
  });

  const start = performance.now();
  const child = spawn(command, args, { cwd, env: childEnvironment(), stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  child.stdout.pipe(log, { end: false });
  child.stderr.pipe(log, { end: false });
  const timer = setTimeout(() => {
    if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
  }, RUN_TIMEOUT_MS);

  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (exitCode, exitSignal) => resolve([exitCode, exitSignal]));
  });
  const seconds = (performance.now() - start) / 1000;
  clearTimeout(timer);
  await new Promise<void>((resolve) => log.end(resolve));

  if (code !== 0) {
    const tail = (await readFile(logFile, 'utf8')).trim().split('\n').slice(-15).join('\n');
    throw new Error(`${path.basename(command)} ${args.slice(0, 2).join(' ')} failed (exit code ${code}, signal ${signal}). Last lines of ${logFile}:\n${tail}`);
  }
  return seconds;
}

/** Counts the members of every .tar file directly inside `folder`, by file extension. */
async function countTarMembers(folder: string): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  const tarFiles = (await readdir(folder)).filter((name) => name.endsWith('.tar'));
  for (const name of tarFiles) {
    const extract = tar.extract();
    extract.on('entry', (header, stream, next) => {
      const extension = path.extname(header.name).slice(1);
      counts.set(extension, (counts.get(extension) ?? 0) + 1);
      stream.on('end', next);
      stream.resume();
    });
    await pipeline(createReadStream(path.join(folder, name)), extract);
  }
  return counts;
}

function geoshardArgs(listFile: string, output: string): string[] {
  return [
    path.join(repoRoot, 'bin/geoshard.js'),
    'ingest',
    listFile,
    '--output',
    output,
    '--allow-private-network',
    '--policy',
    'none',
    '--unknown-location',
    'keep',
    '--dedup',
    'none',
    '--image-size',
    String(IMAGE_SIZE),
    '--resize-mode',
    RESIZE_MODE,
    '--shard-size',
    String(shardSize),
    '--progress',
    'none',
  ];
}

/** Runs img2dataset's command-line entry point with the interpreter given by --python. */
const IMG2DATASET_MAIN = 'import sys; from img2dataset import main; sys.argv[0] = "img2dataset"; sys.exit(main())';

function img2datasetArgs(listFile: string, output: string): string[] {
  return [
    '-c',
    IMG2DATASET_MAIN,
    '--url_list',
    listFile,
    '--input_format',
    'txt',
    '--output_folder',
    output,
    '--image_size',
    String(IMAGE_SIZE),
    '--resize_mode',
    RESIZE_MODE,
    '--processes_count',
    '2',
    '--thread_count',
    '32',
    '--number_sample_per_shard',
    String(shardSize),
    '--output_format',
    'webdataset',
    '--enable_wandb',
    'False',
  ];
}

/** Reads geoshard's run.json and img2dataset's per-shard stats, as each tool counts its kept samples. */
async function reportedSamples(tool: Tool, output: string): Promise<number> {
  if (tool === 'geoshard') {
    const summary = JSON.parse(await readFile(path.join(output, 'run.json'), 'utf8')) as { ok: number };
    return summary.ok;
  }
  let successes = 0;
  for (const name of await readdir(output)) {
    if (!name.endsWith('_stats.json')) continue;
    successes += (JSON.parse(await readFile(path.join(output, name), 'utf8')) as { successes: number }).successes;
  }
  return successes;
}

async function runOnce(tool: Tool, listFile: string, expected: number, workDir: string, label: string, server: BenchImageServer): Promise<RunResult> {
  const output = path.join(workDir, `${label}-${tool}`);
  await rm(output, { recursive: true, force: true });
  const logFile = path.join(workDir, `${label}-${tool}.log`);

  server.resetServedCount();
  const cpuBefore = await readCpuTimes();
  const seconds =
    tool === 'geoshard'
      ? await timeCommand(process.execPath, geoshardArgs(listFile, output), repoRoot, logFile)
      : await timeCommand(python, img2datasetArgs(listFile, output), workDir, logFile);
  const cpuAfter = await readCpuTimes();
  const cpuBusy = cpuBefore && cpuAfter ? (cpuAfter.busy - cpuBefore.busy) / (cpuAfter.total - cpuBefore.total) : null;

  const members = await countTarMembers(output);
  const samples = members.get('jpg') ?? 0;
  const reported = await reportedSamples(tool, output);
  if (samples !== expected || reported !== expected) {
    throw new Error(
      `${tool} (${label}) wrote ${samples} JPEG members to its tar shards and reports ${reported} kept samples, expected ${expected}. Output: ${output}, log: ${logFile}`,
    );
  }
  const result = { tool, seconds, cpuBusy, samples, requests: server.served() };
  if (!values.keep) await rm(output, { recursive: true, force: true });
  return result;
}

function median(numbers: readonly number[]): number {
  const sorted = [...numbers].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

async function commandOutput(command: string, args: readonly string[]): Promise<string> {
  const child = spawn(command, args, { env: childEnvironment(), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await new Promise<number | null>((resolve) => {
    child.once('error', (error) => {
      stderr += error.message;
      resolve(null);
    });
    child.once('close', resolve);
  });
  if (code !== 0) throw new Error(stderr.trim().split('\n').at(-1) ?? `exit code ${code}`);
  return stdout.trim();
}

async function img2datasetVersion(): Promise<string> {
  try {
    return await commandOutput(python, ['-c', 'import importlib.metadata as m, img2dataset; print(m.version("img2dataset"))']);
  } catch (error) {
    process.stderr.write(`img2dataset cannot be imported with ${python}: ${(error as Error).message}. Pass --python with an interpreter that has it.\n`);
    process.exit(2);
  }
}

function formatRow(cells: readonly string[], widths: readonly number[]): string {
  return cells.map((cell, index) => (index === 0 ? cell.padEnd(widths[index]!) : cell.padStart(widths[index]!))).join('  ');
}

async function main(): Promise<void> {
  if (!existsSync(path.join(repoRoot, 'dist/cli/entry.js'))) {
    process.stderr.write('dist/ is missing: build geoshard with `npx tsc -p .` first.\n');
    process.exit(2);
  }
  const images = await loadCorpusImages();
  const i2dVersion = await img2datasetVersion();
  const geoshardVersion = (JSON.parse(await readFile(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;

  const workDir = await mkdtemp(path.join(os.tmpdir(), 'geoshard-bench-ingest-'));
  const server = await startBenchImageServer(images);
  let succeeded = false;
  try {
    const listFile = path.join(workDir, 'list.txt');
    const warmupList = path.join(workDir, 'warmup.txt');
    await writeUrlList(listFile, images, server.baseUrl, rows);
    await writeUrlList(warmupList, images, server.baseUrl, Math.min(WARMUP_ROWS, rows));

    const inputBytes = Array.from({ length: rows }, (_, index) => images[index % images.length]!.bytes.length).reduce((a, b) => a + b, 0);
    const cpuModel = os.cpus()[0]?.model ?? 'unknown CPU';
    process.stdout.write(
      [
        `machine: ${cpuModel}, ${os.availableParallelism()} cores; load average ${os.loadavg().map((value) => value.toFixed(2)).join(' ')}`,
        `versions: node ${process.version}, geoshard ${geoshardVersion} (sharp ${sharp.versions.sharp}, libvips ${sharp.versions.vips}), img2dataset ${i2dVersion} (${python})`,
        `input: ${rows} rows cycling through ${images.length} corpus images, ${(inputBytes / 2 ** 20).toFixed(1)} MiB served from ${server.baseUrl}`,
        `work: fetch, decode, resize to ${IMAGE_SIZE} px (${RESIZE_MODE}), JPEG quality 95, WebDataset tar shards of ${shardSize} samples`,
        'geoshard also reads EXIF GPS, takes the SHA-256 of the decoded pixels and a perceptual hash, decides the',
        '  territory (policy none), and writes status files and its PGlite catalog; these steps cannot be turned off.',
        'img2dataset (defaults) also reads EXIF and takes the SHA-256 of the downloaded bytes.',
        `working folder: ${workDir}`,
        '',
      ].join('\n'),
    );

    const tools: Tool[] = ['geoshard', 'img2dataset'];
    for (const tool of tools) {
      const warmup = await runOnce(tool, warmupList, Math.min(WARMUP_ROWS, rows), workDir, 'warmup', server);
      process.stdout.write(`warm-up ${tool}: ${Math.min(WARMUP_ROWS, rows)} rows in ${warmup.seconds.toFixed(2)} s (not counted)\n`);
    }

    const results: RunResult[] = [];
    for (let repetition = 1; repetition <= repetitions; repetition++) {
      for (const tool of tools) {
        const result = await runOnce(tool, listFile, rows, workDir, `run${repetition}`, server);
        results.push(result);
        const busy = result.cpuBusy === null ? '' : `, CPU busy ${(result.cpuBusy * 100).toFixed(0)}%`;
        process.stdout.write(
          `run ${repetition} ${tool}: ${result.seconds.toFixed(2)} s, ${(rows / result.seconds).toFixed(1)} images/s, ${result.samples} samples, ${result.requests} requests${busy}\n`,
        );
      }
    }

    const widths = [12, 10, 16, 10, 9];
    const lines = [formatRow(['tool', 'median s', 'min-max s', 'images/s', 'CPU busy'], widths)];
    const medians = new Map<Tool, number>();
    for (const tool of tools) {
      const own = results.filter((result) => result.tool === tool);
      const seconds = own.map((result) => result.seconds);
      const busy = own.flatMap((result) => (result.cpuBusy === null ? [] : [result.cpuBusy]));
      medians.set(tool, median(seconds));
      lines.push(
        formatRow(
          [
            tool,
            median(seconds).toFixed(2),
            `${Math.min(...seconds).toFixed(2)}-${Math.max(...seconds).toFixed(2)}`,
            (rows / median(seconds)).toFixed(1),
            busy.length > 0 ? `${(median(busy) * 100).toFixed(0)}%` : 'n/a',
          ],
          widths,
        ),
      );
    }
    const ratio = medians.get('img2dataset')! / medians.get('geoshard')!;
    process.stdout.write(
      [
        '',
        `${rows} rows, ${repetitions} runs of each tool, whole processes (start-up included); every run wrote ${rows} JPEG samples.`,
        ...lines,
        `throughput ratio geoshard / img2dataset (median images/s): ${ratio.toFixed(2)} (above 1: geoshard is faster)`,
        `load average after: ${os.loadavg().map((value) => value.toFixed(2)).join(' ')}`,
        '',
      ].join('\n'),
    );

    if (values.profile !== undefined) {
      const profileDir = path.resolve(values.profile);
      await mkdir(profileDir, { recursive: true });
      const output = path.join(workDir, 'profile-geoshard');
      const args = ['--cpu-prof', '--cpu-prof-dir', profileDir, ...geoshardArgs(listFile, output)];
      const seconds = await timeCommand(process.execPath, args, repoRoot, path.join(workDir, 'profile-geoshard.log'));
      process.stdout.write(`profiled geoshard run: ${seconds.toFixed(2)} s; CPU profile of the main thread in ${profileDir}\n`);
    }
    succeeded = true;
  } finally {
    await server.close();
    // A failed run's output and log stay for inspection, and its error message names them.
    if (succeeded && !values.keep) await rm(workDir, { recursive: true, force: true });
  }
}

await main();
