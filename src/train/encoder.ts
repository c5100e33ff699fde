/**
 * The exported encoder: the trained backbone (batch-norm running statistics included) with
 * the input geometry and normalisation it was trained with, in a folder holding model.json
 * and tensors.bin. Embedding uses the running statistics, so results do not depend on the
 * batch.
 */
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';

import * as tf from '@tensorflow/tfjs';

import { makeEvaluationCrop, type RgbImage } from './augment.js';
import { readTensorFile, writeTensorFile } from './checkpoint.js';
import { SwavModel, type ModelConfig } from './model.js';

export const ENCODER_FORMAT = 'geoshard-swav-encoder';

export interface EncoderInfo {
  format: typeof ENCODER_FORMAT;
  formatVersion: 1;
  model: ModelConfig;
  /** Side in pixels of the square input the encoder was trained on (the global crop size). */
  inputSize: number;
  mean: [number, number, number];
  std: [number, number, number];
  /** Length of the feature vectors embedImages returns. */
  featureDim: number;
  /** Training step the weights come from. */
  step: number;
}

export async function exportEncoder(folder: string, model: SwavModel, info: Omit<EncoderInfo, 'format' | 'formatVersion' | 'model' | 'featureDim'>): Promise<void> {
  const temporary = `${folder}.tmp-${process.pid}`;
  await rm(temporary, { recursive: true, force: true });
  await mkdir(temporary, { recursive: true });
  const tensors = new Map(model.encoderNames().map((name) => [name, model.variable(name) as tf.Tensor]));
  const table = await writeTensorFile(temporary, tensors);
  const full: EncoderInfo & { tensors: typeof table } = {
    format: ENCODER_FORMAT,
    formatVersion: 1,
    model: model.config,
    featureDim: model.featureDim,
    ...info,
    tensors: table,
  };
  await writeFile(path.join(temporary, 'model.json'), `${JSON.stringify(full, null, 2)}\n`);
  await rm(folder, { recursive: true, force: true });
  await rename(temporary, folder);
}

export interface LoadedEncoder {
  info: EncoderInfo;
  model: SwavModel;
}

/** Loads an exported encoder; the head and prototypes of the returned model are untrained and unused. */
export async function loadEncoder(folder: string): Promise<LoadedEncoder> {
  const stored = JSON.parse(await readFile(path.join(folder, 'model.json'), 'utf8')) as EncoderInfo & {
    tensors: { name: string; shape: number[]; offset: number }[];
  };
  if (stored.format !== ENCODER_FORMAT) {
    throw new Error(`${folder}/model.json has format ${String(stored.format)}, expected ${ENCODER_FORMAT}`);
  }
  const model = new SwavModel(stored.model, 0);
  const values = await readTensorFile(folder, stored.tensors);
  for (const name of model.encoderNames()) {
    const entry = values.get(name);
    if (entry === undefined) throw new Error(`Encoder in ${folder} has no tensor ${name}`);
    const tensor = tf.tensor(entry.values, entry.shape);
    model.variable(name).assign(tensor);
    tensor.dispose();
  }
  const { tensors: _table, ...info } = stored;
  return { info, model };
}

/**
 * Embeds decoded images: centre crop, resize to the input size, normalise, backbone in
 * inference mode. Returns one feature vector [featureDim] per image, in batches of `batchSize`.
 */
export async function embedImages(encoder: LoadedEncoder, images: RgbImage[], batchSize = 256): Promise<Float32Array[]> {
  const { inputSize } = encoder.info;
  const result: Float32Array[] = [];
  for (let start = 0; start < images.length; start += batchSize) {
    const chunk = images.slice(start, start + batchSize);
    const pixels = new Float32Array(chunk.length * inputSize * inputSize * 3);
    chunk.forEach((image, i) => pixels.set(makeEvaluationCrop(image, inputSize, encoder.info), i * inputSize * inputSize * 3));
    const features = tf.tidy(() => encoder.model.features(tf.tensor4d(pixels, [chunk.length, inputSize, inputSize, 3])));
    const values = (await features.data()) as Float32Array;
    features.dispose();
    const dim = encoder.info.featureDim;
    for (let i = 0; i < chunk.length; i++) result.push(values.slice(i * dim, (i + 1) * dim));
  }
  return result;
}
