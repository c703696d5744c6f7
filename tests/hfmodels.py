"""The tiny random Hugging Face folders the transformer tests share (nothing is downloaded):

- a Llama-style decoder (2 layers, hidden 64) with a byte-level BPE tokenizer trained here (`make_llama`);
- a BERT-style encoder (2 layers, hidden 64, a 3-label classification head) with a WordPiece tokenizer trained
  here (`make_bert`).

Each is a complete folder (config.json, model.safetensors, tokenizer.json ...). `llama_folder()` / `bert_folder()`
build it once into the tests' cache ($EDGEPACK_TEST_CACHE, default ~/.cache/edgepack-tests) under a name keyed by
a digest of this file, the parameters and the torch / transformers / tokenizers versions, written to a private
temp folder and renamed into place (a concurrent or interrupted run never leaves half a folder). Treat the cached
folder as read-only: copy it before changing it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

CACHE = Path(os.environ.get("EDGEPACK_TEST_CACHE") or Path.home() / ".cache" / "edgepack-tests") / "hfmodels"

WORDS = ("the edge device runs a small model on its own cpu and every token counts when memory is short "
         "so we quantize weights to four bits and check that greedy tokens agree with the float model").split()
BERT_WORDS = ("the a small large red blue green quick slow model device phone camera sensor runs reads writes "
              "fast quiet bright dark river mountain city road cloud signal packet battery screen button light "
              "sound music voice image text number table window door garden").split()


def sentences(n: int, seed: int = 0, words: int = 12) -> list[str]:
    """Sentences over the decoder's WORDS (its tokenizer corpus, prompts, perplexity and calibration texts)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(words // 2, words))) for _ in range(n)]


def bert_sentences(n: int, seed: int) -> list[str]:
    """Sentences over BERT_WORDS, 3-13 words each (the encoder's tokenizer corpus and the tests' text data)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(BERT_WORDS, size=int(rng.integers(3, 14)))) for _ in range(n)]


def make_llama(folder: Path, seed: int = 0, vocab: int = 300, layers: int = 2, hidden: int = 64) -> Path:
    """Write the decoder folder (idempotent: an existing complete folder is reused)."""
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


def make_bert(folder: Path, seed: int = 0) -> Path:
    """Write the encoder folder: a random BertForSequenceClassification (labels a, b, c), max length 64."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(bert_sentences(400, seed + 1), trainers.WordPieceTrainer(vocab_size=120, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)
    fast.save_pretrained(str(folder))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=64, num_labels=3,
                     id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    BertForSequenceClassification(cfg).eval().save_pretrained(str(folder), safe_serialization=True)
    return folder


def _cached(name: str, make, **params) -> Path:
    """``make(folder, **params)`` once into CACHE/<name>-<digest>, renamed into place when complete."""
    versions = {p: metadata.version(p) for p in ("torch", "transformers", "tokenizers")}
    key = json.dumps({"source": Path(__file__).read_text(), "params": params, "versions": versions}, sort_keys=True)
    folder = CACHE / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if folder.is_dir():  # only ever renamed into place complete
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=CACHE))
    try:
        make(tmp, **params)
        try:
            os.replace(tmp, folder)
        except OSError:  # a concurrent run got there first (its folder is complete)
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def llama_folder(seed: int = 0, vocab: int = 300, layers: int = 2, hidden: int = 64) -> Path:
    """The cached tiny-Llama folder (built on first use)."""
    return _cached("tiny-llama", make_llama, seed=seed, vocab=vocab, layers=layers, hidden=hidden)


def bert_folder(seed: int = 0) -> Path:
    """The cached tiny-BERT folder (built on first use)."""
    return _cached("tiny-bert", make_bert, seed=seed)


def write_texts(d: Path, prompts: int = 4, seed: int = 1) -> dict[str, Path]:
    """The decoder recipe's text files: prompts.txt, wiki.txt (perplexity) and calib.txt (GPTQ calibration)."""
    d.mkdir(parents=True, exist_ok=True)
    paths = {"prompts": d / "prompts.txt", "perplexity": d / "wiki.txt", "calibration": d / "calib.txt"}
    paths["prompts"].write_text("\n".join(sentences(prompts, seed)) + "\n")
    paths["perplexity"].write_text("\n".join(sentences(8, seed + 1, words=20)) + "\n")
    paths["calibration"].write_text("\n".join(sentences(16, seed + 2)) + "\n")
    return paths
