/**
 * Maps an async iterable through `work` with up to `window` items in flight and yields
 * the results in input order. Reading stops while the window is full, so memory stays
 * bounded by the window whatever the size of the input.
 *
 * Ordered results make the run deterministic: dedup keeps the first copy in input order
 * and shard membership does not depend on which request finished first.
 */
export async function* orderedMap<T, R>(
  source: AsyncIterable<T>,
  window: number,
  work: (item: T) => Promise<R>,
): AsyncGenerator<R> {
  if (!Number.isInteger(window) || window < 1) throw new RangeError(`Expected a positive integer window but received ${window}`);
  const iterator = source[Symbol.asyncIterator]();
  const pending: Promise<R>[] = [];
  let exhausted = false;

  try {
    for (;;) {
      while (!exhausted && pending.length < window) {
        const next = await iterator.next();
        if (next.done) {
          exhausted = true;
          break;
        }
        const promise = work(next.value);
        // Results are awaited in order later; this keeps an early failure from being reported as unhandled.
        promise.catch(() => undefined);
        pending.push(promise);
      }
      const head = pending.shift();
      if (!head) return;
      yield await head;
    }
  } finally {
    if (!exhausted) await iterator.return?.();
  }
}
