/**
 * Worker thread that decodes images and makes their crops, so that the training loop does not
 * wait on JPEG decoding and augmentation. Request: { id, bytes, seed }; response: { id, crops }
 * with the crop buffers transferred, or { id, error }.
 */
import { parentPort, workerData } from 'node:worker_threads';

import sharp from 'sharp';

import { makeCrops, type AugmentConfig } from './augment.js';
import { decodeImage } from './decode.js';

export interface AugmentRequest {
  id: number;
  bytes: Uint8Array;
  seed: number;
}

export type AugmentResponse = { id: number; crops: Float32Array[] } | { id: number; error: string };

export interface AugmentWorkerData {
  config: AugmentConfig;
  maxShortSide: number;
}

// Each worker is one of several threads already; libvips threads on top would oversubscribe the cores.
sharp.concurrency(1);

const { config, maxShortSide } = workerData as AugmentWorkerData;
const port = parentPort;
if (port === null) {
  throw new Error('augment-worker must run as a worker thread');
}

port.on('message', (request: AugmentRequest) => {
  decodeImage(request.bytes, maxShortSide)
    .then((image) => {
      const crops = makeCrops(image, request.seed, config);
      const response: AugmentResponse = { id: request.id, crops };
      port.postMessage(response, crops.map((crop) => crop.buffer as ArrayBuffer));
    })
    .catch((error: unknown) => {
      const response: AugmentResponse = { id: request.id, error: error instanceof Error ? error.message : String(error) };
      port.postMessage(response);
    });
});
