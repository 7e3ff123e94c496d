"""The unified-vs-separate FLOPs table: every module counted, separate models cost about three trunks."""
from hcq_ros.evaluation.cost import cost_table, markdown


def test_cost_table_small_profile():
    flops, single = cost_table("small", 64)
    parts = sum(v for k, v in flops.items() if k != "total")
    assert flops["total"] > 0 and abs(parts - flops["total"]) / flops["total"] < 0.01
    ratio = flops["total"] / sum(single.values())
    assert 0.3 < ratio < 0.4      # three trunks vs one
    assert single["segmentation"] > single["detection"]
    assert "unified HCQNet" in markdown("small", 64)
