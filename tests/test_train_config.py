import math

import pytest

from tuneloop.project import TrainConfig
from tuneloop.train.config import derive_settings, val_loss_oscillates


def test_learning_rate_defaults_follow_the_method():
    assert derive_settings(TrainConfig(method="lora"), 100, 1000).learning_rate == 2e-4
    assert derive_settings(TrainConfig(method="qlora"), 100, 1000).learning_rate == 2e-4
    assert derive_settings(TrainConfig(method="full"), 100, 1000).learning_rate == 1e-5
    assert derive_settings(TrainConfig(learning_rate=3e-5), 100, 1000).learning_rate == 3e-5


def test_accumulation_reaches_the_effective_batch_over_gpus():
    config = TrainConfig(effective_batch=64, per_device_batch=4, packing=False)
    one = derive_settings(config, 10_000, 10_000, gpus=1)
    two = derive_settings(config, 10_000, 10_000, gpus=3)
    assert one.gradient_accumulation == 16 and one.achieved_effective_batch == 64
    assert two.gradient_accumulation == math.ceil(64 / (4 * 3)) == 6
    assert two.achieved_effective_batch == 72  # reported honestly, above the target


def test_packed_rows_count_their_samples_toward_the_effective_batch():
    settings = derive_settings(TrainConfig(effective_batch=64, per_device_batch=4), 250, 1000, cuda=True)
    assert settings.gradient_accumulation == 4  # 4 bins × 4 samples per bin × 4 = 64 samples


def test_warmup_is_three_to_five_percent_of_the_real_step_count():
    settings = derive_settings(TrainConfig(effective_batch=64, per_device_batch=4, epochs=2, packing=False), 6400, 6400)
    assert settings.optimizer_steps == 200
    assert 0.03 * 200 <= settings.warmup_steps <= 0.05 * 200


def test_lora_alpha_is_twice_the_rank_on_all_linear_layers():
    settings = derive_settings(TrainConfig(lora_rank=32), 100, 1000)
    assert settings.lora_alpha == 64 and settings.lora_targets == "all-linear"
    assert derive_settings(TrainConfig(method="full"), 100, 1000).lora_alpha is None


def test_small_data_lowers_the_batch_so_an_epoch_has_several_steps():
    settings = derive_settings(TrainConfig(effective_batch=64, per_device_batch=4, packing=False), 300, 300)
    assert settings.steps_per_epoch >= 8
    assert any(r.name == "effective_batch_target" for r in settings.reasons)


def test_every_derived_value_has_a_reason():
    settings = derive_settings(TrainConfig(), 100, 1000)
    names = {r.name for r in settings.reasons}
    assert {"learning_rate", "gradient_accumulation", "achieved_effective_batch", "warmup_steps", "lora_alpha",
            "scheduler"} <= names
    assert all(r.reason for r in settings.reasons)


def test_no_rows_is_an_error_that_says_why():
    with pytest.raises(ValueError, match="no training rows"):
        derive_settings(TrainConfig(), 0, 0)


def test_oscillating_val_loss_is_detected_only_without_improvement():
    assert val_loss_oscillates([1.0, 0.8, 0.9, 0.85, 0.95, 0.82], 4)
    assert not val_loss_oscillates([1.0, 0.9, 0.8, 0.7, 0.6], 4)
    assert not val_loss_oscillates([1.0, 0.8, 0.9, 0.7, 0.95, 0.82], 4)  # 0.7 beat the earlier best
    assert not val_loss_oscillates([1.0, 0.9], 4)
