"""Run train.py, except that checkpoint save number $HANG_AT_SAVE writes half of its
bytes and then hangs, announcing it on stdout, so that a test can kill the process
in the middle of a checkpoint write. Arguments are passed to train.py unchanged."""

import io
import os
import runpy
import sys
import time
from pathlib import Path

import torch

TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"
hang_at = int(os.environ["HANG_AT_SAVE"])
real_save = torch.save
saves = 0


def half_written_save(obj, file, *args, **kwargs):
    global saves
    saves += 1
    if saves < hang_at or isinstance(file, (str, os.PathLike)):
        return real_save(obj, file, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    file.write(data[: len(data) // 2])
    file.flush()
    print(f"HANGING IN SAVE {saves}", flush=True)
    time.sleep(3600)


torch.save = half_written_save
sys.argv = [str(TRAIN_PY), *sys.argv[1:]]
runpy.run_path(str(TRAIN_PY), run_name="__main__")
