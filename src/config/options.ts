import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv, type ErrorObject } from 'ajv';
import YAML from 'yaml';
import { parsePolicy } from '../geo/policy.js';

export type ResizeMode = 'no' | 'keep_ratio' | 'keep_ratio_largest' | 'center_crop' | 'border';
export type OutputFormat = 'jpg' | 'webp' | 'png';
export type InputFormat = 'auto' | 'txt' | 'csv' | 'tsv' | 'jsonl' | 'parquet' | 'folder';

/** Options of one ingestion run, as validated against schemas/pipeline.schema.json. */
export interface IngestOptions {
  source: string;
  output: string;
  inputFormat: InputFormat;
  urlColumn: string;
  captionColumn: string;
  countryColumn: string;
  latitudeColumn: string;
  longitudeColumn: string;
  extraColumns: string[];
  imageSize: number;
  resizeMode: ResizeMode;
  resizeOnlyIfBigger: boolean;
  outputFormat: OutputFormat;
  quality: number;
  minImageSize: number;
  maxAspectRatio: number;
  maxPixels: number;
  decodeStrictness: 'none' | 'truncated' | 'error' | 'warning';
  shardSize: number;
  shardPrefix: string;
  concurrency: number;
  perHostConcurrency: number;
  decodeConcurrency: number;
  timeoutMs: number;
  retries: number;
  retryBaseMs: number;
  maxRetryAfterMs: number;
  maxBytes: number;
  maxRedirects: number;
  userAgent: string;
  disallowedDirectives: string[];
  policy: string;
  unknownLocation: 'reject' | 'keep';
  dedup: 'exact_and_near' | 'exact' | 'none';
  nearRadius: number;
  allowPrivateNetwork: boolean;
  overwrite: boolean;
  catalog?: string;
  kafkaBrokers?: string;
  unitsTopic: string;
  eventsTopic: string;
  consumerGroup: string;
  sessionTimeoutMs: number;
  runId?: string;
  progress: 'auto' | 'bar' | 'log' | 'none';
}

interface SchemaProperty {
  type?: string;
  enum?: string[];
  default?: unknown;
  description?: string;
  items?: { type: string };
}

interface PipelineSchema {
  properties: Record<string, SchemaProperty>;
  required: string[];
}

const schemaPath = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../schemas/pipeline.schema.json');

export const pipelineSchema: PipelineSchema = JSON.parse(readFileSync(schemaPath, 'utf8')) as PipelineSchema;

const ajv = new Ajv({ allErrors: true, useDefaults: true, coerceTypes: false, strict: false });
const validatePipeline = ajv.compile(pipelineSchema);

export function snakeToCamel(name: string): string {
  return name.replace(/_([a-z])/g, (_, letter: string) => letter.toUpperCase());
}

export function snakeToKebab(name: string): string {
  return name.replace(/_/g, '-');
}

/** Levenshtein distance, for "did you mean" hints on misspelt field names. */
function editDistance(a: string, b: string): number {
  const previous = Array.from({ length: b.length + 1 }, (_, index) => index);
  for (let i = 1; i <= a.length; i += 1) {
    let diagonal = previous[0]!;
    previous[0] = i;
    for (let j = 1; j <= b.length; j += 1) {
      const above = previous[j]!;
      previous[j] = Math.min(above + 1, previous[j - 1]! + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return previous[b.length]!;
}

/** Naming of fields in messages: the pipeline-file name, or the command-line flag. */
type FieldStyle = 'field' | 'flag';

function fieldName(name: string, style: FieldStyle): string {
  return style === 'flag' ? `--${snakeToKebab(name)}` : name;
}

function describeError(error: ErrorObject, data: Record<string, unknown>, style: FieldStyle): string {
  const name = error.instancePath.replace(/^\//, '').split('/')[0] ?? '';
  const field = name ? fieldName(name, style) : '(root)';
  const received = name ? JSON.stringify(data[name]) : undefined;
  const { params } = error;

  switch (error.keyword) {
    case 'additionalProperties': {
      const unknown = String(params.additionalProperty);
      const names = Object.keys(pipelineSchema.properties);
      const closest = names.sort((a, b) => editDistance(unknown, a) - editDistance(unknown, b))[0];
      return `unknown field "${unknown}": remove it${closest ? ` or use "${closest}"` : ''}`;
    }
    case 'required': {
      const missing = String(params.missingProperty);
      return `missing ${fieldName(missing, style)}: add it (${pipelineSchema.properties[missing]?.description ?? ''})`;
    }
    case 'enum':
      return `${field}: expected one of ${(params.allowedValues as string[]).join(', ')} but received ${received}`;
    case 'minimum':
      return `${field}: expected a value of at least ${params.limit} but received ${received}`;
    case 'maximum':
      return `${field}: expected a value of at most ${params.limit} but received ${received}`;
    case 'exclusiveMinimum':
      return `${field}: expected a value greater than ${params.limit} but received ${received}`;
    case 'type':
      return `${field}: expected ${params.type === 'integer' ? 'a whole number' : `a ${params.type}`} but received ${received}`;
    case 'pattern':
      return `${field}: expected letters, digits, - and _ only (pattern ${params.pattern}) but received ${received}`;
    case 'minLength':
      return `${field}: expected a non-empty value but received ${received}`;
    default:
      return `${field}: ${error.message ?? 'is invalid'} but received ${received}`;
  }
}

/**
 * Validates raw pipeline options (snake_case keys), fills defaults, and returns the typed
 * options. Throws one error listing every invalid field, each with the fix; `style` names
 * fields as in a pipeline file or as command-line flags.
 */
export function resolveOptions(raw: Record<string, unknown>, origin = 'options', style: FieldStyle = 'field'): IngestOptions {
  const data = structuredClone(raw);
  const messages: string[] = [];
  if (!validatePipeline(data)) {
    messages.push(...(validatePipeline.errors ?? []).map((error) => describeError(error, data, style)));
  }
  if (typeof data.policy === 'string') {
    try {
      parsePolicy(data.policy);
    } catch (error) {
      messages.push(`${fieldName('policy', style)}: ${(error as Error).message}`);
    }
  }
  if (messages.length > 0) throw new Error(`Invalid ${origin}:\n${messages.map((message) => `  - ${message}`).join('\n')}`);

  const options: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(data)) options[snakeToCamel(key)] = value;
  return options as unknown as IngestOptions;
}

/**
 * Reads a YAML pipeline file and resolves it. Relative `source` and `output` paths are
 * taken relative to the file's folder, so a pipeline file can be run from anywhere.
 */
export async function loadPipelineFile(file: string, overrides: Record<string, unknown> = {}): Promise<IngestOptions> {
  let parsed: unknown;
  try {
    parsed = YAML.parse(await readFile(file, 'utf8'));
  } catch (error) {
    throw new Error(`Cannot read pipeline file ${file}: ${(error as Error).message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new Error(`Invalid pipeline file ${file}: expected a mapping of option names to values`);
  }

  const raw = { ...(parsed as Record<string, unknown>) };
  const base = path.dirname(path.resolve(file));
  for (const key of ['source', 'output']) {
    const value = raw[key];
    if (typeof value === 'string' && !/^[a-z][a-z0-9+.-]*:\/\//i.test(value) && !path.isAbsolute(value)) {
      raw[key] = path.join(base, value);
    }
  }
  Object.assign(raw, overrides);
  return resolveOptions(raw, `pipeline file ${file}`);
}
