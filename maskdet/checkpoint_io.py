"""Checkpoints are written whole or not at all.

Lightning's ``TorchCheckpointIO`` saves through fsspec, whose local "transaction" writes to a temporary file
in the system temp folder and then *copies* it across file systems: on a full disk that copy leaves a
truncated file under the final name (``last.ckpt`` that no longer loads). Here the temporary file sits
beside the final one and is renamed into place, which is atomic on one file system.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from maskdet.writing import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        with atomic_file(path, "wb") as handle:
            try:
                torch.save(checkpoint, handle)
            except RuntimeError as err:
                # torch.save reports a full disk as a RuntimeError from its zip writer: name it for what it is
                # (checked while the partial file still fills the disk)
                if shutil.disk_usage(path.parent).free < 4 * 2**20:
                    raise OSError(errno.ENOSPC, "No space left on device", str(path)) from err
                raise

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        """Tensors and plain values only, whatever the caller asks: a checkpoint to resume from may come
        from anyone (a copied run folder), and a full unpickle would run any code it names."""
        if map_location is None:
            return super().load_checkpoint(path, weights_only=True)
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
