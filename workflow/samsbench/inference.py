"""One engine for every family with a likelihood: ELBO, IWELBO, training, predictions.

The minibatch ELBO charges each perturbation's global ``log p - log q`` to its cells with weight
``1 / N_t`` (N_t = cells of the split being evaluated with a dose of t), so summed over a
split every observed perturbation's global term counts once (the reference's perturbation-plated reweighting). The engine asks
the model what it is (``trains_by_gradient``, ``has_likelihood``, ``global_parameters``,
``after_step``; models/base.py), never its class or its parameters' names.

Over 400 lines because the resumable training loop (signals, resume state, best checkpoint)
lives here beside the ELBO it optimises; it is the part to move to a module of its own once
the workflow steps that call ``inference.train`` have settled.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from samsbench import io as sbio
from samsbench import models as registry
from samsbench.models.base import LatentModel
from samsbench.nn import host_reads_free, log2_cp10k

log = logging.getLogger(__name__)

TRAINING_DEFAULTS = {
    "max_steps": 1000,
    "batch_size": 512,
    "lr": 3e-4,
    "weight_decay": 1e-6,
    "n_particles": 5,
    "val_every": None,  # None: once per epoch of the training split, as the reference
    "checkpoint_every": None,  # None: on a time budget, checkpoint_minutes
    "grad_clip": None,
    "iwelbo_particles": 100,
    "global_lr_multiplier": 1.0,
    "checkpoint_minutes": 10.0,  # resume.pt at most this often when checkpoint_every is None
    "compile": "auto",  # the compiled step (make_step): auto = on CUDA only
}
COMPILE_SETTINGS = ("auto", "on", "off")
# Training settings that do not change the numbers (left out of the resume fingerprint).
NUMBER_NEUTRAL = ("checkpoint_every", "checkpoint_minutes", "compile")
# Largest particles x cells x genes block evaluated at once outside training (memory bound).
BLOCK_ELEMENTS = 1 << 24
# Part of the resume fingerprint: a resume.pt of another layout is not read.
RESUME_FORMAT = 2
LOSS_PARTS = ("reconstruction", "kl_local", "kl_global")


@contextlib.contextmanager
def unchecked_distributions():
    """Skip torch distributions' argument checks inside the engine, then restore the caller's
    setting. The checks cost time on every step; a non-finite loss is caught explicitly
    instead (``train`` stops with an error naming the step)."""
    previous = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(previous)


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


@dataclasses.dataclass
class ElboTerms:
    """Per particle and cell, (P, n): log p(x | .), the per-cell latent's log p - log q and the
    cell's 1 / N_t-weighted share of the global log p - log q (None when not charged)."""

    loglik: torch.Tensor
    local: torch.Tensor
    global_: torch.Tensor | None

    def total(self) -> torch.Tensor:
        elbo = self.loglik + self.local
        return elbo if self.global_ is None else elbo + self.global_


@dataclasses.dataclass
class LossOutput:
    """A minibatch's negative ELBO per cell (``loss``, which carries the gradient) and its
    named parts, Monte Carlo estimates averaged over particles and cells (detached):
    ``reconstruction`` = -log p(x | .), ``kl_local`` = log q - log p of the per-cell latent,
    ``kl_global`` = the cells' share of the per-perturbation latents' log q - log p. The parts
    sum to ``loss`` up to rounding."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl_local: torch.Tensor
    kl_global: torch.Tensor

    def stacked(self) -> torch.Tensor:
        """[loss, reconstruction, kl_local, kl_global] as one detached tensor (no host read)."""
        return torch.stack([self.loss.detach(), self.reconstruction, self.kl_local,
                            self.kl_global])

    def values(self) -> list[float]:
        """[loss, reconstruction, kl_local, kl_global] as floats, in one device transfer."""
        return self.stacked().tolist()


def particle_elbo(model: LatentModel, x, dose, inv_counts, n_particles: int, globals_=None,
                  with_globals: bool = True) -> torch.Tensor:
    """Per particle and cell: log p(x|.) + local log p - log q (+ weighted global terms)."""
    return elbo_terms(model, x, dose, inv_counts, n_particles, globals_, with_globals).total()


def minibatch_loss(model: LatentModel, x, dose, inv_counts, n_particles: int) -> LossOutput:
    """The training objective of a minibatch and its named parts (``LossOutput``)."""
    terms = elbo_terms(model, x, dose, inv_counts, n_particles)
    loss = -terms.total().mean()
    with torch.no_grad():
        kl_global = (-terms.global_.mean() if terms.global_ is not None
                     else torch.zeros((), dtype=loss.dtype, device=loss.device))
        return LossOutput(loss, -terms.loglik.mean(), -terms.local.mean(), kl_global)


def elbo_terms(model: LatentModel, x, dose, inv_counts, n_particles: int, globals_=None,
               with_globals: bool = True) -> ElboTerms:
    """The ELBO's parts; ``globals_`` = a shared draw of ``sample_globals`` (else drawn here,
    only for the minibatch's perturbations when the family can)."""
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
    charged = None
    if with_globals and global_ratio is not None:
        # Each cell carries 1 / N_t of the global term of each perturbation t it received.
        charged = dose.charge(global_ratio * inv_counts)
    return ElboTerms(loglik, local, charged)


def minibatches(index: torch.Tensor, batch_size: int):
    for start in range(0, len(index), batch_size):
        yield index[start : start + batch_size]


@torch.no_grad()
@unchecked_distributions()
def split_loss(model, data, split: str, n_particles: int, batch_size: int) -> dict[str, float]:
    """Negative ELBO per cell on a split, with that split's perturbation counts: ``loss`` and
    its parts (``LOSS_PARTS``)."""
    index = data.split_index(split)
    inv = inverse_counts(data.dose_counts(split))
    # summed on the device in float64 and read once: a read per minibatch waits for a GPU
    totals = torch.zeros(1 + len(LOSS_PARTS), dtype=torch.float64, device=data.X.device)
    for rows in minibatches(index, batch_size):
        x, dose = data.X[rows], data.dosage(data.codes[rows])
        totals += minibatch_loss(model, x, dose, inv, n_particles).stacked().double() * len(rows)
    n = max(len(index), 1)
    return dict(zip(("loss",) + LOSS_PARTS, (t / n for t in totals.tolist())))


@torch.no_grad()
@unchecked_distributions()
def iwelbo(model, data, split: str, n_particles: int = 100, seed: int = 0) -> float:
    """Held-out IWELBO: 100 global samples drawn once and shared over the split; global priors
    are not scored (as the reference's predictive IWELBO)."""
    torch.manual_seed(seed)
    index = data.split_index(split)
    if len(index) == 0:
        raise ValueError(f"the {split!r} split has no cells")
    globals_ = model.sample_globals(n_particles)
    batch = max(1, BLOCK_ELEMENTS // (n_particles * data.X.shape[1]))
    total = torch.zeros((), dtype=torch.float64, device=data.X.device)  # read once, below
    for rows in minibatches(index, batch):
        x, dose = data.X[rows], data.dosage(data.codes[rows])
        log_w = particle_elbo(model, x, dose, None, n_particles, globals_, with_globals=False)
        total += (torch.logsumexp(log_w, 0) - math.log(n_particles)).double().sum()
    return total.item() / len(index)


@torch.no_grad()
@unchecked_distributions()
def predicted_means(model, data, labels, n_particles: int = 2500, chunk: int = 128,
                    library_size: float = 1e4, seed: int = 0,
                    log_normalize: bool = True) -> np.ndarray:
    """Mean log2(CP10k+1) of sampled counts per perturbation (the reference's model ATE
    estimator): fresh prior local latents per condition, globals shared within a chunk of
    particles, fixed seed. A model without a likelihood predicts its means directly.
    ``log_normalize=False`` averages the samples themselves (continuous data). Every sampled
    cell has ``library_size`` counts (the paper's 10,000)."""
    return _sampled_means(model, data, labels, n_particles, chunk, library_size, None, seed,
                          log_normalize)[1]


def predicted_means_matched(model, data, labels, depths, n_particles: int = 2500,
                            chunk: int = 128, library_size: float = 1e4, seed: int = 0):
    """(depth-matched, at ``library_size``) mean log2(CP10k+1) per label from the same latent
    draws: the first draws each sampled cell's library size from ``depths[i]`` (the totals of
    label i's own cells, so the prediction has the sampling zeros of the data it is scored
    against), the second is ``predicted_means``."""
    if len(depths) != len(labels):
        raise ValueError(f"{len(depths)} depth arrays for {len(labels)} labels")
    return _sampled_means(model, data, labels, n_particles, chunk, library_size, depths, seed,
                          True)


@torch.no_grad()
@unchecked_distributions()
def _sampled_means(model, data, labels, n_particles, chunk, library_size, depths, seed,
                   log_normalize):
    if not model.has_likelihood:
        means = np.asarray(model.predict_means(list(labels)), dtype=np.float64)
        return means, means
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    dose = data.dosage_for_labels(list(labels))
    shape = (len(labels), data.X.shape[1])
    sums = torch.zeros(shape, dtype=torch.float64, device=data.X.device)
    matched = (torch.zeros(shape, dtype=torch.float64, device=data.X.device)
               if depths is not None else None)
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
            y = log2_cp10k(x) if log_normalize else x
            sums[r0 : r0 + rows_per_block] += y.sum(0).double()
            if depths is not None:
                drawn = np.stack([gen.choice(np.asarray(depths[r], dtype=np.float64), size=n_p)
                                  for r in range(r0, r0 + h.shape[1])], axis=1)
                lib = torch.as_tensor(drawn, dtype=h.dtype, device=h.device)
                # a forked random stream: the paper's draws stay those of predicted_means
                with torch.random.fork_rng(devices=[h.device] if h.is_cuda else []):
                    x = model.decoder.sample(h, lib)
                matched[r0 : r0 + rows_per_block] += log2_cp10k(x).sum(0).double()
    paper = (sums / n_particles).cpu().numpy()
    return ((matched / n_particles).cpu().numpy() if depths is not None else paper), paper


@torch.no_grad()
@unchecked_distributions()
def sample_cells(model, data, labels, n_cells: int, libraries: np.ndarray,
                 seed: int = 0) -> np.ndarray:
    """Counts of ``n_cells`` cells per label from the generative process, (labels*n, G), label
    by label: each cell has its own draw of the global and the local latents, and a library
    size drawn from ``libraries`` (the real control cells' totals, for the cell-eval export)."""
    gen = np.random.default_rng(seed)
    torch.manual_seed(seed)
    out = np.empty((len(labels) * n_cells, data.X.shape[1]), dtype=np.float32)
    dose = data.dosage_for_labels(list(labels))
    for row in range(len(labels)):
        g, _ = model.sample_globals(n_cells)  # one particle per cell
        ctx = model.cell_context(data.dosage(dose.codes[row : row + 1]), g)  # (n_cells, 1, K)
        u = draw(model.local_prior(ctx), n_cells)
        h = model.decoder_input(u, ctx)
        lib = torch.as_tensor(gen.choice(libraries, size=h.shape[:-1]), dtype=h.dtype,
                              device=h.device)
        x = model.decoder.sample(h, lib)
        out[row * n_cells : (row + 1) * n_cells] = x.reshape(n_cells, -1).cpu().numpy()
    return out


# -- checkpoints ---------------------------------------------------------------------------

def load_resume(path: str) -> dict | None:
    """The state saved at ``path``, on the CPU (the RNG states must stay there; the engine
    moves the rest to its device); None when there is none, and None with a warning when the
    file is empty, cut or unreadable (a fresh start beats failing every retry on it)."""
    if not os.path.exists(path):
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises EOFError, RuntimeError, UnpicklingError, ...
        log.warning("%s is unreadable (%s: %s); training starts afresh and overwrites it",
                    path, type(exc).__name__, exc)
        return None
    if not isinstance(saved, dict):
        log.warning("%s holds no training state (%s); training starts afresh", path,
                    type(saved).__name__)
        return None
    return saved


def restore_resume(path: str, key: str, device, model, optim, gen) -> dict | None:
    """Restore the state saved at ``path`` into the model, the optimiser, the global random
    generators and the minibatch-order generator ``gen``, and return it (the loop's state, the
    order on ``device``); None when there is none or it belongs to another configuration
    (``key``, the fingerprint). The file is read on the CPU whatever ``device`` is: the
    generators take their states as CPU byte tensors only."""
    saved = load_resume(path)
    if saved is None:
        return None
    if saved.get("fingerprint") != key:
        log.info("ignoring %s: it belongs to another configuration", path)
        return None
    model.load_state_dict(saved["model"])  # copied into the parameters, on their device
    optim.load_state_dict(saved["optim"])  # moves its state to the parameters' device
    torch.set_rng_state(saved["rng"])
    if saved.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    gen.set_state(saved["gen"])
    if saved.get("perm") is not None:
        saved["perm"] = saved["perm"].to(device)
    return saved


def model_record(model, family: str, data) -> dict:
    """What ``model.pt`` holds: the family, every hyperparameter (defaults included), the
    genes and perturbation columns it was built on, and its state."""
    return {"family": family, "hp": dataclasses.asdict(model.hparams), "genes": data.genes,
            "columns": data.columns, "encoding": data.encoding, "state_dict": model.state_dict()}


def read_checkpoint(path: str, device="cpu"):
    """``torch.load`` of tensors and plain data only; a file that is empty, cut short or holds
    anything else is a ``ValueError`` naming the file. Torch's own advice for a refused pickle
    (load it with weights_only=False, which runs its code) is never passed on."""
    import pickle
    import warnings

    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ValueError(f"{path}: the file is empty, not a samsbench checkpoint; train the run "
                         "again (samsbench train) or give the model.pt it wrote")
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols: not for users
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: not a samsbench checkpoint: it holds Python objects that a "
                         "checkpoint never contains, so it was refused without running "
                         "anything; use the model.pt that samsbench train wrote") from None
    except (EOFError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "archive" not in str(exc):
            raise  # not about the file's bytes (a device, say)
        first = str(exc).split(".")[0] or type(exc).__name__
        raise ValueError(f"{path}: not a readable samsbench checkpoint (cut short or "
                         f"corrupt: {first}); train the run again or copy the file "
                         "again") from None


def load_model(path: str, device="cpu", family=None):
    """Rebuild a trained model from its checkpoint (weights only, no pickled code).

    A checkpoint names its family; that name is looked up in the registry only, never run as
    a file or imported as a module, so loading a file cannot execute code. A plug-in family
    comes from the config the user wrote: pass it as ``family`` (the config's ``family:``
    string, which must equal the checkpoint's, or the class itself)."""
    record = read_checkpoint(path, device)
    name = record.get("family") if isinstance(record, dict) else None
    if not isinstance(name, str):
        raise ValueError(f"{path}: not a samsbench checkpoint (no family name)")
    if family is None:
        try:
            cls = registry.resolve(name, plugins=False)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    elif isinstance(family, type):
        cls = family
    elif family != name:
        raise ValueError(f"{path}: the checkpoint's family {name!r} is not the configured "
                         f"family {family!r}")
    else:
        cls = registry.resolve(family)  # the config's own string: trusted
    # Checkpoints written before the families declared their hyperparameters recorded every
    # model's keys for every family: those the family does not declare are dropped.
    hp = registry.parse(cls.Hyperparameters, record["hp"], name, strict=False)
    model = cls(len(record["genes"]), record["columns"], hp)
    # "baseline_state": the key under which older checkpoints kept a mean-effect model's state
    model.load_state_dict(record["state_dict"] if "state_dict" in record
                          else record["baseline_state"])
    model.to(device).eval()
    return model, record


# -- training ------------------------------------------------------------------------------


def make_optimizer(model, lr: float, weight_decay: float,
                   global_lr_multiplier: float = 1.0) -> torch.optim.Adam:
    """Adam with coupled L2 weight decay, as the reference. ``global_lr_multiplier`` (beyond
    the reference, default 1) scales the learning rate of the per-perturbation guide, whose
    parameters each see only their perturbation's cells. The fused kernel (one pass over all
    parameters) is ~8x faster than per-tensor updates on CPU; torch < 2.4 lacks it."""
    params = list(model.parameters())
    global_ids = {id(p) for p in model.global_parameters()}
    groups = [{"params": [p for p in params if id(p) not in global_ids], "lr": lr},
              {"params": [p for p in params if id(p) in global_ids],
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


@unchecked_distributions()
def train(model, family: str, hp, data, training: dict, run_dir: str, seed: int,
          progress: bool = True, identity: dict | None = None) -> dict:
    """Train until ``max_steps``; best checkpoint by validation loss; resumable.

    ``family`` is the registry name the model was built from (recorded, so that the
    checkpoint can be rebuilt) and ``hp`` its hyperparameters (a block or the dataclass),
    checked against the model's own. Writes ``model.pt`` (best), ``history.tsv`` (the loss and
    its parts at each validation) and ``summary.json`` in ``run_dir``. While training it keeps
    ``resume.pt`` (the full state at the last checkpoint: ``checkpoint_every`` steps, else at
    most every ``checkpoint_minutes``, at SIGTERM / SIGUSR1 and at the last step) so that a
    killed run continues from there and ends with the same numbers as an uninterrupted one;
    a completed run removes it, and a run already completed with the same settings is not
    trained again (its model.pt is loaded into ``model``).
    """
    cfg = {**TRAINING_DEFAULTS, **{k: v for k, v in training.items() if v is not None}}
    hparams = dataclasses.asdict(model.hparams)
    if dataclasses.asdict(registry.hyperparameters(family, hp)) != hparams:
        raise ValueError(f"{family}: the model was built with other hyperparameters than {hp}")
    os.makedirs(run_dir, exist_ok=True)
    data.log_absent_perturbations()
    if not model.trains_by_gradient:
        start = time.perf_counter()
        model.fit(data)
        sbio.write_pt(model_record(model, family, data), sbio.run_file(run_dir, "model"))
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
    ckpt_every = int(cfg["checkpoint_every"]) if cfg["checkpoint_every"] else None
    ckpt_seconds = 60 * float(cfg["checkpoint_minutes"])
    max_steps = int(cfg["max_steps"])
    compiled = use_compile(cfg["compile"], data.device)

    # The settings that change the numbers; how often to checkpoint and whether the step is
    # compiled do not. The device type is part of it: the order generator's state differs.
    settings = {k: v for k, v in cfg.items() if k not in NUMBER_NEUTRAL}
    key = fingerprint(RESUME_FORMAT, family, hparams, settings, seed, data.genes, data.columns,
                      n_train, *([] if data.device.type == "cpu" else [data.device.type]))
    resume_path = sbio.run_file(run_dir, "resume")
    done = finished_summary(run_dir, key)
    if done is not None:  # a finished run is not trained again: its model is loaded
        log.info("%s is already trained with these settings; loading its model.pt", run_dir)
        record = torch.load(sbio.run_file(run_dir, "model"), map_location="cpu",
                            weights_only=True)
        model.load_state_dict(record["state_dict"])
        model.to(data.device).eval()
        return done

    torch.manual_seed(seed)
    mean, std = data.input_statistics(model.normalization)
    model.set_input_statistics(mean, std)
    model.to(data.device)

    def new_optimizer():
        return make_optimizer(model, float(cfg["lr"]), float(cfg["weight_decay"]),
                              float(cfg["global_lr_multiplier"]))

    optim = new_optimizer()
    # Minibatch order: drawn on the data's device, so no step copies indices from the host.
    gen = torch.Generator(device=data.device).manual_seed(seed)
    train_index = data.split_index("train")
    inv_train = inverse_counts(data.dose_counts("train"))
    state = {"step": 0, "perm": None, "pos": 0, "best_val": math.inf, "best_step": -1,
             "best_state": None, "history": [], "elapsed": 0.0,
             "train_sums": [0.0] * (1 + len(LOSS_PARTS)), "train_n": 0}
    saved = restore_resume(resume_path, key, data.device, model, optim, gen)
    if saved is not None:
        state.update({k: saved[k] for k in state})
        log.info("resuming %s from step %d", run_dir, state["step"])

    # SIGTERM (Slurm's time limit, preemption, scancel): checkpoint and stop. SIGUSR1 (e.g.
    # sbatch --signal=USR1@300, a warning ahead of the limit): checkpoint and go on.
    stop = {"signal": None, "checkpoint": False}

    def on_signal(signum, frame):
        stop["signal"] = signum

    def on_usr1(signum, frame):
        stop["checkpoint"] = True

    previous = {sig: signal.signal(sig, handler)
                for sig, handler in ((signal.SIGTERM, on_signal), (signal.SIGUSR1, on_usr1))}
    bar = tqdm(total=max_steps, initial=state["step"], disable=not progress, unit="step",
               mininterval=1.0, dynamic_ncols=True)
    clock = time.perf_counter()
    last_save = time.monotonic()
    elapsed0 = state["elapsed"]
    # The loss and its parts summed on the device in float64 (the same additions as a Python
    # float sum) and read at validation: a per-step read would wait for the GPU.
    train_sums = torch.tensor(state["train_sums"], dtype=torch.float64, device=data.device)
    step_fn = make_step(model, data, inv_train, int(cfg["n_particles"]), cfg["grad_clip"],
                        compiled=compiled, strict=compile_setting(cfg["compile"]) == "on")
    try:
        model.train()
        while state["step"] < max_steps:
            rows = next_rows(state, gen, train_index, batch_size)
            train_sums += step_fn(rows, optim).double()
            state["step"] += 1
            # e.g. SAMS-VAE's align_basis_at (docs/mask_recovery.md): a re-parameterised model
            # starts a new optimiser and a new best-checkpoint search
            if model.after_step(state["step"], max_steps):
                optim = new_optimizer()
                state["best_val"], state["best_state"] = math.inf, None
                log.info("%s: the model re-parameterised itself at step %d", run_dir,
                         state["step"])
            state["train_n"] += 1
            bar.update(1)
            step = state["step"]
            if step % val_every == 0 or step == max_steps:
                state["train_sums"] = train_sums.tolist()
                if not math.isfinite(state["train_sums"][0]):
                    raise FloatingPointError(
                        f"non-finite training loss in steps {step - state['train_n'] + 1}-{step} "
                        f"of {run_dir}; lower the learning rate or check the input counts")
                model.eval()
                val_parts = split_loss(model, data, "val", int(cfg["n_particles"]), batch_size)
                val = val_parts["loss"]
                model.train()
                if not math.isfinite(val):
                    raise FloatingPointError(f"non-finite validation loss at step {step}")
                train_mean = [t / state["train_n"] for t in state["train_sums"]]
                state["history"].append({
                    "step": step, "train_loss": train_mean[0], "val_loss": val,
                    **{f"train_{k}": v for k, v in zip(LOSS_PARTS, train_mean[1:])},
                    **{f"val_{k}": val_parts[k] for k in LOSS_PARTS},
                    "wall_seconds": elapsed0 + time.perf_counter() - clock})
                state["train_sums"], state["train_n"] = [0.0] * (1 + len(LOSS_PARTS)), 0
                train_sums.zero_()
                if val < state["best_val"]:
                    state["best_val"], state["best_step"] = val, step
                    state["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
                bar.set_postfix(loss=f"{train_mean[0]:.1f}", val=f"{val:.1f}", refresh=False)
            # resume.pt: every ckpt_every steps when set, else on a time budget (each write is
            # the full state, MBs); at a signal; and at the last step (the run then only
            # writes its outputs, and a kill there must not cost the training).
            due = (step % ckpt_every == 0 if ckpt_every
                   else time.monotonic() - last_save >= ckpt_seconds)
            if due or step == max_steps or stop["signal"] or stop["checkpoint"]:
                state["elapsed"] = elapsed0 + time.perf_counter() - clock
                save_checkpoint(resume_path, state, train_sums, key, model, optim, gen)
                last_save, stop["checkpoint"] = time.monotonic(), False
            if stop["signal"]:
                raise Interrupted(f"stopped by signal {stop['signal']} at step {step}; "
                                  f"the run resumes from {resume_path}")
    finally:
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    wall = elapsed0 + time.perf_counter() - clock
    model.load_state_dict(state["best_state"])
    model.eval()
    sbio.write_pt(model_record(model, family, data), sbio.run_file(run_dir, "model"))
    _write_history(state["history"], run_dir)
    val_iw = iwelbo(model, data, "val", int(cfg["iwelbo_particles"]), seed=seed)
    summary = {
        "steps": state["step"], "best_step": state["best_step"],
        "best_val_loss": state["best_val"], "val_iwelbo": val_iw,
        "timing": {"wall_seconds": wall, "steps_per_second": state["step"] / max(wall, 1e-9)},
        "training_key": key,
    }
    summary = _finish({**(identity or {}), **summary}, family, run_dir)
    # Finished: model.pt, history.tsv and summary.json hold the result, and summary.json's
    # training_key stops a re-run from training again; the full state is no longer needed.
    with contextlib.suppress(FileNotFoundError):
        os.remove(resume_path)
    return summary


def finished_summary(run_dir: str, key: str) -> dict | None:
    """The summary of a finished run in ``run_dir`` trained with the settings ``key``, or None
    (no summary, another configuration, or model.pt or history.tsv missing)."""
    summary = sbio.read_summary(run_dir)
    if not summary or summary.get("training_key") != key:
        return None
    if not all(os.path.isfile(sbio.run_file(run_dir, name)) for name in ("model", "history")):
        return None
    return summary


def next_rows(state: dict, gen: torch.Generator, train_index: torch.Tensor,
              batch_size: int) -> torch.Tensor:
    """The next minibatch's cells (indices on the data's device), drawing a new order with
    ``gen`` (on that device) at the start of each epoch."""
    n_train = len(train_index)
    if state["perm"] is None or state["pos"] >= n_train:
        state["perm"] = torch.randperm(n_train, generator=gen, device=train_index.device)
        state["pos"] = 0
    rows = train_index[state["perm"][state["pos"] : state["pos"] + batch_size]]
    state["pos"] += batch_size
    return rows


def save_checkpoint(path: str, state: dict, train_sums: torch.Tensor, key: str, model, optim,
                    gen: torch.Generator) -> None:
    """Write resume.pt: the loop's state, model, optimiser and every random generator."""
    state["train_sums"] = train_sums.tolist()
    payload = {**state, "fingerprint": key, "model": model.state_dict(),
               "optim": optim.state_dict(), "rng": torch.get_rng_state(),
               "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
               "gen": gen.get_state()}
    sbio.write_pt(payload, path)


def compile_setting(setting) -> str:
    """``training.compile`` as "auto", "on" or "off" (YAML reads a bare on / off as a bool)."""
    if isinstance(setting, bool):
        setting = "on" if setting else "off"
    if setting not in COMPILE_SETTINGS:
        raise ValueError(f"training.compile must be one of {COMPILE_SETTINGS}, got {setting!r}")
    return setting


def use_compile(setting, device) -> bool:
    """Whether the step is compiled: "on", "off", or "auto" (on for CUDA, off elsewhere)."""
    setting = compile_setting(setting)
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cuda")


def make_step(model, data, inv_train: torch.Tensor, n_particles: int, grad_clip,
              compiled: bool = False, strict: bool = False):
    """The training step, ``step(rows, optim) -> [loss, parts]`` (detached, on the device):
    the minibatch's negative ELBO, its gradient and one optimiser step.

    ``compiled``: the loss and its gradient (forward and backward) go through
    ``torch.compile``; on CUDA with ``mode="reduce-overhead"``, which replays each as one CUDA
    graph instead of launching hundreds of small kernels from Python (a step of the paper's
    sizes is bound by those launches on a GPU, not by arithmetic). The fused Adam step is one
    multi-tensor kernel either way. Inside the compiled region every family takes the path
    without host reads (``nn.host_reads_free``). If compiling fails, ``strict`` raises; else
    the step logs a warning and runs eagerly."""

    def loss_parts(x, codes):
        out = minibatch_loss(model, x, data.dosage(codes), inv_train, n_particles)
        return out.loss, out.stacked()

    forward = loss_parts
    if compiled:
        mode = "reduce-overhead" if data.X.device.type == "cuda" else None
        # dynamic=False: the two minibatch sizes of an epoch (full, last) get a graph each
        forward = torch.compile(loss_parts, mode=mode, dynamic=False)
    checked = [not compiled]

    def gradient(x, codes, optim):
        loss, parts = forward(x, codes)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        return parts

    def step(rows, optim):
        nonlocal forward
        x, codes = data.X[rows], data.codes[rows]
        if checked[0]:
            parts = gradient(x, codes, optim)
        else:  # the first call compiles the forward, then the backward
            try:
                parts = gradient(x, codes, optim)
            except Exception as exc:  # inductor/triton missing or an op it cannot compile
                if strict:
                    raise RuntimeError(f"training.compile: on, but compiling the training step "
                                       f"failed ({type(exc).__name__}: {exc}); set "
                                       f"training.compile: off") from exc
                log.warning("compiling the training step failed (%s: %s); training eagerly",
                            type(exc).__name__, exc)
                forward = loss_parts
                parts = gradient(x, codes, optim)
            checked[0] = True
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
        optim.step()
        return parts

    return step


def _write_history(history, run_dir: str) -> None:
    import pandas as pd

    columns = ["step", "train_loss", "val_loss", *(f"{s}_{k}" for s in ("train", "val")
                                                    for k in LOSS_PARTS), "wall_seconds"]
    sbio.write_tsv(pd.DataFrame(history, columns=columns), sbio.run_file(run_dir, "history"))


def _finish(summary: dict, family: str, run_dir: str) -> dict:
    summary = {"family": family, **summary}
    sbio.write_json(summary, sbio.run_file(run_dir, "summary"))
    return summary
