/**
 * Convolution gradient kernels for the WebAssembly backend of TensorFlow.js 4.22.
 *
 * That backend has no Conv2DBackpropFilter, so a convolution's weights cannot be trained on
 * it, and its Conv2DBackpropInput is a plain loop (about 0.8 GFLOP/s against about 15 for its
 * forward Conv2D, measured on a 2-core x86-64 machine, 64 x 32 x 32 x 32 input, 3 x 3 filter).
 * Both gradients are rewritten here as forward convolutions, which the backend runs through
 * XNNPACK:
 *
 * - filter gradient: dW[fh, fw, ci, co] = sum over n, oh, ow of
 *   xPadded[n, oh * s + fh, ow * s + fw, ci] * dy[n, oh, ow, co]. With x transposed to
 *   [ci, h, w, n] as the input and dy transposed to [oh, ow, n, co] as the filter, this is a
 *   stride-1 convolution with dilation s whose output is [ci, fh, fw, co].
 * - input gradient: dy with s - 1 zeros inserted between its elements, padded by
 *   filterSize - 1 - pad, and convolved with the filter rotated by 180 degrees and with its
 *   channel axes swapped.
 *
 * Other gradients that the trainer's model needs (batch norm, ReLU, mean, matMul, logSoftmax)
 * are built from kernels the backend has.
 */
import * as tf from '@tensorflow/tfjs';

type TensorInfo = tf.TensorInfo;
type Backend = tf.KernelBackend & { disposeData(dataId: object, force?: boolean): boolean };

const BACKEND_NAME = 'wasm';

/** [before, after] amounts per axis; a negative amount crops instead of padding. */
type AxisPadding = [number, number];

class KernelRunner {
  private readonly intermediates: TensorInfo[] = [];

  constructor(private readonly backend: Backend) {}

  /** Runs a kernel of the WebAssembly backend and keeps its output for dispose(). */
  run(kernelName: string, inputs: Record<string, TensorInfo>, attrs: Record<string, unknown>): TensorInfo {
    const kernel = tf.getKernel(kernelName, BACKEND_NAME);
    if (kernel === undefined) {
      throw new Error(`Kernel ${kernelName} is not registered for the ${BACKEND_NAME} backend`);
    }
    const output = kernel.kernelFunc({
      inputs: inputs as tf.NamedTensorInfoMap,
      backend: this.backend,
      attrs: attrs as tf.NamedAttrMap,
    }) as TensorInfo;
    this.intermediates.push(output);
    return output;
  }

  transpose(x: TensorInfo, perm: number[]): TensorInfo {
    return this.run('Transpose', { x }, { perm });
  }

  reshape(x: TensorInfo, shape: number[]): TensorInfo {
    return this.run('Reshape', { x }, { shape });
  }

  /** Pads with zeros or crops each axis, so that callers can state the target geometry directly. */
  padOrCrop(x: TensorInfo, paddings: AxisPadding[]): TensorInfo {
    let result = x;
    if (paddings.some(([before, after]) => before < 0 || after < 0)) {
      const begin = paddings.map(([before]) => Math.max(-before, 0));
      const size = paddings.map(([before, after], axis) => (x.shape[axis] as number) + Math.min(before, 0) + Math.min(after, 0));
      result = this.run('Slice', { x: result }, { begin, size });
    }
    if (paddings.some(([before, after]) => before > 0 || after > 0)) {
      const positive = paddings.map(([before, after]) => [Math.max(before, 0), Math.max(after, 0)]);
      result = this.run('PadV2', { x: result }, { paddings: positive, constantValue: 0 });
    }
    return result;
  }

  conv2d(x: TensorInfo, filter: TensorInfo, dilations: [number, number]): TensorInfo {
    return this.run(
      'Conv2D',
      { x, filter },
      { strides: [1, 1], pad: 'valid', dataFormat: 'NHWC', dilations, dimRoundingMode: undefined },
    );
  }

  /** Disposes every intermediate output except `keep`. */
  dispose(keep: TensorInfo): void {
    for (const info of this.intermediates) {
      if (info !== keep) this.backend.disposeData(info.dataId);
    }
  }
}

interface ConvGradientAttrs {
  strides: number | [number, number];
  pad: 'valid' | 'same' | number | tf.backend_util.ExplicitPadding;
  dataFormat: 'NHWC' | 'NCHW';
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
}

/** The backend's forward Conv2D accepts only NHWC, so its gradients never see NCHW. */
function requireChannelsLast(kernelName: string, dataFormat: string): void {
  if (dataFormat !== 'NHWC') {
    throw new Error(`${kernelName} on the ${BACKEND_NAME} backend supports dataFormat NHWC only, received ${dataFormat}`);
  }
}

function conv2dBackpropFilter(args: { inputs: tf.NamedTensorInfoMap; backend: tf.KernelBackend; attrs?: tf.NamedAttrMap }): TensorInfo {
  const { x, dy } = args.inputs as { x: TensorInfo; dy: TensorInfo };
  const attrs = args.attrs as unknown as ConvGradientAttrs & { filterShape: [number, number, number, number] };
  const runner = new KernelRunner(args.backend as Backend);

  requireChannelsLast('Conv2DBackpropFilter', attrs.dataFormat);
  const info = tf.backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number],
    attrs.filterShape,
    attrs.strides,
    1,
    attrs.pad,
    attrs.dimRoundingMode,
  );

  // Rows (and columns) the filter window reads: (out - 1) * stride + filter, starting at -padTop.
  const rowsRead = (info.outHeight - 1) * info.strideHeight + info.filterHeight;
  const columnsRead = (info.outWidth - 1) * info.strideWidth + info.filterWidth;
  const top = info.padInfo.top;
  const left = info.padInfo.left;
  const xWindow = runner.padOrCrop(x, [
    [0, 0],
    [top, rowsRead - info.inHeight - top],
    [left, columnsRead - info.inWidth - left],
    [0, 0],
  ]);

  // [ci, rowsRead, columnsRead, n] convolved with [oh, ow, n, co] gives [ci, fh, fw, co].
  const input = runner.transpose(xWindow, [3, 1, 2, 0]);
  const filter = runner.transpose(dy, [1, 2, 0, 3]);
  const product = runner.conv2d(input, filter, [info.strideHeight, info.strideWidth]);
  const dw = runner.transpose(product, [1, 2, 0, 3]);

  runner.dispose(dw);
  return dw;
}

function conv2dBackpropInput(args: { inputs: tf.NamedTensorInfoMap; backend: tf.KernelBackend; attrs?: tf.NamedAttrMap }): TensorInfo {
  const { dy, filter } = args.inputs as { dy: TensorInfo; filter: TensorInfo };
  const attrs = args.attrs as unknown as ConvGradientAttrs & { inputShape: [number, number, number, number] };
  const runner = new KernelRunner(args.backend as Backend);

  requireChannelsLast('Conv2DBackpropInput', attrs.dataFormat);
  const [fh, fw, inChannels, outChannels] = filter.shape as [number, number, number, number];
  const info = tf.backend_util.computeConv2DInfo(attrs.inputShape, [fh, fw, inChannels, outChannels], attrs.strides, 1, attrs.pad, attrs.dimRoundingMode);
  const { batchSize, outHeight, outWidth, strideHeight, strideWidth, inHeight, inWidth } = info;

  // Insert stride - 1 zeros after every element of dy: [n, oh * sh, ow * sw, co].
  let dilated = dy;
  if (strideHeight > 1 || strideWidth > 1) {
    const expanded = runner.reshape(dy, [batchSize, outHeight, 1, outWidth, 1, outChannels]);
    const spaced = runner.padOrCrop(expanded, [
      [0, 0],
      [0, 0],
      [0, strideHeight - 1],
      [0, 0],
      [0, strideWidth - 1],
      [0, 0],
    ]);
    dilated = runner.reshape(spaced, [batchSize, outHeight * strideHeight, outWidth * strideWidth, outChannels]);
  }

  // A valid convolution of height L with a filter of height fh gives L - fh + 1 = inHeight rows.
  const top = fh - 1 - info.padInfo.top;
  const left = fw - 1 - info.padInfo.left;
  const padded = runner.padOrCrop(dilated, [
    [0, 0],
    [top, inHeight + fh - 1 - top - outHeight * strideHeight],
    [left, inWidth + fw - 1 - left - outWidth * strideWidth],
    [0, 0],
  ]);

  // [fh, fw, ci, co] rotated by 180 degrees, then [fh, fw, co, ci].
  const reversed = runner.run('Reverse', { x: filter }, { dims: [0, 1] });
  const rotated = runner.transpose(reversed, [0, 1, 3, 2]);
  const dx = runner.conv2d(padded, rotated, [1, 1]);

  runner.dispose(dx);
  return dx;
}

let registered = false;

/**
 * Registers the convolution gradient kernels above for the 'wasm' backend, replacing its
 * Conv2DBackpropInput. Safe to call more than once.
 */
export function registerWasmGradientKernels(): void {
  if (registered) return;
  for (const [kernelName, kernelFunc] of [
    ['Conv2DBackpropFilter', conv2dBackpropFilter],
    ['Conv2DBackpropInput', conv2dBackpropInput],
  ] as const) {
    if (tf.getKernel(kernelName, BACKEND_NAME) !== undefined) {
      tf.unregisterKernel(kernelName, BACKEND_NAME);
    }
    tf.registerKernel({ kernelName, backendName: BACKEND_NAME, kernelFunc: kernelFunc as unknown as tf.KernelFunc });
  }
  registered = true;
}
