"""`vesselctl train`: LoRA fine-tuning of Sa2VA on a prepared dataset, resumable and observable.

Reads top to bottom like a recipe; the order matters where a comment says why. Writes into the
run folder: settings.yaml, run_info.json, deepspeed_config.json (ZeRO strategies), metrics.jsonl,
train.log, tb/ (TensorBoard), checkpoints/ (see training/checkpoint.py) and result.json.

Exit behaviour: SIGTERM saves a checkpoint and returns a result with status "interrupted" (the
CLI then exits 143 so a scheduler sees the job was stopped and can requeue it with --resume auto).
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vesselctl.errors import ConfigError, TrainingError
from vesselctl.files import atomic_write_json, run_provenance
from vesselctl.settings.base import write_resolved_settings
from vesselctl.settings.train import TrainSettings
from vesselctl.training import checkpoint as ckpt
from vesselctl.training.launch import (
    DistEnv,
    check_environment,
    choose_strategy,
    export_dist_env,
    launcher_env,
    needs_relaunch,
    relaunch,
)

RESULT_NAME = "result.json"
LAUNCH_SETTINGS_NAME = "launch_settings.yaml"
LAUNCH_ID_ENV = "VESSELCTL_LAUNCH_ID"


@dataclass
class TrainResult:
    """What a training run produced; also written to result.json."""

    run_dir: str
    status: str  # "completed" | "interrupted"
    steps: int
    total_steps: int
    strategy: str
    world_size: int
    effective_batch: int
    precision: str
    resumed_from: str | None
    last_checkpoint: str | None
    best_step: int | None
    best_val_dice: float | None
    last_val: dict[str, float] = field(default_factory=dict)
    final_metrics: dict[str, Any] = field(default_factory=dict)
    trainable: dict[str, Any] = field(default_factory=dict)
    gradient_checkpointing: dict[str, Any] = field(default_factory=dict)
    encoder_cache: dict[str, Any] | None = None
    data_workers: int = 0
    train_time_s: float = 0.0
    launch_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run(settings: TrainSettings) -> TrainResult:
    """Train as ``settings`` say; under torchrun this is one rank's share of the job."""
    # 1. Inputs that need no heavy imports are checked first, so mistakes fail in a second.
    if settings.out is None:
        raise ConfigError("setting 'out' is missing: pass --out RUN_DIR (the run folder)")
    if settings.data.dataset is None:
        raise ConfigError(
            "setting 'data.dataset' is missing: pass --data PREPARED_DIR (from vesselctl prepare)"
        )
    run_dir = Path(settings.out)

    # 2. More processes than this one and no launcher: start torchrun and wait for it. The
    #    resume check runs first so a mistake is reported once, not by every worker.
    if needs_relaunch(settings.distributed):
        ckpt.resolve_resume(run_dir, settings.resume)
        return _relaunch(settings, run_dir)
    dist = launcher_env() or DistEnv()
    resume_from = ckpt.resolve_resume(run_dir, settings.resume)
    resume_progress = ckpt.read_progress(resume_from) if resume_from else None

    import torch

    from vesselctl.training.data import KeyedDataset, SeededCollate, SegDataset, StepBatchSampler
    from vesselctl.training.deepspeed import write_deepspeed_config
    from vesselctl.training.engine import build_engine
    from vesselctl.training.logs import RunLog
    from vesselctl.training.loop import LoopConfig, TrainingLoop, seed_everything
    from vesselctl.training.trainable import SA2VA_NEW_TOKENS, apply_trainable

    # 3. Device and process group before the model: the model is built on this rank's device.
    cuda = torch.cuda.is_available()
    if cuda and dist.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"process {dist.rank} is local rank {dist.local_rank} but this machine shows "
            f"{torch.cuda.device_count()} GPU(s); set --gpus to at most the GPUs per machine"
        )
    device = torch.device("cuda", dist.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if dist.is_distributed and not torch.distributed.is_initialized():
        export_dist_env(dist)
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    bf16 = settings.precision == "bf16" or (settings.precision == "auto" and bf16_ok)
    if bf16 and not bf16_ok:
        raise ConfigError(
            "precision 'bf16' needs a CUDA GPU with bf16 support (Ampere or newer); use "
            "precision auto or fp32"
        )

    if settings.speed.encoder_cache:
        from vesselctl.model.acceleration import check_encoder_cache_allowed

        check_encoder_cache_allowed(settings.data.augment.enabled)

    # 4. Same seed on every rank so newly initialised weights agree; then a per-rank seed so
    #    dropout differs between ranks.
    seed_everything(settings.seed, settings.deterministic)
    model, processor = _build_model(settings, bf16)
    start_source = _keep_random_start(settings, model, processor, run_dir, dist.is_main)
    if settings.processor.overrides():
        processor = type(processor)(
            processor.tokenizer, processor.options, **settings.processor.overrides()
        )
    new_token_ids = _new_token_ids(processor.tokenizer, SA2VA_NEW_TOKENS)
    model, report = apply_trainable(model, settings.lora, settings.trainable, new_token_ids)
    torch.manual_seed(settings.seed + 1000 * dist.rank + 1)
    encoder_cache = _attach_encoder_cache(settings, model, cuda)

    # 5. Strategy from what the frozen model weighs and what one card holds.
    frozen_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gpu_memory = torch.cuda.get_device_properties(device).total_memory if cuda else None
    strategy = choose_strategy(
        settings.distributed.strategy, dist.world_size, cuda, frozen_bytes, gpu_memory
    )
    if strategy == "single" and dist.is_distributed:
        strategy = "ddp"
    check_environment(strategy, cuda, settings.distributed.offload)
    if settings.model.compile_mode == "reduce-overhead" and (strategy != "single" or not cuda):
        raise ConfigError(
            f"model.compile_mode reduce-overhead (CUDA graphs) needs one CUDA GPU process "
            f"without DeepSpeed; this run is strategy {strategy} on "
            f"{'CUDA' if cuda else 'the CPU'}: use compile_mode default"
        )

    # 6. Data: the sampler starts where the checkpoint stopped.
    optim = settings.optim
    effective_batch = optim.micro_batch * optim.accumulation * dist.world_size
    augment = settings.data.augment if settings.data.augment.enabled else None
    train_set = SegDataset(settings.data.dataset, settings.data.train_split, augment, settings.seed)
    val_set = None
    if settings.validation.every_steps:
        val_set = SegDataset(
            settings.data.dataset,
            settings.data.val_split,
            None,
            settings.seed,
            settings.validation.max_images,
        )
    start_epoch = int(resume_progress["epoch"]) if resume_progress else 0
    start_step = int(resume_progress["step_in_epoch"]) if resume_progress else 0
    sampler = StepBatchSampler(
        len(train_set),
        optim.micro_batch,
        optim.accumulation,
        dist.rank,
        dist.world_size,
        settings.seed,
        start_epoch,
        start_step,
    )
    total_steps = optim.max_steps or max(1, math.ceil(optim.epochs * sampler.steps_per_epoch))
    workers = settings.data.num_workers
    if workers is None:
        from vesselctl.data.loading import default_loader_workers

        workers = default_loader_workers(cuda, dist.world_size)
    # On a GPU the workers hand over uint8 pixels and the batch is normalised there (in
    # Sa2VABatch.to): a quarter of the bytes to copy between processes and to hash for the
    # encoder cache (InternVL 512x512: 140 -> 64 ms of worker CPU per sample, BENCHMARKS.md).
    # The saved processor keeps its own option.
    loader_processor = processor.replace_options(normalise_on_device=True) if cuda else processor
    loader = torch.utils.data.DataLoader(
        KeyedDataset(train_set),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=SeededCollate(
            loader_processor, settings.seed, train=True, encoder_keys=encoder_cache is not None
        ),
        pin_memory=cuda,
        persistent_workers=workers > 0,
        # Its own generator: creating an iterator must not draw from the global torch RNG, or a
        # resumed run's dropout would differ from an uninterrupted one.
        generator=torch.Generator().manual_seed(settings.seed),
    )

    # 7. Optimiser, schedule and engine (see training/engine.py for what each strategy keeps in
    #    which precision).
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_resolved_settings(settings, run_dir)
    built = build_engine(model, settings, strategy, dist.world_size, device, bf16, total_steps)
    engine, batch_dtype, autocast_dtype = built.engine, built.batch_dtype, built.autocast_dtype
    if built.deepspeed_config is not None and dist.is_main:
        write_deepspeed_config(built.deepspeed_config, run_dir)

    # 8. Logs (rank 0 only) and the loop; resume restores weights, optimiser, RNG, position.
    log = RunLog(
        run_dir,
        enabled=dist.is_main,
        tensorboard=settings.logging.tensorboard,
        progress=settings.logging.progress and _stdout_is_tty(),
        total_steps=total_steps,
        start_step=int(resume_progress["global_step"]) if resume_progress else 0,
    )
    if dist.is_main:
        atomic_write_json(run_dir / "run_info.json", run_provenance(include_gpus=True))
    checkpointing: dict[str, Any] = {}  # filled before the first step (see below)
    loop = TrainingLoop(
        engine=engine,
        config=LoopConfig(
            total_steps=total_steps,
            accumulation=optim.accumulation,
            effective_batch=effective_batch,
            steps_per_epoch=sampler.steps_per_epoch,
            log_every=settings.logging.every_steps,
            val_every=settings.validation.every_steps,
            val_threshold=settings.validation.threshold,
            val_micro_batch=settings.validation.micro_batch,
            checkpoint_every=settings.checkpoint.every_steps,
            keep_last=settings.checkpoint.keep_last,
            save_final=settings.checkpoint.save_final,
            device=device,
            batch_dtype=batch_dtype,
            autocast_dtype=autocast_dtype,
            strategy=strategy,
        ),
        dist=dist,
        run_dir=run_dir,
        log=log,
        trainable_meta=lambda step: _trainable_meta(
            settings, report, step, start_source, checkpointing
        ),
        val_dataset=val_set if val_set is not None and len(val_set) else None,
        processor=processor,
    )
    import time

    started = time.perf_counter()
    try:
        # Before restore: a resumed run's RNG state then comes from the checkpoint regardless.
        checkpointing |= _decide_gradient_checkpointing(
            settings,
            model,
            built,
            strategy,
            device,
            dist,
            SeededCollate(processor, settings.seed, train=True, encoder_keys=False),
            KeyedDataset(train_set),
        )
        log.event(
            f"gradient checkpointing {'on' if checkpointing['enabled'] else 'off'} "
            f"(model.gradient_checkpointing {checkpointing['setting']}: {checkpointing['reason']})"
        )
        if encoder_cache is not None:
            log.event(
                f"frozen-encoder cache on (in {'GPU' if encoder_cache.storage == 'cuda' else 'CPU'}"
                f" memory, limit {settings.speed.encoder_cache_max_gib or 'none'} GiB)"
            )
        if resume_from is not None:
            loop.restore(resume_from)
            log.event(f"resumed from {resume_from} at step {loop.state.global_step}")
        log.event(
            f"start: strategy {strategy}, {dist.world_size} process(es), effective batch "
            f"{effective_batch}, {total_steps} steps, precision {'bf16' if bf16 else 'fp32'}, "
            f"{workers} data worker(s) per process, "
            f"trainable {report.trainable:,} of {report.total:,} parameters {report.groups}"
        )
        outcome = loop.run(iter(loader), started)
        if encoder_cache is not None:
            stats = encoder_cache.stats
            log.event(
                f"frozen-encoder cache: {stats.hits} hits, {stats.misses} misses, "
                f"{stats.stored_bytes / 2**30:.2f} GiB stored"
            )
    except TrainingError as exc:
        log.event(f"error: {exc}")
        raise
    finally:
        log.close()

    result = TrainResult(
        run_dir=str(run_dir),
        status="interrupted" if outcome.stopped_by_signal else "completed",
        steps=outcome.state.global_step,
        total_steps=total_steps,
        strategy=strategy,
        world_size=dist.world_size,
        effective_batch=effective_batch,
        precision="bf16" if bf16 else "fp32",
        resumed_from=str(resume_from) if resume_from else None,
        last_checkpoint=str(outcome.last_checkpoint) if outcome.last_checkpoint else None,
        best_step=outcome.state.best_step,
        best_val_dice=outcome.state.best_val_dice,
        last_val=outcome.last_val,
        final_metrics=outcome.last_metrics,
        trainable=report.as_dict(),
        gradient_checkpointing=checkpointing,
        encoder_cache=asdict(encoder_cache.stats) if encoder_cache is not None else None,
        data_workers=workers,
        train_time_s=outcome.train_time_s,
        launch_id=os.environ.get(LAUNCH_ID_ENV),
    )
    if dist.is_main:
        atomic_write_json(run_dir / RESULT_NAME, result.to_json())
    if dist.is_distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


def _build_model(settings: TrainSettings, bf16: bool) -> tuple[Any, Any]:
    """The model and processor from the configured source. Without bf16 training the weights
    load in fp32 (dtype auto would pick bf16 on a GPU, and nothing would cast the inputs)."""
    from vesselctl.model.load import load_model

    source = settings.model
    if source.dtype == "auto" and not bf16:
        source = source.model_copy(update={"dtype": "float32"})
    if source.gradient_checkpointing == "auto":
        # Decided later by one measured step (_decide_gradient_checkpointing); start without.
        source = source.model_copy(update={"gradient_checkpointing": False})
    return load_model(source)


def _attach_encoder_cache(settings: TrainSettings, model: Any, cuda: bool) -> Any:
    """The frozen-encoder cache serving ``model`` when speed.encoder_cache asks for it (after
    apply_trainable, so enable_encoder_cache can refuse encoders that train), else None."""
    if not settings.speed.encoder_cache:
        return None
    from vesselctl.model.acceleration import FrozenEncoderCache, enable_encoder_cache

    speed = settings.speed
    cache = FrozenEncoderCache(
        storage="cuda" if speed.encoder_cache_storage == "gpu" and cuda else "cpu",
        max_bytes=None
        if speed.encoder_cache_max_gib is None
        else int(speed.encoder_cache_max_gib * 2**30),
    )
    enable_encoder_cache(model, cache)
    return cache


def _decide_gradient_checkpointing(
    settings: TrainSettings,
    model: Any,
    built: Any,
    strategy: str,
    device: Any,
    dist: DistEnv,
    collate: Any,
    dataset: Any,
) -> dict[str, Any]:
    """Resolve model.gradient_checkpointing; for 'auto' one training step of the real micro-batch
    size without checkpointing decides (acceleration.choose_gradient_checkpointing). Returns
    what was decided and why, for train.log and result.json."""
    import torch

    from vesselctl.model import acceleration
    from vesselctl.model.acceleration import probe_train_step

    setting = settings.model.gradient_checkpointing
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    record: dict[str, Any] = {"setting": str(setting).lower(), "peak_without_gib": None}
    if setting != "auto":
        return {**record, "enabled": base.llm_gradient_checkpointing, "reason": "set"}
    if strategy in ("zero2", "zero3") and device.type == "cuda":
        # A probe step through DeepSpeed would advance its accumulation counters and reduce
        # gradients; without a measurement the safe choice is on.
        base.set_llm_gradient_checkpointing(True)
        return {**record, "enabled": True, "reason": f"not measured under {strategy}; on"}

    probed: list[bool] = []

    def probe_step() -> None:
        probed.append(True)
        count = min(settings.optim.micro_batch, len(dataset))
        batch = collate([dataset[(0, i)] for i in range(count)])
        batch = batch.to(device, built.batch_dtype)
        # fork_rng: the probe's dropout draws must not shift the run's random stream.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            # last_micro=False: under DDP no gradient is reduced across ranks.
            def step() -> None:
                built.engine.micro_step(batch, False, lambda output: None)

            # With model.compile the probe is the first compiled forward and backward: a
            # compile failure goes eager, and the step is then measured again eagerly.
            if probe_train_step(model, step) is not None:
                built.engine.optimizer.zero_grad(set_to_none=True)
                step()

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # AdamW's two fp32 states per trainable value exist only after the first optimiser step.
    choice = acceleration.choose_gradient_checkpointing(
        model, probe_step, device, pending_bytes=8 * trainable
    )
    if probed:  # never under DeepSpeed (see above), so the engine is a TorchEngine here
        built.engine.optimizer.zero_grad(set_to_none=True)
    enabled = choice.enabled
    if dist.is_distributed:
        # Ranks measure separately; all follow the most cautious one.
        flag = torch.tensor([1.0 if enabled else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if bool(flag.item()) != enabled:
            enabled = True
            base.set_llm_gradient_checkpointing(True)
            choice.reason += "; on because another rank needs it"
    return {
        **record,
        "enabled": enabled,
        "peak_without_gib": choice.peak_without_gib,
        "limit_gib": None if choice.limit_gib == float("inf") else choice.limit_gib,
        "reason": choice.reason,
    }


def _new_token_ids(tokenizer: Any, tokens: tuple[str, ...]) -> list[int]:
    """Ids of Sa2VA's added tokens that the tokenizer holds."""
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in tokens if t in vocab]


#: Random-weight presets up to this size are saved with the run (run_dir/base_model) so its
#: checkpoints can be converted; larger ones are benchmark-only and would cost gigabytes.
KEEP_RANDOM_START_MAX_BYTES = 1 << 30
BASE_MODEL_DIR = "base_model"


def _keep_random_start(
    settings: TrainSettings, model: Any, processor: Any, run_dir: Path, is_main: bool
) -> dict[str, Any]:
    """The model source to record in trainable.json.

    A random-weight preset exists only in memory, so a checkpoint trained from it could never be
    converted or evaluated. Small presets (the tiny quickstart) are therefore written once to
    run_dir/base_model and recorded as a vesselctl model folder; the same seed rebuilds the same
    weights on resume, so an existing folder is kept.
    """
    source = settings.model.model_dump(mode="json")
    if settings.model.kind != "preset":
        return source
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if size > KEEP_RANDOM_START_MAX_BYTES:
        return source
    base_dir = (run_dir / BASE_MODEL_DIR).resolve()
    if is_main and not (base_dir / "config.json").is_file():
        from vesselctl.model.load import save_model_dir

        save_model_dir(model, processor, base_dir, overwrite=True)
    return {**source, "kind": "vesselctl", "model_dir": str(base_dir)}


def _trainable_meta(
    settings: TrainSettings,
    report: Any,
    step: int,
    model_source: dict[str, Any],
    checkpointing: dict[str, Any],
) -> dict[str, Any]:
    """trainable.json: enough to rebuild the model these weights belong to (see checkpoint.py)."""
    model_source = dict(model_source)
    if "enabled" in checkpointing:  # 'auto' recorded as what it resolved to
        model_source["gradient_checkpointing"] = checkpointing["enabled"]
    return {
        "format": ckpt.TRAINABLE_FORMAT,
        "step": step,
        "seed": settings.seed,
        "name_prefix": report.name_prefix,
        "lora": {
            "enabled": settings.lora.enabled,
            "r": settings.lora.r,
            "alpha": settings.lora.alpha,
            "dropout": settings.lora.dropout,
            "rslora": settings.lora.rslora,
            "targets": settings.lora.targets,
            "target_pattern": report.lora_target_pattern,
        },
        "modules_to_save": report.modules_to_save,
        "trainable_token_indices": report.trainable_token_indices,
        "trainable_groups": settings.trainable.model_dump(mode="json"),
        "model_source": model_source,
        "parameter_counts": report.groups,
    }


def _stdout_is_tty() -> bool:
    import sys

    return sys.stdout.isatty()


def _relaunch(settings: TrainSettings, run_dir: Path) -> TrainResult:
    """Run this node's processes under torchrun and return the result rank 0 wrote."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # One file per node: on a shared file system every node's launcher writes its own.
    name = LAUNCH_SETTINGS_NAME.replace(".yaml", f"_node{settings.distributed.node_rank}.yaml")
    settings_file = write_resolved_settings(settings, run_dir, name=name)
    launch_id = uuid.uuid4().hex
    os.environ[LAUNCH_ID_ENV] = launch_id
    try:
        code = relaunch(settings.distributed, settings_file)
    finally:
        os.environ.pop(LAUNCH_ID_ENV, None)
    result_path = run_dir / RESULT_NAME
    data = None
    if result_path.is_file():
        import json

        data = json.loads(result_path.read_text(encoding="utf-8"))
        if data.get("launch_id") != launch_id:
            data = None  # an older run's result
    if settings.distributed.node_rank != 0 and code == 0:
        # Only node 0's rank 0 writes result.json; other nodes report their own success.
        return TrainResult(
            run_dir=str(run_dir), status="completed", steps=0, total_steps=0,
            strategy=settings.distributed.strategy, world_size=settings.distributed.world_size,
            effective_batch=settings.effective_batch, precision=settings.precision,
            resumed_from=None, last_checkpoint=None, best_step=None, best_val_dice=None,
            launch_id=launch_id,
        )  # fmt: skip
    if data is None:
        raise TrainingError(
            f"the {settings.distributed.world_size} training processes failed (torchrun exit "
            f"code {code}); the first worker's error is printed above and in {run_dir}/train.log"
        )
    return TrainResult(**data)
