"""A tiny random Llama-style decoder (2 layers, hidden 64) with a BPE tokenizer trained here, saved as a
Hugging Face folder (config.json, model.safetensors, tokenizer.json ...). Nothing is downloaded."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ("the edge device runs a small model on its own cpu and every token counts when memory is short "
         "so we quantize weights to four bits and check that greedy tokens agree with the float model").split()


def sentences(n: int, seed: int = 0, words: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(words // 2, words))) for _ in range(n)]


def make_folder(folder: Path, seed: int = 0, vocab: int = 300, layers: int = 2, hidden: int = 64) -> Path:
    """Write the model folder (idempotent: an existing complete folder is reused)."""
    if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sentences(400, seed), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(folder))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1,
                      eos_token_id=2, tie_word_embeddings=False, initializer_range=0.1)
    LlamaForCausalLM(cfg).eval().save_pretrained(str(folder))
    return folder


def write_texts(d: Path, prompts: int = 4, seed: int = 1) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    paths = {"prompts": d / "prompts.txt", "perplexity": d / "wiki.txt", "calibration": d / "calib.txt"}
    paths["prompts"].write_text("\n".join(sentences(prompts, seed)) + "\n")
    paths["perplexity"].write_text("\n".join(sentences(8, seed + 1, words=20)) + "\n")
    paths["calibration"].write_text("\n".join(sentences(16, seed + 2)) + "\n")
    return paths
