"""DPO (`tuneloop train dpo`): from an SFT adapter, on pairs, with the run card, resume and no answer ever cut."""

import json
import random

import pytest

from tuneloop.data.io.formats import write_samples
from tuneloop.files import read_json
from tuneloop.project import AlignConfig, TrainConfig
from tuneloop.records import Sample
from tuneloop.train.prefs import encode_pair, preference_pair

INTENTS = ["refund", "delivery", "complaint", "question"]
SYSTEM = "You extract tickets."


def pair_samples(count, seed, long_rejected=0):
    """Tickets whose chosen answer is clean JSON and whose rejected one wraps it in prose (the noise DPO removes)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        intent, order = rng.choice(INTENTS), f"A{rng.randint(10000, 99999)}"
        answer = json.dumps({"intent": intent, "order_id": order})
        rejected = f"Here is the JSON: {answer}" + (" and more words" * 40 if i < long_rejected else "")
        rows.append(Sample(id=f"p{seed}-{i}", instruction="Extract the ticket fields as JSON.",
                           input=f"Order {order}: I want a {intent}.", output=answer, rejected=rejected))
    return rows


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, tmp_path_factory):
    from tuneloop.train.sft import train_sft

    folder = tmp_path_factory.mktemp("dpo-sft")
    train = write_samples(folder / "train.jsonl", pair_samples(16, 1))
    return train_sft(train, None, folder / "sft", str(tiny_model_dir),
                     TrainConfig(max_length=160, per_device_batch=2, effective_batch=4, max_steps=2, engine="trl"),
                     default_system=SYSTEM, progress=False)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dpo-pairs")
    train = pair_samples(12, 3, long_rejected=2) + [Sample(id="plain", instruction="Extract.", input="x", output="{}")]
    return write_samples(folder / "train.jsonl", train), write_samples(folder / "val.jsonl", pair_samples(4, 4))


SETTINGS = TrainConfig(max_length=120, per_device_batch=2, effective_batch=4, eval_steps=2, lora_dropout=0.0)
ALIGN = AlignConfig(max_steps=8, learning_rate=5e-3, beta=0.1)


@pytest.fixture(scope="module")
def dpo_run(sft_run, pairs, tmp_path_factory):
    from tuneloop.train.dpo import train_dpo

    out = tmp_path_factory.mktemp("dpo-runs") / "d1"
    return train_dpo(*pairs, out, str(sft_run.out_dir), SETTINGS, ALIGN, default_system=SYSTEM, progress=False)


def test_a_sample_with_rejected_becomes_one_pair_with_the_prompt_serving_renders(tiny_model_dir):
    from transformers import AutoTokenizer

    from tuneloop.train.templates import prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    sample = pair_samples(1, 9)[0]
    pair = preference_pair(sample, SYSTEM)
    assert pair.chosen == sample.output and pair.rejected == sample.rejected and pair.prompt[0]["content"] == SYSTEM
    encoded = encode_pair(tokenizer, sample, 512, SYSTEM)
    assert encoded.prompt_ids == prompt_ids(tokenizer, sample, SYSTEM)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert encoded.chosen_ids[-1] == end and encoded.rejected_ids[-1] == end
    assert tokenizer.decode(encoded.chosen_ids[:-1]) == sample.output
    assert tokenizer.decode(encoded.rejected_ids[:-1]) == sample.rejected
    assert preference_pair(sample.model_copy(update={"rejected": None})) is None


def test_a_pair_too_long_is_quarantined_never_cut(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long = pair_samples(1, 5, long_rejected=1)[0]
    encoded = encode_pair(tokenizer, long, 10_000, SYSTEM)
    limit = len(encoded) - 1  # one token short of the longer sequence
    reason = encode_pair(tokenizer, long, limit, SYSTEM)
    assert isinstance(reason, str) and "never cuts an answer" in reason and f"max_length {limit}" in reason
    assert not isinstance(encode_pair(tokenizer, long, len(encoded), SYSTEM), str)  # exactly fitting is kept
    same = long.model_copy(update={"rejected": long.output})
    assert "the same answer" in encode_pair(tokenizer, same, 10_000, SYSTEM)


def test_dpo_from_an_sft_run_writes_a_run_folder_and_lowers_the_loss(dpo_run, sft_run, pairs):
    out = dpo_run.out_dir
    for name in ("run.json", "config.json", "metrics.jsonl", "run_card.html", "run_card.md", "adapter", "quarantine.jsonl"):
        assert (out / name).exists(), name
    run = read_json(out / "run.json")
    assert run["kind"] == "dpo" and run["base_model"] == sft_run.run["base_model"]
    assert run["started_from"].startswith("adapter ") and "ref" in run["reference"]
    assert run["pairs"] == {"train": 10, "val": 4} and run["steps"] >= 2
    losses = [m["loss"] for m in dpo_run.metrics if "loss" in m]
    assert losses[0] == pytest.approx(0.6931, abs=0.01)  # log 2: the reference is the policy the run starts from
    assert min(losses[-3:]) < losses[0] - 0.05, losses
    assert any("rewards/margins" in m for m in dpo_run.metrics)
    # the saved adapter is the policy only (no `ref` copy) and loads on its base like any run's adapter
    assert not (out / "adapter" / "ref").exists()
    from tuneloop.models import load_causal_lm

    model, _ = load_causal_lm(str(out / "adapter"))
    assert list(model.peft_config) == ["default"]
    card = (out / "run_card.md").read_text()
    assert "reference" in card and "max_length" in card and "no `rejected` answer" in card and "dpo (lora)" in card


def test_no_chosen_or_rejected_answer_reaches_the_model_cut(dpo_run, pairs):
    """The two long pairs are quarantined with their lengths; every pair trained on is fed whole."""
    quarantined = [json.loads(line) for line in (dpo_run.out_dir / "quarantine.jsonl").read_text().splitlines()]
    assert sorted(q["sample_id"] for q in quarantined) == ["p3-0", "p3-1"]
    assert all("never cuts an answer" in q["reason"] for q in quarantined)
    config = read_json(dpo_run.out_dir / "config.json")
    summary = config["data"]["train"]
    assert summary["samples"] == summary["pairs"] + summary["without_rejected"] + summary["quarantined"] == 13
    assert summary["longest_row_tokens"] <= SETTINGS.max_length


def test_the_trainer_feeds_every_answer_whole(dpo_run, sft_run, pairs):
    """What TRL's collator hands the model holds each pair's full chosen and rejected tokens (max_length=None)."""
    from transformers import AutoTokenizer

    from tuneloop.train import dpo

    tokenizer = AutoTokenizer.from_pretrained(sft_run.adapter_dir)
    prepared = dpo.prepare_pairs(tokenizer, pairs[0], 10_000, SYSTEM)  # a ceiling that quarantines nothing
    import torch
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    # what train_dpo handed TRL, read back from the run's own checkpoint
    args = torch.load(dpo_run.out_dir / "checkpoints" / "checkpoint-8" / "training_args.bin", weights_only=False)
    assert args.max_length is None and args.beta == ALIGN.beta and args.bf16 is False
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=args.max_length)(prepared.rows())
    n = len(prepared.pairs)
    for i, pair in enumerate(prepared.pairs):
        assert int(batch["completion_mask"][i].sum()) == len(pair.chosen_ids)
        assert int(batch["completion_mask"][n + i].sum()) == len(pair.rejected_ids)
    # the negative control: TRL's default max_length (1024) cuts a long pair where tuneloop's ceiling is lower
    cut = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=40)(prepared.rows())
    assert int(cut["completion_mask"][n].sum()) < len(prepared.pairs[0].rejected_ids)


def test_a_killed_run_resumes_from_its_checkpoint_and_another_run_is_refused(dpo_run, sft_run, pairs, tmp_path):
    import shutil

    from tuneloop.train.dpo import train_dpo
    from tuneloop.train.sft import TrainError

    more = ALIGN.model_copy(update={"max_steps": 10})
    with pytest.raises(TrainError, match="holds a run with other data"):
        train_dpo(*pairs, dpo_run.out_dir, str(sft_run.out_dir), SETTINGS, more, default_system=SYSTEM, progress=False)
    # a run killed after its step-6 checkpoint: no step-8 checkpoint, no run.json, its metrics up to step 8
    killed = tmp_path / "killed"
    shutil.copytree(dpo_run.out_dir, killed)
    shutil.rmtree(killed / "checkpoints" / "checkpoint-8")
    (killed / "run.json").unlink()
    kept = sorted(p.name for p in (killed / "checkpoints").glob("checkpoint-*"))
    assert kept == ["checkpoint-6"], kept
    again = train_dpo(*pairs, killed, str(sft_run.out_dir), SETTINGS, ALIGN, default_system=SYSTEM, progress=False)
    assert again.run["resumed_from"].endswith("checkpoint-6") and again.run["steps"] == 8
    steps = [m["step"] for m in again.metrics if "loss" in m]
    assert steps == list(range(1, 9))  # the curve continues, no step twice
    resumed = [m["loss"] for m in again.metrics if "loss" in m][6:]
    first = [m["loss"] for m in dpo_run.metrics if "loss" in m][6:]
    assert resumed == pytest.approx(first, abs=1e-3)  # the same policy, optimizer and reference as before the kill


def test_tuneloop_train_dpo_runs_from_the_command_line(sft_run, pairs, tmp_path):
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["train", "dpo", "--train", str(pairs[0]), "--val", str(pairs[1]), "--out",
                                      str(out), "--model", str(sft_run.out_dir), "--beta", "0.2", "--loss-type", "ipo",
                                      "--max-steps", "2", "--max-length", "120", "--quiet"])
    assert result.exit_code == 0, result.output
    run = read_json(out / "run.json")
    assert run["beta"] == 0.2 and run["loss_type"] == "ipo" and "10 pairs" in result.output
    no_pairs = CliRunner().invoke(app, ["train", "dpo", "--train", str(pairs[0]), "--out", str(tmp_path / "x"),
                                        "--model", str(sft_run.out_dir), "--max-length", "20", "--quiet"])
    assert no_pairs.exit_code == 2 and "no preference pair to train on" in no_pairs.output


def test_an_unknown_loss_type_is_one_line_naming_the_setting(tmp_path):
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    result = CliRunner().invoke(app, ["train", "dpo", "--train", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "o"),
                                      "--model", "default", "--loss-type", "sigmoidd"])
    assert result.exit_code == 2 and "align.loss_type" in result.output and "sigmoid" in result.output
    assert "Traceback" not in result.output


def test_sft_weight_adds_the_chosen_nll_and_ld_alpha_stops_a_long_rejected_winning_by_length(sft_run, pairs, dpo_run,
                                                                                              tmp_path):
    from tuneloop.train.dpo import train_dpo

    def first_step(run):
        return next(m for m in run.metrics if "loss" in m)

    plain = first_step(dpo_run)
    assert plain["loss"] == pytest.approx(0.6931, abs=1e-3)  # the policy is its own reference at step 1
    rpo = train_dpo(*pairs, tmp_path / "rpo", str(sft_run.out_dir), SETTINGS,
                    ALIGN.model_copy(update={"max_steps": 1, "sft_weight": 1.0}), default_system=SYSTEM, progress=False)
    # DPO's log 2 plus the chosen answers' mean token NLL under the SFT model (a tiny model: well above 0.1)
    assert first_step(rpo)["loss"] > plain["loss"] + 0.1
    reasons = {r["name"] for r in read_json(rpo.out_dir / "config.json")["derived"]["reasons"]}
    assert rpo.run["sft_weight"] == 1.0 and "sft_weight" in reasons
    ld = train_dpo(*pairs, tmp_path / "ld", str(sft_run.out_dir), SETTINGS,
                   ALIGN.model_copy(update={"max_steps": 1, "ld_alpha": 0.0}), default_system=SYSTEM, progress=False)
    # every rejected answer is longer than its chosen one ("Here is the JSON: " before it): with ld_alpha 0 only
    # the shared length counts, so the same batch's rejected log-probability is a shorter, larger sum
    assert first_step(ld)["logps/rejected"] > plain["logps/rejected"] + 1.0
    assert first_step(ld)["logps/chosen"] == pytest.approx(plain["logps/chosen"], abs=1e-3)
