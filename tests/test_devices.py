"""Device names: what "auto" picks, and one clear error for a device that does not exist here.

CI has no GPU, so CUDA and Apple's MPS are simulated by patching torch's availability queries: what is tested
is this module's decisions (and their messages), not the drivers.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from napari_deblurgan import devices  # noqa: E402
from napari_deblurgan.devices import (  # noqa: E402
    autocast_dtype,
    list_devices,
    resolve_device,
    training_autocast_dtype,
)
from napari_deblurgan.errors import InputError  # noqa: E402


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend this machine has ``n`` CUDA devices (and says whether bfloat16 is supported) and/or MPS."""

    def install(n: int = 0, *, bf16: bool = True, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: f"Fake GPU {i}")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(devices, "_mps_available", lambda: mps)

    return install


@pytest.mark.parametrize(
    "machine, expected",
    [({"n": 2}, "cuda"), ({"n": 1, "mps": True}, "cuda"), ({"mps": True}, "mps"), ({}, "cpu")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(fake_gpus, machine, expected):
    fake_gpus(**machine)
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected  # None means auto
    assert resolve_device("  AUTO ").type == expected


def test_explicit_devices_that_exist_are_returned(fake_gpus):
    fake_gpus(2, mps=True)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert resolve_device("mps").type == "mps"
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    "machine, name, message",
    [
        ({}, "cuda", "CUDA is not available here; use device='cpu'"),
        ({"n": 2}, "cuda:2", "this machine has 2 CUDA device(s)"),
        ({}, "mps", "MPS is not available here"),
        ({}, "tpu", "unknown device 'tpu'"),
        ({}, "meta", "unsupported device 'meta'"),
    ],
)
def test_a_device_that_is_not_here_is_one_clear_error(fake_gpus, machine, name, message):
    fake_gpus(**machine)
    with pytest.raises(InputError) as exc:
        resolve_device(name)
    assert message in str(exc.value)


def test_a_device_that_is_not_a_name_is_refused():
    with pytest.raises(InputError, match="device must be a string"):
        resolve_device(0)


def test_list_devices_names_every_gpu_after_the_cpu(fake_gpus):
    fake_gpus(2, mps=False)
    assert list_devices() == [("cpu", "CPU"), ("cuda:0", "cuda:0 — Fake GPU 0"), ("cuda:1", "cuda:1 — Fake GPU 1")]
    fake_gpus(0, mps=True)
    assert list_devices() == [("cpu", "CPU"), ("mps", "Apple MPS")]


def test_inference_autocast_dtype_per_device(fake_gpus):
    fake_gpus(1, bf16=True)
    assert autocast_dtype(torch.device("cuda")) is torch.bfloat16
    fake_gpus(1, bf16=False)  # an older card: float16 instead
    assert autocast_dtype(torch.device("cuda")) is torch.float16
    assert autocast_dtype(torch.device("mps")) is torch.float16
    assert autocast_dtype(torch.device("cpu")) is None


def test_training_precision_per_device(fake_gpus):
    fake_gpus(1, bf16=True)
    cuda, cpu, mps = torch.device("cuda"), torch.device("cpu"), torch.device("mps")
    assert training_autocast_dtype("auto", cuda) is torch.bfloat16
    assert training_autocast_dtype("auto", cpu) is None
    assert training_autocast_dtype("auto", mps) is None  # reduced precision never measured there
    assert training_autocast_dtype("float32", cuda) is None
    assert training_autocast_dtype("bfloat16", cpu) is torch.bfloat16
    assert training_autocast_dtype("float16", cuda) is torch.float16
    with pytest.raises(InputError, match="needs a GPU"):
        training_autocast_dtype("float16", cpu)
    with pytest.raises(InputError, match="precision must be one of"):
        training_autocast_dtype("fp8", cuda)
