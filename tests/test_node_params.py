"""The hcq_perception parameter table (hcq_ros.ros.node_params) against launch/params.yaml and docs/ros2.md."""
from __future__ import annotations

import array
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from hcq_ros.ros import node_params
from hcq_ros.ros.node_params import PARAMS, SPECS

ROOT = Path(__file__).resolve().parents[1]
PARAMS_YAML = ROOT / "launch" / "params.yaml"
DOCS = ROOT / "docs" / "ros2.md"


def yaml_parameters() -> dict:
    document = yaml.safe_load(PARAMS_YAML.read_text())
    assert list(document) == ["/**"]
    return document["/**"]["ros__parameters"]


def write_params(tmp_path: Path, edit) -> Path:
    """A copy of launch/params.yaml with ``edit(parameters_dict)`` applied."""
    document = yaml.safe_load(PARAMS_YAML.read_text())
    edit(document["/**"]["ros__parameters"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_params_yaml_and_table_agree():
    defaults = node_params.load_defaults(PARAMS_YAML)
    assert list(defaults) == [spec.name for spec in PARAMS]
    assert node_params.default_params_file() == PARAMS_YAML  # found from the source tree
    assert defaults["input_size"] == [320, 320] and isinstance(defaults["score_threshold"], float)
    flat = node_params._flatten(yaml_parameters())
    assert set(flat) == set(SPECS), "every parameter in params.yaml is declared by the node and vice versa"


def test_table_entries_are_well_formed():
    name_pattern = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
    defaults = node_params.load_defaults(PARAMS_YAML)
    for spec in PARAMS:
        assert name_pattern.match(spec.name), spec.name
        assert spec.description and len(spec.description) > 10, spec.name
        if spec.kind in ("int", "float", "int_array", "float_array") and spec.minimum is not None:
            assert spec.maximum is not None and spec.minimum < spec.maximum, spec.name
            values = defaults[spec.name] if isinstance(defaults[spec.name], list) else [defaults[spec.name]]
            assert all(spec.minimum <= v <= spec.maximum for v in values), spec.name
        if spec.kind == "int" and spec.minimum is not None:
            assert spec.step >= 1 and (spec.maximum - spec.minimum) % spec.step == 0, spec.name  # ROS IntegerRange
        if spec.choices:
            assert spec.kind == "str" and defaults[spec.name] in spec.choices
        assert not spec.read_only or spec.name not in node_params.RUNTIME_PARAMS
    # thresholds and task switches are live, model/backend choices need a restart
    assert {"score_threshold", "mask_threshold", "enable_parts", "enable_reid"} <= set(node_params.RUNTIME_PARAMS)
    assert SPECS["backend"].read_only and SPECS["input_size"].read_only and SPECS["tracker.min_hits"].read_only
    with pytest.raises(ValueError, match="kind"):
        node_params.ParamSpec("x", "double", "a parameter")


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(unknown_parameter=1), "unknown: \\['unknown_parameter'\\]"),
    (lambda p: p.pop("score_threshold"), "missing: \\['score_threshold'\\]"),
    (lambda p: p["tracker"].pop("min_hits"), "missing: \\['tracker.min_hits'\\]"),
    (lambda p: p.update(score_threshold=1), "score_threshold: expected a float"),
    (lambda p: p.update(score_threshold=1.5), "score_threshold: 1.5 outside \\[0.0, 1.0\\]"),
    (lambda p: p.update(backend="cuda"), "backend: 'cuda' not one of auto, tensorrt"),
    (lambda p: p.update(input_size=[640]), "input_size: needs 2 values"),
    (lambda p: p.update(input_size=[640, 641]), "input_size: 641 is not 64 \\+ a multiple of 32"),
    (lambda p: p.update(max_people=True), "max_people: expected an integer"),
    (lambda p: p.update(publish_markers="yes"), "publish_markers: expected a bool"),
])
def test_load_defaults_names_what_is_wrong(tmp_path, edit, message):
    path = write_params(tmp_path, edit)
    with pytest.raises(ValueError, match=message) as info:
        node_params.load_defaults(path)
    assert str(path) in str(info.value)


def test_load_defaults_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        node_params.load_defaults(tmp_path / "nope.yaml")
    two_blocks = tmp_path / "two.yaml"
    two_blocks.write_text(yaml.safe_dump({"/**": {"ros__parameters": {}}, "other": {"ros__parameters": {}}}))
    with pytest.raises(ValueError, match="exactly one"):
        node_params.load_defaults(two_blocks)
    wrong_node = tmp_path / "wrong.yaml"
    wrong_node.write_text(yaml.safe_dump({"talker": {"ros__parameters": {}}}))
    with pytest.raises(ValueError, match="exactly one"):
        node_params.load_defaults(wrong_node)
    assert node_params.is_node_key("/cam1/hcq_perception") and node_params.is_node_key("hcq_perception")
    assert not node_params.is_node_key("/hcq_perception_2")


def test_check_value_and_runtime_changes():
    assert node_params.check_value("score_threshold", 0.3) is None
    assert "outside" in node_params.check_value("score_threshold", -0.1)
    assert "not finite" in node_params.check_value("diagnostics_period", float("nan"))
    assert "unknown parameter" in node_params.check_value("no_such", 1)
    assert node_params.check_value("input_size", array.array("q", [512, 384])) is None  # rclpy's array type
    assert "list of int" in node_params.check_value("input_size", ["640", "640"])
    # live parameters pass, read-only ones are refused with the reason
    assert node_params.check_runtime_change("enable_parts", False) is None
    reason = node_params.check_runtime_change("backend", "torch")
    assert "read-only" in reason and "restart" in reason and "cleanup" in reason
    assert "outside" in node_params.check_runtime_change("mask_threshold", 2.0)


def test_perceptor_config_mapping():
    defaults = node_params.load_defaults(PARAMS_YAML)
    config = node_params.perceptor_config_dict(defaults)
    # node-level parameters stay in the node; empty model paths leave the PerceptorConfig default in place
    assert "publish_markers" not in config and "image_transport" not in config
    assert "detector_model" not in config and "engine_cache_dir" not in config
    assert config["input_size"] == [320, 320] and config["score_threshold"] == defaults["score_threshold"]
    assert config["tracker"]["min_hits"] == 3 and "tracker.min_hits" not in config
    custom = node_params.perceptor_config_dict({**defaults, "detector_model": "/models/hcq.onnx"})
    assert custom["detector_model"] == "/models/hcq.onnx"
    options = node_params.runtime_options({"score_threshold": 0.7, "enable_parts": False, "publish_markers": False})
    assert options == {"score_threshold": 0.7, "enable_parts": False}


CALIBRATED = {"high_score", "low_score", "new_track_score",        # set for the shipped detector by hcq-ros calibrate
              "use_reid", "iou_weight", "appearance_gate", "reidentify_lost"}


def test_tracker_parameters_match_tracker_config():
    from hcq_ros.tracking.tracker import TrackerConfig
    defaults = node_params.load_defaults(PARAMS_YAML)
    settings = node_params.perceptor_config_dict(defaults)
    tracker = settings["tracker"]
    config = TrackerConfig.from_dict(tracker)  # every tracker.* name is a TrackerConfig field
    field_defaults = {f.name: f.default for f in dataclasses.fields(TrackerConfig)}
    assert CALIBRATED <= set(tracker) <= set(field_defaults)
    for name, value in tracker.items():
        assert getattr(config, name) == value
        if name not in CALIBRATED:
            assert value == field_defaults[name], f"params.yaml tracker.{name} differs from TrackerConfig's default"
    # what hcq-ros calibrate writes: every published detection may extend a track (ByteTrack's second stage)
    assert tracker["low_score"] == settings["score_threshold"] <= tracker["high_score"] <= tracker["new_track_score"]


def test_perceptor_config_accepts_the_mapping():
    pipeline = pytest.importorskip("hcq_ros.pipeline", reason="hcq_ros.pipeline (PerceptorConfig) not available")
    config = pipeline.PerceptorConfig.from_dict(node_params.perceptor_config_dict(node_params.load_defaults()))
    assert list(config.input_size) == [320, 320] and config.tracker["min_hits"] == 3
    live = {SPECS[name].target for name in node_params.RUNTIME_PARAMS if SPECS[name].target}
    assert live <= set(pipeline.RUNTIME_OPTIONS), "live parameters must be changeable by set_runtime_options"


def test_model_paths_resolve_in_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a ROS node runs wherever it was launched from
    resolved = Path(node_params.resolve_data_path("engines/hcq_small.onnx"))
    assert resolved == ROOT / "engines" / "hcq_small.onnx"
    assert node_params.resolve_data_path("/models/x.onnx") == "/models/x.onnx"
    assert node_params.resolve_data_path("nowhere/x.onnx") == "nowhere/x.onnx"  # the backend names it
    (tmp_path / "engines").mkdir()  # a directory next to the working directory wins
    assert node_params.resolve_data_path("engines/hcq_small.onnx") == "engines/hcq_small.onnx"
    assert node_params.resolve_data_path("") == ""


def test_docs_parameter_table_in_sync(tmp_path):
    text = DOCS.read_text()
    assert node_params.docs_block() in text, \
        "docs/ros2.md is stale: run python -m hcq_ros.ros.node_params --write-docs docs/ros2.md"
    for spec in PARAMS:
        assert f"| `{spec.name}` |" in text
    stale = tmp_path / "ros2.md"
    stale.write_text(text.replace("| `mask_threshold` | float | `0.5`", "| `mask_threshold` | float | `0.9`"))
    assert node_params.write_docs(stale) is True
    assert stale.read_text() == text
    assert node_params.write_docs(stale) is False  # idempotent
    no_markers = tmp_path / "plain.md"
    no_markers.write_text("# nothing here\n")
    with pytest.raises(ValueError, match="markers"):
        node_params.write_docs(no_markers)
    assert node_params.main(["--params", str(PARAMS_YAML), "--write-docs", str(stale)]) == 0


def test_command_line_tools_read_the_node_params_file_or_plain_settings(tmp_path):
    from hcq_ros.pipeline import PerceptorConfig

    shipped = node_params.load_perceptor_settings(ROOT / "launch" / "params.yaml")
    config = PerceptorConfig.from_dict(shipped)
    file_threshold = node_params.load_defaults(PARAMS_YAML)["score_threshold"]
    assert config.score_threshold == file_threshold and list(config.input_size) == [320, 320]
    assert config.tracker["min_hits"] == 3
    assert node_params.load_perceptor_settings(None) == shipped   # no --params: the node's own settings
    partial = tmp_path / "partial.yaml"      # a ROS params file that sets one parameter; the rest keep the defaults
    partial.write_text("/**:\n  ros__parameters:\n    score_threshold: 0.25\n")
    config = PerceptorConfig.from_dict(node_params.load_perceptor_settings(partial))
    assert config.score_threshold == 0.25 and config.tracker["min_hits"] == 3
    plain = tmp_path / "plain.yaml"
    plain.write_text("score_threshold: 0.3\nmax_people: 4\n")
    assert node_params.load_perceptor_settings(plain) == {"score_threshold": 0.3, "max_people": 4}
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**:\n  ros__parameters:\n    score_treshold: 0.25\n")
    with pytest.raises(ValueError, match="unknown: \\['score_treshold'\\]"):
        node_params.load_perceptor_settings(bad)
    bad.write_text("/**:\n  ros__parameters:\n    score_threshold: 1.5\n")
    with pytest.raises(ValueError, match="score_threshold"):
        node_params.load_perceptor_settings(bad)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        node_params.load_perceptor_settings(tmp_path / "nope.yaml")


def test_pose_source_choices_are_the_perceptors():
    from hcq_ros.pipeline import POSE_SOURCES

    spec = next(s for s in node_params.PARAMS if s.name == "pose_source")
    assert tuple(spec.choices) == POSE_SOURCES and not spec.read_only
