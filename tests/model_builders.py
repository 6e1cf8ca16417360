"""Models the tests build themselves, in the exact production format, when no real small one ships.

They are random: they exercise the real loading and inference code, not the quality of a model.
"""

from __future__ import annotations

import json
import os
import string


def build_tiny_wav2vec2_ctc(out_dir: str, seed: int = 0) -> str:
    """A random ``Wav2Vec2ForCTC`` + ``Wav2Vec2Processor`` saved like a hub checkpoint (letters vocab)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor

    os.makedirs(out_dir, exist_ok=True)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    vocab.update({c: i + 5 for i, c in enumerate(string.ascii_lowercase + "'")})
    with open(os.path.join(out_dir, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    tokenizer = Wav2Vec2CTCTokenizer(os.path.join(out_dir, "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out_dir)
    cfg = Wav2Vec2Config(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0,
        ctc_loss_reduction="mean",
    )
    torch.manual_seed(seed)
    Wav2Vec2ForCTC(cfg).save_pretrained(out_dir)
    return out_dir
