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


def build_flame_files(out_dir: str, n_vertices: int = 160, seed: int = 0) -> dict[str, str]:
    """A small FLAME model in the official ``generic_model.pkl`` layout (chumpy objects inside,
    J_regressor as a scipy sparse matrix, 300+100 shape/expression components, 36 pose
    correctives, 5 joints), a DECA-style ``landmark_embedding.npy`` (torch tensors inside) and a
    random DECA ``deca_model.tar``. Returns their paths. The jaw region is the lower third of the
    mesh: only it is skinned to the jaw joint and has jaw pose correctives."""
    import pickle
    import sys
    import types

    import numpy as np
    import scipy.sparse
    import torch

    from stages.flame_model import build_deca_encoder

    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    V = n_vertices
    theta, phi = rng.uniform(0, 2 * np.pi, V), rng.uniform(0.2, np.pi - 0.2, V)
    v = np.stack([0.08 * np.sin(phi) * np.cos(theta), -0.1 * np.cos(phi), 0.08 * np.sin(phi) * np.sin(theta)], 1)
    faces = np.array([rng.choice(V, 3, replace=False) for _ in range(2 * V)], np.uint32)
    jaw = v[:, 1] < -0.035
    eyes_l = (v[:, 1] > 0.03) & (v[:, 0] > 0.03)
    eyes_r = (v[:, 1] > 0.03) & (v[:, 0] < -0.03)
    w = np.zeros((V, 5))
    w[:, 0] = 0.3
    w[:, 1] = 0.7
    w[jaw] = [0.1, 0.2, 0.7, 0, 0]
    w[eyes_l] = [0.2, 0.3, 0, 0.5, 0]
    w[eyes_r] = [0.2, 0.3, 0, 0, 0.5]
    J = np.zeros((5, V))
    for j, mask in enumerate([np.ones(V, bool), v[:, 1] < 0.0, jaw, eyes_l, eyes_r]):
        J[j, mask] = 1.0 / mask.sum()
    posedirs = np.zeros((V, 3, 36))
    posedirs[:, :, :9] = 1e-3 * rng.standard_normal((V, 3, 9))  # neck correctives: everywhere
    posedirs[jaw, :, 9:18] = 1e-3 * rng.standard_normal((jaw.sum(), 3, 9))  # jaw correctives: jaw only
    shapedirs = 1e-3 * rng.standard_normal((V, 3, 400))

    mod, sub = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:  # pickled as chumpy.ch.Ch, like the official file; chumpy itself is not installed
        def __init__(self, x):
            self.x = x

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    sub.Ch, mod.ch = Ch, sub
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = mod, sub
    try:
        model = {
            "v_template": Ch(v), "shapedirs": Ch(shapedirs), "posedirs": posedirs, "J_regressor": scipy.sparse.csc_matrix(J),
            "weights": Ch(w), "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64), "f": faces,
            "bs_style": "lbs", "bs_type": "lrotmin",
        }
        with open(os.path.join(out_dir, "generic_model.pkl"), "wb") as f:
            pickle.dump(model, f, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    bary = rng.dirichlet(np.ones(3), size=68).astype(np.float32)
    lmk = {
        "static_lmk_faces_idx": rng.choice(len(faces), 51).astype(np.int64), "static_lmk_bary_coords": bary[17:],
        "dynamic_lmk_faces_idx": torch.from_numpy(rng.choice(len(faces), (79, 17)).astype(np.int64)),
        "dynamic_lmk_bary_coords": torch.from_numpy(rng.dirichlet(np.ones(3), size=(79, 17)).astype(np.float32)),
        "full_lmk_faces_idx": rng.choice(len(faces), (1, 68)).astype(np.int64), "full_lmk_bary_coords": bary[None],
    }
    np.save(os.path.join(out_dir, "landmark_embedding.npy"), lmk, allow_pickle=True)
    torch.manual_seed(seed)
    torch.save({"E_flame": build_deca_encoder().state_dict(), "E_detail": {}, "D_detail": {}}, os.path.join(out_dir, "deca_model.tar"))
    return {k: os.path.join(out_dir, f) for k, f in (("flame_model", "generic_model.pkl"), ("landmark_embedding", "landmark_embedding.npy"), ("deca_checkpoint", "deca_model.tar"))}


def build_tiny_text_encoder(out_dir: str, seed: int = 0) -> str:
    """A random BERT with a word-piece tokenizer over a small English vocabulary, saved like a hub
    checkpoint (the production format of a sentence encoder such as a sentence-transformers BERT)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    os.makedirs(out_dir, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "the", "face", "very", "slightly", "clearly",
             "angry", "happy", "sad", "neutral", "surprised", "fear", "disgusted", "contempt", "person", "speaking"]
    vocab = os.path.join(out_dir, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(words + list(string.ascii_lowercase)) + "\n")
    BertTokenizer(vocab).save_pretrained(out_dir)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(words) + 26, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(out_dir)
    return out_dir


def build_metric_weights(out_dir: str, seed: int = 0) -> dict[str, str]:
    """Random weights for trainer 2's metrics, in the formats the real files have: the FID
    Inception and torchvision AlexNet as state dicts, I3D as a TorchScript module with the call
    signature of StyleGAN-V's export, SyncNet as syncnet_python's ``syncnet_v2.model`` state dict."""
    import torch
    import torchvision

    from stages.sync import _syncnet_class
    from trainers.paha.metrics import fid_inception_architecture

    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    paths = {k: os.path.join(out_dir, v) for k, v in (("fid", "pt_inception.pth"), ("lpips", "alexnet.pth"),
                                                      ("fvd", "i3d_torchscript.pt"), ("syncnet", "syncnet_v2.model"))}
    torch.save(fid_inception_architecture().state_dict(), paths["fid"])
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), paths["lpips"])
    torch.save(_syncnet_class()(num_layers_in_fc_layers=1024).eval().state_dict(), paths["syncnet"])

    class I3D(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(3, 8, 3, stride=2)
            self.fc = torch.nn.Linear(8, 400)

        def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
            h = torch.relu(self.conv(x)).mean(dim=(2, 3, 4))
            return h if return_features else self.fc(h)

    torch.jit.script(I3D()).save(paths["fvd"])
    return paths
