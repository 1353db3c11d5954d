"""A PipelineError stays one line wherever it is raised, a DataLoader worker included (torch
re-raises a worker's error built from the worker's whole traceback)."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader, Dataset

from pipeline.errors import PipelineError

MESSAGE = "data_dir=s3://bucket/person/train: sample 3 cannot be read; run preprocess again"


class Unreadable(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        raise PipelineError(MESSAGE)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_loader_workers_error_keeps_its_one_line(workers: int) -> None:
    with pytest.raises(PipelineError) as raised:
        next(iter(DataLoader(Unreadable(), num_workers=workers)))
    assert str(raised.value) == MESSAGE


def test_a_message_that_only_looks_wrapped_is_kept() -> None:
    text = "Caught PipelineError here\nOriginal Traceback: none, and no raised line"
    assert str(PipelineError(text)) == text
