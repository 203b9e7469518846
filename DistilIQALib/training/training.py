"""Training: the teacher ensemble (k folds grouped by patient) and the distilled student.

Mirrors the paper's tasks, defaults and log files, and fixes the published code's defects:
folds are grouped by patient; the distillation term is *added* to the ground-truth loss and
gated per sample (used where the teachers' mean is within ``gate`` of the label); each
teacher's best snapshot is picked on its held-out fold automatically; the student is chosen
on patients it never trained on.

Long runs resume from ``last.pt`` after an interruption (a checkpoint holds only tensors and
numbers and is loaded with ``weights_only=True``). Under ``torchrun`` the same functions run
with DistributedDataParallel (NCCL on GPUs, gloo on CPUs); rank 0 writes logs and snapshots.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..errors import InputError
from ..progress import PROGRESS_PREFIX
from ..quality.device import resolve_device
from ..quality.metrics import agreement
from ..quality.model import QualityViT, architecture_from_preset, build_model, score_from_outputs
from ..quality.preprocessing import Window
from ..quality.weights import ModelInfo, ScoreDefinition, load_weights, save_weights
from .datasets import dataset_info, load_images, load_split

ProgressCallback = Callable[[int, int, str], None]


@dataclass
class TrainingConfig:
    """Hyper-parameters; the defaults are the paper's (teachers: 500 epochs, batch 10)."""

    preset: str = "paper"
    input_size: int = 512
    epochs: int = 500
    batch_size: int = 10
    lr: float = 1e-3
    min_lr: float = 1e-6
    momentum: float = 0.9
    optimizer: str = "sgd"
    folds: int = 5
    seed: int = 0
    device: str = "auto"
    distillation_weight: float = 0.75
    gate: float = 0.05
    augment: bool = True
    amp: bool = True
    purpose: str = "trained"
    #: A weights file to start from (fine-tuning) instead of random weights; output ``k`` of a new model
    #: starts from output ``k`` of this one (cycling when it has fewer).
    init_weights: Optional[str] = None
    #: Further input windows as ``(width_hu, level_hu)`` pairs (a brain window: ``((80, 40),)``), one channel each.
    extra_windows: Tuple[Tuple[float, float], ...] = ()
    #: Start the output layer afresh (small weights, the mean training label as bias): for fine-tuning a model
    #: onto a label of another scale.
    reset_head: bool = False

    @property
    def windows(self) -> Tuple[Window, ...]:
        """:attr:`extra_windows` as windows."""
        return tuple(Window(float(width), float(level)) for width, level in self.extra_windows)

    def architecture(self):
        return architecture_from_preset(self.preset, input_size=self.input_size,
                                        input_channels=1 + len(self.extra_windows))


# --- distributed helpers --------------------------------------------------------------------------

def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _world() -> int:
    return dist.get_world_size() if _distributed() else 1


def setup_distributed(device_spec: str) -> torch.device:
    """Join the process group when launched by ``torchrun``; returns this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _distributed():
        use_cuda = torch.cuda.is_available() and device_spec != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if use_cuda:
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local_rank)
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    return resolve_device(device_spec)


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def initial_model(config: TrainingConfig, num_outputs: int, first_output: int = 0,
                  label_mean: Optional[float] = None) -> QualityViT:
    """A new model of ``config.preset``: random, or ``config.init_weights`` with its outputs
    ``first_output, first_output + 1, ...`` (cycling) as the new model's outputs. Input channels the base model
    lacks (a further window) start with zero weights, so the new model starts out computing what the base did;
    with ``config.reset_head`` the outputs start afresh at ``label_mean``."""
    model = build_model(config.architecture(), num_outputs)
    if config.init_weights:
        base, info = load_weights(config.init_weights)
        if replace(info.architecture, input_channels=model.arch.input_channels) != model.arch or \
                info.architecture.input_channels > model.arch.input_channels:
            raise InputError(f"{config.init_weights} is a '{info.preset}' model at {info.input_size} pixels; it "
                             f"cannot start a '{config.preset}' model at {config.input_size} pixels")
        state = base.state_dict()
        rows = [(first_output + k) % info.num_outputs for k in range(num_outputs)]
        state["head.weight"], state["head.bias"] = state["head.weight"][rows], state["head.bias"][rows]
        first = "stem.blocks.0.0.weight"
        if state[first].shape[1] < model.arch.input_channels:
            grown = torch.zeros_like(model.state_dict()[first])
            grown[:, :state[first].shape[1]] = state[first]
            state[first] = grown
        model.load_state_dict(state)
    if config.reset_head:
        with torch.no_grad():
            model.head.weight.normal_(0.0, 1e-3)
            model.head.bias.fill_(float(label_mean or 0.0))
    return model


# --- folds, augmentation, prediction --------------------------------------------------------------

def patient_folds(patients: Sequence[str], folds: int, seed: int = 0) -> List[List[int]]:
    """Indices of each fold; all images of a patient fall in the same fold."""
    unique = sorted(set(patients))
    if len(unique) < folds:
        raise InputError(f"{folds} folds need at least {folds} patients; the data have {len(unique)}")
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[p]: n % folds for n, p in enumerate(order)}
    return [[i for i, patient in enumerate(patients) if fold_of[patient] == k] for k in range(folds)]


def augment(batch: torch.Tensor, generator: torch.Generator, max_shift: float = 0.08) -> torch.Tensor:
    """Random flips, 90-degree rotations, transposition and shifts (up to ``max_shift`` of the side,
    filled with air), per image.

    Every transform moves whole pixels: resampling (zoom, free rotation) would smooth or alias the noise,
    and noise texture is what the score measures, so the label would no longer fit the image."""
    out = torch.empty_like(batch)
    size = batch.shape[-1]
    limit = int(size * max_shift)
    for n in range(batch.shape[0]):
        image = batch[n]
        choice = torch.randint(0, 8, (1,), generator=generator).item()
        if choice & 1:
            image = image.flip(-1)
        if choice & 2:
            image = image.transpose(-1, -2)
        image = torch.rot90(image, int(torch.randint(0, 4, (1,), generator=generator).item()), dims=(-2, -1))
        if limit:
            dy, dx = (int(v) for v in torch.randint(-limit, limit + 1, (2,), generator=generator))
            shifted = torch.zeros_like(image)
            shifted[..., max(dy, 0):size + min(dy, 0), max(dx, 0):size + min(dx, 0)] = \
                image[..., max(-dy, 0):size + min(-dy, 0), max(-dx, 0):size + min(-dx, 0)]
            image = shifted
        out[n] = image
    return out


@torch.inference_mode()
def predict(model: QualityViT, images: torch.Tensor, device: torch.device, batch_size: int = 16) -> np.ndarray:
    """Raw outputs ``(N, num_outputs)`` of ``model`` on preprocessed ``images``."""
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device).float()
        outputs.append(model(batch).float().cpu())
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, model.num_outputs), dtype=np.float32)


def l1_l2(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's loss, per sample: mean absolute plus mean squared error over the outputs."""
    difference = prediction - target
    return difference.abs().mean(dim=1) + (difference * difference).mean(dim=1)


def training_loss(outputs: torch.Tensor, label: torch.Tensor, teachers: Optional[torch.Tensor] = None,
                  distillation_weight: float = 0.75, gate: float = 0.05) -> torch.Tensor:
    """Mean over the batch of L1+L2 to the label, plus, for a student, ``distillation_weight`` times
    L1+L2 of output k to teacher k on the samples where the teachers' mean is within ``gate`` of
    the label. ``outputs`` ``(B, N)``, ``label`` ``(B, 1)``, ``teachers`` ``(B, N)``."""
    loss = l1_l2(outputs, label.expand_as(outputs))
    if teachers is not None:
        trusted = ((teachers.mean(dim=1, keepdim=True) - label).abs() <= gate).float().squeeze(1)
        loss = loss + distillation_weight * trusted * l1_l2(outputs, teachers)
    return loss.mean()


# --- the training loop shared by teachers and student ---------------------------------------------

@dataclass
class _Run:
    name: str
    snapshot_dir: Path
    log_file: Path
    info: ModelInfo


def _emit(kind: str, **fields) -> None:
    if os.environ.get("DISTILIQA_PROGRESS_LINES") and _rank() == 0:
        print(PROGRESS_PREFIX + json.dumps({"task": kind, **fields}), flush=True)


def _optimiser(model: torch.nn.Module, config: TrainingConfig):
    if config.optimizer == "sgd":
        optimiser = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    elif config.optimizer == "adamw":
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r} (sgd or adamw)")
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, config.epochs),
                                                           eta_min=config.min_lr)
    return optimiser, scheduler


def _restore_checkpoint(last: Path, model: torch.nn.Module, optimiser, scheduler) -> dict:
    """The run's state after its last finished epoch: model, optimiser and schedule are restored from ``last``
    in place; without a checkpoint, the state of a run that has not started."""
    state = {"epoch": 0, "best_overall": -math.inf, "best_loss": math.inf, "best_epoch": 0}
    if last.is_file():
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimiser.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = {key: checkpoint[key] for key in state}
    return state


def _save_checkpoint(last: Path, model: torch.nn.Module, optimiser, scheduler, state: dict) -> None:
    """Everything a resumed run needs, written whole or not at all (a kill mid-write keeps the previous one)."""
    temporary = last.with_name("last.pt.partial")
    torch.save({"model": model.state_dict(), "optimizer": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(), **state}, temporary)
    os.replace(temporary, last)


def _fit(run: _Run, model: QualityViT, config: TrainingConfig, device: torch.device,
         train_images: torch.Tensor, train_targets: torch.Tensor, val_images: torch.Tensor,
         val_labels: np.ndarray, teacher_targets: Optional[torch.Tensor] = None,
         progress: Optional[ProgressCallback] = None) -> Path:
    """Train ``model``; keeps ``last.pt`` for resuming and ``best.safetensors`` by held-out overall."""
    run.snapshot_dir.mkdir(parents=True, exist_ok=True)
    last, best = run.snapshot_dir / "last.pt", run.snapshot_dir / "best.safetensors"
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimiser, scheduler = _optimiser(model, config)
    state = _restore_checkpoint(last, model, optimiser, scheduler)
    if state["epoch"] >= config.epochs and best.is_file():
        return best
    if _rank() == 0 and state["epoch"] > 0:
        _truncate_log(run.log_file, state["epoch"])
    network = model
    if _distributed():
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    started = time.monotonic()
    first_epoch = state["epoch"]
    if _rank() == 0 and first_epoch == 0:
        with run.log_file.open("w", newline="") as stream:
            csv.writer(stream).writerow(["epoch", "lr", "train_loss", "val_loss", "val_PLCC", "val_SROCC",
                                         "val_KROCC", "val_overall", "seconds"])
    for epoch in range(first_epoch, config.epochs):
        epoch_started = time.monotonic()
        network.train()
        generator = torch.Generator().manual_seed(config.seed * 100003 + epoch)
        order = torch.randperm(len(train_images), generator=generator)[_rank()::_world()]
        losses = []
        stepped = False
        for start in range(0, len(order), config.batch_size):
            index = order[start:start + config.batch_size]
            if len(index) < 2 and len(order) > 1:
                continue  # BatchNorm needs more than one sample
            batch = train_images[index].float()
            if config.augment:
                batch = augment(batch, generator)
            batch = batch.to(device, non_blocking=True)
            if device.type == "cuda":
                batch = batch.contiguous(memory_format=torch.channels_last)
            target = train_targets[index].to(device)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                outputs = network(batch)
            outputs = outputs.float()
            teachers = None if teacher_targets is None else teacher_targets[index].to(device)
            loss = training_loss(outputs, target, teachers, config.distillation_weight, config.gate)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scale = scaler.get_scale()
            scaler.step(optimiser)
            scaler.update()
            # GradScaler skips the optimiser step when float16 gradients overflowed (and lowers the scale).
            stepped = stepped or not use_amp or scaler.get_scale() >= scale
            losses.append(loss.item())
        lr = optimiser.param_groups[0]["lr"]
        if stepped:
            # Stepping the schedule of an optimiser that never stepped (every AMP step of the epoch
            # skipped) is what torch warns about; the schedule then waits for the first real step.
            scheduler.step()
        if _rank() == 0:
            outputs = predict(model, val_images, device)
            scores = score_from_outputs(torch.from_numpy(outputs)).numpy()
            metrics = agreement(scores, val_labels) if len(val_labels) > 1 else {}
            val_loss = float(l1_l2(torch.from_numpy(scores)[:, None], torch.from_numpy(val_labels)[:, None]).mean())
            overall = metrics.get("overall", -val_loss)
            overall = -val_loss if math.isnan(overall) else overall
            improved = overall > state["best_overall"] or (overall == state["best_overall"]
                                                           and val_loss < state["best_loss"])
            if improved:
                state.update(best_overall=overall, best_loss=val_loss, best_epoch=epoch + 1)
                run.info.provenance.update(epoch=epoch + 1, val_overall=round(overall, 5),
                                           val_loss=round(val_loss, 6))
                save_weights(best, model, run.info)
            state["epoch"] = epoch + 1
            train_loss = float(np.mean(losses)) if losses else float("nan")
            with run.log_file.open("a", newline="") as stream:
                csv.writer(stream).writerow([epoch + 1, f"{lr:.3e}", f"{train_loss:.6f}", f"{val_loss:.6f}"]
                                            + [f"{metrics.get(k, float('nan')):.5f}" for k in
                                               ("PLCC", "SROCC", "KROCC", "overall")]
                                            + [f"{time.monotonic() - epoch_started:.2f}"])
            _save_checkpoint(last, model, optimiser, scheduler, state)
            done = epoch + 1 - first_epoch
            eta = (time.monotonic() - started) / done * (config.epochs - epoch - 1)
            _emit(run.name, epoch=epoch + 1, epochs=config.epochs, train_loss=round(train_loss, 6),
                  val_overall=round(overall, 5), eta_s=round(eta, 1))
            if progress is not None:
                progress(epoch + 1, config.epochs, run.name)
        _barrier()
    return best


def _truncate_log(log_file: Path, epochs_done: int) -> None:
    """Drop log rows of epochs after the checkpoint (written before an interruption)."""
    if not log_file.is_file():
        return
    with log_file.open(newline="") as stream:
        rows = list(csv.reader(stream))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= epochs_done]
    with log_file.open("w", newline="") as stream:
        csv.writer(stream).writerows(kept)


def _model_info(config: TrainingConfig, num_outputs: int, data_dir: Path, role: str, **provenance) -> ModelInfo:
    info = dataset_info(data_dir)
    score = info.get("score") or {}
    return ModelInfo(
        preset=config.preset,
        architecture=config.architecture(),
        extra_windows=config.windows,
        num_outputs=num_outputs,
        score=ScoreDefinition(**score) if score else ScoreDefinition(),
        provenance={"role": role, "purpose": config.purpose, "dataset_type": info.get("type", "list"),
                    "training": {k: v for k, v in asdict(config).items() if k != "device"},
                    "torch": torch.__version__, **provenance},
    )


# --- tasks ----------------------------------------------------------------------------------------

def train_teachers(data_dir: Path | str, output_dir: Path | str, config: TrainingConfig,
                   folds: Optional[Sequence[int]] = None, progress: Optional[ProgressCallback] = None) -> List[Path]:
    """Train one teacher per fold; returns ``teachers/teacher_{k}.safetensors`` paths."""
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    device = setup_distributed(config.device)
    torch.manual_seed(config.seed)
    split = load_split(data_dir, "train")
    fold_indices = patient_folds(split.patients, config.folds, config.seed)
    images = load_images(split, config.input_size, extra_windows=config.windows)
    labels = torch.from_numpy(split.labels)[:, None]
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "teachers").mkdir(exist_ok=True)
    results = []
    for k in (range(config.folds) if folds is None else folds):
        held_out = fold_indices[k]
        train_index = [i for fold, indices in enumerate(fold_indices) if fold != k for i in indices]
        torch.manual_seed(config.seed * 1000 + k)
        model = initial_model(config, 1, first_output=k, label_mean=float(split.labels[train_index].mean()))
        info = _model_info(config, 1, data_dir, "teacher", fold=k,
                           validation_patients=sorted({split.patients[i] for i in held_out}))
        run = _Run(f"teacher fold {k}", output_dir / f"snapshots_fold_{k}", output_dir / f"train_info_fold_{k}.csv",
                   info)
        best = _fit(run, model, config, device, images[train_index], labels[train_index], images[held_out],
                    split.labels[held_out], progress=progress)
        target = output_dir / "teachers" / f"teacher_{k}.safetensors"
        if _rank() == 0:
            shutil.copyfile(best, target)
        results.append(target)
        _barrier()
    return results


def train_student(data_dir: Path | str, output_dir: Path | str, config: TrainingConfig,
                  teacher_files: Optional[Sequence[Path | str]] = None,
                  progress: Optional[ProgressCallback] = None) -> Path:
    """Distil the teachers into a student with one output per teacher; returns ``student.safetensors``."""
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    device = setup_distributed(config.device)
    default_teachers = sorted((output_dir / "teachers").glob("teacher_*.safetensors"))
    teacher_files = [Path(p) for p in (teacher_files or default_teachers)]
    if not teacher_files:
        raise InputError(f"no teachers in {output_dir / 'teachers'}: run 'train-teacher' first")
    split = load_split(data_dir, "train")
    # The student is selected on patients it never trains on (one fold's worth of patients).
    fold_indices = patient_folds(split.patients, max(2, config.folds), config.seed + 1)
    validation = fold_indices[0]
    train_index = [i for indices in fold_indices[1:] for i in indices]
    teacher_inputs = {}
    teacher_outputs = []
    for path in teacher_files:
        teacher, teacher_info = load_weights(path, device)
        key = (teacher_info.input_size, teacher_info.extra_windows)
        if key not in teacher_inputs:
            teacher_inputs[key] = load_images(split, key[0], extra_windows=key[1])
        teacher_outputs.append(score_from_outputs(torch.from_numpy(
            predict(teacher, teacher_inputs[key], device))).numpy())
    teacher_targets = torch.from_numpy(np.stack(teacher_outputs, axis=1).astype(np.float32))
    images = teacher_inputs.get((config.input_size, config.windows))
    if images is None:
        images = load_images(split, config.input_size, extra_windows=config.windows)
    labels = torch.from_numpy(split.labels)[:, None]
    torch.manual_seed(config.seed)
    model = initial_model(config, len(teacher_files), label_mean=float(split.labels[train_index].mean()))
    info = _model_info(config, len(teacher_files), data_dir, "student",
                       teachers=[path.name for path in teacher_files],
                       selection_patients=sorted({split.patients[i] for i in validation}))
    run = _Run("student", output_dir / "snapshots_students", output_dir / "train_info_student.csv", info)
    best = _fit(run, model, config, device, images[train_index], labels[train_index], images[validation],
                split.labels[validation], teacher_targets=teacher_targets[train_index], progress=progress)
    target = output_dir / "student.safetensors"
    if _rank() == 0:
        shutil.copyfile(best, target)
    _barrier()
    return target
