/**
 * Option checks shared by the trainer's public functions. Every message has one shape:
 * "Expected <constraint> for <option> but received <value>".
 */

/** Error for an option that breaks its constraint; `option` names the option for callers. */
export class InvalidOptionError extends TypeError {
  readonly option: string;

  constructor(option: string, constraint: string, value: unknown) {
    super(`Expected ${constraint} for ${option} but received ${describeValue(value)}`);
    this.name = 'InvalidOptionError';
    this.option = option;
  }
}

function describeValue(value: unknown): string {
  if (typeof value === 'string') {
    return `${JSON.stringify(value)} of type string`;
  }
  if (Array.isArray(value)) {
    const shown = JSON.stringify(value);
    return shown.length > 80 ? `an array of length ${value.length}` : shown;
  }
  return `${String(value)} of type ${value === null ? 'null' : typeof value}`;
}

export function requirePositiveNumber(option: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new InvalidOptionError(option, 'a finite number greater than 0', value);
  }
  return value;
}

export function requireNonNegativeNumber(option: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new InvalidOptionError(option, 'a finite number of at least 0', value);
  }
  return value;
}

export function requireIntegerInRange(option: string, value: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    const constraint = max === Number.MAX_SAFE_INTEGER ? `an integer of at least ${min}` : `an integer from ${min} to ${max}`;
    throw new InvalidOptionError(option, constraint, value);
  }
  return value;
}

export function requireProbability(option: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > 1) {
    throw new InvalidOptionError(option, 'a probability from 0 to 1', value);
  }
  return value;
}

/** Checks a [min, max] pair with 0 < min <= max <= upper. */
export function requireRange(option: string, value: unknown, upper = Number.POSITIVE_INFINITY): [number, number] {
  const valid =
    Array.isArray(value) &&
    value.length === 2 &&
    value.every((v) => typeof v === 'number' && Number.isFinite(v)) &&
    value[0] > 0 &&
    value[0] <= value[1] &&
    value[1] <= upper;
  if (!valid) {
    const bound = Number.isFinite(upper) ? ` and max at most ${upper}` : '';
    throw new InvalidOptionError(option, `a [min, max] pair with 0 < min <= max${bound}`, value);
  }
  return [value[0] as number, value[1] as number];
}
