"""`ImageDataset` (items -> tensors) and DataLoader helpers."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from osnas.errors import OsnasError


def read_image(path: str):
    """Open an image as PIL RGB; a missing or undecodable file is an OsnasError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise OsnasError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        raise OsnasError(f"{path}: cannot decode image ({msg[:160]})") from None


class ImageDataset(Dataset):
    """items: (img_path, pid, camid[, dsetid]) -> (img_tensor, pid, camid, dsetid, index)."""

    def __init__(self, items, transform=None):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        it = self.items[index]
        path, pid, camid = it[0], it[1], it[2]
        dsetid = it[3] if len(it) > 3 else 0
        img = read_image(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, pid, camid, dsetid, index


def build_loader(dataset, batch_size: int | None = None, batch_sampler=None, shuffle: bool = False,
                 workers: int = 0, pin_memory: bool | None = None, drop_last: bool = False,
                 seed: int | None = None) -> DataLoader:
    """A DataLoader with the project's defaults: pinned memory when CUDA is there, persistent
    workers when workers > 0, a seeded generator (reproducible augmentation) when seed is given."""
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    kw = {}
    if workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=2)
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, pin_memory=pin_memory,
                          generator=gen, **kw)
    return DataLoader(dataset, batch_size=batch_size or 1, shuffle=shuffle, num_workers=workers,
                      pin_memory=pin_memory, drop_last=drop_last, generator=gen, **kw)


def make_test_loader(items, transform, batch_size: int = 128, workers: int = 2,
                     pin_memory: bool | None = None) -> DataLoader:
    """Evaluation loader: fixed order, no dropping."""
    return build_loader(ImageDataset(items, transform), batch_size=batch_size, shuffle=False, workers=workers,
                        pin_memory=pin_memory)
