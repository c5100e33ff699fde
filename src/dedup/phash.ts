/**
 * 64-bit DCT perceptual hash (pHash): the 8x8 lowest frequencies of a 32x32 DCT-II of the
 * grey image, each bit set where the coefficient exceeds the median of the 63 AC
 * coefficients. Resizing, re-encoding and mild colour changes move few bits.
 */

export const PHASH_INPUT_SIZE = 32;
const LOW = 8;

/** Cosine table: COS[u][x] = cos((2x + 1) u pi / 2N) for the 32-point DCT-II. */
const COS: Float64Array[] = Array.from({ length: LOW }, (_, u) =>
  Float64Array.from({ length: PHASH_INPUT_SIZE }, (_, x) => Math.cos(((2 * x + 1) * u * Math.PI) / (2 * PHASH_INPUT_SIZE))),
);

/** A 64-bit hash as two unsigned 32-bit halves, so Hamming distances need no BigInt. */
export interface Hash64 {
  high: number;
  low: number;
}

/**
 * Computes the pHash of a 32x32 grey image given as 1024 bytes in row order.
 * Only the 8x8 low-frequency block of the DCT is computed.
 */
export function perceptualHash(grey: Uint8Array): Hash64 {
  if (grey.length !== PHASH_INPUT_SIZE * PHASH_INPUT_SIZE) {
    throw new RangeError(`perceptualHash expects ${PHASH_INPUT_SIZE * PHASH_INPUT_SIZE} grey pixels but received ${grey.length}`);
  }

  // Rows first: rowDct[y][u] for u < 8, then columns: coefficients[v][u].
  const rowDct = new Float64Array(PHASH_INPUT_SIZE * LOW);
  for (let y = 0; y < PHASH_INPUT_SIZE; y += 1) {
    for (let u = 0; u < LOW; u += 1) {
      const cos = COS[u]!;
      let sum = 0;
      for (let x = 0; x < PHASH_INPUT_SIZE; x += 1) sum += grey[y * PHASH_INPUT_SIZE + x]! * cos[x]!;
      rowDct[y * LOW + u] = sum;
    }
  }
  const coefficients = new Float64Array(LOW * LOW);
  for (let v = 0; v < LOW; v += 1) {
    const cos = COS[v]!;
    for (let u = 0; u < LOW; u += 1) {
      let sum = 0;
      for (let y = 0; y < PHASH_INPUT_SIZE; y += 1) sum += rowDct[y * LOW + u]! * cos[y]!;
      coefficients[v * LOW + u] = sum;
    }
  }

  const ac = Array.from(coefficients.subarray(1)).sort((a, b) => a - b);
  const median = (ac[31]! + ac[32]!) / 2;

  let high = 0;
  let low = 0;
  for (let bit = 0; bit < 64; bit += 1) {
    if (coefficients[bit]! > median) {
      if (bit < 32) high |= 1 << (31 - bit);
      else low |= 1 << (63 - bit);
    }
  }
  return { high: high >>> 0, low: low >>> 0 };
}

function popcount32(value: number): number {
  let v = value - ((value >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

export function hammingDistance(a: Hash64, b: Hash64): number {
  return popcount32((a.high ^ b.high) >>> 0) + popcount32((a.low ^ b.low) >>> 0);
}

export function hashToHex(hash: Hash64): string {
  return hash.high.toString(16).padStart(8, '0') + hash.low.toString(16).padStart(8, '0');
}

export function hexToHash(hex: string): Hash64 {
  if (!/^[0-9a-f]{16}$/i.test(hex)) throw new RangeError(`Expected 16 hexadecimal digits but received "${hex}"`);
  return { high: Number.parseInt(hex.slice(0, 8), 16) >>> 0, low: Number.parseInt(hex.slice(8), 16) >>> 0 };
}
