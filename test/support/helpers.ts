import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { resolveOptions, type IngestOptions } from '../../src/config/options.js';
import type { StatusLine } from '../../src/pipeline/ingest.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const demoImages = path.join(repoRoot, 'demo/images');

/** The real-image corpus: GEOSHARD_CORPUS, else ../shared/corpus beside the repository. */
export const corpus = process.env.GEOSHARD_CORPUS ?? path.resolve(repoRoot, '../shared/corpus');
export const corpusMissing = existsSync(path.join(corpus, 'geo/manifest.csv'))
  ? false
  : `real-image corpus not found at ${corpus}: set GEOSHARD_CORPUS`;

export const silentLogger = pino({ level: 'silent' });

export async function temporaryFolder(t: { after: (fn: () => Promise<void>) => void }, prefix = 'geoshard-test-'): Promise<string> {
  const folder = await mkdtemp(path.join(os.tmpdir(), prefix));
  t.after(() => rm(folder, { recursive: true, force: true }));
  return folder;
}

/** Options for a test run: defaults of the schema, loopback allowed, no progress output. */
export function testOptions(overrides: Record<string, unknown>): IngestOptions {
  return resolveOptions({ allow_private_network: true, progress: 'none', retries: 0, ...overrides });
}

export async function readStatus(output: string): Promise<StatusLine[]> {
  const folder = path.join(output, 'status');
  const lines: StatusLine[] = [];
  for (const file of (await readdir(folder)).sort()) {
    const text = await readFile(path.join(folder, file), 'utf8');
    for (const line of text.split('\n')) if (line) lines.push(JSON.parse(line) as StatusLine);
  }
  return lines.sort((a, b) => a.row - b.row);
}

/** A python with the webdataset package: GEOSHARD_PYTHON, else .venv/bin/python. */
export const python = process.env.GEOSHARD_PYTHON ?? path.join(repoRoot, '.venv/bin/python');
