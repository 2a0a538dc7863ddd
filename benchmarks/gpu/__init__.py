"""Every GPU figure of sio in one prepared run, written as it goes.

Usage: python benchmarks/gpu --device cuda|cpu [--small] [--out FILE.json] [--nvidia DIR]
[--budget SECONDS]

What it measures, in this order (most wanted first, so a run cut short keeps those):

1. ceiling: the compute-only ceiling of the training step. ResNet-18 (CIFAR stem, 10 classes),
   the trainer's step (cross-entropy, SGD + Nesterov, weight decay, a LambdaLR step) on one
   synthetic uint8 batch resident on the device, at B = 128 and 512: fp32, bf16 autocast +
   channels_last (train/gpu.py), the same with the one-gather crop/flip of train/gpu.py from a
   resident padded set (what on-device augmentation costs), and with cudnn.benchmark.
2. trainer: ``sio.train.train_classifier`` (its public API, a TrainConfig) on a 32x32 RGB records
   shard set, alpha = 0.8, crop 4 + flip, records streaming (DataLoader workers) and resident,
   B = 128 and 512; its images/s is the trainer's own log line (epochs after the first), and
   ``vs_ceiling`` its ratio to the ceiling of the same precision and layout (target >= 0.8).
   Each run is once fp32 and once with the trainer's own GPU options (TrainConfig
   ``precision: bf16, channels_last: true, device_augment: true``; ``compile: true`` in section
   6), what a user sets in ``pipeline.yaml``; ``trainer_options`` in the JSON lists them. Pinned
   memory, non-blocking copies, cudnn.benchmark and a synchronised epoch clock are the
   trainer's own on a GPU (train/accelerate.py).
3. loader: batches of the trainer's loader alone, in this process with one torch thread (what one
   DataLoader worker does): records and PNG streaming, resident (on the device), and the
   one-gather crop/flip from a resident padded set; alpha = 0.8.
4. generation (random weights, images/s of ``sample``, uint8 on the host): the built-in DDPM
   (sio's default UNet at 32x32 RGB, DDIM-20); google/ddpm-cifar10-32's UNet (35.7 M) with
   DDIM-50, fp32 and bf16; BigGAN-deep at 128 px (pytorch-pretrained-biggan's default config,
   50.4 M), fp32 and bf16; sio's StyleGAN2 at stylegan2-ada's CIFAR-10 configuration, fp32 and
   bf16.
5. evaluation: every detector on a CIFAR-scale activations file built here from a seeded
   generator (50,000 x 512 train, 1,000 val, 9,000 test, six OOD sets of 10,000), written and
   read back with ``load_activations``; ODIN needs images and is listed as skipped. The detectors
   run on the host (numpy, faiss): a GPU changes nothing there.
6. compile: torch.compile of the StyleGAN2 and of the ceiling's model (bf16, B = 512), and the
   trainer with its GPU options plus ``compile: true`` (resident, B = 512; its first epoch,
   which compiles, is dropped like every first epoch). Compile time is recorded apart.
7. nvidia (with ``--nvidia DIR``, a stylegan2-ada-pytorch checkout): NVIDIA's Generator at the
   CIFAR-10 configuration (num_fp16_res 4, conv_clamp 256), its default path and force_fp32.

Each measurement records images/s (or seconds), its sizes and the peak GPU memory
(``torch.cuda.max_memory_allocated`` from a reset; null on the CPU). GPU times are CUDA events
after warm-up; host loaders use wall time. After each measurement the whole JSON is rewritten
atomically (``complete: false`` until the end), so a run killed at any point leaves valid JSON
with every number taken so far. A measurement that would pass ``--budget`` seconds (default 420
on cuda: the plan below ends near 5 minutes) is recorded as ``not_run``; one that fails records
its error, and the script exits 1.

Plan on an H200 (times estimated from the H100 figures in shared/reference/performance.md; the
JSON's own replace them): imports and the shard sets (20,000 real + 10,000 synthetic 32x32, in
records and PNG) ~25 s; ceiling 8 x 50 steps ~15 s; trainer 4 runs (8 with bf16 options) of 3
epochs, 200 steps at B = 128 and 100 at B = 512, ~50-100 s; loader ~15 s; generation ~60 s
(DDIM-50 at batch 1024 is ~5-7 s a call); evaluation ~15 s; compile ~60-120 s; nvidia ~60-120 s
(its CUDA plugins compile on the first call). About 4-6 minutes in all, under the 420 s budget;
run it as ``timeout 530 python3 benchmarks/gpu --device cuda --out $OUT/gpu.json``.
``--small`` keeps every path and shrinks every size (small_cnn, 16x16 images, B = 8 and 16,
narrow networks, tiny sets, one torch thread, StyleGAN2 and the ceiling compiled with the
``eager`` backend) so a 2-core CPU runs it in seconds; its numbers are a smoke test only.

Layout: one module per section (ceiling.py, trainer.py, loader.py, generation.py,
evaluation.py, compiling.py, nvidia_stylegan2.py) over one harness (harness.py: the sizes, the
JSON rewritten after every measurement, the timers, the table; sets.py: the shard sets), run by
main.py; ``python benchmarks/gpu`` runs __main__.py.
"""
