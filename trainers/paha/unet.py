"""UniVDM — one 3D U-Net that denoises video latents while reading the reference frame itself.

The reference latent (and, for long videos, clean *motion frames* from the previous window) are
prepended to the noisy frames along time, and the reference latent is also concatenated to every
frame's input channels (Stable Video Diffusion's image conditioning); every frame carries its own timestep (0 for the clean
ones) and a frame-type embedding. Identity flows through attention, not a second network:

* spatial self-attention: each frame's tokens attend to their own frame **and the reference
  frame's** tokens (the reference-attention of Animate Anyone / EMO, inside the one U-Net);
* temporal attention: each spatial location attends across all frames (output projection
  zero-initialised, so a 2D-initialised network starts as the image model — AnimateDiff's rule);
* audio cross-attention: each frame's tokens attend to the audio features of a window of frames
  around it (EMO/Hallo); the reference frame sees a learned null audio token. With an audio mask
  (``model.audio_region``) its output reaches only the tokens of the region where the audio should
  act — mouth and jaw, and the hands — as Hallo masks its audio attention, so loudness cannot move
  the forehead, torso or background directly.

Shapes: latents (B, F, C, h, w), timesteps (B, F), audio (B, F, K, A) with K = 2·audio_context+1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainers.optim import checkpointed
from trainers.schedule import timestep_embedding

FRAME_REF, FRAME_MOTION, FRAME_NOISY = 0, 1, 2


def _groups(ch: int) -> int:
    return math.gcd(32, ch)


class VideoGroupNorm(nn.GroupNorm):
    """Stable Diffusion's GroupNorm (same parameters, so SD weights load), whose statistics are taken
    per frame or, with ``over_video``, over all frames of a sample together (AnimateDiff's inflated
    GroupNorm). Per frame, a mouth that darkens with the audio shifts its frame's group means, and
    the normalised values of every other pixel of that frame move the other way: the forehead, torso
    and background brighten with the loudness. Over the video, that shift is shared by the window's
    frames and no longer follows the audio frame by frame. ``frames`` is set by ``UniVDM.forward``."""

    over_video = False
    frames = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B*F, C, h, w)
        if not self.over_video or self.frames == 1:
            return super().forward(x)
        N, C, h, w = x.shape
        video = x.view(N // self.frames, self.frames, C, h, w).transpose(1, 2)  # (B, C, F, h, w)
        out = F.group_norm(video, self.num_groups, self.weight, self.bias, self.eps)
        return out.transpose(1, 2).reshape(N, C, h, w)


class ResBlock(nn.Module):
    """Per-frame 2D residual block with a per-frame time embedding."""

    def __init__(self, cin: int, cout: int, temb: int):
        super().__init__()
        self.n1, self.c1 = VideoGroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(temb, cout)
        self.n2, self.c2 = VideoGroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):  # x (N, C, h, w), temb (N, E)
        h = self.c1(F.silu(self.n1(x))) + self.t(F.silu(temb))[:, :, None, None]
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class GEGLUFeedForward(nn.Module):
    """Stable Diffusion's feed-forward: Linear(c, 8c) split into value and gate, value·GELU(gate), Linear(4c, c)."""

    def __init__(self, ch: int, mult: int = 4):
        super().__init__()
        self.proj = nn.Linear(ch, 2 * mult * ch)
        self.out = nn.Linear(mult * ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)  # diffusers' GEGLU order: value first, gate second
        return self.out(value * F.gelu(gate))


class VideoTransformer(nn.Module):
    """Stable Diffusion's Transformer2DModel around a video block: GroupNorm → proj_in → spatial (+ reference)
    attention, temporal attention, audio cross-attention, GEGLU feed-forward → proj_out, residual around it all.

    The spatial attention, norms, feed-forward and projections have SD 1.5's shapes (``init2d.py`` maps them);
    SD's text cross-attention has no counterpart — the audio attention takes its place and, like the temporal
    attention, starts with a zero output projection. ``proj_out`` starts at zero too (as in Latent Diffusion's
    SpatialTransformer), so a block that is not initialised from SD starts as the identity.
    """

    def __init__(self, ch: int, heads: int, audio_dim: int, max_frames: int = 64):
        super().__init__()
        self.heads = heads
        self.norm_in = VideoGroupNorm(_groups(ch), ch, eps=1e-6)  # SD: GroupNorm(32, c, eps=1e-6)
        self.proj_in = nn.Linear(ch, ch)  # SD 1.5's 1×1 Conv2d, applied per token
        self.norm_s, self.norm_t, self.norm_a, self.norm_m = (nn.LayerNorm(ch) for _ in range(4))
        self.spatial = nn.MultiheadAttention(ch, heads, batch_first=True)
        self.temporal = nn.MultiheadAttention(ch, heads, batch_first=True)
        self.audio = nn.MultiheadAttention(ch, heads, kdim=audio_dim, vdim=audio_dim, batch_first=True)
        self.ff = GEGLUFeedForward(ch)
        self.proj_out = nn.Linear(ch, ch)
        self.frame_pos = nn.Parameter(torch.zeros(max_frames, ch))
        for lin in (self.temporal.out_proj, self.audio.out_proj, self.proj_out):  # new paths start as identity
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x, B: int, Fr: int, audio, audio_mask=None):  # x (B*F, C, h, w); audio (B*F, K, A)
        N, C, h, w = x.shape
        tok = self.proj_in(self.norm_in(x).flatten(2).transpose(1, 2))  # (B*F, hw, C)
        # spatial attention over own tokens + the reference frame's tokens (frame 0 of each video); for the
        # reference frame itself the keys are its tokens twice, which leaves softmax attention unchanged
        hs = self.norm_s(tok)
        ref = hs.view(B, Fr, h * w, C)[:, :1].expand(B, Fr, h * w, C).reshape(N, h * w, C)
        kv = torch.cat([hs, ref], dim=1)
        tok = tok + self.spatial(hs, kv, kv, need_weights=False)[0]
        # temporal attention per spatial location
        tt = tok.view(B, Fr, h * w, C).permute(0, 2, 1, 3).reshape(B * h * w, Fr, C)
        ht = self.norm_t(tt) + self.frame_pos[:Fr]
        tt = tt + self.temporal(ht, ht, ht, need_weights=False)[0]
        tok = tt.view(B, h * w, Fr, C).permute(0, 2, 1, 3).reshape(N, h * w, C)
        # audio cross-attention to this frame's audio window (where SD attends to the text), confined to
        # the audio region's tokens when there is one (audio_mask (B*F, 1, h, w): Hallo's masked audio attention)
        heard = self.audio(self.norm_a(tok), audio, audio, need_weights=False)[0]
        if audio_mask is not None:
            heard = heard * F.adaptive_avg_pool2d(audio_mask, (h, w)).flatten(2).transpose(1, 2)
        tok = tok + heard
        tok = tok + self.ff(self.norm_m(tok))
        return x + self.proj_out(tok).transpose(1, 2).reshape(N, C, h, w)


class Upsample(nn.Conv2d):
    """Nearest-neighbour upsampling to the next skip's size (×2, or the odd size the encoder had), then a 3×3
    conv: Stable Diffusion's order, so its upsampler weights do what they were trained for."""

    def __init__(self, ch: int):
        super().__init__(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        return super().forward(F.interpolate(x, size=size, mode="nearest"))


class UniVDM(nn.Module):
    def __init__(self, latent_channels: int = 4, channels: tuple[int, ...] = (32, 64), attn_levels: tuple[int, ...] = (1,),
                 heads: int = 4, audio_dim: int = 64, audio_context: int = 2, max_frames: int = 64,
                 norm_over_video: bool = False):
        super().__init__()
        self.audio_context = audio_context
        self.grad_checkpointing = False  # model.grad_checkpointing: recompute blocks in the backward pass
        temb = channels[0] * 4
        self.temb_dim = channels[0]
        self.time = nn.Sequential(nn.Linear(channels[0], temb), nn.SiLU(), nn.Linear(temb, temb))
        self.frame_type = nn.Embedding(3, temb)
        self.null_audio = nn.Parameter(torch.zeros(audio_dim))
        self.audio_pos = nn.Parameter(torch.zeros(2 * audio_context + 1, audio_dim))
        # every frame's input is [its latent, the reference latent] (SVD's image conditioning); the
        # reference also enters every video transformer through attention (below)
        self.inp = nn.Conv2d(2 * latent_channels, channels[0], 3, padding=1)
        self.down, self.down_attn, self.downsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        ch = channels[0]
        skips = []
        for i, c in enumerate(channels):
            self.down.append(ResBlock(ch, c, temb))
            self.down_attn.append(VideoTransformer(c, heads, audio_dim, max_frames) if i in attn_levels else nn.Identity())
            skips.append(c)
            ch = c
            self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(channels) - 1 else nn.Identity())
        self.mid = ResBlock(ch, ch, temb)
        self.mid_attn = VideoTransformer(ch, heads, audio_dim, max_frames)
        self.up, self.up_attn, self.upsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, c in reversed(list(enumerate(channels))):
            self.up.append(ResBlock(ch + skips[i], c, temb))
            self.up_attn.append(VideoTransformer(c, heads, audio_dim, max_frames) if i in attn_levels else nn.Identity())
            self.upsample.append(Upsample(c) if i > 0 else nn.Identity())
            ch = c
        self.out = nn.Sequential(VideoGroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, latent_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        for norm in self.modules():
            if isinstance(norm, VideoGroupNorm):
                norm.over_video = norm_over_video

    def audio_windows(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, F, A) per-frame features → (B, F, K, A) windows of ±audio_context frames (edge-padded)."""
        k = self.audio_context
        padded = torch.cat([audio[:, :1].expand(-1, k, -1), audio, audio[:, -1:].expand(-1, k, -1)], dim=1)
        return padded.unfold(1, 2 * k + 1, 1).permute(0, 1, 3, 2) + self.audio_pos

    def forward(self, z: torch.Tensor, t: torch.Tensor, frame_type: torch.Tensor, audio: torch.Tensor,
                drop_audio: torch.Tensor | None = None, audio_mask: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, F, C, h, w) with the reference at frame 0; t, frame_type (B, F); audio (B, F, A) per frame;
        audio_mask (B, 1, H, W) or None: where the audio cross-attention may act (any resolution, pooled to
        each level's). Returns the network output (what ``model.prediction`` names: x₀, v or ε) for every frame (B, F, C, h, w)."""
        B, Fr, C, h, w = z.shape
        for norm in self.modules():  # the frames per sample, for GroupNorm statistics over the video
            if isinstance(norm, VideoGroupNorm):
                norm.frames = Fr
        win = self.audio_windows(audio)
        null = self.null_audio.expand_as(win)
        is_ref = (frame_type == FRAME_REF)[:, :, None, None]
        win = torch.where(is_ref, null, win)
        if drop_audio is not None:  # classifier-free guidance: the whole clip loses its audio
            win = torch.where(drop_audio[:, None, None, None], null, win)
        win = win.reshape(B * Fr, *win.shape[2:])
        temb = self.time(timestep_embedding(t, self.temb_dim)) + self.frame_type(frame_type)
        temb = temb.reshape(B * Fr, -1)
        ref = z[:, :1].expand(B, Fr, C, h, w)
        x = self.inp(torch.cat([z, ref], dim=2).reshape(B * Fr, 2 * C, h, w))
        skips = []
        ckpt = self.grad_checkpointing

        # the mask at latent resolution once (each level pools it further), one copy per frame: (B*F, 1, h, w)
        mask = None if audio_mask is None else F.adaptive_avg_pool2d(audio_mask.float(), (h, w)).repeat_interleave(Fr, dim=0)

        def attend(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
            if not isinstance(attn, VideoTransformer):
                return x
            if mask is None:
                return checkpointed(lambda h, a: attn(h, B, Fr, a), x, win, enabled=ckpt)
            return checkpointed(lambda h, a, m: attn(h, B, Fr, a, m), x, win, mask, enabled=ckpt)

        for res, attn, down in zip(self.down, self.down_attn, self.downsample):
            x = attend(attn, checkpointed(res, x, temb, enabled=ckpt))
            skips.append(x)
            x = down(x)
        x = attend(self.mid_attn, checkpointed(self.mid, x, temb, enabled=ckpt))
        for res, attn, up in zip(self.up, self.up_attn, self.upsample):
            skip = skips.pop()
            x = attend(attn, checkpointed(res, torch.cat([x, skip], dim=1), temb, enabled=ckpt))
            if skips:  # upsample to the next skip's size (handles odd encoder sizes)
                x = up(x, skips[-1].shape[-2:])
        return self.out(x).reshape(B, Fr, C, h, w)

    def init_from_2d(self, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """Load 2D (image-model) weights in UniVDM's own key names into the matching layers; temporal/audio
        layers keep their identity initialisation. Returns (loaded keys, skipped keys). A Stable Diffusion
        UNet is mapped by ``init2d.load_init_2d``."""
        own = self.state_dict()
        loaded = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
        self.load_state_dict({**own, **{k: state[k] for k in loaded}})
        return loaded, [k for k in state if k not in loaded]
