"""CPU precision of tuneloop's engine: chosen by measurement (or forced), recorded, and bf16 close to fp32."""

import pytest
import torch

from tuneloop.data.io.formats import write_samples
from tuneloop.project import TrainConfig
from tuneloop.records import content_hash
from tuneloop.train.engine.precision import choose_cpu_precision, native_bf16, use_bf16_base
from tuneloop.train.sft import LATER_DEFAULTS, fingerprint, train_sft
from tests.test_train_engine import losses, samples

# bf16 autocast against fp32, tiny model, 50 steps, no dropout: largest relative loss gap measured 6.0e-5 (2026-12-02,
# AMX CPU); products rounded to bf16 drift more on other CPUs and larger models, so the bound leaves ~17x room
BF16_LOSS_TOLERANCE = 1e-3


def test_forced_settings_are_honoured_and_auto_follows_the_cpu_with_its_reason():
    for setting in ("fp32", "bf16", "mixed"):
        chosen = choose_cpu_precision(setting)
        assert chosen.dtype == setting and chosen.describe() == {"setting": setting, "chosen": setting}
    auto = choose_cpu_precision("auto")
    assert auto.dtype == ("mixed" if native_bf16() else "fp32")
    assert auto.describe()["reason"].startswith(f"auto: {auto.dtype}")
    with pytest.raises(ValueError, match="auto, fp32, bf16 or mixed"):
        choose_cpu_precision("fp16")


def test_the_run_record_says_which_precision_and_autocast_follows_it(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneloop.train.engine.runtime import prepare_runtime

    for setting in ("fp32", "bf16", "mixed", "auto"):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
        runtime = prepare_runtime(model, cuda=False, compile_mode="auto", cpu_precision=setting)
        info = runtime.describe()
        assert info["cpu_precision"]["setting"] == setting and info["precision"] == info["cpu_precision"]["chosen"]
        with runtime.autocast():
            assert torch.is_autocast_enabled("cpu") == (info["precision"] == "bf16")
        if setting != "auto":
            assert info["precision"] == setting
        # under bf16 autocast, attention runs in fp32 (measured faster on the CPU than the bf16 SDPA backward)
        assert (model.config._attn_implementation == "tuneloop_sdpa_fp32") == (info["precision"] == "bf16")
        # mixed: every frozen base projection of every layer multiplies in bf16, no LoRA adapter does
        frozen = [m for m in model.modules() if type(m) is torch.nn.Linear and hasattr(m, "tuneloop_bf16_weight")]
        assert len(frozen) == info.get("bf16_base_layers", 0) == (7 * model.config.num_hidden_layers
                                                                 if info["precision"] == "mixed" else 0)
        assert all(m.weight.requires_grad is False for m in frozen)


def test_mixed_keeps_a_small_lora_update_that_bf16_autocast_rounds_away(tiny_model_dir):
    """The point of `mixed`: base + LoRA delta is summed in fp32, so the delta survives; autocast sums in bf16."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["down_proj"], task_type="CAUSAL_LM"))
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    torch.nn.init.normal_(layer.lora_B["default"].weight, std=1e-3)  # a small update, as early in training
    x = torch.randn(64, layer.in_features)
    with torch.no_grad():
        exact = layer(x) - layer.base_layer(x)                # the LoRA delta in fp32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = layer(x).float() - layer.base_layer(x).float()
        use_bf16_base(model.base_model.model.model.layers)
        mixed = layer(x) - layer.base_layer(x)
        assert layer(x).dtype == torch.float32
    error = lambda got: ((got - exact).norm() / exact.norm()).item()  # noqa: E731
    assert error(mixed) < 1e-5 < 0.05 < error(autocast), (error(mixed), error(autocast))


@pytest.mark.parametrize("setting", ["bf16", "mixed"])
def test_bf16_settings_stay_within_their_tolerance_of_fp32_over_50_steps(tiny_model_dir, tmp_path, setting):
    train = write_samples(tmp_path / "train.jsonl", samples(64, 1))
    settings = dict(method="lora", max_length=192, per_device_batch=1, effective_batch=8, max_steps=50,
                    lora_dropout=0.0, learning_rate=2e-3, eval_steps=100)
    fp32 = train_sft(train, None, tmp_path / "fp32", str(tiny_model_dir), TrainConfig(**settings, cpu_precision="fp32"),
                     progress=False)
    other = train_sft(train, None, tmp_path / setting, str(tiny_model_dir),
                      TrainConfig(**settings, cpu_precision=setting), progress=False)
    assert fp32.run["engine"]["precision"] == "fp32" and other.run["engine"]["precision"] == setting
    a, b = losses(other), losses(fp32)
    assert len(a) == len(b) == 50
    gaps = [abs(x - y) / y for x, y in zip(a, b)]
    print(f"{setting} vs fp32: largest relative loss gap over 50 steps {max(gaps):.2e}")
    assert max(gaps) < BF16_LOSS_TOLERANCE, list(zip(a, b))
    assert 0 < max(gaps)  # bf16 products really ran: the curves are not bit-identical
    assert a[-1] < a[0] - 0.5


def test_runs_started_before_cpu_precision_existed_keep_their_fingerprint():
    class Split:
        sha256 = "abc"

    config = TrainConfig()
    before = {k: v for k, v in config.model_dump().items() if k not in LATER_DEFAULTS}  # hashed before they existed
    assert "cpu_precision" in LATER_DEFAULTS
    assert fingerprint("m", config, Split(), None, "") == content_hash("m", before, "abc", None, "")
    assert fingerprint("m", TrainConfig(cpu_precision="fp32"), Split(), None, "") != fingerprint("m", config, Split(), None, "")


def test_alignment_runs_keep_their_fingerprint_when_later_settings_stay_at_their_default():
    from tuneloop.project import AlignConfig
    from tuneloop.train.alignment import ALIGN_LATER_DEFAULTS, run_fingerprint

    config, align = TrainConfig(), AlignConfig()
    before = {k: v for k, v in align.model_dump().items() if k not in ALIGN_LATER_DEFAULTS}
    trained = {k: v for k, v in config.model_dump().items() if k not in LATER_DEFAULTS}
    assert run_fingerprint("dpo", "m", config, align, "abc") == content_hash("dpo", "m", trained, before, "abc")
    assert run_fingerprint("dpo", "m", config, AlignConfig(sft_weight=1.0), "abc") != run_fingerprint(
        "dpo", "m", config, align, "abc")
