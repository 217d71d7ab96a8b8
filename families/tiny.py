"""Tiny random-init models of the real classes, with their family's stock processor files: the models the tests
and the embedded default run on (same code paths as the 7B checkpoints, a few MB).

Run: no entry point; `python -m pytest tests/test_model.py -q`.
"""

import os

import torch
import transformers

from .registry import family

def build_tokenizer(kind: str, vocab_size: int = 512):
    """A small tokenizer made offline with `tokenizers`, of the family's kind and with its special tokens and
    chat template: byte-level BPE (Qwen, Qwen2) or SentencePiece-style Metaspace BPE with a BOS (Llama/Vicuna)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    fam = family(kind)
    corpus = ["These are frames of a video. Which point in the last frame matches the marked point?",
              "Answer with the option's letter from the given choices directly. A B C D 0 1 2 3 4 5 6 7 8 9",
              "USER: ASSISTANT: system user assistant You are a helpful assistant. yes no left right\n"] * 4
    if fam.tokenizer == "metaspace":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        alphabet = sorted(set("".join(corpus).replace(" ", "▁")) | {"▁", "\n"})
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=fam.special,
                                                        initial_alphabet=alphabet, show_progress=False))
    if fam.tokenizer == "metaspace":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
        names = dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    else:
        names = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    # extra_special_tokens: the tokenizer attributes a family's processor reads (InternVL's start_image_token ...)
    out = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, extra_special_tokens=dict(fam.named_tokens),
                                               **names)
    out.chat_template = fam.template
    return out


def tiny_config(kind: str = "qwen2_5_vl", tokenizer=None, layers: int = 4, hidden: int = 128, heads: int = 2,
                kv_heads: int = 2, vision_layers: int = 2, vision_hidden: int = 64, intermediate: int | None = None,
                head_dim: int | None = None, mrope_section: list[int] | None = None, rope_theta: float = 1e6):
    """A few-MB config of the real class: same code paths as the 7B models, random weights. intermediate
    (default 2 x hidden), head_dim (default hidden / heads), mrope_section and rope_theta let 7B-shaped layers
    be built (Qwen2.5-VL-7B: hidden 3584, heads 28, kv_heads 4, intermediate 18944, head_dim 128).
    The defaults are the embedded default's model. Two heads of 64 (as Qwen's head size is 128, M-RoPE
    sections in the same proportions) instead of four of 32 with 2 KV heads: native Q-K PCK@2 after the
    demo 0.76 vs 0.66 (measured; M-RoPE scrambles a quarter of each head's dimensions across frames)."""
    tokenizer = tokenizer or build_tokenizer(kind)
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=32768, head_dim=head_dim or hidden // heads, mrope_section=mrope_section,
                rope_theta=rope_theta)
    return family(kind).tiny(text, tokenizer.convert_tokens_to_ids, vision_layers, vision_hidden)


def build_tiny(out_dir: str, kind: str = "qwen2_5_vl", seed: int = 0, dtype=None, **config_kwargs) -> str:
    """Write a tiny random-init checkpoint of the real class (weights in `dtype`, default float32) with realistic
    processor files (the family's stock image processor with resizing on, tokenizer, chat template) to out_dir
    (kept if out_dir already holds the same architecture; rebuilt if it holds another, e.g. an older default)."""
    tokenizer = build_tokenizer(kind)
    config = tiny_config(kind, tokenizer, **config_kwargs)
    if os.path.exists(os.path.join(out_dir, "config.json")):
        keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "intermediate_size")
        old_cfg = transformers.AutoConfig.from_pretrained(out_dir)
        old, new = (getattr(c, "text_config", c) for c in (old_cfg, config))
        same = [getattr(old, k, None) for k in keys] == [getattr(new, k, None) for k in keys]
        stock_files = os.path.exists(os.path.join(out_dir, "chat_template.jinja"))  # older tiny folders lack them
        if same and stock_files and old_cfg.model_type == kind and old_cfg.dtype == (dtype or torch.float32):
            return out_dir
        print(f"{out_dir}: holds another tiny model (architecture, dtype or processor files); rebuilding it")
    torch.manual_seed(seed)
    model = transformers.AutoModelForImageTextToText.from_config(config).to(dtype or torch.float32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)  # with its chat template
    family(config).image_processor(config).save_pretrained(out_dir)
    return out_dir
