"""The one YAML loader: duplicate keys refused everywhere, file and line in every error."""

from pathlib import Path

import pytest

from configfile import ConfigFileError, load_mapping

REPO = Path(__file__).resolve().parents[2]


def test_duplicate_keys_at_any_depth_name_file_line_and_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("a:\n  b:\n    - {x: 1}\n    - {x: 2, x: 3}\n")
    with pytest.raises(ConfigFileError) as info:
        load_mapping(p)
    assert info.value.line == 4 and info.value.path == str(p)
    assert "duplicate key 'a.b.1.x'" in str(info.value) and "first given on line 4" in str(
        info.value
    )


def test_merge_keys_may_override(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("base: &b {x: 1, y: 2}\nmine:\n  <<: *b\n  x: 5\n")
    assert load_mapping(p).data["mine"] == {"x": 5, "y": 2}


def test_lines_of_key_paths(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("# comment\nnode: a\ninstruments:\n  laser:\n    limits: {i: [0, 1]}\n")
    doc = load_mapping(p)
    assert doc.line(["instruments", "laser", "limits", "i"]) == 5
    assert doc.line(["instruments", "laser", "nothing", "here"]) == 4
    assert doc.where(["node"]) == f"{p}:2"


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("a: [1,\n", 2, "not valid YAML"),
        ("a: 1\n b: 2\n", 2, "not valid YAML"),
        ("- 1\n- 2\n", 1, "expected a mapping"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, text, line, what):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigFileError) as info:
        load_mapping(p)
    assert info.value.line == line and what in info.value.what, info.value
    assert "<unicode string>" not in str(info.value)


def test_empty_file_is_an_empty_mapping(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("# nothing yet\n")
    assert load_mapping(p).data == {}


def test_every_config_reader_uses_it(tmp_path):
    """Bridge, testbed, node and daemon configs all refuse a repeated key."""
    from controller.config import ConfigError, load_node_config
    from drivers.sim.testbed import TestbedConfig, TestbedError
    from telemetry import SettingsError, load_bridge_settings

    bridge = (REPO / "configs" / "bridge.yaml").read_text()
    key = next(ln for ln in bridge.splitlines() if ln and not ln.startswith(("#", " ")))
    p = tmp_path / "b.yaml"
    p.write_text(bridge + "\n" + key + "\n")
    with pytest.raises(SettingsError, match="duplicate key"):
        load_bridge_settings(p)
    tb = tmp_path / "t.yaml"
    tb.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(TestbedError, match=rf"{tb}:2: duplicate key 'seed'"):
        TestbedConfig.load(tb)
    node = tmp_path / "n.yaml"
    node.write_text("node: a\nnode: b\n")
    with pytest.raises(ConfigError, match=rf"{node}:2: duplicate key 'node'"):
        load_node_config(node)


def test_recursive_anchors_terminate(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("a: &x [1, *x]\n")
    doc = load_mapping(p)
    assert doc.data["a"][1] is doc.data["a"]
