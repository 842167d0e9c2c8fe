"""Config validation: every refusal names the key (and the file or override), YAML's traps are
closed, and `key=value` overrides go through exactly the same checks as the file."""
import pathlib

import pytest

from bnspike import config
from tests.conftest import CONFIGS


def _yaml_for(key: str, text: str) -> str:
    """'optim.lr_w', '1e-3' -> 'optim:\\n  lr_w: 1e-3\\n' (the value text kept verbatim)."""
    *sections, leaf = key.split(".")
    lines = [f"{'  ' * i}{s}:" for i, s in enumerate(sections)]
    return "\n".join(lines + [f"{'  ' * len(sections)}{leaf}: {text}"]) + "\n"


def _load_file(tmp_path: pathlib.Path, key: str, text: str) -> dict:
    path = tmp_path / "bad config.yaml"
    path.write_text(_yaml_for(key, text))
    return config.load(path)


REFUSED = [  # (dotted key, value as written in YAML, what the message must say)
    # unknown keys: the nearest valid key is suggested
    ("optim.stesp", "10", "did you mean 'optim.steps'"),
    ("optim.lr", "2", "did you mean 'optim.lr_w'"),
    ("model.lr_w", "2", "did you mean 'optim.lr_w'"),  # right key, wrong section
    ("optm.lr_w", "2", "did you mean 'optim'"),  # misspelt section
    ("probes.zzzz", "1", "valid keys here: every, sharpness_every"),  # nothing close
    # wrong types: the value is quoted back
    ("optim.lr_w", "fast", "expected a number, got 'fast'"),
    ("optim.steps", "2.5", "expected an integer, got 2.5"),
    ("optim.steps", "'many'", "expected a number, got 'many'"),
    ("model.train_beta", "'yes'", "expected true or false, got 'yes'"),
    ("model.train_beta", "1", "expected true or false, got 1"),
    ("model.dtype", "float16", "must be one of float64, float32; got 'float16'"),
    ("data.n", "[1, 2]", "expected an integer, got [1, 2]"),
    ("optim", "3", "expected a section (mapping), got 3"),
    ("probes.extra", "tests.recorder:Recorder", "expected a list"),
    ("probes.extra", "[3]", "probes.extra[0]: expected text, got 3"),
    ("data.spectrum_values", "[1, x]", "data.spectrum_values[1]: expected a number, got 'x'"),
    ("optim.lr_w", "null", "a value is required"),
    ("name", "a/b", "must be a plain file name"),
    # out of range
    ("optim.lr_w", "0", "must be > 0, got 0.0"),
    ("optim.lr_w", "-1e-3", "must be > 0, got -0.001"),
    ("model.eps", "0", "must be > 0, got 0.0"),
    ("optim.steps", "0", "must be > 0, got 0"),
    ("optim.steps", "-5", "must be > 0, got -5"),
    ("optim.lr_alpha", "-0.01", "must be >= 0.0, got -0.01"),
    ("data.noise", "-1", "must be >= 0.0, got -1.0"),
    ("probes.sharpness_every", "-1", "must be >= 0, got -1"),
    ("checkpoint.every", "-1", "must be >= 0, got -1"),
    ("optim.lr_w", ".inf", "must be finite, got inf"),
    ("optim.lr_w", "nan", "must be finite, got nan"),  # the string 'nan' is not a way around it
    # YAML's traps: yes/no/on/off are booleans, 010 is octal, 1:30 is base 60
    ("log.progress", "off", "expected one of auto, bar, lines, none, got the boolean False"),
    ("data.source", "no", "expected a str, got the boolean False"),
    ("name", "yes", "got the boolean True"),
    ("optim.lr_w", "on", "expected a float, got the boolean True"),
    ("data.data_seed", "010", "'010' is read by YAML 1.1 as an octal number (8)"),
    ("optim.steps", "1:30", "'1:30' is read by YAML 1.1 as a base-60 number (90)"),
]


@pytest.mark.parametrize("key,text,says", REFUSED)
def test_bad_value_in_file_is_refused_naming_file_and_key(tmp_path, key, text, says):
    with pytest.raises(config.ConfigError) as err:
        _load_file(tmp_path, key, text)
    msg = str(err.value)
    assert "bad config.yaml" in msg and says in msg
    leaf, top = key.split(".")[-1], key.split(".")[0]
    # the dotted key, the YAML key with its line, or the misspelt section
    assert key in msg or f"key {leaf!r} at line" in msg or f"unknown key {top!r}" in msg


@pytest.mark.parametrize("key,text,says", REFUSED)
def test_bad_override_is_refused_by_the_same_validation(key, text, says):
    with pytest.raises(config.ConfigError) as err:
        config.load(CONFIGS / "whitened_spike.yaml", [f"{key}={text}"])
    msg = str(err.value)
    assert f"override {f'{key}={text}'!r}" in msg or "name:" in msg  # name is checked on the result
    assert says in msg


ACCEPTED = [  # numbers as users write them; booleans where a boolean is expected; quoted text
    ("optim.lr_w", "1e-3", 0.001),  # PyYAML reads this as the STRING '1e-3'
    ("optim.lr_w", "2.5E+1", 25.0),
    ("optim.lr_w", "3", 3.0),
    ("optim.steps", "1e3", 1000),  # also a string to PyYAML
    ("optim.steps", "400.0", 400),
    ("optim.steps", "1_000", 1000),
    ("data.data_seed", "'010'", 10),  # quoted: decimal, as the error message advises
    ("model.train_beta", "yes", True),
    ("data.center", "off", False),
    ("name", "'no'", "no"),
    ("name", "my run", "my run"),
    ("data.spectrum_values", "[1e-3, 2]", [0.001, 2.0]),
    ("checkpoint.every", "0", 0),
]


@pytest.mark.parametrize("key,text,value", ACCEPTED)
def test_numbers_users_write_are_accepted_in_file_and_override(tmp_path, key, text, value):
    for cfg in (_load_file(tmp_path, key, text), config.load(CONFIGS / "whitened_spike.yaml", [f"{key}={text}"])):
        got = cfg
        for part in key.split("."):
            got = got[part]
        assert got == value and type(got) is type(value)


def test_duplicated_key_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("optim:\n  lr_w: 1.0\n  steps: 10\n  lr_w: 2.0\n")
    with pytest.raises(config.ConfigError, match=r"dup.yaml: .*duplicated key 'lr_w' at line 4 \(first at line 2\)"):
        config.load(path)
    with pytest.raises(config.ConfigError, match=r"override 'optim=\{lr_w: 1, lr_w: 2\}'.*duplicated key 'lr_w'"):
        config.load(CONFIGS / "whitened_spike.yaml", ["optim={lr_w: 1, lr_w: 2}"])


def test_duplicated_section_is_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("optim:\n  lr_w: 1.0\nmodel:\n  eps: 1.0e-10\noptim:\n  steps: 3\n")
    with pytest.raises(config.ConfigError, match="duplicated key 'optim' at line 5"):
        config.load(path)


def test_probability_bounds_name_the_key():
    """No shipped key is a probability yet; the [0, 1] bound every such key will use."""
    prob = config.Field(config.F, 0.5, min=0.0, max=1.0)
    assert config._coerce("1e-1", prob, "x.p") == 0.1
    for bad, says in [(1.5, "x.p: must be <= 1.0, got 1.5"), (-0.1, "x.p: must be >= 0.0, got -0.1")]:
        with pytest.raises(config.ConfigError, match=says):
            config._coerce(bad, prob, "x.p")


def test_malformed_override_and_file_are_named(tmp_path):
    with pytest.raises(config.ConfigError, match="override 'optim.lr_w': expected key=value"):
        config.load(CONFIGS / "whitened_spike.yaml", ["optim.lr_w"])
    with pytest.raises(config.ConfigError, match="config file not found: .*missing.yaml"):
        config.load(tmp_path / "missing.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(config.ConfigError, match="list.yaml: the top level must be a mapping"):
        config.load(path)


def test_later_override_wins_and_file_values_survive():
    cfg = config.load(CONFIGS / "whitened_spike.yaml", ["optim.lr_w=2", "optim.lr_w=3e-1"])
    assert cfg["optim"]["lr_w"] == 0.3 and cfg["optim"]["steps"] == 400 and cfg["model"]["w0_norm"] == 0.5


def test_every_shipped_config_is_valid():
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = config.load(path)
        assert cfg["name"] == path.stem
