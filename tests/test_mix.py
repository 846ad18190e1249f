"""Mix: shares move toward the target by down-sampling, deficits are reported, negatives become DPO partners."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.data.gate.mix import deficits, keep_counts, mix, pair_negatives
from tuneloop.records import Sample

TARGET = {"golden": 0.4, "negative": 0.2, "boundary": 0.3, "generic": 0.1}


def typed(counts: dict[str, int]) -> list[Sample]:
    return [Sample(id=f"{kind}{i}", instruction=f"{kind} question {i}", output="a", sample_type=kind)
            for kind, count in counts.items() for i in range(count)]


def test_over_represented_types_are_down_sampled_to_the_exact_target_when_possible():
    result = mix(typed({"golden": 100, "negative": 20, "boundary": 30, "generic": 10}), TARGET, max_drop=0.9)
    assert result.after == {"golden": 40, "negative": 20, "boundary": 30, "generic": 10}
    assert all(v == 0 for v in result.deficit.values())
    assert len(result.dropped) == 60


def test_a_missing_type_does_not_wipe_out_the_data_and_its_deficit_is_reported():
    result = mix(typed({"golden": 100, "boundary": 50}), TARGET, max_drop=0.3)
    assert sum(result.after.values()) >= 0.7 * 150 - 1
    assert result.deficit["negative"] > 0 and result.deficit["generic"] > 0


def test_deficit_is_what_makes_the_share_reach_the_target():
    kept = {"golden": 60, "negative": 10}
    need = deficits(kept, {"golden": 0.5, "negative": 0.5})
    assert need == {"golden": 0, "negative": 50}
    assert (10 + need["negative"]) / (70 + need["negative"]) >= 0.5


def test_resampling_off_keeps_every_row():
    data = typed({"golden": 100, "negative": 5})
    result = mix(data, TARGET, resample=False)
    assert len(result.train) == 105 and not result.dropped


def test_reviewed_rows_survive_down_sampling_first():
    data = typed({"golden": 10, "negative": 1})
    data[3] = data[3].model_copy(update={"meta": data[3].meta.model_copy(update={"reviewer": "lee"})})
    result = mix(data, {"golden": 0.5, "negative": 0.5}, max_drop=1.0)
    assert [s.id for s in result.train if s.sample_type == "golden"] == ["golden3"]


def test_negatives_become_rejected_partners_of_their_golden_twin_by_seed_or_prompt():
    golden = Sample(id="g", instruction="Extract.", input="order 1", output='{"id": 1}', lineage={"source_id": "S1"})
    negative = Sample(id="n", instruction="Extract. (variant)", input="order 1", output='{"id": 2}',
                      sample_type="negative", lineage={"source_id": "S1"})
    golden2 = Sample(id="g2", instruction="Extract.", input="order 2", output='{"id": 2}')
    negative2 = Sample(id="n2", instruction="Extract.", input="order 2", output="{}", sample_type="negative")
    lonely = Sample(id="g3", instruction="Extract.", input="order 3", output='{"id": 3}')
    paired, count = pair_negatives([golden, negative, golden2, negative2, lonely])
    by_id = {s.id: s for s in paired}
    assert count == 2
    assert by_id["g"].rejected == '{"id": 2}' and by_id["g2"].rejected == "{}" and by_id["g3"].rejected is None


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(list(TARGET)), st.integers(0, 200), min_size=1), st.floats(0, 1))
def test_keep_counts_never_exceed_what_exists_and_respect_the_drop_bound(counts, max_drop):
    keep = keep_counts(counts, TARGET, max_drop)
    assert all(0 <= keep[k] <= counts[k] for k in counts)
    assert sum(keep.values()) >= (1 - max_drop) * sum(counts.values()) - 1e-6


def test_the_mix_command_writes_every_row_it_leaves_out_whole_beside_its_output(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tuneloop.cli.main import app
    from tuneloop.data.io.formats import load_samples, write_samples

    monkeypatch.chdir(tmp_path)
    rows = typed({"golden": 30, "negative": 4, "boundary": 6, "generic": 2})
    source = write_samples(tmp_path / "train.jsonl", rows)
    result = CliRunner().invoke(app, ["data", "mix", str(source), "--out", "mixed.jsonl"])
    assert result.exit_code == 0, result.output
    kept, dropped = load_samples(tmp_path / "mixed.jsonl"), load_samples(tmp_path / "mixed.dropped.jsonl")
    assert dropped and sorted(s.id for s in kept + dropped) == sorted(s.id for s in rows)
    by_id = {s.id: s for s in rows}
    assert all(s.model_dump() == by_id[s.id].model_dump() for s in dropped)  # whole rows, not ids
    assert f"rows: {len(rows)} in = {len(kept)} kept + {len(dropped)} left out by the mix + 0 quarantined" in result.output


def test_relabeled_traffic_is_never_dropped_even_past_its_types_share():
    seeds = typed({"golden": 40, "negative": 20, "boundary": 30, "generic": 10})
    traffic = [Sample(id=f"t{i}", instruction=f"a failing message {i}", output="b", sample_type="negative",
                      meta={"source": "traffic", "annotator": "ann"}) for i in range(30)]
    result = mix(seeds + traffic, TARGET, max_drop=0.9)
    kept = {s.id for s in result.train}
    assert {s.id for s in traffic} <= kept
    assert result.after["negative"] == 30  # the seeds' negatives gave way, the traffic stayed
    assert len(seeds) + len(traffic) == len(result.train) + len(result.dropped)
