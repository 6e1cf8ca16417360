"""Audio front ends both trainers use: 16 kHz waveform → one feature vector per video frame."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Spectrogram(nn.Module):
    """16 kHz waveform (B, S) → log-magnitude STFT frames (B, T, n_fft/2+1), one per motion frame.
    The built-in audio front end of the ``tiny`` config (no parameters)."""

    def __init__(self, n_fft: int = 640, fps: float = 25.0, sample_rate: int = 16000):
        super().__init__()
        self.hop, self.n_fft = int(sample_rate / fps), n_fft
        self.out_dim = n_fft // 2 + 1
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, wave: torch.Tensor, num_frames: int) -> torch.Tensor:
        spec = torch.stft(wave.float(), self.n_fft, self.hop, window=self.window, return_complex=True).abs()
        return F.interpolate(torch.log1p(spec), size=num_frames, mode="linear", align_corners=False).transpose(1, 2)


class PretrainedSpeechEncoder(nn.Module):
    """A Hugging Face speech model saved on disk (wav2vec 2.0, HuBERT, WavLM …), loaded by path:
    waveform → hidden states of ``layer`` (default: last), interpolated to one frame per motion
    frame. Frozen by default (as FaceFormer/EMOTE use wav2vec 2.0 features)."""

    def __init__(self, path: str, layer: int | None = None, freeze: bool = True):
        super().__init__()
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(path)
        self.layer, self.freeze = layer, freeze
        self.out_dim = self.model.config.hidden_size
        if freeze:
            self.model.requires_grad_(False).eval()

    def train(self, mode: bool = True):  # a frozen backbone stays in eval mode (no dropout)
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def forward(self, wave: torch.Tensor, num_frames: int) -> torch.Tensor:
        wave = (wave - wave.mean(-1, keepdim=True)) / (wave.std(-1, keepdim=True) + 1e-7)
        with torch.set_grad_enabled(not self.freeze and torch.is_grad_enabled()):
            out = self.model(wave, output_hidden_states=self.layer is not None)
        h = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
        return F.interpolate(h.transpose(1, 2), size=num_frames, mode="linear", align_corners=False).transpose(1, 2)
