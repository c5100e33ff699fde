/** Image decoding for training: sharp to 8-bit sRGB, then float RGB in [0, 1]. */
import sharp from 'sharp';

import type { RgbImage } from './augment.js';

/**
 * Decodes an encoded image (JPEG, PNG, WebP...) with EXIF orientation applied, transparency
 * flattened onto white, and the shorter side reduced to at most `maxShortSide` pixels so that
 * crops of large photos stay cheap. Throws on corrupt or truncated data.
 */
export async function decodeImage(bytes: Uint8Array, maxShortSide: number): Promise<RgbImage> {
  const { data, info } = await sharp(bytes, { failOn: 'truncated' })
    .rotate()
    .resize({ width: maxShortSide, height: maxShortSide, fit: 'outside', withoutEnlargement: true })
    .flatten({ background: '#ffffff' })
    .toColourspace('srgb')
    .raw()
    .toBuffer({ resolveWithObject: true });

  const pixels = info.width * info.height;
  const rgb = new Float32Array(pixels * 3);
  const channels = info.channels;
  for (let p = 0; p < pixels; p++) {
    for (let c = 0; c < 3; c++) {
      // One channel means grey; otherwise the first three are R, G, B.
      rgb[p * 3 + c] = (data[p * channels + (channels === 1 ? 0 : c)] as number) / 255;
    }
  }
  return { width: info.width, height: info.height, data: rgb };
}
