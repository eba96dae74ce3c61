"""Host reads on the training step: on a GPU every ``.item()``, ``int(t)``, ``torch.equal``
or data-dependent shape waits for all queued kernels. The step must make none; the loss is
read at validation only (issue 16).

Counted on CPU by wrapping the tensor methods that read values back, with the device-path
switch ``host_reads_free`` set to what a GPU gets. The per-step count is the difference of two
runs that differ only in the number of steps (one validation each, at the end).
"""

import pytest
import torch

from helpers import for_family, tiny_dataset
from samsbench import inference
from samsbench.stages import train as train_stage
from samsbench import nn as sbnn

from samsbench import models as registry

# every family trained by gradient (the engine's loop), as the registry declares it
FAMILIES = [name for name, cls in registry.FAMILIES.items() if cls.trains_by_gradient]
READS = [(torch.Tensor, "item"), (torch.Tensor, "tolist"), (torch.Tensor, "__int__"),
         (torch.Tensor, "__float__"), (torch.Tensor, "__bool__"), (torch.Tensor, "nonzero"),
         (torch, "equal"), (torch, "unique")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_dataset(str(tmp_path_factory.mktemp("syncs")))


def count_reads(monkeypatch, run, gpu_path: bool) -> int:
    calls = [0]
    if gpu_path:
        monkeypatch.setattr(sbnn, "host_reads_free", lambda t: False)
        monkeypatch.setattr(inference, "host_reads_free", lambda t: False)
    with monkeypatch.context() as m:
        for owner, name in READS:
            original = getattr(owner, name)

            def counted(*args, _original=original, **kwargs):
                calls[0] += 1
                return _original(*args, **kwargs)

            m.setattr(owner, name, counted)
        run()
    return calls[0]


def reads_per_step(monkeypatch, tiny, tmp_path, family, gpu_path):
    data_path, split_path = tiny
    hp = inference.registry.hyperparameters(family, for_family(family))
    counts = []
    for steps in (10, 30):
        training = {"max_steps": steps, "val_every": steps, "batch_size": 32}
        run_dir = str(tmp_path / f"{family}-{steps}-{gpu_path}")
        # The data are loaded outside the count: load-time checks are allowed.
        data = train_stage.load_data(data_path, split_path, hp.encoding)
        torch.manual_seed(0)
        model = inference.registry.build(family, len(data.genes), data.columns, hp)
        counts.append(count_reads(monkeypatch, lambda: inference.train(
            model, family, hp, data, training, run_dir, 0, progress=False), gpu_path))
    return (counts[1] - counts[0]) / 20


@pytest.mark.parametrize("family", FAMILIES)
def test_training_step_reads_nothing_back_on_the_gpu_path(monkeypatch, tiny, tmp_path, family):
    assert reads_per_step(monkeypatch, tiny, tmp_path, family, gpu_path=True) == 0


def test_cpu_path_still_reads_counts_back(monkeypatch, tiny, tmp_path):
    # The CPU path keeps its count checks (free there); this shows the counter sees them.
    assert reads_per_step(monkeypatch, tiny, tmp_path, "sams_vae", gpu_path=False) >= 4
