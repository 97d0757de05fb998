"""Fixtures for the diffusion tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one thread is fastest, and the machine's cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
