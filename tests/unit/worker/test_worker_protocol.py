"""OpenAI protocol models and model URI parsing (no torch)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from llmfleet_worker.api.protocol import ChatCompletionRequest, CompletionRequest, error_json
from llmfleet_worker.engine.source import ModelLoadError, resolve_uri


def test_completion_defaults_and_extensions() -> None:
    req = CompletionRequest.model_validate(
        {"model": "m", "prompt": "hi", "ignore_eos": True, "some_new_field": 1}
    )
    assert req.max_tokens == 16
    assert req.ignore_eos
    assert req.stop_tuple() == ()
    assert CompletionRequest(model="m", prompt="x", stop="\n").stop_tuple() == ("\n",)


def test_chat_accepts_text_parts_and_max_completion_tokens() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
            "max_completion_tokens": 5,
        }
    )
    assert req.messages[0].text() == "ab"
    assert req.max_tokens == 5


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": []},
        {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 0},
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "presence_penalty": 1},
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": [""]},
    ],
)
def test_chat_rejects(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(body)


def test_error_shape() -> None:
    assert error_json("m", "t") == {
        "error": {"message": "m", "type": "t", "param": None, "code": None}
    }


def test_model_uris(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_uri(str(tmp_path)).path == str(tmp_path)
    assert resolve_uri(f"file://{tmp_path}").path == str(tmp_path)
    hub = resolve_uri("hf://org/repo@v1")
    assert (hub.path, hub.revision, hub.hub) == ("org/repo", "v1", True)
    for bad in ("hf://justrepo", "s3://bucket/x", str(tmp_path / "missing")):
        with pytest.raises(ModelLoadError):
            resolve_uri(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        resolve_uri(str(empty))
