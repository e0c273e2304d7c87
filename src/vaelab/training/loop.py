"""Training loop: the run's optimiser for a number of steps (or epochs) on dynamically binarized batches,
with the training protocol of training.protocol: a learning-rate schedule, averaged weights, validation on
held-out training images with the best weights kept, and early stopping.

The training images stay on the device as one uint8 tensor; each step takes a shuffled slice of
indices and draws a fresh Bernoulli binarization there. No per-item Python runs per step.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import torch

from .. import data as data_mod
from .. import objectives
from ..devices import check_compile_toolchain, resolve_device
from ..errors import RunDirError, TrainingDiverged, TrainingInterrupted, warn
from ..models import build_model, model_class
from ..progress import progress_bar
from . import captured, checkpoints, distributed, files, runs
from . import resume as resume_mod
from .batches import Batches
from .board import TensorBoard
from .config import RunConfig, check_labels, record_plugin, resolve_data_source, run_label, save_json, validate
from .guard import NonFiniteGuard
from .memory import check_step_memory
from .optimizers import make_optimizer
from .protocol import Protocol, validation_record
from .stopping import StopRequest
from .threads import auto_threads, step_flops
from .validation import split_validation, steps_per_epoch


def gradients_finite(parameters: list[torch.Tensor]) -> torch.Tensor:
    """Whether every gradient entry is finite, as a boolean tensor. One sum per gradient, cheaper
    than a norm (docs/performance.md); inf - inf and nan propagate to the total, and a total that
    overflows float32 counts as non-finite too, which only gradients beyond any sane scale reach."""
    sums = [p.grad.sum() for p in parameters if p.grad is not None]
    return torch.isfinite(torch.stack(sums).sum()) if sums else torch.tensor(True)


def prepare_run_dir(run_dir: Path) -> None:
    """RUN_DIR made, or found empty; anything else is one line naming the run directory (train's run_dir, the
    command's --out), before anything is created."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} is a file; choose a new one (--out)")
    above = next((p for p in run_dir.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise RunDirError(f"run directory {run_dir} cannot be made: {above} is a file; choose a new one (--out)")
    try:
        # A folder holding only owner.json (what made it, written before training starts) counts as empty.
        if run_dir.exists() and any(p.name != runs.OWNER_FILE for p in run_dir.iterdir()):
            raise RunDirError(f"run directory {run_dir} already exists and is not empty; choose a new one (--out)")
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a folder above it that cannot be written, a full disk
        raise RunDirError(f"run directory {run_dir} cannot be made: {exc.strerror or exc} (--out)") from None


def training_loss(model: torch.nn.Module, batch: dict, cfg: RunConfig, beta: float) -> objectives.LossOutput:
    """The run's objective for one batch: the model's terms, turned into a loss by vaelab.objectives."""
    terms = model(batch, cfg.objective.k)
    return objectives.loss(terms, cfg.objective.kind, beta, cfg.objective.free_bits, cfg.objective.free_bits_group)


def train(cfg: RunConfig, run_dir: str | Path, progress: bool = True, resume: bool = False) -> dict:
    """Train the model described by `cfg`, writing everything into `run_dir`. Returns the summary.

    With resume=True, `run_dir` must hold an earlier run of the same config: training continues from
    its newest checkpoint with model, Adam, step, RNG and batch order restored, so on the CPU the
    result is the same as an uninterrupted run. Under torchrun each process trains on its shard of
    every batch and only rank 0 writes (see vaelab.distributed)."""
    run_dir = Path(run_dir)
    resolve_data_source(cfg)
    if not resume:  # a resumed run keeps the config its checkpoints were written under
        record_plugin(cfg)
    # Settings are checked against the dataset's image shape, not MNIST's: a registered dataset declares it, the
    # user's images are read for it (once: the decoded array is cached), still before the run directory is made.
    if cfg.data.dataset in data_mod.REGISTRY or cfg.data.path:
        shape = data_mod.dataset_for(cfg.data).image_shape
        cfg.model.x_dim, cfg.model.image_shape = math.prod(shape), tuple(shape)
    validate(cfg)
    ctx = distributed.setup(resolve_device(cfg.train.device))
    locks: list[runs.RunLock] = []
    stop = StopRequest(at_once=True)  # until the first step: setting up stops at once on a signal
    threads = torch.get_num_threads()
    try:
        return _train(cfg, run_dir, progress, resume, ctx, locks, stop)
    finally:
        torch.set_num_threads(threads)  # a Python session that trains goes on with the threads it had
        for lock in locks:
            lock.release()
        distributed.teardown(ctx)
        # Last: torchrun's SIGTERM to a process still leaving the group must not end it before its one line.
        stop.restore()


def _train(cfg: RunConfig, run_dir: Path, progress: bool, resume: bool, ctx: distributed.Context,
           locks: list, stop: StopRequest) -> dict:
    device, main = ctx.device, ctx.is_main
    origin = runs.provenance()  # before any step: the commit of the code this process runs
    distributed.check_divisible(ctx, cfg.train.batch_size)
    if cfg.train.cuda_graphs:
        captured.check_device(device, ctx.world_size)
    peer_error = f"--resume: stopped with rank 0, which could not resume {run_dir} (its error says why)"
    # On resume, before the data is read: the lock, then settings fixed for the run that config.json changes
    # refused. None for a new run, else the settings the resume changes (resume.RESUMABLE only).
    changes = ctx.rank_0_first(lambda: resume_mod.lock_and_compare(run_dir, cfg, locks), peer_error) if resume else None
    # Everything that can fail on user input happens before the run directory is created.
    train_set = data_mod.load_for(cfg.data, "train", device)
    cfg.model.x_dim, cfg.model.image_shape = train_set.x_dim, train_set.image_shape
    validate(cfg)  # again with the shape the files have, should they differ from the one the dataset declares
    check_labels(cfg, train_set)
    train_set, held_out = split_validation(train_set, cfg)  # the held-out images never reach a batch
    per_epoch = steps_per_epoch(len(train_set), cfg)
    if cfg.train.epochs:  # recorded so in config.json: the run's length in steps is what resumes and reports read
        cfg.train.steps = cfg.train.epochs * per_epoch
    check_step_memory(cfg, device)  # a step too large for the device is refused before anything big is allocated
    torch.manual_seed(cfg.train.seed)
    batches = Batches(train_set, cfg, model_class(cfg.model.name).spec.labels, cfg.model.binary_pixels, device)
    if batches.labelled is not None:
        distributed.check_divisible(ctx, len(batches.labelled), "the labelled subset")
    if cfg.train.compile:
        check_compile_toolchain(device)
    model = build_model(cfg.model).to(device)
    if model.spec.starts_from is not None and not resume:  # on resume the checkpoint holds those weights
        runs.start_from_source(model, cfg, device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.train.threads or auto_threads(step_flops(
            model, {key: ctx.shard(value) for key, value in batches.sample().items()},
            lambda m, batch: training_loss(m, batch, cfg, cfg.objective.beta).loss)))
        origin["threads"] = torch.get_num_threads()  # provenance read torch's default before this
    optimizer = make_optimizer(model, cfg.train, device)
    protocol = Protocol(model, optimizer, cfg, len(train_set), held_out)
    # Mixed precision: the networks run in bfloat16, densities in float32 (distributions.full_precision).
    # A captured step casts the weights inside the graph: autocast's cache of casts must stay off (CUDA graphs' rule).
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16",
                              cache_enabled=not cfg.train.cuda_graphs)
    objective = distributed.wrap(model, lambda m, batch, beta: training_loss(m, batch, cfg, beta), ctx,
                                 find_unused=not model.trains_every_parameter)
    names, sums, since_log, done, elapsed_before, skipped = None, None, 0, 0, 0.0, 0
    logged: list[dict] = []  # on resume, the metrics kept from before the checkpoint
    stopped_early = False  # on resume, a run whose validations had already stopped it
    if resume:
        # Rank 0 first: it moves damaged checkpoints aside, and the other processes then read what is left.
        restored = ctx.rank_0_first(lambda: files.remove_stale_temporaries(run_dir) or
                                    resume_mod.restore(run_dir, model, optimizer, batches, device, protocol), peer_error)
        if not main:
            restored = resume_mod.restore(run_dir, model, optimizer, batches, device, protocol)
        if restored is None:
            if (run_dir / runs.WEIGHTS_FILE).is_file():
                raise RunDirError(f"--resume: {run_dir} has final weights but no checkpoint to continue from")
            if main:
                warn(f"{run_dir} has no checkpoint yet (killed in its first {cfg.train.checkpoint_seconds:g} s?): "
                     f"starting again from step 0 with its saved config and seed")
        else:
            done, names, sums, since_log = restored.step, restored.log_names, restored.log_sums, restored.since_log
            elapsed_before, skipped = restored.elapsed_seconds, restored.skipped_steps
        # A run killed after its final checkpoint but before its weights is finished below, not refused;
        # so is one whose weights do not match the manifest.
        if done > cfg.train.steps:
            raise RunDirError(f"--resume: {run_dir} is at step {done}, past --steps {cfg.train.steps}")
        stopped_early = protocol.validation is not None and protocol.validation.exhausted
        if done >= cfg.train.steps or stopped_early:
            problem = runs.final_weights_problem(run_dir)  # reads and hashes the weights: only when they matter
            if problem is None and stopped_early:
                raise RunDirError(f"--resume: {run_dir} stopped early at step {done}, after {cfg.train.patience} validations without a "
                                  f"better bound; pass --set train.patience=N (more than {cfg.train.patience}) to train on")
            if problem is None:
                raise RunDirError(f"--resume: {run_dir} already finished {done} of {cfg.train.steps} steps; pass --steps N to train longer")
            if problem != "missing":
                warn(f"{run_dir / runs.WEIGHTS_FILE}: damaged ({problem}); writing it again from the final checkpoint")
        if main:
            logged = files.truncate_jsonl(run_dir / runs.METRICS_FILE, done)
    else:
        error = None
        if main:
            try:
                prepare_run_dir(run_dir)
                locks.append(runs.RunLock(run_dir))  # a second process that also found the folder empty stops here
            except RunDirError as exc:
                error = exc
        if not ctx.all_true(error is None):  # every process stops, not only rank 0
            raise error or RunDirError(f"run directory {run_dir}: rank 0 could not use it (--out)")
    if main:
        resume_mod.record(run_dir, done, cfg, changes)
        save_json(cfg, run_dir / runs.CONFIG_FILE)

    def checkpoint(step: int) -> None:
        if not main:
            return
        state = {"rng_cpu": torch.get_rng_state(), "batch_order": batches.sampler.order}
        if device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(device)
        if sums is not None:
            state["log_sums"] = sums
        since_log, skipped, _ = guard.read()
        protocol_tensors, protocol_metadata = protocol.checkpoint_state()
        checkpoints.save_checkpoint(run_dir, model, optimizer, step, cfg.train.keep_checkpoints, {**state, **protocol_tensors},
                                    {"batch_position": batches.sampler.pos, "since_log": since_log, "log_names": json.dumps(names),
                                     "skipped_steps": skipped, "config": json.dumps(cfg.to_dict()),
                                     "elapsed_seconds": round(elapsed_before + time.perf_counter() - start, 3), **protocol_metadata})

    guard = NonFiniteGuard(optimizer, device, good=since_log, skipped=skipped)
    metrics_path = run_dir / runs.METRICS_FILE
    board = TensorBoard(run_dir / runs.TENSORBOARD_DIR, model, cfg, purge_step=done + 1 if resume else None) if main else None
    start = last_checkpoint = time.perf_counter()
    # A logged mean loss beyond this is divergence, not learning: a fair coin costs 0.69 nats a binary pixel.
    loss_limit = cfg.train.max_loss_per_element * cfg.model.x_dim if cfg.train.max_loss_per_element else math.inf
    bar = progress_bar(total=cfg.train.steps, initial=done, disable=not (progress and main), dynamic_ncols=True, mininterval=0.5,
               desc=f"train {run_label(cfg)}")
    # The last logged means, for the summary of a run with nothing left to do (validation lines have no loss).
    record: dict = next((r for r in reversed(logged) if "loss" in r), {})
    record_steps = min(cfg.train.log_every, cfg.train.steps)  # how many steps those means cover
    parameters = list(model.parameters())  # once: walking the module tree costs ~0.1 ms a step
    model.train()
    shown: dict = {}  # the progress bar's postfix: the last logged means and validation bounds
    last = done  # the step training ends at: the last of train.steps, or the validation that stopped it early

    def take_step(batch: dict, beta) -> tuple[objectives.LossOutput, torch.Tensor | None]:
        """Forward, backward and the guarded optimiser step; the step's outputs and its weight for the logged sums."""
        with autocast:
            out = objective(batch, beta)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg.train.grad_normalize:  # AdamNormGrad: each gradient at unit norm (a NaN stays NaN for the check below)
            grads = [p.grad for p in parameters if p.grad is not None]
            torch._foreach_div_(grads, torch._foreach_add(torch._foreach_norm(grads), 1e-7))
        if cfg.train.grad_clip:  # the clipping norm also tells whether any gradient is inf / nan
            grads_finite = torch.isfinite(torch.nn.utils.clip_grad_norm_(parameters, cfg.train.grad_clip))
        else:
            grads_finite = gradients_finite(parameters)
        # No host read here: the guard skips a non-finite step on the device (training/guard.py).
        return out, guard.step(ctx.all_ok(torch.isfinite(out.loss.detach()) & grads_finite))

    # train.cuda_graphs: the same step, captured once as a CUDA graph and replayed (training/captured.py).
    run_step = captured.CapturedStep(take_step, device) if cfg.train.cuda_graphs else take_step
    for step in range(done + 1, (done if stopped_early else cfg.train.steps) + 1):
        signum = stop.requested(ctx, step - 1, cfg.train.log_every)
        if signum:
            bar.close()
            checkpoint(step - 1)  # the state after the last whole step: resume continues exactly from there
            if main:
                board.close()
            # No process exits before rank 0 has written: torchrun stops the others once one has exited.
            ctx.wait_for_all()
            name = signal.Signals(signum).name
            raise TrainingInterrupted(f"{name} at step {step - 1} of {cfg.train.steps}: checkpoint written; continue with "
                                      f"vaelab train --resume {run_dir}", signum)
        if cfg.train.compile and step == done + 2:  # after one eager step (distributed.compile_objective)
            distributed.compile_objective(objective)
        beta = objectives.annealed_beta(step - 1, cfg.objective.beta, cfg.objective.kl_warmup_steps)
        batch = {key: ctx.shard(value) for key, value in batches.next().items()}
        out, weight = run_step(batch, beta)
        protocol.after_step()
        last = step
        bar.update(1)
        if weight is not None:
            values = torch.stack([out.loss.detach(), out.nelbo, out.kl, out.rec, *out.extras.values()])
            if sums is None:
                names, sums = ["loss", "nelbo", "kl", "rec", *out.extras], torch.zeros_like(values)
            sums += torch.where(weight, values, 0.0)  # a skipped step's NaN never reaches the sums
        stopping = False
        if protocol.validation is not None and protocol.validation.due(step):
            result, improved = protocol.validate(step)
            if main:
                line = validation_record(step, per_epoch, result, protocol, elapsed_before + time.perf_counter() - start)
                files.append_jsonl(metrics_path, line)
                board.scalars(step, {key[len("validation_"):]: value for key, value in line.items()
                                     if key.startswith("validation_") and value is not None}, group="validation")
                if improved:
                    runs.save_best_weights(run_dir, protocol.kept_model, step, result[protocol.validation.key], protocol.validation.key)
            shown.update(val=f"{result[protocol.validation.key]:.2f}", best=f"{protocol.validation.best:.2f}")
            bar.set_postfix(shown)
            stopping = protocol.validation.exhausted  # early stopping: what follows is this step's last log and checkpoint
        if step % cfg.train.log_every == 0 or step == cfg.train.steps or stopping:
            since_log, skipped, longest = guard.read()
            if longest >= cfg.train.max_nonfinite_steps:
                raise TrainingDiverged(
                    f"training stopped at step {step}: {longest} consecutive steps had a non-finite loss or gradient "
                    f"(train.max_nonfinite_steps is {cfg.train.max_nonfinite_steps}, checked every train.log_every steps; "
                    f"try a lower --lr or --set train.grad_clip=10); last good checkpoint: {checkpoints.newest(run_dir) or 'none yet'}")
            guard.new_interval()
            if since_log:
                means = dict(zip(names, (ctx.mean(sums) / since_log).tolist()))
                record_steps = since_log
                elapsed = elapsed_before + time.perf_counter() - start
                record = {"step": step, **means, "beta": beta, **({"lr": protocol.lr} if protocol.scheduled else {}),
                          "skipped_steps": skipped, "seconds": round(elapsed, 3),
                          "images_per_second": round(step * cfg.train.batch_size / elapsed, 1)}
                if main:
                    files.append_jsonl(metrics_path, record)
                    board.scalars(step, record)
                shown.update(loss=f"{means['loss']:.2f}", kl=f"{means['kl']:.2f}", rec=f"{means['rec']:.2f}")
                bar.set_postfix(shown)
                sums.zero_()
                if abs(means["loss"]) > loss_limit:
                    raise TrainingDiverged(
                        f"training stopped at step {step}: the mean loss {means['loss']:.4g} is beyond train.max_loss_per_element "
                        f"({cfg.train.max_loss_per_element:g} nats per element); try a lower --lr or --set train.grad_clip=10; "
                        f"last checkpoint: {checkpoints.newest(run_dir) or 'none yet'}")
        if stopping:
            break  # the checkpoint, weights and summary below are those of this step
        if step % cfg.train.checkpoint_every == 0 and step < cfg.train.steps:
            checkpoint(step)
            last_checkpoint = time.perf_counter()
            if main:
                board.samples(step, stop)  # a signal cuts it short, and the next step's check stops the run
        elif cfg.train.checkpoint_seconds and step < cfg.train.steps and time.perf_counter() - last_checkpoint >= cfg.train.checkpoint_seconds:
            checkpoint(step)  # by the clock as well, so a kill loses at most checkpoint_seconds of work
            last_checkpoint = time.perf_counter()
    bar.close()
    # The end, in the order a signal (which only sets stop.signum here) leaves it: the final checkpoint (resumable),
    # the weights and summary (complete), then the optional sample grid, cut short by a signal.
    stop.defer()  # a resumed run with no step left to take never checked it
    checkpoint(last)
    _, skipped, _ = guard.read()
    train_seconds = elapsed_before + time.perf_counter() - start
    summary = {
        "model": cfg.model.name,
        "label": run_label(cfg),
        "steps": last,
        "epochs": round(last / per_epoch, 3),
        "train_seconds": round(train_seconds, 2),
        "images_per_second": round(last * cfg.train.batch_size / train_seconds, 1),
        "resumed_from_step": done if resume else None,
        "skipped_steps": skipped,
        "device": str(device),
        **origin,
        "processes": ctx.world_size,
        "final_steps": record_steps,
        "final": {k: v for k, v in record.items() if k not in ("step", "beta", "lr", "seconds", "images_per_second", "skipped_steps")},
        **training_end(protocol, cfg, last),
    }
    if main:
        runs.save_weights(run_dir, protocol.kept_model)
        files.atomic_write_text(run_dir / runs.SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        board.samples(last, stop)
        board.close()
    # The other processes wait while rank 0 writes, so none exits with a peer still connected (see
    # distributed.teardown). Only a finished run gets here: after an error a peer may never arrive.
    ctx.wait_for_all()
    if stop.signum:  # received after the last step's check: the command still ends with the signal's code
        raise TrainingInterrupted(f"{signal.Signals(stop.signum).name} after the last step ({last} of {cfg.train.steps}): the run is "
                                  f"complete, {runs.WEIGHTS_FILE} and {runs.SUMMARY_FILE} written", stop.signum)
    return summary


def training_end(protocol: Protocol, cfg: RunConfig, last: int) -> dict:
    """What ended the run ("stopped": "budget" or "early stopping") and, for a run that validates, its best bound."""
    validation = protocol.validation
    if validation is None:
        return {"stopped": "budget"}
    return {"stopped": "early stopping" if validation.exhausted else "budget",
            "validation": {"bound": validation.key, "best": validation.best if math.isfinite(validation.best) else None,
                           "best_step": validation.best_step, "validations": validation.count,
                           "since_best": validation.since_best, "patience": cfg.train.patience}}
