import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import sharp from 'sharp';
import { resolveOptions } from '../../src/config/options.js';
import { decodeImage, type DecodeOptions } from '../../src/decode/image.js';
import { hammingDistance } from '../../src/dedup/phash.js';
import { RejectionError } from '../../src/pipeline/reasons.js';
import { demoImages } from '../support/helpers.js';

const defaults = resolveOptions({ source: 'x', output: 'y' });

function options(overrides: Partial<DecodeOptions> = {}): DecodeOptions {
  return { ...defaults, ...overrides };
}

async function demo(name: string): Promise<Buffer> {
  return readFile(path.join(demoImages, name));
}

async function rejectionOf(promise: Promise<unknown>): Promise<RejectionError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof RejectionError, String(error));
    return error;
  }
  assert.fail('expected a rejection');
}

describe('decodeImage', () => {
  it('reads EXIF GPS from the original bytes and strips it from the output', async () => {
    const image = await decodeImage(await demo('tokyo.jpg'), options());
    assert.ok(image.gps);
    assert.ok(Math.abs(image.gps.latitude - 35.6895) < 1e-4);
    assert.ok(Math.abs(image.gps.longitude - 139.6917) < 1e-4);
    const metadata = await sharp(image.data).metadata();
    assert.equal(metadata.exif, undefined);
    assert.equal(metadata.format, 'jpeg');
  });

  it('sizes output for every resize mode', async () => {
    const bytes = await demo('tokyo.jpg'); // 640x480
    const cases: [DecodeOptions['resizeMode'], number, number][] = [
      ['no', 640, 480],
      ['keep_ratio', 341, 256],
      ['keep_ratio_largest', 256, 192],
      ['center_crop', 256, 256],
      ['border', 256, 256],
    ];
    for (const [resizeMode, width, height] of cases) {
      const image = await decodeImage(bytes, options({ resizeMode }));
      assert.deepEqual([image.width, image.height], [width, height], resizeMode);
      assert.deepEqual([image.originalWidth, image.originalHeight], [640, 480]);
    }
  });

  it('pads border mode with white', async () => {
    const image = await decodeImage(await demo('tokyo.jpg'), options({ resizeMode: 'border', outputFormat: 'png' }));
    const { data } = await sharp(image.data).raw().toBuffer({ resolveWithObject: true });
    assert.deepEqual([...data.subarray(0, 3)], [255, 255, 255]);
  });

  it('does not enlarge when resize_only_if_bigger is set', async () => {
    const image = await decodeImage(await demo('tokyo.jpg'), options({ imageSize: 1024, resizeMode: 'keep_ratio_largest', resizeOnlyIfBigger: true }));
    assert.deepEqual([image.width, image.height], [640, 480]);
  });

  it('flattens transparency onto white for JPEG output', async () => {
    const transparent = await sharp({ create: { width: 64, height: 64, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0 } } }).png().toBuffer();
    const image = await decodeImage(transparent, options({ resizeMode: 'no' }));
    const { data } = await sharp(image.data).raw().toBuffer({ resolveWithObject: true });
    assert.ok(data[0]! > 245, `expected white, got ${data[0]}`);
  });

  it('converts CMYK and 16-bit inputs to 8-bit sRGB', async () => {
    const source = await demo('paris.jpg');
    const cmyk = await sharp(source).toColourspace('cmyk').jpeg().toBuffer();
    const deep = await sharp(source).toColourspace('rgb16').png().toBuffer();
    assert.equal((await sharp(cmyk).metadata()).space, 'cmyk');
    assert.equal((await sharp(deep).metadata()).depth, 'ushort');
    const reference = await decodeImage(source, options());
    for (const bytes of [cmyk, deep]) {
      const image = await decodeImage(bytes, options({ outputFormat: 'png' }));
      const metadata = await sharp(image.data).metadata();
      assert.equal(metadata.space, 'srgb');
      assert.equal(metadata.depth, 'uchar');
      assert.ok(hammingDistance(image.phash, reference.phash) <= 4);
    }
  });

  it('keeps the first frame of an animation', async () => {
    const red = await sharp({ create: { width: 32, height: 32, channels: 3, background: 'red' } }).png().toBuffer();
    const blue = await sharp({ create: { width: 32, height: 32, channels: 3, background: 'blue' } }).png().toBuffer();
    const animated = await sharp([red, blue], { join: { animated: true } }).gif().toBuffer();
    assert.equal((await sharp(animated).metadata()).pages, 2);
    const image = await decodeImage(animated, options({ resizeMode: 'no', outputFormat: 'png' }));
    assert.deepEqual([image.width, image.height], [32, 32]);
    const { data } = await sharp(image.data).raw().toBuffer({ resolveWithObject: true });
    assert.ok(data[0]! > 200, `expected red, got ${[...data.subarray(0, 3)]}`);
    assert.ok(data[2]! < 50, `expected red, got ${[...data.subarray(0, 3)]}`);
  });

  it('hashes pixels, not bytes: a lossless re-encode has the same SHA-256', async () => {
    const png = await demo('horse.png');
    const webp = await sharp(png).webp({ lossless: true }).toBuffer();
    const [a, b] = await Promise.all([decodeImage(png, options()), decodeImage(webp, options())]);
    assert.equal(a.sha256, b.sha256);
  });

  it('rejects a truncated JPEG and HTML as decode errors', async () => {
    const truncated = await rejectionOf(decodeImage(await demo('truncated-skimage.jpg'), options()));
    assert.equal(truncated.reason, 'decode_error');
    const html = await rejectionOf(decodeImage(Buffer.from('<!doctype html><title>Not found</title>'), options()));
    assert.equal(html.reason, 'decode_error');
  });

  it('applies size, aspect ratio and pixel limits', async () => {
    const bytes = await demo('tokyo.jpg');
    assert.equal((await rejectionOf(decodeImage(bytes, options({ minImageSize: 481 })))).reason, 'too_small');
    assert.equal((await rejectionOf(decodeImage(bytes, options({ maxAspectRatio: 1.2 })))).reason, 'bad_aspect_ratio');
    assert.equal((await rejectionOf(decodeImage(bytes, options({ maxPixels: 640 * 480 - 1 })))).reason, 'too_many_pixels');
  });
});
