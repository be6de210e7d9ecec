"""Build a small causal LM with a real tokenizer, offline and deterministically.

Tests, demos and benchmarks use these models; nothing is downloaded. The weights are random
(from a seeded config) and the tokenizer is a byte-level BPE trained with ``tokenizers`` on
text generated here from a seeded word list, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import importlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Arch = Literal["llama", "gpt2"]
Size = Literal["tiny", "bench"]

# ChatML-style turns; the end-of-turn marker is an EOS token so chat generations stop.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, IM_END]

# Seed text: a fixed English paragraph plus pseudo-words, enough for thousands of merges.
_SEED_TEXT = """\
The fleet is only as good as the pods it runs. A worker loads a causal language model,
serves many clients at once, and reports how busy it is. Requests wait in a queue, join the
running batch at a token boundary, and leave it when they finish. The autoscaler reads the
queue depth and the time to first token, and adds replicas when users would otherwise wait.
Hello, world! How are you today? I am fine, thank you. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100.
Punctuation and symbols: ( ) [ ] { } < > / \\ | - _ + = * & ^ % $ # @ ! ? . , ; : ' " ` ~
Unicode: café, naïve, Grüße, 東京, Ελληνικά, привет, emoji 🙂 and more text to learn from.
"""

_SYLLABLE_TEXT = (
    "ka ri to na mi ko shi ra lu be de fa ge ho ji ve xo zu pa qui ste pro con tra ment tion "
    "ing er an or al en el in on at it is us um ex re un dis pre sub inter over under "
    "the and for with from that this have will serve model token batch queue fleet pod node"
)


@dataclass(frozen=True)
class Preset:
    """Shape of one model size."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    corpus_words: int


PRESETS: dict[str, Preset] = {
    # A few million parameters: fast enough for every test.
    "tiny": Preset(4096, 256, 2, 4, 2, 688, 60_000),
    # About 34M parameters (llama): the benchmark model.
    "bench": Preset(8192, 512, 8, 8, 8, 1408, 120_000),
}


def _corpus(seed: int, words: int) -> list[str]:
    rng = random.Random(seed)  # noqa: S311  # reproducible corpus, not cryptography
    syllables = _SYLLABLE_TEXT.split()
    lexicon = sorted(
        {"".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(6000)}
    )
    lines = [_SEED_TEXT] * 20
    line: list[str] = []
    for _ in range(words):
        word = rng.choice(lexicon)
        if rng.random() < 0.08:
            word = word.capitalize()
        line.append(word)
        if rng.random() < 0.07:
            lines.append(" ".join(line) + rng.choice([".", "?", "!", ","]))
            line = []
    lines.append(" ".join(line))
    return lines


def _train_tokenizer(seed: int, preset: Preset) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=preset.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed, preset.corpus_words), trainer=trainer)
    return tokenizer


def make_tiny_model(
    out_dir: Path, arch: Arch = "llama", seed: int = 0, size: Size = "tiny"
) -> Path:
    """Write a Hugging Face model directory (config, safetensors, tokenizer) to ``out_dir``."""
    import torch

    # transformers' own annotations are partial; treat the module as untyped here.
    hf: Any = importlib.import_module("transformers")
    hf.utils.logging.disable_progress_bar()
    preset = PRESETS[size]
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = _train_tokenizer(seed, preset)
    tokenizer = hf.PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    vocab = len(tokenizer)
    eos_ids = [tokenizer.convert_tokens_to_ids(EOS), tokenizer.convert_tokens_to_ids(IM_END)]
    common = {
        "bos_token_id": tokenizer.convert_tokens_to_ids(BOS),
        "eos_token_id": eos_ids,
        "pad_token_id": tokenizer.convert_tokens_to_ids(PAD),
    }
    torch.manual_seed(seed)
    model: Any
    if arch == "llama":
        config: Any = hf.LlamaConfig(
            vocab_size=vocab,
            hidden_size=preset.hidden_size,
            intermediate_size=preset.intermediate_size,
            num_hidden_layers=preset.num_layers,
            num_attention_heads=preset.num_heads,
            num_key_value_heads=preset.num_kv_heads,
            max_position_embeddings=2048,
            tie_word_embeddings=False,
            **common,
        )
        model = hf.LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = hf.GPT2Config(
            vocab_size=vocab,
            n_embd=preset.hidden_size,
            n_layer=preset.num_layers,
            n_head=preset.num_heads,
            n_positions=2048,
            **common,
        )
        model = hf.GPT2LMHeadModel(config)
    else:
        raise ValueError(f"unsupported arch {arch!r}; choose llama or gpt2")
    model.eval()
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    params = sum(p.numel() for p in model.parameters())
    (out_dir / "llmfleet-tiny.json").write_text(
        json.dumps({"arch": arch, "seed": seed, "size": size, "parameters": params}) + "\n"
    )
    return out_dir
