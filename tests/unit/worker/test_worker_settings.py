"""CLI flags, their LLMFLEET_* environment twins, and the API key sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmfleet_worker.__main__ import build_parser
from llmfleet_worker.settings import Settings, settings_from_args


def settings(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    env = env or {}
    args = build_parser(env).parse_args(["serve", *argv])
    return settings_from_args(args, env)


def test_defaults_and_flags() -> None:
    s = settings(["--model", "/m/tiny", "--port", "9000", "--dtype", "bfloat16"])
    assert (s.model, s.port, s.dtype, s.quantization) == ("/m/tiny", 9000, "bfloat16", "none")
    assert s.model_name == "tiny"
    assert s.api_key is None


def test_every_flag_has_an_env_twin_and_flags_win() -> None:
    env = {
        "LLMFLEET_MODEL": "hf://org/repo@v2",
        "LLMFLEET_SERVED_MODEL_NAME": "chat",
        "LLMFLEET_PORT": "8100",
        "LLMFLEET_DTYPE": "float16",
        "LLMFLEET_QUANTIZATION": "int8",
        "LLMFLEET_MAX_MODEL_LEN": "512",
        "LLMFLEET_MAX_NUM_SEQS": "7",
        "LLMFLEET_MAX_QUEUE": "9",
        "LLMFLEET_DRAIN_TIMEOUT": "12.5",
        "LLMFLEET_API_KEY": "from-env",
    }
    s = settings([], env)
    assert s.model == "hf://org/repo@v2"
    assert s.model_name == "chat"
    assert (s.port, s.dtype, s.quantization, s.max_model_len) == (8100, "float16", "int8", 512)
    assert (s.max_num_seqs, s.max_queue, s.drain_timeout) == (7, 9, 12.5)
    assert s.api_key == "from-env"
    assert settings(["--port", "8200"], env).port == 8200


def test_served_name_defaults_to_the_repo_name() -> None:
    assert settings(["--model", "hf://org/repo@v2"]).model_name == "repo"


def test_api_key_file_wins_over_env(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("from-file\n")
    s = settings(["--model", "/m", "--api-key-file", str(key)], {"LLMFLEET_API_KEY": "env"})
    assert s.api_key == "from-file"
    assert "from-file" not in repr(s)


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        ([], {"LLMFLEET_DTYPE": "int4", "LLMFLEET_MODEL": "/m"}),
        ([], {"LLMFLEET_PORT": "eighty", "LLMFLEET_MODEL": "/m"}),
        (["--model", "/m", "--quantization", "int4"], {}),
    ],
)
def test_invalid_values_exit_with_a_usage_error(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as exc:
        settings(argv, env)
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--model", "/m", "--max-num-seqs", "0"],
        ["--model", "/m", "--api-key-file", "/nope"],
        ["--model", "/m", "--lanes", "0"],
        ["--model", "/m", "--lanes", "3", "--max-num-seqs", "2"],
    ],
)
def test_invalid_settings_are_value_errors(argv: list[str]) -> None:
    with pytest.raises(ValueError, match=r"model|max-num-seqs|api-key-file|lanes"):
        settings(argv)


def test_lanes_have_a_flag_and_an_env_twin() -> None:
    assert settings(["--model", "/m"]).lanes == 1
    assert settings(["--model", "/m"], {"LLMFLEET_LANES": "2"}).lanes == 2
    assert settings(["--model", "/m", "--lanes", "4"], {"LLMFLEET_LANES": "2"}).lanes == 4


def test_max_model_len_defaults_to_the_models_and_is_never_capped_silently() -> None:
    from llmfleet_worker.engine.source import ModelLoadError
    from llmfleet_worker.engine.tokenizing import DEFAULT_MAX_MODEL_LEN, resolve_max_model_len

    assert resolve_max_model_len(None, 1024) == 1024  # GPT-2: no crash loop on a default
    assert resolve_max_model_len(None, 131072) == 131072  # not capped at 2048
    assert resolve_max_model_len(None, None) == DEFAULT_MAX_MODEL_LEN
    assert resolve_max_model_len(512, 1024) == 512
    with pytest.raises(ModelLoadError, match="exceeds the model's 1024 positions"):
        resolve_max_model_len(2048, 1024)
