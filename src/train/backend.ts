/**
 * Chooses the TensorFlow.js backend for training: native TensorFlow with CUDA, native
 * TensorFlow on the CPU, WebAssembly, then plain JavaScript. The native packages are optional
 * because their install downloads libtensorflow, so they are loaded with a dynamic import.
 */
import * as tf from '@tensorflow/tfjs';

import { log } from '../log.js';
import { InvalidOptionError } from './validate.js';
import { registerWasmGradientKernels } from './wasm-kernels.js';

export const BACKEND_CHOICES = ['auto', 'tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'] as const;
export type BackendChoice = (typeof BACKEND_CHOICES)[number];

interface Candidate {
  choice: Exclude<BackendChoice, 'auto'>;
  /** Module whose import registers the backend. */
  moduleName: string;
  /** Name under which TensorFlow.js registers it. */
  backendName: string;
}

// NOTE: the two native candidates have not been run: their install downloads libtensorflow,
// which this project's development machines cannot fetch. Only wasm and cpu are tested.
const CANDIDATES: Candidate[] = [
  { choice: 'tensorflow-gpu', moduleName: '@tensorflow/tfjs-node-gpu', backendName: 'tensorflow' },
  { choice: 'tensorflow', moduleName: '@tensorflow/tfjs-node', backendName: 'tensorflow' },
  { choice: 'wasm', moduleName: '@tensorflow/tfjs-backend-wasm', backendName: 'wasm' },
  { choice: 'cpu', moduleName: '@tensorflow/tfjs-backend-cpu', backendName: 'cpu' },
];

export interface SelectedBackend {
  choice: Exclude<BackendChoice, 'auto'>;
  backendName: string;
}

/** First line of an import failure, without the stack: "Cannot find package ..." or the native loader's error. */
function describeImportFailure(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const code = (error as { code?: unknown }).code;
  const firstLine = message.split('\n')[0] ?? message;
  return typeof code === 'string' ? `${code}: ${firstLine}` : firstLine;
}

async function activate(candidate: Candidate): Promise<void> {
  // The module name is a variable so that TypeScript does not require the optional packages.
  const moduleName: string = candidate.moduleName;
  await import(moduleName);
  if (candidate.backendName === 'wasm') {
    registerWasmGradientKernels();
  }
  const ok = await tf.setBackend(candidate.backendName);
  if (!ok) {
    throw new Error(`TensorFlow.js could not initialise the ${candidate.backendName} backend`);
  }
  await tf.ready();
}

/**
 * Loads and activates a backend. 'auto' takes the first that loads, in the order above, and
 * logs the ones that did not in a single line; a named choice that fails to load throws.
 */
export async function selectBackend(choice: BackendChoice = 'auto'): Promise<SelectedBackend> {
  if (!(BACKEND_CHOICES as readonly string[]).includes(choice)) {
    throw new InvalidOptionError('backend', `one of ${BACKEND_CHOICES.join(', ')}`, choice);
  }
  // Production mode silences the JavaScript backend's advice to install the native package.
  tf.enableProdMode();

  const candidates = choice === 'auto' ? CANDIDATES : CANDIDATES.filter((c) => c.choice === choice);
  const unavailable: Record<string, string> = {};
  for (const candidate of candidates) {
    try {
      await activate(candidate);
      if (Object.keys(unavailable).length > 0) {
        log.info({ unavailable }, 'optional TensorFlow.js backends not available');
      }
      log.info({ backend: candidate.choice }, 'TensorFlow.js backend selected');
      return { choice: candidate.choice, backendName: candidate.backendName };
    } catch (error) {
      unavailable[candidate.moduleName] = describeImportFailure(error);
    }
  }
  const reasons = Object.entries(unavailable)
    .map(([name, reason]) => `${name} (${reason})`)
    .join('; ');
  throw new Error(`No TensorFlow.js backend could be loaded for --backend ${choice}: ${reasons}`);
}
