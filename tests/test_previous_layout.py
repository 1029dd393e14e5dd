"""Results and checkpoints written by the flat layout (commit 29f87a7, before csg/ had
sub-packages) still load: tests/fixtures/layout-29f87a7 was written by that version."""
import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from csg.method import engine
from csg.store import checkpoint as ckpt_lib
from csg.store.results import ResultStore

FIXTURE = Path(__file__).parent / "fixtures" / "layout-29f87a7"
RUN = "legacy-csg"


def _checkpoint(root: Path) -> Path:
    """The fixture's checkpoint in a copy of the fixture, its state file unzipped to the bytes
    that version wrote (kept gzipped in the repository: 1.0 MB instead of 1.1)."""
    folder = next((root / "checkpoints" / RUN).glob("checkpoint_*"))
    (folder / "state.pt").write_bytes(gzip.decompress((folder / "state.pt.gz").read_bytes()))
    return folder


def test_every_table_of_the_previous_layout_reads_with_pandas_and_the_store(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(FIXTURE, root)
    store = ResultStore(str(root))
    for table in ("runs", "epochs", "gates", "mi", "similarity"):
        frame = store.read(table)
        assert len(frame) > 0 and set(frame["run_id"].astype(str)) == {RUN}
        assert len(pd.read_parquet(root / table)) == len(frame)
    runs = store.read("runs").iloc[0]
    assert runs["status"] == "finished" and runs["model"] == "resnet20" and runs["method"] == "csg"
    assert len(store.read("epochs")) == 2 and len(store.read("gates")) == 10 * 64


def test_a_checkpoint_of_the_previous_layout_restores_and_scores_what_its_run_recorded(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(FIXTURE, root)
    folder = _checkpoint(root)
    state = ckpt_lib.read(folder)
    model, cfg, info = ckpt_lib.restore_model(folder, state)
    assert (cfg.model, cfg.method, info.num_classes) == ("resnet20", "csg", 10)
    test = ckpt_lib.checkpoint_split(folder, "test")
    correct, total = engine.evaluate(model, DataLoader(test, batch_size=256), torch.device("cpu"))
    recorded = ResultStore(str(root)).read("runs").iloc[0]
    assert correct / total == float(recorded["final_acc"])
    gates = ResultStore(str(root)).read("gates").sort_values(["class", "filter"])
    np.testing.assert_allclose(ckpt_lib.saved_gate(state).ravel(), gates["value"].to_numpy(), rtol=1e-6)
    features = ckpt_lib.checkpoint_features(folder, state=state)
    assert features["features"].shape == (total, 64)
