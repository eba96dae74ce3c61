"""One builder of the bad inputs that the reliability tests feed the benchmark (issue 18).

Every constructed fault lives here, so that a test names the fault and asserts the behaviour:
AnnData with bad labels or counts, a user h5ad to normalise, checkpoints that try to run code
or are cut short, configs and YAML with errors, and an HTTP server on 127.0.0.1 that can
misbehave (truncate, omit Content-Length, drip bytes slowly).
"""

from __future__ import annotations

import copy
import http.server
import os
import threading
import time

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from samsbench.data.download import HDF5_MAGIC

CONTROL = "non-targeting"


# -- AnnData ---------------------------------------------------------------------------------

def adata(labels=None, X=None, genes=None, cell_ids=None, **uns) -> ad.AnnData:
    """A small dataset meeting the contract, with any part replaced."""
    labels = [CONTROL, CONTROL, "KLF1", "KLF1+MAP2K6"] if labels is None else list(labels)
    n = len(labels)
    if X is None:
        X = np.arange(n * 3, dtype=np.float32).reshape(n, 3) % 5
    genes = ["A", "B", "C"] if genes is None else genes
    cell_ids = [f"c{i}" for i in range(n)] if cell_ids is None else cell_ids
    out = ad.AnnData(X=X, obs=pd.DataFrame({"perturbation": labels}, index=cell_ids),
                     var=pd.DataFrame(index=genes))
    out.uns.update(uns)
    return out


def with_count(value, dtype, sparse: bool = False, row: int = 2, col: int = 1) -> ad.AnnData:
    """A valid dataset whose X (of ``dtype``) holds ``value`` at (row, col)."""
    X = np.ones((4, 3), dtype=dtype)
    X[row, col] = value
    return adata(X=sp.csr_matrix(X) if sparse else X)


def counts_only_in_layer() -> ad.AnnData:
    """X absent, the raw counts in layers['counts'] (a common export)."""
    good = adata()
    return ad.AnnData(X=None, obs=good.obs.copy(), var=good.var.copy(),
                      layers={"counts": np.asarray(good.X)})


GEARS_LABELS = ["ctrl", "ctrl", "KLF1+ctrl", "ctrl+ctrl", "B+A", "A+B", "KLF1", "ctrl+A+B"]
GEARS_NORMALISED = ["ctrl", "ctrl", "KLF1", "ctrl", "A+B", "A+B", "KLF1", "A+B"]


def gears_style_file(path) -> str:
    """A user h5ad in GEARS' style: control components (``KLF1+ctrl``), combinations in both
    orders; ``uns['control_label'] = 'ctrl'``."""
    a = adata(labels=GEARS_LABELS, control_label="ctrl")
    a.write_h5ad(path)
    return os.fspath(path)


def combination_screen(reversed_every: int = 2):
    """Labels for an OOD split: 10 singles, 10 combinations (each written ``B+A`` in every
    ``reversed_every``-th cell), single perturbations written ``X+ctrl``, and controls."""
    labels = ["ctrl"] * 40
    for i in range(10):
        labels += [f"S{i}"] * 10
    for i in range(10):
        a, b = f"A{i}", f"B{i}"
        labels += [f"{b}+{a}" if k % reversed_every == 0 else f"{a}+{b}" for k in range(10)]
    labels += ["X+ctrl"] * 30
    return np.array(labels)


# -- files -----------------------------------------------------------------------------------

def cut_file(path, keep_bytes: int) -> str:
    """Truncate ``path`` to its first ``keep_bytes`` bytes (0: empty)."""
    with open(path, "rb") as fh:
        head = fh.read(keep_bytes)
    with open(path, "wb") as fh:
        fh.write(head)
    return os.fspath(path)


def evil_checkpoint(directory) -> tuple[str, str, str]:
    """A weights-only ``model.pt`` whose family names a .py file that writes a marker file
    when executed. Returns (checkpoint path, family string, marker path)."""
    directory = os.fspath(directory)
    marker = os.path.join(directory, "PAYLOAD_RAN")
    payload = os.path.join(directory, "payload.py")
    with open(payload, "w") as fh:
        fh.write(f"open({marker!r}, 'w').write('pwned')\n"
                 "from samsbench.models.baselines import ControlMean as Evil\n")
    family = f"{payload}:Evil"
    record = {"family": family, "hp": {}, "genes": ["A"], "columns": [],
              "encoding": "additive", "baseline_state": {}}
    path = os.path.join(directory, "model.pt")
    torch.save(record, path)
    return path, family, marker


# -- config ----------------------------------------------------------------------------------

def config(**changes) -> dict:
    """A minimal valid config; ``changes`` replace top-level tables (deep-copied)."""
    base = {
        "datasets": {"sim": {"source": "simulate"}},
        "splits": {"random": {"kind": "random"}},
        "models": {"sams_vae": {"family": "sams_vae"}},
        "experiments": {"tiny": {"dataset": "sim", "splits": ["random"],
                                 "models": ["sams_vae"]}},
        "run": ["tiny"],
    }
    base.update(copy.deepcopy(changes))
    return base


BROKEN_YAML = (
    "datasets:\n"
    "  sim: {source: simulate}\n"
    "models:\n"
    "  sams_vae: {family: sams_vae\n"  # line 4: the brace is never closed
    "splits:\n"
    "  random: {kind: random}\n"
)


# -- HTTP ------------------------------------------------------------------------------------

H5_BODY = HDF5_MAGIC + bytes(range(256)) * 40  # ~10 kB that starts like an HDF5 file


class HttpServer:
    """Routes map a path to a list of planned responses, used in turn (the last one repeats).

    A response is a dict: status, body, optional content_length (a lie, for truncation; None
    leaves the header out), headers, ranges=True to honour Range requests, send (bytes sent
    before closing), drip (seconds between single bytes: a stalled server).
    """

    def __init__(self):
        self.routes: dict[str, list[dict]] = {}
        self.requests: list[tuple[str, dict]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.requests.append((self.path, dict(self.headers)))
                plan = server.routes.get(self.path, [{"status": 404, "body": b"not found"}])
                response = plan.pop(0) if len(plan) > 1 else plan[0]
                body, status = response["body"], response["status"]
                start = 0
                range_header = self.headers.get("Range")
                if response.get("ranges") and range_header:
                    start = int(range_header.split("=")[1].rstrip("-"))
                    status = 206
                part = body[start:]
                self.send_response(status)
                self.send_header("Content-Type", response.get("type", "application/octet-stream"))
                length = response.get("content_length", len(part))
                if length is not None:
                    self.send_header("Content-Length", str(length))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                part = part[: response.get("send", len(part))]
                if not response.get("drip"):
                    self.wfile.write(part)
                    return
                try:
                    for i in range(len(part)):
                        self.wfile.write(part[i : i + 1])
                        self.wfile.flush()
                        time.sleep(response["drip"])
                except OSError:  # the client gave up: the point of the test
                    pass

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def hits(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def stale_part(directory, name: str) -> str:
    """The temporary file a download killed with SIGKILL leaves behind."""
    path = os.path.join(os.fspath(directory), f".{name}.k1ll3d.part")
    with open(path, "wb") as fh:
        fh.write(H5_BODY[:100])
    return path


# -- issue 24 --------------------------------------------------------------------------------

DUPLICATE_TOP_KEY_YAML = (
    "datasets:\n"
    "  sim: {source: simulate}\n"
    "models:\n"
    "  sams_vae: {family: sams_vae}\n"
    "splits:\n"
    "  random: {kind: random}\n"
    "models:\n"  # line 7: the second `models:` would replace the first
    "  additive_mean: {family: additive_mean}\n"
)

DUPLICATE_NESTED_KEY_YAML = (
    "models:\n"
    "  sams_vae: {family: sams_vae}\n"
    "  additive_mean: {family: additive_mean}\n"
    "  sams_vae: {family: sams_vae, n_latent: 3}\n"  # line 4
)


def other_dataset(data_path, out) -> str:
    """The dataset at ``data_path`` with one count changed: same cells, genes and labels, so
    only its checksum tells it from the original."""
    from samsbench.data import contract

    adata = contract.read(data_path)
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.array(adata.X)
    X[0, 0] += 1
    adata.X = X
    contract.write(adata, out)
    return os.fspath(out)


def moved_split(split_path, out) -> str:
    """The split file with its first cell moved to another subset."""
    table = pd.read_csv(split_path, sep="\t")
    first = table.loc[0, "split"]
    table.loc[0, "split"] = "test" if first != "test" else "train"
    table.to_csv(out, sep="\t", index=False)
    return os.fspath(out)


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: a pickle bomb (harmless)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_bomb(directory) -> tuple[str, str]:
    """A ``model.pt`` that torch's full unpickler would execute. Returns (path, marker)."""
    import pickle

    directory = os.fspath(directory)
    marker = os.path.join(directory, "PICKLE_RAN")
    path = os.path.join(directory, "model.pt")
    with open(path, "wb") as fh:
        pickle.dump({"family": "sams_vae", "state_dict": _Payload(marker)}, fh)
    return path, marker


def run_folder_naming_plugin(directory) -> tuple[str, str]:
    """A results folder whose summary.json and model.pt name a plug-in file that writes a
    marker when imported. Returns (run folder, marker)."""
    import json

    _, family, marker = evil_checkpoint(directory)
    with open(os.path.join(os.fspath(directory), "summary.json"), "w") as fh:
        json.dump({"family": family, "model": "m", "split": "random", "seed": 0}, fh)
    return os.fspath(directory), marker


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def stale_temp(directory, name: str, pid: int | None = None) -> str:
    """The atomic writer's temporary file of ``name`` as a process killed mid-write leaves
    it (``pid``: the writer; default a process that is gone)."""
    pid = dead_pid() if pid is None else pid
    path = os.path.join(os.fspath(directory), f".{name}.{pid}-k1ll3d.tmp")
    with open(path, "wb") as fh:
        fh.write(b"half a checkpoint")
    return path
