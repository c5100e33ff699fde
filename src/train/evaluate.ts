/** Evaluation of embeddings by k-nearest-neighbour classification. */

function normalized(vector: Float32Array): Float32Array {
  let norm = 0;
  for (const v of vector) norm += v * v;
  norm = Math.sqrt(norm) || 1;
  return vector.map((v) => v / norm);
}

/**
 * Classifies each query by a majority vote of its k most cosine-similar references (ties go to
 * the label of the nearest among the tied) and returns the fraction classified correctly.
 */
export function knnAccuracy(
  references: Float32Array[],
  referenceLabels: number[],
  queries: Float32Array[],
  queryLabels: number[],
  k: number,
): number {
  if (references.length !== referenceLabels.length || queries.length !== queryLabels.length) {
    throw new Error(
      `knnAccuracy needs one label per vector: ${references.length} references with ${referenceLabels.length} labels, ` +
        `${queries.length} queries with ${queryLabels.length} labels`,
    );
  }
  if (!Number.isInteger(k) || k < 1 || k > references.length) {
    throw new Error(`knnAccuracy needs k from 1 to ${references.length} (the reference count), received ${k}`);
  }
  const refs = references.map(normalized);
  let correct = 0;
  queries.forEach((query, q) => {
    const unit = normalized(query);
    const similarities = refs.map((ref, r) => {
      let dot = 0;
      for (let i = 0; i < unit.length; i++) dot += (unit[i] as number) * (ref[i] as number);
      return { r, dot };
    });
    similarities.sort((a, b) => b.dot - a.dot);
    const votes = new Map<number, number>();
    let best = referenceLabels[similarities[0]!.r] as number;
    for (const { r } of similarities.slice(0, k)) {
      const label = referenceLabels[r] as number;
      const count = (votes.get(label) ?? 0) + 1;
      votes.set(label, count);
      if (count > (votes.get(best) ?? 0)) best = label;
    }
    if (best === queryLabels[q]) correct++;
  });
  return correct / queries.length;
}
