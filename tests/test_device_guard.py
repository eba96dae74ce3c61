"""Device bugs caught on a CPU-only machine (issue 21).

A tensor created without ``device=`` lands on the CPU; on a GPU run the first op that mixes it
with the model's tensors fails ("Expected all tensors to be on the same device"), or, for a
CPU scalar, quietly computes on the host every step. CI has no GPU, so these tests run every
registered family's training steps, validation, IWELBO, resume, alignment, predicted means,
sampled cells and latents with the model and the data on the CPU while
``torch.device("meta")`` is the default device: every tensor made without an explicit device
becomes a meta tensor, and the first op that mixes it with a CPU tensor raises and names the
line. The model is built outside the guard (constructors make their parameters on the CPU and
the engine moves them, by design).

A family added to the registry later is covered without a change here. A second test checks
that the training step takes its minibatch indices where the data live: no step copies
indices from the host.
"""

import contextlib
import dataclasses
import signal

import numpy as np
import pytest
import torch

from helpers import for_family, tiny_dataset
from samsbench import inference
from samsbench import models as registry
from samsbench.stages import train as train_stage

FAMILIES = sorted(registry.FAMILIES)
TRAINING = {"max_steps": 6, "val_every": 3, "batch_size": 32, "iwelbo_particles": 4}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_dataset(str(tmp_path_factory.mktemp("guard")))


@contextlib.contextmanager
def device_guard():
    """Every factory call without ``device=`` makes a meta tensor (torch's DeviceContext)."""
    with torch.device("meta"):
        yield


def hp_for(family):
    """The tiny settings, with the basis alignment on where the family has it."""
    hp = registry.hyperparameters(family, for_family(family))
    if "align_basis_at" in registry.declared(family):
        hp = dataclasses.replace(hp, align_basis_at=0.5)
    return hp


def fresh(tiny, family):
    hp = hp_for(family)
    data = train_stage.load_data(*tiny, hp.encoding)
    torch.manual_seed(0)
    return hp, data, registry.build(family, len(data.genes), data.columns, hp)


def interrupt_after(monkeypatch, steps):
    """SIGTERM from inside the loop after ``steps`` optimiser steps (the engine checkpoints
    and raises ``Interrupted``), as Slurm's time limit would."""
    original = inference.minibatch_loss
    calls = [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == steps:
            signal.raise_signal(signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(inference, "minibatch_loss", counted)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_path_keeps_its_tensors_on_the_data_device(tiny, tmp_path, monkeypatch, family):
    hp, data, model = fresh(tiny, family)
    run_dir = str(tmp_path / "run")
    labels = [data.control] + sorted(set(data.labels) - {data.control})
    if model.trains_by_gradient:
        # training steps, then SIGTERM: resume.pt is written on the way out
        with monkeypatch.context() as m, device_guard():
            interrupt_after(m, 2)
            with pytest.raises(inference.Interrupted):
                inference.train(model, family, hp, data, TRAINING, run_dir, 0, progress=False)
        # resume, the remaining steps with validation, the alignment (halfway) and IWELBO
        hp, data, model = fresh(tiny, family)
        with device_guard():
            summary = inference.train(model, family, hp, data, TRAINING, run_dir, 0,
                                      progress=False)
        assert summary["steps"] == TRAINING["max_steps"] and np.isfinite(summary["val_iwelbo"])
    else:
        with device_guard():
            inference.train(model, family, hp, data, TRAINING, run_dir, 0, progress=False)
    with device_guard():
        means = inference.predicted_means(model, data, labels, n_particles=6, chunk=4)
        if model.has_likelihood:
            cells = inference.sample_cells(model, data, labels[:2], 3,
                                           np.array([50.0, 80.0]), seed=0)
            assert np.isfinite(cells).all()
        train_stage.write_perturbation_latents(model, data, str(tmp_path / "latents.h5ad"))
    assert means.shape == (len(labels), len(data.genes)) and np.isfinite(means).all()


def test_the_guard_catches_a_tensor_made_without_a_device():
    x = torch.ones(3)
    with device_guard(), pytest.raises(RuntimeError, match="device"):
        torch.addcmul(torch.full((), 1e-4), x, x)


class IndexTransfers(torch.overrides.TorchFunctionMode):
    """Counts integer tensors moved or copied to a device (``.to(device)``, ``.cuda``,
    ``copy_``): on a GPU each is a host-to-device copy that waits for the host. On the CPU the
    move is a no-op, but the call is made all the same, so it is counted."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name == "copy_" and len(args) > 1 and isinstance(args[1], torch.Tensor):
            source = args[1]
        to_device = name == "to" and (
            "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args[1:]))
        if ((to_device or name in ("cuda", "copy_")) and source is not None
                and not source.is_floating_point()):
            self.count += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("family", ["sams_vae", "conditional_vae"])
def test_training_steps_copy_no_indices_to_the_device(tiny, tmp_path, family):
    """The per-step count is the difference of two runs that differ only in their number of
    steps (one validation each, at the end)."""
    counts = []
    for steps in (4, 12):
        hp, data, model = fresh(tiny, family)
        mode = IndexTransfers()
        with mode:
            inference.train(model, family, hp, data, {**TRAINING, "max_steps": steps,
                                                      "val_every": steps},
                            str(tmp_path / f"run{steps}"), 0, progress=False)
        counts.append(mode.count)
    assert counts[1] == counts[0], f"{(counts[1] - counts[0]) / 8} index copies per step"


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_resume_onto_another_device_restores_the_random_generators(tiny, tmp_path, monkeypatch):
    """A run resumed on a GPU reads resume.pt written by a GPU run. The random generators
    take their states as CPU byte tensors only, so the file must be read on the CPU whatever
    the device (reading it onto the device made every resume fail with "RNG state must be a
    torch.ByteTensor"). The meta device stands in for a device that is not the CPU."""
    hp, data, model = fresh(tiny, "sams_vae")
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        with pytest.raises(inference.Interrupted):
            inference.train(model, "sams_vae", hp, data, TRAINING, str(run_dir), 0,
                            progress=False)
    path = str(run_dir / "resume.pt")
    written = torch.load(path, weights_only=True)
    hp, data, model = fresh(tiny, "sams_vae")
    model.to("meta")
    optim = inference.make_optimizer(model, 1e-3, 0.0)
    gen = torch.Generator()
    state = inference.restore_resume(path, written["fingerprint"], torch.device("meta"),
                                     model, optim, gen)
    assert state["step"] == 2 and state["perm"].device.type == "meta"
    assert torch.equal(torch.get_rng_state(), written["rng"])
    assert torch.equal(gen.get_state(), written["gen"])
