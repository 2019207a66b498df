"""ml.train.precision: AMP where it helps, chosen by what the CPU can do (flags injected: the
"AVX2" answers never rest on this machine's own flags)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from ml.train import precision as prec
from ml.train.config import TrainConfig
from ml.train.loop import fit
from ml.train.models import build_model
from ml.train.precision import Precision, choose_precision

CPU = torch.device("cpu")
# an AVX2-only AMD EPYC's bf16-relevant flags, and an Intel Xeon with bf16 units
AVX2_FLAGS = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
XEON_FLAGS = AVX2_FLAGS | {"avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_bf16", "amx_tile"}
NO_BF16 = "amp requested but this CPU (AVX2) has no native bf16: training in fp32; force with force_amp"


@pytest.fixture(autouse=True)
def fresh_log_memory(monkeypatch):
    """Each test starts with no reason logged yet and no oneDNN ISA cap in the environment."""
    monkeypatch.setattr(prec, "_logged", set())
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)


def simulate_cpu(monkeypatch, flags: frozenset[str], capability: str) -> None:
    """Make this machine look like another CPU to every caller of choose_precision."""
    monkeypatch.setattr(prec, "machine_cpu_flags", lambda: flags)
    monkeypatch.setattr(prec, "machine_cpu_capability", lambda: capability)


def test_cpu_without_native_bf16_trains_fp32_and_says_why() -> None:
    p = choose_precision(CPU, True, cpu_flags=AVX2_FLAGS, capability="AVX2")
    assert p == Precision(None, NO_BF16)
    assert (p.name, p.dtype_name) == ("fp32", None)
    assert p.tags() == {"precision": "fp32", "precision_reason": NO_BF16}


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_cpu_with_a_native_bf16_flag_trains_bf16(flag) -> None:
    p = choose_precision(CPU, True, cpu_flags=AVX2_FLAGS | {"avx512f", flag}, capability="AVX512")
    assert p.dtype is torch.bfloat16 and (p.name, p.dtype_name) == ("bf16", "bfloat16")
    assert p.reason == f"amp on a CPU with native bf16 ({flag})"


def test_bf16_flags_without_torchs_avx512_kernels_or_with_onednn_capped_train_fp32(monkeypatch) -> None:
    p = choose_precision(CPU, True, cpu_flags=XEON_FLAGS, capability="AVX2")
    assert p.dtype is None and "kernels run AVX2, not AVX512" in p.reason and "amx_bf16 + avx512_bf16" in p.reason
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    p = choose_precision(CPU, True, cpu_flags=XEON_FLAGS, capability="AVX512")
    assert p.dtype is None and "oneDNN is capped at AVX2" in p.reason
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")  # a cap at or above bf16 changes nothing
    assert choose_precision(CPU, True, cpu_flags=XEON_FLAGS, capability="AVX512").dtype is torch.bfloat16


def test_depthwise_archs_need_amx_for_bf16_on_a_cpu() -> None:
    zen4 = AVX2_FLAGS | {"avx512f", "avx512_bf16"}  # native bf16 units without AMX
    lite = choose_precision(CPU, True, cpu_flags=zen4, capability="AVX512", arch="efficientnet_lite0")
    assert lite.dtype is None and "without AMX, efficientnet_lite0's depthwise convolutions" in lite.reason
    assert choose_precision(CPU, True, cpu_flags=zen4, capability="AVX512", arch="resnet18").dtype is torch.bfloat16
    amx = choose_precision(CPU, True, cpu_flags=XEON_FLAGS, capability="AVX512", arch="efficientnet_lite2")
    assert amx.dtype is torch.bfloat16
    forced = choose_precision(CPU, True, force=True, cpu_flags=zen4, capability="AVX512", arch="efficientnet_lite0")
    assert forced.dtype is torch.bfloat16 and "forced" in forced.reason


def test_precision_for_applies_the_arch_rule_to_channels_last_runs(monkeypatch) -> None:
    simulate_cpu(monkeypatch, AVX2_FLAGS | {"avx512f", "avx512_bf16"}, "AVX512")
    lite = TrainConfig(arch="efficientnet_lite0", amp=True)
    assert lite.channels_last and prec.precision_for(lite).dtype is None
    # measured so only in channels_last: in the default format bf16 was the faster one
    assert prec.precision_for(lite.model_copy(update={"channels_last": False})).dtype is torch.bfloat16
    assert prec.precision_for(TrainConfig(arch="resnet18", amp=True)).dtype is torch.bfloat16


def test_force_gives_bf16_without_native_support_and_says_so() -> None:
    p = choose_precision(CPU, True, force=True, cpu_flags=AVX2_FLAGS, capability="AVX2")
    assert p.dtype is torch.bfloat16
    assert p.reason.startswith("amp forced (force_amp) although this CPU (AVX2) has no native bf16")
    native = choose_precision(CPU, True, force=True, cpu_flags=XEON_FLAGS, capability="AVX512")
    assert native.dtype is torch.bfloat16 and "forced" not in native.reason


@pytest.mark.parametrize("flags,capability", [(AVX2_FLAGS, "AVX2"), (XEON_FLAGS, "AVX512")])
@pytest.mark.parametrize("force", [False, True])
def test_amp_off_is_fp32_everywhere(flags, capability, force) -> None:
    assert choose_precision(CPU, False, force, flags, capability) == Precision(None, "amp off")


def test_cuda_as_before_bf16_when_supported_else_fp16(monkeypatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_precision(cuda, True, cpu_flags=AVX2_FLAGS, capability="AVX2").dtype is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    p = choose_precision(cuda, True)
    assert p.dtype is torch.float16 and p.name == "fp16"
    assert choose_precision(cuda, False).dtype is None
    with pytest.raises(ValueError, match="not supported on meta"):
        choose_precision(torch.device("meta"), True)


def test_the_fp32_decision_is_logged_once_on_ml_train(caplog) -> None:
    caplog.set_level(logging.INFO, logger="ml.train")
    for _ in range(3):
        choose_precision(CPU, True, cpu_flags=AVX2_FLAGS, capability="AVX2")
    choose_precision(CPU, True, cpu_flags=XEON_FLAGS, capability="AVX512")  # granted: nothing to say
    choose_precision(CPU, False, cpu_flags=AVX2_FLAGS, capability="AVX2")  # not requested: nothing to say
    records = [r for r in caplog.records if r.name == "ml.train"]
    assert [(r.levelno, r.getMessage()) for r in records] == [(logging.WARNING, NO_BF16)]


def test_machine_flags_come_from_proc_cpuinfo_or_torch(monkeypatch) -> None:
    if torch.cpu.get_capabilities().get("architecture") == "x86_64":
        assert {"sse2", "avx"} <= prec.machine_cpu_flags()  # the flags line, split into names
    assert prec.machine_cpu_capability() == torch.backends.cpu.get_cpu_capability()

    def unreadable(*_a, **_k):
        raise OSError("no /proc here")

    prec.machine_cpu_flags.cache_clear()
    monkeypatch.setattr(prec.Path, "read_text", unreadable)
    try:
        fallback = prec.machine_cpu_flags()
        assert fallback == {k for k, v in torch.cpu.get_capabilities().items() if v is True}
    finally:
        prec.machine_cpu_flags.cache_clear()


# --- fit, the LR range test and the tune grid use the decision ----------------------------------


def _tiny_data(n: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    labels = np.arange(n) % 3
    images = rng.integers(0, 255, size=(n, size, size, 3), dtype=np.uint8)
    return images, labels.astype(np.int64)


def _fit_seeing_dtypes(cfg: TrainConfig):
    model = build_model("resnet18", 3)
    seen: set[torch.dtype] = set()
    model.fc.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    result = fit(_tiny_data(6), _tiny_data(3), ["a", "b", "c"], cfg, model=model)
    return result, seen


def _tiny_cfg(**overrides) -> TrainConfig:
    return TrainConfig(
        **{
            **dict(
                arch="resnet18", epochs=1, batch_size=6, lr=0.01, device="cpu", progress=False, snapshots=0, amp=True
            ),
            **overrides,
        }
    )


def test_fit_with_amp_on_a_simulated_avx2_cpu_trains_fp32_and_records_why(monkeypatch, caplog) -> None:
    simulate_cpu(monkeypatch, AVX2_FLAGS, "AVX2")
    caplog.set_level(logging.WARNING, logger="ml.train")
    result, seen = _fit_seeing_dtypes(_tiny_cfg())
    assert seen == {torch.float32}  # autocast off in training and validation
    assert result.amp_dtype is None and result.precision_reason == NO_BF16
    assert result.precision == Precision(None, NO_BF16)
    assert [r.getMessage() for r in caplog.records if r.name == "ml.train"] == [NO_BF16]


def test_fit_with_amp_on_a_simulated_bf16_cpu_or_forced_trains_bf16(monkeypatch) -> None:
    # one step of 6 images at 16 px: seconds even where bf16 is emulated
    simulate_cpu(monkeypatch, XEON_FLAGS, "AVX512")
    result, seen = _fit_seeing_dtypes(_tiny_cfg())
    assert seen == {torch.bfloat16} and result.amp_dtype == "bfloat16"
    assert result.precision_reason == "amp on a CPU with native bf16 (amx_bf16 + avx512_bf16)"
    simulate_cpu(monkeypatch, AVX2_FLAGS, "AVX2")
    result, seen = _fit_seeing_dtypes(_tiny_cfg(force_amp=True))
    assert seen == {torch.bfloat16} and result.precision.name == "bf16"
    assert "forced" in result.precision_reason


@pytest.mark.parametrize(
    "flags,capability,expected", [(AVX2_FLAGS, "AVX2", None), (XEON_FLAGS, "AVX512", torch.bfloat16)]
)
def test_lr_range_test_uses_the_same_decision(monkeypatch, flags, capability, expected) -> None:
    from ml.train import recipes

    simulate_cpu(monkeypatch, flags, capability)
    seen = {}
    monkeypatch.setattr(recipes, "lr_range_test", lambda *a, **k: seen.update(k))
    recipes.find_lr(_tiny_data(6), ["a", "b", "c"], _tiny_cfg(), num_iter=2)
    assert seen["amp_dtype"] is expected


def test_tune_grid_drops_the_amp_cell_that_would_train_fp32() -> None:
    from ml.train.sweep import amp_grid, search_space

    space, note = search_space(
        (1e-3, 1e-1), ["sgd"], [False, True], ["resnet18"], device="cpu", cpu_flags=AVX2_FLAGS, capability="AVX2"
    )
    assert space["amp"] == {"grid_search": [False]}
    assert note == f"amp [False, True] is one configuration on this machine ({NO_BF16}): one cell, amp=False"
    space, note = search_space(
        (1e-3, 1e-1), ["sgd"], [False, True], ["resnet18"], device="cpu", cpu_flags=XEON_FLAGS, capability="AVX512"
    )
    assert space["amp"] == {"grid_search": [False, True]} and note is None
    # forced AMP is a different configuration again; a single value is left as asked
    assert amp_grid([False, True], "cpu", force=True, cpu_flags=AVX2_FLAGS, capability="AVX2") == ([False, True], None)
    assert amp_grid([True], "cpu", cpu_flags=AVX2_FLAGS, capability="AVX2") == ([True], None)
    assert amp_grid([True, False], "cpu", cpu_flags=AVX2_FLAGS, capability="AVX2")[0] == [False]
