"""One engine for every family with a likelihood: ELBO, IWELBO, training, predictions.

The minibatch ELBO charges each perturbation's global ``log p - log q`` to its cells with weight
``1 / N_t`` (N_t = cells of the split being evaluated with a dose of t), so summed over a
split every observed perturbation's global term counts once (models.md §3.1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from samsbench import models as registry
from samsbench.models.base import LatentModel, MeanEffectModel
from samsbench.nn import host_reads_free

log = logging.getLogger(__name__)
# Argument checks of torch distributions cost time on every step; a non-finite loss is caught
# explicitly instead (``train`` stops with an error naming the step).
torch.distributions.Distribution.set_default_validate_args(False)

TRAINING_DEFAULTS = {
    "max_steps": 1000,
    "batch_size": 512,
    "lr": 3e-4,
    "weight_decay": 1e-6,
    "n_particles": 5,
    "val_every": None,  # None: once per epoch of the training split, as the reference
    "checkpoint_every": None,  # None: at every validation
    "grad_clip": None,
    "iwelbo_particles": 100,
    "global_lr_multiplier": 1.0,
}
# Largest particles x cells x genes block evaluated at once outside training (memory bound).
BLOCK_ELEMENTS = 1 << 24


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to serve the step's large temporaries (tens of MB, freed and
    reallocated every step) from its heap and to keep freed memory instead of returning it to
    the system. With the defaults every step maps fresh pages, and the page faults on first
    touch cost 10-15 % of a CPU training step (bench/bench_training.py). Process-wide; a no-op
    where the C library is not glibc. Returns whether the setting was applied."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # 32 MiB is glibc's upper bound for the mmap threshold; larger blocks (the dataset) are
    # still mapped separately and returned when freed.
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def draw(dist, n_particles: int) -> torch.Tensor:
    """A reparameterised draw with a leading particle axis."""
    if len(dist.batch_shape) >= 3:
        return dist.rsample()
    return dist.rsample((n_particles,))


def inverse_counts(counts: torch.Tensor) -> torch.Tensor:
    return torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))


def particle_elbo(model: LatentModel, x, dose, inv_counts, n_particles: int, globals_=None,
                  with_globals: bool = True) -> torch.Tensor:
    """Per particle and cell: log p(x|.) + local log p - log q (+ weighted global terms)."""
    if globals_ is None and model.samples_column_subsets and host_reads_free(x):
        # Only the perturbations of this minibatch's cells: the others add nothing to its ELBO.
        columns = dose.present_columns()
        g, global_ratio = model.sample_globals(n_particles, columns)
        dose = dose.restrict(columns)
        inv_counts = inv_counts[columns] if inv_counts is not None else None
    elif globals_ is None:
        g, global_ratio = model.sample_globals(n_particles)
    else:
        g, global_ratio = globals_
    ctx = model.cell_context(dose, g)
    q = model.local_posterior(model.normalize(x), ctx)
    u = draw(q, n_particles)
    local = (model.local_prior(ctx).log_prob(u) - q.log_prob(u)).sum(-1)
    library = x.sum(-1)
    loglik = model.decoder.log_prob(model.decoder_input(u, ctx), x, library,
                                    model.decoder.cell_terms(x))
    elbo = loglik + local
    if with_globals and global_ratio is not None:
        # Each cell carries 1 / N_t of the global term of each perturbation t it received.
        elbo = elbo + dose.charge(global_ratio * inv_counts)
    return elbo


def minibatches(index: torch.Tensor, batch_size: int):
    for start in range(0, len(index), batch_size):
        yield index[start : start + batch_size]


@torch.no_grad()
def split_loss(model, data, split: str, n_particles: int, batch_size: int) -> float:
    """Negative ELBO per cell on a split, with that split's perturbation counts."""
    index = data.split_index(split)
    inv = inverse_counts(data.dose_counts(split))
    total = 0.0
    for rows in minibatches(index, batch_size):
        x, dose = data.X[rows], data.dosage(data.codes[rows])
        total += -particle_elbo(model, x, dose, inv, n_particles).mean().item() * len(rows)
    return total / max(len(index), 1)


@torch.no_grad()
def iwelbo(model, data, split: str, n_particles: int = 100, seed: int = 0) -> float:
    """Held-out IWELBO: 100 global samples drawn once and shared over the split; global priors
    are not scored (models.md §5.1)."""
    torch.manual_seed(seed)
    index = data.split_index(split)
    if len(index) == 0:
        raise ValueError(f"the {split!r} split has no cells")
    globals_ = model.sample_globals(n_particles)
    batch = max(1, BLOCK_ELEMENTS // (n_particles * data.X.shape[1]))
    total = 0.0
    for rows in minibatches(index, batch):
        x, dose = data.X[rows], data.dosage(data.codes[rows])
        log_w = particle_elbo(model, x, dose, None, n_particles, globals_, with_globals=False)
        total += (torch.logsumexp(log_w, 0) - math.log(n_particles)).double().sum().item()
    return total / len(index)


@torch.no_grad()
def predicted_means(model, data, labels, n_particles: int = 2500, chunk: int = 128,
                    library_size: float = 1e4, seed: int = 0) -> np.ndarray:
    """Mean log2(CP10k+1) of sampled counts per perturbation (models.md §5.3): fresh prior
    local latents per condition, globals shared within a chunk of particles, fixed seed."""
    if isinstance(model, MeanEffectModel):
        return np.asarray(model.predict_means(list(labels)), dtype=np.float64)
    torch.manual_seed(seed)
    dose = data.dosage_for_labels(list(labels))
    sums = torch.zeros(len(labels), data.X.shape[1], dtype=torch.float64, device=data.X.device)
    for start in range(0, n_particles, chunk):
        n_p = min(chunk, n_particles - start)
        g, _ = model.sample_globals(n_p)
        rows_per_block = max(1, BLOCK_ELEMENTS // (n_p * data.X.shape[1]))
        for r0 in range(0, len(labels), rows_per_block):
            block = data.dosage(dose.codes[r0 : r0 + rows_per_block])
            ctx = model.cell_context(block, g)
            u = draw(model.local_prior(ctx), n_p)
            h = model.decoder_input(u, ctx)
            lib = torch.full(h.shape[:-1], library_size, device=h.device)
            x = model.decoder.sample(h, lib)
            total = x.sum(-1, keepdim=True)
            y = torch.where(total > 0, torch.log2(1e4 * x / total.clamp_min(1e-12) + 1),
                            torch.zeros_like(x))
            sums[r0 : r0 + rows_per_block] += y.sum(0).double()
    return (sums / n_particles).cpu().numpy()


# -- checkpoints ---------------------------------------------------------------------------

def atomic_save(obj, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def model_record(model, family: str, hp: dict, data) -> dict:
    record = {"family": family, "hp": hp, "genes": data.genes, "columns": data.columns,
              "encoding": data.encoding}
    if isinstance(model, MeanEffectModel):
        record["baseline_state"] = {k: _to_tensor(v) for k, v in model.state().items()}
    else:
        record["state_dict"] = model.state_dict()
    return record


def _to_tensor(value):
    if isinstance(value, dict):
        return {k: _to_tensor(v) for k, v in value.items()}
    return torch.as_tensor(np.asarray(value))


def _to_numpy(value):
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    return value.cpu().numpy()


def load_model(path: str, device="cpu"):
    """Rebuild a trained model from its checkpoint (weights only, no pickled code)."""
    record = torch.load(path, map_location=device, weights_only=True)
    model = registry.build(record["family"], len(record["genes"]), record["columns"], record["hp"])
    if isinstance(model, MeanEffectModel):
        model.load_state(_to_numpy(record["baseline_state"]))
    else:
        model.load_state_dict(record["state_dict"])
        model.to(device).eval()
    return model, record


# -- training ------------------------------------------------------------------------------

# Parameters of the per-perturbation (global) guide, for ``global_lr_multiplier``.
GLOBAL_PARAMETERS = ("mask_logits", "E_loc", "E_log_scale", "shift", "embedding_encoder.")


def make_optimizer(model, lr: float, weight_decay: float,
                   global_lr_multiplier: float = 1.0) -> torch.optim.Adam:
    """Adam with coupled L2 weight decay, as the reference. ``global_lr_multiplier`` (beyond
    the reference, default 1) scales the learning rate of the per-perturbation guide, whose
    parameters each see only their perturbation's cells. The fused kernel (one pass over all
    parameters) is ~8x faster than per-tensor updates on CPU; torch < 2.4 lacks it."""
    named = list(model.named_parameters())
    is_global = [any(n.startswith(g) for g in GLOBAL_PARAMETERS) for n, _ in named]
    groups = [{"params": [p for (_, p), g in zip(named, is_global) if not g], "lr": lr},
              {"params": [p for (_, p), g in zip(named, is_global) if g],
               "lr": lr * global_lr_multiplier}]
    groups = [g for g in groups if g["params"]]
    try:
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)


class Interrupted(RuntimeError):
    pass


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train(model, family: str, hp: dict, data, training: dict, run_dir: str, seed: int,
          progress: bool = True, identity: dict | None = None) -> dict:
    """Train until ``max_steps``; best checkpoint by validation loss; resumable.

    Writes ``model.pt`` (best), ``history.tsv`` and ``summary.json`` in ``run_dir`` and keeps
    ``resume.pt`` (full state at the last checkpoint) so that a killed run continues from there
    and ends with the same numbers as an uninterrupted one.
    """
    cfg = {**TRAINING_DEFAULTS, **{k: v for k, v in training.items() if v is not None}}
    os.makedirs(run_dir, exist_ok=True)
    data.log_absent_perturbations()
    if isinstance(model, MeanEffectModel):
        start = time.perf_counter()
        model.fit(data)
        atomic_save(model_record(model, family, hp, data), os.path.join(run_dir, "model.pt"))
        _write_history([], run_dir)
        summary = {"steps": 0, "timing": {"wall_seconds": time.perf_counter() - start}}
        return _finish({**(identity or {}), **summary}, family, run_dir)
    if data.device.type == "cpu":  # the gradient steps' temporaries, below
        keep_freed_memory()
    if model.requires_one_hot and data.codes.shape[1] > 1:
        raise ValueError(f"{family} needs one-hot dosages: set encoding: unique for this model")
    n_train = len(data.split_index("train"))
    if n_train == 0 or len(data.split_index("val")) == 0:
        raise ValueError("training needs cells in both the train and val splits")
    batch_size = int(cfg["batch_size"])
    steps_per_epoch = math.ceil(n_train / batch_size)
    val_every = int(cfg["val_every"] or steps_per_epoch)
    ckpt_every = int(cfg["checkpoint_every"] or val_every)
    max_steps = int(cfg["max_steps"])
    # Beyond the reference (hyperparameter align_basis_at, default off): at this fraction of
    # max_steps a model with ``align_basis`` rotates its latent basis to the sparsest one and
    # training restarts its optimiser and best-checkpoint search (docs/mask_recovery.md).
    align_step = (round(float(hp["align_basis_at"]) * max_steps)
                  if hp.get("align_basis_at") and hasattr(model, "align_basis") else 0)

    torch.manual_seed(seed)
    mean, std = data.input_statistics(model.normalization)
    model.set_input_statistics(mean, std)
    model.to(data.device)
    optim = make_optimizer(model, float(cfg["lr"]), float(cfg["weight_decay"]),
                           float(cfg["global_lr_multiplier"]))
    gen = torch.Generator().manual_seed(seed)
    train_index = data.split_index("train")
    inv_train = inverse_counts(data.dose_counts("train"))
    key = fingerprint(family, hp, cfg, seed, data.genes, data.columns, n_train)
    resume_path = os.path.join(run_dir, "resume.pt")
    state = {"step": 0, "perm": None, "pos": 0, "best_val": math.inf, "best_step": -1,
             "best_state": None, "history": [], "elapsed": 0.0, "train_sum": 0.0, "train_n": 0}
    if os.path.exists(resume_path):
        saved = torch.load(resume_path, map_location=data.device, weights_only=True)
        if saved.get("fingerprint") == key:
            model.load_state_dict(saved["model"])
            optim.load_state_dict(saved["optim"])
            torch.set_rng_state(saved["rng"])
            if saved.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(saved["cuda_rng"])
            gen.set_state(saved["gen"])
            state.update({k: saved[k] for k in state})
            log.info("resuming %s from step %d", run_dir, state["step"])
        else:
            log.info("ignoring %s: it belongs to another configuration", resume_path)

    def save_resume():
        payload = {**state, "fingerprint": key, "model": model.state_dict(),
                   "optim": optim.state_dict(), "rng": torch.get_rng_state(),
                   "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                   "gen": gen.get_state()}
        atomic_save(payload, resume_path)

    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    previous = signal.signal(signal.SIGTERM, on_signal)
    bar = tqdm(total=max_steps, initial=state["step"], disable=not progress, unit="step",
               mininterval=1.0, dynamic_ncols=True)
    clock = time.perf_counter()
    elapsed0 = state["elapsed"]
    train_sum = torch.tensor(state["train_sum"], dtype=torch.float64, device=data.device)
    try:
        model.train()
        while state["step"] < max_steps:
            if state["perm"] is None or state["pos"] >= n_train:
                state["perm"], state["pos"] = torch.randperm(n_train, generator=gen), 0
            rows = train_index[state["perm"][state["pos"] : state["pos"] + batch_size].to(data.device)]
            state["pos"] += batch_size
            x, dose = data.X[rows], data.dosage(data.codes[rows])
            loss = -particle_elbo(model, x, dose, inv_train, int(cfg["n_particles"])).mean()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            # Summed on the device in float64 (the same additions as a Python float sum) and
            # read at validation: a per-step .item() would wait for the GPU every step.
            train_sum += loss.detach()
            if cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg["grad_clip"]))
            optim.step()
            state["step"] += 1
            if align_step and state["step"] == align_step:
                model.align_basis()
                optim = make_optimizer(model, float(cfg["lr"]), float(cfg["weight_decay"]),
                                       float(cfg["global_lr_multiplier"]))
                state["best_val"], state["best_state"] = math.inf, None
                log.info("%s: latent basis aligned at step %d", run_dir, align_step)
            state["train_n"] += 1
            bar.update(1)
            step = state["step"]
            if step % val_every == 0 or step == max_steps:
                state["train_sum"] = train_sum.item()
                if not math.isfinite(state["train_sum"]):
                    raise FloatingPointError(
                        f"non-finite training loss in steps {step - state['train_n'] + 1}-{step} "
                        f"of {run_dir}; lower the learning rate or check the input counts")
                model.eval()
                val = split_loss(model, data, "val", int(cfg["n_particles"]), batch_size)
                model.train()
                if not math.isfinite(val):
                    raise FloatingPointError(f"non-finite validation loss at step {step}")
                state["history"].append({
                    "step": step, "train_loss": state["train_sum"] / state["train_n"],
                    "val_loss": val,
                    "wall_seconds": elapsed0 + time.perf_counter() - clock})
                state["train_sum"], state["train_n"] = 0.0, 0
                train_sum.zero_()
                if val < state["best_val"]:
                    state["best_val"], state["best_step"] = val, step
                    state["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
                bar.set_postfix(loss=f"{loss.item():.1f}", val=f"{val:.1f}", refresh=False)
            if step % ckpt_every == 0 or step == max_steps or stop["signal"]:
                state["train_sum"] = train_sum.item()
                state["elapsed"] = elapsed0 + time.perf_counter() - clock
                save_resume()
            if stop["signal"]:
                raise Interrupted(f"stopped by signal {stop['signal']} at step {step}; "
                                  f"the run resumes from {resume_path}")
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, previous)
    wall = elapsed0 + time.perf_counter() - clock
    model.load_state_dict(state["best_state"])
    model.eval()
    atomic_save(model_record(model, family, hp, data), os.path.join(run_dir, "model.pt"))
    _write_history(state["history"], run_dir)
    val_iw = iwelbo(model, data, "val", int(cfg["iwelbo_particles"]), seed=seed)
    summary = {
        "steps": state["step"], "best_step": state["best_step"],
        "best_val_loss": state["best_val"], "val_iwelbo": val_iw,
        "timing": {"wall_seconds": wall, "steps_per_second": state["step"] / max(wall, 1e-9)},
    }
    return _finish({**(identity or {}), **summary}, family, run_dir)


def _write_history(history, run_dir: str) -> None:
    import pandas as pd

    frame = pd.DataFrame(history, columns=["step", "train_loss", "val_loss", "wall_seconds"])
    path = os.path.join(run_dir, "history.tsv")
    frame.to_csv(path + ".tmp", sep="\t", index=False)
    os.replace(path + ".tmp", path)


def _finish(summary: dict, family: str, run_dir: str) -> dict:
    summary = {"family": family, **summary}
    path = os.path.join(run_dir, "summary.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(summary, fh, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    return summary
