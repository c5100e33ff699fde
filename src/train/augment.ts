/**
 * SwAV's multi-crop augmentation on decoded RGB images held as float arrays in [0, 1]:
 * random resized crop, horizontal flip, colour jitter, grayscale, Gaussian blur and
 * normalisation. Every draw comes from an Rng seeded per sample, so the crops of a sample do
 * not depend on which worker thread made them.
 */
import { Rng } from './rng.js';
import { InvalidOptionError, requireIntegerInRange, requireNonNegativeNumber, requireProbability, requireRange } from './validate.js';

/** An image in height x width x 3 layout, values in [0, 1]. */
export interface RgbImage {
  width: number;
  height: number;
  data: Float32Array;
}

export interface AugmentConfig {
  /** Global (assignment) crops per image; SwAV uses 2. */
  globalCrops: number;
  /** Side of the global crops in pixels. */
  globalSize: number;
  /** Fraction of the image area a global crop covers, [min, max]. */
  globalScale: [number, number];
  /** Small crops per image. */
  localCrops: number;
  /** Side of the small crops in pixels. */
  localSize: number;
  localScale: [number, number];
  flipProbability: number;
  colorJitterProbability: number;
  /** Maximum brightness, contrast, saturation and hue changes. */
  colorJitter: [number, number, number, number];
  grayscaleProbability: number;
  blurProbability: number;
  /** Gaussian blur sigma range in pixels of the output crop. */
  blurSigma: [number, number];
  /** Per-channel mean and standard deviation subtracted and divided after augmentation. */
  mean: [number, number, number];
  std: [number, number, number];
}

/**
 * SwAV's ImageNet recipe (2 x 224 px at scale 0.14-1, 6 x 96 px at 0.05-0.14) scaled down to
 * 32 px and 16 px crops with 4 small crops, so that a step runs on a CPU.
 */
export const DEFAULT_AUGMENT_CONFIG: AugmentConfig = {
  globalCrops: 2,
  globalSize: 32,
  globalScale: [0.14, 1],
  localCrops: 4,
  localSize: 16,
  localScale: [0.05, 0.14],
  flipProbability: 0.5,
  colorJitterProbability: 0.8,
  colorJitter: [0.8, 0.8, 0.8, 0.2],
  grayscaleProbability: 0.2,
  blurProbability: 0.5,
  blurSigma: [0.1, 2],
  mean: [0.485, 0.456, 0.406],
  std: [0.228, 0.224, 0.225],
};

export function validateAugmentConfig(config: AugmentConfig): AugmentConfig {
  requireIntegerInRange('augment.globalCrops', config.globalCrops, 1);
  requireIntegerInRange('augment.globalSize', config.globalSize, 1);
  requireRange('augment.globalScale', config.globalScale, 1);
  requireIntegerInRange('augment.localCrops', config.localCrops, 0);
  requireIntegerInRange('augment.localSize', config.localSize, 1);
  requireRange('augment.localScale', config.localScale, 1);
  if (config.globalCrops + config.localCrops < 2) {
    throw new InvalidOptionError('augment.localCrops', `at least ${2 - config.globalCrops} with ${config.globalCrops} global crop(s), because SwAV needs 2 crops`, config.localCrops);
  }
  requireProbability('augment.flipProbability', config.flipProbability);
  requireProbability('augment.colorJitterProbability', config.colorJitterProbability);
  config.colorJitter.forEach((v, i) => requireNonNegativeNumber(`augment.colorJitter[${i}]`, v));
  if (config.colorJitter[3] > 0.5) {
    throw new InvalidOptionError('augment.colorJitter[3]', 'a hue change of at most 0.5', config.colorJitter[3]);
  }
  requireProbability('augment.grayscaleProbability', config.grayscaleProbability);
  requireProbability('augment.blurProbability', config.blurProbability);
  requireRange('augment.blurSigma', config.blurSigma);
  config.std.forEach((v, i) => {
    if (!(v > 0)) throw new InvalidOptionError(`augment.std[${i}]`, 'a number greater than 0', v);
  });
  return config;
}

/** Crop sides in batch order: global crops first, then small crops. */
export function cropSizes(config: AugmentConfig): number[] {
  return [...Array<number>(config.globalCrops).fill(config.globalSize), ...Array<number>(config.localCrops).fill(config.localSize)];
}

interface Box {
  top: number;
  left: number;
  height: number;
  width: number;
}

/** Random box of a given area fraction and aspect ratio in [3/4, 4/3], as the usual random resized crop. */
function randomBox(rng: Rng, width: number, height: number, scale: [number, number]): Box {
  const area = width * height;
  const logRatio = [Math.log(3 / 4), Math.log(4 / 3)] as const;
  for (let attempt = 0; attempt < 10; attempt++) {
    const targetArea = area * rng.uniform(scale[0], scale[1]);
    const ratio = Math.exp(rng.uniform(logRatio[0], logRatio[1]));
    const w = Math.round(Math.sqrt(targetArea * ratio));
    const h = Math.round(Math.sqrt(targetArea / ratio));
    if (w > 0 && h > 0 && w <= width && h <= height) {
      return { top: rng.integer(height - h + 1), left: rng.integer(width - w + 1), height: h, width: w };
    }
  }
  // Fallback: the largest centred box with the ratio clamped to [3/4, 4/3].
  let w = width;
  let h = height;
  if (width / height < 3 / 4) h = Math.round(width / (3 / 4));
  else if (width / height > 4 / 3) w = Math.round(height * (4 / 3));
  return { top: Math.floor((height - h) / 2), left: Math.floor((width - w) / 2), height: h, width: w };
}

/** Bilinear resampling of a box of the image to size x size (pixel centres aligned). */
function resizeBox(image: RgbImage, box: Box, size: number): Float32Array {
  const out = new Float32Array(size * size * 3);
  const scaleY = box.height / size;
  const scaleX = box.width / size;
  for (let y = 0; y < size; y++) {
    const sy = Math.min(Math.max(box.top + (y + 0.5) * scaleY - 0.5, 0), image.height - 1);
    const y0 = Math.floor(sy);
    const y1 = Math.min(y0 + 1, image.height - 1);
    const fy = sy - y0;
    for (let x = 0; x < size; x++) {
      const sx = Math.min(Math.max(box.left + (x + 0.5) * scaleX - 0.5, 0), image.width - 1);
      const x0 = Math.floor(sx);
      const x1 = Math.min(x0 + 1, image.width - 1);
      const fx = sx - x0;
      for (let c = 0; c < 3; c++) {
        const a = image.data[(y0 * image.width + x0) * 3 + c] as number;
        const b = image.data[(y0 * image.width + x1) * 3 + c] as number;
        const d = image.data[(y1 * image.width + x0) * 3 + c] as number;
        const e = image.data[(y1 * image.width + x1) * 3 + c] as number;
        out[(y * size + x) * 3 + c] = (a * (1 - fx) + b * fx) * (1 - fy) + (d * (1 - fx) + e * fx) * fy;
      }
    }
  }
  return out;
}

function flipHorizontal(pixels: Float32Array, size: number): void {
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size / 2; x++) {
      const left = (y * size + x) * 3;
      const right = (y * size + (size - 1 - x)) * 3;
      for (let c = 0; c < 3; c++) {
        const t = pixels[left + c] as number;
        pixels[left + c] = pixels[right + c] as number;
        pixels[right + c] = t;
      }
    }
  }
}

const clamp01 = (v: number): number => Math.min(Math.max(v, 0), 1);
/** ITU-R BT.601 luma weights, as PIL's and torchvision's grayscale conversion. */
const luma = (r: number, g: number, b: number): number => 0.299 * r + 0.587 * g + 0.114 * b;

function adjustBrightness(pixels: Float32Array, factor: number): void {
  for (let i = 0; i < pixels.length; i++) pixels[i] = clamp01((pixels[i] as number) * factor);
}

function adjustContrast(pixels: Float32Array, factor: number): void {
  let sum = 0;
  for (let i = 0; i < pixels.length; i += 3) sum += luma(pixels[i]!, pixels[i + 1]!, pixels[i + 2]!);
  const mean = sum / (pixels.length / 3);
  for (let i = 0; i < pixels.length; i++) pixels[i] = clamp01(((pixels[i] as number) - mean) * factor + mean);
}

function adjustSaturation(pixels: Float32Array, factor: number): void {
  for (let i = 0; i < pixels.length; i += 3) {
    const gray = luma(pixels[i]!, pixels[i + 1]!, pixels[i + 2]!);
    for (let c = 0; c < 3; c++) pixels[i + c] = clamp01(((pixels[i + c] as number) - gray) * factor + gray);
  }
}

/** Rotates the hue by `shift` turns (from -0.5 to 0.5) through HSV. */
function adjustHue(pixels: Float32Array, shift: number): void {
  for (let i = 0; i < pixels.length; i += 3) {
    const r = pixels[i]!;
    const g = pixels[i + 1]!;
    const b = pixels[i + 2]!;
    const max = Math.max(r, g, b);
    const min = Math.min(r, g, b);
    const delta = max - min;
    if (delta === 0) continue;
    // Hue in sixths of a turn, from the channel that is the maximum.
    let hue: number;
    if (max === r) hue = (g - b) / delta;
    else if (max === g) hue = 2 + (b - r) / delta;
    else hue = 4 + (r - g) / delta;
    hue = (((hue / 6 + shift) % 1) + 1) % 1;
    const saturation = delta / max;
    const sector = hue * 6;
    const f = sector - Math.floor(sector);
    const p = max * (1 - saturation);
    const q = max * (1 - saturation * f);
    const t = max * (1 - saturation * (1 - f));
    const rgb = [
      [max, t, p],
      [q, max, p],
      [p, max, t],
      [p, q, max],
      [t, p, max],
      [max, p, q],
    ][Math.floor(sector) % 6] as number[];
    pixels[i] = rgb[0]!;
    pixels[i + 1] = rgb[1]!;
    pixels[i + 2] = rgb[2]!;
  }
}

/** Colour jitter with the four changes in random order, as torchvision's ColorJitter. */
function colorJitter(rng: Rng, pixels: Float32Array, strengths: [number, number, number, number]): void {
  const [brightness, contrast, saturation, hue] = strengths;
  const order = rng.shuffle([0, 1, 2, 3]);
  for (const which of order) {
    if (which === 0 && brightness > 0) adjustBrightness(pixels, rng.uniform(Math.max(0, 1 - brightness), 1 + brightness));
    if (which === 1 && contrast > 0) adjustContrast(pixels, rng.uniform(Math.max(0, 1 - contrast), 1 + contrast));
    if (which === 2 && saturation > 0) adjustSaturation(pixels, rng.uniform(Math.max(0, 1 - saturation), 1 + saturation));
    if (which === 3 && hue > 0) adjustHue(pixels, rng.uniform(-hue, hue));
  }
}

function toGrayscale(pixels: Float32Array): void {
  for (let i = 0; i < pixels.length; i += 3) {
    const gray = luma(pixels[i]!, pixels[i + 1]!, pixels[i + 2]!);
    pixels[i] = gray;
    pixels[i + 1] = gray;
    pixels[i + 2] = gray;
  }
}

/** Separable Gaussian blur with a kernel radius of ceil(3 sigma) and edge pixels repeated. */
function gaussianBlur(pixels: Float32Array, size: number, sigma: number): void {
  const radius = Math.max(1, Math.ceil(3 * sigma));
  const kernel = new Float32Array(2 * radius + 1);
  let total = 0;
  for (let k = -radius; k <= radius; k++) {
    const weight = Math.exp(-(k * k) / (2 * sigma * sigma));
    kernel[k + radius] = weight;
    total += weight;
  }
  for (let k = 0; k < kernel.length; k++) kernel[k] = kernel[k]! / total;

  const temp = new Float32Array(pixels.length);
  const clampIndex = (v: number): number => Math.min(Math.max(v, 0), size - 1);
  for (let pass = 0; pass < 2; pass++) {
    const source = pass === 0 ? pixels : temp;
    const target = pass === 0 ? temp : pixels;
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        for (let c = 0; c < 3; c++) {
          let sum = 0;
          for (let k = -radius; k <= radius; k++) {
            const sx = pass === 0 ? clampIndex(x + k) : x;
            const sy = pass === 0 ? y : clampIndex(y + k);
            sum += kernel[k + radius]! * source[(sy * size + sx) * 3 + c]!;
          }
          target[(y * size + x) * 3 + c] = sum;
        }
      }
    }
  }
}

function normalize(pixels: Float32Array, mean: [number, number, number], std: [number, number, number]): void {
  for (let i = 0; i < pixels.length; i++) {
    const c = i % 3;
    pixels[i] = ((pixels[i] as number) - mean[c]!) / std[c]!;
  }
}

/** Makes one augmented, normalised crop [size, size, 3] of the image. */
export function makeCrop(rng: Rng, image: RgbImage, size: number, scale: [number, number], config: AugmentConfig): Float32Array {
  const pixels = resizeBox(image, randomBox(rng, image.width, image.height, scale), size);
  if (rng.chance(config.flipProbability)) flipHorizontal(pixels, size);
  if (rng.chance(config.colorJitterProbability)) colorJitter(rng, pixels, config.colorJitter);
  if (rng.chance(config.grayscaleProbability)) toGrayscale(pixels);
  if (rng.chance(config.blurProbability)) gaussianBlur(pixels, size, rng.uniform(config.blurSigma[0], config.blurSigma[1]));
  normalize(pixels, config.mean, config.std);
  return pixels;
}

/** Makes every crop of one sample, global crops first, from a per-sample seed. */
export function makeCrops(image: RgbImage, seed: number, config: AugmentConfig): Float32Array[] {
  const rng = new Rng(seed);
  const crops: Float32Array[] = [];
  for (let i = 0; i < config.globalCrops; i++) crops.push(makeCrop(rng, image, config.globalSize, config.globalScale, config));
  for (let i = 0; i < config.localCrops; i++) crops.push(makeCrop(rng, image, config.localSize, config.localScale, config));
  return crops;
}

/** Centre crop (no augmentation), resized and normalised, for embedding an image. */
export function makeEvaluationCrop(image: RgbImage, size: number, config: Pick<AugmentConfig, 'mean' | 'std'>): Float32Array {
  const side = Math.min(image.width, image.height);
  const box = { top: Math.floor((image.height - side) / 2), left: Math.floor((image.width - side) / 2), height: side, width: side };
  const pixels = resizeBox(image, box, size);
  normalize(pixels, config.mean, config.std);
  return pixels;
}
