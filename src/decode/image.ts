import { createHash } from 'node:crypto';
import exifr from 'exifr';
import sharp, { type FitEnum, type Metadata, type OutputInfo, type Sharp } from 'sharp';
import type { IngestOptions } from '../config/options.js';
import { perceptualHash, PHASH_INPUT_SIZE, type Hash64 } from '../dedup/phash.js';
import { RejectionError } from '../pipeline/reasons.js';

export type DecodeOptions = Pick<
  IngestOptions,
  | 'imageSize'
  | 'resizeMode'
  | 'resizeOnlyIfBigger'
  | 'outputFormat'
  | 'quality'
  | 'minImageSize'
  | 'maxAspectRatio'
  | 'maxPixels'
  | 'decodeStrictness'
>;

export interface DecodedImage {
  /** The re-encoded image, metadata stripped. */
  data: Buffer;
  extension: 'jpg' | 'webp' | 'png';
  width: number;
  height: number;
  /** Size after EXIF orientation, before resizing. */
  originalWidth: number;
  originalHeight: number;
  sourceFormat: string;
  /** SHA-256 of the oriented 8-bit sRGB pixels, with their dimensions. */
  sha256: string;
  phash: Hash64;
  gps: { latitude: number; longitude: number } | null;
}

const WHITE = { r: 255, g: 255, b: 255, alpha: 1 };

/**
 * Reads EXIF GPS from the original bytes. exifr reads JPEG, TIFF and HEIC containers;
 * other formats and unreadable tags give null, which counts as no location.
 */
export async function readGps(bytes: Buffer): Promise<{ latitude: number; longitude: number } | null> {
  try {
    const gps = await exifr.gps(bytes);
    if (!gps || typeof gps.latitude !== 'number' || typeof gps.longitude !== 'number') return null;
    return { latitude: gps.latitude, longitude: gps.longitude };
  } catch {
    return null;
  }
}

function decodeFailure(error: unknown): RejectionError {
  const message = (error as Error)?.message ?? String(error);
  if (/pixel limit/i.test(message)) return new RejectionError('too_many_pixels', message, { cause: error });
  return new RejectionError('decode_error', message.split('\n')[0]!.slice(0, 300), { cause: error });
}

function resizeTo(image: Sharp, options: DecodeOptions): Sharp {
  const size = options.imageSize;
  const withoutEnlargement = options.resizeOnlyIfBigger;
  const fits: Record<Exclude<DecodeOptions['resizeMode'], 'no'>, keyof FitEnum> = {
    keep_ratio: 'outside',
    keep_ratio_largest: 'inside',
    center_crop: 'cover',
    border: 'contain',
  };
  if (options.resizeMode === 'no') return image;
  return image.resize({
    width: size,
    height: size,
    fit: fits[options.resizeMode],
    position: 'centre',
    background: WHITE,
    withoutEnlargement,
  });
}

function encode(image: Sharp, options: DecodeOptions, hasAlpha: boolean): Sharp {
  switch (options.outputFormat) {
    case 'jpg':
      // JPEG has no alpha: without flattening, transparent pixels turn black.
      return (hasAlpha ? image.flatten({ background: WHITE }) : image).jpeg({ quality: options.quality });
    case 'webp':
      return image.webp({ quality: options.quality });
    case 'png':
      return image.png();
  }
}

/**
 * Decodes, validates, orients, hashes, resizes and re-encodes one image, or throws a
 * RejectionError with the reason. The pixels are decoded once: hashing, the perceptual
 * hash and the output all start from the same oriented 8-bit sRGB buffer.
 */
export async function decodeImage(bytes: Buffer, options: DecodeOptions): Promise<DecodedImage> {
  const input = { failOn: options.decodeStrictness, limitInputPixels: options.maxPixels } as const;

  let metadata: Metadata;
  try {
    metadata = await sharp(bytes, input).metadata();
  } catch (error) {
    throw decodeFailure(error);
  }
  if (!metadata.width || !metadata.height || !metadata.format) {
    throw new RejectionError('decode_error', 'the decoder found no image dimensions');
  }

  // Orientations 5 to 8 turn the image by 90 degrees.
  const turned = (metadata.orientation ?? 1) >= 5;
  const originalWidth = turned ? metadata.height : metadata.width;
  const originalHeight = turned ? metadata.width : metadata.height;
  const shorter = Math.min(originalWidth, originalHeight);
  const longer = Math.max(originalWidth, originalHeight);
  if (originalWidth * originalHeight > options.maxPixels) {
    throw new RejectionError('too_many_pixels', `${originalWidth}x${originalHeight} is over the limit of ${options.maxPixels} pixels`);
  }
  if (shorter < options.minImageSize) {
    throw new RejectionError('too_small', `shorter side ${shorter} px is below the minimum of ${options.minImageSize} px`);
  }
  if (longer / shorter > options.maxAspectRatio) {
    throw new RejectionError('bad_aspect_ratio', `aspect ratio ${(longer / shorter).toFixed(2)} is over the maximum of ${options.maxAspectRatio}`);
  }

  let raw: { data: Buffer; info: OutputInfo };
  try {
    // Animated inputs decode their first frame only, since `pages` is left at 1.
    raw = await sharp(bytes, input).rotate().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  } catch (error) {
    throw decodeFailure(error);
  }
  const { width, height, channels } = raw.info;
  const rawInput = { raw: { width, height, channels } };

  const sha256 = createHash('sha256').update(`${width}x${height}x${channels}\n`).update(raw.data).digest('hex');

  const grey = await sharp(raw.data, rawInput)
    .flatten({ background: WHITE })
    .greyscale()
    .resize(PHASH_INPUT_SIZE, PHASH_INPUT_SIZE, { fit: 'fill' })
    .raw()
    .toBuffer();

  const hasAlpha = channels === 4;
  const output = await encode(resizeTo(sharp(raw.data, rawInput), options), options, hasAlpha).toBuffer({ resolveWithObject: true });

  return {
    data: output.data,
    extension: options.outputFormat,
    width: output.info.width,
    height: output.info.height,
    originalWidth,
    originalHeight,
    sourceFormat: metadata.format,
    sha256,
    phash: perceptualHash(grey),
    gps: await readGps(bytes),
  };
}
