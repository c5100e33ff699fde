import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { resolveOptions } from '../config/options.js';
import { ingest, type IngestHooks, type RunSummary } from '../pipeline/ingest.js';
import { startImageServer } from './server.js';

export const DEMO_IMAGES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../demo/images');

/**
 * Rows of the demo list, relative to the server's base URL: each shows one outcome.
 * Columns: path, caption, country, latitude, longitude.
 */
const DEMO_ROWS: [string, string, string, string, string][] = [
  ['images/tokyo.jpg', 'Tokyo, EXIF GPS in Japan', '', '', ''],
  ['images/nairobi.jpg', 'Nairobi, EXIF GPS in Kenya', '', '', ''],
  ['images/sao-paulo.jpg', 'Sao Paulo, EXIF GPS in Brazil', '', '', ''],
  ['images/new-york.jpg', 'New York, EXIF GPS in the United States', '', '', ''],
  ['images/nuuk.jpg', 'Nuuk: Greenland is Danish but not EU territory', '', '', ''],
  ['redirect/tokyo.jpg', 'the Tokyo file again, behind a redirect: exact duplicate', '', '', ''],
  ['half/nairobi.jpg', 'Nairobi resized and re-encoded: near duplicate', '', '', ''],
  ['images/paris.jpg', 'Paris: excluded by EXIF GPS', '', '', ''],
  ['images/london.jpg', 'London: excluded by EXIF GPS (UK GDPR)', '', '', ''],
  ['images/oslo.jpg', 'Oslo: excluded by EXIF GPS (EEA)', '', '', ''],
  ['images/cayenne.jpg', 'Cayenne, French Guiana: an outermost region of the EU', '', '', ''],
  ['images/new-york.jpg', 'declared German: any excluding evidence wins, never downloaded', 'DE', '', ''],
  ['images/horse.png', 'no location at all: unknown location is rejected', '', '', ''],
  ['images/horse.png', 'declared coordinates in Vancouver: kept', '', '49.2827', '-123.1207'],
  ['images/truncated-skimage.jpg', 'a truncated JPEG: decode error', 'JP', '', ''],
  ['images/missing.jpg', 'a missing file: HTTP 404', 'JP', '', ''],
  ['optout/sao-paulo.jpg', 'served with X-Robots-Tag: noai', '', '', ''],
];

function csvField(value: string): string {
  return /[",\n]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}

/**
 * Serves the bundled demo images on a loopback port, writes a CSV list of URLs with
 * declared locations, and ingests it into `output` with the default policy.
 */
export async function runDemo(output: string, overrides: Record<string, unknown> = {}, hooks: IngestHooks = {}): Promise<RunSummary> {
  const server = await startImageServer(DEMO_IMAGES);
  const workFolder = await mkdtemp(path.join(os.tmpdir(), 'geoshard-demo-'));
  try {
    const listPath = path.join(workFolder, 'demo.csv');
    const lines = ['url,caption,country,latitude,longitude'];
    for (const [route, caption, country, latitude, longitude] of DEMO_ROWS) {
      lines.push([`${server.baseUrl}${route}`, caption, country, latitude, longitude].map(csvField).join(','));
    }
    lines.push('not a url,a malformed row: invalid url,,,');
    await writeFile(listPath, `${lines.join('\n')}\n`);

    const options = resolveOptions({
      source: listPath,
      output,
      shard_size: 5,
      retries: 0,
      overwrite: true,
      // The demo server listens on 127.0.0.1, which the address guard refuses by default.
      allow_private_network: true,
      ...overrides,
    });
    return await ingest(options, hooks);
  } finally {
    await server.close();
    await rm(workFolder, { recursive: true, force: true });
  }
}
