"""Tiny offline fixtures: generated labelled text, a BPE tokenizer trained in-process, and random-init
Hugging Face models built from configs and saved as local directories (the real loading path)."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = {
    0: "apple banana cherry grape lemon mango melon peach pear plum".split(),
    1: "engine wheel brake motor piston gear clutch axle valve pump".split(),
    2: "violin piano drum flute guitar cello harp organ trumpet oboe".split(),
}
FILLER = "the a of and to in is it that was for on with as".split()


def make_text_csv(path: Path, n: int = 240, seed: int = 0, n_classes: int = 3) -> Path:
    rng = random.Random(seed)
    rows = ["text,label"]
    for i in range(n):
        label = i % n_classes
        length = rng.randint(3, 14)  # varied lengths, so batches need padding
        words = [rng.choice(WORDS[label]) if rng.random() < 0.5 else rng.choice(FILLER) for _ in range(length)]
        rows.append(f"{' '.join(words)},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


def train_tokenizer(out_dir: Path, eos: str = "<|endoftext|>", extra_special: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [" ".join(ws) for ws in WORDS.values()] + [" ".join(FILLER)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[eos, *extra_special],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, unk_token=eos)
    fast.save_pretrained(out_dir)
    return fast


def _tiny_decoder(out_dir: Path, config_cls, model_cls, n_classes: int, **dims) -> Path:
    """A random-init decoder classifier with the in-process tokenizer, EOS as its pad, BOS and EOS."""
    tok = train_tokenizer(out_dir)
    eos = tok.eos_token_id
    cfg = config_cls(**dims, vocab_size=len(tok), pad_token_id=eos, bos_token_id=eos, eos_token_id=eos,
                     num_labels=n_classes)
    model_cls(cfg).save_pretrained(out_dir)
    return out_dir


def tiny_gpt2(out_dir: Path, n_classes: int = 3) -> Path:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    return _tiny_decoder(out_dir, GPT2Config, GPT2ForSequenceClassification, n_classes,
                         n_layer=2, n_embd=32, n_head=2, n_positions=64)


def tiny_neox(out_dir: Path, n_classes: int = 3) -> Path:
    """A random-init GPT-NeoX (Pythia's family) classifier: rotary positions, parallel attention/MLP."""
    from transformers import GPTNeoXConfig, GPTNeoXForSequenceClassification

    return _tiny_decoder(out_dir, GPTNeoXConfig, GPTNeoXForSequenceClassification, n_classes, num_hidden_layers=2,
                         hidden_size=32, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)


def tiny_llama(out_dir: Path, n_classes: int = 3) -> Path:
    """A random-init LLaMA-family classifier: RMSNorm, rotary positions, SwiGLU, grouped-query attention."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    return _tiny_decoder(out_dir, LlamaConfig, LlamaForSequenceClassification, n_classes, num_hidden_layers=2,
                         hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         max_position_embeddings=64)


def tiny_bert(out_dir: Path, n_classes: int = 3) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    tok = train_tokenizer(out_dir, eos="[SEP]", extra_special=("[PAD]", "[CLS]"))
    tok.pad_token = "[PAD]"
    tok.cls_token = "[CLS]"
    tok.save_pretrained(out_dir)
    cfg = BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=64, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                     num_labels=n_classes)
    BertForSequenceClassification(cfg).save_pretrained(out_dir)
    return out_dir


def per_latent_reference(codes, labels) -> dict:
    """CSI and U by their definitions, one latent at a time, with class-mean masks and scikit-learn's
    mutual_info_score (nats): the straightforward reference (and the earlier implementation's approach)."""
    import math

    import numpy as np
    from sklearn.metrics import mutual_info_score

    y = labels.numpy()
    classes = np.unique(y)
    counts = np.bincount(y)
    h_y = -sum((c / len(y)) * math.log(c / len(y)) for c in counts if c > 0)
    csis, us = [], []
    for i in range(codes.shape[1]):
        z = codes[:, i].double().numpy()
        if not (z > 0).any():
            continue
        means = {c: z[y == c].mean() for c in classes}
        c_star = max(means, key=means.get)
        mu_max, mu_other = means[c_star], z[y != c_star].mean()
        denom = abs(mu_max) + abs(mu_other)
        csis.append(0.0 if denom == 0 else (mu_max - mu_other) / denom)
        fires = (z > 0).astype(int)
        us.append(0.0 if fires.all() else mutual_info_score(fires, y) / h_y)
    return {"csi": float(np.mean(csis)), "u": float(np.mean(us))}


def fsdp_chain_values(model_dir, text_csv, strategy: str, cycles: int = 1) -> dict:
    """A tiny one-chain config for the fsdp tests (train.strategy `strategy`); model_dir "mlp": the MLP on digits (its hidden layers are the FSDP units)."""
    data = {"data.name": "digits", "data.max_examples": 240, "model.hidden_sizes": [32, 16]} if model_dir == "mlp" \
        else {"data.name": str(text_csv)}
    return {**data, "model.name": str(model_dir), "model.layer": -1, "device": "cpu",
            "finetune.epochs": 1, "finetune.batch_size": 16, "aux.epochs": 1, "aux.batch_size": 16,
            "sae.expansion_factor": 2, "sae.k": 4, "sae.steps": 40, "sae.batch_size": 64, "chain.cycles": cycles,
            "eval.probe_max_iter": 50, "eval.backend": "sklearn", "train.strategy": strategy}
