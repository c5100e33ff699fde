/** The `geoshard train` command. */
import { InvalidArgumentError, Option, type Command } from 'commander';

import { log } from '../log.js';
import { DEFAULT_AUGMENT_CONFIG } from './augment.js';
import { BACKEND_CHOICES, type BackendChoice } from './backend.js';
import { DEFAULT_TRAIN_OPTIONS, runTraining, type TrainOptions } from './run.js';

function parseInteger(min: number) {
  return (value: string): number => {
    const parsed = Number(value);
    if (!Number.isInteger(parsed) || parsed < min) {
      throw new InvalidArgumentError(`Expected an integer of at least ${min}, received ${value}.`);
    }
    return parsed;
  };
}

function parsePositive(value: string): number {
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed <= 0) {
    throw new InvalidArgumentError(`Expected a number greater than 0, received ${value}.`);
  }
  return parsed;
}

function parseNonNegative(value: string): number {
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed < 0) {
    throw new InvalidArgumentError(`Expected a number of at least 0, received ${value}.`);
  }
  return parsed;
}

/** Parses "2,2,2" into stage depths. */
function parseDepths(value: string): number[] {
  const depths = value.split(',').map((part) => Number(part.trim()));
  if (depths.length === 0 || depths.some((d) => !Number.isInteger(d) || d < 1)) {
    throw new InvalidArgumentError(`Expected comma-separated block counts of at least 1, such as 1,1,1; received ${value}.`);
  }
  return depths;
}

interface TrainCommandOptions {
  shards: string;
  output: string;
  epochs: number;
  batchSize: number;
  backend: BackendChoice;
  seed: number;
  workers: number;
  lr: number;
  finalLr: number;
  warmupEpochs: number;
  weightDecay: number;
  trustCoefficient: number;
  prototypes: number;
  width: number;
  depths: number[];
  embeddingDim: number;
  hiddenDim: number;
  epsilon: number;
  temperature: number;
  queueLength: number;
  queueStartEpoch: number;
  freezePrototypesSteps: number;
  globalSize: number;
  localSize: number;
  localCrops: number;
  shuffleBuffer: number;
  checkpointEvery: number;
  resume: boolean;
  maxSteps?: number;
}

export function trainOptionsFromCommand(options: TrainCommandOptions): TrainOptions {
  const defaults = DEFAULT_TRAIN_OPTIONS;
  return {
    ...defaults,
    shardsDir: options.shards,
    outputDir: options.output,
    epochs: options.epochs,
    batchSize: options.batchSize,
    seed: options.seed,
    backend: options.backend,
    workers: options.workers,
    shuffleBuffer: options.shuffleBuffer,
    model: {
      ...defaults.model,
      width: options.width,
      stageDepths: options.depths,
      hiddenDim: options.hiddenDim,
      embeddingDim: options.embeddingDim,
      prototypes: options.prototypes,
    },
    swav: {
      ...defaults.swav,
      epsilon: options.epsilon,
      temperature: options.temperature,
      queueLength: options.queueLength,
      queueStartEpoch: options.queueStartEpoch,
      freezePrototypesSteps: options.freezePrototypesSteps,
    },
    optimizer: {
      ...defaults.optimizer,
      baseLr: options.lr,
      finalLr: options.finalLr,
      warmupEpochs: options.warmupEpochs,
      weightDecay: options.weightDecay,
      trustCoefficient: options.trustCoefficient,
    },
    augment: {
      ...DEFAULT_AUGMENT_CONFIG,
      globalSize: options.globalSize,
      localSize: options.localSize,
      localCrops: options.localCrops,
    },
    // Images are reduced to twice the global crop size, enough detail for crops of any scale.
    maxShortSide: 2 * options.globalSize,
    checkpointEverySteps: options.checkpointEvery,
    resume: options.resume,
    maxSteps: options.maxSteps,
  };
}

/** Adds `train` to the CLI: trains SwAV on a folder of WebDataset shards. */
export function registerTrainCommand(program: Command): void {
  const d = DEFAULT_TRAIN_OPTIONS;
  program
    .command('train')
    .description('Train a SwAV model on WebDataset shards and export its encoder')
    .requiredOption('--shards <dir>', 'folder of WebDataset .tar shards')
    .requiredOption('--output <dir>', 'folder for checkpoints, metrics.jsonl and the exported encoder')
    .option('--epochs <n>', 'passes over the data', parseInteger(1), d.epochs)
    .option('--batch-size <n>', 'images per step', parseInteger(2), d.batchSize)
    .addOption(new Option('--backend <name>', 'TensorFlow.js backend; auto tries them in the order listed').choices([...BACKEND_CHOICES]).default(d.backend))
    .option('--seed <n>', 'seed of initialisation, data order and augmentation', parseInteger(0), d.seed)
    .option('--workers <n>', 'decoding and augmentation threads (0: main thread)', parseInteger(0), d.workers)
    .option('--lr <rate>', 'learning rate after warm-up', parsePositive, d.optimizer.baseLr)
    .option('--final-lr <rate>', 'learning rate at the end of the cosine decay', parseNonNegative, d.optimizer.finalLr)
    .option('--warmup-epochs <n>', 'epochs of linear learning-rate warm-up', parseNonNegative, d.optimizer.warmupEpochs)
    .option('--weight-decay <n>', 'weight decay', parseNonNegative, d.optimizer.weightDecay)
    .option('--trust-coefficient <n>', 'LARS trust coefficient (0: plain SGD)', parseNonNegative, d.optimizer.trustCoefficient)
    .option('--prototypes <n>', 'number of prototypes K (about ten times the expected classes)', parseInteger(1), d.model.prototypes)
    .option('--width <n>', 'channels of the first stage; each later stage doubles them', parseInteger(1), d.model.width)
    .option('--depths <list>', 'residual blocks per stage, comma-separated', parseDepths, d.model.stageDepths)
    .option('--hidden-dim <n>', 'hidden units of the projection head', parseInteger(1), d.model.hiddenDim)
    .option('--embedding-dim <n>', 'dimension of the normalised embedding', parseInteger(1), d.model.embeddingDim)
    .option('--epsilon <n>', 'Sinkhorn entropy regularisation', parsePositive, d.swav.epsilon)
    .option('--temperature <n>', 'softmax temperature of the swapped prediction', parsePositive, d.swav.temperature)
    .option('--queue-length <n>', 'past embeddings kept per assignment crop (0: no queue; a multiple of the batch size)', parseInteger(0), d.swav.queueLength)
    .option('--queue-start-epoch <n>', 'epoch (0-based) from which the queue is filled', parseInteger(0), d.swav.queueStartEpoch)
    .option('--freeze-prototypes-steps <n>', 'steps during which the prototypes are not updated', parseInteger(0), d.swav.freezePrototypesSteps)
    .option('--global-size <px>', 'side of the 2 global crops in pixels', parseInteger(4), d.augment.globalSize)
    .option('--local-size <px>', 'side of the small crops in pixels', parseInteger(4), d.augment.localSize)
    .option('--local-crops <n>', 'small crops per image', parseInteger(0), d.augment.localCrops)
    .option('--shuffle-buffer <n>', 'samples held for shuffling', parseInteger(1), d.shuffleBuffer)
    .option('--checkpoint-every <steps>', 'steps between checkpoints (one is also saved after each epoch)', parseInteger(1), d.checkpointEverySteps)
    .option('--max-steps <n>', 'stop after this many steps in total, with a checkpoint', parseInteger(1))
    .option('--no-resume', 'start over even if --output holds a checkpoint')
    .action(async (options: TrainCommandOptions) => {
      const controller = new AbortController();
      const stop = (): void => {
        log.info('interrupt received; stopping after the current step with a checkpoint');
        controller.abort();
      };
      process.once('SIGINT', stop);
      try {
        const result = await runTraining({ ...trainOptionsFromCommand(options), signal: controller.signal });
        process.stdout.write(`${JSON.stringify(result)}\n`);
      } finally {
        process.off('SIGINT', stop);
      }
    });
}
